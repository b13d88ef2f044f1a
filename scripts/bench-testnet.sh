#!/usr/bin/env bash
# Committed Attest tx/s on a 4-validator testnet vs CometBFT's kvstore, same run.
set -euo pipefail
root="$(cd "$(dirname "$0")/.." && pwd)"
cd "$root"
./scripts/setup.sh
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$HOME/.cache/pyrsia-target}"
# The same target selection as `cargo bench --workspace`, so both share one release build.
cargo build --release -q --workspace --bins --benches
export PYRSIA_COMETBFT="$root/.tools/bin/cometbft" PYRSIA_BIN="$CARGO_TARGET_DIR/release/pyrsia"
exec "$CARGO_TARGET_DIR/release/testnet_bench"
