#!/usr/bin/env bash
# Build the paxoskv image, choosing a base image that is actually available:
#   1. $BASE_IMAGE if set (used as given; it must exist locally or be pullable);
#   2. python:3.11-slim if it is already in the local image store or can be pulled
#      (the pull is bounded by PULL_TIMEOUT seconds, default 20);
#   3. otherwise the local debootstrap base (deploy/base-image/build.sh, cached by tag).
# Env: IMAGE (default paxoskv:dev), EXTRA_TAGS (space separated, also applied),
#      DOCKER_BUILD_NETWORK (default host: the build's pip reaches PyPI even when the default
#      bridge cannot resolve names), LOCAL_BASE (default paxoskv-base:bookworm),
#      BUILD_CA_BUNDLE (CA bundle for pip in the build; default $PIP_CERT or $SSL_CERT_FILE).
set -euo pipefail
cd "$(dirname "$0")/../.."
IMAGE=${IMAGE:-paxoskv:dev}
DEFAULT_BASE=python:3.11-slim
LOCAL_BASE=${LOCAL_BASE:-paxoskv-base:bookworm}
NETWORK=${DOCKER_BUILD_NETWORK:-host}

# No daemon at DOCKER_HOST / the default socket: use (and if needed start) the project's
# private dockerd, e2e/docker.sh (idempotent; stopped with `e2e/docker.sh down`).
if ! docker version >/dev/null 2>&1 && [[ -z ${DOCKER_HOST:-} && -x e2e/docker.sh ]]; then
  eval "$(e2e/docker.sh env)"
  if ! docker version >/dev/null 2>&1; then
    echo "build-image: no docker daemon; starting the private one (e2e/docker.sh up)" >&2
    e2e/docker.sh up
  fi
fi
docker version >/dev/null 2>&1 || {
  echo "build-image: no docker daemon reachable (DOCKER_HOST=${DOCKER_HOST:-unset});" \
    'start one with: e2e/docker.sh up && eval "$(e2e/docker.sh env)"' >&2
  exit 1
}

base=${BASE_IMAGE:-}
if [[ -z $base ]]; then
  if docker image inspect "$DEFAULT_BASE" >/dev/null 2>&1; then
    base=$DEFAULT_BASE
  elif timeout "${PULL_TIMEOUT:-20}" docker pull -q "$DEFAULT_BASE" >/dev/null 2>&1; then
    base=$DEFAULT_BASE
  else
    echo "build-image: $DEFAULT_BASE cannot be pulled; using local base $LOCAL_BASE" >&2
    deploy/base-image/build.sh "$LOCAL_BASE"
    base=$LOCAL_BASE
  fi
fi

# A host behind a TLS-inspecting proxy trusts extra CAs; pip inside the build needs them too.
# The bundle goes into the build stage only (see the Dockerfile) and is removed afterwards.
ca=${BUILD_CA_BUNDLE:-${PIP_CERT:-${SSL_CERT_FILE:-}}}
if [[ -n $ca && -f $ca ]]; then
  mkdir -p build
  cp "$ca" build/docker-ca-bundle.crt
  trap 'rm -f build/docker-ca-bundle.crt; rmdir build 2>/dev/null || true' EXIT
fi

tags=(-t "$IMAGE")
for t in ${EXTRA_TAGS:-}; do tags+=(-t "$t"); done
echo "build-image: building $IMAGE from $base (network $NETWORK)" >&2
start=$SECONDS
version=$(sed -n 's/^version = "\(.*\)"$/\1/p' pyproject.toml | head -1)
revision=$(git rev-parse HEAD 2>/dev/null || echo unknown)
docker build --network "$NETWORK" --build-arg "BASE_IMAGE=$base" \
  --build-arg "VERSION=$version" --build-arg "REVISION=$revision" "${tags[@]}" .
size=$(docker image inspect -f '{{.Size}}' "$IMAGE")
echo "build-image: $IMAGE built in $((SECONDS - start)) s, $((size / 1024 / 1024)) MiB (base $base)" >&2
