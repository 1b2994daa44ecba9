#!/usr/bin/env bash
# Instructions a request costs in the tower benchmark app (benches/load/app.rs),
# per mode, counted by callgrind: the same count whatever else the machine
# does, so two builds can be compared on a busy machine where requests/s
# cannot. Each mode serves REQUESTS requests (after WARMUP) of one body on
# one keep-alive connection; the figure is the app's total instructions
# over the measured requests, start-up and warm-up subtracted.
#
# With APP=gateway the arguments are builds of the bbr-gateway binary
# (`cargo build --release -p bbr-gateway`: target/release/bbr-gateway; a
# build from before the crate is the gateway example's binary,
# target/release/examples/gateway), say the current one and one built at
# an older commit, each serving the
# requests with its own simulated pools (`--token-delay-ms 0`), this
# checkout's rules file and its access log on: the figure is then the
# whole process's instructions a request, and the builds are compared
# side by side.
#
# Usage: benches/load/instructions.sh [BIN]   (default: builds tower-load)
#        APP=gateway benches/load/instructions.sh GATEWAY_BIN...
# Environment: APP (app or gateway), MODES ("bare layer"), SIZE (1024),
# SHAPE (long), REQUESTS (2000), WARMUP (200), TOWER_LOAD (APP=gateway).
set -euo pipefail
cd "$(dirname "$0")/../.."

MODES=${MODES:-"bare layer"}
SIZE=${SIZE:-1024}
SHAPE=${SHAPE:-long}
REQUESTS=${REQUESTS:-2000}
WARMUP=${WARMUP:-200}
APP=${APP:-app}

if [ "$APP" = gateway ]; then
    [ $# -gt 0 ] || { echo "APP=gateway needs the gateway binaries to compare" >&2; exit 2; }
    GATEWAYS=("$@")
    MODES=$(seq -s ' ' 1 $#)
    # tower-load writes the body (TOWER_LOAD names a build of it to use).
    BIN=${TOWER_LOAD:-}
else
    BIN=${1:-}
fi
if [ -z "$BIN" ]; then
    cargo build --release -q -p bbr-benches --bin tower-load
    BIN="${CARGO_TARGET_DIR:-target}/release/tower-load"
fi
command -v valgrind >/dev/null || { echo "valgrind is needed (apt-get install valgrind)" >&2; exit 1; }

WORK=$(mktemp -d)
trap 'kill $(jobs -p) 2>/dev/null || true; rm -rf "$WORK"' EXIT
"$BIN" body --shape "$SHAPE" "$SIZE" >"$WORK/body.json"

# Sends N requests on one connection; prints nothing, fails on a non-200.
cat >"$WORK/client.py" <<'EOF'
import http.client, sys
host, port, n, path = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), sys.argv[4]
body = open(path, "rb").read()
c = http.client.HTTPConnection(host, port, timeout=60)
for _ in range(n):
    c.request("POST", "/v1/chat/completions", body, {"Content-Type": "application/json"})
    r = c.getresponse()
    r.read()
    if r.status != 200:
        sys.exit(f"status {r.status}")
EOF

# The total instructions of a callgrind run whose app served `n` requests.
total() {
    local mode=$1 n=$2 out="$WORK/$1-$2"
    if [ "$APP" = gateway ]; then
        # A free port it is told (an older build may not name the port it
        # was given as 0).
        local port
        port=$(python3 -c 'import socket
s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
        valgrind --tool=callgrind --callgrind-out-file="$out.cg" \
            "${GATEWAYS[$((mode - 1))]}" --listen "127.0.0.1:$port" --token-delay-ms 0 \
            --rules "$PWD/examples/config/gateway.yaml" >"$out.log" 2>&1 &
    else
        valgrind --tool=callgrind --callgrind-out-file="$out.cg" \
            "$BIN" serve --mode "$mode" --threads 1 >"$out.log" 2>&1 &
    fi
    local pid=$!
    for _ in $(seq 600); do
        grep -q "listening on" "$out.log" 2>/dev/null && break
        sleep 0.1
    done
    local addr
    addr=$(grep -o "listening on [a-z:/]*[0-9.:]*" "$out.log" | head -n 1 | sed 's|.* ||; s|^http://||')
    [ -n "$addr" ] || { echo "$mode did not start" >&2; cat "$out.log" >&2; exit 1; }
    timeout 600 python3 "$WORK/client.py" "${addr%:*}" "${addr##*:}" "$n" "$WORK/body.json"
    kill -TERM "$pid"
    wait "$pid" || true
    local n
    n=$(grep -E "^(summary|totals):" "$out.cg" | head -n 1 | awk '{print $2}')
    [ -n "$n" ] || { echo "no instruction count for $mode" >&2; exit 1; }
    echo "$n"
}

echo "instructions a request (callgrind), body $SHAPE $SIZE B, $REQUESTS requests on one connection"
printf '%-12s %14s\n' mode instructions
declare -A per
for mode in $MODES; do
    base=$(total "$mode" "$WARMUP")
    full=$(total "$mode" $((WARMUP + REQUESTS)))
    per[$mode]=$(((full - base) / REQUESTS))
    label=$mode
    if [ "$APP" = gateway ]; then label=${GATEWAYS[$((mode - 1))]}; fi
    printf '%-12s %14d\n' "$label" "${per[$mode]}"
done
if [ -n "${per[bare]:-}" ]; then
    for mode in $MODES; do
        [ "$mode" = bare ] && continue
        printf '%s over bare: %d\n' "$mode" $((per[$mode] - per[bare]))
    done
fi
