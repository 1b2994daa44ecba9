# Shared by the Envoy benchmarks (envoy.sh, memory.sh, behaviour.sh):
# starts the simulated pools, an ext_proc server and an Envoy in front of it,
# all on loopback, and stops them on exit. Sourced, not run.
#
# Servers (the first argument of start_server):
#   bbr          bbr-extproc (TLS unless BBR_TLS=false)
#   bbr-base     another build of bbr-extproc, $BBR_BASE_EXTPROC (say, of an
#                earlier commit: before and after a change, in one run)
#   passthrough  benches/load/passthrough.rs: reads no body, sets
#                X-Gateway-Model-Name: chatbot (the floor of any ext_proc
#                server on bbr-extproc's gRPC stack)
#   go-v1.5      the Go router, v1.5.0, with the body-field-to-header plugin
#                copying `model` into X-Gateway-Model-Name
#   go-v0.5      the Go router, v0.5.1 (always TLS)
#   ipp          the llm-d Inference Payload Processor v0.1.0, the same plugin
#                (FULL_DUPLEX_STREAMED only)
#   aigw         Envoy AI Gateway v1.1.0's ext_proc server (./cmd/extproc,
#                scripts/install-control-planes.sh ai-gateway), with the
#                flags its controller gives its sidecar, on a Unix socket
#                (SERVER_PORT is then the socket's path): it sets
#                x-ai-eg-model from the body's `model` (Envoy from
#                benches/load/envoy-aigw.yaml, BUFFERED only)
# The Go servers listen on all interfaces (they take a port, not an
# address; aigw's admin port too); they are given free ports and reached on 127.0.0.1. They want a
# kubeconfig at start: one naming an unused loopback port is enough, since
# the plugins given here watch nothing.

# shellcheck shell=bash
target="${CARGO_TARGET_DIR:-target}/release"
BBR_TLS=${BBR_TLS:-true}
[ -n "${BBR_FLAGS+x}" ] || BBR_FLAGS=()
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

wait_port() { # port log
  for _ in $(seq 1 200); do
    (: </dev/tcp/127.0.0.1/"$1") 2>/dev/null && return 0
    sleep 0.05
  done
  echo "nothing listens on $1" >&2; cat "$2" >&2; return 1
}

# Builds what the servers need (the Go ones only when asked for).
build_servers() { # server...
  local s go=false
  nice -n 10 cargo build --release -q -p bbr-extproc --bin bbr-extproc
  nice -n 10 cargo build --release -q -p bbr-examples --example pools
  for s in "$@"; do
    case "$s" in
      passthrough) nice -n 10 cargo build --release -q -p bbr-benches --bin passthrough-extproc ;;
      go-*|ipp) go=true ;;
      aigw)
        local exports
        exports="$(scripts/install-control-planes.sh ai-gateway)"
        eval "$exports"
        ;;
    esac
  done
  if [ "$go" = true ]; then eval "$(scripts/install-go-bbr.sh)"; fi
  envoy_bin="${BBR_ENVOY:-$(scripts/install-envoy.sh)}"
}

start_pools() {
  gemma3=$(free_port); deepseek=$(free_port)
  "$target/examples/pools" --token-delay-ms 0 --pool "gemma3=127.0.0.1:$gemma3" \
    --pool "deepseek-r1=127.0.0.1:$deepseek" >"$work/pools.log" 2>&1 &
  pids+=($!)
  wait_for "$work/pools.log" "deepseek-r1 listening"
}

kubeconfig() {
  [ -f "$work/kubeconfig" ] || cat >"$work/kubeconfig" <<'EOF'
apiVersion: v1
kind: Config
clusters: [{name: none, cluster: {server: "https://127.0.0.1:1"}}]
contexts: [{name: none, context: {cluster: none, user: none}}]
users: [{name: none, user: {}}]
current-context: none
EOF
  echo "$work/kubeconfig"
}

IPP_CONFIG='apiVersion: llm-d.ai/v1alpha1
kind: PayloadProcessorConfig
plugins:
- type: body-field-to-header
  parameters: {fieldName: model, headerName: X-Gateway-Model-Name}
profiles:
- name: default
  plugins:
    request:
    - pluginRef: body-field-to-header'

