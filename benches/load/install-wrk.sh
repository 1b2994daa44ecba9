#!/usr/bin/env bash
# Installs wrk with apt-get when it is missing (the load benchmarks' client).
set -euo pipefail
command -v wrk >/dev/null 2>&1 && exit 0
echo "installing wrk..." >&2
SUDO=""
if [ "$(id -u)" -ne 0 ]; then SUDO="sudo"; fi
$SUDO apt-get update -qq >&2
$SUDO apt-get install -y -qq wrk >&2
