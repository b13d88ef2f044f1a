#!/usr/bin/env bash
# Runs the embedded Pyrsia devnet in ./.devnet (one validator, the node's
# store, three regular and two trusted builders with their own stores):
# created on first run, resumed on later runs. Ctrl-C stops it.
set -euo pipefail
root="$(cd "$(dirname "$0")/.." && pwd)"
cd "$root"
./scripts/setup.sh
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$HOME/.cache/pyrsia-target}"
# The same selection as scripts/test.sh, so the two share one build.
cargo build -q --workspace --all-targets
export PYRSIA_COMETBFT="$root/.tools/bin/cometbft"
exec "$CARGO_TARGET_DIR/debug/pyrsia" --home "${PYRSIA_DEVNET_HOME:-$root/.devnet}" node start "$@"
