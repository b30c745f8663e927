#!/usr/bin/env bash
# Show the e2e cluster: kind, kubeconfig, the processes it started, nodes and pods.
#   status.sh [--quiet]   exit 0 only if the cluster is up and its node Ready
set -uo pipefail
. "$(dirname "$0")/lib.sh"
quiet=${1:-}
say() { [[ $quiet == --quiet ]] || echo "$@"; }

[[ -f $STATE/kind ]] || { say "cluster: none (no $STATE/kind)"; exit 1; }
kind=$(cat "$STATE/kind")
say "cluster: $kind   state: $STATE   cache: $CACHE"
say "kubeconfig: $KUBECONFIG_E2E"
ok=0
if [[ $kind == host ]]; then
  for f in "$STATE"/run/*.pid; do
    [[ -e $f ]] || { ok=1; break; }
    n=$(basename "$f" .pid) pid=$(cat "$f")
    if pid_alive "$pid"; then say "  $n: running (pid $pid)"; else say "  $n: NOT running (pid $pid)"; ok=1; fi
  done
  K=("$K8S_BIN/kubectl" --kubeconfig "$KUBECONFIG_E2E")
else
  K=(kubectl --kubeconfig "$KUBECONFIG_E2E")
fi
ready=$("${K[@]}" get nodes -o jsonpath='{range .items[*]}{.status.conditions[?(@.type=="Ready")].status}{end}' \
  --request-timeout 5s 2>/dev/null)
[[ $ready == True* ]] || ok=1
if [[ $quiet != --quiet ]]; then
  "${K[@]}" get nodes,pods,pvc -A -o wide --request-timeout 10s || ok=1
  echo "status: $([[ $ok == 0 ]] && echo UP || echo 'NOT READY')"
fi
exit $ok
