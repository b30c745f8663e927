#!/usr/bin/env bash
# Smoke test of the e2e cluster. Asserts, and fails loudly otherwise, that:
#   1. a FROM-scratch image built locally (docker, e2e/docker.sh) loads into the cluster (load.sh);
#   2. a 3-pod StatefulSet behind a headless Service gets Running and Ready, each PVC Bound
#      through the default StorageClass;
#   3. every pod resolves every pod by its DNS name (<pod>.smoke.paxoskv-smoke.svc.<domain>) to
#      that pod's IP, and reaches it over HTTP;
#   4. a file written on a pod's PVC survives deleting the pod (a new pod, same claim).
# Ends by printing `kubectl get nodes,pods,pvc -A`.
set -euo pipefail
. "$(dirname "$0")/lib.sh"
T0=$(date +%s)
NS=paxoskv-smoke
"$HERE/status.sh" --quiet || die "cluster is not up (make cluster-up)"
if [[ $(cat "$STATE/kind") == host ]]; then KUBECTL=$K8S_BIN/kubectl; else KUBECTL=kubectl; fi
K() { "$KUBECTL" --kubeconfig "$KUBECONFIG_E2E" --request-timeout 30s "$@"; }
failed() {
  log "SMOKE FAILED: $*"
  K -n "$NS" get statefulset,pods,pvc,endpoints -o wide >&2 || true
  K -n "$NS" describe pods >&2 2>&1 | tail -n 60 >&2 || true
  K get events -n "$NS" --sort-by .lastTimestamp 2>&1 | tail -n 20 >&2 || true
  exit 1
}

# 1. image
eval "$("$HERE/../docker.sh" env)"
"$HERE/../docker.sh" up
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
(cd "$HERE/smoke/app" && "$GO" build -trimpath -ldflags "-s -w" -o "$work/smokepod" .)
cp "$HERE/smoke/Dockerfile" "$work/"
tag=$(sha256sum "$work/smokepod" | cut -c1-12)
IMAGE=paxoskv-e2e-smoke:$tag
docker build -q -t "$IMAGE" "$work" >/dev/null
log "built $IMAGE ($(stat -c %s "$work/smokepod") byte static binary, FROM scratch)"
"$HERE/load.sh" "$IMAGE"

# 2. workload
if K get namespace "$NS" >/dev/null 2>&1; then
  log "deleting the previous smoke namespace"
  K delete namespace "$NS" --wait=true --timeout 120s >/dev/null || failed "old namespace did not go away"
fi
K create namespace "$NS" >/dev/null
sed "s#@IMAGE@#$IMAGE#" "$HERE/smoke/smoke.yaml" | K apply -f - >/dev/null
ready3() { [[ $(K -n "$NS" get statefulset smoke -o jsonpath='{.status.readyReplicas}') == 3 ]]; }
wait_for "3 smoke pods Ready" 240 ready3 || failed "StatefulSet not Ready"
for i in 0 1 2; do
  phase=$(K -n "$NS" get pvc "data-smoke-$i" -o jsonpath='{.status.phase}')
  [[ $phase == Bound ]] || failed "PVC data-smoke-$i is $phase, not Bound"
  sc=$(K -n "$NS" get pvc "data-smoke-$i" -o jsonpath='{.spec.storageClassName}')
  log "ok: PVC data-smoke-$i Bound (StorageClass $sc, volume $(K -n "$NS" get pvc "data-smoke-$i" -o jsonpath='{.spec.volumeName}'))"
done

# 3. DNS by name, and pod-to-pod HTTP
domain=$(K get cm -n kube-system coredns -o jsonpath='{.data.Corefile}' | awk '$1=="kubernetes"{print $2; exit}')
domain=${domain:-$CLUSTER_DOMAIN}
declare -A IP
for i in 0 1 2; do IP[$i]=$(K -n "$NS" get pod "smoke-$i" -o jsonpath='{.status.podIP}'); done
for i in 0 1 2; do
  for j in 0 1 2; do
    [[ $i == "$j" ]] && continue
    name=smoke-$j.smoke.$NS.svc.$domain
    out=$(K -n "$NS" exec "smoke-$i" -- /smokepod resolve "$name" "smoke-$j.smoke") \
      || failed "smoke-$i cannot resolve $name"
    got=$(awk -v n="$name" '$1==n{print $2}' <<<"$out")
    [[ $got == "${IP[$j]}" ]] || failed "smoke-$i resolved $name to '$got', pod IP is ${IP[$j]}"
    body=$(K -n "$NS" exec "smoke-$i" -- /smokepod get "http://smoke-$j.smoke:8080/healthz") \
      || failed "smoke-$i cannot reach smoke-$j over HTTP"
    [[ $body == "ok smoke-$j" ]] || failed "smoke-$i got '$body' from smoke-$j"
    log "ok: smoke-$i resolves $name -> $got and gets '$body' from it"
  done
done

# 4. PVC survives pod deletion
token="written-by-smoke-$(date +%s)-$RANDOM"
K -n "$NS" exec smoke-1 -- /smokepod write /data/token "$token"
old_uid=$(K -n "$NS" get pod smoke-1 -o jsonpath='{.metadata.uid}')
K -n "$NS" delete pod smoke-1 --wait=true --timeout 60s >/dev/null
new_pod() {
  local uid ready
  uid=$(K -n "$NS" get pod smoke-1 -o jsonpath='{.metadata.uid}') || return 1
  ready=$(K -n "$NS" get pod smoke-1 -o jsonpath='{.status.conditions[?(@.type=="Ready")].status}')
  [[ -n $uid && $uid != "$old_uid" && $ready == True ]]
}
wait_for "a new smoke-1 pod Ready" 120 new_pod || failed "smoke-1 did not come back"
got=$(K -n "$NS" exec smoke-1 -- /smokepod cat /data/token) || failed "cannot read /data/token on the new smoke-1"
[[ $got == "$token" ]] || failed "/data/token on the new smoke-1 is '$got', expected '$token'"
boots=$(K -n "$NS" exec smoke-1 -- /smokepod cat /data/boots | grep -c '^smoke-1 ')
(( boots >= 2 )) || failed "/data/boots on smoke-1 records $boots boots, expected >= 2"
log "ok: /data/token survived deleting smoke-1 (pod uid $old_uid -> $(K -n "$NS" get pod smoke-1 -o jsonpath='{.metadata.uid}'), $boots boots recorded on the PVC)"
ready3() { [[ $(K -n "$NS" get statefulset smoke -o jsonpath='{.status.readyReplicas}') == 3 ]]; }
wait_for "3 smoke pods Ready again" 120 ready3 || failed "StatefulSet not Ready after the pod deletion"

echo
echo "+ kubectl get nodes,pods,pvc -A"
K get nodes,pods,pvc -A -o wide
log "SMOKE PASSED in $(( $(date +%s) - T0 )) s ($(cat "$STATE/kind") cluster)"
