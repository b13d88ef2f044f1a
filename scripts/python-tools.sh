#!/usr/bin/env bash
# A Python venv under .tools/venv holding the third-party DSSE/in-toto
# implementation (securesystemslib) that the provenance test verifies
# builders' envelopes with, so the check never rests on our own code alone.
# Idempotent; scripts/setup.sh runs it, and the test runs it if the venv is
# missing.
set -euo pipefail
root="$(cd "$(dirname "$0")/.." && pwd)"
venv="$root/.tools/venv"
SECURESYSTEMSLIB_VERSION="1.6.0"

sudo_if_needed() { if [ "$(id -u)" -eq 0 ]; then "$@"; else sudo "$@"; fi; }

if "$venv/bin/python" -c "import securesystemslib, securesystemslib.dsse, cryptography; assert securesystemslib.__version__ == '$SECURESYSTEMSLIB_VERSION'" 2>/dev/null; then
  exit 0
fi
echo "setup: installing securesystemslib $SECURESYSTEMSLIB_VERSION into $venv" >&2
if ! python3 -m venv --clear "$venv" 2>/dev/null; then
  # Debian's python3 ships venv (ensurepip) separately.
  sudo_if_needed apt-get update -qq
  sudo_if_needed env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq python3-venv >/dev/null
  python3 -m venv --clear "$venv"
fi
"$venv/bin/python" -m pip install --quiet "securesystemslib[crypto]==$SECURESYSTEMSLIB_VERSION"
"$venv/bin/python" -c "import securesystemslib.dsse, cryptography"
