#!/usr/bin/env bash
# Load benchmark through a real Envoy on loopback: requests/s and
# p99 latency of
#   (a) header:      Envoy routing on an X-Gateway-Model-Name the client sent
#                    (no ext_proc: the floor),
#   (b) full-duplex: Envoy + bbr-extproc, FULL_DUPLEX_STREAMED,
#   (c) buffered:    Envoy + bbr-extproc, BUFFERED,
#   (d) json-meta:   Envoy's native json_to_metadata filter (whole body
#                    buffered, model -> envoy.lb metadata -> subset LB),
#   (e) headers-only: Envoy + bbr-extproc sent the request headers only
#                    (request_body_mode NONE, answered at once, routed to
#                    the first pool): what Envoy's ext_proc filter costs by
#                    itself, the bound on any body-reading ext_proc route,
#   (f) module:      Envoy with bbr loaded as a dynamic module
#                    (libbbr_envoy.so, examples/envoy/module.yaml): the
#                    same routing inside Envoy, no ext_proc hop,
# at 1 KiB and 1 MiB bodies (`messages` before `model`, as the OpenAI SDKs
# send them), all in one run; prints the figures and the ratios to (a).
#
# The modes run side by side and are measured in turn, ROUNDS times; the
# figures are medians, plus the CPU time Envoy and bbr-extproc spend per
# request (from /proc), which the other load of a shared machine disturbs less.
#
# Environment: DURATION (default 5s), ROUNDS (3), CONNECTIONS (16), SIZES
# ("1024 1048576"), ENVOY_CONCURRENCY (1), BBR_TLS (true: Envoy speaks TLS to
# bbr-extproc, its default; false for plaintext), BBR_ENVOY (else installed by
# scripts/install-envoy.sh). Installs wrk with apt-get when missing.
set -euo pipefail
cd "$(dirname "$0")/../.."

DURATION=${DURATION:-5s}
ROUNDS=${ROUNDS:-3}
CONNECTIONS=${CONNECTIONS:-16}
SIZES=${SIZES:-"1024 1048576"}
ENVOY_CONCURRENCY=${ENVOY_CONCURRENCY:-1}
BBR_TLS=${BBR_TLS:-true}
MODES=${MODES:-"header full-duplex buffered json-meta headers-only module"}

if ! command -v wrk >/dev/null 2>&1; then
  echo "installing wrk..." >&2
  SUDO=""
  if [ "$(id -u)" -ne 0 ]; then SUDO="sudo"; fi
  $SUDO apt-get update -qq >&2
  $SUDO apt-get install -y -qq wrk >&2
fi
envoy_bin="${BBR_ENVOY:-$(scripts/install-envoy.sh)}"

cargo build --release -q -p bbr-extproc --bin bbr-extproc
cargo build --release -q -p bbr-examples --example pools
cargo build --release -q -p bbr-envoy
target="${CARGO_TARGET_DIR:-target}/release"
module_dir="$(cd "$target" && pwd)"

work="$(mktemp -d)"
pids=()
stop_all() {
  for pid in "${pids[@]}"; do kill "$pid" 2>/dev/null || true; done
  for pid in "${pids[@]}"; do wait "$pid" 2>/dev/null || true; done
  pids=()
}
trap 'stop_all; rm -rf "$work"' EXIT INT TERM

free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }

wait_for() { # file pattern
  for _ in $(seq 1 200); do grep -qs "$2" "$1" && return 0; sleep 0.05; done
  echo "timed out waiting for '$2' in $1" >&2; cat "$1" >&2; return 1
}

gemma3=$(free_port); deepseek=$(free_port)
"$target/examples/pools" --token-delay-ms 0 --pool "gemma3=127.0.0.1:$gemma3" \
  --pool "deepseek-r1=127.0.0.1:$deepseek" >"$work/pools.log" 2>&1 &
pool_pid=$!
wait_for "$work/pools.log" "deepseek-r1 listening"

