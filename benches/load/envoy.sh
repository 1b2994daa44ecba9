#!/usr/bin/env bash
# Load benchmark through a real Envoy on loopback: requests/s, p50 and p99
# latency, the CPU time Envoy and the ext_proc server spend per request,
# and their peak resident memory, of these modes, all in one run:
#
#   header        Envoy routing on an X-Gateway-Model-Name the client sent
#                 (no ext_proc: the floor),
#   json-meta     Envoy's native json_to_metadata filter (whole body
#                 buffered, model -> envoy.lb metadata -> subset LB),
#   headers-only  Envoy + bbr-extproc sent the request headers only
#                 (request_body_mode NONE, answered at once, routed to the
#                 first pool): what Envoy's ext_proc filter costs by itself,
#   module        Envoy with bbr loaded as a dynamic module (libbbr_envoy.so,
#                 examples/envoy/module.yaml): the same routing inside
#                 Envoy, no ext_proc hop,
#
# and, in FULL_DUPLEX_STREAMED (what the Go router's chart configures) and
# BUFFERED (the same names with `-buffered`):
#
#   full-duplex / buffered   bbr-extproc,
#   passthrough              an ext_proc server on bbr-extproc's gRPC stack
#                            that reads no body and answers every chunk
#                            unchanged (benches/load/passthrough.rs): the
#                            floor of any ext_proc server on this stack,
#   go-v1.5, go-v0.5         the Go body-based router of the Gateway API
#                            Inference Extension, v1.5.0 and v0.5.1
#                            (scripts/install-go-bbr.sh),
#   ipp                      the llm-d Inference Payload Processor v0.1.0
#                            (full duplex only),
#   base, base-buffered      another bbr-extproc build, $BBR_BASE_EXTPROC
#                            (not in the default MODES): before and after,
#   module-base              Envoy with another build of the module: the
#                            libbbr_envoy.so in the directory
#                            $BBR_BASE_MODULE (not in the default MODES).
#
# and, BUFFERED only:
#
#   aigw      Envoy AI Gateway v1.1.0's ext_proc server behind its
#             router-level filter as AI Gateway's control plane configures
#             it (benches/load/envoy-aigw.yaml: request and response bodies
#             BUFFERED, plaintext over a Unix socket), routes matching the
#             x-ai-eg-model header it sets.
#
# Every ext_proc server is behind the same Envoy configuration
# (examples/envoy/), TLS to the server by default (the Go v0.5.1 router
# always serves TLS; BBR_TLS=false makes the others plaintext). Before the
# timing, one request of each size through each mode must answer 200 from
# pool gemma3, the pool having seen X-Gateway-Model-Name: chatbot (except
# json-meta, headers-only and aigw, which set no such header: aigw reaches
# gemma3 only through its x-ai-eg-model: chatbot); whether the body reached
# the pool unchanged is printed too. Under load any answer but 2xx (a 404
# for a request routed on no model) fails the run.
#
# The modes run side by side and are measured in turn, ROUNDS times, so
# that the load of a shared machine spreads over all of them; the figures
# are medians, the CPU times (from /proc/PID/stat) are totals over the
# rounds divided by the requests served, and the peak RSS (VmHWM) is each
# process's peak over the whole run, all sizes together.
#
# Environment: DURATION (default 5s), ROUNDS (3), CONNECTIONS (16), SIZES
# ("1024 102400 1048576 10485760"), MODES (all of the above),
# ENVOY_CONCURRENCY (1), BBR_TLS (true), BBR_WORKERS (bbr-extproc and
# passthrough worker threads), BBR_ENVOY (else installed by
# scripts/install-envoy.sh). QUICK=1: one 1-second round at 1 KiB, for a
# check that every mode routes (each setting above still wins).
# Installs wrk with apt-get when missing. Every wait is bounded; the servers
# stop on exit.
set -euo pipefail
cd "$(dirname "$0")/../.."

