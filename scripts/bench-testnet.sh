#!/usr/bin/env bash
# Committed Attest tx/s on a 4-validator testnet vs CometBFT's kvstore, in
# process and over the ABCI socket (abci-cli), same run. BENCH_NETNS=1 puts
# each validator in a network namespace with 50 ms round trips (root).
set -euo pipefail
cd "$(dirname "$0")/.."
./scripts/setup.sh
if [ ! -x .tools/bin/abci-cli ]; then
  GOBIN="$PWD/.tools/bin" GOFLAGS=-mod=mod go install github.com/cometbft/cometbft/abci/cmd/abci-cli@v0.38.25
fi
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$HOME/.cache/pyrsia-target}"
[ "${BENCH_NETNS:-0}" = 1 ] && cargo build -q --release -p pyrsia-linkem
exec cargo bench -q -p pyrsia-cli --bench testnet_bench
