#!/usr/bin/env bash
# Start the e2e Kubernetes cluster and wait (bounded) until its node is Ready and CoreDNS answers.
#   PAXOSKV_CLUSTER=auto (default) | host | kind
#     host: etcd, kube-apiserver, kube-controller-manager, kube-scheduler, kubelet, kube-proxy and a
#           private containerd as host processes (pid files in $STATE/run). Works with no registry.
#     kind: `kind create cluster` with the pinned node image (needs kind, a registry and a Docker
#           that can run --privileged containers).
#     auto: kind if `kind` is installed and a privileged container runs, else host.
# Writes the kubeconfig to $KUBECONFIG_E2E (default /var/lib/paxoskv-e2e/kubeconfig).
set -euo pipefail
. "$(dirname "$0")/lib.sh"
T0=$(date +%s)
e2e_lock

choose_kind() {
  case ${PAXOSKV_CLUSTER:-auto} in
    kind) return 0 ;;
    host) return 1 ;;
    auto)
      command -v kind >/dev/null 2>&1 || return 1
      command -v docker >/dev/null 2>&1 || return 1
      log "kind found; checking that Docker can run a privileged container"
      timeout 600 docker run --rm --privileged --entrypoint /bin/true "$KIND_NODE_IMAGE" >/dev/null 2>&1
      ;;
    *) die "PAXOSKV_CLUSTER must be auto, host or kind" ;;
  esac
}

if "$HERE/status.sh" --quiet; then
  log "cluster already up ($(cat "$STATE/kind")); kubeconfig: $KUBECONFIG_E2E"
  exit 0
fi
if [[ -e $STATE ]]; then
  log "leftover state in $STATE: tearing it down first"
  "$HERE/down.sh"
fi

if choose_kind; then
  mkdir -p "$STATE"
  echo kind >"$STATE/kind"
  log "creating a kind cluster ($KIND_NODE_IMAGE)"
  kind create cluster --name paxoskv-e2e --image "$KIND_NODE_IMAGE" --kubeconfig "$KUBECONFIG_E2E" --wait 300s
  kubectl --kubeconfig "$KUBECONFIG_E2E" get nodes -o wide
  log "cluster-up: kind cluster 'paxoskv-e2e' ready in $(( $(date +%s) - T0 )) s"
  log "KUBECONFIG=$KUBECONFIG_E2E"
  exit 0
fi

# ---------------------------------------------------------------- host processes
[[ $(id -u) == 0 ]] || die "the host-process cluster needs root"
"$HERE/install-deps.sh"
"$HERE/build.sh" all
T_BUILT=$(date +%s)

# The node: this machine's address on its default route (fallback: first global IPv4 address).
dev=$(ip -4 route show default | awk '{for (i=1;i<NF;i++) if ($i=="dev") {print $(i+1); exit}}')
NODE_IP=$(ip -4 -o addr show ${dev:+dev "$dev"} scope global | awk '{split($4,a,"/"); print a[1]; exit}')
[[ -n $NODE_IP ]] || die "no global IPv4 address found for the node"
NODE_NAME=${PAXOSKV_E2E_NODE:-paxoskv-e2e}
for net in "$POD_CIDR" "$SERVICE_CIDR"; do
  prefix=${net%.*.*}
  if ip -4 route show | grep -v "dev $CNI_BRIDGE" | grep -q "^${prefix//./\\.}\\."; then
    die "$net clashes with a route on this machine: $(ip -4 route show | grep "^$prefix")"
  fi
done

PKI=$STATE/pki RUN=$STATE/run LOGS=$STATE/logs
mkdir -p "$STATE" "$PKI" "$RUN" "$LOGS" "$STATE/cni/net.d" "$STATE/etc" "$(dirname "$CTRD_SOCK")"
echo host >"$STATE/kind"
echo "$NODE_IP" >"$STATE/node-ip"
PATH=$K8S_BIN:$ETCD_BIN:$CRICTL_BIN:$PATH
export PATH

# start NAME COMMAND...: run in the background in its own session, log and pid file under $STATE.
start() {
  local name=$1; shift
  setsid nohup "$@" >"$LOGS/$name.log" 2>&1 </dev/null 9>&- &
  echo $! >"$RUN/$name.pid"
  log "started $name (pid $!, log $LOGS/$name.log)"
}
alive() { pid_alive "$(cat "$RUN/$1.pid")"; }
need_alive() { alive "$1" || { tail -n 30 "$LOGS/$1.log" >&2; die "$1 exited"; }; }

# ---- kernel settings a node needs (only set if not already right)
sysctl_set() { [[ $(sysctl -n "$1") == "$2" ]] || sysctl -qw "$1=$2"; }
if [[ ! -e /proc/sys/net/bridge/bridge-nf-call-iptables ]]; then
  modprobe br_netfilter 2>/dev/null || true
  [[ -e /proc/sys/net/bridge/bridge-nf-call-iptables ]] \
    || die "br_netfilter is not available (needed so Service traffic between pods on the bridge is NATed)"