if [ "${QUICK:-0}" = 1 ]; then
  DURATION=${DURATION:-1s}; ROUNDS=${ROUNDS:-1}; SIZES=${SIZES:-1024}
fi
DURATION=${DURATION:-5s}
ROUNDS=${ROUNDS:-3}
CONNECTIONS=${CONNECTIONS:-16}
SIZES=${SIZES:-"1024 102400 1048576 10485760"}
MODES=${MODES:-"header json-meta headers-only module passthrough full-duplex go-v1.5 go-v0.5 ipp passthrough-buffered buffered go-v1.5-buffered go-v0.5-buffered aigw"}

benches/load/install-wrk.sh

. benches/load/lib.sh

# The ext_proc server and body mode of a mode.
server_of() {
  case "$1" in
    header|json-meta|module|module-base) echo none ;;
    full-duplex|buffered|headers-only) echo bbr ;;
    base|base-buffered) echo bbr-base ;;
    *-buffered) echo "${1%-buffered}" ;;
    *) echo "$1" ;;
  esac
}
body_of() {
  case "$1" in
    header|json-meta|module|module-base) echo none ;;
    buffered|*-buffered|aigw) echo buffered ;;
    *) echo full-duplex ;;
  esac
}

servers=()
for mode in $MODES; do servers+=("$(server_of "$mode")"); done
build_servers "${servers[@]}"
case " $MODES " in
  *" module "*) nice -n 10 cargo build --release -q -p bbr-envoy ;;
esac
start_pools

declare -A PORT ENVOY_PID SERVER
for mode in $MODES; do
  server=$(server_of "$mode"); body=$(body_of "$mode")
  case "$mode" in
    header) start_envoy benches/load/envoy-header.yaml "" "$BBR_TLS" "$mode" ;;
    json-meta) start_envoy benches/load/envoy-json-to-metadata.yaml "" "$BBR_TLS" "$mode" ;;
    module) start_envoy examples/envoy/module.yaml "" "$BBR_TLS" "$mode" ;;
    module-base)
      [ -f "${BBR_BASE_MODULE:-}/libbbr_envoy.so" ] ||
        { echo "module-base: BBR_BASE_MODULE must be a directory holding libbbr_envoy.so" >&2; exit 1; }
      MODULE_DIR=$BBR_BASE_MODULE start_envoy examples/envoy/module.yaml "" "$BBR_TLS" "$mode"
      ;;
    *)
      start_server "$server" "$body" "$mode"
      SERVER[$mode]=$SERVER_PID
      template=$(envoy_template "$body")
      [ "$mode" = aigw ] && template=benches/load/envoy-aigw.yaml
      if [ "$mode" = headers-only ]; then
        # No body to bbr-extproc; what no header routes goes to the first pool.
        sed -e 's/request_body_mode: FULL_DUPLEX_STREAMED/request_body_mode: NONE/' \
          -e 's/request_trailer_mode: SEND/request_trailer_mode: SKIP/' \
          -e 's/direct_response: { status: 404, body: { inline_string: "no route for this model\\n" } }/route: { cluster: gemma3, timeout: 60s }/' \
          "$template" >"$work/headers-only-template.yaml"
        template="$work/headers-only-template.yaml"
      fi
      start_envoy "$template" "$SERVER_PORT" "$SERVER_TLS" "$mode"
      ;;
  esac
  ENVOY_PID[$mode]=$ENVOY_PID; PORT[$mode]=$ENVOY_PORT
done

