#!/usr/bin/env bash
# CI guard for the README's run command: runs the first command of the
# README's first code block (the devnet) in a fresh home, waits for its first
# block, stops it as Ctrl-C would, and fails unless it exits cleanly and leaves
# no process behind. Run after scripts/test.sh, which builds what it needs.
set -euo pipefail
root="$(cd "$(dirname "$0")/.." && pwd)"
cd "$root"
rpc="127.0.0.1:26657"
start_timeout="${DEVNET_START_TIMEOUT:-600}"

run_cmd="$(awk '/^```/{n++; next} n==1 {print; exit}' README.md | sed 's/[[:space:]]*#.*$//')"
[ -n "$run_cmd" ] || { echo "check-devnet: README has no run command in its first code block" >&2; exit 1; }
if (exec 3<>"/dev/tcp/${rpc%:*}/${rpc#*:}") 2>/dev/null; then
  echo "check-devnet: $rpc is already in use; stop the running devnet first" >&2
  exit 1
fi

home="$(mktemp -d)"
log="$home.log"
cleanup() {
  pkill -KILL -f "$home" 2>/dev/null || true
  rm -rf "$home" "$log"
}
trap cleanup EXIT

echo "check-devnet: running '$run_cmd' with PYRSIA_DEVNET_HOME=$home" >&2
PYRSIA_DEVNET_HOME="$home" setsid bash -c "$run_cmd" >"$log" 2>&1 </dev/null &
pid=$!

height() {
  python3 - "$rpc" <<'PY' 2>/dev/null || echo 0
import json, sys, urllib.request
with urllib.request.urlopen(f"http://{sys.argv[1]}/status", timeout=2) as r:
    print(json.load(r)["result"]["sync_info"]["latest_block_height"])
PY
}

deadline=$((SECONDS + start_timeout))
until [ "$(height)" -ge 1 ]; do
  if ! kill -0 "$pid" 2>/dev/null; then
    echo "check-devnet: the devnet exited before its first block; its output:" >&2
    cat "$log" >&2
    exit 1
  fi
  if [ "$SECONDS" -ge "$deadline" ]; then
    echo "check-devnet: no block within ${start_timeout}s; its output:" >&2
    cat "$log" >&2
    exit 1
  fi
  sleep 1
done
echo "check-devnet: first block committed after ${SECONDS}s; sending Ctrl-C" >&2

kill -INT -- "-$pid"
status=0
wait "$pid" || status=$?
if [ "$status" -ne 0 ]; then
  echo "check-devnet: the devnet exited with status $status after Ctrl-C; its output:" >&2
  cat "$log" >&2
  exit 1
fi
if left="$(pgrep -af "$home")"; then
  echo "check-devnet: processes left behind after Ctrl-C:" >&2
  echo "$left" >&2
  exit 1
fi
echo "check-devnet: the devnet stopped cleanly" >&2
