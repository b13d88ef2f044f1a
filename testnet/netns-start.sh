#!/usr/bin/env bash
# Starts a Pyrsia testnet whose validators each run in a network namespace of
# their own, as on separate hosts: validator I is 10.X.Y.(I+1), listening on
# the default ports (p2p 26656, RPC 26657, ABCI 26658 on its loopback), and
# every packet between two validators crosses the link emulator. Needs root.
# First run creates the homes in testnet/.netns; later runs resume them.
# Stop it with testnet/netns-stop.sh (add --purge to delete the homes too).
#
#   PYRSIA_TESTNET_VALIDATORS   4 (or 7, or any number up to 253)
#   PYRSIA_NETNS_DELAY_MS       one-way delay, default 25 (a 50 ms round trip)
#   PYRSIA_NETNS_JITTER_MS      ± jitter, default 2
#   PYRSIA_NETNS_LOSS_PCT       packet loss, default 0
#   PYRSIA_TESTNET_DIR          where the homes are (default testnet/.netns)
set -euo pipefail
root="$(cd "$(dirname "$0")/.." && pwd)"
data="${PYRSIA_TESTNET_DIR:-$root/testnet/.netns}"
validators="${PYRSIA_TESTNET_VALIDATORS:-4}"
name=pyrsia
netns="$root/testnet/netns.sh"
"$root/scripts/setup.sh"
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$HOME/.cache/pyrsia-target}"
cargo build --release -q -p pyrsia-cli -p pyrsia-linkem --manifest-path "$root/Cargo.toml"
pyrsia="$CARGO_TARGET_DIR/release/pyrsia"
export PYRSIA_COMETBFT="$root/.tools/bin/cometbft"

if ip netns list | grep -q "^$name-v0\b"; then
  echo "the namespace testnet is already up; stop it with testnet/netns-stop.sh" >&2
  exit 1
fi
net="$("$netns" subnet "$name")"
hosts="$(seq 1 "$validators" | sed "s/^/$net./" | paste -sd,)"
"$netns" up "$name" "$validators"
"$netns" delay "$name" "$CARGO_TARGET_DIR/release/pyrsia-linkem" \
  "${PYRSIA_NETNS_DELAY_MS:-25}" "${PYRSIA_NETNS_JITTER_MS:-2}" "${PYRSIA_NETNS_LOSS_PCT:-0}"
if [ ! -d "$data/node0" ]; then
  "$pyrsia" devnet init --dir "$data" --validators "$validators" --hosts "$hosts"
fi
for i in $(seq 0 $((validators - 1))); do
  home="$data/node$i"
  nohup "$netns" exec "$name" "$i" "$pyrsia" --home "$home" node start --validator-only \
    >"$home/node.out" 2>&1 &
  echo $! >"$home/node.pid"
done
for i in $(seq 0 $((validators - 1))); do
  rpc="http://$net.$((i + 1)):26657"
  for _ in $(seq 1 120); do
    curl -sf "$rpc/status" >/dev/null 2>&1 && break
    sleep 0.5
  done
  echo "node$i: RPC $rpc (namespace $name-v$i)"
done
echo "partition with testnet/netns.sh partition $name 0,1 2,3 (heal: netns.sh heal $name)"
echo "board keys: $data/board, trusted-node keys: $data/trusted; stop with testnet/netns-stop.sh"
