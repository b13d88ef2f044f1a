#!/usr/bin/env bash
# Installs what building and testing Pyrsia needs on a fresh Debian machine:
# libclang (RocksDB's bindings) and CometBFT v0.38.25 into .tools/bin.
# Idempotent: does nothing that is already done.
set -euo pipefail
root="$(cd "$(dirname "$0")/.." && pwd)"
COMETBFT_VERSION="v0.38.25"

sudo_if_needed() { if [ "$(id -u)" -eq 0 ]; then "$@"; else sudo "$@"; fi; }

# libclang-cpp alone does not do: bindgen loads libclang.so itself.
if ! ls /usr/lib/llvm-*/lib/libclang.so* /usr/lib/*-linux-gnu/libclang-[0-9]*.so* >/dev/null 2>&1; then
  echo "setup: installing libclang-dev" >&2
  sudo_if_needed apt-get update -qq
  sudo_if_needed env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq libclang-dev clang >/dev/null
fi

bin="$root/.tools/bin"
mkdir -p "$bin"
if ! "$bin/cometbft" version 2>/dev/null | grep -q "^${COMETBFT_VERSION#v}"; then
  echo "setup: installing cometbft $COMETBFT_VERSION into $bin" >&2
  GOBIN="$bin" GOFLAGS=-mod=mod go install "github.com/cometbft/cometbft/cmd/cometbft@${COMETBFT_VERSION}"
fi
"$bin/cometbft" version >/dev/null
