#!/usr/bin/env bash
# Load benchmark of the tower layer: requests/s and p99 latency
# of the same axum app
#   - bare:        no routing (the floor),
#   - layer:       behind bbr_tower::ModelRoutingLayer (the demo rules, strict),
#   - handwritten: behind the usual middleware (collect the body, parse a
#                  serde_json::Value, set the header),
#   - plumbing:    behind a layer of the same shape that routes nothing (a
#                  clone of the service, an extension, both bodies wrapped):
#                  what any body-wrapping layer costs in axum,
# at 1 KiB and 100 KiB bodies (`messages` before `model`, as the OpenAI SDK
# sends them) of two shapes: `long` (one long user message) and `chat` (a
# conversation of many turns of a few hundred bytes), with wrk on loopback,
# in one run; prints the figures and the ratios. Also the app's CPU time per request (user + system, from
# /proc), which a busy machine disturbs less than requests/s.
#
# The three apps run side by side and are measured in turn, round after
# round, so that a change in machine load hits all three alike; each
# figure is the median over the rounds.
#
# With APP=gateway the three are the demo gateway instead (tower-load
# gateway: bare forwards every request to one pool, layer is the demo,
# handwritten collects, parses and forwards), in front of simulated pools
# (examples/examples/pools.rs) running beside it; the CPU column is then the
# gateway process's own.
#
# With APP=versions the two are the bbr-gateway binary as built from this
# checkout (current) and another build of it (baseline: the binary
# named by BASELINE, say one built from the main branch), each running its
# simulated pools itself; the CPU column is then the whole process's. The
# ratios are also given round by round (the two builds measured back to
# back in each round), as a median with the lowest and highest round.
#
# Environment: APP (app, gateway or versions), BASELINE (versions only), DURATION per measurement (default 5s), ROUNDS (5),
# CONNECTIONS (32), WRK_THREADS (1), APP_THREADS (1), SIZES ("1024 102400"),
# SHAPES ("long chat"), APP_CPUS and WRK_CPUS (CPU lists for taskset, say
# APP_CPUS=0 WRK_CPUS=1: the apps and wrk pinned apart, which takes the
# scheduler's placement out of the figures; default: not pinned).
set -euo pipefail
cd "$(dirname "$0")/../.."

DURATION=${DURATION:-5s}
ROUNDS=${ROUNDS:-5}
CONNECTIONS=${CONNECTIONS:-32}
WRK_THREADS=${WRK_THREADS:-1}
APP_THREADS=${APP_THREADS:-1}
SIZES=${SIZES:-"1024 102400"}
SHAPES=${SHAPES:-"long chat"}
BODIES=""
for shape in $SHAPES; do
    for size in $SIZES; do BODIES+=" $shape-$size"; done
done
APP=${APP:-app}
ON_APP_CPUS=(env)
ON_WRK_CPUS=(env)
if [ -n "${APP_CPUS:-}" ]; then ON_APP_CPUS=(taskset -c "$APP_CPUS"); fi
if [ -n "${WRK_CPUS:-}" ]; then ON_WRK_CPUS=(taskset -c "$WRK_CPUS"); fi
MODES="bare layer handwritten"
# The app also runs a layer of the same shape that routes nothing: the
# cost of any body-wrapping layer in an axum app.
if [ "$APP" = app ]; then MODES+=" plumbing"; fi
if [ "$APP" = versions ]; then
    MODES="baseline current"
    if [ ! -x "${BASELINE:-}" ]; then
        echo "APP=versions needs BASELINE=<a bbr-gateway binary (or an older build's gateway example)>" >&2
        exit 2
    fi
fi

benches/load/install-wrk.sh

cargo build --release -q -p bbr-benches --bin tower-load
BIN="${CARGO_TARGET_DIR:-target}/release/tower-load"
SERVE=(serve)
if [ "$APP" = gateway ]; then
    cargo build --release -q -p bbr-examples --example pools
fi
if [ "$APP" = versions ]; then
    cargo build --release -q -p bbr-gateway
fi

WORK=$(mktemp -d)
PIDS=()
cleanup() {
    for pid in "${PIDS[@]}"; do kill "$pid" 2>/dev/null || true; done
    rm -rf "$WORK"
}
trap cleanup EXIT

