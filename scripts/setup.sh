#!/usr/bin/env bash
# Installs what building and testing Pyrsia needs on a fresh Debian machine:
# libclang (RocksDB's bindings), bubblewrap and iproute2 (build sandboxes and
# the dependency step), iptables (the namespace testnet), git, skopeo and
# chromium (the gateway's tests), Python's `build` and `wheel` (the python recipe), CometBFT v0.38.25 into .tools/bin,
# and securesystemslib in .tools/venv (scripts/python-tools.sh).
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

missing=()
command -v bwrap >/dev/null || missing+=(bubblewrap)
command -v git >/dev/null || missing+=(git)
# The dependency step: `ip` brings up its namespace's loopback, `nsenter`
# (util-linux) enters it.
PATH="$PATH:/usr/sbin:/sbin" command -v ip >/dev/null || missing+=(iproute2)
command -v nsenter >/dev/null || missing+=(util-linux)
# The namespace testnet (testnet/netns.sh): its link emulator's NFQUEUE rule.
PATH="$PATH:/usr/sbin:/sbin" command -v iptables >/dev/null || missing+=(iptables)
# The gateway's tests: real OCI and browser clients.
command -v skopeo >/dev/null || missing+=(skopeo)
command -v chromium >/dev/null || missing+=(chromium)
if [ "${#missing[@]}" -gt 0 ]; then
  echo "setup: installing ${missing[*]}" >&2
  sudo_if_needed apt-get update -qq
  sudo_if_needed env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${missing[@]}" >/dev/null
fi

if ! python3 -c 'import build, wheel, setuptools' 2>/dev/null; then
  echo "setup: installing python build tools" >&2
  python3 -m pip install --quiet 'build==1.6.1' 'wheel==0.48.0' 'setuptools>=65'
fi

bin="$root/.tools/bin"
mkdir -p "$bin"
if ! "$bin/cometbft" version 2>/dev/null | grep -q "^${COMETBFT_VERSION#v}"; then
  echo "setup: installing cometbft $COMETBFT_VERSION into $bin" >&2
  GOBIN="$bin" GOFLAGS=-mod=mod go install "github.com/cometbft/cometbft/cmd/cometbft@${COMETBFT_VERSION}"
fi
"$bin/cometbft" version >/dev/null

"$root/scripts/python-tools.sh"
