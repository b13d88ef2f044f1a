#!/usr/bin/env bash
# Stops the testnet started by testnet/start.sh (state is kept; start resumes).
set -euo pipefail
root="$(cd "$(dirname "$0")/.." && pwd)"
data="${PYRSIA_TESTNET_DIR:-$root/testnet/.data}"
for pidfile in "$data"/node*/node.pid; do
  [ -f "$pidfile" ] || continue
  pid="$(cat "$pidfile")"
  if kill -0 "$pid" 2>/dev/null; then
    kill -TERM "$pid"
    for _ in $(seq 1 60); do kill -0 "$pid" 2>/dev/null || break; sleep 0.25; done
  fi
  rm -f "$pidfile"
  echo "stopped $(basename "$(dirname "$pidfile")")"
done