if [ "$APP" = gateway ]; then
    ports=$(python3 -c 'import socket
s=[socket.socket() for _ in range(2)]
[x.bind(("127.0.0.1",0)) for x in s]
print(" ".join(str(x.getsockname()[1]) for x in s))')
    set -- $ports
    "${CARGO_TARGET_DIR:-target}/release/examples/pools" --token-delay-ms 0 \
        --pool "gemma3=127.0.0.1:$1" --pool "deepseek-r1=127.0.0.1:$2" >"$WORK/pools.log" 2>&1 &
    PIDS+=($!)
    for _ in $(seq 1 100); do
        grep -q "deepseek-r1 listening" "$WORK/pools.log" && break
        sleep 0.1
    done
    SERVE=(gateway --pool "gemma3=127.0.0.1:$1" --pool "deepseek-r1=127.0.0.1:$2")
fi

declare -A ADDR PID
for mode in $MODES; do
    if [ "$APP" = versions ]; then
        # Each version on a free port it is told (an older build may not
        # name the port it was given as 0).
        port=$(python3 -c 'import socket
s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
        exe="${CARGO_TARGET_DIR:-target}/release/bbr-gateway"
        if [ "$mode" = baseline ]; then exe="$BASELINE"; fi
        # The rules of this checkout: an older build names its own checkout's.
        "${ON_APP_CPUS[@]}" "$exe" --listen "127.0.0.1:$port" --token-delay-ms 0 --rules "$PWD/examples/config/gateway.yaml" \
            >"$WORK/$mode.log" 2>&1 &
    else
        "${ON_APP_CPUS[@]}" "$BIN" "${SERVE[@]}" --mode "$mode" --threads "$APP_THREADS" >"$WORK/$mode.log" 2>&1 &
    fi
    PIDS+=($!)
    PID[$mode]=$!
    for _ in $(seq 1 100); do
        ADDR[$mode]=$(sed -n -e 's/^listening on //p' \
            -e 's|^gateway listening on http://\([^ ]*\).*|\1|p' "$WORK/$mode.log")
        if [ -n "${ADDR[$mode]}" ]; then break; fi
        sleep 0.1
    done
    if [ -z "${ADDR[$mode]}" ]; then
        echo "the $mode app did not start:" >&2
        cat "$WORK/$mode.log" >&2
        exit 1
    fi
done

# wrk's latency (e.g. 812.00us, 1.20ms, 1.01s) in milliseconds.
to_ms() {
    awk -v v="$1" 'BEGIN {
        n = v + 0
        if (v ~ /us$/) n = n / 1000; else if (v ~ /ms$/) n = n; else if (v ~ /s$/) n = n * 1000
        printf "%.3f", n }'
}

# CPU time (user + system) of process $1 so far, in clock ticks.
cpu_ticks() {
    awk '{ print $14 + $15 }' "/proc/$1/stat"
}

median() {
    tr ' ' '\n' | sed '/^$/d' | sort -g | awk '{ v[NR] = $1 } END {
        if (NR % 2) print v[(NR + 1) / 2]; else print (v[NR / 2] + v[NR / 2 + 1]) / 2 }'
}

# The last of a list of figures (this round's).
last() {
    echo "$1" | awk '{ print $NF }'
}

declare -A RPS P99 CPU PAIRED_RPS PAIRED_CPU
TICKS=$(getconf CLK_TCK)
for body in $BODIES; do
    "$BIN" body --shape "${body%-*}" "${body#*-}" >"$WORK/body-$body.json"
    for mode in $MODES; do
        # Warm up.
        BODY_FILE="$WORK/body-$body.json" "${ON_WRK_CPUS[@]}" wrk -t"$WRK_THREADS" -c"$CONNECTIONS" -d1s \
            -s benches/load/post.lua "http://${ADDR[$mode]}" >/dev/null
    done
done
for round in $(seq 1 "$ROUNDS"); do
    for size in $BODIES; do
        for mode in $MODES; do
            before=$(cpu_ticks "${PID[$mode]}")
            BODY_FILE="$WORK/body-$size.json" "${ON_WRK_CPUS[@]}" wrk -t"$WRK_THREADS" -c"$CONNECTIONS" -d"$DURATION" \
                --latency -s benches/load/post.lua "http://${ADDR[$mode]}" >"$WORK/wrk.txt"
            after=$(cpu_ticks "${PID[$mode]}")
            requests=$(awk '/requests in/ { print $1 }' "$WORK/wrk.txt")
            if grep -q "Non-2xx" "$WORK/wrk.txt"; then
                echo "$mode at $size bytes: the app answered errors:" >&2
                cat "$WORK/wrk.txt" >&2
                exit 1
            fi
            RPS[$mode,$size]+=" $(awk '/^Requests\/sec:/ { print $2 }' "$WORK/wrk.txt")"
            P99[$mode,$size]+=" $(to_ms "$(awk '$1 == "99%" { print $2 }' "$WORK/wrk.txt")")"
            CPU[$mode,$size]+=" $(awk -v a="$after" -v b="$before" -v n="$requests" -v t="$TICKS" \
                'BEGIN { printf "%.3f", (a - b) / t * 1e6 / n }')"
        done
        if [ "$APP" = versions ]; then
            # This round's ratios, the two builds measured back to back: a
            # change in the machine's load between rounds moves both.
            PAIRED_RPS[$size]+=" $(awk -v c="$(last "${RPS[current,$size]}")" \
                -v b="$(last "${RPS[baseline,$size]}")" 'BEGIN { printf "%.4f", c / b }')"
            PAIRED_CPU[$size]+=" $(awk -v c="$(last "${CPU[current,$size]}")" \
                -v b="$(last "${CPU[baseline,$size]}")" 'BEGIN { printf "%.4f", b / c }')"
        fi
    done
    echo "round $round of $ROUNDS done" >&2
