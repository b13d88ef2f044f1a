#!/usr/bin/env bash
# Builds the release binaries and runs one of them (a bench) against them:
#   scripts/run-release.sh testnet_bench
set -euo pipefail
root="$(cd "$(dirname "$0")/.." && pwd)"
cd "$root"
./scripts/setup.sh
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$HOME/.cache/pyrsia-target}"
# The same target selection as `cargo bench --workspace`, so both share one release build.
cargo build --release -q --workspace --bins --benches
export PYRSIA_COMETBFT="$root/.tools/bin/cometbft" PYRSIA_BIN="$CARGO_TARGET_DIR/release/pyrsia"
bin="$1"
shift
exec "$CARGO_TARGET_DIR/release/$bin" "$@"
