#!/usr/bin/env bash
# Peak resident memory (VmHWM) of each ext_proc server behind Envoy, with
#   c20x10m  20 concurrent 10 MiB bodies, `model` the last key,
#   one64m   one 64 MiB body, `model` the last key,
# each on a freshly started server (VmHWM is a peak over the process's
# life), and the status every request got. The clients send at most
# LIMIT_RATE bytes/s each (curl --limit-rate, default 20M), so that the 20
# bodies are in flight together whatever the server's speed: unthrottled,
# Envoy's one worker reads the connections nearly one after the other and a
# fast server sees few of them at once. The servers are those of
# benches/load/lib.sh; a server may carry extra bbr-extproc flags after a
# colon (`bbr:--max-body=134217728`).
#
# Environment: LIMIT_RATE, SERVERS (default "bbr bbr:--max-body=134217728 go-v1.5 go-v0.5
# ipp"), BODY_MODES ("full-duplex buffered"; ipp is full duplex only),
# SCENARIOS ("c20x10m one64m"), BBR_TLS (true), BBR_ENVOY.
set -euo pipefail
cd "$(dirname "$0")/../.."

SERVERS=${SERVERS:-"bbr bbr:--max-body=134217728 go-v1.5 go-v0.5 ipp"}
BODY_MODES=${BODY_MODES:-"full-duplex buffered"}
SCENARIOS=${SCENARIOS:-"c20x10m one64m"}
LIMIT_RATE=${LIMIT_RATE:-20M}

. benches/load/lib.sh

plain=()
for s in $SERVERS; do plain+=("${s%%:*}"); done
build_servers "${plain[@]}"
start_pools
make_body $((10 * 1024 * 1024)) "$work/body-10m.json" last
make_body $((64 * 1024 * 1024)) "$work/body-64m.json" last

# Posts $2 copies of $1 at once; prints the statuses, counted.
post_many() { # file count port
  seq 1 "$2" | xargs -P "$2" -I{} curl -s --max-time 120 --limit-rate "$LIMIT_RATE" -o /dev/null -w '%{http_code}\n' \
    -H 'Content-Type: application/json' --data-binary "@$1" \
    "http://127.0.0.1:$3/v1/chat/completions" | sort | uniq -c |
    awk '{printf "%s%s×%s", sep, $1, $2; sep=" "} END {print ""}'
}

printf '%-34s %-12s %-8s %10s %10s  %s\n' server body scenario "idle MiB" "peak MiB" statuses
for spec in $SERVERS; do
  server=${spec%%:*}; flags=""; [ "$spec" != "$server" ] && flags=${spec#*:}
  for body in $BODY_MODES; do
    [ "$server" = ipp ] && [ "$body" != full-duplex ] && continue
    for scenario in $SCENARIOS; do
      read -r -a BBR_FLAGS <<<"$flags"
      name="mem-$server-$body-$scenario"
      start_server "$server" "$body" "$name"
      start_envoy "$(envoy_template "$body")" "$SERVER_PORT" "$SERVER_TLS" "$name"
      # One small request first, so that idle counts a warmed-up server.
      make_body 1024 "$work/body-1k.json"
      post_many "$work/body-1k.json" 1 "$ENVOY_PORT" >/dev/null
      idle=$(awk '/^VmRSS:/ {print $2}' "/proc/$SERVER_PID/status")
      case "$scenario" in
        c20x10m) statuses=$(post_many "$work/body-10m.json" 20 "$ENVOY_PORT") ;;
        one64m) statuses=$(post_many "$work/body-64m.json" 1 "$ENVOY_PORT") ;;
      esac
      peak=$(peak_rss_kib "$SERVER_PID")
      printf '%-34s %-12s %-8s %10.1f %10.1f  %s\n' "$spec" "$body" "$scenario" \
        "$(awk -v k="$idle" 'BEGIN {print k / 1024}')" "$(awk -v k="$peak" 'BEGIN {print k / 1024}')" "$statuses"
      stop_all
      start_pools >/dev/null
    done
  done
done
