#!/usr/bin/env bash
# Fuzz smoke test: builds the fuzz targets in fuzz/ and runs each one for a
# short, bounded time on its committed corpus; fails on any crash, panic,
# timeout or out-of-memory. Installs nightly and cargo-fuzz if missing.
# Long campaigns: docs/fuzzing.md.
#
#   scripts/fuzz-smoke.sh            # every target, PYRSIA_FUZZ_SECONDS (20) each
#   scripts/fuzz-smoke.sh ledger     # only these targets
set -euo pipefail
root="$(cd "$(dirname "$0")/.." && pwd)"
cd "$root/fuzz"

CARGO_FUZZ_VERSION=0.13.2
seconds="${PYRSIA_FUZZ_SECONDS:-20}"
main_target="${CARGO_TARGET_DIR:-$HOME/.cache/pyrsia-target}"
# Its own target directory: fuzz builds use other compiler flags, and must
# not invalidate the test suite's build.
export CARGO_TARGET_DIR="${PYRSIA_FUZZ_TARGET_DIR:-$HOME/.cache/pyrsia-fuzz-target}"

# RocksDB's C++ is most of a cold build (docs/development.md), and compiling
# it again for the fuzz profile took over half an hour on a busy 2-core
# machine. Link the test suite's own build of the same RocksDB instead when
# there is one (scripts/test.sh runs this after `cargo test`); the build
# script then only generates the bindings. ROCKSDB_LIB_DIR set by the
# caller wins; without either, RocksDB is compiled.
rocksdb_version="$(grep -A1 '^name = "librocksdb-sys"' Cargo.lock | sed -n 's/^version = ".*+\(.*\)"/\1/p')"
if [ -z "${ROCKSDB_LIB_DIR:-}" ] && [ -n "$rocksdb_version" ]; then
  for lib in $(ls -t "$main_target"/{debug,release}/build/librocksdb-sys-*/out/librocksdb.a 2>/dev/null); do
    # The library carries its version string; a stale build of another
    # version would not match the generated bindings.
    if grep -aq "$rocksdb_version" "$lib"; then
      export ROCKSDB_LIB_DIR="$(dirname "$lib")" ROCKSDB_STATIC=1
      echo "fuzz-smoke: linking RocksDB $rocksdb_version from $ROCKSDB_LIB_DIR"
      break
    fi
  done
fi

if ! rustup toolchain list | grep -q '^nightly'; then
  rustup toolchain install nightly --profile minimal
fi
if ! cargo fuzz --version 2>/dev/null | grep -q "$CARGO_FUZZ_VERSION"; then
  cargo install --locked cargo-fuzz --version "$CARGO_FUZZ_VERSION"
fi

# -O: optimised; -a: debug assertions, so integer overflow panics;
# -s none: no sanitizer. The workspace denies unsafe code, so AddressSanitizer
# would only instrument dependencies' unsafe code while halving the execution
# rate; RocksDB's C++ is not instrumented either way.
flags=(-O -a -s none)
cargo +nightly fuzz build "${flags[@]}"

targets=("$@")
if [ ${#targets[@]} -eq 0 ]; then
  mapfile -t targets < <(cargo +nightly fuzz list)
fi
scratch="$(mktemp -d)"
trap 'rm -rf "$scratch"' EXIT
for t in "${targets[@]}"; do
  # New inputs go to the scratch directory (the first corpus argument), so
  # the committed corpus is only read.
  mkdir -p "$scratch/$t" "corpus/$t"
  echo "fuzz-smoke: $t for ${seconds}s"
  log="$scratch/$t.log"
  if ! cargo +nightly fuzz run "${flags[@]}" "$t" "$scratch/$t" "corpus/$t" -- \
    -max_total_time="$seconds" -timeout=10 -rss_limit_mb=2048 -print_final_stats=1 \
    >"$log" 2>&1; then
    tail -n 60 "$log" >&2
    echo "fuzz-smoke: $t FAILED; the input is under fuzz/artifacts/$t/" >&2
    exit 1
  fi
  grep -E '^(Done|stat::number_of_executed_units)' "$log" || true
done
echo "fuzz-smoke: ${#targets[@]} targets, no crash"
