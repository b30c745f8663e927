{{/* vim: set filetype=mustache: */}}

{{- define "paxoskv.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{/*
Full name; also the StatefulSet name. Pod names are <fullname>-<ordinal> and each pod derives
its peers from its own name, so it is capped to leave room for the ordinal (and for the
controller-revision-hash label Kubernetes adds: name + "-" + 10 chars <= 63).
*/}}
{{- define "paxoskv.fullname" -}}
{{- if .Values.fullnameOverride -}}
{{- .Values.fullnameOverride | trunc 52 | trimSuffix "-" -}}
{{- else -}}
{{- $name := default .Chart.Name .Values.nameOverride -}}
{{- if contains $name .Release.Name -}}
{{- .Release.Name | trunc 52 | trimSuffix "-" -}}
{{- else -}}
{{- printf "%s-%s" .Release.Name $name | trunc 52 | trimSuffix "-" -}}
{{- end -}}
{{- end -}}
{{- end -}}

{{- define "paxoskv.chart" -}}
{{- printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{- define "paxoskv.headlessName" -}}
{{- printf "%s-headless" (include "paxoskv.fullname" .) | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{- define "paxoskv.selectorLabels" -}}
app.kubernetes.io/name: {{ include "paxoskv.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end -}}

{{- define "paxoskv.labels" -}}
helm.sh/chart: {{ include "paxoskv.chart" . }}
{{ include "paxoskv.selectorLabels" . }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
app.kubernetes.io/part-of: paxoskv
{{- with .Values.commonLabels }}
{{ toYaml . }}
{{- end }}
{{- end -}}

{{- define "paxoskv.serviceAccountName" -}}
{{- if .Values.serviceAccount.create -}}
{{- default (include "paxoskv.fullname" .) .Values.serviceAccount.name -}}
{{- else -}}
{{- default "default" .Values.serviceAccount.name -}}
{{- end -}}
{{- end -}}

{{/* repository@digest when image.digest is set (it pins the exact image; the tag is then
ignored), else repository:tag (tag defaults to the appVersion). */}}
{{- define "paxoskv.image" -}}
{{- if .Values.image.digest -}}
{{- printf "%s@%s" .Values.image.repository .Values.image.digest -}}
{{- else -}}
{{- printf "%s:%s" .Values.image.repository (default .Chart.AppVersion .Values.image.tag) -}}
{{- end -}}
{{- end -}}

{{/*
The `annotations:` block of an object's metadata: commonAnnotations merged with the object's
own (.extra; these win on a clash). Empty output when both are empty. Call with
(dict "ctx" $ "extra" <map or nil>).
*/}}
{{- define "paxoskv.annotations" -}}
{{- $all := merge (deepCopy (default (dict) .extra)) (deepCopy (default (dict) .ctx.Values.commonAnnotations)) -}}
{{- with $all -}}
annotations:
  {{- toYaml . | nindent 2 }}
{{- end -}}
{{- end -}}

{{- define "paxoskv.clusterId" -}}
{{- default (printf "%s-%s" .Release.Namespace (include "paxoskv.fullname" .)) .Values.clusterId -}}
{{- end -}}

{{- define "paxoskv.secretName" -}}
{{- if .Values.peerSecret.existingSecret -}}
{{- .Values.peerSecret.existingSecret -}}
{{- else -}}
{{- printf "%s-peer" (include "paxoskv.fullname" .) -}}
{{- end -}}
{{- end -}}

{{- define "paxoskv.tlsSecretName" -}}
{{- if eq .Values.tls.source "existingSecret" -}}
{{- .Values.tls.existingSecret -}}
{{- else -}}
{{- printf "%s-tls" (include "paxoskv.fullname" .) -}}
{{- end -}}
{{- end -}}

{{/* The names the one certificate of the pods must carry: every pod through the headless
Service (peers dial these), the client Service, and loopback (the CLI inside a pod). */}}
{{- define "paxoskv.tlsDnsNames" -}}
{{- $full := include "paxoskv.fullname" . -}}
{{- $ns := .Release.Namespace -}}
{{- $domain := .Values.clusterDomain -}}
{{- list (printf "*.%s.%s.svc.%s" (include "paxoskv.headlessName" .) $ns $domain) (printf "*.%s.%s.svc" (include "paxoskv.headlessName" .) $ns) (printf "%s.%s.svc.%s" $full $ns $domain) (printf "%s.%s.svc" $full $ns) (printf "%s.%s" $full $ns) $full "localhost" | toJson -}}
{{- end -}}

{{- define "paxoskv.authSecretName" -}}
{{- if .Values.auth.existingSecret -}}
{{- .Values.auth.existingSecret -}}
{{- else -}}
{{- printf "%s-auth" (include "paxoskv.fullname" .) -}}
{{- end -}}
{{- end -}}

{{- define "paxoskv.secretKey" -}}
{{- if .Values.peerSecret.existingSecret -}}
{{- .Values.peerSecret.existingSecretKey -}}
{{- else -}}
peer-secret
{{- end -}}
{{- end -}}

{{- define "paxoskv.clientLabel" -}}
{{- default (printf "%s-client" (include "paxoskv.fullname" .)) .Values.networkPolicy.clientLabel -}}
{{- end -}}

{{/* Quorum of the configured acceptor set: floor(replicas / 2) + 1. */}}
{{- define "paxoskv.quorum" -}}
{{- add (div (int .Values.replicas) 2) 1 -}}
{{- end -}}

{{/*
PDB maxUnavailable: replicas - quorum, the most nodes that may be down while a quorum remains.
An explicit value above that is refused (it would let a drain break quorum).
*/}}
{{- define "paxoskv.pdbMaxUnavailable" -}}
{{- $replicas := int .Values.replicas -}}
{{- $safe := sub $replicas (int (include "paxoskv.quorum" .)) -}}
{{- $v := .Values.podDisruptionBudget.maxUnavailable -}}
{{- if or (eq (toString $v) "") (eq (toString $v) "<nil>") -}}
{{- $safe -}}
{{- else if gt (int $v) (int $safe) -}}
{{- fail (printf "podDisruptionBudget.maxUnavailable=%v would let %v of %v nodes go while the quorum is %v; the most that keeps quorum is %v" $v $v $replicas (include "paxoskv.quorum" .) $safe) -}}
{{- else -}}
{{- int $v -}}
{{- end -}}
{{- end -}}

{{/*
Values added with followReplicas, read nil-safe: `helm upgrade --reuse-values` from a chart
without them keeps the old release's values, which lack them (no chart defaults merged).
"true" or "" for the booleans (include returns a string).
*/}}
{{- define "paxoskv.maxReplicas" -}}
{{- .Values.maxReplicas | default 7 | int -}}
{{- end -}}

{{- define "paxoskv.followReplicas" -}}
{{- if or (not (hasKey .Values "followReplicas")) .Values.followReplicas -}}true{{- end -}}
{{- end -}}

{{- define "paxoskv.rbacCreate" -}}
{{- $rbac := .Values.rbac | default dict -}}
{{- if or (not (hasKey $rbac "create")) $rbac.create -}}true{{- end -}}
{{- end -}}

{{/*
Refuse a scale-down that deletes a majority of the running pods at once: the StatefulSet
deletes them first, fewer than a majority of the current acceptors stay, and no acceptor-set
change can complete (each needs a quorum of the current set). One step may go from N down to
N/2+1. Call with (dict "live" <live spec.replicas> "replicas" <asked>); empty output.
*/}}
{{- define "paxoskv.checkScaleDown" -}}
{{- $live := int .live -}}
{{- $asked := int .replicas -}}
{{- $safe := add (div $live 2) 1 | int -}}
{{- if and (ge $asked 1) (lt $asked $safe) -}}
{{- if lt $safe $live -}}
{{- fail (printf "replicas: scaling %v -> %v would delete a majority of the running acceptors at once, so no acceptor-set change could complete (no quorum). The largest safe step is %v -> %v: go %v -> %v, then on from there once the scaler reports in_sync (chart README, 'Scaling')." $live $asked $live $safe $live $safe) -}}
{{- else -}}
{{- fail (printf "replicas: scaling %v -> %v would leave fewer than a majority of the %v acceptors running, so no acceptor-set change could complete (no quorum): a release of %v replicas cannot be scaled down by deleting pods (chart README, 'Scaling')." $live $asked $live $live) -}}
{{- end -}}
{{- end -}}
{{- end -}}

{{/* Release-wide checks that fail rendering early with a clear message. */}}
{{- define "paxoskv.validate" -}}
{{- if lt (int .Values.replicas) 1 -}}
{{- fail "replicas must be >= 1" -}}
{{- end -}}
{{- $maxReplicas := include "paxoskv.maxReplicas" . | int -}}
{{- if lt $maxReplicas (int .Values.replicas) -}}
{{- fail (printf "maxReplicas=%v is below replicas=%v: the peer list names ordinals 0..maxReplicas-1 only, so pods beyond it could not start" $maxReplicas (int .Values.replicas)) -}}
{{- end -}}
{{- $initialReplicas := .Values.initialReplicas | default 0 | int -}}
{{- if and $initialReplicas (or (lt $initialReplicas 1) (gt $initialReplicas $maxReplicas)) -}}
{{- fail (printf "initialReplicas=%v must be between 1 and maxReplicas=%v (or unset): it names epoch 0's acceptors, ordinals 0..initialReplicas-1" $initialReplicas $maxReplicas) -}}
{{- end -}}
{{- if and .Values.persistence.enabled (include "paxoskv.followReplicas" .) (eq (toString (dig "retentionPolicy" "whenScaled" "" (.Values.persistence | default dict))) "Delete") -}}
{{- fail "persistence.retentionPolicy.whenScaled=Delete with followReplicas: a scale-down deletes the pods first, and their claims with them, while their acceptors are still members of the acceptor set until the change removes them (a pod coming back in that time would start empty). Use whenScaled=Retain and delete the claims of removed ordinals by hand once the scaler reports in_sync." -}}
{{- end -}}
{{- if not (has .Values.podAntiAffinity (list "soft" "hard" "none")) -}}
{{- fail (printf "podAntiAffinity must be soft, hard or none (got %q)" .Values.podAntiAffinity) -}}
{{- end -}}
{{- if and .Values.tls.enabled (not (has .Values.tls.source (list "generate" "existingSecret" "certManager"))) -}}
{{- fail (printf "tls.source must be generate, existingSecret or certManager (got %q)" .Values.tls.source) -}}
{{- end -}}
{{- if and .Values.tls.enabled (eq .Values.tls.source "existingSecret") (not .Values.tls.existingSecret) -}}
{{- fail "tls.source=existingSecret needs tls.existingSecret: a Secret with tls.crt, tls.key and ca.crt" -}}
{{- end -}}
{{- if and .Values.tls.enabled (eq .Values.tls.source "certManager") (not .Values.tls.certManager.issuerRef.name) -}}
{{- fail "tls.source=certManager needs tls.certManager.issuerRef.name" -}}
{{- end -}}
{{- if and .Values.tls.enabled (eq .Values.peerPortMode "shared") -}}
{{- fail "tls.enabled needs a peer port of its own (peerPortMode=separate): mutual TLS is enforced there" -}}
{{- end -}}
{{- if and .Values.auth.metricsAuth (ne .Values.auth.mode "token") -}}
{{- fail "auth.metricsAuth needs auth.mode=token" -}}
{{- end -}}
{{- if and .Values.service.loadBalancerSourceRanges (ne .Values.service.type "LoadBalancer") -}}
{{- fail (printf "service.loadBalancerSourceRanges only applies to service.type=LoadBalancer (got %s): it would restrict nothing" .Values.service.type) -}}
{{- end -}}
{{- if and .Values.service.externalTrafficPolicy (not (has .Values.service.type (list "NodePort" "LoadBalancer"))) -}}
{{- fail (printf "service.externalTrafficPolicy only applies to service.type NodePort or LoadBalancer (got %s)" .Values.service.type) -}}
{{- end -}}
{{- if and .Values.restore.enabled (not .Values.restore.claimName) -}}
{{- fail "restore.enabled needs restore.claimName: the PersistentVolumeClaim that holds the backup file (e.g. the backup.persistence claim of the old release)" -}}
{{- end -}}
{{- if and .Values.restore.enabled (not .Values.restore.file) -}}
{{- fail "restore.enabled needs restore.file: the backup file's name on restore.claimName, e.g. paxoskv-20261201T030000Z.backup" -}}
{{- end -}}
{{- if and .Values.peerSecret.existingSecret (not .Values.peerSecret.existingSecretKey) -}}
{{- fail "peerSecret.existingSecretKey must name the key inside peerSecret.existingSecret" -}}
{{- end -}}
{{- end -}}

{{/*
Series selector of this release for the alert rules: prometheusRule.selector when set, else
namespace and job. The ServiceMonitor and the PodMonitor set jobLabel to
app.kubernetes.io/instance, so job = the release name.
*/}}
{{- define "paxoskv.ruleSelector" -}}
{{- if .Values.prometheusRule.selector -}}
{{- .Values.prometheusRule.selector -}}
{{- else -}}
namespace="{{ .Release.Namespace }}", job="{{ .Release.Name }}"
{{- end -}}
{{- end -}}

{{/* The client Service's URL, as the certificate names it (https under tls.enabled). */}}
{{- define "paxoskv.clientUrl" -}}
{{- printf "%s://%s.%s.svc.%s:%v" (ternary "https" "http" .Values.tls.enabled) (include "paxoskv.fullname" .) .Release.Namespace .Values.clusterDomain .Values.service.port -}}
{{- end -}}

{{/*
Environment of a paxoskv CLI pod of the chart (backup CronJob, restore Job): the client
Service's URL, the token (from .tokenSecret.name / .key, else the auth Secret's
adminTokenKey) and the CA mounted by "paxoskv.clientVolumes". Call with
(dict "ctx" $ "tokenSecret" <map>).
*/}}
{{- define "paxoskv.clientEnv" -}}
{{- $ctx := .ctx -}}
- name: PAXOSKV_URL
  value: {{ include "paxoskv.clientUrl" $ctx | quote }}
{{- if eq $ctx.Values.auth.mode "token" }}
- name: PAXOSKV_TOKEN
  valueFrom:
    secretKeyRef:
      name: {{ default (include "paxoskv.authSecretName" $ctx) .tokenSecret.name }}
      key: {{ default $ctx.Values.auth.adminTokenKey .tokenSecret.key }}
{{- end }}
{{- if $ctx.Values.tls.enabled }}
- name: PAXOSKV_CACERT
  value: /etc/paxoskv/ca/ca.crt
{{- end }}
{{- end -}}

{{/* Volumes of such a pod: /tmp, and the CA alone (ca.crt of the TLS Secret). */}}
{{- define "paxoskv.clientVolumes" -}}
- name: tmp
  emptyDir:
    sizeLimit: 16Mi
{{- if .Values.tls.enabled }}
- name: ca
  secret:
    secretName: {{ include "paxoskv.tlsSecretName" . }}
    items:
      - key: ca.crt
        path: ca.crt
{{- end }}
{{- end -}}

{{- define "paxoskv.clientVolumeMounts" -}}
- name: tmp
  mountPath: /tmp
{{- if .Values.tls.enabled }}
- name: ca
  mountPath: /etc/paxoskv/ca
  readOnly: true
{{- end }}
{{- end -}}

{{/*
Labels of the backup and restore pods: the release and a component, never the selector
labels of the nodes (the Services, the PodDisruptionBudget and the NetworkPolicy select
those), plus the client label the NetworkPolicy admits. Call with (dict "ctx" $ "component" c).
*/}}
{{- define "paxoskv.clientPodLabels" -}}
app.kubernetes.io/instance: {{ .ctx.Release.Name }}
app.kubernetes.io/part-of: paxoskv
app.kubernetes.io/component: {{ .component }}
{{ include "paxoskv.clientLabel" .ctx }}: "true"
{{- with .ctx.Values.commonLabels }}
{{ toYaml . }}
{{- end }}
{{- end -}}

{{/*
The volumePermissions init container for a backup volume: hands the top directory of the
volume mounted as .volume to the pods' uid/gid (volume plugins that ignore fsGroup). Call with
(dict "ctx" $ "volume" <name>).
*/}}
{{- define "paxoskv.volumePermissionsInit" -}}
{{- $ctx := .ctx -}}
- name: volume-permissions
  image: {{ include "paxoskv.image" $ctx | quote }}
  imagePullPolicy: {{ $ctx.Values.image.pullPolicy }}
  command:
    - /bin/sh
    - -ec
    - chown {{ $ctx.Values.securityContext.runAsUser | default 10001 | int64 }}:{{ $ctx.Values.podSecurityContext.fsGroup | default $ctx.Values.securityContext.runAsGroup | default 10001 | int64 }} /backup
  securityContext:
    runAsUser: 0
    runAsGroup: 0
    runAsNonRoot: false
    allowPrivilegeEscalation: false
    readOnlyRootFilesystem: true
    privileged: false
    capabilities:
      drop: [ALL]
      add: [CHOWN]
    seccompProfile:
      type: RuntimeDefault
  resources:
    {{- toYaml $ctx.Values.volumePermissions.resources | nindent 4 }}
  volumeMounts:
    - name: {{ .volume }}
      mountPath: /backup
{{- end -}}

{{- define "paxoskv.backupClaimName" -}}
{{- default (printf "%s-backup" (include "paxoskv.fullname" .)) .Values.backup.persistence.existingClaim -}}
{{- end -}}
