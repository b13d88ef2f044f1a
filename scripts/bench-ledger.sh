#!/usr/bin/env bash
# The ledger without consensus: blocks of 1,000 attestations against batch
# ed25519 verification, and the state at scale (STATE_REQUESTS, default
# 100000; REVOKE_ATTESTATIONS, default 10000). See chain/README.md.
set -euo pipefail
cd "$(dirname "$0")/.."
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$HOME/.cache/pyrsia-target}"
exec cargo bench -q --workspace --bench attest_block --bench state_scale
