#!/usr/bin/env bash
# The demo scenario through real control planes: istiod (Istio) and Envoy
# Gateway read the chart's objects from a real API server and program a real
# Envoy, and requests go through it, bbr-extproc and the model servers.
#
# For each control plane (BBR_CONTROL_PLANES, default "istio envoy-gateway
# istio-module envoy-gateway-module"), with the chart installed from
# examples/kubernetes/values-<provider>.yaml (and, for the -module runs,
# values-module.yaml: bbr as a dynamic module inside the gateway's Envoy, no
# bbr-extproc) and nothing patched by hand (the Envoy Gateway module run sets
# two values for its Host provider, below):
#
#   - chatbot reaches the gemma3 pod, recommender the deepseek-r1 pod (the
#     model server's own answer, which names its pod);
#   - an unknown model gets bbr's JSON 404;
#   - a client-sent X-Gateway-Model-Name does not steer;
#   - a LoRA adapter reaches its base model's pool once a labelled base-model
#     ConfigMap lists it (module: the module reads no ConfigMaps; the adapter
#     reaches it through the rule table's base_models, and the ConfigMap
#     check is said and skipped);
#   - a rule changed through the chart's rules ConfigMap (helm upgrade) takes
#     effect without a restart;
#   - bbr-extproc killed: the chart's failure mode (closed: 5xx); routing back
#     once it runs again (module: there is no bbr-extproc; instead, the chart
#     rendered none, and the module's counters in the gateway Envoy's stats
#     count the requests);
#   - bbr-extproc back with the chart's model discovery on: an adapter loaded
#     on gemma3's model server (/v1/load_lora_adapter), in no rule and no
#     ConfigMap, reaches the gemma3 pod as its base model (Istio only: the
#     Envoy Gateway runs have no InferencePools; not in the module runs:
#     discovery is bbr-extproc's);
#   - one pool's endpoint picker killed: that pool fails, the other serves
#     (Istio only: on Envoy Gateway, InferencePool backends need Envoy AI
#     Gateway, so there the routes name Services; said and skipped).
#
# Prints one line per check and `N passed, M failed`; exits non-zero on a
# failure.
#
# There is no kubelet: the script plays its part. Each "pod" (bbr-extproc,
# the two model servers, the two endpoint pickers) is a process in a network
# namespace of its own on a bridge, with a Pod object whose status the
# script writes, and the script writes the EndpointSlices of every Service
# with a selector (EndpointSlices refuse loopback addresses, hence the
# namespaces). bbr-extproc runs with the arguments of the chart's rendered
# Deployment; the rules ConfigMap is copied to the file the Deployment
# mounts it at, as the kubelet does. In the module runs the gateway's Envoy
# loads libbbr_envoy.so, and the script puts it where the pod's volumes
# would: on Istio, where the Deployment istiod made from the chart's Gateway
# parameters mounts bbr's image (the image volume), with the search path of
# that Deployment's environment, and the rules where it mounts the rules
# ConfigMap (checked to be so first); on Envoy Gateway, whose Host provider
# runs Envoy without a pod (so the chart is told bbr.module.source=none: no
# pod patch; and provider.envoyGateway.envoyProxy restates the Host
# provider, which Envoy Gateway would replace by the Kubernetes one), at the
# path the chart's EnvoyProxy registers and where its filter configuration
# reads the rules. Those paths exist only in a private
# mount namespace of the Envoy process. The API server, etcd, the control plane
# and the gateway's Envoy run in one more network namespace (the "node",
# 10.77.0.1 on the bridge). All of it is created by this script and removed
# on exit; nothing listens outside those namespaces. Every process is bounded
# in time.
#
# Tools: scripts/install-k8s-tools.sh (kube-apiserver, etcd, kubectl, helm),
# scripts/install-control-planes.sh (istiod, the endpoint picker, the model
# server simulator, Envoy Gateway), scripts/install-envoy.sh (Envoy).
# BBR_EXTPROC: the bbr-extproc binary (default: target/debug/bbr-extproc,
# built if missing); BBR_ENVOY_MODULE: libbbr_envoy.so (default:
# target/debug/libbbr_envoy.so, built if missing: a debug build serves these
# few requests). The container image is not used: binaries run on the host.
# Needs root (network namespaces and mount namespaces).
set -euo pipefail
[ "${BBR_TRACE:-0}" = 1 ] && set -x
cd "$(dirname "$0")/.."
repo="$PWD"

GATEWAY_API_VERSION_ISTIO=v1.4.0 # the Gateway API Istio 1.29.0 is built with
INFERENCE_EXTENSION_VERSION=v1.5.0
ENVOY_GATEWAY_VERSION=v1.9.0
ENVOY_VERSION=1.40.0
LIFETIME=1800 # seconds any process of this script may live
control_planes="istio envoy-gateway istio-module envoy-gateway-module"

log() { echo "test-control-planes: $*" >&2; }
started=$SECONDS

