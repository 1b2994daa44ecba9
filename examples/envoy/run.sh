#!/usr/bin/env bash
# The demo's requests through a real Envoy: simulated pools, bbr-extproc and
# Envoy on 127.0.0.1, then the two requests of the demo and one for a model
# no rule knows. Exits non-zero when an answer is not the expected one.
#
#   examples/envoy/run.sh [full-duplex|buffered|module] [--keep]
#
# full-duplex (default) uses envoy-full-duplex.yaml, buffered
# envoy-buffered.yaml: Envoy calls bbr-extproc. module uses module.yaml:
# Envoy loads bbr itself (libbbr_envoy.so, built here) and no bbr-extproc
# runs. With --keep everything stays up until ctrl-c.
#
# bbr-extproc: a server already listening on 127.0.0.1:$BBR_PORT (default
# 9004, the server's default port) that answers the gRPC health check of the
# ext_proc service is used as it is (TLS or plaintext). Otherwise the script
# starts one on free ports with the demo's rules (examples/config/gateway.yaml).
# Envoy listens on $PORT (default 8080) when it is free, on a free port
# otherwise; the script says which. Envoy comes from $BBR_ENVOY or
# scripts/install-envoy.sh.
set -euo pipefail
cd "$(dirname "$0")/../.."

mode=full-duplex
keep=false
for arg in "$@"; do
  case "$arg" in
    full-duplex|buffered|module) mode="$arg" ;;
    --keep) keep=true ;;
    *) echo "usage: $0 [full-duplex|buffered|module] [--keep]" >&2; exit 2 ;;
  esac
done

PORT="${PORT:-8080}"
BBR_PORT="${BBR_PORT:-9004}"
RULES=examples/config/gateway.yaml
envoy_bin="${BBR_ENVOY:-$(scripts/install-envoy.sh)}"
target="${CARGO_TARGET_DIR:-target}/release"

work="$(mktemp -d)"
pids=()
cleanup() {
  for pid in "${pids[@]}"; do kill "$pid" 2>/dev/null || true; done
  wait 2>/dev/null || true
  rm -rf "$work"
}
trap cleanup EXIT INT TERM