fi
sysctl_set net.ipv4.ip_forward 1
sysctl_set net.bridge.bridge-nf-call-iptables 1
sysctl_set net.bridge.bridge-nf-call-ip6tables 1
# Docker (if running) leaves FORWARD at DROP: accept pod traffic through a chain of our own.
iptables -N PKVE2E-FORWARD 2>/dev/null || iptables -F PKVE2E-FORWARD
iptables -A PKVE2E-FORWARD -s "$POD_CIDR" -j ACCEPT
iptables -A PKVE2E-FORWARD -d "$POD_CIDR" -j ACCEPT
iptables -C FORWARD -j PKVE2E-FORWARD 2>/dev/null || iptables -I FORWARD 1 -j PKVE2E-FORWARD

# ---- certificates and kubeconfigs from kubeadm
cat >"$STATE/etc/kubeadm.yaml" <<EOF
apiVersion: kubeadm.k8s.io/v1beta4
kind: InitConfiguration
localAPIEndpoint: {advertiseAddress: $NODE_IP, bindPort: 6443}
nodeRegistration: {name: $NODE_NAME}
---
apiVersion: kubeadm.k8s.io/v1beta4
kind: ClusterConfiguration
kubernetesVersion: $K8S_VERSION
clusterName: paxoskv-e2e
certificatesDir: $PKI
controlPlaneEndpoint: $NODE_IP:6443
networking: {serviceSubnet: $SERVICE_CIDR, podSubnet: $POD_CIDR, dnsDomain: $CLUSTER_DOMAIN}
apiServer: {certSANs: [127.0.0.1, localhost, $NODE_IP]}
etcd: {local: {serverCertSANs: [127.0.0.1, localhost], peerCertSANs: [127.0.0.1, localhost]}}
EOF
log "kubeadm: certificates and kubeconfigs"
kubeadm init phase certs all --config "$STATE/etc/kubeadm.yaml" >"$LOGS/kubeadm.log" 2>&1
kubeadm init phase kubeconfig all --config "$STATE/etc/kubeadm.yaml" --kubeconfig-dir "$STATE/etc" \
  >>"$LOGS/kubeadm.log" 2>&1
kubeadm kubeconfig user --config "$STATE/etc/kubeadm.yaml" --client-name system:kube-proxy \
  >"$STATE/etc/kube-proxy.conf" 2>>"$LOGS/kubeadm.log"
cp "$STATE/etc/admin.conf" "$KUBECONFIG_E2E"
K="kubectl --kubeconfig $KUBECONFIG_E2E"

# ---- containerd (private: own config, root, state and socket) with a bridge CNI network
cat >"$STATE/etc/containerd.toml" <<EOF
version = 2
root = "$CTRD_ROOT"
state = "$CTRD_STATE"
disabled_plugins = ["io.containerd.snapshotter.v1.aufs", "io.containerd.snapshotter.v1.btrfs",
  "io.containerd.snapshotter.v1.zfs", "io.containerd.snapshotter.v1.devmapper"]
[grpc]
  address = "$CTRD_SOCK"
[ttrpc]
  address = "$CTRD_SOCK.ttrpc"
[debug]
  address = "$CTRD_SOCK.debug"
[plugins."io.containerd.internal.v1.opt"]
  path = "$STATE/containerd/opt"
[plugins."io.containerd.grpc.v1.cri"]
  sandbox_image = "$PAUSE_IMAGE"
  tolerate_missing_hugepages_controller = true
  # This machine's capability bounding set lacks CAP_SYS_RESOURCE, so no process may lower its
  # oom_score_adj: clamp the sandbox's -998 (and the kubelet's negative scores) to containerd's own.
  restrict_oom_score_adj = true
  stream_server_address = "127.0.0.1"
  [plugins."io.containerd.grpc.v1.cri".containerd]
    snapshotter = "overlayfs"
    default_runtime_name = "runc"
    [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc]
      runtime_type = "io.containerd.runc.v2"
      [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc.options]
        SystemdCgroup = false
        BinaryName = "$(command -v runc)"
  [plugins."io.containerd.grpc.v1.cri".cni]
    bin_dir = "/usr/lib/cni"
    conf_dir = "$STATE/cni/net.d"
