#!/usr/bin/env bash
# Committed Attest tx/s on a 4-validator testnet vs CometBFT's kvstore, same run.
set -euo pipefail
cd "$(dirname "$0")/.."
./scripts/setup.sh
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$HOME/.cache/pyrsia-target}"
exec cargo bench -q -p pyrsia-cli --bench testnet_bench
