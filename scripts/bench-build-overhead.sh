#!/usr/bin/env bash
# Blocks and seconds from RequestBuild to Reproducible, minus the build itself.
set -euo pipefail
cd "$(dirname "$0")/.."
./scripts/setup.sh
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$HOME/.cache/pyrsia-target}"
exec cargo bench -q -p pyrsia-cli --bench build_overhead