EOF
cat >"$STATE/cni/net.d/10-pkve2e.conflist" <<EOF
{
  "cniVersion": "0.4.0",
  "name": "pkve2e",
  "plugins": [
    {"type": "bridge", "bridge": "$CNI_BRIDGE", "isGateway": true, "ipMasq": true, "hairpinMode": true,
     "ipam": {"type": "host-local", "dataDir": "$STATE/cni/ipam",
              "ranges": [[{"subnet": "${POD_CIDR%.*.*}.0.0/24"}]], "routes": [{"dst": "0.0.0.0/0"}]}},
    {"type": "portmap", "capabilities": {"portMappings": true}}
  ]
}
EOF
start containerd containerd --config "$STATE/etc/containerd.toml"
CTR="ctr --address $CTRD_SOCK -n k8s.io"
wait_for "containerd socket" 60 $CTR version || { need_alive containerd; die "containerd not answering"; }
for t in "$IMAGES/pause-$PAUSE_VERSION.tar" "$IMAGES/coredns-$COREDNS_VERSION.tar"; do
  $CTR images import --no-unpack "$t" >/dev/null
done
log "images in containerd: $($CTR images ls -q | tr '\n' ' ')"

# ---- etcd
start etcd etcd --name "$NODE_NAME" --data-dir "$STATE/etcd" \
  --listen-client-urls https://127.0.0.1:2379 --advertise-client-urls https://127.0.0.1:2379 \
  --listen-peer-urls https://127.0.0.1:2380 --initial-advertise-peer-urls https://127.0.0.1:2380 \
  --initial-cluster "$NODE_NAME=https://127.0.0.1:2380" --listen-metrics-urls http://127.0.0.1:2381 \
  --cert-file "$PKI/etcd/server.crt" --key-file "$PKI/etcd/server.key" --client-cert-auth \
  --trusted-ca-file "$PKI/etcd/ca.crt" --peer-cert-file "$PKI/etcd/peer.crt" \
  --peer-key-file "$PKI/etcd/peer.key" --peer-client-cert-auth --peer-trusted-ca-file "$PKI/etcd/ca.crt" \
  --snapshot-count 10000
wait_for "etcd health" 60 curl -fsS http://127.0.0.1:2381/health || { need_alive etcd; die "etcd unhealthy"; }

# ---- control plane
start kube-apiserver kube-apiserver --advertise-address "$NODE_IP" --secure-port 6443 \
  --allow-privileged=true --authorization-mode Node,RBAC --enable-admission-plugins NodeRestriction \
  --enable-bootstrap-token-auth=true --client-ca-file "$PKI/ca.crt" \
  --tls-cert-file "$PKI/apiserver.crt" --tls-private-key-file "$PKI/apiserver.key" \
  --etcd-servers https://127.0.0.1:2379 --etcd-cafile "$PKI/etcd/ca.crt" \
  --etcd-certfile "$PKI/apiserver-etcd-client.crt" --etcd-keyfile "$PKI/apiserver-etcd-client.key" \
  --kubelet-client-certificate "$PKI/apiserver-kubelet-client.crt" \
  --kubelet-client-key "$PKI/apiserver-kubelet-client.key" \
  --kubelet-preferred-address-types InternalIP,Hostname \
  --proxy-client-cert-file "$PKI/front-proxy-client.crt" --proxy-client-key-file "$PKI/front-proxy-client.key" \
  --requestheader-client-ca-file "$PKI/front-proxy-ca.crt" --requestheader-allowed-names front-proxy-client \
  --requestheader-extra-headers-prefix X-Remote-Extra- --requestheader-group-headers X-Remote-Group \
  --requestheader-username-headers X-Remote-User \
  --service-account-issuer "https://kubernetes.default.svc.$CLUSTER_DOMAIN" \
  --service-account-key-file "$PKI/sa.pub" --service-account-signing-key-file "$PKI/sa.key" \
  --service-cluster-ip-range "$SERVICE_CIDR"
wait_for "kube-apiserver /readyz" 120 $K get --raw /readyz || { need_alive kube-apiserver; die "apiserver not ready"; }
# What `kubeadm init` would do: admin.conf's user is in group kubeadm:cluster-admins, which only
# a binding made with super-admin.conf (system:masters) turns into cluster-admin.
kubectl --kubeconfig "$STATE/etc/super-admin.conf" create clusterrolebinding kubeadm:cluster-admins \
  --clusterrole cluster-admin --group kubeadm:cluster-admins >/dev/null

common_auth=(--authentication-kubeconfig "$STATE/etc/controller-manager.conf"
  --authorization-kubeconfig "$STATE/etc/controller-manager.conf")
start kube-controller-manager kube-controller-manager --kubeconfig "$STATE/etc/controller-manager.conf" \
  "${common_auth[@]}" --bind-address 127.0.0.1 --leader-elect=false --cluster-name paxoskv-e2e \
  --client-ca-file "$PKI/ca.crt" --requestheader-client-ca-file "$PKI/front-proxy-ca.crt" \
  --root-ca-file "$PKI/ca.crt" --service-account-private-key-file "$PKI/sa.key" \
  --cluster-signing-cert-file "$PKI/ca.crt" --cluster-signing-key-file "$PKI/ca.key" \
  --use-service-account-credentials=true --controllers '*,bootstrapsigner,tokencleaner' \
  --allocate-node-cidrs=true --cluster-cidr "$POD_CIDR" --node-cidr-mask-size 24 \
  --service-cluster-ip-range "$SERVICE_CIDR" --enable-hostpath-provisioner=true
