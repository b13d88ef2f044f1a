#!/usr/bin/env bash
# Verified ledger reads (cold from genesis, warm) vs the plain abci_query, on
# a 4-validator testnet after BENCH_BLOCKS blocks (default 10000).
set -euo pipefail
cd "$(dirname "$0")/.."
./scripts/setup.sh
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$HOME/.cache/pyrsia-target}"
exec cargo bench -q -p pyrsia-cli --bench light_verify
