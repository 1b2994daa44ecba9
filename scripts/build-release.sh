#!/usr/bin/env bash
# Release artefacts for linux/amd64 and linux/arm64, built on this machine
# (an x86-64 Debian; aarch64 is cross-compiled):
#
#   dist/linux-{amd64,arm64}/bbr-extproc      static (crt-static glibc), stripped
#   dist/linux-{amd64,arm64}/libbbr_envoy.so  the Envoy dynamic module
#   images IMAGE-amd64 and IMAGE-arm64, and IMAGE, a manifest list of both
#
# under ${CARGO_TARGET_DIR:-target}/. Each image is the one
# scripts/build-image.sh assembles (the binary alone, user 65532, no
# shell), made from scratch with buildah: copying a cross-built binary into
# an arm64 image runs nothing, so no emulation is needed to build it. Each
# binary is run before it goes into an image (the aarch64 one under
# qemu-user): `--version`, then bbr-extproc's black-box tests run against
# it on loopback (scripts/test-extproc-binary.sh: ext_proc exchanges over
# gRPC, TLS with any server name). Each image's binary is taken out of
# the committed image, compared with the artefact and run again. Push the
# list with `buildah manifest push --all IMAGE docker://REGISTRY/bbr-extproc:TAG`:
# each node then pulls the image of its own architecture.
#
# OpenSSL is linked statically: the build machine's libssl (libssl-dev)
# for its own architecture, and for the other one OpenSSL built from
# source by the openssl crate (feature `vendored-openssl`), with the cross
# C compiler and Perl (OpenSSL's Configure) and make.
#
# Tools installed when missing (as root, Debian; the versions below when
# the archive still has them, the current ones otherwise): buildah, the
# aarch64 cross compiler and qemu-user (scripts/test-aarch64.sh installs
# the same), perl and make. perl is not pinned: it must match the
# perl-base the system already has.
# Usage: scripts/build-release.sh [IMAGE]   (default bbr-extproc:release)
# Environment: BBR_RELEASE_ARCHS ("amd64 arm64"), BBR_RELEASE_NO_IMAGES=1.
set -euo pipefail
cd "$(dirname "$0")/.."

image="${1:-bbr-extproc:release}"
archs="${BBR_RELEASE_ARCHS:-amd64 arm64}"
gcc_version="4:12.2.0-3"
qemu_version="1:7.2+dfsg-7+deb12u18+b3"
buildah_version="1.28.2+ds1-3+deb12u1+b3"
make_version="4.3-4.1"
log() { echo "build-release: $*" >&2; }
need_root() {
  [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null ||
    { log "$1 is missing and cannot be installed here (needs root and apt-get)"; exit 1; }
}
. scripts/apt-pinned.sh
apt_install() {
  log "installing $* (Debian packages)"
  apt-get update -qq >&2
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "$@" >&2
}

case " $archs " in
  *" arm64 "*)
    if ! command -v aarch64-linux-gnu-gcc >/dev/null || ! command -v qemu-aarch64 >/dev/null; then
      need_root "the aarch64 cross compiler or qemu-user"
      apt_install "$(pinned gcc-aarch64-linux-gnu "$gcc_version")" "$(pinned qemu-user "$qemu_version")"
    fi
    rustup target list --installed | grep -qx aarch64-unknown-linux-gnu ||
      rustup target add aarch64-unknown-linux-gnu >&2
    ;;
esac
cross=0
for arch in $archs; do
  case "$arch/$(uname -m)" in
    amd64/x86_64 | arm64/aarch64) ;;
    *) cross=1 ;;
  esac
done
# OpenSSL's build from source: Configure is Perl and needs modules that
# perl-base lacks (IPC::Cmd among them); then make.
if [ "$cross" = 1 ] && { ! perl -MIPC::Cmd -MPod::Usage -e 1 2>/dev/null || ! command -v make >/dev/null; }; then
  need_root "perl (with its core modules) or make"
  apt_install perl "$(pinned make "$make_version")"
fi
export CARGO_TARGET_AARCH64_UNKNOWN_LINUX_GNU_LINKER=aarch64-linux-gnu-gcc
export CC_aarch64_unknown_linux_gnu=aarch64-linux-gnu-gcc
export AR_aarch64_unknown_linux_gnu=aarch64-linux-gnu-ar

commit="$(git rev-parse --short=12 HEAD 2>/dev/null || echo unknown)"
version="$(sed -n 's/^version = "\(.*\)"$/\1/p' Cargo.toml | head -n 1)"
target_dir="${CARGO_TARGET_DIR:-target}"
dist="$target_dir/dist"

