# shellcheck shell=bash
# Shared settings for the e2e cluster scripts. Source it; do not run it.
# shellcheck disable=SC2034
HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
# shellcheck source=versions.env
. "$HERE/versions.env"

# Everything that survives a fresh clone (Go caches, binaries, image tarballs) lives here.
CACHE=${PAXOSKV_E2E_CACHE:-/var/cache/paxoskv-e2e}
# Everything that belongs to one running cluster (certs, etcd data, logs, pid files) lives here.
STATE=${PAXOSKV_E2E_STATE:-/var/lib/paxoskv-e2e}
KUBECONFIG_E2E=${KUBECONFIG_E2E:-$STATE/kubeconfig}

GO=${GO:-/usr/local/go/bin/go}
export GOPATH=$CACHE/go GOMODCACHE=$CACHE/go/mod GOCACHE=$CACHE/go/build
export GOFLAGS=-buildvcs=false CGO_ENABLED=0 GOTOOLCHAIN=${GOTOOLCHAIN:-local}

K8S_BIN=$CACHE/bin/kubernetes-$K8S_VERSION
ETCD_BIN=$CACHE/bin/etcd-$ETCD_VERSION
COREDNS_BIN=$CACHE/bin/coredns-$COREDNS_VERSION
PAUSE_BIN=$CACHE/bin/pause-$PAUSE_VERSION
CRICTL_BIN=$CACHE/bin/crictl-$CRICTL_VERSION
IMAGES=$CACHE/images
K8S_CMDS=(kube-apiserver kube-controller-manager kube-scheduler kubelet kube-proxy kubectl kubeadm)

# Local image tags (never pulled: containerd only ever sees them imported).
PAUSE_IMAGE=registry.k8s.io/pause:$PAUSE_VERSION
COREDNS_IMAGE=registry.k8s.io/coredns/coredns:$COREDNS_VERSION

# Networks: chosen not to clash with this machine (192.0.2.0/24 on eth0) nor Docker's 172.17/16.
POD_CIDR=10.244.0.0/16
SERVICE_CIDR=10.96.0.0/16
KUBE_API_SVC_IP=10.96.0.1
DNS_SVC_IP=10.96.0.10
CLUSTER_DOMAIN=cluster.local
CNI_BRIDGE=pkve2e0

# The containerd this cluster uses is private too: own root, state and socket.
CTRD_ROOT=$STATE/containerd/root
CTRD_STATE=$STATE/containerd/state
CTRD_SOCK=$STATE/containerd/containerd.sock

log() { printf '%s [%s] %s\n' "$(date -u +%H:%M:%S)" "${0##*/}" "$*" >&2; }
die() { log "ERROR: $*"; exit 1; }

# wait_for DESCRIPTION TIMEOUT_S COMMAND...: poll COMMAND every 2 s, with progress, bounded.
wait_for() {
  local what=$1 timeout=$2 start now
  shift 2
  start=$(date +%s)
  while true; do
    if "$@" >/dev/null 2>&1; then
      log "ok: $what ($(( $(date +%s) - start )) s)"
      return 0
    fi
    now=$(( $(date +%s) - start ))
    if (( now >= timeout )); then
      log "timed out waiting for $what ($timeout s)"
      return 1
    fi
    if (( now % 10 < 2 )); then log "waiting for $what ($now/$timeout s)"; fi
    sleep 2
  done
}

# pid_alive PID: the process exists and is not a zombie (our daemons are re-parented to an init
# that may not reap them, and kill -0 succeeds on a zombie).
pid_alive() {
  kill -0 "$1" 2>/dev/null || return 1
  local st
  st=$(awk '{print $3}' "/proc/$1/stat" 2>/dev/null) || return 1
  [[ -n $st && $st != Z ]]
}

# e2e_lock: one cluster-up/cluster-down at a time on this machine (they share $STATE, ports and
# the bridge). The lock is held on fd 9 until the script exits; daemons are started with fd 9
# closed so they never hold it. Nested calls (up.sh running down.sh) skip it.
e2e_lock() {
  [[ -n ${PAXOSKV_E2E_LOCKED:-} ]] && return 0
  local lockfile=${STATE%/}.lock
  mkdir -p "$(dirname "$lockfile")"
  exec 9>"$lockfile"
  if ! flock -n 9; then
    log "another cluster-up/down holds $lockfile; waiting (up to 1800 s)"
    flock -w 1800 9 || die "gave up waiting for $lockfile"
  fi
  export PAXOSKV_E2E_LOCKED=1
}