# Starts the ext_proc server (if the mode needs one) and Envoy for $1;
# records the listener port and the process ids.
declare -A PORT ENVOY_PID BBR_PID
start_mode() {
  local mode=$1 template bbr=0
  case "$mode" in
    header) template=benches/load/envoy-header.yaml ;;
    full-duplex|headers-only) template=examples/envoy/envoy-full-duplex.yaml ;;
    buffered) template=examples/envoy/envoy-buffered.yaml ;;
    json-meta) template=benches/load/envoy-json-to-metadata.yaml ;;
    module) template=examples/envoy/module.yaml ;;
  esac
  if [ "$mode" != header ] && [ "$mode" != json-meta ] && [ "$mode" != module ]; then
    local flags=(--address 127.0.0.1 --grpc-port 0 --grpc-health-port 0 --metrics-port 0 -v 1)
    [ "$mode" = full-duplex ] && flags+=(--streaming)
    [ "$BBR_TLS" = false ] && flags+=(--secure-serving=false)
    [ -n "${BBR_WORKERS:-}" ] && flags+=(--worker-threads "$BBR_WORKERS")
    "$target/bbr-extproc" "${flags[@]}" >"$work/bbr-$mode.log" 2>&1 &
    pids+=($!); BBR_PID[$mode]=$!
    wait_for "$work/bbr-$mode.log" "bbr-extproc listening"
    bbr=$(sed -n 's/.* grpc=127.0.0.1:\([0-9]*\) .*/\1/p' "$work/bbr-$mode.log")
  fi
  local port admin; port=$(free_port); admin=$(free_port)
  sed -e "s/\${ADMIN_PORT}/$admin/" -e "s/\${LISTEN_PORT}/$port/" -e "s/\${BBR_PORT}/$bbr/" \
      -e "s/\${GEMMA3_PORT}/$gemma3/" -e "s/\${DEEPSEEK_PORT}/$deepseek/" \
      -e "s|\${RULES_FILE}|$(pwd)/examples/config/gateway.yaml|" \
      "$template" >"$work/envoy-$mode.yaml"
  if [ "$BBR_TLS" = false ]; then
    sed -i '/transport_socket:/,/sni: localhost/d' "$work/envoy-$mode.yaml"
  fi
  if [ "$mode" = headers-only ]; then
    # No body to bbr-extproc; what no header routes goes to the first pool.
    sed -i -e 's/request_body_mode: FULL_DUPLEX_STREAMED/request_body_mode: NONE/' \
      -e 's/request_trailer_mode: SEND/request_trailer_mode: SKIP/' \
      -e 's/direct_response: { status: 404, body: { inline_string: "no route for this model\\n" } }/route: { cluster: gemma3, timeout: 60s }/' \
      "$work/envoy-$mode.yaml"
  fi
  ENVOY_DYNAMIC_MODULES_SEARCH_PATH="$module_dir" \
    "$envoy_bin" -c "$work/envoy-$mode.yaml" --concurrency "$ENVOY_CONCURRENCY" \
    --disable-hot-restart -l error >"$work/envoy-$mode.log" 2>&1 &
  pids+=($!); ENVOY_PID[$mode]=$!; PORT[$mode]=$port
  for _ in $(seq 1 200); do
    curl -fs "http://127.0.0.1:$admin/ready" >/dev/null 2>&1 && return 0
    sleep 0.05
  done
  echo "envoy did not start" >&2; cat "$work/envoy-$mode.log" >&2; return 1
}

# CPU time (user + system) of a process so far, in clock ticks.
cpu_ticks() { awk '{print $14 + $15}' "/proc/$1/stat" 2>/dev/null || echo 0; }

