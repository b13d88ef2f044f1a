#!/usr/bin/env bash
# The whole test suite: installs prerequisites, checks formatting and lints,
# then runs every unit, property and end-to-end test (real cometbft processes).
set -euo pipefail
root="$(cd "$(dirname "$0")/.." && pwd)"
cd "$root"
./scripts/setup.sh
export PATH="$root/.tools/bin:$PATH"
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$HOME/.cache/pyrsia-target}"
cargo fmt --all -- --check
cargo clippy --workspace --all-targets -- -D warnings
cargo test --workspace -- --test-threads=2
# Every fuzz target for a few seconds on its committed corpus (docs/fuzzing.md);
# PYRSIA_FUZZ_SMOKE=0 skips it (its cold build is long on a busy machine).
if [ "${PYRSIA_FUZZ_SMOKE:-1}" != 0 ]; then ./scripts/fuzz-smoke.sh; fi
