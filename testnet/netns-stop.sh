#!/usr/bin/env bash
# Stops the testnet of testnet/netns-start.sh and removes its namespaces,
# routes, iptables rule and link emulator. The homes are kept (start resumes
# them) unless --purge is given.
set -euo pipefail
root="$(cd "$(dirname "$0")/.." && pwd)"
data="${PYRSIA_TESTNET_DIR:-$root/testnet/.netns}"
PYRSIA_TESTNET_DIR="$data" "$root/testnet/stop.sh"
"$root/testnet/netns.sh" down pyrsia
if [ "${1:-}" = "--purge" ]; then
  rm -rf "$data"
  echo "deleted $data"
fi