# A body of about $1 bytes: a long user message, then the model.
make_body() {
  python3 - "$1" >"$work/body-$1.json" <<'PY'
import json, sys
size = int(sys.argv[1])
head = {"messages": [{"role": "user", "content": ""}], "model": "chatbot", "max_tokens": 100}
pad = size - len(json.dumps(head, separators=(",", ":")))
head["messages"][0]["content"] = "lorem ipsum " * (max(pad, 0) // 12) + "x" * (max(pad, 0) % 12)
sys.stdout.write(json.dumps(head, separators=(",", ":")))
PY
}

for mode in $MODES; do start_mode "$mode"; done
for size in $SIZES; do
  make_body "$size"
  for mode in $MODES; do
    model_header=""; [ "$mode" = header ] && model_header=chatbot
    # Check the route first: a benchmark of 404s measures nothing.
    code=$(curl -s -o /dev/null -w '%{http_code}' -H 'Content-Type: application/json' \
      ${model_header:+-H "X-Gateway-Model-Name: $model_header"} \
      --data-binary "@$work/body-$size.json" "http://127.0.0.1:${PORT[$mode]}/v1/chat/completions")
    if [ "$code" != 200 ]; then
      echo "$mode: status $code, not routed" >&2; cat "$work"/*.log >&2; exit 1
    fi
  done
done

# Rounds interleave the modes so that the load of a shared machine spreads
# over all of them; each figure is the median over the rounds.
declare -A RUNS CPU_ENVOY CPU_BBR
for round in $(seq 1 "$ROUNDS"); do
  for size in $SIZES; do
    for mode in $MODES; do
      model_header=""; [ "$mode" = header ] && model_header=chatbot
      envoy_before=$(cpu_ticks "${ENVOY_PID[$mode]}")
      bbr_before=0; [ -n "${BBR_PID[$mode]:-}" ] && bbr_before=$(cpu_ticks "${BBR_PID[$mode]}")
      out=$(BODY_FILE="$work/body-$size.json" MODEL_HEADER="$model_header" \
        wrk -t1 -c"$CONNECTIONS" -d"$DURATION" --latency -s benches/load/envoy-post.lua \
        "http://127.0.0.1:${PORT[$mode]}")
      if echo "$out" | grep -q "Non-2xx"; then
        echo "$mode: errors under load" >&2; echo "$out" >&2; exit 1
      fi
      rps=$(echo "$out" | awk '/Requests\/sec/ {print $2}')
      p99=$(echo "$out" | awk '$1 == "99%" {print $2}')
      total=$(echo "$out" | awk '/requests in/ {print $1}')
      envoy_after=$(cpu_ticks "${ENVOY_PID[$mode]}")
      bbr_after=0; [ -n "${BBR_PID[$mode]:-}" ] && bbr_after=$(cpu_ticks "${BBR_PID[$mode]}")
      RUNS[$mode,$size]+="$rps $p99 $total $((envoy_after - envoy_before)) $((bbr_after - bbr_before));"
      echo "round $round: $mode $size: $rps req/s, p99 $p99" >&2
    done
  done
done

python3 - "$MODES" "$SIZES" "$(getconf CLK_TCK)" <<PY
import statistics, sys
modes, sizes, tck = sys.argv[1].split(), sys.argv[2].split(), int(sys.argv[3])
runs = {}
$(for key in "${!RUNS[@]}"; do echo "runs['$key'] = '${RUNS[$key]}'"; done)
def ms(t):
    return float(t[:-2]) if t.endswith("ms") else float(t[:-2]) / 1000 if t.endswith("us") else float(t[:-1]) * 1000
def summary(key):
    rows = [r.split() for r in runs[key].split(";") if r.strip()]
    rps = statistics.median(float(r[0]) for r in rows)
    p99 = statistics.median(ms(r[1]) for r in rows)
    n = sum(int(r[2]) for r in rows)
    envoy_us = sum(int(r[3]) for r in rows) / tck / n * 1e6
    bbr_us = sum(int(r[4]) for r in rows) / tck / n * 1e6
    return rps, p99, envoy_us, bbr_us
print(f"{'mode':<12} {'body':>8} {'req/s':>9} {'p99 ms':>8} {'envoy CPU/req':>14} {'bbr CPU/req':>12} {'ratio':>6}")
for size in sizes:
    floor = summary(f"header,{size}")[0]
    for mode in modes:
        rps, p99, e, b = summary(f"{mode},{size}")
        print(f"{mode:<12} {size:>8} {rps:>9.0f} {p99:>8.1f} {e:>11.0f} us {b:>9.0f} us {rps/floor:>5.2f}x")
PY
kill "$pool_pid" 2>/dev/null || true
