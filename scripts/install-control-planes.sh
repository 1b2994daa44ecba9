#!/usr/bin/env bash
# Builds the control planes and peers that scripts/test-control-planes.sh
# runs, pinned by version, from their Go sources, and caches each one under
# ${BBR_TOOLS_CACHE:-$HOME/.cache/bbr-tools}/<name>-<version>/ (outside the
# clone, so that a fresh clone on the same machine builds nothing):
#
#   pilot-discovery       istiod, Istio 1.29.0 (./pilot/cmd/pilot-discovery),
#                         with Istio's istio-discovery chart (for its mesh
#                         ConfigMaps) and its CRDs beside it
#   epp                   the Gateway API Inference Extension's endpoint
#                         picker, sigs.k8s.io/gateway-api-inference-extension
#                         v1.5.0 (cmd/epp)
#   llm-d-inference-sim   the model servers, v0.10.2, CGO_ENABLED=0
#   envoy-gateway         Envoy Gateway v1.9.0 (cmd/envoy-gateway)
#   ai-gateway            Envoy AI Gateway v1.1.0's ext_proc server
#                         (./cmd/extproc), for benches/load/envoy.sh's
#                         `aigw` mode (built only when named)
#
# Istio and Envoy AI Gateway are not served by the Go module proxy (it
# answers 403 for istio.io/istio at any version, and for
# github.com/envoyproxy/ai-gateway): their sources come from a `git archive`
# of the tag beside the clone when there is one (`source_archive` below),
# else from a shallow clone of the upstream tag; their dependencies resolve
# through the proxy. The others are built from their modules.
#
# Every build runs under `nice`, so that it can run beside other work.
# Prints `export NAME=PATH` lines (BBR_ISTIOD, BBR_ISTIO_CHARTS, BBR_EPP,
# BBR_MODEL_SIM, BBR_ENVOY_GATEWAY, BBR_AI_GATEWAY) for `eval`. With
# arguments, builds only the named tools (istiod, epp, sim, envoy-gateway,
# ai-gateway); without, all but ai-gateway.
#
# Usage: eval "$(scripts/install-control-planes.sh)"
set -euo pipefail
cd "$(dirname "$0")/.."

ISTIO_VERSION=1.29.0
GIE_VERSION=v1.5.0
SIM_VERSION=v0.10.2
EG_VERSION=v1.9.0
AIGW_VERSION=v1.1.0

cache="${BBR_TOOLS_CACHE:-$HOME/.cache/bbr-tools}"
log() { echo "install-control-planes: $*" >&2; }

gobuild_env() { GOFLAGS=-trimpath nice -n 10 "$@"; }

# Builds PACKAGE of MODULE@VERSION into <cache>/<name>-<version>/bin, in
# the module's own directory with its own go.mod and go.sum, as its release
# builds do (not `go install pkg@version`, which also asks the proxy for the
# module's version list, refused for some modules).
install_pkg() { # name module package version [env…]
  local name=$1 module=$2 package=$3 version=$4
  shift 4
  local bin="$cache/$name-$version/bin"
  local out="$bin/$(basename "$package")"
  if [ ! -x "$out" ]; then
    local start=$SECONDS dir
    log "building $package@$version (the first build takes minutes)"
    mkdir -p "$bin"
    dir="$(cd "$bin" && GOFLAGS=-mod=mod go mod download -json "$module@$version" |
      sed -n 's/^[[:space:]]*"Dir": "\(.*\)",$/\1/p')"
    [ -d "$dir" ] || { log "cannot download $module@$version"; exit 1; }
    # GOWORK=off: some modules ship a go.work naming folders their zip leaves out.
    (cd "$dir" && env "$@" GOWORK=off GOFLAGS=-trimpath nice -n 10 \
      go build -ldflags='-s -w' -o "$out" "./${package#"$module"/}" >&2)
    log "$name $version built in $((SECONDS - start)) s"
  fi
  [ -x "$out" ] || { log "$name missing after the build"; exit 1; }
  echo "$out"
}

