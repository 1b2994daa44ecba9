#!/usr/bin/env bash
# Builds the Kubernetes tools the deployment checks need, pinned by version,
# from their Go modules, and caches them under .tools/k8s/<versions>/bin:
#
#   kube-apiserver, kubectl  from k8s.io/kubernetes (one scratch module that
#                            requires it and points its k8s.io/* staging
#                            modules at their published versions)
#   etcd                     from go.etcd.io/etcd/server/v3, at the version
#                            that same Kubernetes release requires
#   helm                     go install helm.sh/helm/v3/cmd/helm
#
# Needs only Go and the Go module proxy. Prints `export NAME=PATH` lines
# (BBR_KUBE_APISERVER, BBR_KUBECTL, BBR_ETCD, BBR_HELM, BBR_K8S_TOOLS) for
# `eval`. A second run finds the binaries and builds nothing; a run on a
# machine whose Go build cache is warm only links.
#
# Usage: eval "$(scripts/install-k8s-tools.sh)"
set -euo pipefail
cd "$(dirname "$0")/.."

K8S_VERSION=v1.36.3 # k8s.io/kubernetes; its staging modules are v0.36.3
HELM_VERSION=v3.20.2

# Bump when the way the tools are built changes, so that caches rebuild.
RECIPE=2

staging_version="v0.${K8S_VERSION#v1.}"
minor="${K8S_VERSION#v1.}"; minor="${minor%%.*}"
root="$PWD/.tools/k8s/kubernetes-$K8S_VERSION-helm-$HELM_VERSION-r$RECIPE"
bin="$root/bin"
mkdir -p "$bin"

log() { echo "install-k8s-tools: $*" >&2; }

# Small, stripped, reproducible binaries, stamped with their version as
# Kubernetes' own build does (kubectl refuses to talk to a server whose
# version does not parse).
stamp=""
for pkg in k8s.io/component-base/version k8s.io/client-go/pkg/version; do
  stamp+=" -X $pkg.gitVersion=$K8S_VERSION -X $pkg.gitMajor=1 -X $pkg.gitMinor=$minor"
  stamp+=" -X $pkg.gitTreeState=clean -X $pkg.buildDate=1970-01-01T00:00:00Z"
done
gobuild() { nice -n 10 go build -trimpath -ldflags="-s -w$stamp" "$@"; }

if [ ! -x "$bin/kube-apiserver" ] || [ ! -x "$bin/kubectl" ] || [ ! -x "$bin/etcd" ]; then
  mod="$root/module"
  mkdir -p "$mod"
  log "building kube-apiserver, kubectl and etcd from k8s.io/kubernetes@$K8S_VERSION (the first build takes minutes)"
  start=$SECONDS
  gomod="$(cd "$mod" && GOFLAGS=-mod=mod go mod download -json "k8s.io/kubernetes@$K8S_VERSION" |
    sed -n 's/^[[:space:]]*"GoMod": "\(.*\)",$/\1/p')"
  [ -f "$gomod" ] || { log "cannot download k8s.io/kubernetes@$K8S_VERSION"; exit 1; }
  go_line="$(grep -m1 '^go ' "$gomod")"
  {
    echo "module bbr.local/k8s-tools"
    echo
    echo "$go_line"
    echo
    echo "require k8s.io/kubernetes $K8S_VERSION"
    echo
    echo "replace ("
    # Every k8s.io/* module k8s.io/kubernetes requires at v0.0.0 is one of its
    # staging modules, published on its own as v0.<minor>.<patch>.
    sed -n 's/^[[:space:]]*\(k8s\.io\/[a-z0-9.-]*\) v0\.0\.0$/\1/p' "$gomod" | sort -u |
      while read -r m; do echo "	$m => $m $staging_version"; done
    echo ")"
  } >"$mod/go.mod"
  cat >"$mod/tools.go" <<'EOF'
//go:build tools

package tools

import (
	_ "go.etcd.io/etcd/server/v3"
	_ "k8s.io/kubernetes/cmd/kube-apiserver"
	_ "k8s.io/kubernetes/cmd/kubectl"
)
EOF
  (
    cd "$mod"
    GOFLAGS=-mod=mod go mod tidy -e >&2 2>"$mod/tidy.log" || { cat "$mod/tidy.log" >&2; exit 1; }
    gobuild -o "$bin/kube-apiserver" k8s.io/kubernetes/cmd/kube-apiserver
    gobuild -o "$bin/kubectl" k8s.io/kubernetes/cmd/kubectl
    # The etcd version the API server is built against.
    gobuild -o "$bin/etcd" go.etcd.io/etcd/server/v3
  )
  log "kube-apiserver, kubectl and etcd built in $((SECONDS - start)) s"
fi

if [ ! -x "$bin/helm" ]; then
  log "building helm $HELM_VERSION"
  start=$SECONDS
  GOBIN="$bin" GOFLAGS=-trimpath nice -n 10 go install -ldflags='-s -w' "helm.sh/helm/v3/cmd/helm@$HELM_VERSION" >&2
  log "helm built in $((SECONDS - start)) s"
fi

for tool in kube-apiserver kubectl etcd helm; do
  [ -x "$bin/$tool" ] || { log "$tool missing after the build"; exit 1; }
done
echo "export BBR_K8S_TOOLS='$bin'"
echo "export BBR_KUBE_APISERVER='$bin/kube-apiserver'"
echo "export BBR_KUBECTL='$bin/kubectl'"
echo "export BBR_ETCD='$bin/etcd'"
echo "export BBR_HELM='$bin/helm'"
