#!/usr/bin/env bash
# Follows README.md in a fresh clone of this repository (its HEAD commit),
# in the README's order, and fails when a step does not do what the README
# says:
#
#   1. the first command (the gateway demo) starts, and the README's curl
#      requests get their pools (chatbot -> gemma3, recommender -> deepseek-r1)
#      and an unknown model the JSON 404 `model_not_found`;
#      `cargo install --path crates/bbr-gateway` installs a binary that
#      starts the same demo from another directory;
#   2. `cargo install --path crates/bbr-extproc` comes before the first use
#      of `bbr-extproc`, which then starts with the README's flags, logs
#      without colour codes into a file and names a taken port;
#   3. `examples/envoy/run.sh` works with that bbr-extproc running, and
#      again once it is stopped (then with a server of its own).
#
# Everything binds 127.0.0.1, each wait is bounded, and everything started
# is stopped on exit. The clone shares $CARGO_TARGET_DIR (default: this
# checkout's target/) so that dependencies compile once.
set -euo pipefail
cd "$(dirname "$0")/.."
root="$(pwd)"
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$root/target}"
case "$CARGO_TARGET_DIR" in /*) ;; *) CARGO_TARGET_DIR="$root/$CARGO_TARGET_DIR" ;; esac
BBR_ENVOY="${BBR_ENVOY:-$(scripts/install-envoy.sh)}"
export BBR_ENVOY
BUILD_TIMEOUT="${BUILD_TIMEOUT:-1800}" # seconds a first build may take

work="$(mktemp -d)"
pids=()
cleanup() {
  for pid in "${pids[@]}"; do kill "$pid" 2>/dev/null || true; done
  wait 2>/dev/null || true
  rm -rf "$work"
}
trap cleanup EXIT INT TERM

# Each line says how long the steps have taken so far: the first builds
# dominate, and CI time matters.
step() { printf 'readme-steps [%4d s]: %s\n' "$SECONDS" "$*"; }
fail() {
  echo "readme-steps: FAILED: $*" >&2
  for log in "$work"/*.log; do
    [ -s "$log" ] && { echo "--- $(basename "$log")" >&2; tail -n 40 "$log" >&2; }
  done
  exit 1
}
port_taken() { (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }
free_port() {
  python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'
}
# Waits until $1 holds a line matching $2, for $3 seconds at most, while
# process $4 lives.
wait_for_line() {
  local deadline=$((SECONDS + $3))
  while [ "$SECONDS" -lt "$deadline" ]; do
    grep -qs -- "$2" "$1" && return 0
    kill -0 "$4" 2>/dev/null || return 1
    sleep 0.2
  done
  return 1
}

# The sh code blocks of the README, one command a line (continuations joined).
sh_commands() {
  awk '/^```sh$/ { on = 1; next } /^```/ { on = 0 } on' "$1" |
    sed -e ':a' -e '/\\$/N; s/\\\n *//; ta'
}

git diff --quiet HEAD -- README.md scripts examples crates ||
  step "note: uncommitted changes are not in the clone; it tests HEAD ($(git rev-parse --short HEAD))"
git clone -q "$root" "$work/bbr"
cd "$work/bbr"
readme=README.md
commands="$(sh_commands "$readme")"

# 1. The gateway demo.
first="cargo run --release -p bbr-gateway"
grep -qxF -- "$first" <<<"$commands" || fail "the README no longer runs: $first"
port=8080
if port_taken "$port"; then
  port="$(free_port)"
  step "port 8080 is taken on this machine; the gateway and the README's requests use $port"
fi
step "\$ $first   (waiting up to ${BUILD_TIMEOUT}s for the build)"
# The crates the first command needs (the binary's normal and build
# dependencies), and how many this run compiled (all of them from an
# empty target directory; CARGO_TARGET_DIR=$(mktemp -d) measures that) in
# how long: the README's figure comes from here.
crates="$(cargo tree -q -p bbr-gateway -e normal,build --prefix none 2>/dev/null |
  sed 's/ (\*)$//; s/ (proc-macro)$//' | awk '{print $1, $2}' | sort -u | wc -l)"
