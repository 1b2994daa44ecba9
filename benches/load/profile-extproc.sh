#!/usr/bin/env bash
# Where bbr-extproc's time goes behind Envoy: runs it under valgrind (one
# worker thread, FULL_DUPLEX_STREAMED or, with BODY_MODE=buffered,
# BUFFERED, TLS unless BBR_TLS=false), sends
# REQUESTS requests of a SIZE-byte body (`messages` before `model`) one after
# the other through Envoy, and prints what a request costs:
#
#   TOOL=callgrind (default)  instructions a request, then
#                             callgrind_annotate's inclusive profile;
#   TOOL=dhat                 heap blocks allocated (and bytes) a request.
#
# Each figure is given twice: over the run with start-up included (total /
# REQUESTS), and without it, from a second run of BASE requests subtracted
# ((total - base) / (REQUESTS - BASE)); BASE=0 skips the second run. The
# valgrind output of the full run is kept in OUT (default
# target/TOOL-extproc-SIZE[-buffered].out; `callgrind_annotate --inclusive=yes OUT`,
# or dhat's viewer).
#
# Environment: TOOL, SIZE (1024), BODY_MODE (full-duplex), REQUESTS (2000 at 1 KiB, else 50),
# BASE (REQUESTS / 10), BBR_TLS, BBR_ENVOY, BBR_EXTPROC (a bbr-extproc binary
# to measure instead of building this tree's).
set -euo pipefail
cd "$(dirname "$0")/../.."

TOOL=${TOOL:-callgrind}
SIZE=${SIZE:-1024}
if [ "$SIZE" -le 4096 ]; then REQUESTS=${REQUESTS:-2000}; else REQUESTS=${REQUESTS:-50}; fi
BASE=${BASE:-$((REQUESTS / 10))}
BODY_MODE=${BODY_MODE:-full-duplex}
case "$BODY_MODE" in
  full-duplex) suffix="" ;;
  buffered) suffix="-buffered" ;;
  *) echo "BODY_MODE is full-duplex or buffered, not $BODY_MODE" >&2; exit 1 ;;
esac
OUT=${OUT:-${CARGO_TARGET_DIR:-target}/$TOOL-extproc-$SIZE$suffix.out}
command -v valgrind >/dev/null || { echo "valgrind is needed (apt-get install valgrind)" >&2; exit 1; }
case "$TOOL" in
  callgrind|dhat) ;;
  *) echo "TOOL is callgrind or dhat, not $TOOL" >&2; exit 1 ;;
esac

. benches/load/lib.sh
if [ -n "${BBR_EXTPROC:-}" ]; then
  server_bin=$BBR_EXTPROC
  nice -n 10 cargo build --release -q -p bbr-examples --example pools
  envoy_bin="${BBR_ENVOY:-$(scripts/install-envoy.sh)}"
else
  build_servers bbr
  server_bin="$target/bbr-extproc"
fi
start_pools
make_body "$SIZE" "$work/body.json"
# Under valgrind the server is ~50x slower: give Envoy's message timeout room.
sed 's/message_timeout: 5s/message_timeout: 60s/' "$(envoy_template "$BODY_MODE")" >"$work/envoy.yaml"

# Runs the server under $TOOL for `n` requests, writing valgrind's output
# to `out`; prints the run's total: instructions (callgrind) or
# "blocks bytes" allocated (dhat).
run() { # n out
  local n=$1 out=$2 log="$work/bbr-$1.log" vg port
  local flags=(--address 127.0.0.1 --grpc-port 0 --grpc-health-port 0 --metrics-port 0
    -v 1 "--streaming=$([ "$BODY_MODE" = full-duplex ] && echo true || echo false)"
    --worker-threads 1 "--secure-serving=$BBR_TLS")
  case "$TOOL" in
    callgrind) valgrind --tool=callgrind --callgrind-out-file="$out" "$server_bin" "${flags[@]}" >"$log" 2>&1 & ;;
    dhat) valgrind --tool=dhat --dhat-out-file="$out" "$server_bin" "${flags[@]}" >"$log" 2>&1 & ;;
  esac
  vg=$!; pids+=("$vg")
  for _ in $(seq 1 600); do grep -qs "bbr-extproc listening" "$log" && break; sleep 0.1; done
  port=$(sed -n 's/.* grpc=127.0.0.1:\([0-9]*\) .*/\1/p' "$log")
  [ -n "$port" ] || { echo "bbr-extproc did not start under valgrind" >&2; cat "$log" >&2; exit 1; }
  start_envoy "$work/envoy.yaml" "$port" "$BBR_TLS" "profile-$n" >&2
  timeout 1800 python3 - "$ENVOY_PORT" "$n" "$work/body.json" <<'PY'
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
  case "$TOOL" in
    callgrind) grep -E "^(summary|totals):" "$out" | head -n 1 | awk '{print $2}' ;;
    dhat) sed -n 's/.*Total: *\([0-9,]*\) bytes in \([0-9,]*\) blocks.*/\2 \1/p' "$log" | tr -d , ;;
  esac
}

full=$(run "$REQUESTS" "$OUT")
[ -n "$full" ] || { echo "no $TOOL total in the run" >&2; exit 1; }
base=""
if [ "$BASE" -gt 0 ]; then
  base=$(run "$BASE" "$work/base.out")
  [ -n "$base" ] || { echo "no $TOOL total in the base run" >&2; exit 1; }
fi
case "$TOOL" in
  callgrind)
    echo "bbr-extproc under callgrind ($BODY_MODE): $REQUESTS requests of $SIZE B, $full instructions in all," \
      "$((full / REQUESTS)) a request (start-up included)"
    [ -z "$base" ] || echo "without start-up (minus a run of $BASE requests):" \
      "$(((full - base) / (REQUESTS - BASE))) instructions a request"
    callgrind_annotate --inclusive=yes "$OUT" 2>/dev/null | head -n 60
    ;;
  dhat)
    read -r blocks bytes <<<"$full"
    echo "bbr-extproc under dhat ($BODY_MODE): $REQUESTS requests of $SIZE B, $blocks blocks ($bytes bytes)" \
      "allocated in all, $((blocks / REQUESTS)) blocks ($((bytes / REQUESTS)) bytes) a request (start-up included)"
    if [ -n "$base" ]; then
      read -r base_blocks base_bytes <<<"$base"
      echo "without start-up (minus a run of $BASE requests):" \
        "$(((blocks - base_blocks) / (REQUESTS - BASE))) blocks" \
        "($(((bytes - base_bytes) / (REQUESTS - BASE))) bytes) a request"
    fi
    ;;
esac