# --- outside: tools, then the node's network namespace ----------------------
if [ "${1:-}" != --inside ]; then
  [ "$(id -u)" = 0 ] || { log "needs root (network namespaces)"; exit 1; }
  eval "$(scripts/install-k8s-tools.sh)"
  eval "$(scripts/install-control-planes.sh)"
  BBR_ENVOY="${BBR_ENVOY:-$(scripts/install-envoy.sh)}"
  BBR_EXTPROC="${BBR_EXTPROC:-${CARGO_TARGET_DIR:-target}/debug/bbr-extproc}"
  if [ ! -x "$BBR_EXTPROC" ]; then
    cargo build -p bbr-extproc >&2
  fi
  BBR_EXTPROC="$(cd "$(dirname "$BBR_EXTPROC")" && pwd)/$(basename "$BBR_EXTPROC")"
  BBR_ENVOY_MODULE="${BBR_ENVOY_MODULE:-${CARGO_TARGET_DIR:-target}/debug/libbbr_envoy.so}"
  if [[ " ${BBR_CONTROL_PLANES:-$control_planes} " == *-module* ]] && [ ! -f "$BBR_ENVOY_MODULE" ]; then
    cargo build -p bbr-envoy >&2
  fi
  BBR_ENVOY_MODULE="$(cd "$(dirname "$BBR_ENVOY_MODULE")" && pwd)/$(basename "$BBR_ENVOY_MODULE")"
  export BBR_ENVOY BBR_EXTPROC BBR_ENVOY_MODULE BBR_KUBE_APISERVER BBR_ETCD BBR_KUBECTL BBR_HELM \
    BBR_ISTIOD BBR_ISTIO_CHARTS BBR_EPP BBR_MODEL_SIM BBR_ENVOY_GATEWAY
  # The CRDs, from their Go modules (the namespaces below reach no network).
  module_dir() {
    GOFLAGS=-mod=mod go mod download -json "$1" | sed -n 's/^[[:space:]]*"Dir": "\(.*\)",$/\1/p'
  }
  BBR_GATEWAY_API_ISTIO="$(module_dir "sigs.k8s.io/gateway-api@$GATEWAY_API_VERSION_ISTIO")"
  BBR_GIE="$(module_dir "sigs.k8s.io/gateway-api-inference-extension@$INFERENCE_EXTENSION_VERSION")"
  BBR_EG_SRC="$(module_dir "github.com/envoyproxy/gateway@$ENVOY_GATEWAY_VERSION")"
  export BBR_GATEWAY_API_ISTIO BBR_GIE BBR_EG_SRC
  log "tools ready after $((SECONDS - started)) s"
  export BBR_NETNS="bbrcp$$"
  cleanup_netns() {
    local ns
    for ns in $(ip netns list | awk '{print $1}' | grep "^$BBR_NETNS" || true); do
      # Anything still running in it (it should not be) goes first.
      for pid in $(ip netns pids "$ns" 2>/dev/null); do kill -KILL "$pid" 2>/dev/null || true; done
      ip netns delete "$ns" 2>/dev/null || true
    done
  }
  trap cleanup_netns EXIT
  # The node: a bridge at 10.77.0.1; each pod: a namespace of its own on it.
  node="$BBR_NETNS"
  ip netns add "$node"
  ip -n "$node" link set lo up
  ip -n "$node" link add br0 type bridge
  ip -n "$node" addr add 10.77.0.1/24 dev br0
  ip -n "$node" link set br0 up
  n=0
  for pod in bbr=10.77.0.10 gemma3=10.77.0.11 deepseek-r1=10.77.0.12 \
    gemma3-epp=10.77.0.13 deepseek-r1-epp=10.77.0.14; do
    ns="$node-${pod%%=*}"
    ip netns add "$ns"
    ip link add "bbrcp$$v$n" type veth peer name eth0 netns "$ns"
    ip link set "bbrcp$$v$n" netns "$node"
    ip -n "$node" link set "bbrcp$$v$n" master br0 up
    ip -n "$ns" link set lo up
    ip -n "$ns" addr add "${pod#*=}/24" dev eth0
    ip -n "$ns" link set eth0 up
    ip -n "$ns" route add default via 10.77.0.1
    n=$((n + 1))
  done
  status=0
  ip netns exec "$BBR_NETNS" timeout --kill-after=10 "$LIFETIME" \
    "$repo/scripts/test-control-planes.sh" --inside || status=$?
  log "done in $((SECONDS - started)) s"
  exit "$status"
fi

