#!/usr/bin/env bash
# Rebuilds real packages from their registries' own archives through the
# builder, twice, and prints the success, builder-agreement and
# registry-agreement rates per ecosystem (a benchmark, not a test: it takes
# minutes and fetches the packages through the machine's npm and pip).
# Usage: ./scripts/bench-rebuild.sh [CORPUS] (default builder/benches/corpus.tsv)
# PYRSIA_BENCH_PREPARE_ONLY=1 only fetches the packages and fills the caches.
set -euo pipefail
cd "$(dirname "$0")/.."
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$HOME/.cache/pyrsia-target}"
exec cargo bench -q --workspace --bench rebuild_corpus -- "$@"
