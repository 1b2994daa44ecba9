#!/usr/bin/env bash
# Where bbr-extproc's time goes behind Envoy: runs it under callgrind (one
# worker thread, FULL_DUPLEX_STREAMED, TLS unless BBR_TLS=false), sends
# REQUESTS requests of a SIZE-byte body (`messages` before `model`) one after
# the other through Envoy, and prints callgrind_annotate's inclusive
# profile, plus the instructions a request (start-up included, so use enough
# requests). The callgrind output is kept in OUT (default
# target/callgrind-extproc-SIZE.out) for `callgrind_annotate --inclusive=yes`.
#
# Environment: SIZE (1024), REQUESTS (2000 at 1 KiB, else 50), BBR_TLS, BBR_ENVOY.
set -euo pipefail
cd "$(dirname "$0")/../.."

SIZE=${SIZE:-1024}
if [ "$SIZE" -le 4096 ]; then REQUESTS=${REQUESTS:-2000}; else REQUESTS=${REQUESTS:-50}; fi
OUT=${OUT:-${CARGO_TARGET_DIR:-target}/callgrind-extproc-$SIZE.out}
command -v valgrind >/dev/null || { echo "valgrind is needed (apt-get install valgrind)" >&2; exit 1; }

. benches/load/lib.sh
build_servers bbr
start_pools

log="$work/bbr.log"
valgrind --tool=callgrind --callgrind-out-file="$OUT" \
  "$target/bbr-extproc" --address 127.0.0.1 --grpc-port 0 --grpc-health-port 0 --metrics-port 0 \
  -v 1 --streaming --worker-threads 1 "--secure-serving=$BBR_TLS" >"$log" 2>&1 &
vg=$!; pids+=("$vg")
for _ in $(seq 1 600); do grep -qs "bbr-extproc listening" "$log" && break; sleep 0.1; done
port=$(sed -n 's/.* grpc=127.0.0.1:\([0-9]*\) .*/\1/p' "$log")
[ -n "$port" ] || { echo "bbr-extproc did not start under valgrind" >&2; cat "$log" >&2; exit 1; }
# Under callgrind the server is ~50x slower: give Envoy's message timeout room.
sed 's/message_timeout: 5s/message_timeout: 60s/' examples/envoy/envoy-full-duplex.yaml >"$work/envoy.yaml"
start_envoy "$work/envoy.yaml" "$port" "$BBR_TLS" profile

make_body "$SIZE" "$work/body.json"
timeout 1800 python3 - "$ENVOY_PORT" "$REQUESTS" "$work/body.json" <<'PY'
import http.client, sys
port, n, path = int(sys.argv[1]), int(sys.argv[2]), sys.argv[3]
body = open(path, "rb").read()
c = http.client.HTTPConnection("127.0.0.1", port, timeout=120)
for _ in range(n):
    c.request("POST", "/v1/chat/completions", body, {"Content-Type": "application/json"})
    r = c.getresponse()
    r.read()
    if r.status != 200:
        sys.exit(f"status {r.status}")
PY
# Envoy first, so that the server drains no open connection.
kill "$ENVOY_PID"; wait "$ENVOY_PID" 2>/dev/null || true
kill -INT "$vg"; wait "$vg" || true
total=$(grep -E "^(summary|totals):" "$OUT" | head -n 1 | awk '{print $2}')
echo "bbr-extproc under callgrind: $REQUESTS requests of $SIZE B, $total instructions in all," \
  "$((total / REQUESTS)) a request (start-up included)"
callgrind_annotate --inclusive=yes "$OUT" 2>/dev/null | head -n 60