start kube-scheduler kube-scheduler --kubeconfig "$STATE/etc/scheduler.conf" \
  --authentication-kubeconfig "$STATE/etc/scheduler.conf" --authorization-kubeconfig "$STATE/etc/scheduler.conf" \
  --bind-address 127.0.0.1 --leader-elect=false

# ---- node: kubelet and kube-proxy
cat >"$STATE/etc/kubelet.yaml" <<EOF
apiVersion: kubelet.config.k8s.io/v1beta1
kind: KubeletConfiguration
authentication:
  anonymous: {enabled: false}
  webhook: {enabled: true}
  x509: {clientCAFile: $PKI/ca.crt}
authorization: {mode: Webhook}
address: $NODE_IP
cgroupDriver: cgroupfs
failCgroupV1: false
failSwapOn: false
containerRuntimeEndpoint: unix://$CTRD_SOCK
clusterDNS: [$DNS_SVC_IP]
clusterDomain: $CLUSTER_DOMAIN
resolvConf: /etc/resolv.conf
podLogsDir: $STATE/pod-logs
healthzBindAddress: 127.0.0.1
oomScoreAdj: 0
# A test node on a shared machine: never evict for disk, never garbage-collect imported images.
evictionHard: {memory.available: 100Mi, nodefs.available: 1%, imagefs.available: 1%, nodefs.inodesFree: 1%}
imageGCHighThresholdPercent: 100
imageGCLowThresholdPercent: 99
EOF
start kubelet kubelet --config "$STATE/etc/kubelet.yaml" --kubeconfig "$STATE/etc/kubelet.conf" \
  --root-dir "$STATE/kubelet" --hostname-override "$NODE_NAME" --node-ip "$NODE_IP" --v 1
cat >"$STATE/etc/kube-proxy.yaml" <<EOF
apiVersion: kubeproxy.config.k8s.io/v1alpha1
kind: KubeProxyConfiguration
clientConnection: {kubeconfig: $STATE/etc/kube-proxy.conf}
mode: iptables
clusterCIDR: $POD_CIDR
hostnameOverride: $NODE_NAME
bindAddress: 0.0.0.0
healthzBindAddress: 127.0.0.1:10256
metricsBindAddress: 127.0.0.1:10249
oomScoreAdj: 0
# Leave the machine's conntrack sysctls alone.
conntrack: {maxPerCore: 0, tcpEstablishedTimeout: 0s, tcpCloseWaitTimeout: 0s}
EOF
start kube-proxy kube-proxy --config "$STATE/etc/kube-proxy.yaml"

node_ready() {
  [[ $($K get node "$NODE_NAME" -o jsonpath='{.status.conditions[?(@.type=="Ready")].status}') == True ]]
}
wait_for "node $NODE_NAME Ready" 180 node_ready || {
  for p in kubelet kube-controller-manager containerd; do need_alive $p; done
  tail -n 30 "$LOGS/kubelet.log" >&2; die "node not Ready"; }

# ---- add-ons: CoreDNS and the default StorageClass
sed -e "s/@DNS_SVC_IP@/$DNS_SVC_IP/g" -e "s/@CLUSTER_DOMAIN@/$CLUSTER_DOMAIN/g" \
  -e "s#@COREDNS_IMAGE@#$COREDNS_IMAGE#g" "$HERE/addons/coredns.yaml" | $K apply -f - >/dev/null
$K apply -f "$HERE/addons/storageclass.yaml" >/dev/null
wait_for "CoreDNS rollout" 180 $K -n kube-system rollout status deploy/coredns --timeout 5s || {
  $K -n kube-system get pods -o wide >&2; $K -n kube-system describe pods -l k8s-app=kube-dns | tail -30 >&2
  die "CoreDNS did not become ready"; }
# Ask the kube-dns Service (through kube-proxy) from the host.
dns_answers() {
  dig +short +time=2 +tries=1 "@$DNS_SVC_IP" "kubernetes.default.svc.$CLUSTER_DOMAIN" | grep -qx "$KUBE_API_SVC_IP"
}
wait_for "CoreDNS answers kubernetes.default via $DNS_SVC_IP" 120 dns_answers || die "CoreDNS does not answer"

$K get nodes -o wide
log "cluster-up: host-process cluster ready: build/cache $(( T_BUILT - T0 )) s, start $(( $(date +%s) - T_BUILT )) s, total $(( $(date +%s) - T0 )) s"
log "KUBECONFIG=$KUBECONFIG_E2E"
