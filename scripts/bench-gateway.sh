#!/usr/bin/env bash
# The gateway against Verdaccio (npm ci of a 65-package tree, warm caches)
# and a 1 GiB OCI blob through the gateway against the store's API; see
# cli/benches/gateway_bench.rs. Not part of the test suite.
set -euo pipefail
cd "$(dirname "$0")/.."
./scripts/setup.sh
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$HOME/.cache/pyrsia-target}"
export PATH="$PWD/.tools/bin:$PATH"
exec cargo bench -q -p pyrsia-cli --bench gateway_bench