# Envoy AI Gateway's filter configuration (filterapi.Config): the models its
# /v1/models lists; `version` must be the binary's (`dev` when built from
# source), or it refuses the file. No backends: with no upstream-level
# filter in front of the pools, none is looked up.
AIGW_CONFIG='version: dev
models:
- name: chatbot
  ownedBy: bbr-bench
- name: recommender
  ownedBy: bbr-bench'

# Starts server $1 for body mode $2 (full-duplex or buffered), logging to
# $work/$3.log; sets SERVER_PID, SERVER_PORT and SERVER_TLS.
start_server() { # server body-mode name
  local server=$1 body=$2 log="$work/$3.log" streaming=false
  [ "$body" = full-duplex ] && streaming=true
  SERVER_TLS=$BBR_TLS
  case "$server" in
    bbr|bbr-base)
      local flags=(--address 127.0.0.1 --grpc-port 0 --grpc-health-port 0 --metrics-port 0 -v 1
        "--streaming=$streaming" "--secure-serving=$BBR_TLS") binary="$target/bbr-extproc"
      [ -n "${BBR_WORKERS:-}" ] && flags+=(--worker-threads "$BBR_WORKERS")
      if [ "$server" = bbr-base ]; then
        binary="${BBR_BASE_EXTPROC:?bbr-base needs BBR_BASE_EXTPROC, a bbr-extproc binary}"
      fi
      "$binary" "${flags[@]}" "${BBR_FLAGS[@]}" >"$log" 2>&1 &
      SERVER_PID=$!
      wait_for "$log" "bbr-extproc listening"
      SERVER_PORT=$(sed -n 's/.* grpc=127.0.0.1:\([0-9]*\) .*/\1/p' "$log")
      ;;
    passthrough)
      local flags=(--grpc-port 0 "--secure-serving=$BBR_TLS")
      [ -n "${BBR_WORKERS:-}" ] && flags+=(--worker-threads "$BBR_WORKERS")
      "$target/passthrough-extproc" "${flags[@]}" >"$log" 2>&1 &
      SERVER_PID=$!
      wait_for "$log" "passthrough-extproc listening"
      SERVER_PORT=$(sed -n 's/.* grpc=127.0.0.1:\([0-9]*\) .*/\1/p' "$log")
      ;;
    go-v1.5|go-v0.5|ipp)
      local grpc health metrics
      grpc=$(free_port); health=$(free_port); metrics=$(free_port)
      case "$server" in
        go-v1.5)
          KUBECONFIG="$(kubeconfig)" "$BBR_GO_BBR_V1_5" --grpc-port "$grpc" \
            --grpc-health-port "$health" --metrics-port "$metrics" --tracing=false \
            --metrics-endpoint-auth=false --enable-pprof=false "--streaming=$streaming" \
            "--secure-serving=$BBR_TLS" \
            --plugin 'body-field-to-header:model:{"fieldName":"model","headerName":"X-Gateway-Model-Name"}' \
            >"$log" 2>&1 &
          ;;
        go-v0.5)
          SERVER_TLS=true
          local extra=(); [ "$streaming" = true ] && extra=(-streaming)
          KUBECONFIG="$(kubeconfig)" "$BBR_GO_BBR_V0_5" -grpcPort "$grpc" \
            -grpcHealthPort "$health" -metricsPort "$metrics" "${extra[@]}" >"$log" 2>&1 &
          ;;
        ipp)
          [ "$streaming" = true ] || { echo "ipp answers FULL_DUPLEX_STREAMED only" >&2; return 1; }
          KUBECONFIG="$(kubeconfig)" "$BBR_GO_IPP" --grpc-port "$grpc" \
            --grpc-health-port "$health" --metrics-port "$metrics" --tracing=false \
            --metrics-endpoint-auth=false --enable-pprof=false "--secure-serving=$BBR_TLS" \
            --config-text "$IPP_CONFIG" >"$log" 2>&1 &
          ;;
      esac
      SERVER_PID=$!
      SERVER_PORT=$grpc
      wait_port "$grpc" "$log"
      ;;
    aigw)
      [ "$body" = buffered ] || { echo "aigw runs as AI Gateway configures it: BUFFERED" >&2; return 1; }
      local admin
      admin=$(free_port)
      SERVER_TLS=false SERVER_PORT="$work/$3.sock"
      printf '%s\n' "$AIGW_CONFIG" >"$work/$3-config.yaml"
      # The flags of its controller's sidecar (logLevel info, maxRecvMsgSize
      # 512 MiB, rootPrefix /), the admin port aside.
      "$BBR_AI_GATEWAY" -configPath "$work/$3-config.yaml" -extProcAddr "unix://$SERVER_PORT" \
        -adminPort "$admin" -logLevel info -maxRecvMsgSize 536870912 -rootPrefix / >"$log" 2>&1 &
      SERVER_PID=$!
      for _ in $(seq 1 200); do [ -S "$SERVER_PORT" ] && break; sleep 0.05; done
      [ -S "$SERVER_PORT" ] || { echo "aigw did not listen on $SERVER_PORT" >&2; cat "$log" >&2; return 1; }
      ;;
    *) echo "unknown server $server" >&2; return 1 ;;
  esac
  pids+=("$SERVER_PID")
}

