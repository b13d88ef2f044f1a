#!/usr/bin/env bash
# Committed Attest tx/s on a 4-validator testnet vs CometBFT's kvstore, same run.
exec "$(dirname "$0")/run-release.sh" testnet_bench "$@"
