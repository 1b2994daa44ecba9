#!/usr/bin/env bash
# Instructions per body byte of bbr-core's scan on aarch64, NEON against the
# portable scalar path, counted under qemu-user: timing an emulated CPU
# means nothing, counting its instructions does. Debian's qemu-user ships
# no instruction-counting plugin, so qemu runs one guest instruction per
# translation block (-singlestep) with block chaining off and logs each
# block it executes (-d nochain,exec): one log line per instruction,
# counted by wc.
#
# The program is crates/bbr-core/examples/scan_instructions.rs: it extracts
# the model of a generated body REPEATS times. The figure is
# (count(REPEATS) - count(0)) / (REPEATS x body bytes): start-up and the
# body's generation cancel out. The scalar build is the same program built
# with `--cfg bbr_scan_scalar` (its own target folder).
#
# Usage: benches/arm64-instructions.sh   Environment: SIZE (262144), REPEATS (2)
set -euo pipefail
cd "$(dirname "$0")/.."

SIZE=${SIZE:-262144}
REPEATS=${REPEATS:-2}
for tool in qemu-aarch64 aarch64-linux-gnu-gcc; do
  command -v "$tool" >/dev/null ||
    { echo "$tool is missing: scripts/test-aarch64.sh installs it" >&2; exit 1; }
done
export CARGO_TARGET_AARCH64_UNKNOWN_LINUX_GNU_LINKER=aarch64-linux-gnu-gcc
export CC_aarch64_unknown_linux_gnu=aarch64-linux-gnu-gcc
t=aarch64-unknown-linux-gnu
target_dir="${CARGO_TARGET_DIR:-$PWD/target}"
nice cargo build -q --release -p bbr-core --example scan_instructions --target "$t"
RUSTFLAGS="--cfg bbr_scan_scalar" CARGO_TARGET_DIR="$target_dir/scan-scalar" \
  nice cargo build -q --release -p bbr-core --example scan_instructions --target "$t"
neon="$target_dir/$t/release/examples/scan_instructions"
scalar="$target_dir/scan-scalar/$t/release/examples/scan_instructions"

work="$(mktemp -d)"
trap 'rm -rf "$work"' EXIT
mkfifo "$work/log"
# Guest instructions of one run of the program with these arguments.
count() {
  wc -l <"$work/log" >"$work/n" &
  qemu-aarch64 -L /usr/aarch64-linux-gnu -singlestep -d nochain,exec -D "$work/log" "$@" >"$work/out"
  wait
  cat "$work/n"
}

printf '%-8s %10s %12s %12s %8s\n' shape bytes NEON scalar ratio
for shape in text chat nested; do
  per=()
  for bin in "$neon" "$scalar"; do
    base="$(count "$bin" "$shape" "$SIZE" 0)"
    bytes="$(cat "$work/out")"
    total="$(count "$bin" "$shape" "$SIZE" "$REPEATS")"
    per+=("$(python3 -c "print(f'{($total - $base) / ($REPEATS * $bytes):.3f}')")")
  done
  ratio="$(python3 -c "print(f'{${per[1]} / ${per[0]}:.2f}x')")"
  printf '%-8s %10s %12s %12s %8s\n' "$shape" "$bytes" "${per[0]}" "${per[1]}" "$ratio"
done
echo "(instructions per body byte, aarch64 under qemu-user; ratio = scalar / NEON)"
