#!/usr/bin/env bash
# Builds the bbr-extproc container image (or bbr-gateway's) with buildah
# and proves that it starts: `--version` prints the version (and, for
# bbr-extproc, the commit), and the server inside the image comes up and
# prints its listening line; the gateway also answers the demo's chat
# request from its simulated pool.
#
# Two ways to build, one final image (a static binary at /BINARY, user
# 65532, entrypoint /BINARY; bbr-extproc's also holds the Envoy dynamic
# module at /libbbr_envoy.so, for the chart's module mode):
#   offline (default): the static binary is built on this machine
#     (crt-static), then `buildah from scratch` + copy + config. Needs no
#     container registry, only crates.io.
#   BBR_IMAGE_FROM_DOCKERFILE=1: `buildah bud` on the Dockerfile (its stage
#     named after the binary), which pulls a Rust image and the distroless
#     base from their registries.
#
# buildah comes from Debian's package (installed when missing, as root).
# Usage: scripts/build-image.sh [bbr-extproc|bbr-gateway] [IMAGE_NAME]
#   (default: bbr-extproc, image BINARY:dev)
set -euo pipefail
cd "$(dirname "$0")/.."

binary=bbr-extproc
case "${1:-}" in
  bbr-extproc | bbr-gateway) binary="$1"; shift ;;
esac
image="${1:-$binary:dev}"
log() { echo "build-image: $*" >&2; }
# What differs between the two images: the ports, the default arguments,
# and how the server says it listens when started on loopback.
case "$binary" in
  bbr-extproc)
    ports=(--port 9004 --port 9005 --port 9090)
    cmd=''
    loopback=(--address 127.0.0.1 --grpc-port 0 --grpc-health-port 0 --metrics-port 0)
    listening='bbr-extproc listening'
    ;;
  bbr-gateway)
    ports=(--port 8080)
    # In a container it listens on every address (loopback by default).
    cmd='["--listen","0.0.0.0:8080"]'
    loopback=(--listen 127.0.0.1:0 --token-delay-ms 0)
    listening='gateway listening on http://'
    ;;
esac

if ! command -v buildah >/dev/null; then
  if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
    log "installing buildah (Debian package)"
    apt-get update -qq >&2
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq buildah >&2
  else
    log "buildah is missing and cannot be installed here (needs root and apt-get)"
    exit 1
  fi
fi
# No daemon, no user namespaces: run as root with chroot isolation and the
# vfs driver, which work inside a container too.
export BUILDAH_ISOLATION=chroot STORAGE_DRIVER="${STORAGE_DRIVER:-vfs}"

commit="$(git rev-parse --short=12 HEAD 2>/dev/null || echo unknown)"
version="$(sed -n 's/^version = "\(.*\)"$/\1/p' Cargo.toml | head -n 1)"

if [ "${BBR_IMAGE_FROM_DOCKERFILE:-0}" = 1 ]; then
  log "building $image from the Dockerfile (needs access to container registries)"
  buildah bud --layers --target "$binary" --build-arg "BBR_GIT_COMMIT=$commit" -t "$image" . >&2
else
  target="$(uname -m)-unknown-linux-gnu"
  log "building a static $binary for $target on this machine"
  start=$SECONDS
  BBR_GIT_COMMIT="$commit" CARGO_PROFILE_RELEASE_DEBUG=0 CARGO_PROFILE_RELEASE_STRIP=symbols \
    RUSTFLAGS="-C target-feature=+crt-static" OPENSSL_STATIC=1 \
    nice -n 10 cargo build --release --locked -p "$binary" --target "$target" >&2
  log "binary built in $((SECONDS - start)) s"
  built="${CARGO_TARGET_DIR:-target}/$target/release/$binary"
  if readelf -d "$built" | grep -q NEEDED; then
    log "$built needs shared libraries; the image would not run"
    exit 1
  fi
  module=""
  if [ "$binary" = bbr-extproc ]; then
    # The Envoy dynamic module rides along (the chart's bbr.mode module
    # mounts the image into the gateway's Envoy): a shared library, glibc
    # linked dynamically, as Envoy loads it.
    BBR_GIT_COMMIT="$commit" CARGO_PROFILE_RELEASE_DEBUG=0 CARGO_PROFILE_RELEASE_STRIP=symbols \
      nice -n 10 cargo build --release --locked -p bbr-envoy --target "$target" >&2
    module="${CARGO_TARGET_DIR:-target}/$target/release/libbbr_envoy.so"
    readelf -W --dyn-syms "$module" | grep -q envoy_dynamic_module_on_program_init ||
      { log "$module does not export the dynamic module's entry points"; exit 1; }
  fi
  ctr="$(buildah from scratch)"
  trap 'buildah rm "$ctr" >/dev/null 2>&1 || true' EXIT
  buildah copy --chown 65532:65532 "$ctr" "$built" "/$binary" >/dev/null
  if [ -n "$module" ]; then
    buildah copy --chown 65532:65532 "$ctr" "$module" /libbbr_envoy.so >/dev/null
  fi
  buildah config \
    --user 65532:65532 \
    --entrypoint "[\"/$binary\"]" \
    --cmd "$cmd" \
    "${ports[@]}" \
    --label "org.opencontainers.image.title=$binary" \
    --label org.opencontainers.image.source=https://github.com/bbr-rs/bbr \
    --label org.opencontainers.image.licenses=Apache-2.0 \
    --label "org.opencontainers.image.revision=$commit" \
    --label "org.opencontainers.image.version=$version" \
    "$ctr"
  buildah commit --quiet --rm "$ctr" "$image" >/dev/null
  trap - EXIT
