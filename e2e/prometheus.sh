#!/usr/bin/env bash
# Build (once, cached by version outside the clone) and print the path of a real Prometheus
# server from the Go module proxy, for step 7 of the end-to-end suite.
#   e2e/prometheus.sh          prints the binary's path, building it first if needed
set -euo pipefail
# Prometheus 3.x is published on the Go module proxy as v0.3xx.y module versions.
PROMETHEUS_MODULE_VERSION=${PROMETHEUS_MODULE_VERSION:-v0.316.0}
CACHE=${PAXOSKV_E2E_CACHE:-/var/cache/paxoskv-e2e}
BIN_DIR="$CACHE/prometheus/bin-$PROMETHEUS_MODULE_VERSION"
BIN="$BIN_DIR/prometheus"
if [[ ! -x $BIN ]]; then
  command -v go >/dev/null || { echo "prometheus.sh: go is required" >&2; exit 1; }
  echo "prometheus.sh: building prometheus $PROMETHEUS_MODULE_VERSION (cold: several minutes)" >&2
  mkdir -p "$BIN_DIR"
  started=$(date +%s)
  GOBIN="$BIN_DIR" CGO_ENABLED=0 GOFLAGS=-trimpath \
    GOMODCACHE="${GOMODCACHE:-$CACHE/go/mod}" GOCACHE="${GOCACHE:-$CACHE/go/build}" \
    go install "github.com/prometheus/prometheus/cmd/prometheus@$PROMETHEUS_MODULE_VERSION" >&2
  echo "prometheus.sh: built in $(( $(date +%s) - started )) s" >&2
fi
echo "$BIN"