fail() {
  echo "run.sh: $*" >&2
  for log in "$work"/*.log; do
    [ -s "$log" ] && { echo "--- $(basename "$log")" >&2; cat "$log" >&2; }
  done
  exit 1
}

# Whether something accepts connections on 127.0.0.1:$1.
port_taken() { (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }

free_port() {
  python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'
}

# Waits until file $1 holds a line matching $2 (10 s at most).
wait_for_line() {
  for _ in $(seq 1 100); do
    grep -qs -- "$2" "$1" && return 0
    sleep 0.1
  done
  return 1
}

# grpc.health.v1.Health/Check for the ext_proc service on 127.0.0.1:$1,
# over TLS when $2 is tls: succeeds when the answer is SERVING.
ext_proc_serving() {
  local service=envoy.service.ext_proc.v3.ExternalProcessor url flags=()
  if [ "$2" = tls ]; then
    url="https://127.0.0.1:$1" flags=(--insecure --http2)
  else
    url="http://127.0.0.1:$1" flags=(--http2-prior-knowledge)
  fi
  # A gRPC frame: no compression, the length, then field 1 (service).
  local answer
  answer="$( { printf '\0\0\0\0\055\012\053'; printf '%s' "$service"; } |
    curl -s --max-time 2 "${flags[@]}" -X POST "$url/grpc.health.v1.Health/Check" \
      -H 'content-type: application/grpc' -H 'te: trailers' --data-binary @- -o - |
    od -An -tx1 | tr -d ' \n')" || return 1
  # HealthCheckResponse { status: SERVING }
  [ "$answer" = 00000000020801 ]
}

echo "Building the simulated pools (and bbr-extproc if needed) ..."
cargo build --release -q -p bbr-examples --example pools

# The pools, on free ports.
"$target/examples/pools" --pool gemma3=127.0.0.1:0 --pool deepseek-r1=127.0.0.1:0 \
  >"$work/pools.log" 2>&1 &
pids+=($!)
wait_for_line "$work/pools.log" "pool deepseek-r1 listening" || fail "the simulated pools did not start"
pool_port() { sed -n "s|^pool $1 listening on http://127.0.0.1:||p" "$work/pools.log"; }
gemma3_port="$(pool_port gemma3)"
deepseek_port="$(pool_port deepseek-r1)"

# bbr-extproc: the running one, or our own (none for the module).
tls=
if [ "$mode" = module ]; then
  cargo build --release -q -p bbr-envoy
  bbr_port=none
  echo "Built $target/libbbr_envoy.so (rules: $RULES)"
elif ext_proc_serving "$BBR_PORT" tls; then
  tls=true
elif ext_proc_serving "$BBR_PORT" plain; then
  tls=false
fi
if [ -n "$tls" ]; then
  bbr_port="$BBR_PORT"
  echo "Using the bbr-extproc already listening on 127.0.0.1:$bbr_port (tls=$tls) with its own flags;"
  echo "  started with --rules $RULES, it answers an unknown model with a JSON 404."
else
  if port_taken "$BBR_PORT"; then
    echo "Port $BBR_PORT is taken by something that is not bbr-extproc; starting one on free ports."
  fi
  cargo build --release -q -p bbr-extproc --bin bbr-extproc
  flags=(--address 127.0.0.1 --grpc-port 0 --grpc-health-port 0 --metrics-port 0 --rules "$RULES")
  [ "$mode" = full-duplex ] && flags+=(--streaming)
  "$target/bbr-extproc" "${flags[@]}" >"$work/bbr-extproc.log" 2>&1 &
  pids+=($!)
  wait_for_line "$work/bbr-extproc.log" "bbr-extproc listening" || fail "bbr-extproc did not start"
  line="$(grep -m1 "bbr-extproc listening" "$work/bbr-extproc.log")"
  bbr_port="$(sed -n 's/.* grpc=127.0.0.1:\([0-9]*\) .*/\1/p' <<<"$line")"
  metrics="$(sed -n 's/.* metrics=\([^ ]*\) .*/\1/p' <<<"$line")"
  tls=true
  echo "Started bbr-extproc on 127.0.0.1:$bbr_port (tls, rules: $RULES; metrics: http://$metrics/metrics)"
fi

# Envoy.
if port_taken "$PORT"; then
  echo "Port $PORT is taken (the gateway demo still running?); Envoy takes a free port."
  PORT="$(free_port)"
fi
template="examples/envoy/envoy-$mode.yaml"
[ "$mode" = module ] && template=examples/envoy/module.yaml
sed -e "s/\${ADMIN_PORT}/0/" -e "s/\${LISTEN_PORT}/$PORT/" -e "s/\${BBR_PORT}/$bbr_port/" \
    -e "s/\${GEMMA3_PORT}/$gemma3_port/" -e "s/\${DEEPSEEK_PORT}/$deepseek_port/" \
    -e "s|\${RULES_FILE}|$(pwd)/$RULES|" \
    "$template" >"$work/envoy.yaml"
if [ "$tls" = false ]; then
  # A plaintext bbr-extproc: no TLS towards it.
  sed -i '/transport_socket:/,/sni: localhost/d' "$work/envoy.yaml"
fi
ENVOY_DYNAMIC_MODULES_SEARCH_PATH="$(cd "$target" && pwd)" \
  "$envoy_bin" -c "$work/envoy.yaml" --admin-address-path "$work/admin-address" \
  --disable-hot-restart -l error >"$work/envoy.log" 2>&1 &
pids+=($!)
wait_for_line "$work/admin-address" : || fail "Envoy did not start"
admin="$(cat "$work/admin-address")"
for _ in $(seq 1 100); do
  curl -fs "http://$admin/ready" >/dev/null 2>&1 && break
  sleep 0.1
done
curl -fs "http://$admin/ready" >/dev/null || fail "Envoy did not become ready"
if [ "$mode" = module ]; then
  echo "Envoy (bbr module) on http://localhost:$PORT -> pools gemma3 :$gemma3_port, deepseek-r1 :$deepseek_port"
else
  echo "Envoy ($mode) on http://localhost:$PORT -> bbr-extproc 127.0.0.1:$bbr_port -> pools gemma3 :$gemma3_port, deepseek-r1 :$deepseek_port"
fi

# One request as the README writes it; checks the status, the pool that
# answered and, when given, a piece of the body.
failures=0
out_all=
request() {
  local path="$1" body="$2" status="$3" pool="$4" text="${5:-}"
  echo
  echo "\$ curl -X POST -i localhost:$PORT$path -H 'Content-Type: application/json' -d '$body'"
  local out
  out="$(curl -sS --max-time 10 -X POST -i "localhost:$PORT$path" \
    -H 'Content-Type: application/json' -d "$body" | tr -d '\r')" || true
  printf '%s\n' "$out"
  out_all+="$out"$'\n'
  local got_status got_pool
  got_status="$(sed -n '1s|^HTTP/[0-9.]* \([0-9]*\).*|\1|p' <<<"$out")"
  got_pool="$(sed -n 's|^x-inference-pool: ||Ip' <<<"$out")"
  if [ "$got_status" != "$status" ] || [ "$got_pool" != "$pool" ] ||
     ! grep -qF -- "$text" <<<"$out"; then
    echo "^ expected status $status${pool:+ from pool $pool}${text:+ with $text}" >&2
    failures=$((failures + 1))
  fi
}
request /v1/chat/completions \
  '{"model":"chatbot","messages":[{"role":"user","content":"What is the color of the sky?"}],"max_tokens":100,"temperature":0}' \
  200 gemma3
request /v1/completions \
  '{"model":"recommender","prompt":"Give me restaurant recommendations in Paris","max_tokens":100,"temperature":0}' \
  200 deepseek-r1
request /v1/chat/completions '{"model":"no-such-model","messages":[]}' 404 "" \
  '"code":"model_not_found"'
echo
if [ "$failures" -ne 0 ]; then
  if grep -qF "no route for this model" <<<"$out_all"; then
    echo "Envoy's own 404: the bbr-extproc in use has no rule table (start it with --rules $RULES)." >&2
  fi
  fail "$failures answer(s) not as expected"
fi
echo "All three answers as expected."

if $keep; then
  echo "Running on http://localhost:$PORT; ctrl-c to stop."
  wait
fi