started=$SECONDS
$first -- --listen "127.0.0.1:$port" >"$work/gateway.log" 2>&1 &
gateway=$!
pids+=("$gateway")
wait_for_line "$work/gateway.log" "gateway listening on http://127.0.0.1:$port" "$BUILD_TIMEOUT" "$gateway" ||
  fail "the gateway did not start"
compiled="$(grep -cE '^ +Compiling ' "$work/gateway.log" || true)"
step "the first command: $crates crates in its graph, $compiled compiled by this run, started in $((SECONDS - started)) s on $(nproc) cores (load average $(cut -d' ' -f1 /proc/loadavg))"

# Each curl of the README's demo section, on the gateway's port. The model
# says what must answer.
check_answer() {
  local out="$1" model="$2" status pool
  status="$(sed -n '1s|^HTTP/[0-9.]* \([0-9]*\).*|\1|p' <<<"$out")"
  pool="$(sed -n 's|^x-inference-pool: ||Ip' <<<"$out")"
  case "$model" in
    chatbot) [ "$status/$pool" = 200/gemma3 ] ;;
    recommender) [ "$status/$pool" = 200/deepseek-r1 ] ;;
    *) [ "$status" = 404 ] && grep -qF '"code":"model_not_found"' <<<"$out" ;;
  esac || fail "model $model: expected its pool (or a JSON 404), got:
$out"
  if grep -qF "streamed one token" <<<"$out"; then
    fail "a whole (not streamed) answer says it was streamed: $out"
  fi
}
section="$(awk '/^## Try it/ { on = 1; next } /^## / { on = 0 } on' "$readme")"
curls="$(sh_commands <(printf '%s\n' "$section") | grep '^curl ')"
[ "$(wc -l <<<"$curls")" -ge 2 ] || fail "the README's demo section has fewer than two curl requests"
models=()
while IFS= read -r cmd; do
  model="$(sed -n 's/.*"model":"\([^"]*\)".*/\1/p' <<<"$cmd")"
  out="$(eval "${cmd//localhost:8080/localhost:$port} -sS --max-time 10" | tr -d '\r')" ||
    fail "request failed: $cmd"
  check_answer "$out" "$model"
  models+=("$model")
done <<<"$curls"
step "the gateway answered the README's ${#models[@]} requests (${models[*]}) as the README says"
kill "$gateway"
wait "$gateway" 2>/dev/null || true

# The installed gateway, started outside the checkout: the same demo.
install="$(grep -m1 'cargo install .*--path crates/bbr-gateway' <<<"$commands")" ||
  fail "the README does not say how to install bbr-gateway"
step "\$ $install   (into a scratch root, not ~/.cargo)"
timeout "$BUILD_TIMEOUT" $install --root "$work/cargo-root" --quiet >"$work/install-gateway.log" 2>&1 ||
  fail "$install failed"
(cd "$work" && exec "$work/cargo-root/bin/bbr-gateway" --listen "127.0.0.1:$port") >"$work/installed.log" 2>&1 &
gateway=$!
pids+=("$gateway")
wait_for_line "$work/installed.log" "gateway listening on http://127.0.0.1:$port (rules: the demo table built in)" 30 "$gateway" ||
  fail "the installed gateway did not start with the demo table built in"
out="$(curl -sS -i --max-time 10 -X POST "localhost:$port/v1/chat/completions" -H 'Content-Type: application/json' \
  -d '{"model":"chatbot","messages":[]}' | tr -d '\r')" || fail "request to the installed gateway failed"
check_answer "$out" chatbot
step "the installed bbr-gateway, started in $work, routed chatbot to gemma3"
kill "$gateway"
wait "$gateway" 2>/dev/null || true

# 2. bbr-extproc: installed before it is used, then run with the README's flags.
install_line="$(grep -n 'cargo install .*--path crates/bbr-extproc' "$readme" | head -n 1 | cut -d: -f1)"
use_line="$(grep -n '^bbr-extproc ' "$readme" | head -n 1 | cut -d: -f1)"
[ -n "$install_line" ] || fail "the README does not say how to install bbr-extproc"
[ -n "$use_line" ] && [ "$install_line" -lt "$use_line" ] ||
  fail "the README runs bbr-extproc (line ${use_line:-?}) before installing it (line $install_line)"
install="$(grep -m1 'cargo install .*--path crates/bbr-extproc' <<<"$commands")"
step "\$ $install   (into a scratch root, not ~/.cargo)"
timeout "$BUILD_TIMEOUT" $install --root "$work/cargo-root" --quiet >"$work/install.log" 2>&1 ||
  fail "$install failed"
run="$(grep -m1 '^bbr-extproc .*--rules' <<<"$commands")"
grpc=9004 health=9005 metrics=9090
for p in $grpc $health $metrics; do
  if port_taken "$p"; then
    grpc="$(free_port)" health="$(free_port)" metrics="$(free_port)"
    step "port $p is taken on this machine; bbr-extproc uses $grpc, $health, $metrics"
    break
  fi
done
step "\$ $run"
# shellcheck disable=SC2086 # the README's command, split into words
$work/cargo-root/bin/$run --address 127.0.0.1 --grpc-port "$grpc" \
  --grpc-health-port "$health" --metrics-port "$metrics" >"$work/bbr-extproc.out" 2>"$work/bbr-extproc.log" &
server=$!
pids+=("$server")
wait_for_line "$work/bbr-extproc.out" "bbr-extproc listening grpc=127.0.0.1:$grpc" 30 "$server" ||
  fail "bbr-extproc did not start"
wait_for_line "$work/bbr-extproc.log" serving 10 "$server" || fail "bbr-extproc logged nothing"
if grep -q $'\e' "$work/bbr-extproc.log"; then fail "bbr-extproc wrote colour codes into a log file"; fi
# A second one on the same port names the port.
if "$work/cargo-root/bin/bbr-extproc" --address 127.0.0.1 --grpc-port "$grpc" \
  --grpc-health-port 0 --metrics-port 0 >/dev/null 2>"$work/clash.log"; then
  fail "a second bbr-extproc started on a taken port"
fi
grep -qF "127.0.0.1:$grpc" "$work/clash.log" || fail "the error of a taken port does not name it"

# 3. The Envoy demo, with that server running, then without it.
grep -qx 'examples/envoy/run.sh' <<<"$commands" || fail "the README no longer runs examples/envoy/run.sh"
step "\$ examples/envoy/run.sh   (with bbr-extproc running on $grpc)"
BBR_PORT="$grpc" timeout "$BUILD_TIMEOUT" examples/envoy/run.sh >"$work/run-with.log" 2>&1 ||
  fail "examples/envoy/run.sh failed with a bbr-extproc running"
grep -qF "Using the bbr-extproc already listening on 127.0.0.1:$grpc" "$work/run-with.log" ||
  fail "run.sh did not use the running bbr-extproc"
kill "$server"
wait "$server" 2>/dev/null || true
step "\$ examples/envoy/run.sh   (no bbr-extproc running)"
BBR_PORT="$grpc" timeout "$BUILD_TIMEOUT" examples/envoy/run.sh >"$work/run-without.log" 2>&1 ||
  fail "examples/envoy/run.sh failed without a bbr-extproc running"
grep -q "^Started bbr-extproc on 127.0.0.1:" "$work/run-without.log" ||
  fail "run.sh did not start a bbr-extproc of its own"
step "ok: the README's steps work in order in a fresh clone"
