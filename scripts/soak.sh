#!/usr/bin/env bash
# Soak: SOAK_SECONDS (default 600) of mixed load on four validators in network
# namespaces, with stores and builders; prints memory and disk growth per
# 1,000 attestations. Needs root. See cli/benches/soak.rs.
set -euo pipefail
cd "$(dirname "$0")/.."
./scripts/setup.sh
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$HOME/.cache/pyrsia-target}"
cargo build -q --release -p pyrsia-linkem
exec cargo bench -q -p pyrsia-cli --bench soak
