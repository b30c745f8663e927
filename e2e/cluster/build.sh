#!/usr/bin/env bash
# Build (once per version) everything the host-process cluster needs, into $PAXOSKV_E2E_CACHE:
#   bin/kubernetes-<v>/  kube-apiserver kube-controller-manager kube-scheduler kubelet kube-proxy kubectl kubeadm
#   bin/etcd-<v>/        etcd etcdctl
#   bin/coredns-<v>/     coredns
#   bin/pause-<v>/       pause (a static Go program that sleeps and reaps children)
#   images/              pause and CoreDNS as FROM-scratch OCI tarballs for `ctr images import`
# Every artefact is written under a temporary name and renamed when complete, so an
# interrupted build is redone, and a finished one is skipped.
#   e2e/cluster/build.sh [all|k8s|etcd|coredns|images]
set -euo pipefail
. "$(dirname "$0")/lib.sh"

what=${1:-all}
mkdir -p "$CACHE/bin" "$IMAGES" "$CACHE/src"

have_all() { local d=$1; shift; for f in "$@"; do [[ -x $d/$f ]] || return 1; done; }

# Kubernetes: k8s.io/kubernetes replaces its staging modules with local paths, so `go install`
# refuses it. A wrapper module requires it and points every staging module at its published
# v0.x twin; one `go build` of all commands shares the compiled packages.
build_k8s() {
  if have_all "$K8S_BIN" "${K8S_CMDS[@]}"; then log "kubernetes $K8S_VERSION: cached in $K8S_BIN"; return; fi
  local src=$CACHE/src/kubernetes-$K8S_VERSION staging minor major
  local kmod=$GOMODCACHE/k8s.io/kubernetes@$K8S_VERSION
  major=${K8S_VERSION#v}; major=${major%%.*}
  minor=${K8S_VERSION#v*.}; minor=${minor%%.*}
  staging=v0.${K8S_VERSION#v*.}
  log "kubernetes $K8S_VERSION: building ${K8S_CMDS[*]} (staging modules $staging)"
  "$GO" mod download k8s.io/kubernetes@"$K8S_VERSION"
  mkdir -p "$src"
  {
    echo "module paxoskv.local/k8sbuild"
    echo
    echo "go 1.24.0"
    echo
    echo "require k8s.io/kubernetes $K8S_VERSION"
    echo
    echo "replace ("
    sed -n 's#^[[:space:]]*\(k8s.io/[a-z0-9-]*\) => ./staging/src/.*#\t\1 => \1 '"$staging"'#p' "$kmod/go.mod"
    echo ")"
  } >"$src/go.mod"
  local pkg=() c
  for c in "${K8S_CMDS[@]}"; do pkg+=("k8s.io/kubernetes/cmd/$c"); done
  local vpkgs=(k8s.io/component-base/version k8s.io/client-go/pkg/version) ld="-s -w" p
  local date; date=$(date -u +%Y-%m-%dT%H:%M:%SZ)
  for p in "${vpkgs[@]}"; do
    ld+=" -X $p.gitVersion=$K8S_VERSION -X $p.gitMajor=$major -X $p.gitMinor=$minor"
    ld+=" -X $p.gitTreeState=clean -X $p.buildDate=$date"
  done
  rm -rf "$K8S_BIN.tmp"; mkdir -p "$K8S_BIN.tmp"
  (cd "$src" && "$GO" build -mod=mod -trimpath -tags providerless -ldflags "$ld" -o "$K8S_BIN.tmp/" "${pkg[@]}")
  rm -rf "$K8S_BIN"; mv "$K8S_BIN.tmp" "$K8S_BIN"
  log "kubernetes $K8S_VERSION: built into $K8S_BIN"
}

# etcd: its modules carry replace lines (to sibling directories), so `go install mod@v` refuses
# them too; a wrapper module that just requires the release builds server and etcdctl.
build_etcd() {
  if have_all "$ETCD_BIN" etcd etcdctl; then log "etcd $ETCD_VERSION: cached in $ETCD_BIN"; return; fi
  log "etcd $ETCD_VERSION: building"
  local src=$CACHE/src/etcd-$ETCD_VERSION
  mkdir -p "$src"
  printf 'module paxoskv.local/etcdbuild\n\ngo 1.24\n\nrequire (\n\tgo.etcd.io/etcd/server/v3 %s\n\tgo.etcd.io/etcd/etcdctl/v3 %s\n)\n' \
    "$ETCD_VERSION" "$ETCD_VERSION" >"$src/go.mod"
  rm -rf "$ETCD_BIN.tmp"; mkdir -p "$ETCD_BIN.tmp"
  (cd "$src" && "$GO" build -mod=mod -trimpath -ldflags "-s -w" -o "$ETCD_BIN.tmp/" \
    go.etcd.io/etcd/server/v3 go.etcd.io/etcd/etcdctl/v3)
  mv "$ETCD_BIN.tmp/server" "$ETCD_BIN.tmp/etcd"
  rm -rf "$ETCD_BIN"; mv "$ETCD_BIN.tmp" "$ETCD_BIN"
  log "etcd $ETCD_VERSION: built into $ETCD_BIN"
}

build_coredns() {
  if have_all "$COREDNS_BIN" coredns; then log "coredns $COREDNS_VERSION: cached in $COREDNS_BIN"; return; fi
  log "coredns $COREDNS_VERSION: building"
  rm -rf "$COREDNS_BIN.tmp"; mkdir -p "$COREDNS_BIN.tmp"
  GOBIN=$COREDNS_BIN.tmp "$GO" install -trimpath -ldflags "-s -w" github.com/coredns/coredns@"$COREDNS_VERSION"
  rm -rf "$COREDNS_BIN"; mv "$COREDNS_BIN.tmp" "$COREDNS_BIN"
  log "coredns $COREDNS_VERSION: built into $COREDNS_BIN"
}


build_crictl() {
  if have_all "$CRICTL_BIN" crictl; then log "crictl $CRICTL_VERSION: cached in $CRICTL_BIN"; return; fi
  log "crictl $CRICTL_VERSION: building"
  rm -rf "$CRICTL_BIN.tmp"; mkdir -p "$CRICTL_BIN.tmp"
  GOBIN=$CRICTL_BIN.tmp "$GO" install -trimpath -ldflags "-s -w" sigs.k8s.io/cri-tools/cmd/crictl@"$CRICTL_VERSION"
  rm -rf "$CRICTL_BIN"; mv "$CRICTL_BIN.tmp" "$CRICTL_BIN"
}

# pause: a static Go stand-in for pause.c (source in images/pause), tagged as the pause
# image containerd and kubeadm expect, so nothing ever tries to pull it.
build_pause() {
  if have_all "$PAUSE_BIN" pause; then log "pause $PAUSE_VERSION: cached in $PAUSE_BIN"; return; fi
  rm -rf "$PAUSE_BIN.tmp"; mkdir -p "$PAUSE_BIN.tmp"
  (cd "$HERE/images/pause" && "$GO" build -trimpath -ldflags "-s -w" -o "$PAUSE_BIN.tmp/pause" .)
  rm -rf "$PAUSE_BIN"; mv "$PAUSE_BIN.tmp" "$PAUSE_BIN"
}

build_images() {
  build_pause
  build_coredns
  local t
  t=$IMAGES/pause-$PAUSE_VERSION.tar
  [[ -s $t ]] || python3 "$HERE/mkimage.py" "$t" "$PAUSE_IMAGE" --file "$PAUSE_BIN/pause:/pause" --entrypoint /pause
  t=$IMAGES/coredns-$COREDNS_VERSION.tar
  [[ -s $t ]] || python3 "$HERE/mkimage.py" "$t" "$COREDNS_IMAGE" \
    --file "$COREDNS_BIN/coredns:/coredns" --entrypoint /coredns
  log "images: $(cd "$IMAGES" && echo *.tar)"
}

case $what in
  k8s) build_k8s ;;
  etcd) build_etcd ;;
  coredns) build_coredns ;;
  crictl) build_crictl ;;
  images) build_images ;;
  all) build_images; build_etcd; build_crictl; build_k8s ;;
  *) die "usage: $0 [all|k8s|etcd|coredns|crictl|images]" ;;
esac
