#!/usr/bin/env bash
# Core extraction benchmark: bbr (strict and fast, fed in 16 KiB chunks)
# against serde_json, simd-json, sonic-rs, jiter and Go's encoding/json, on
# the same bodies. Prints throughput in GB/s per body and the ratio of bbr
# to the best peer of each row.
#
#   benches/extract.sh            # everything, modest settings (~5 min)
#   benches/extract.sh 1MiB       # only the bodies whose name holds "1MiB"
#   MEASURE=5 benches/extract.sh  # seconds of measurement per benchmark
#   SKIP_GO=1 benches/extract.sh  # without the Go peer
set -euo pipefail
cd "$(dirname "$0")/.."

FILTER="${1:-}"
TARGET="${CARGO_TARGET_DIR:-$PWD/target}"
CRITERION="$TARGET/criterion"
OUT="$TARGET/bench-extract"
mkdir -p "$OUT"

echo "running the criterion bench (log: $OUT/criterion.log)" >&2
cargo bench -q -p bbr-benches --bench extract -- \
    --warm-up-time 0.5 --measurement-time "${MEASURE:-1}" --sample-size 10 \
    --noplot "extract-.*${FILTER}" >"$OUT/criterion.log" 2>&1

# The Go peer: what the Go body-based router does.
rm -f "$OUT/go.txt"
if [ -z "${SKIP_GO:-}" ]; then
    if ! command -v go >/dev/null && command -v apt-get >/dev/null && [ "$(id -u)" = 0 ]; then
        apt-get install -y -qq golang-go >/dev/null 2>&1 ||
            { apt-get update -qq && apt-get install -y -qq golang-go >/dev/null; } || true
    fi
    if command -v go >/dev/null; then
        echo "running the Go peer" >&2
        cargo run -q --release -p bbr-benches --bin bench-bodies -- "$OUT/bodies"
        (cd benches/go && GOFLAGS=-mod=mod go run . "$OUT/bodies") | grep -- "$FILTER" >"$OUT/go.txt" || true
    else
        echo "go not found: the Go peer is left out" >&2
    fi
fi

python3 - "$CRITERION" "$OUT/go.txt" "$FILTER" <<'PY'
import json, os, sys

criterion, go_file, wanted = sys.argv[1], sys.argv[2], sys.argv[3]
ours = ["bbr-strict", "bbr-fast"]
peers = ["serde_json-struct", "serde_json-value", "simd-json-struct", "simd-json-value",
         "sonic-rs-get", "jiter", "go-map"]
go = {}
if os.path.exists(go_file):
    for line in open(go_file):
        name, size, ns = line.split()
        go[name] = (int(size), float(ns))

def order(case):
    shape, size, position = case.split("-")
    sizes = ["1KiB", "100KiB", "1MiB", "10MiB"]
    return (shape, sizes.index(size) if size in sizes else 99, position)

rows = []
for group in sorted(os.listdir(criterion)):
    if not group.startswith("extract-"):
        continue
    case = group[len("extract-"):]
    if wanted and wanted not in case:
        continue
    times, size = {}, None
    for impl in ours + peers:
        base = os.path.join(criterion, group, impl, "new")
        try:
            ns = json.load(open(os.path.join(base, "estimates.json")))["mean"]["point_estimate"]
            size = json.load(open(os.path.join(base, "benchmark.json")))["throughput"]["Bytes"]
        except (OSError, KeyError, TypeError):
            continue
        times[impl] = ns
    if case in go:
        size = size or go[case][0]
        times["go-map"] = go[case][1]
    if size and times:
        rows.append((case, size, times))

def gbps(size, ns):
    return size / ns  # bytes per ns = GB/s

# sonic-rs stops at the first "model" and does not check what it skips:
# it is a peer of the fast policy only. The others read the whole body.
full = [p for p in peers if p != "sonic-rs-get"]
header = ["body", "bytes"] + ours + peers + ["strict/best full", "fast/best any", "fast ns"]
print("| " + " | ".join(header) + " |")
print("|" + "---|" * 2 + "---:|" * (len(header) - 2))
for case, size, times in sorted(rows, key=lambda r: order(r[0])):
    cells = [case, str(size)]
    for impl in ours + peers:
        cells.append(f"{gbps(size, times[impl]):.2f}" if impl in times else "–")
    for impl, among in (("bbr-strict", full), ("bbr-fast", peers)):
        present = [p for p in among if p in times]
        if impl in times and present:
            best = min(present, key=lambda p: times[p])
            cells.append(f"{times[best] / times[impl]:.1f}× {best}")
        else:
            cells.append("–")
    cells.append(f"{times['bbr-fast']:.0f}" if "bbr-fast" in times else "–")
    print("| " + " | ".join(cells) + " |")
print("\nGB/s = 10^9 bytes per second (criterion mean); ratio = the best peer's time / bbr's time;")
print("'best full' among the peers that read the whole body, 'best any' including sonic-rs.")
PY
