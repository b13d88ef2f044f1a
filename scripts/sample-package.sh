#!/usr/bin/env bash
# A tiny npm package in a git repository served by `git daemon` on
# 127.0.0.1:9418, to try the devnet with. Prints shell exports for its URL
# and commit:  eval "$(./scripts/sample-package.sh)"
set -euo pipefail
root="$(cd "$(dirname "$0")/.." && pwd)"
serve="$root/.devnet-sources"
repo="$serve/hello-pyrsia.git"
if [ ! -d "$repo/.git" ]; then
  mkdir -p "$repo"
  cd "$repo"
  git init -q -b main
  cat > package.json <<'JSON'
{
  "name": "hello-pyrsia",
  "version": "1.0.0",
  "description": "A sample package for the Pyrsia devnet",
  "main": "index.js",
  "license": "Apache-2.0"
}
JSON
  echo 'module.exports = (name) => `hello, ${name}`;' > index.js
  git add -A
  git -c user.name=pyrsia -c user.email=devnet@pyrsia.invalid commit -q -m "hello-pyrsia 1.0.0"
fi
if ! (exec 3<>/dev/tcp/127.0.0.1/9418) 2>/dev/null; then
  git daemon --reuseaddr --export-all --listen=127.0.0.1 --port=9418 \
    --base-path="$serve" --detach --pid-file="$serve/git-daemon.pid" "$serve"
  sleep 0.5
fi
echo "export REPO=git://127.0.0.1:9418/hello-pyrsia.git"
echo "export COMMIT=$(git -C "$repo" rev-parse HEAD)"