# Check the route first: a benchmark of 404s measures nothing. A mode that
# fails the check at a size is left out of the timing at that size (and
# said so): a peer that cannot route a body is a finding, not a reason to
# stop.
declare -A FAILED
echo "route check (status, pool, X-Gateway-Model-Name the pool saw, body unchanged):" >&2
for size in $SIZES; do
  make_body "$size" "$work/body-$size.json"
  sum=$(sha256sum "$work/body-$size.json" | cut -d' ' -f1)
  for mode in $MODES; do
    model_header=""; [ "$mode" = header ] && model_header=chatbot
    curl -s --max-time 60 -o /dev/null -D "$work/check.headers" -w '%{http_code}' \
      -H 'Content-Type: application/json' ${model_header:+-H "X-Gateway-Model-Name: $model_header"} \
      --data-binary "@$work/body-$size.json" \
      "http://127.0.0.1:${PORT[$mode]}/v1/chat/completions" >"$work/check.code" || true
    code=$(cat "$work/check.code")
    h() { tr -d '\r' <"$work/check.headers" | awk -v n="$1:" 'tolower($1) == n {print $2}'; }
    pool=$(h x-inference-pool); seen=$(h x-pool-received-model-header)
    unchanged=no; [ "$(h x-pool-received-sha256)" = "$sum" ] && unchanged=yes
    printf '  %-20s %9s  %s %s %s body-unchanged=%s\n' "$mode" "$size" "$code" "${pool:--}" "${seen:--}" "$unchanged" >&2
    want_header=chatbot
    case "$mode" in json-meta|headers-only|aigw) want_header="" ;; esac
    if [ "$code" != 200 ] || [ "$pool" != gemma3 ] || [ "$seen" != "$want_header" ]; then
      echo "  $mode $size: not routed to gemma3${want_header:+ with X-Gateway-Model-Name: $want_header}; left out" >&2
      FAILED[$mode,$size]="status $code"
    fi
  done
done

# wrk runs for DURATION; the timeout only bounds a stuck run.
case "$DURATION" in
  *[0-9]s) wrk_timeout=$(( ${DURATION%s} + 60 )) ;;
  *) wrk_timeout=3600 ;;
esac
declare -A RUNS
for round in $(seq 1 "$ROUNDS"); do
  for size in $SIZES; do
    for mode in $MODES; do
      [ -n "${FAILED[$mode,$size]:-}" ] && continue
      model_header=""; [ "$mode" = header ] && model_header=chatbot
      envoy_before=$(cpu_ticks "${ENVOY_PID[$mode]}")
      server_before=0; [ -n "${SERVER[$mode]:-}" ] && server_before=$(cpu_ticks "${SERVER[$mode]}")
      out=$(BODY_FILE="$work/body-$size.json" MODEL_HEADER="$model_header" \
        timeout "$wrk_timeout" wrk -t1 -c"$CONNECTIONS" -d"$DURATION" --timeout 30s --latency \
        -s benches/load/envoy-post.lua "http://127.0.0.1:${PORT[$mode]}")
      if echo "$out" | grep -q "Non-2xx"; then
        echo "$mode: errors under load" >&2; echo "$out" >&2; exit 1
      fi
      rps=$(echo "$out" | awk '/Requests\/sec/ {print $2}')
      p50=$(echo "$out" | awk '$1 == "50%" {print $2}')
      p99=$(echo "$out" | awk '$1 == "99%" {print $2}')
      total=$(echo "$out" | awk '/requests in/ {print $1}')
      envoy_after=$(cpu_ticks "${ENVOY_PID[$mode]}")
      server_after=0; [ -n "${SERVER[$mode]:-}" ] && server_after=$(cpu_ticks "${SERVER[$mode]}")
      RUNS[$mode,$size]+="$rps $p99 $total $((envoy_after - envoy_before)) $((server_after - server_before)) $p50;"
      echo "round $round: $mode $size: $rps req/s, p99 $p99" >&2
    done
  done
done

# Peaks over the whole run, in KiB: Envoy's and the ext_proc server's.
declare -A PEAK
for mode in $MODES; do
  server_peak=0; [ -n "${SERVER[$mode]:-}" ] && server_peak=$(peak_rss_kib "${SERVER[$mode]}")
  PEAK[$mode]="$(peak_rss_kib "${ENVOY_PID[$mode]}") $server_peak"