done

declare -A MRPS MP99 MCPU
echo
threads="apps on $APP_THREADS worker thread(s)"
if [ "$APP" = versions ]; then threads="each binary on its own default runtime"; fi
pinned=""
if [ -n "${APP_CPUS:-}${WRK_CPUS:-}" ]; then pinned=" (apps on CPUs ${APP_CPUS:-any}, wrk on ${WRK_CPUS:-any})"; fi
echo "$APP: wrk -t$WRK_THREADS -c$CONNECTIONS, $ROUNDS rounds of $DURATION, $threads, $(nproc) cores$pinned; medians"
printf "%-12s %-12s %12s %10s %16s\n" "body" "app" "requests/s" "p99 ms" "app CPU us/req"
for size in $BODIES; do
    for mode in $MODES; do
        MRPS[$mode,$size]=$(echo "${RPS[$mode,$size]}" | median)
        MP99[$mode,$size]=$(echo "${P99[$mode,$size]}" | median)
        MCPU[$mode,$size]=$(echo "${CPU[$mode,$size]}" | median)
        printf "%-12s %-12s %12.0f %10.3f %16.2f\n" "$size" "$mode" "${MRPS[$mode,$size]}" "${MP99[$mode,$size]}" "${MCPU[$mode,$size]}"
    done
done
if [ "$APP" = versions ]; then
    echo
    printf "%-12s %26s %22s %30s\n" "body" "current/baseline (rps)" "p99 current/baseline" "CPU/req baseline/current"
    for size in $BODIES; do
        awk -v c="${MRPS[current,$size]}" -v b="${MRPS[baseline,$size]}" \
            -v pc="${MP99[current,$size]}" -v pb="${MP99[baseline,$size]}" \
            -v cc="${MCPU[current,$size]}" -v cb="${MCPU[baseline,$size]}" -v s="$size" \
            'BEGIN { printf "%-12s %25.3fx %21.3fx %29.3fx\n", s, c / b, pc / pb, cb / cc }'
    done
    echo
    echo "the same ratios taken round by round (each round's two builds back to back): median [lowest, highest]"
    printf "%-12s %34s %34s\n" "body" "current/baseline (rps)" "CPU/req baseline/current"
    spread() {
        local values
        values=$(echo "$1" | tr ' ' '\n' | sed '/^$/d' | sort -g)
        printf "%.3fx [%.3f, %.3f]" "$(echo "$values" | median)" "$(echo "$values" | head -1)" "$(echo "$values" | tail -1)"
    }
    for size in $BODIES; do
        printf "%-12s %34s %34s\n" "$size" "$(spread "${PAIRED_RPS[$size]}")" "$(spread "${PAIRED_CPU[$size]}")"
    done
    exit 0
fi
echo
printf "%-12s %18s %26s %16s %24s\n" "body" "layer/bare (rps)" "layer/handwritten (rps)" "p99 layer/bare" "p99 layer/handwritten"
for size in $BODIES; do
    awk -v l="${MRPS[layer,$size]}" -v b="${MRPS[bare,$size]}" -v h="${MRPS[handwritten,$size]}" \
        -v pl="${MP99[layer,$size]}" -v pb="${MP99[bare,$size]}" -v ph="${MP99[handwritten,$size]}" -v s="$size" \
        'BEGIN { printf "%-12s %17.3fx %25.3fx %15.3fx %23.3fx\n", s, l / b, l / h, pl / pb, pl / ph }'
done
echo
printf "%-12s %28s %36s\n" "body" "CPU/req bare/layer" "CPU/req handwritten/layer"
for size in $BODIES; do
    awk -v l="${MCPU[layer,$size]}" -v b="${MCPU[bare,$size]}" -v h="${MCPU[handwritten,$size]}" -v s="$size" \
        'BEGIN { printf "%-12s %27.3fx %35.3fx\n", s, b / l, h / l }'
done
if [ "$APP" = app ]; then
    echo
    printf "%-12s %24s %28s %28s\n" "body" "plumbing/bare (rps)" "CPU/req bare/plumbing" "CPU/req plumbing/layer"
    for size in $BODIES; do
        awk -v p="${MRPS[plumbing,$size]}" -v b="${MRPS[bare,$size]}" \
            -v cp="${MCPU[plumbing,$size]}" -v cb="${MCPU[bare,$size]}" -v cl="${MCPU[layer,$size]}" -v s="$size" \
            'BEGIN { printf "%-12s %23.3fx %27.3fx %27.3fx\n", s, p / b, cb / cp, cp / cl }'
    done
fi