# --- inside the node's network namespace -------------------------------------
node_ip=10.77.0.1
kubectl="$BBR_KUBECTL"
helm="$BBR_HELM"
work="$(mktemp -d)"
pids=()
stop_all() {
  local i pid
  for ((i = ${#pids[@]} - 1; i >= 0; i--)); do
    pid="${pids[$i]}"
    kill "$pid" 2>/dev/null || continue
    for _ in $(seq 1 50); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
    kill -KILL "$pid" 2>/dev/null || true
    wait "$pid" 2>/dev/null || true
  done
  pids=()
}
on_exit() {
  stop_all
  [ "${BBR_KEEP_WORK:-0}" = 1 ] && log "kept $work" || rm -rf "$work"
}
trap on_exit EXIT

# bounded COMMAND...: runs COMMAND in the background for at most LIFETIME
# seconds; its pid goes to $last and to pids (for stop_all).
bounded() { timeout --kill-after=5 "$LIFETIME" "$@" & last=$!; pids+=("$last"); }

# The pods' addresses (their namespaces were made outside, before entering
# the node's).
declare -A pod_ip=([bbr]=10.77.0.10 [gemma3]=10.77.0.11 [deepseek-r1]=10.77.0.12
  [gemma3-epp]=10.77.0.13 [deepseek-r1-epp]=10.77.0.14)
# in_pod NAME: the command prefix that runs a command in pod NAME's namespace.
in_pod() { echo ip netns exec "$BBR_NETNS-$1"; }

# --- the checks ----------------------------------------------------------------
passed=0; failed=0
ok() { passed=$((passed + 1)); echo "ok     [$provider] $*"; }
fail() { failed=$((failed + 1)); echo "FAILED [$provider] $*"; }
skip() { echo "skip   [$provider] $*"; }

# request MODEL [HEADER]: POSTs a chat completion for MODEL through the
# gateway; sets $code, $body and $served_by (the model server's pod).
gateway=""
request() {
  local model=$1 extra=() out
  [ -n "${2:-}" ] && extra=(-H "$2")
  out="$(curl -sS -m 10 -D "$work/headers" -o "$work/body" -w '%{http_code}' \
    "http://$gateway/v1/chat/completions" -H 'content-type: application/json' "${extra[@]}" \
    -d "{\"model\":\"$model\",\"messages\":[{\"role\":\"user\",\"content\":\"hi\"}],\"max_tokens\":4}" 2>&1)" || true
  code="${out: -3}"
  body="$(cat "$work/body" 2>/dev/null || true)"
  served_by="$(sed -n 's/^x-inference-pod: *\([^[:space:]]*\).*/\1/Ip' "$work/headers" 2>/dev/null | head -n 1)"
}
# until_ok SECONDS COMMAND...: retries COMMAND every half second.
until_ok() {
  local deadline=$((SECONDS + $1)); shift
  while ! "$@" 2>/dev/null; do
    [ "$SECONDS" -lt "$deadline" ] || return 1
    sleep 0.5
  done
}
routes_to() { request "$1" "${3:-}"; [ "$code" = 200 ] && [ "$served_by" = "$2" ]; }
answers() { request "$1"; [ "$code" = "$2" ]; }
describe() { echo "HTTP $code, pod '${served_by:-}', body: $(head -c 300 <<<"$body")"; }

# --- the cluster ------------------------------------------------------------------
start_cluster() {
  local dir="$work/$provider/cluster"
  mkdir -p "$dir"
  (
    cd "$dir"
    openssl req -x509 -newkey rsa:2048 -nodes -keyout ca.key -out ca.crt -days 2 \
      -subj /CN=bbr-test-ca 2>/dev/null
    openssl req -newkey rsa:2048 -nodes -keyout apiserver.key -out apiserver.csr \
      -subj /CN=kube-apiserver 2>/dev/null
    printf 'subjectAltName=IP:127.0.0.1,IP:%s,DNS:localhost,IP:10.96.0.1\n' "$node_ip" >san.ext
    openssl x509 -req -in apiserver.csr -CA ca.crt -CAkey ca.key -CAcreateserial \
      -out apiserver.crt -days 2 -extfile san.ext 2>/dev/null
    openssl genrsa -out sa.key 2048 2>/dev/null
    openssl rsa -in sa.key -pubout -out sa.pub 2>/dev/null
    echo "$(openssl rand -hex 24),admin,admin,system:masters" >tokens.csv
  )
  bounded "$BBR_ETCD" --name bbr-test --data-dir "$dir/etcd" \
    --listen-client-urls http://127.0.0.1:2379 --advertise-client-urls http://127.0.0.1:2379 \
    --listen-peer-urls http://127.0.0.1:2380 --initial-advertise-peer-urls http://127.0.0.1:2380 \
    --initial-cluster bbr-test=http://127.0.0.1:2380 --listen-metrics-urls '' \
    --unsafe-no-fsync --log-level error >"$dir/etcd.log" 2>&1
  bounded "$BBR_KUBE_APISERVER" --etcd-servers http://127.0.0.1:2379 \
    --bind-address 0.0.0.0 --advertise-address "$node_ip" --secure-port 6443 \
    --tls-cert-file "$dir/apiserver.crt" --tls-private-key-file "$dir/apiserver.key" \
    --client-ca-file "$dir/ca.crt" --token-auth-file "$dir/tokens.csv" \
    --service-account-issuer https://kubernetes.default.svc.cluster.local \
    --service-account-key-file "$dir/sa.pub" --service-account-signing-key-file "$dir/sa.key" \
    --authorization-mode RBAC --service-cluster-ip-range 10.96.0.0/16 \
    --allow-privileged=false --enable-priority-and-fairness=false \
    --cert-dir "$dir/certs" >"$dir/apiserver.log" 2>&1
  export KUBECONFIG="$dir/kubeconfig"
  cat >"$KUBECONFIG" <<EOF
apiVersion: v1
kind: Config
clusters:
- name: test
  cluster:
    server: https://$node_ip:6443
    certificate-authority: $dir/ca.crt
users:
- name: admin
  user:
    token: $(cut -d, -f1 "$dir/tokens.csv")
contexts:
- name: test
  context: {cluster: test, user: admin, namespace: default}
current-context: test
EOF
  until_ok 120 "$kubectl" get --raw /readyz >/dev/null ||
    { log "the API server did not become ready"; tail -n 20 "$dir"/*.log >&2; return 1; }
  until_ok 60 "$kubectl" get namespace default >/dev/null
  # No controller manager: the service account Pods are admitted with.
  "$kubectl" create serviceaccount default -n default >/dev/null
  "$kubectl" apply -f - >/dev/null <<EOF
{"apiVersion": "v1", "kind": "Node", "metadata": {"name": "node-0"}}
EOF
}

apply() { "$kubectl" apply --server-side --force-conflicts "$@" >/dev/null; }

# --- the kubelet's part ------------------------------------------------------------
# pod NAME IP LABEL=VALUE...: a Pod object, scheduled, running and ready at IP.
pod() {
  local name=$1 ip=$2; shift 2
  local labels="" l
  for l in "$@"; do labels+="\"${l%%=*}\": \"${l#*=}\", "; done
  "$kubectl" apply -f - >/dev/null <<EOF
{"apiVersion": "v1", "kind": "Pod",
 "metadata": {"name": "$name", "namespace": "default", "labels": {${labels%, }}},
 "spec": {"nodeName": "node-0", "containers": [{"name": "main", "image": "none"}]}}
EOF
  "$kubectl" patch pod "$name" --subresource=status --type=merge -p "{\"status\": {
    \"phase\": \"Running\", \"podIP\": \"$ip\", \"podIPs\": [{\"ip\": \"$ip\"}], \"hostIP\": \"$node_ip\",
    \"startTime\": \"$(date -u +%Y-%m-%dT%H:%M:%SZ)\",
    \"conditions\": [{\"type\": \"Ready\", \"status\": \"True\"}, {\"type\": \"PodScheduled\", \"status\": \"True\"},
                     {\"type\": \"ContainersReady\", \"status\": \"True\"}, {\"type\": \"Initialized\", \"status\": \"True\"}],
    \"containerStatuses\": [{\"name\": \"main\", \"image\": \"none\", \"imageID\": \"\", \"ready\": true,
                            \"restartCount\": 0, \"started\": true, \"state\": {\"running\": {}}}]}}" >/dev/null
}

# The EndpointSlices of every Service with a selector, from the Pods it
# selects (what the endpoint-slice controller does), and the rules
# ConfigMap copied to the file the Deployment mounts it at (what the
# kubelet does): once a second, in the background.
sync_cluster() {
  local state="$work/$provider/endpointslices.json"
  while true; do
    "$kubectl" get services,pods -A -o json 2>/dev/null | python3 -c '
import json, sys
items = json.load(sys.stdin)["items"]
pods = [p for p in items if p["kind"] == "Pod" and p.get("status", {}).get("podIP")]
out = []
for s in items:
    sel = s["kind"] == "Service" and s["spec"].get("selector")
    if not sel:
        continue
    ns = s["metadata"]["namespace"]
    eps = [p for p in pods if p["metadata"]["namespace"] == ns
           and all(p["metadata"].get("labels", {}).get(k) == v for k, v in sel.items())]
    ports = []
    for port in s["spec"]["ports"]:
        target = port.get("targetPort", port["port"])
        if not isinstance(target, int):
            target = port["port"]
        entry = {"name": port.get("name", ""), "port": target, "protocol": port.get("protocol", "TCP")}
        if port.get("appProtocol"):
            entry["appProtocol"] = port["appProtocol"]
        ports.append(entry)
    out.append({"apiVersion": "discovery.k8s.io/v1", "kind": "EndpointSlice",
        "metadata": {"name": s["metadata"]["name"] + "-bbr-test", "namespace": ns,
                     "labels": {"kubernetes.io/service-name": s["metadata"]["name"],
                                "endpointslice.kubernetes.io/managed-by": "bbr-test"}},
        "addressType": "IPv4", "ports": ports,
        "endpoints": [{"addresses": [p["status"]["podIP"]], "conditions": {"ready": True, "serving": True},
                       "nodeName": "node-0",
                       "targetRef": {"kind": "Pod", "name": p["metadata"]["name"], "namespace": ns}}
                      for p in eps]})
print(json.dumps({"apiVersion": "v1", "kind": "List", "items": out}, sort_keys=True))
' >"$state.new" 2>/dev/null || true
    if [ -s "$state.new" ] && ! cmp -s "$state.new" "$state"; then
      "$kubectl" apply -f "$state.new" >/dev/null 2>&1 && mv "$state.new" "$state"
    fi
    if "$kubectl" get configmap body-based-router-rules -o 'go-template={{index .data "rules.yaml"}}' \
      >"$work/$provider/rules/rules.yaml.new" 2>/dev/null &&
      ! cmp -s "$work/$provider/rules/rules.yaml.new" "$work/$provider/rules/rules.yaml"; then
      mv "$work/$provider/rules/rules.yaml.new" "$work/$provider/rules/rules.yaml"
    fi
    sleep 1
  done
}

# The arguments of the chart's rendered bbr-extproc container, one a line,
# with the rules file moved to where sync_cluster writes it.
bbr_args() {
  "$kubectl" get deployment body-based-router -o json | python3 -c '
import json, sys
d = json.load(sys.stdin)
for c in d["spec"]["template"]["spec"]["containers"]:
    if c["name"] in ("bbr", "body-based-router", "bbr-extproc") or len(d["spec"]["template"]["spec"]["containers"]) == 1:
        for a in c.get("args", []):
            print(a.replace("/etc/bbr/rules/", sys.argv[1] + "/"))
        break
' "$work/$provider/rules"
}
start_bbr() {
  local args=()
  mapfile -t args < <(bbr_args)
  # The kubelet starts the container once its volumes are there.
  if [[ " ${args[*]} " == *" --rules="* ]]; then
    until_ok 30 test -s "$work/$provider/rules/rules.yaml" || log "the rules ConfigMap was not copied"
  fi
  # The Deployment's environment: NAMESPACE from the pod's namespace; the
  # API server through the kubeconfig instead of the service account.
  bounded $(in_pod bbr) env NAMESPACE=default KUBECONFIG="$KUBECONFIG" \
    "$BBR_EXTPROC" "${args[@]}" >>"$work/$provider/bbr-extproc.log" 2>&1
  bbr_pid=$last
}
start_epp() { # start_epp POOL
  bounded $(in_pod "$1-epp") env KUBECONFIG="$KUBECONFIG" "$BBR_EPP" \
    --pool-name "$1" --pool-namespace default --secure-serving=true \
    --metrics-endpoint-auth=false --tracing=false --enable-pprof=false \
    --zap-log-level info >>"$work/$provider/$1-epp.log" 2>&1
  epp_pid[$1]=$last
}
declare -A epp_pid=()

# The model servers: llm-d-inference-sim, answering as their pod.
start_models() {
  bounded $(in_pod gemma3) env POD_NAME=gemma3-0 POD_NAMESPACE=default "$BBR_MODEL_SIM" --port 8000 \
    --model google/gemma-3-27b-it --served-model-name google/gemma-3-27b-it chatbot \
    --lora-modules '{"name":"sql-lora","path":"/sql-lora"}' --max-loras 2 \
    >>"$work/$provider/gemma3.log" 2>&1
  bounded $(in_pod deepseek-r1) env POD_NAME=deepseek-r1-0 POD_NAMESPACE=default "$BBR_MODEL_SIM" --port 8000 \
    --model deepseek-ai/DeepSeek-R1 --served-model-name deepseek-ai/DeepSeek-R1 recommender \
    >>"$work/$provider/deepseek-r1.log" 2>&1
}

# The objects every provider gets: the demo's routes and the Pods.
common_objects() {
  apply -f examples/kubernetes/httproute.yaml
  common_objects_no_route
}
common_objects_no_route() {
  pod gemma3-0 "${pod_ip[gemma3]}" app=gemma3
  pod deepseek-r1-0 "${pod_ip[deepseek-r1]}" app=deepseek-r1
  # Module mode has no bbr-extproc pod.
  [ "$mode" = module ] || pod body-based-router-0 "${pod_ip[bbr]}" app=body-based-router
}

# --- the checks, the same on every provider ------------------------------------------
# bbr-extproc killed and started again.
extproc_down_checks() {
  kill "$bbr_pid"; wait "$bbr_pid" 2>/dev/null || true
  request chatbot
  if [[ "$code" == 5?? ]] && [ -z "$served_by" ]; then
    ok "bbr-extproc down: requests fail closed (HTTP $code), as the chart's default"
  else
    fail "bbr-extproc down: requests fail closed: $(describe)"
  fi
  # It comes back with model discovery on (bbr.discovery, the chart's
  # values; the rule for gemma3's base model as above): the args of the
  # upgraded Deployment, as the kubelet would start a new pod with.
  "$helm" upgrade body-based-router charts/body-based-routing -n default \
    -f "$work/$provider/values-changed.yaml" "${values_more[@]}" \
    --set bbr.discovery.inferencePools=true --set bbr.discovery.periodSeconds=1 >/dev/null
  start_bbr
  if until_ok 60 routes_to chatbot gemma3-0; then
    ok "bbr-extproc back: chatbot reaches the gemma3 pod again"
  else
    fail "bbr-extproc back: chatbot reaches the gemma3 pod again: $(describe)"
  fi

  # An adapter loaded on gemma3's model server, named in no rule and no
  # ConfigMap: bbr-extproc reads the InferencePools' pods, learns the
  # adapter's parent from the server's /v1/models and routes it as that
  # base model (the base model's rule, header and HTTPRoute).
  if [ "$cp" = envoy-gateway ]; then
    skip "an adapter learned from the InferencePools' pods: this run has no InferencePools (its routes name Services)"
    "$helm" upgrade body-based-router charts/body-based-routing -n default -f "$values" "${values_more[@]}" >/dev/null
    return
  fi
  request chat-lora
  local before="$code" loaded
  loaded="$(curl -sS -m 10 -o /dev/null -w '%{http_code}' \
    "http://${pod_ip[gemma3]}:8000/v1/load_lora_adapter" -H 'content-type: application/json' \
    -d '{"lora_name":"chat-lora","lora_path":"/chat-lora"}' 2>&1)" || true
  if [ "$before" != 200 ] && [ "$loaded" = 200 ] && until_ok 20 routes_to chat-lora gemma3-0; then
    ok "an adapter loaded on gemma3's server reaches the gemma3 pod, learned from the InferencePool's pods (before: HTTP $before)"
  else
    fail "an adapter loaded on gemma3's server reaches the gemma3 pod (before: HTTP $before, load: $loaded): $(describe)"
  fi
  "$helm" upgrade body-based-router charts/body-based-routing -n default -f "$values" "${values_more[@]}" >/dev/null
}

# The gateway's Envoy: the process listening on the gateway's port.
listener_pid() {
  ss -Hltnp "sport = :${gateway##*:}" 2>/dev/null | sed -n 's/.*pid=\([0-9]*\).*/\1/p' | head -n 1
}
# Module mode: no bbr-extproc anywhere, and the routing done inside the
# gateway's Envoy: the module's counters in its stats count the requests.
module_checks() {
  local left
  left="$("$kubectl" get deployments,services,serviceaccounts -l app.kubernetes.io/instance=body-based-router \
    -o name 2>&1)"
  if [ -z "$left" ]; then
    ok "module mode: the chart renders no bbr-extproc Deployment, Service or ServiceAccount"
  else
    fail "module mode: the chart renders no bbr-extproc Deployment, Service or ServiceAccount: $left"
  fi
  # The admin interface: Envoy's listening loopback ports other than the
  # gateway's (Envoy Gateway's Host provider picks it at random).
  local pid port stats="" routed
  pid="$(listener_pid)"
  for port in $(ss -Hltnp 2>/dev/null | grep "pid=$pid," | awk '{print $4}' | sed -n 's/^127\.0\.0\.1:\([0-9]*\)$/\1/p'); do
    stats="$(curl -s -m 5 "http://127.0.0.1:$port/stats/prometheus" 2>/dev/null | grep _bbr_ || true)"
    [ -n "$stats" ] && break
  done
  routed="$(sed -n 's/^envoy_dynamicmodulescustom_bbr_routed_total{} \([0-9]*\)$/\1/p' <<<"$stats")"
  if [ "${routed:-0}" -ge 5 ] && grep -q '_bbr_rejected_total{reason="model_not_found"} [1-9]' <<<"$stats"; then
    ok "the module routes inside the gateway's Envoy: bbr_routed_total $routed, bbr_rejected_total{model_not_found} counted"
  else
    fail "the module routes inside the gateway's Envoy (Envoy pid ${pid:-none}): $(tr '\n' ' ' <<<"$stats" | head -c 600)"
  fi
}

run_checks() {
  if until_ok 120 routes_to chatbot gemma3-0; then
    ok "chatbot reaches the gemma3 pod"
  else
    fail "chatbot reaches the gemma3 pod: $(describe)"
  fi
  if until_ok 20 routes_to recommender deepseek-r1-0; then
    ok "recommender reaches the deepseek-r1 pod"
  else
    fail "recommender reaches the deepseek-r1 pod: $(describe)"
  fi

  request no-such-model
  if [ "$code" = 404 ] && grep -q '"code":"model_not_found"' <<<"$body"; then
    ok "an unknown model gets bbr's JSON 404"
  else
    fail "an unknown model gets bbr's JSON 404: $(describe)"
  fi

  if routes_to recommender deepseek-r1-0 'X-Gateway-Model-Name: chatbot'; then
    ok "a client-sent X-Gateway-Model-Name does not steer"
  else
    fail "a client-sent X-Gateway-Model-Name does not steer: $(describe)"
  fi

  # The adapter is a model the rule table knows; its base model comes from
  # the ConfigMap, and only the base model's route reaches the pool.
  local before
  if [ "$mode" = module ]; then
    # The module reads no ConfigMaps: values-module.yaml gives the rule
    # table the adapter's base model.
    if routes_to sql-lora gemma3-0; then
      ok "a LoRA adapter reaches its base model's pool through the rule table's base_models"
    else
      fail "a LoRA adapter reaches its base model's pool through the rule table's base_models: $(describe)"
    fi
    skip "a LoRA adapter through a labelled base-model ConfigMap: the module reads no ConfigMaps"
  else
    request sql-lora
    before="$code"
    apply -f examples/kubernetes/base-models.yaml
    if [ "$before" != 200 ] && until_ok 20 routes_to sql-lora gemma3-0; then
      ok "a LoRA adapter reaches its base model's pool once its ConfigMap is applied (before: HTTP $before)"
    else
      fail "a LoRA adapter reaches its base model's pool once its ConfigMap is applied (before: HTTP $before): $(describe)"
    fi
  fi

  # A rule added through the chart's values: helm upgrade changes the rules
  # ConfigMap; bbr-extproc (or the module in the gateway's Envoy) reloads
  # the mounted file, no restart. The model is gemma3's base model, which
  # the ConfigMap above (or the rule table's base_models) gave the header
  # its route matches; the table refused it until now.
  local pid_before="${bbr_pid:-}" base=google/gemma-3-27b-it
  [ "$mode" = module ] && pid_before="$(listener_pid)"
  request "$base"
  before="$code"
  grep -q '"code":"model_not_found"' <<<"$body" || before="$code without bbr's JSON"
  python3 - "$values" "$base" >"$work/$provider/values-changed.yaml" <<'EOF'
import sys
text = open(sys.argv[1]).read()
marker = "    rules:\n"
assert marker in text, "the values have no bbr.rules.rules list"
rule = ("    - name: gemma3-base\n"
        "      match: {model: {exact: %s}}\n"
        "      pool: gemma3\n" % sys.argv[2])
print(text.replace(marker, marker + rule, 1), end="")
EOF
  "$helm" upgrade body-based-router charts/body-based-routing -n default \
    -f "$work/$provider/values-changed.yaml" "${values_more[@]}" >/dev/null
  if [ "$before" = 404 ] && until_ok 30 routes_to "$base" gemma3-0 && kill -0 "$pid_before" &&
    { [ "$mode" != module ] || [ "$(listener_pid)" = "$pid_before" ]; }; then
    ok "a rule added through the chart's rules ConfigMap takes effect without a restart (before: HTTP $before)"
  else
    fail "a rule added through the chart's rules ConfigMap takes effect without a restart (before: HTTP $before): $(describe)"
  fi
  "$helm" upgrade body-based-router charts/body-based-routing -n default -f "$values" "${values_more[@]}" >/dev/null

  if [ "$mode" = module ]; then
    module_checks
  else
    extproc_down_checks
  fi

  if [ "$cp" = envoy-gateway ]; then
    skip "one endpoint picker down: Envoy Gateway has no InferencePool backend of its own (Envoy AI Gateway adds it)"
    return
  fi
  kill "${epp_pid[gemma3]}"; wait "${epp_pid[gemma3]}" 2>/dev/null || true
  local down=""
  if until_ok 20 eval 'request chatbot; [[ "$code" == 5?? ]]' && down="$code" &&
    routes_to recommender deepseek-r1-0; then
    ok "gemma3's endpoint picker down: chatbot fails (HTTP $down), recommender still reaches deepseek-r1"
  else
    fail "gemma3's endpoint picker down: chatbot fails, recommender still served: $(describe)"
  fi
  start_epp gemma3
  if until_ok 60 routes_to chatbot gemma3-0; then
    ok "gemma3's endpoint picker back: chatbot reaches the gemma3 pod again"
  else
    fail "gemma3's endpoint picker back: chatbot reaches the gemma3 pod again: $(describe)"
  fi
}

# "${with_mounts[@]}" ROOT CWD "SRC=DST ..." COMMAND...: runs COMMAND in CWD
# with each directory SRC at the path DST, in a private mount namespace
# whose root is a tmpfs at ROOT holding bind mounts of the machine's
# entries (so every other path is the machine's): the directories on the
# way to each DST are tmpfs directories holding bind mounts of the
# machine's entries in turn, so that nothing is created on the machine's
# own filesystem. Envoy Gateway reads its xDS server certificate at /certs
# whatever its provider; the module runs find libbbr_envoy.so and the rules
# where the pod's volumes would put them.
with_mounts=(unshare -m --propagation private bash -c '
  set -e
  root=$1 cwd=$2 mounts=$3; shift 3
  targets=()
  for m in $mounts; do targets+=("${m#*=}"); done
  mkdir -p "$root"
  mount -t tmpfs bbr-root "$root"
  graft() { # graft DIR: the machine'\''s DIR rebuilt under root ("" for /)
    local entry t descend
    for entry in "$1"/* "$1"/.[!.]*; do
      [ -e "$entry" ] || [ -L "$entry" ] || continue
      descend=0
      for t in "${targets[@]}"; do
        case "$t/" in "$entry"/*) descend=1 ;; esac
      done
      if [ -L "$entry" ]; then ln -s "$(readlink "$entry")" "$root$entry"
      elif [ -d "$entry" ] && [ "$descend" = 1 ]; then mkdir "$root$entry"; graft "$entry"
      elif [ -d "$entry" ]; then mkdir "$root$entry"; mount --rbind "$entry" "$root$entry"
      elif [ -e "$entry" ]; then touch "$root$entry"; mount --bind "$entry" "$root$entry"
      fi
    done
  }
  graft ""
  for m in $mounts; do
    mkdir -p "$root${m#*=}"
    mount --bind "${m%%=*}" "$root${m#*=}"
  done
  exec chroot "$root" env -C "$cwd" "$@"
' with-mounts)

# --- Istio ----------------------------------------------------------------------------
# The istio-proxy container of istiod's Deployment for the Gateway, as the
# chart's parameters (module mode) make it: prints the search path, the
# directory bbr's image is mounted at, the rules' directory and the image;
# fails unless all four are there.
module_pod_mounts() {
  "$kubectl" get deployment inference-gateway-istio -o json | python3 -c '
import json, sys
spec = json.load(sys.stdin)["spec"]["template"]["spec"]
volumes = {v["name"]: v for v in spec.get("volumes", [])}
proxy = next(c for c in spec["containers"] if c["name"] == "istio-proxy")
env = {e["name"]: e.get("value") for e in proxy.get("env", [])}
mounts = {m["name"]: m["mountPath"] for m in proxy.get("volumeMounts", [])}
image = volumes.get("bbr-module", {}).get("image", {}).get("reference")
rules = volumes.get("bbr-rules", {}).get("configMap", {}).get("name")
search = env.get("ENVOY_DYNAMIC_MODULES_SEARCH_PATH")
if not (image and rules == "body-based-router-rules" and search and search == mounts.get("bbr-module")
        and mounts.get("bbr-rules")):
    sys.exit(f"image {image}, rules {rules}, search path {search}, mounts {mounts}")
print(search, mounts["bbr-module"], mounts["bbr-rules"], image)'
}

run_istio() {
  local dir="$work/$provider"
  apply -f "$BBR_GATEWAY_API_ISTIO/config/crd/standard"
  apply -f "$BBR_GIE/config/crd/bases/inference.networking.k8s.io_inferencepools.yaml"
  apply -f "$BBR_ISTIO_CHARTS/crd-all.gen.yaml"
  "$kubectl" wait --for condition=Established --timeout=60s crd --all >/dev/null
  "$kubectl" create namespace istio-system >/dev/null
  "$kubectl" create serviceaccount default -n istio-system >/dev/null
  # istiod's mesh configuration and gateway templates: Istio's own chart,
  # without telemetry (its filters exist only in Istio's Envoy build) and
  # without automatic mTLS (its secrets come from the sidecar agent).
  "$helm" template istiod "$BBR_ISTIO_CHARTS/istio-discovery" -n istio-system \
    --set telemetry.enabled=false --set meshConfig.enableAutoMtls=false \
    --show-only templates/configmap.yaml --show-only templates/istiod-injector-configmap.yaml \
    >"$dir/istio-configmaps.yaml"
  apply -f "$dir/istio-configmaps.yaml"

  mkdir -p "$dir/istiod"
  bounded env -C "$dir/istiod" POD_NAMESPACE=istio-system POD_NAME=istiod-0 REVISION=default \
    PILOT_ENABLE_GATEWAY_API=true ENABLE_GATEWAY_API_INFERENCE_EXTENSION=true \
    PILOT_ENABLE_METADATA_EXCHANGE=false PILOT_ENABLE_ALPN_FILTER=false \
    "$BBR_ISTIOD" discovery --kubeconfig "$KUBECONFIG" \
    --log_output_level default:info >"$dir/istiod.log" 2>&1

  values="$repo/examples/kubernetes/values-istio.yaml"
  if [ "$mode" = module ]; then
    # The chart first: the Gateway names the ConfigMap it renders, and
    # istiod makes the Gateway's Deployment from it.
    values_more=(-f "$repo/examples/kubernetes/values-module.yaml")
    "$helm" install body-based-router charts/body-based-routing -n default -f "$values" "${values_more[@]}" >/dev/null
    apply -f examples/kubernetes/gateway-istio-module.yaml
  else
    apply -f examples/kubernetes/gateway-istio.yaml
  fi
  apply -f examples/kubernetes/inferencepools.yaml
  # The endpoint pickers as the Inference Extension's inferencepool chart
  # deploys them for Istio: a Service, and TLS to it without verification.
  local pool
  for pool in gemma3 deepseek-r1; do
    "$kubectl" apply -f - >/dev/null <<EOF
apiVersion: v1
kind: Service
metadata:
  name: $pool-epp
spec:
  selector: {app: $pool-epp}
  ports:
  - {name: grpc-ext-proc, port: 9002, targetPort: 9002, appProtocol: http2}
---
apiVersion: networking.istio.io/v1
kind: DestinationRule
metadata:
  name: $pool-epp
spec:
  host: $pool-epp.default.svc.cluster.local
  trafficPolicy:
    tls:
      mode: SIMPLE
      insecureSkipVerify: true
EOF
    pod "$pool-epp-0" "${pod_ip[$pool-epp]}" "app=$pool-epp"
    start_epp "$pool"
  done
  common_objects

  if [ "$mode" != module ]; then
    "$helm" install body-based-router charts/body-based-routing -n default -f "$values" >/dev/null
    start_bbr
  fi

  # The gateway's Envoy: istiod made its Deployment; a Pod of it, at the
  # node's address, and Envoy with a bootstrap that points at istiod.
  until_ok 60 "$kubectl" get deployment inference-gateway-istio >/dev/null ||
    { fail "istiod created no Deployment for the Gateway"; tail -n 30 "$dir/istiod.log"; return; }
  local labels
  labels="$("$kubectl" get deployment inference-gateway-istio -o json | python3 -c '
import json, sys
labels = json.load(sys.stdin)["spec"]["template"]["metadata"]["labels"]
print(" ".join(f"{k}={v}" for k, v in labels.items()))')"
  # shellcheck disable=SC2086
  pod inference-gateway-istio-0 "$node_ip" $labels
  local labels_json
  labels_json="$("$kubectl" get pod inference-gateway-istio-0 -o json | python3 -c '
import json, sys; print(json.dumps(json.load(sys.stdin)["metadata"]["labels"]))')"
  cat >"$dir/envoy.yaml" <<EOF
node:
  id: router~$node_ip~inference-gateway-istio-0.default~default.svc.cluster.local
  cluster: inference-gateway-istio.default
  metadata:
    NAMESPACE: default
    NAME: inference-gateway-istio-0
    CLUSTER_ID: Kubernetes
    SERVICE_ACCOUNT: inference-gateway-istio
    ISTIO_VERSION: 1.29.0
    LABELS: $labels_json
admin:
  address: { socket_address: { address: 127.0.0.1, port_value: 15000 } }
dynamic_resources:
  ads_config:
    api_type: GRPC
    transport_api_version: V3
    grpc_services: [{ envoy_grpc: { cluster_name: xds-grpc } }]
  cds_config: { ads: {}, resource_api_version: V3 }
  lds_config: { ads: {}, resource_api_version: V3 }
static_resources:
  clusters:
  - name: xds-grpc
    type: STATIC
    connect_timeout: 5s
    typed_extension_protocol_options:
      envoy.extensions.upstreams.http.v3.HttpProtocolOptions:
        "@type": type.googleapis.com/envoy.extensions.upstreams.http.v3.HttpProtocolOptions
        explicit_http_config: { http2_protocol_options: {} }
    load_assignment:
      cluster_name: xds-grpc
      endpoints:
      - lb_endpoints:
        - endpoint: { address: { socket_address: { address: 127.0.0.1, port_value: 15010 } } }
EOF
  if [ "$mode" = module ]; then
    # What the kubelet would do with istiod's Deployment: its volumes
    # (bbr's image, holding libbbr_envoy.so at its root; the rules
    # ConfigMap) where its proxy container mounts them, and its environment.
    local mounts
    if ! until_ok 30 eval 'mounts="$(module_pod_mounts)"'; then
      fail "istiod's Deployment for the Gateway takes the chart's parameters (bbr's image and the rules mounted, the search path set): $(module_pod_mounts 2>&1 | tail -n 3)"
      return
    fi
    ok "istiod's Deployment for the Gateway takes the chart's parameters: $mounts"
    local search module_dir rules_dir
    read -r search module_dir rules_dir _ <<<"$mounts"
    mkdir -p "$dir/image"
    cp "$BBR_ENVOY_MODULE" "$dir/image/libbbr_envoy.so"
    # The kubelet starts the container once its volumes are there.
    until_ok 30 test -s "$work/$provider/rules/rules.yaml" || log "the rules ConfigMap was not copied"
    bounded "${with_mounts[@]}" "$dir/root" "$PWD" "$dir/image=$module_dir $work/$provider/rules=$rules_dir" \
      env "ENVOY_DYNAMIC_MODULES_SEARCH_PATH=$search" \
      "$BBR_ENVOY" -c "$dir/envoy.yaml" --concurrency 1 --log-level warn >"$dir/envoy.log" 2>&1
  else
    bounded "$BBR_ENVOY" -c "$dir/envoy.yaml" --concurrency 1 --log-level warn >"$dir/envoy.log" 2>&1
  fi
  gateway="127.0.0.1:80"
  run_checks
}

# --- Envoy Gateway -----------------------------------------------------------------------

run_envoy_gateway() {
  local dir="$work/$provider" eg="$work/$provider/eg"
  local crds="$BBR_EG_SRC/charts/gateway-helm/charts/crds/crds"
  apply -f "$crds/gatewayapi-crds.yaml"
  apply -f "$crds/generated"
  apply -f "$BBR_GIE/config/crd/bases/inference.networking.k8s.io_inferencepools.yaml"
  "$kubectl" wait --for condition=Established --timeout=60s crd --all >/dev/null
  "$kubectl" create namespace envoy-gateway-system >/dev/null
  "$kubectl" create serviceaccount default -n envoy-gateway-system >/dev/null

  # Envoy Gateway reading Kubernetes, running Envoy on this host (func-e,
  # with the Envoy of scripts/install-envoy.sh placed where func-e looks).
  mkdir -p "$eg/config" "$eg/data/envoy-versions/$ENVOY_VERSION/bin" "$eg/state" "$eg/run"
  ln -s "$BBR_ENVOY" "$eg/data/envoy-versions/$ENVOY_VERSION/bin/envoy"
  # Its certificates, as files (the xDS server's at /certs, Envoy's under
  # configHome) and as the Secrets it looks for in its namespace.
  "$BBR_ENVOY_GATEWAY" certgen --local --config-home "$eg/config" >"$dir/certgen.log" 2>&1
  local secret
  for secret in envoy-gateway envoy envoy-rate-limit; do
    "$kubectl" create secret generic "$secret" -n envoy-gateway-system \
      --from-file="$eg/config/certs/$secret/ca.crt" --from-file="$eg/config/certs/$secret/tls.crt" \
      --from-file="$eg/config/certs/$secret/tls.key" >/dev/null
  done
  "$kubectl" create secret generic envoy-oidc-hmac -n envoy-gateway-system \
    --from-file="$eg/config/certs/envoy-oidc-hmac/hmac-secret" >/dev/null
  cat >"$eg/envoy-gateway.yaml" <<EOF
apiVersion: gateway.envoyproxy.io/v1alpha1
kind: EnvoyGateway
gateway:
  controllerName: gateway.envoyproxy.io/gatewayclass-controller
logging:
  level:
    default: info
provider:
  type: Custom
  custom:
    resource:
      type: Kubernetes
      kubernetes:
        leaderElection: {disable: true}
        proxyTopologyInjector: {disable: true}
    infrastructure:
      type: Host
      host:
        configHome: $eg/config
        dataHome: $eg/data
        stateHome: $eg/state
        runtimeDir: $eg/run
EOF
  local mounts="$eg/config/certs/envoy-gateway=/certs"
  values="$repo/examples/kubernetes/values-envoy-gateway.yaml"
  if [ "$mode" = module ]; then
    # The Host provider runs Envoy without a pod: the chart patches none
    # (bbr.module.source none), and the script puts libbbr_envoy.so where
    # the chart's EnvoyProxy registers it, and the rules where the module's
    # configuration reads them, in the mount namespace Envoy Gateway starts
    # Envoy in. The chart's EnvoyProxy restates the GatewayClass's Host
    # provider (Envoy Gateway would give it the Kubernetes one, which would
    # win the merge). The chart goes in first, for those two paths.
    values_more=(-f "$repo/examples/kubernetes/values-module.yaml" --set bbr.module.source=none
      --set-json "provider.envoyGateway.envoyProxy={\"provider\": {\"type\": \"Host\", \"host\": {\"envoyVersion\": \"$ENVOY_VERSION\"}}}")
    "$helm" install body-based-router charts/body-based-routing -n default -f "$values" "${values_more[@]}" >/dev/null
    local module_path rules_file
    module_path="$("$kubectl" get envoyproxy body-based-router -o jsonpath='{.spec.dynamicModules[0].source.local.path}')"
    rules_file="$("$kubectl" get envoyextensionpolicy body-based-router -o jsonpath='{.spec.dynamicModule[0].config.rules_file}')"
    mkdir -p "$dir/image"
    cp "$BBR_ENVOY_MODULE" "$dir/image/$(basename "$module_path")"
    until_ok 30 test -s "$work/$provider/rules/rules.yaml" || log "the rules ConfigMap was not copied"
    mounts+=" $dir/image=$(dirname "$module_path") $work/$provider/rules=$(dirname "$rules_file")"
  fi
  bounded "${with_mounts[@]}" "$eg/root" "$PWD" "$mounts" \
    env ENVOY_GATEWAY_NAMESPACE=envoy-gateway-system \
    "$BBR_ENVOY_GATEWAY" server --config-path "$eg/envoy-gateway.yaml" >"$dir/envoy-gateway.log" 2>&1

  # The demo's Gateway, its GatewayClass naming the Envoy to run (module
  # mode: the Gateway names the chart's EnvoyProxy, merged into that one).
  # The GatewayClass and its EnvoyProxy first: a Gateway seen before them
  # gets an Envoy of no version, which func-e would download.
  local gateway_file=examples/kubernetes/gateway-envoy-gateway.yaml
  [ "$mode" = module ] && gateway_file=examples/kubernetes/gateway-envoy-gateway-module.yaml
  awk 'BEGIN { RS = "\n---\n" } NR == 1' "$gateway_file" | apply -f -
  "$kubectl" apply -f - >/dev/null <<EOF
apiVersion: gateway.envoyproxy.io/v1alpha1
kind: EnvoyProxy
metadata:
  name: host
  namespace: envoy-gateway-system
spec:
  provider:
    type: Host
    host:
      envoyVersion: $ENVOY_VERSION
EOF
  "$kubectl" patch gatewayclass envoy-gateway --type=merge -p '{"spec": {"parametersRef":
    {"group": "gateway.envoyproxy.io", "kind": "EnvoyProxy", "name": "host", "namespace": "envoy-gateway-system"}}}' >/dev/null
  apply -f "$gateway_file"

  # Envoy Gateway has no InferencePool backend of its own (Envoy AI Gateway
  # adds it): the demo's routes, with each pool's Service instead.
  local pool
  for pool in gemma3 deepseek-r1; do
    "$kubectl" apply -f - >/dev/null <<EOF
apiVersion: v1
kind: Service
metadata:
  name: $pool
spec:
  selector: {app: $pool}
  ports:
  - {name: http, port: 8000, targetPort: 8000}
EOF
  done
  sed -e 's/^\(\s*\)- group: inference.networking.k8s.io$/\1- group: ""/' \
    -e 's/^\(\s*\)kind: InferencePool$/\1kind: Service\n\1port: 8000/' \
    examples/kubernetes/httproute.yaml >"$dir/httproute.yaml"
  apply -f "$dir/httproute.yaml"
  common_objects_no_route

  if [ "$mode" != module ]; then
    "$helm" install body-based-router charts/body-based-routing -n default -f "$values" >/dev/null
    start_bbr
  fi

  # The listener's port as Envoy Gateway maps it on a host (80 → 10080).
  local port
  for _ in $(seq 1 120); do
    for port in 80 10080; do
      if curl -s -o /dev/null -m 1 "http://127.0.0.1:$port/"; then gateway="127.0.0.1:$port"; break 2; fi
    done
    sleep 0.5
  done
  if [ -z "$gateway" ]; then
    fail "Envoy Gateway started no Envoy listening for the Gateway"
    return
  fi
  run_checks
}

sync_pid=""
values_more=()
for provider in ${BBR_CONTROL_PLANES:-$control_planes}; do
  # mode: ext_proc (bbr-extproc) or module (the -module runs); cp: the
  # control plane.
  mode=ext_proc; cp="$provider"; values_more=()
  case "$provider" in *-module) mode=module; cp="${provider%-module}" ;; esac
  log "$provider: starting"
  mkdir -p "$work/$provider/rules"
  start_cluster
  start_models
  sync_cluster &
  sync_pid=$!; pids+=("$sync_pid")
  case "$cp" in
    istio) run_istio ;;
    envoy-gateway) run_envoy_gateway ;;
    *) log "unknown control plane: $provider"; exit 2 ;;
  esac
  if [ "$failed" -gt 0 ] && [ "${BBR_DEBUG:-0}" = 1 ]; then
    for f in "$work/$provider"/*.log; do echo "--- $f"; tail -n 40 "$f"; done >&2
  fi
  stop_all
  gateway=""
  log "$provider: done after $((SECONDS - started)) s"
done

echo "$passed passed, $failed failed"
[ "$failed" = 0 ]
