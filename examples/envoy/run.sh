#!/usr/bin/env bash
# The seed scenario through a real Envoy: the simulated pools, bbr-extproc and
# Envoy on localhost, then the two requests of the demo.
#
#   examples/envoy/run.sh [full-duplex|buffered] [--keep]
#
# full-duplex (default) uses envoy-full-duplex.yaml and `bbr-extproc --streaming`;
# buffered uses envoy-buffered.yaml. With --keep everything stays up until
# ctrl-c (Envoy on $PORT, default 8080). Envoy comes from $BBR_ENVOY or
# scripts/install-envoy.sh.
set -euo pipefail
cd "$(dirname "$0")/../.."

mode=full-duplex
keep=false
for arg in "$@"; do
  case "$arg" in
    full-duplex|buffered) mode="$arg" ;;
    --keep) keep=true ;;
    *) echo "usage: $0 [full-duplex|buffered] [--keep]" >&2; exit 2 ;;
  esac
done

PORT="${PORT:-8080}"
ADMIN_PORT="${ADMIN_PORT:-9901}"
BBR_PORT="${BBR_PORT:-9004}"
GEMMA3_PORT="${GEMMA3_PORT:-8001}"
DEEPSEEK_PORT="${DEEPSEEK_PORT:-8002}"
envoy_bin="${BBR_ENVOY:-$(scripts/install-envoy.sh)}"

cargo build --release -q -p bbr-extproc --bin bbr-extproc
cargo build --release -q -p bbr-examples --example pools
target="${CARGO_TARGET_DIR:-target}/release"

work="$(mktemp -d)"
pids=()
cleanup() {
  for pid in "${pids[@]}"; do kill "$pid" 2>/dev/null || true; done
  wait 2>/dev/null || true
  rm -rf "$work"
}
trap cleanup EXIT INT TERM

"$target/examples/pools" --pool "gemma3=127.0.0.1:$GEMMA3_PORT" \
  --pool "deepseek-r1=127.0.0.1:$DEEPSEEK_PORT" >"$work/pools.log" 2>&1 &
pids+=($!)

flags=(--address 127.0.0.1 --grpc-port "$BBR_PORT" --grpc-health-port $((BBR_PORT + 1)) --metrics-port 9090)
[ "$mode" = full-duplex ] && flags+=(--streaming)
"$target/bbr-extproc" "${flags[@]}" >"$work/bbr.log" 2>&1 &
pids+=($!)
for _ in $(seq 1 100); do
  grep -qs "bbr-extproc listening" "$work/bbr.log" && grep -qs "listening on" "$work/pools.log" && break
  sleep 0.1
done
grep -qs "bbr-extproc listening" "$work/bbr.log" || { cat "$work"/*.log >&2; exit 1; }

sed -e "s/\${ADMIN_PORT}/$ADMIN_PORT/" -e "s/\${LISTEN_PORT}/$PORT/" -e "s/\${BBR_PORT}/$BBR_PORT/" \
    -e "s/\${GEMMA3_PORT}/$GEMMA3_PORT/" -e "s/\${DEEPSEEK_PORT}/$DEEPSEEK_PORT/" \
    "examples/envoy/envoy-$mode.yaml" >"$work/envoy.yaml"
"$envoy_bin" -c "$work/envoy.yaml" --disable-hot-restart -l error >"$work/envoy.log" 2>&1 &
pids+=($!)

for _ in $(seq 1 100); do
  curl -fs "http://127.0.0.1:$ADMIN_PORT/ready" >/dev/null 2>&1 && break
  sleep 0.1
done
curl -fs "http://127.0.0.1:$ADMIN_PORT/ready" >/dev/null || { cat "$work"/*.log >&2; exit 1; }
echo "Envoy ($mode) on localhost:$PORT -> bbr-extproc on :$BBR_PORT -> pools gemma3 :$GEMMA3_PORT, deepseek-r1 :$DEEPSEEK_PORT"
echo

set -x
curl -sS -X POST -i "localhost:$PORT/v1/chat/completions" -H "Content-Type: application/json" \
  -d '{"model":"chatbot","messages":[{"role":"user","content":"What is the color of the sky?"}],"max_tokens":100,"temperature":0}'
echo
curl -sS -X POST -i "localhost:$PORT/v1/completions" -H 'Content-Type: application/json' \
  -d '{"model":"recommender","prompt":"Give me restaurant recommendations in Paris","max_tokens":100,"temperature":0}'
echo
set +x

if $keep; then
  echo "running; ctrl-c to stop (metrics: http://localhost:9090/metrics)"
  wait
fi
