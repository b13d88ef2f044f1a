#!/usr/bin/env bash
# Stops the testnet of testnet/netns-start.sh and removes its namespaces,
# routes, iptables rule and link emulator. The homes are kept (start resumes
# them) unless --purge is given.
set -euo pipefail
root="$(cd "$(dirname "$0")/.." && pwd)"
data="${PYRSIA_TESTNET_DIR:-$root/testnet/.netns}"
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
"$root/testnet/netns.sh" down pyrsia
if [ "${1:-}" = "--purge" ]; then
  rm -rf "$data"
  echo "deleted $data"
fi
