#!/usr/bin/env bash
# Install the pinned chart tools (helm, kubeconform, promtool) from the Go module proxy into a cache
# outside the clone, skipping any binary already cached at its pinned version.
#   PAXOSKV_TOOLS   cache dir (default /var/cache/paxoskv-tools); binaries land in $PAXOSKV_TOOLS/bin
#   HELM_VERSION, KUBECONFORM_VERSION, PROMETHEUS_MODULE_VERSION  pins (defaults below;
#   deploy.mk passes its own)
# The version of each cached binary (and the build recipe) is recorded in
# $PAXOSKV_TOOLS/bin/<tool>.version; a cached binary is reused only when that stamp matches.
set -euo pipefail
TOOLS=${PAXOSKV_TOOLS:-/var/cache/paxoskv-tools}
HELM_VERSION=${HELM_VERSION:-v3.19.5}
KUBECONFORM_VERSION=${KUBECONFORM_VERSION:-v0.7.0}
# promtool (alert rule checks and unit tests) from the Prometheus Go module; its module
# versions are v0.<minor*100+...>: v0.316.0 is Prometheus 3.16.0.
PROMETHEUS_MODULE_VERSION=${PROMETHEUS_MODULE_VERSION:-v0.316.0}
BIN="$TOOLS/bin"
mkdir -p "$BIN"

# Bump when the build recipe below changes, so cached binaries are rebuilt.
RECIPE=2

install_one() { # name module version [ldflags]
  local name=$1 module=$2 version=$3 ldflags=${4:-}
  local stamp="$version recipe=$RECIPE"
  if [[ -x $BIN/$name && -f $BIN/$name.version && $(cat "$BIN/$name.version") == "$stamp" ]]; then
    return 0
  fi
  command -v go >/dev/null || { echo "install-tools: go not found (needed to build $name)" >&2; exit 1; }
  echo "install-tools: go install $module@$version -> $BIN" >&2
  local start=$SECONDS
  # CGO off: static binaries, no C toolchain needed. -trimpath: reproducible paths.
  CGO_ENABLED=0 GOBIN="$BIN" GOFLAGS="${GOFLAGS:-} -trimpath" \
    go install -ldflags "-s -w $ldflags" "$module@$version"
  echo "$stamp" >"$BIN/$name.version"
  echo "install-tools: $name $version built in $((SECONDS - start)) s" >&2
}

# helm's own release build stamps its version and the Kubernetes version it assumes when no
# cluster is asked (helm template, lint, --dry-run=client): the minor of its k8s.io/client-go
# (v0.34.x -> 1.34). A plain `go install` leaves "v1.20.0", which would fail the chart's
# kubeVersion constraint; do what helm's Makefile does.
helm_ldflags() {
  local mod minor
  mod=$(cd / && go mod download -json "helm.sh/helm/v3@$HELM_VERSION" | sed -n 's/.*"GoMod": "\(.*\)".*/\1/p')
  minor=$(sed -n 's/^[[:space:]]*k8s.io\/client-go v0\.\([0-9]*\)\..*/\1/p' "$mod" | head -n1)
  [[ -n $minor ]] || { echo "install-tools: cannot read helm's client-go version" >&2; exit 1; }
  local p=helm.sh/helm/v3
  echo "-X $p/internal/version.version=$HELM_VERSION -X $p/internal/version.gitTreeState=clean" \
    "-X $p/pkg/chartutil.k8sVersionMajor=1 -X $p/pkg/chartutil.k8sVersionMinor=$minor" \
    "-X $p/pkg/lint/rules.k8sVersionMajor=1 -X $p/pkg/lint/rules.k8sVersionMinor=$minor"
}

if ! [[ -x $BIN/helm && -f $BIN/helm.version && $(cat "$BIN/helm.version") == "$HELM_VERSION recipe=$RECIPE" ]]; then
  install_one helm helm.sh/helm/v3/cmd/helm "$HELM_VERSION" "$(helm_ldflags)"
fi
install_one kubeconform github.com/yannh/kubeconform/cmd/kubeconform "$KUBECONFORM_VERSION" \
  "-X main.version=$KUBECONFORM_VERSION"
# Prometheus' Go module v0.MMmm.p is release M.mm.p (v0.316.0 = 3.16.0).
prom_release() { local v=${1#v0.}; local m=${v%%.*}; echo "$((m / 100)).$((m % 100)).${v#*.}"; }
# promtool only feeds tests/deploy/test_alert_rules.py (which skips without it), so a failed
# build warns instead of failing chart-check. Its cold build is long (about 10 minutes of CPU),
# so `make test` passes PAXOSKV_PROMTOOL=0 and uses it only once `make e2e` (which builds
# Prometheus anyway) or `make chart-tools` has cached it.
if [[ ${PAXOSKV_PROMTOOL:-1} != 1 ]]; then
  [[ -x $BIN/promtool ]] || echo "install-tools: promtool not built (PAXOSKV_PROMTOOL=0);" \
    "the alert rule unit tests will be skipped" >&2
  exit 0
fi
( install_one promtool github.com/prometheus/prometheus/cmd/promtool "$PROMETHEUS_MODULE_VERSION" \
  "-X github.com/prometheus/common/version.Version=$(prom_release "$PROMETHEUS_MODULE_VERSION")" ) ||
  echo "install-tools: WARNING: promtool $PROMETHEUS_MODULE_VERSION did not build;" \
    "the alert rule tests will be skipped" >&2
