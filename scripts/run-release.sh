#!/usr/bin/env bash
# Builds the release binaries and runs one of them (a bench):
#   scripts/run-release.sh pyrsia-store-bench loopback --size 1G
set -euo pipefail
root="$(cd "$(dirname "$0")/.." && pwd)"
cd "$root"
./scripts/setup.sh
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$HOME/.cache/pyrsia-target}"
cargo build --release -q --workspace --bins
bin="$1"
shift
exec "$CARGO_TARGET_DIR/release/$bin" "$@"
