#!/usr/bin/env bash
# The p2p_store benchmarks of p2p_store/README.md "Benchmarks", in one go:
# P3 (netns k = 1,2,4), P4 (loopback vs curl), hetero caps, a stalling
# seeder, many small artifacts. The netns modes need root, iproute2 and tc
# (tbf only; no netem). Output: the bench's lines, also in $BENCH_LOG.
# BENCH_ONLY="loopback small" runs a subset; BENCH_DIR is the scratch dir;
# BENCH_NO_BUILD=1 skips the release build.
set -euo pipefail
cd "$(dirname "$0")/.."
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$HOME/.cache/pyrsia-target}"
[ -n "${BENCH_NO_BUILD:-}" ] || cargo build -q --release -p pyrsia-store-cli
B="$CARGO_TARGET_DIR/release/pyrsia-store-bench"
DIR="${BENCH_DIR:-${TMPDIR:-/tmp}}"
LOG="${BENCH_LOG:-$DIR/store-bench-$(date +%Y%m%d-%H%M%S).log}"
ONLY="${BENCH_ONLY:-netns loopback hetero stall small}"
run() {
  echo "\$ pyrsia-store-bench $*" | tee -a "$LOG"
  # Each mode bounds its own waits; this bounds the whole invocation too.
  RUST_LOG="${RUST_LOG:-error}" timeout --signal=TERM --kill-after=30 1800 "$B" "$@" --dir "$DIR" | tee -a "$LOG"
}
for m in $ONLY; do
  case "$m" in
    netns) run netns --size 256M --cap-mbit 200 --seeders 1,2,4 --stripe-sizes 256K,1M,4M ;;
    loopback) run loopback --size 1G --seeders 2 --rounds 5 ;;
    hetero) run hetero --size 256M --caps-mbit 50,100,400 --rounds 5 ;;
    stall) run stall --size 256M --seeders 3 --cap-mbit 200 --stall-at 0.25 --rounds 5 ;;
    small) run small --count 1000 --size 10K --seeders 3 --rounds 3 ;;
    *) echo "unknown bench $m" >&2; exit 2 ;;
  esac
done
echo "log: $LOG"
