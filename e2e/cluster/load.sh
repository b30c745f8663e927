#!/usr/bin/env bash
# Import a locally built Docker image into the e2e cluster.
#   load.sh IMAGE [IMAGE...]
# The Docker daemon is the private one from e2e/docker.sh (its DOCKER_HOST is used unless set).
# host cluster: docker save IMAGE | ctr -n k8s.io images import -   (kind cluster: kind load docker-image)
set -euo pipefail
. "$(dirname "$0")/lib.sh"
(( $# )) || die "usage: $0 IMAGE [IMAGE...]"
if [[ -z ${DOCKER_HOST:-} ]]; then eval "$("$HERE/../docker.sh" env)"; fi
[[ -f $STATE/kind ]] || die "no cluster (run make cluster-up)"
for img in "$@"; do
  docker image inspect "$img" >/dev/null || die "image $img not found in Docker at $DOCKER_HOST"
  if [[ $(cat "$STATE/kind") == kind ]]; then
    kind load docker-image "$img" --name paxoskv-e2e
  else
    docker save "$img" | ctr --address "$CTRD_SOCK" -n k8s.io images import -
  fi
  log "loaded $img into the $(cat "$STATE/kind") cluster"
done
