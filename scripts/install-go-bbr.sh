#!/usr/bin/env bash
# Builds the Go body-based router of the Gateway API Inference Extension
# (sigs.k8s.io/gateway-api-inference-extension/cmd/bbr), pinned by release,
# from its Go module, and caches each release under .tools/go-bbr/<version>/:
#
#   v1.5.0  flags --grpc-port, --secure-serving, --streaming, --plugin …
#   v0.5.1  flags -grpcPort, -streaming (always TLS, self-signed)
#
# A scratch module requires the release (so that `go install pkg@version`'s
# checks on the module and its replace lines do not apply) and builds its
# cmd/bbr with the dependency versions the release's go.mod pins.
#
# Needs only Go and the Go module proxy. Prints `export NAME=PATH` lines
# (BBR_GO_BBR_V1_5, BBR_GO_BBR_V0_5) for `eval`. A second run builds nothing.
#
# Usage: eval "$(scripts/install-go-bbr.sh)"
set -euo pipefail
cd "$(dirname "$0")/.."

MODULE=sigs.k8s.io/gateway-api-inference-extension

log() { echo "install-go-bbr: $*" >&2; }

build() { # version
  local version=$1 root="$PWD/.tools/go-bbr/$1"
  local bin="$root/bin/bbr"
  if [ -x "$bin" ]; then echo "$bin"; return; fi
  local mod="$root/module" start=$SECONDS
  mkdir -p "$mod" "$root/bin"
  log "building $MODULE/cmd/bbr@$version (the first build takes minutes)"
  local gomod go_line
  gomod="$(cd "$mod" && GOFLAGS=-mod=mod go mod download -json "$MODULE@$version" |
    sed -n 's/^[[:space:]]*"GoMod": "\(.*\)",$/\1/p')"
  [ -f "$gomod" ] || { log "cannot download $MODULE@$version"; exit 1; }
  go_line="$(grep -m1 '^go ' "$gomod")"
  printf 'module bbr.local/go-bbr\n\n%s\n\nrequire %s %s\n' "$go_line" "$MODULE" "$version" >"$mod/go.mod"
  printf '//go:build tools\n\npackage tools\n\nimport _ "%s/cmd/bbr"\n' "$MODULE" >"$mod/tools.go"
  (
    cd "$mod"
    GOFLAGS=-mod=mod go mod tidy -e 2>"$mod/tidy.log" >&2 || { cat "$mod/tidy.log" >&2; exit 1; }
    nice -n 10 go build -trimpath -ldflags="-s -w" -o "$bin" "$MODULE/cmd/bbr" >&2
  )
  [ -x "$bin" ] || { log "bbr $version missing after the build"; exit 1; }
  log "bbr $version built in $((SECONDS - start)) s"
  echo "$bin"
}

v15="$(build v1.5.0)"
v05="$(build v0.5.1)"
echo "export BBR_GO_BBR_V1_5='$v15'"
echo "export BBR_GO_BBR_V0_5='$v05'"
