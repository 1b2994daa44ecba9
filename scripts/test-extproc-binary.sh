#!/usr/bin/env bash
# Runs bbr-extproc's black-box integration tests against a given server
# binary instead of the one cargo builds for them: a release artefact, of
# this machine's architecture or of aarch64 (run under qemu-user, when
# this machine is not aarch64). The tests are host programs on loopback:
#
#   cli  usage errors, the metrics listed from start-up, and four ext_proc
#        exchanges over gRPC (routed, failed open, refused twice) with
#        the metrics they count;
#   tls  TLS handshakes with the server names Istio and DNS send, and
#        none, each followed by a gRPC health check (OpenSSL on the server
#        side for the name rustls refuses).
#
# Each test bounds its waits (20 s); the run as a whole (after the tests
# are built) is bounded by BBR_TEST_BINARY_TIMEOUT seconds (default 300).
#
# Usage: scripts/test-extproc-binary.sh BINARY [CARGO TEST ARGS...]
set -euo pipefail
cd "$(dirname "$0")/.."
log() { echo "test-extproc-binary: $*" >&2; }

[ $# -ge 1 ] || { log "usage: $0 BINARY [CARGO TEST ARGS...]"; exit 2; }
binary="$(realpath "$1")"
shift
[ -x "$binary" ] || { log "$binary is not an executable file"; exit 2; }

machine="$(readelf -h "$binary" | sed -n 's/^ *Machine: *//p')"
case "$machine/$(uname -m)" in
  "Advanced Micro Devices X86-64/x86_64" | "AArch64/aarch64") program="$binary" ;;
  AArch64/*)
    command -v qemu-aarch64 >/dev/null ||
      { log "qemu-aarch64 is missing (Debian's qemu-user; scripts/test-aarch64.sh installs it)"; exit 1; }
    # The tests start one program with arguments and kill it by its pid:
    # a script that becomes the emulator (exec) is that program. -L: the
    # cross toolchain's glibc, for a binary that is not static.
    dir="$(mktemp -d)"
    trap 'rm -rf "$dir"' EXIT
    program="$dir/bbr-extproc"
    printf '#!/bin/sh\nexec qemu-aarch64 -L /usr/aarch64-linux-gnu %q "$@"\n' "$binary" >"$program"
    chmod +x "$program"
    ;;
  *) log "cannot run a $machine binary on $(uname -m)"; exit 1 ;;
esac

# The host's own profile and flags: the tests build (or reuse) what
# `cargo test` builds, whatever the caller exported for a cross build.
tests=(env -u RUSTFLAGS -u CARGO_PROFILE_DEV_OPT_LEVEL -u CARGO_BUILD_TARGET
  cargo test -p bbr-extproc --test cli --test tls)
"${tests[@]}" --no-run 2>&1 | { grep -vE '^\s+(Compiling|Executable) ' || true; } >&2
log "against $(file -b "$binary" | cut -d, -f1-2): $binary"
start=$SECONDS
BBR_EXTPROC_BIN="$program" timeout "${BBR_TEST_BINARY_TIMEOUT:-300}" "${tests[@]}" "$@" >&2
log "passed in $((SECONDS - start)) s"