# Starts Envoy from template $1 with the ext_proc server on port $2 (or on
# the Unix socket $2, for a template with ${EXTPROC_SOCKET}; TLS when $3 is
# true); logs to $work/$4.log; sets ENVOY_PID and ENVOY_PORT.
start_envoy() { # template server-port tls name
  local template=$1 port admin config="$work/envoy-$4.yaml"
  port=$(free_port); admin=$(free_port)
  sed -e "s/\${ADMIN_PORT}/$admin/" -e "s/\${LISTEN_PORT}/$port/" -e "s|\${BBR_PORT}|${2:-0}|" \
      -e "s|\${EXTPROC_SOCKET}|${2:-}|" \
      -e "s/\${GEMMA3_PORT}/$gemma3/" -e "s/\${DEEPSEEK_PORT}/$deepseek/" \
      -e "s|\${RULES_FILE}|$(pwd)/examples/config/gateway.yaml|" \
      "$template" >"$config"
  if [ "$3" = false ]; then
    sed -i '/transport_socket:/,/sni: localhost/d' "$config"
  fi
  # Where the module mode's libbbr_envoy.so is (unused by the others):
  # this tree's release build unless MODULE_DIR says otherwise.
  ENVOY_DYNAMIC_MODULES_SEARCH_PATH="${MODULE_DIR:-$(cd "${CARGO_TARGET_DIR:-target}/release" && pwd)}" \
    "$envoy_bin" -c "$config" --concurrency "${ENVOY_CONCURRENCY:-1}" \
    --disable-hot-restart -l error >"$work/envoy-$4.log" 2>&1 &
  ENVOY_PID=$!; ENVOY_PORT=$port
  pids+=("$ENVOY_PID")
  for _ in $(seq 1 200); do
    curl -fs "http://127.0.0.1:$admin/ready" >/dev/null 2>&1 && return 0
    sleep 0.05
  done
  echo "envoy did not start" >&2; cat "$work/envoy-$4.log" >&2; return 1
}

# Envoy's configuration for body mode $1.
envoy_template() {
  case "$1" in
    full-duplex) echo examples/envoy/envoy-full-duplex.yaml ;;
    buffered) echo examples/envoy/envoy-buffered.yaml ;;
  esac
}

# A body of about $1 bytes, written to $2: a long user message, then the
# model, then max_tokens (or, with $3 = last, the model as the last key).
make_body() { # size file [last]
  python3 - "$1" "${3:-}" >"$2" <<'PY'
import json, sys
size, last = int(sys.argv[1]), sys.argv[2] == "last"
head = {"messages": [{"role": "user", "content": ""}], "model": "chatbot", "max_tokens": 100}
if last:
    head = {"messages": head["messages"], "max_tokens": 100, "model": "chatbot"}
pad = size - len(json.dumps(head, separators=(",", ":")))
head["messages"][0]["content"] = "lorem ipsum " * (max(pad, 0) // 12) + "x" * (max(pad, 0) % 12)
sys.stdout.write(json.dumps(head, separators=(",", ":")))
PY
}

# CPU time (user + system) of a process so far, in clock ticks.
cpu_ticks() { awk '{print $14 + $15}' "/proc/$1/stat" 2>/dev/null || echo 0; }

# Peak resident memory of a process so far, in KiB.
peak_rss_kib() { awk '/^VmHWM:/ {print $2}' "/proc/$1/status" 2>/dev/null || echo 0; }
