#!/usr/bin/env bash
# Starts a 4-validator Pyrsia testnet on this host (ports 26656.. step 10).
# First run creates the homes in testnet/.data; later runs resume them.
# Stop it with testnet/stop.sh.
set -euo pipefail
root="$(cd "$(dirname "$0")/.." && pwd)"
data="${PYRSIA_TESTNET_DIR:-$root/testnet/.data}"
validators="${PYRSIA_TESTNET_VALIDATORS:-4}"
base_port="${PYRSIA_TESTNET_BASE_PORT:-26656}"
"$root/scripts/setup.sh"
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$HOME/.cache/pyrsia-target}"
cargo build --release -q -p pyrsia-cli --manifest-path "$root/Cargo.toml"
pyrsia="$CARGO_TARGET_DIR/release/pyrsia"
export PYRSIA_COMETBFT="$root/.tools/bin/cometbft"
if [ ! -d "$data/node0" ]; then
  "$pyrsia" devnet init --dir "$data" --validators "$validators" --base-port "$base_port"
fi
for home in "$data"/node*; do
  if [ -f "$home/node.pid" ] && kill -0 "$(cat "$home/node.pid")" 2>/dev/null; then
    echo "$(basename "$home") already running"; continue
  fi
  nohup "$pyrsia" --home "$home" node start >"$home/node.out" 2>&1 &
  echo $! >"$home/node.pid"
done
for i in $(seq 0 $((validators - 1))); do
  port=$((base_port + 10 * i + 1))
  for _ in $(seq 1 120); do
    curl -sf "http://127.0.0.1:$port/status" >/dev/null 2>&1 && break
    sleep 0.5
  done
  echo "node$i: RPC http://127.0.0.1:$port"
done
echo "board keys: $data/board, trusted-node keys: $data/trusted; stop with testnet/stop.sh"