# A source archive of a tag, when one is at hand: in $BBR_SOURCE_ARCHIVES,
# or in a third-party/ folder beside the checkout; prints its path, or
# nothing (the caller then clones the tag).
source_archive() { # file name
  local dir
  for dir in ${BBR_SOURCE_ARCHIVES:-} "$PWD"/../*/third-party; do
    if [ -f "$dir/$1" ]; then echo "$dir/$1"; return; fi
  done
}

# The source of a tag in SRC (emptied first): its archive when one is at
# hand, else a shallow clone of the tag.
source_tree() { # label tag archive-file repository src
  local tarball
  tarball="$(source_archive "$3")"
  rm -rf "$5"
  if [ -n "$tarball" ]; then
    log "unpacking $1 $2 from $tarball"
    mkdir -p "$5"
    tar -xzf "$tarball" -C "$5" --strip-components=1
  else
    log "cloning $1 $2 from $4"
    git clone --quiet --depth 1 --branch "$2" "https://$4" "$5" >&2
  fi
}

istiod() {
  local root="$cache/istiod-$ISTIO_VERSION"
  local bin="$root/bin/pilot-discovery" src="$root/src"
  if [ ! -x "$bin" ] || [ ! -d "$root/charts/istio-discovery" ] || [ ! -f "$root/charts/crd-all.gen.yaml" ]; then
    local start=$SECONDS
    mkdir -p "$root/bin" "$root/charts"
    source_tree Istio "$ISTIO_VERSION" "istio-$ISTIO_VERSION-src.tar.gz" github.com/istio/istio "$src"
    if [ ! -x "$bin" ]; then
      log "building pilot-discovery $ISTIO_VERSION (about 7 minutes on 2 cores the first time)"
      (cd "$src" && CGO_ENABLED=0 gobuild_env go build -ldflags='-s -w' -o "$bin" ./pilot/cmd/pilot-discovery >&2)
    fi
    rm -rf "$root/charts/istio-discovery"
    cp -r "$src/manifests/charts/istio-control/istio-discovery" "$root/charts/istio-discovery"
    cp "$src/manifests/charts/base/files/crd-all.gen.yaml" "$root/charts/crd-all.gen.yaml"
    rm -rf "$src"
    log "pilot-discovery $ISTIO_VERSION built in $((SECONDS - start)) s"
  fi
  echo "export BBR_ISTIOD='$bin'"
  echo "export BBR_ISTIO_CHARTS='$root/charts'"
}

# Each prints its export line; a failed build stops the script (set -e
# applies to the assignment, not to an echo of a command substitution).
epp() {
  local gie=sigs.k8s.io/gateway-api-inference-extension out
  out="$(install_pkg epp "$gie" "$gie/cmd/epp" "$GIE_VERSION")"
  echo "export BBR_EPP='$out'"
}
sim() {
  local sim=github.com/llm-d/llm-d-inference-sim out
  out="$(install_pkg llm-d-inference-sim "$sim" "$sim/cmd/llm-d-inference-sim" "$SIM_VERSION" CGO_ENABLED=0)"
  echo "export BBR_MODEL_SIM='$out'"
}
envoy_gateway() {
  local eg=github.com/envoyproxy/gateway out
  out="$(install_pkg envoy-gateway "$eg" "$eg/cmd/envoy-gateway" "$EG_VERSION")"
  echo "export BBR_ENVOY_GATEWAY='$out'"
}

# Envoy AI Gateway's ext_proc server (its router-level and upstream
# filters' server), from its source tag: the module's `go.mod` pins every
# dependency, resolved through the proxy (about 2 minutes on 2 cores from
# an empty module cache, an 87 MB binary before `-s -w`).
ai_gateway() {
  local root="$cache/ai-gateway-$AIGW_VERSION"
  local bin="$root/bin/extproc" src="$root/src"
  if [ ! -x "$bin" ]; then
    local start=$SECONDS
    mkdir -p "$root/bin"
    source_tree "Envoy AI Gateway" "$AIGW_VERSION" "ai-gateway-${AIGW_VERSION#v}-src.tar.gz" \
      github.com/envoyproxy/ai-gateway "$src"
    log "building Envoy AI Gateway's extproc $AIGW_VERSION (minutes the first time)"
    (cd "$src" && CGO_ENABLED=0 GOWORK=off gobuild_env go build -ldflags='-s -w' -o "$bin" ./cmd/extproc >&2)
    rm -rf "$src"
    log "ai-gateway extproc $AIGW_VERSION built in $((SECONDS - start)) s"
  fi
  [ -x "$bin" ] || { log "ai-gateway extproc missing after the build"; exit 1; }
  echo "export BBR_AI_GATEWAY='$bin'"
}

[ $# -gt 0 ] || set -- istiod epp sim envoy-gateway
for tool in "$@"; do
  case "$tool" in
    istiod) istiod ;;
    epp) epp ;;
    sim) sim ;;
    envoy-gateway) envoy_gateway ;;
    ai-gateway) ai_gateway ;;
    *) log "unknown tool: $tool"; exit 2 ;;
  esac
done
