#!/usr/bin/env bash
# Install the pinned chart tools (helm, kubeconform) from the Go module proxy into a cache
# outside the clone, skipping any binary already cached at its pinned version.
#   PAXOSKV_TOOLS   cache dir (default /var/cache/paxoskv-tools); binaries land in $PAXOSKV_TOOLS/bin
#   HELM_VERSION, KUBECONFORM_VERSION  pins (defaults below; deploy.mk passes its own)
# The version of each cached binary is recorded in $PAXOSKV_TOOLS/bin/<tool>.version, because
# `helm version` of a `go install` build does not report the tag (no -ldflags), so the stamp is the
# only reliable record.
set -euo pipefail
TOOLS=${PAXOSKV_TOOLS:-/var/cache/paxoskv-tools}
HELM_VERSION=${HELM_VERSION:-v3.19.5}
KUBECONFORM_VERSION=${KUBECONFORM_VERSION:-v0.7.0}
BIN="$TOOLS/bin"
mkdir -p "$BIN"

install_one() { # name module version
  local name=$1 module=$2 version=$3
  if [[ -x $BIN/$name && -f $BIN/$name.version && $(cat "$BIN/$name.version") == "$version" ]]; then
    return 0
  fi
  command -v go >/dev/null || { echo "install-tools: go not found (needed to build $name)" >&2; exit 1; }
  echo "install-tools: go install $module@$version -> $BIN" >&2
  local start=$SECONDS
  # CGO off: static binaries, no C toolchain needed. -trimpath: reproducible paths.
  CGO_ENABLED=0 GOBIN="$BIN" GOFLAGS="${GOFLAGS:-} -trimpath" go install "$module@$version"
  echo "$version" >"$BIN/$name.version"
  echo "install-tools: $name $version built in $((SECONDS - start)) s" >&2
}

install_one helm helm.sh/helm/v3/cmd/helm "$HELM_VERSION"
install_one kubeconform github.com/yannh/kubeconform/cmd/kubeconform "$KUBECONFORM_VERSION"