triple() {
  case "$1" in
    amd64) echo x86_64-unknown-linux-gnu ;;
    arm64) echo aarch64-unknown-linux-gnu ;;
    *) log "unknown architecture $1 (amd64 or arm64)"; exit 2 ;;
  esac
}
# Runs a binary of architecture $1 on this machine, in place of the
# (sub)shell that calls it: called with `&`, $! is the program's own pid.
run_as() {
  local arch=$1
  shift
  case "$arch/$(uname -m)" in
    amd64/x86_64 | arm64/aarch64) exec "$@" ;;
    arm64/*) exec qemu-aarch64 "$@" ;;
    *) log "cannot run $arch binaries here"; return 1 ;;
  esac
}

for arch in $archs; do
  t="$(triple "$arch")"
  out="$dist/linux-$arch"
  mkdir -p "$out"
  start=$SECONDS
  # The static server: the flags of the Dockerfile and build-image.sh.
  # OpenSSL (the TLS stack for server names rustls refuses) is linked
  # statically: the build machine's libssl for its own architecture, and
  # one built from source (the openssl crate's `vendored`) for the other.
  openssl=(env OPENSSL_STATIC=1)
  features=()
  if [ "$t" != "$(uname -m)-unknown-linux-gnu" ]; then
    openssl=(env)
    features=(--features vendored-openssl)
  fi
  BBR_GIT_COMMIT="$commit" CARGO_PROFILE_RELEASE_DEBUG=0 CARGO_PROFILE_RELEASE_STRIP=symbols \
    RUSTFLAGS="-C target-feature=+crt-static" \
    "${openssl[@]}" nice -n 10 cargo build --release --locked -p bbr-extproc --target "$t" "${features[@]}" >&2
  cp "$target_dir/$t/release/bbr-extproc" "$out/bbr-extproc"
  server_time=$((SECONDS - start))
  # The module: a shared library against the system's glibc, as Envoy's.
  CARGO_PROFILE_RELEASE_DEBUG=0 CARGO_PROFILE_RELEASE_STRIP=symbols \
    nice -n 10 cargo build --release --locked -p bbr-envoy --target "$t" >&2
  cp "$target_dir/$t/release/libbbr_envoy.so" "$out/libbbr_envoy.so"
  log "linux/$arch built in $((SECONDS - start)) s (bbr-extproc $server_time s, then libbbr_envoy.so)"

  if readelf -d "$out/bbr-extproc" | grep -q NEEDED; then
    log "$out/bbr-extproc needs shared libraries; it is not static"
    exit 1
  fi
  printed="$(run_as "$arch" "$out/bbr-extproc" --version)"
  case "$printed" in
    *"$version"*"commit $commit"*) ;;
    *) log "linux/$arch bbr-extproc --version printed '$printed'"; exit 1 ;;
  esac
  # The server serves: ext_proc exchanges and TLS, on loopback.
  scripts/test-extproc-binary.sh "$out/bbr-extproc"
  glibc="$(objdump -T "$out/libbbr_envoy.so" | grep -o 'GLIBC_[0-9.]*' | sort -uV | tail -n 1)"
  for f in bbr-extproc libbbr_envoy.so; do
    log "$(stat -c %s "$out/$f") bytes  $(file -b "$out/$f" | cut -d, -f1-2)  $out/$f"
  done
  log "linux/$arch: bbr-extproc serves ($printed); libbbr_envoy.so needs glibc up to $glibc"
done

[ "${BBR_RELEASE_NO_IMAGES:-0}" = 1 ] && exit 0

if ! command -v buildah >/dev/null; then
  need_root buildah
  apt_install "$(pinned buildah "$buildah_version")"
fi
# As scripts/build-image.sh: no daemon, no user namespaces.
export BUILDAH_ISOLATION=chroot STORAGE_DRIVER="${STORAGE_DRIVER:-vfs}"

buildah manifest rm "$image" >/dev/null 2>&1 || true
buildah manifest create "$image" >/dev/null
for arch in $archs; do
  ctr="$(buildah from --arch "$arch" --os linux scratch)"
  buildah copy --chown 65532:65532 "$ctr" "$dist/linux-$arch/bbr-extproc" /bbr-extproc >/dev/null
  buildah config \
    --arch "$arch" --os linux \
    --user 65532:65532 \
    --entrypoint '["/bbr-extproc"]' \
    --cmd '' \
    --port 9004 --port 9005 --port 9090 \
    --label org.opencontainers.image.title=bbr-extproc \
    --label org.opencontainers.image.source=https://github.com/bbr-rs/bbr \
    --label org.opencontainers.image.licenses=Apache-2.0 \
    --label "org.opencontainers.image.revision=$commit" \
    --label "org.opencontainers.image.version=$version" \
    "$ctr"
  id="$(buildah commit --quiet --rm "$ctr" "$image-$arch")"
  # By its ID: a short name could be looked up in a registry.
  buildah manifest add --arch "$arch" --os linux "$image" "$id" >/dev/null
  got="$(buildah inspect --type image --format '{{.OCIv1.OS}}/{{.OCIv1.Architecture}} {{.OCIv1.Config.User}}' "$image-$arch")"
  log "image $image-$arch: $got, $(buildah images --format '{{.Size}}' "$image-$arch" | head -n 1)"
  [ "$got" = "linux/$arch 65532:65532" ] || { log "image $image-$arch is $got"; exit 1; }
  # The binary as the committed image holds it, read through a mount (an
  # arm64 image's binary cannot run inside it here: no binfmt_misc for
  # `buildah run`), then run as the artefact was (under qemu-user for arm64).
  ctr="$(buildah from "$id")"
  root="$(buildah mount "$ctr")"
  in_image="$(sha256sum <"$root/bbr-extproc" | cut -d' ' -f1)"
  printed="$(run_as "$arch" "$root/bbr-extproc" --version)"
  buildah umount "$ctr" >/dev/null
  buildah rm "$ctr" >/dev/null
  [ "$in_image" = "$(sha256sum <"$dist/linux-$arch/bbr-extproc" | cut -d' ' -f1)" ] ||
    { log "image $image-$arch: /bbr-extproc is not $dist/linux-$arch/bbr-extproc"; exit 1; }
  log "image $image-$arch: /bbr-extproc is the artefact (sha256 ${in_image:0:16}…), taken out and run: $printed"
done
platforms="$(buildah manifest inspect "$image" |
  python3 -c 'import json, sys
print(" ".join(m["platform"]["os"] + "/" + m["platform"]["architecture"]
               for m in json.load(sys.stdin)["manifests"]))')"
log "manifest list $image: $platforms"
echo "$image: $platforms"
