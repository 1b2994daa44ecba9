#!/usr/bin/env bash
# Load benchmark through a real Envoy on loopback (DESIGN §7): requests/s and
# p99 latency of
#   (a) header:      Envoy routing on an X-Gateway-Model-Name the client sent
#                    (no ext_proc: the floor),
#   (b) full-duplex: Envoy + bbr-extproc, FULL_DUPLEX_STREAMED,
#   (c) buffered:    Envoy + bbr-extproc, BUFFERED,
#   (d) json-meta:   Envoy's native json_to_metadata filter (whole body
#                    buffered, model -> envoy.lb metadata -> subset LB),
# at 1 KiB and 1 MiB bodies (`messages` before `model`, as the OpenAI SDKs
# send them), all in one run; prints the figures and the ratios to (a).
#
# Environment: DURATION (default 10s), CONNECTIONS (16), SIZES
# ("1024 1048576"), ENVOY_CONCURRENCY (1), BBR_ENVOY (else installed by
# scripts/install-envoy.sh). Installs wrk with apt-get when missing.
set -euo pipefail
cd "$(dirname "$0")/../.."

DURATION=${DURATION:-10s}
CONNECTIONS=${CONNECTIONS:-16}
SIZES=${SIZES:-"1024 1048576"}
ENVOY_CONCURRENCY=${ENVOY_CONCURRENCY:-1}
MODES="header full-duplex buffered json-meta"

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
target="${CARGO_TARGET_DIR:-target}/release"

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

# Starts the ext_proc server (if the mode needs one) and Envoy; sets $port.
start_mode() {
  local mode=$1 template bbr=0
  case "$mode" in
    header) template=benches/load/envoy-header.yaml ;;
    full-duplex) template=examples/envoy/envoy-full-duplex.yaml ;;
    buffered) template=examples/envoy/envoy-buffered.yaml ;;
    json-meta) template=benches/load/envoy-json-to-metadata.yaml ;;
  esac
  if [ "$mode" = full-duplex ] || [ "$mode" = buffered ]; then
    local flags=(--address 127.0.0.1 --grpc-port 0 --grpc-health-port 0 --metrics-port 0 -v 1)
    [ "$mode" = full-duplex ] && flags+=(--streaming)
    "$target/bbr-extproc" "${flags[@]}" >"$work/bbr.log" 2>&1 &
    pids+=($!)
    wait_for "$work/bbr.log" "bbr-extproc listening"
    bbr=$(sed -n 's/.* grpc=127.0.0.1:\([0-9]*\) .*/\1/p' "$work/bbr.log")
  fi
  port=$(free_port)
  local admin; admin=$(free_port)
  sed -e "s/\${ADMIN_PORT}/$admin/" -e "s/\${LISTEN_PORT}/$port/" -e "s/\${BBR_PORT}/$bbr/" \
      -e "s/\${GEMMA3_PORT}/$gemma3/" -e "s/\${DEEPSEEK_PORT}/$deepseek/" \
      "$template" >"$work/envoy.yaml"
  "$envoy_bin" -c "$work/envoy.yaml" --concurrency "$ENVOY_CONCURRENCY" \
    --disable-hot-restart -l error >"$work/envoy.log" 2>&1 &
  pids+=($!)
  for _ in $(seq 1 200); do
    curl -fs "http://127.0.0.1:$admin/ready" >/dev/null 2>&1 && return 0
    sleep 0.05
  done
  echo "envoy did not start" >&2; cat "$work/envoy.log" >&2; return 1
}

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

declare -A RPS P99
printf '%-12s %9s %12s %10s\n' mode body "requests/s" "p99"
for size in $SIZES; do
  make_body "$size"
  for mode in $MODES; do
    start_mode "$mode"
    model_header=""
    [ "$mode" = header ] && model_header=chatbot
    # Check the route first: a benchmark of 404s measures nothing.
    code=$(curl -s -o /dev/null -w '%{http_code}' -H 'Content-Type: application/json' \
      ${model_header:+-H "X-Gateway-Model-Name: $model_header"} \
      --data-binary "@$work/body-$size.json" "http://127.0.0.1:$port/v1/chat/completions")
    if [ "$code" != 200 ]; then
      echo "$mode: status $code, not routed" >&2; cat "$work"/*.log >&2; exit 1
    fi
    out=$(BODY_FILE="$work/body-$size.json" MODEL_HEADER="$model_header" \
      wrk -t1 -c"$CONNECTIONS" -d"$DURATION" --latency -s benches/load/envoy-post.lua \
      "http://127.0.0.1:$port")
    if echo "$out" | grep -q "Non-2xx"; then
      echo "$mode: errors under load" >&2; echo "$out" >&2; exit 1
    fi
    rps=$(echo "$out" | awk '/Requests\/sec/ {print $2}')
    p99=$(echo "$out" | awk '$1 == "99%" {print $2}')
    RPS[$mode,$size]=$rps; P99[$mode,$size]=$p99
    printf '%-12s %9s %12s %10s\n' "$mode" "$size" "$rps" "$p99"
    stop_all
  done
done

echo
echo "ratios to (a) header routing (requests/s):"
for size in $SIZES; do
  for mode in $MODES; do
    python3 -c "import sys; print(f'  {sys.argv[1]:<12} {sys.argv[2]:>9}  {float(sys.argv[3])/float(sys.argv[4]):.2f}x')" \
      "$mode" "$size" "${RPS[$mode,$size]}" "${RPS[header,$size]}"
  done
done
kill "$pool_pid" 2>/dev/null || true
