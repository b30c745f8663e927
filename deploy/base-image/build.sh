#!/usr/bin/env bash
# Make a local Debian bookworm base image with Python 3.11, for machines that cannot pull
# python:3.11-slim from a registry. Built with debootstrap (Debian's apt repos only) and
# `docker import`; cached: if the tag already exists, nothing is done.
#
#   deploy/base-image/build.sh [TAG]        default TAG: paxoskv-base:bookworm
#   FORCE=1 deploy/base-image/build.sh      rebuild even if the tag exists
#   DEBIAN_MIRROR=http://deb.debian.org/debian   mirror passed to debootstrap
#
# The image holds: minbase + python3 (3.11 on bookworm) + python3-venv (ensurepip, so the
# Dockerfile's builder stage can make a venv and pip install from PyPI) + ca-certificates.
# Docs, man pages, locales and apt lists are removed. Root filesystem layout and the python
# path (/usr/bin/python3) differ from python:3.11-slim (/usr/local/bin/python3); the
# Dockerfile only calls `python3` from PATH, so it builds on either.
set -euo pipefail
TAG=${1:-${BASE_TAG:-paxoskv-base:bookworm}}
MIRROR=${DEBIAN_MIRROR:-http://deb.debian.org/debian}
SUITE=bookworm

if [[ -z ${FORCE:-} ]] && docker image inspect "$TAG" >/dev/null 2>&1; then
  echo "base-image: $TAG already present (FORCE=1 to rebuild)" >&2
  exit 0
fi
command -v debootstrap >/dev/null || {
  echo "base-image: installing debootstrap from Debian" >&2
  apt-get update -qq >/dev/null
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq debootstrap >/dev/null
}
[[ $(id -u) == 0 ]] || { echo "base-image: debootstrap needs root" >&2; exit 1; }

WORK=$(mktemp -d /var/tmp/paxoskv-base.XXXXXX)
cleanup() {
  # debootstrap may leave /proc or /sys mounted in the target if it fails half way.
  for m in proc sys dev/pts dev; do
    mountpoint -q "$WORK/root/$m" 2>/dev/null && umount -l "$WORK/root/$m" || true
  done
  rm -rf "$WORK"
}
trap cleanup EXIT
ROOT="$WORK/root"

start=$SECONDS
echo "base-image: debootstrap --variant=minbase $SUITE ($MIRROR)" >&2
debootstrap --variant=minbase --include=python3,python3-venv,ca-certificates \
  "$SUITE" "$ROOT" "$MIRROR" >"$WORK/debootstrap.log" 2>&1 || {
  tail -n 30 "$WORK/debootstrap.log" >&2
  exit 1
}
echo "base-image: debootstrap took $((SECONDS - start)) s" >&2

# Trim: nothing at runtime reads these. Keep /usr/share/zoneinfo and copyright files.
chroot "$ROOT" apt-get clean
rm -rf "$ROOT"/var/lib/apt/lists/* "$ROOT"/var/cache/apt/*.bin \
  "$ROOT"/usr/share/doc/*/changelog* "$ROOT"/usr/share/man/* "$ROOT"/usr/share/info/* \
  "$ROOT"/usr/share/locale/* "$ROOT"/var/log/*.log "$ROOT"/tmp/* "$ROOT"/var/tmp/*
# A container gets /etc/hostname, /etc/hosts and /etc/resolv.conf from the runtime.
: >"$ROOT/etc/hostname"
rm -f "$ROOT/etc/resolv.conf"

py=$(chroot "$ROOT" python3 -c 'import sys; print("%d.%d.%d" % sys.version_info[:3])')
echo "base-image: python $py; rootfs $(du -sh "$ROOT" | cut -f1)" >&2

t=$SECONDS
tar --numeric-owner --xattrs -C "$ROOT" -c . | docker import \
  --change 'ENV PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin' \
  --change 'ENV LANG=C.UTF-8' \
  --change 'CMD ["python3"]' \
  --message "debootstrap --variant=minbase $SUITE + python3 $py" \
  - "$TAG" >/dev/null
echo "base-image: docker import took $((SECONDS - t)) s; total $((SECONDS - start)) s -> $TAG" >&2
