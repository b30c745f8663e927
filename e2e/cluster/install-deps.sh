#!/usr/bin/env bash
# Install the Debian packages the host-process cluster needs (once; a no-op when present).
set -euo pipefail
. "$(dirname "$0")/lib.sh"
PKGS=(containerd runc containernetworking-plugins iptables conntrack socat ethtool
      util-linux mount iproute2 curl dnsutils python3 ca-certificates)
missing=()
for p in "${PKGS[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q 'install ok installed' || missing+=("$p")
done
if (( ${#missing[@]} )); then
  log "apt-get install ${missing[*]}"
  apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi
[[ -x /usr/lib/cni/bridge ]] || die "CNI plugins missing in /usr/lib/cni"
[[ -x $GO ]] || die "Go not found at $GO (set GO=/path/to/go)"