fi

size="$(buildah images --format '{{.Size}}' "$image" | head -n 1)"
user="$(buildah inspect --type image --format '{{.OCIv1.Config.User}}' "$image")"
entrypoint="$(buildah inspect --type image --format '{{.OCIv1.Config.Entrypoint}}' "$image")"
log "image $image: size $size, user $user, entrypoint $entrypoint"
[ "$user" = "65532:65532" ] || { log "the image does not run as 65532"; exit 1; }

# Run the binary inside the image (chroot isolation, the host's loopback).
run_ctr="$(buildah from "$image")"
cleanup() {
  [ -n "${server_pid:-}" ] && kill "$server_pid" 2>/dev/null || true
  buildah rm "$run_ctr" >/dev/null 2>&1 || true
  rm -f "${out:-}"
}
trap cleanup EXIT
if [ "$binary" = bbr-extproc ]; then
  # The module, where the chart's image volume expects it.
  mnt="$(buildah mount "$run_ctr")"
  readelf -W --dyn-syms "$mnt/libbbr_envoy.so" 2>/dev/null | grep -q envoy_dynamic_module_on_program_init ||
    { log "the image holds no /libbbr_envoy.so exporting the module's entry points"; exit 1; }
  log "in the image: /libbbr_envoy.so, $(du -h "$mnt/libbbr_envoy.so" | cut -f1)"
  buildah umount "$run_ctr" >/dev/null
fi
printed="$(timeout 60 buildah run --isolation chroot "$run_ctr" -- "/$binary" --version)"
log "in the image: $printed"
expected="$version"
[ "$binary" = bbr-extproc ] && expected="$version (commit $commit)"
case "$printed" in
  *"$expected"*) ;;
  *) log "--version printed '$printed', expected $expected"; exit 1 ;;
esac

out="$(mktemp)"
timeout 60 buildah run --isolation chroot --network host "$run_ctr" -- "/$binary" \
  "${loopback[@]}" >"$out" 2>&1 &
server_pid=$!
for _ in $(seq 1 100); do
  grep -q "$listening" "$out" && break
  kill -0 "$server_pid" 2>/dev/null || break
  sleep 0.1
done
if ! grep -q "$listening" "$out"; then
  log "the server in the image did not start:"
  cat "$out" >&2
  exit 1
fi
log "the server in the image started: $(grep "$listening" "$out")"
if [ "$binary" = bbr-gateway ]; then
  # The demo's first request, answered by the simulated pool in the image.
  addr="$(sed -n 's|^gateway listening on http://\([0-9.:]*\).*|\1|p' "$out")"
  answer="$(curl -sS -i --max-time 10 -X POST "http://$addr/v1/chat/completions" \
    -H 'Content-Type: application/json' -d '{"model":"chatbot","messages":[]}' | tr -d '\r')"
  grep -qi '^x-inference-pool: gemma3$' <<<"$answer" ||
    { log "the gateway in the image did not route the demo's request:"; echo "$answer" >&2; exit 1; }
  log "the gateway in the image routed chatbot to pool gemma3"
fi
# Stop it: SIGTERM to the server process inside (a descendant of buildah run).
descendants() { local c; for c in $(ps -o pid= --ppid "$1"); do echo "$c"; descendants "$c"; done; }
for pid in $(descendants "$server_pid"); do
  [ "$(ps -o comm= -p "$pid")" = "$binary" ] && kill -TERM "$pid"
done
wait "$server_pid" 2>/dev/null || true
server_pid=
echo "image $image: $size, user 65532, starts"
