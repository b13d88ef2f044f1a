#!/usr/bin/env bash
# Runs a single-validator Pyrsia devnet in ./.devnet: created on first run,
# resumed on later runs. Ctrl-C stops it.
set -euo pipefail
root="$(cd "$(dirname "$0")/.." && pwd)"
cd "$root"
./scripts/setup.sh
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$HOME/.cache/pyrsia-target}"
cargo build -q -p pyrsia-cli
export PYRSIA_COMETBFT="$root/.tools/bin/cometbft"
exec "$CARGO_TARGET_DIR/debug/pyrsia" --home "${PYRSIA_DEVNET_HOME:-$root/.devnet}" node start "$@"
