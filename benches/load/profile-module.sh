#!/usr/bin/env bash
# Where Envoy's time goes with bbr loaded as a dynamic module, counted by
# callgrind (the same count whatever else the machine does): Envoy 1.40
# (`--concurrency 1`) serves REQUESTS requests of a SIZE-byte body
# (`messages` before `model`, as benches/load/envoy.sh sends) one after the
# other on one keep-alive connection, in each of MODES:
#
#   header       routing on an X-Gateway-Model-Name the client sent
#                (benches/load/envoy-header.yaml: the floor),
#   module       examples/envoy/module.yaml with this tree's module,
#   module-base  the same with the libbbr_envoy.so in $BBR_BASE_MODULE.
#
# Each mode runs twice, with WARMUP and with WARMUP + REQUESTS requests, and
# the figures are the differences divided by REQUESTS: Envoy's whole
# process a request, and the module's part, inclusive (its request hooks:
# bbr's code and the Envoy callbacks it makes). Envoy's binary exports its
# dynamic-module callbacks by name, not its internals: what Envoy itself
# does more for the filter (buffering the body, the route picked again
# after the cache is cleared) shows only in the whole-process difference.
#
# Environment: SIZE (1024), REQUESTS (2000), WARMUP (200), MODES ("header
# module"), BBR_BASE_MODULE, BBR_ENVOY. The callgrind output of each
# larger run is kept in OUT (default target/callgrind-module), for
# `callgrind_annotate --inclusive=yes`.
set -euo pipefail
cd "$(dirname "$0")/../.."

SIZE=${SIZE:-1024}
REQUESTS=${REQUESTS:-2000}
WARMUP=${WARMUP:-200}
MODES=${MODES:-"header module"}
OUT=${OUT:-${CARGO_TARGET_DIR:-target}/callgrind-module}
command -v valgrind >/dev/null || { echo "valgrind is needed (apt-get install valgrind)" >&2; exit 1; }

. benches/load/lib.sh
nice -n 10 cargo build --release -q -p bbr-envoy
nice -n 10 cargo build --release -q -p bbr-examples --example pools
envoy_bin="${BBR_ENVOY:-$(scripts/install-envoy.sh)}"
start_pools
make_body "$SIZE" "$work/body.json"
mkdir -p "$OUT"

# Sends N requests on one connection; fails on an answer other than 200
# from pool gemma3.
cat >"$work/client.py" <<'EOF'
import http.client, sys
port, n, path, header = int(sys.argv[1]), int(sys.argv[2]), sys.argv[3], sys.argv[4]
body = open(path, "rb").read()
headers = {"Content-Type": "application/json"}
if header:
    headers["X-Gateway-Model-Name"] = header
c = http.client.HTTPConnection("127.0.0.1", port, timeout=120)
for _ in range(n):
    c.request("POST", "/v1/chat/completions", body, headers)
    r = c.getresponse()
    r.read()
    if r.status != 200 or r.getheader("x-inference-pool") != "gemma3":
        sys.exit(f"status {r.status}, pool {r.getheader('x-inference-pool')}")
EOF

# Runs Envoy in `mode` under callgrind for `n` requests; prints the
# callgrind output file.
run() { # mode n
  local mode=$1 n=$2 template module_dir header="" port admin config out
  case "$mode" in
    header) template=benches/load/envoy-header.yaml; header=chatbot ;;
    module) template=examples/envoy/module.yaml ;;
    module-base) template=examples/envoy/module.yaml ;;
    *) echo "unknown mode $mode" >&2; exit 1 ;;
  esac
  module_dir="$(cd "$target" && pwd)"
  if [ "$mode" = module-base ]; then
    [ -f "${BBR_BASE_MODULE:-}/libbbr_envoy.so" ] ||
      { echo "module-base: BBR_BASE_MODULE must be a directory holding libbbr_envoy.so" >&2; exit 1; }
    module_dir=$BBR_BASE_MODULE
  fi
  port=$(free_port); admin=$(free_port)
  config="$work/envoy-$mode.yaml"; out="$OUT/$mode-$n.cg"
  sed -e "s/\${ADMIN_PORT}/$admin/" -e "s/\${LISTEN_PORT}/$port/" \
      -e "s/\${GEMMA3_PORT}/$gemma3/" -e "s/\${DEEPSEEK_PORT}/$deepseek/" \
      -e "s|\${RULES_FILE}|$(pwd)/examples/config/gateway.yaml|" "$template" >"$config"
  ENVOY_DYNAMIC_MODULES_SEARCH_PATH="$module_dir" valgrind --tool=callgrind \
    --callgrind-out-file="$out" "$envoy_bin" -c "$config" --concurrency 1 \
    --disable-hot-restart -l error >"$work/envoy-$mode.log" 2>&1 &
  local pid=$!
  for _ in $(seq 1 1200); do
    curl -fs "http://127.0.0.1:$admin/ready" >/dev/null 2>&1 && break
    sleep 0.1
  done
  curl -fs "http://127.0.0.1:$admin/ready" >/dev/null ||
    { echo "envoy ($mode) did not start" >&2; cat "$work/envoy-$mode.log" >&2; exit 1; }
  timeout 1200 python3 "$work/client.py" "$port" "$n" "$work/body.json" "$header"
  kill -TERM "$pid"
  wait "$pid" || true
  echo "$out"
}

# The total instructions of a callgrind output.
total() { grep -E "^(summary|totals):" "$1" | head -n 1 | awk '{print $2}'; }

# The inclusive instructions of each function whose name matches the
# pattern, summed. callgrind_annotate lists a function once per source
# file its code comes from (inlined code too): the largest line of a name
# is the whole function.
inclusive() { # file pattern
  callgrind_annotate --auto=no --inclusive=yes --threshold=100 "$1" 2>/dev/null |
    awk -v re="$2" 'match($0, re) {
        name = substr($0, RSTART, RLENGTH); n = $1; gsub(",", "", n)
        if (n + 0 > max[name]) max[name] = n + 0
      }
      END { for (name in max) sum += max[name]; print sum + 0 }'
}

hooks='envoy_dynamic_module_on_http_filter_(new|destroy|request_headers|request_body|request_trailers|stream_complete)'
echo "instructions a request (callgrind), body $SIZE B, $REQUESTS requests on one connection"
printf '%-12s %14s %14s\n' mode "whole Envoy" "module hooks"
for mode in $MODES; do
  small=$(run "$mode" "$WARMUP")
  large=$(run "$mode" $((WARMUP + REQUESTS)))
  whole=$(( ($(total "$large") - $(total "$small")) / REQUESTS ))
  part=$(( ($(inclusive "$large" "$hooks") - $(inclusive "$small" "$hooks")) / REQUESTS ))
  printf '%-12s %14d %14d\n' "$mode" "$whole" "$part"
done
echo "callgrind outputs in $OUT (callgrind_annotate --inclusive=yes FILE)"
