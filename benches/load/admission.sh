#!/usr/bin/env bash
# Goodput per class under admission: the demo gateway with one simulated
# pool limited to LIMIT requests in flight (--pool-limit), three rules
# sending the models `critical`, `standard` and `sheddable` to that pool
# with those criticalities, and three wrk clients, one per class, loading
# it at the same time with streamed requests (the pool answers about ten
# tokens TOKEN_DELAY_MS apart, so a request holds its slot for a while).
# The clients honour Retry-After (benches/load/post-backoff.lua: after a
# 429 a wrk thread waits a second), as OpenAI SDKs do. Prints, per class:
# requests/s answered 2xx (goodput), requests refused (429 `shed`) and p99
# latency.
#
# Environment: LIMIT (8), QUEUE_TIMEOUT_MS (1000), TOKEN_DELAY_MS (20),
# CONNECTIONS per class (16; CRITICAL, STANDARD, SHEDDABLE override it for
# one class), DURATION (10s). Installs wrk with apt-get
# when missing. Everything binds 127.0.0.1 and stops on exit.
set -euo pipefail
cd "$(dirname "$0")/../.."

LIMIT=${LIMIT:-8}
QUEUE_TIMEOUT_MS=${QUEUE_TIMEOUT_MS:-1000}
TOKEN_DELAY_MS=${TOKEN_DELAY_MS:-20}
CONNECTIONS=${CONNECTIONS:-16}
DURATION=${DURATION:-10s}

benches/load/install-wrk.sh

cargo build --release -q -p bbr-gateway
target="${CARGO_TARGET_DIR:-target}/release"

work="$(mktemp -d)"
pids=()
trap 'for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done; wait 2>/dev/null || true; rm -rf "$work"' EXIT INT TERM

cat >"$work/rules.yaml" <<'EOF'
rules:
  - { name: critical, match: { model: { exact: critical } }, pool: gemma3, criticality: Critical }
  - { name: standard, match: { model: { exact: standard } }, pool: gemma3, criticality: Standard }
  - { name: sheddable, match: { model: { exact: sheddable } }, pool: gemma3, criticality: Sheddable }
default: { action: reject }
EOF

"$target/bbr-gateway" --listen 127.0.0.1:0 --rules "$work/rules.yaml" --pool gemma3 \
  --pool-limit "$LIMIT" --pool-queue-timeout-ms "$QUEUE_TIMEOUT_MS" \
  --token-delay-ms "$TOKEN_DELAY_MS" >"$work/gateway.log" 2>"$work/gateway.err" &
pids+=($!)
addr=""
for _ in $(seq 1 200); do
  addr=$(sed -n 's|^gateway listening on http://\([0-9.:]*\) .*|\1|p' "$work/gateway.log")
  [ -n "$addr" ] && break
  sleep 0.05
done
[ -n "$addr" ] || { echo "the gateway did not start" >&2; cat "$work/gateway.err" >&2; exit 1; }

for class in critical standard sheddable; do
  printf '{"model":"%s","messages":[{"role":"user","content":"hello"}],"stream":true}' \
    "$class" >"$work/$class.json"
  # One request first: the route works before the load.
  code=$(curl -s -o /dev/null -w '%{http_code}' -H 'Content-Type: application/json' \
    --data-binary "@$work/$class.json" "http://$addr/v1/chat/completions")
  [ "$code" = 200 ] || { echo "$class: $code before the load" >&2; exit 1; }
done

declare -A CONNS=([critical]=${CRITICAL:-$CONNECTIONS} [standard]=${STANDARD:-$CONNECTIONS}
  [sheddable]=${SHEDDABLE:-$CONNECTIONS})
for class in critical standard sheddable; do
  BODY_FILE="$work/$class.json" timeout 120 wrk -t1 -c"${CONNS[$class]}" -d"$DURATION" --latency \
    -s benches/load/post-backoff.lua "http://$addr" >"$work/$class.wrk" 2>&1 &
  pids+=($!)
done
wait "${pids[@]:1}" 2>/dev/null || true

echo "admission: --pool-limit $LIMIT (Critical up to $((LIMIT + (LIMIT + 1) / 2))), queue timeout ${QUEUE_TIMEOUT_MS} ms,"
echo "streamed answers of about ten tokens ${TOKEN_DELAY_MS} ms apart; wrk -t1 -d$DURATION per class, at once"
printf '%-10s %12s %12s %12s %10s %12s\n' class connections "2xx/s" "refused/s" "p99" "requests"
secs=${DURATION%s}
for class in critical standard sheddable; do
  f="$work/$class.wrk"
  total=$(awk '/requests in/ {print $1}' "$f")
  refused=$(awk '/Non-2xx or 3xx responses:/ {print $5}' "$f")
  refused=${refused:-0}
  p99=$(awk '$1 == "99%" {print $2}' "$f")
  awk -v c="$class" -v n="${CONNS[$class]}" -v t="$total" -v r="$refused" -v s="$secs" -v p="$p99" \
    'BEGIN { printf "%-10s %12d %12.1f %12.1f %10s %12d\n", c, n, (t - r) / s, r / s, p, t }'
done
