#!/usr/bin/env bash
# Tear the e2e cluster down so that cluster-up can run again:
# stop every process up.sh started (by pid file), its pods and containers, unmount what they
# mounted, delete the network namespaces, bridge and iptables chains they made, remove $STATE.
# Safe to run when nothing is up. The cache ($PAXOSKV_E2E_CACHE) is kept.
set -uo pipefail
. "$(dirname "$0")/lib.sh"
RUN=$STATE/run
e2e_lock

if [[ ! -e $STATE ]]; then log "nothing to tear down ($STATE absent)"; exit 0; fi
if [[ $(cat "$STATE/kind" 2>/dev/null) == kind ]]; then
  kind delete cluster --name paxoskv-e2e || true
  rm -rf "$STATE"
  log "kind cluster deleted"
  exit 0
fi

# Our process, by pid file, only if the pid still runs the binary the file is named after.
ours() {
  local name=$1 pid
  [[ -f $RUN/$name.pid ]] || return 1
  pid=$(cat "$RUN/$name.pid")
  pid_alive "$pid" || return 1
  [[ $(tr '\0' '\n' <"/proc/$pid/cmdline" | head -n1) == *"$name" ]] || return 1
  echo "$pid"
}
stop() {
  local name=$1 pid
  if pid=$(ours "$name"); then
    kill -TERM "$pid"
    for _ in $(seq 1 40); do pid_alive "$pid" || break; sleep 0.5; done
    if pid_alive "$pid"; then log "$name (pid $pid) ignored SIGTERM: SIGKILL"; kill -KILL "$pid"; sleep 0.5; fi
    log "stopped $name (pid $pid)"
  fi
  rm -f "$RUN/$name.pid"
}

K=("$K8S_BIN/kubectl" --kubeconfig "$KUBECONFIG_E2E" --request-timeout 10s)
CRICTL=("$CRICTL_BIN/crictl" --runtime-endpoint "unix://$CTRD_SOCK" --timeout 10s)

# 1. Let the kubelet take its pods down itself (CNI DEL, volume unmounts) while it still can.
stop kube-controller-manager
stop kube-scheduler
if ours kube-apiserver >/dev/null && ours kubelet >/dev/null; then
  "${K[@]}" delete pods --all -A --force --grace-period=0 --wait=false >/dev/null 2>&1 || true
  pods_gone() { [[ -z $("${CRICTL[@]}" pods --state ready -q 2>/dev/null) ]]; }
  wait_for "kubelet to stop all pods" 60 pods_gone || true
fi
stop kubelet
stop kube-proxy
stop kube-apiserver
stop etcd

# 2. Anything still there: stop and remove through CRI while containerd runs.
if ours containerd >/dev/null; then
  for p in $("${CRICTL[@]}" pods -q 2>/dev/null); do
    "${CRICTL[@]}" stopp "$p" >/dev/null 2>&1 || true
    "${CRICTL[@]}" rmp -f "$p" >/dev/null 2>&1 || true
  done
fi
stop containerd
# containerd's shims outlive it by design: find the ones bound to our socket, by their command line.
for d in /proc/[0-9]*; do
  cmd=$(tr "\0" " " 2>/dev/null <"$d/cmdline") || continue
  if [[ $cmd == *containerd-shim* && $cmd == *"-address $CTRD_SOCK "* ]]; then
    pid=${d#/proc/}
    log "killing leftover shim $pid and its container processes"
    pkids=$(cat "$d"/task/*/children 2>/dev/null)
    kill -KILL "$pid" $pkids 2>/dev/null || true
  fi
done
if [[ -x $K8S_BIN/kube-proxy ]]; then "$K8S_BIN/kube-proxy" --cleanup >/dev/null 2>&1 || true; fi
# What `kube-proxy --cleanup` leaves: the kubelet's KUBE-FIREWALL, KUBE-KUBELET-CANARY and
# KUBE-IPTABLES-HINT chains (and any other KUBE-* chain): drop the jumps to them, then them.
for ipt in iptables ip6tables; do
  for table in filter nat mangle; do
    "$ipt" -t "$table" -S 2>/dev/null | grep -E '^-A [A-Z]+ .*-j KUBE-' | grep -vE '^-A KUBE-' \
      | while read -r _ rule; do eval "$ipt -t $table -D $rule" 2>/dev/null || true; done
    chains=$("$ipt" -t "$table" -S 2>/dev/null | awk '$1=="-N" && $2 ~ /^KUBE-/ {print $2}')
    for c in $chains; do "$ipt" -t "$table" -F "$c" 2>/dev/null; done
    for c in $chains; do "$ipt" -t "$table" -X "$c" 2>/dev/null; done
  done
done

# 3. Mounts under the state dir (kubelet volumes, container rootfs, sandbox shm), deepest first.
for _ in 1 2 3; do
  mapfile -t mnts < <(awk -v s="$STATE/" 'index($5, s) == 1 {print $5}' /proc/self/mountinfo | sort -r)
  (( ${#mnts[@]} )) || break
  for m in "${mnts[@]}"; do umount "$m" 2>/dev/null || umount -l "$m" 2>/dev/null || true; done
done
# Network namespaces our containerd pinned under /run/netns.
for ns in /run/netns/cni-*; do
  [[ -e $ns ]] || continue
  ip netns delete "${ns##*/}" 2>/dev/null || { umount "$ns" 2>/dev/null; rm -f "$ns"; }
done

# 4. Network: bridge, our FORWARD chain, masquerade chains the bridge plugin left for network pkve2e.
ip link show "$CNI_BRIDGE" >/dev/null 2>&1 && ip link delete "$CNI_BRIDGE"
if iptables -S PKVE2E-FORWARD >/dev/null 2>&1; then
  while iptables -D FORWARD -j PKVE2E-FORWARD 2>/dev/null; do :; done
  iptables -F PKVE2E-FORWARD && iptables -X PKVE2E-FORWARD
fi
iptables -t nat -S POSTROUTING | grep -F 'name: \"pkve2e\"' | while read -r _ _ rule; do
  chain=$(sed -n 's/.*-j \(CNI-[0-9a-f]*\).*/\1/p' <<<"$rule")
  eval "iptables -t nat -D POSTROUTING $rule" 2>/dev/null || true
  [[ -n $chain ]] && { iptables -t nat -F "$chain"; iptables -t nat -X "$chain"; } 2>/dev/null
done

# 5. Empty cgroups the kubelet made, pod log links, host-path PV directories, and the state dir.
for c in /sys/fs/cgroup/*/kubepods; do
  [[ -d $c ]] && find "$c" -depth -type d -exec rmdir {} + 2>/dev/null
done
for l in /var/log/containers/*.log; do
  [[ -L $l && $(readlink "$l") == "$STATE/"* ]] && rm -f "$l"
done
rm -rf /tmp/hostpath_pv
if awk -v s="$STATE/" 'index($5, s) == 1 {found=1} END {exit !found}' /proc/self/mountinfo; then
  die "mounts remain under $STATE; not removing it: $(awk -v s="$STATE/" 'index($5, s) == 1 {print $5}' /proc/self/mountinfo)"
fi
rm -rf "$STATE"
log "host-process cluster torn down ($STATE removed; cache $CACHE kept)"
