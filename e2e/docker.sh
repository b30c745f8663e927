#!/usr/bin/env bash
# Start or stop a private Docker daemon for building paxoskv images.
#   e2e/docker.sh up     install docker.io from Debian if missing, start dockerd (idempotent)
#   e2e/docker.sh down   stop the daemon this script started, by its PID
#   e2e/docker.sh env    print the DOCKER_HOST export line
# The daemon gets its own data root, socket and pid file so it never touches a system daemon.
set -euo pipefail
STATE=${PAXOSKV_DOCKER_STATE:-/var/lib/paxoskv-docker}
SOCK="$STATE/docker.sock"
PIDFILE="$STATE/dockerd.pid"
export DOCKER_HOST="unix://$SOCK"

running() { [[ -f $PIDFILE ]] && kill -0 "$(cat "$PIDFILE")" 2>/dev/null; }

case "${1:-}" in
  up)
    if ! command -v dockerd >/dev/null; then
      echo "docker.sh: installing docker.io from Debian" >&2
      apt-get update -qq >/dev/null
      DEBIAN_FRONTEND=noninteractive apt-get install -y -qq docker.io >/dev/null
    fi
    mkdir -p "$STATE"
    if running; then echo "docker.sh: dockerd already running (pid $(cat "$PIDFILE"))" >&2; exit 0; fi
    # Debian's docker.io ships dockerd under /usr/sbin; prefer it over any other.
    DOCKERD=$(command -v /usr/sbin/dockerd || command -v dockerd)
    nohup "$DOCKERD" --data-root "$STATE/root" --exec-root "$STATE/exec" \
      --pidfile "$PIDFILE" --host "$DOCKER_HOST" --iptables=true \
      >"$STATE/dockerd.log" 2>&1 &
    for _ in $(seq 1 60); do
      if docker version >/dev/null 2>&1; then echo "docker.sh: dockerd up at $DOCKER_HOST" >&2; exit 0; fi
      sleep 1
    done
    echo "docker.sh: dockerd did not come up; last log lines:" >&2
    tail -n 20 "$STATE/dockerd.log" >&2
    exit 1
    ;;
  down)
    if running; then
      pid=$(cat "$PIDFILE")
      kill "$pid"
      for _ in $(seq 1 30); do kill -0 "$pid" 2>/dev/null || break; sleep 1; done
      echo "docker.sh: dockerd (pid $pid) stopped" >&2
    fi
    ;;
  env) echo "export DOCKER_HOST=$DOCKER_HOST" ;;
  *) echo "usage: $0 up|down|env" >&2; exit 2 ;;
esac
