#!/usr/bin/env bash
# Builds the Go body-based router of the Gateway API Inference Extension
# (sigs.k8s.io/gateway-api-inference-extension/cmd/bbr), pinned by release,
# from its Go module, and caches each release under .tools/go-bbr/<version>/:
#
#   v1.5.0  flags --grpc-port, --secure-serving, --streaming, --plugin …
#   v0.5.1  flags -grpcPort, -streaming (always TLS, self-signed)
#
# and the llm-d Inference Payload Processor built on it
# (github.com/llm-d/llm-d-inference-payload-processor/cmd, v0.1.0: flags as
# v1.5.0's, plugins from --config-text; answers FULL_DUPLEX_STREAMED only).
#
# A scratch module requires the release (so that `go install pkg@version`'s
# checks on the module and its replace lines do not apply) and builds its
# cmd/bbr with the dependency versions the release's go.mod pins.
#
# Needs only Go and the Go module proxy. Prints `export NAME=PATH` lines
# (BBR_GO_BBR_V1_5, BBR_GO_BBR_V0_5, BBR_GO_IPP) for `eval`. A second run builds nothing.
#
# Usage: eval "$(scripts/install-go-bbr.sh)"
set -euo pipefail
cd "$(dirname "$0")/.."

log() { echo "install-go-bbr: $*" >&2; }

build() { # name module package version
  local name=$1 module=$2 package=$3 version=$4
  local root="$PWD/.tools/go-bbr/$name-$version"
  local bin="$root/bin/$name"
  if [ -x "$bin" ]; then echo "$bin"; return; fi
  local mod="$root/module" start=$SECONDS
  mkdir -p "$mod" "$root/bin"
  log "building $package@$version (the first build takes minutes)"
  local gomod go_line
  gomod="$(cd "$mod" && GOFLAGS=-mod=mod go mod download -json "$module@$version" |
    sed -n 's/^[[:space:]]*"GoMod": "\(.*\)",$/\1/p')"
  [ -f "$gomod" ] || { log "cannot download $module@$version"; exit 1; }
  go_line="$(grep -m1 '^go ' "$gomod")"
  printf 'module bbr.local/go-bbr\n\n%s\n\nrequire %s %s\n' "$go_line" "$module" "$version" >"$mod/go.mod"
  printf '//go:build tools\n\npackage tools\n\nimport _ "%s"\n' "$package" >"$mod/tools.go"
  (
    cd "$mod"
    GOFLAGS=-mod=mod go mod tidy -e 2>"$mod/tidy.log" >&2 || { cat "$mod/tidy.log" >&2; exit 1; }
    nice -n 10 go build -trimpath -ldflags="-s -w" -o "$bin" "$package" >&2
  )
  [ -x "$bin" ] || { log "$package $version missing after the build"; exit 1; }
  log "$package $version built in $((SECONDS - start)) s"
  echo "$bin"
}

gie=sigs.k8s.io/gateway-api-inference-extension
ipp=github.com/llm-d/llm-d-inference-payload-processor
v15="$(build bbr "$gie" "$gie/cmd/bbr" v1.5.0)"
v05="$(build bbr "$gie" "$gie/cmd/bbr" v0.5.1)"
ippbin="$(build ipp "$ipp" "$ipp/cmd" v0.1.0)"
echo "export BBR_GO_BBR_V1_5='$v15'"
echo "export BBR_GO_BBR_V0_5='$v05'"
echo "export BBR_GO_IPP='$ippbin'"