done

python3 - "$MODES" "$SIZES" "$(getconf CLK_TCK)" <<PY
import statistics, sys
modes, sizes, tck = sys.argv[1].split(), sys.argv[2].split(), int(sys.argv[3])
runs, failed = {}, {}
$(for key in "${!RUNS[@]}"; do echo "runs['$key'] = '${RUNS[$key]}'"; done)
$(for key in "${!FAILED[@]}"; do echo "failed['$key'] = '${FAILED[$key]}'"; done)
peak = {}
$(for key in "${!PEAK[@]}"; do echo "peak['$key'] = '${PEAK[$key]}'"; done)
def ms(t):
    return float(t[:-2]) if t.endswith("ms") else float(t[:-2]) / 1000 if t.endswith("us") else float(t[:-1]) * 1000
def summary(key):
    rows = [r.split() for r in runs[key].split(";") if r.strip()]
    rps = statistics.median(float(r[0]) for r in rows)
    p99 = statistics.median(ms(r[1]) for r in rows)
    p50 = statistics.median(ms(r[5]) for r in rows)
    n = max(sum(int(r[2]) for r in rows), 1)
    envoy_us = sum(int(r[3]) for r in rows) / tck / n * 1e6
    server_us = sum(int(r[4]) for r in rows) / tck / n * 1e6
    return rps, p99, envoy_us, server_us, p50
print(f"{'mode':<20} {'body':>9} {'req/s':>9} {'p50 ms':>8} {'p99 ms':>8} {'envoy CPU/req':>14} {'ext_proc CPU/req':>17} {'vs header':>9}")
for size in sizes:
    floor = summary(f"header,{size}")[0] if f"header,{size}" in runs else None
    for mode in modes:
        if f"{mode},{size}" in failed:
            print(f"{mode:<20} {size:>9}   route check failed ({failed[f'{mode},{size}']}), not timed")
            continue
        rps, p99, e, s, p50 = summary(f"{mode},{size}")
        vs = f"{rps/floor:>8.2f}x" if floor else f"{'-':>9}"
        print(f"{mode:<20} {size:>9} {rps:>9.0f} {p50:>8.1f} {p99:>8.1f} {e:>11.0f} us {s:>14.0f} us {vs}")
print()
print(f"{'mode':<20} {'peak RSS over the run: envoy':>29} {'ext_proc':>10}")
for mode in modes:
    e, s = (int(x) for x in peak[mode].split())
    sv = f"{s / 1024:>6.1f} MiB" if s else f"{'-':>10}"
    print(f"{mode:<20} {e / 1024:>25.1f} MiB {sv}")
# bbr against each peer in the same body mode: req/s and p99 ratios, and
# ext_proc server CPU per request (peer / bbr: how many times more the peer
# spends).
pairs = [("full-duplex", p) for p in ("go-v1.5", "go-v0.5", "ipp", "passthrough", "aigw")] + \
        [("buffered", p) for p in ("go-v1.5-buffered", "go-v0.5-buffered", "passthrough-buffered", "aigw")]
pairs = [(b, p) for b, p in pairs if b in modes and p in modes]
if pairs:
    print()
    print(f"{'bbr vs peer':<34} {'body':>9} {'req/s bbr/peer':>15} {'p99 bbr/peer':>13} {'CPU/req peer/bbr':>17}")
    for size in sizes:
        for b, p in pairs:
            if f"{b},{size}" in failed or f"{p},{size}" in failed:
                continue
            rb, pb, _, sb, _ = summary(f"{b},{size}")
            rp, pp, _, sp, _ = summary(f"{p},{size}")
            cpu = f"{sp/sb:>16.2f}x" if sb > 0 else f"{'-':>17}"
            print(f"{b + ' / ' + p:<34} {size:>9} {rb/rp:>14.2f}x {pb/pp:>12.2f}x {cpu}")
PY
