#!/usr/bin/env bash
# bbr-core linted for aarch64 (clippy), then its tests as aarch64 binaries
# run under qemu-user: the unit tests (the NEON scan against the scalar
# reference among them), the property and differential tests (bodies split
# at every boundary, compared with serde_json), the memory tests and the
# replay of the checked-in fuzz corpus. Fails unless the NEON path is the
# one the scan took. Then, when an aarch64 bbr-extproc is at hand (the
# static server scripts/build-release.sh builds, or the one
# BBR_EXTPROC_AARCH64 names), bbr-extproc's cli and tls tests run against
# it under qemu-user (scripts/test-extproc-binary.sh). The server is not
# built here: its cross build (OpenSSL from source among it) takes about
# twenty minutes on two cores.
#
# Tools, installed when missing (as root, Debian): the Rust target
# (rustup), Debian's cross linker gcc-aarch64-linux-gnu (also the C
# compiler of the zstd dev-dependency) and qemu-user. The Debian versions
# below are installed when the archive still has them, the current ones
# otherwise (a security update replaces the older build).
#
# Usage: scripts/test-aarch64.sh [CARGO TEST ARGS...]
set -euo pipefail
cd "$(dirname "$0")/.."

target=aarch64-unknown-linux-gnu
gcc_version="4:12.2.0-3"
qemu_version="1:7.2+dfsg-7+deb12u18+b3"
log() { echo "test-aarch64: $*" >&2; }

. scripts/apt-pinned.sh

if ! command -v aarch64-linux-gnu-gcc >/dev/null || ! command -v qemu-aarch64 >/dev/null; then
  if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
    log "installing the cross linker and qemu-user (Debian packages)"
    apt-get update -qq >&2
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq \
      "$(pinned gcc-aarch64-linux-gnu "$gcc_version")" \
      "$(pinned qemu-user "$qemu_version")" >&2
  else
    log "gcc-aarch64-linux-gnu and qemu-user are missing and cannot be installed here (needs root and apt-get)"
    exit 1
  fi
fi
if ! rustup target list --installed | grep -qx "$target"; then
  log "adding the Rust target $target"
  rustup target add "$target" >&2
fi

export CARGO_TARGET_AARCH64_UNKNOWN_LINUX_GNU_LINKER=aarch64-linux-gnu-gcc
export CC_aarch64_unknown_linux_gnu=aarch64-linux-gnu-gcc
# qemu finds the aarch64 glibc of the cross toolchain under -L.
export CARGO_TARGET_AARCH64_UNKNOWN_LINUX_GNU_RUNNER="qemu-aarch64 -L /usr/aarch64-linux-gnu"
# Emulation costs per instruction executed: optimised test binaries (debug
# assertions kept) run the suite in a tenth of the time of unoptimised ones.
# Only this target's artefacts are built so (build scripts and proc macros
# keep their own profile), under target/aarch64-unknown-linux-gnu/.
export CARGO_PROFILE_DEV_OPT_LEVEL=1

# The NEON code compiles for aarch64 only: the workspace's clippy run
# never sees it.
nice cargo clippy -q -p bbr-core --all-features --all-targets --target "$target" -- -D warnings

out="$(mktemp)"
trap 'rm -f "$out"' EXIT
start=$SECONDS
nice cargo test -p bbr-core --all-features --target "$target" --lib --tests --no-run 2>&1 |
  { grep -vE '^\s+(Compiling|Executable) ' || true; } >&2
built=$((SECONDS - start))
status=0
cargo test -p bbr-core --all-features --target "$target" --lib --tests "$@" >"$out" 2>&1 || status=$?
ran=$((SECONDS - start - built))
if [ "$status" != 0 ]; then
  cat "$out" >&2
  log "the aarch64 tests failed"
  exit "$status"
fi

# What ran, file by file, and the totals.
awk '/^ +Running /{name = $2 == "unittests" ? $3 : $2} /^test result:/{
       printf "test-aarch64: %-26s %s passed, %s failed, %s ignored\n", name, $4, $6, $8
       p += $4; f += $6; i += $8 }
     END { printf "test-aarch64: total %d passed, %d failed, %d ignored\n", p, f, i }' "$out" >&2
grep -q '^test scan::tests::neon_is_the_path_taken_on_aarch64 \.\.\. ok$' "$out" ||
  { log "the test that the NEON path is taken did not run"; exit 1; }
neon="$(grep -c '^test scan::aarch64::tests::.* \.\.\. ok$' "$out")"
binary="$(ls -t "${CARGO_TARGET_DIR:-target}/$target/debug/deps"/bbr_core-* | grep -v '\.d$' | head -n 1)"
log "$(file -b "$binary" | cut -d, -f1-2)"
log "the NEON path was taken; $neon NEON-against-scalar tests passed"
log "built in $built s, ran under qemu in $ran s"

server="${BBR_EXTPROC_AARCH64:-${CARGO_TARGET_DIR:-target}/dist/linux-arm64/bbr-extproc}"
if [ -n "${BBR_EXTPROC_AARCH64:-}" ] || [ -x "$server" ]; then
  scripts/test-extproc-binary.sh "$server"
else
  log "skipped: the aarch64 server's tests under qemu (no $server; scripts/build-release.sh builds it)"
fi
