#!/usr/bin/env bash
# The deployment checks, against a real Kubernetes API server on loopback:
#
#   - helm lint --strict and helm template for every provider, for the
#     Go chart's own v0.5.1 and v1.5.0 default values, for the payload
#     processor chart's values (its defaults, and a customConfig), and for
#     the module mode (bbr.mode module: the dynamic module inside the
#     gateway's Envoy) on Istio and Envoy Gateway;
#   - server-side apply of the rendered chart and of examples/kubernetes/
#     (the CRDs' schemas and CEL rules run in the API server), for every
#     provider whose CRDs are published as Go modules (GKE's are not: said
#     and skipped);
#   - known-bad values files and a broken HTTPRoute are refused;
#   - the module mode: the EnvoyFilter, the Gateway's parameters (a
#     Deployment overlay, checked as a pod template by the API server, image
#     volume included) and Envoy Gateway's EnvoyProxy and policy are accepted
#     with the Gateways that name them; no bbr-extproc object is rendered;
#   - kubectl auth can-i: the chart's RBAC allows what bbr-extproc needs
#     (configmaps get/list/watch; token and access reviews with metrics
#     auth; list inferencepools and pods with discovery) and nothing more;
#   - the chart's Deployment args start the real bbr-extproc;
#   - the tracing and metrics-auth values: --tracing and the OTEL_*
#     environment, the token-review RBAC and the /metrics reader role;
#   - cargo test --test kubernetes: bbr-extproc follows base-model
#     ConfigMaps through the API server, serves /metrics only to a token
#     the API server reviews and allows, and learns LoRA adapters from the
#     model servers of InferencePools (llm-d-inference-sim processes on
#     loopback, loaded and unloaded while requests are routed).
#
# Tools: scripts/install-k8s-tools.sh (kube-apiserver, kubectl, etcd, helm,
# built from their Go modules and cached under .tools/). CRDs: downloaded
# from their own Go modules at the pinned versions below, never copied
# into this repository. etcd and kube-apiserver listen on 127.0.0.1 only,
# are stopped on exit, and stop by themselves after an hour at most.
# BBR_EXTPROC names the bbr-extproc binary to start (default: a debug
# build). Cargo builds with the whole workspace's features, as
# scripts/test.sh's tests do, so that nothing is built twice.
set -euo pipefail
cd "$(dirname "$0")/.."

GATEWAY_API_VERSION=v1.4.1
INFERENCE_EXTENSION_VERSION=v1.5.0     # InferencePool, inference.networking.k8s.io/v1
INFERENCE_EXTENSION_V0_VERSION=v0.5.1  # InferencePool, inference.networking.x-k8s.io/v1alpha2
ISTIO_API_VERSION=v1.28.0
ENVOY_GATEWAY_VERSION=v1.9.0 # the first with EnvoyExtensionPolicy dynamicModule
PROMETHEUS_OPERATOR_VERSION=v0.85.0

started=$SECONDS
log() { echo "test-kubernetes: $*" >&2; }

eval "$(scripts/install-k8s-tools.sh)"
kubectl="$BBR_KUBECTL"
helm="$BBR_HELM"
log "tools ready after $((SECONDS - started)) s"

work="$(mktemp -d)"
pids=()
stop() {
  # The API server first (it waits on etcd while shutting down), then etcd.
  # Each pid is a `timeout` (which bounds the server's life to an hour even
  # if this script dies) and passes SIGTERM on; a server still there after
  # 10 s is killed.
  local i pid child
  for ((i = ${#pids[@]} - 1; i >= 0; i--)); do
    pid="${pids[$i]}"
    child="$(ps -o pid= --ppid "$pid" 2>/dev/null || true)"
    kill "$pid" 2>/dev/null || continue
    for _ in $(seq 1 100); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
    if kill -0 "$pid" 2>/dev/null; then
      # shellcheck disable=SC2086
      kill -KILL $child "$pid" 2>/dev/null || true
    fi
    wait "$pid" 2>/dev/null || true
  done
  rm -rf "$work"
}
trap stop EXIT

free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }

# --- certificates, keys and an admin token --------------------------------
(
  cd "$work"
  openssl req -x509 -newkey rsa:2048 -nodes -keyout ca.key -out ca.crt -days 2 \
    -subj /CN=bbr-test-ca 2>/dev/null
  openssl req -newkey rsa:2048 -nodes -keyout apiserver.key -out apiserver.csr \
    -subj /CN=kube-apiserver 2>/dev/null
  printf 'subjectAltName=IP:127.0.0.1,DNS:localhost,IP:10.96.0.1\n' >san.ext
  openssl x509 -req -in apiserver.csr -CA ca.crt -CAkey ca.key -CAcreateserial \
    -out apiserver.crt -days 2 -extfile san.ext 2>/dev/null
  openssl genrsa -out sa.key 2048 2>/dev/null
  openssl rsa -in sa.key -pubout -out sa.pub 2>/dev/null
  echo "$(openssl rand -hex 24),admin,admin,system:masters" >tokens.csv
)
token="$(cut -d, -f1 "$work/tokens.csv")"

# --- etcd and kube-apiserver ------------------------------------------------
etcd_port="$(free_port)"; peer_port="$(free_port)"; api_port="$(free_port)"
timeout --kill-after=10 3600 "$BBR_ETCD" --name bbr-test --data-dir "$work/etcd" \
  --listen-client-urls "http://127.0.0.1:$etcd_port" --advertise-client-urls "http://127.0.0.1:$etcd_port" \
  --listen-peer-urls "http://127.0.0.1:$peer_port" --initial-advertise-peer-urls "http://127.0.0.1:$peer_port" \
  --initial-cluster "bbr-test=http://127.0.0.1:$peer_port" --listen-metrics-urls '' \
  --unsafe-no-fsync --log-level error >"$work/etcd.log" 2>&1 &
pids+=($!)
timeout --kill-after=10 3600 "$BBR_KUBE_APISERVER" \
  --etcd-servers "http://127.0.0.1:$etcd_port" \
  --bind-address 127.0.0.1 --advertise-address 127.0.0.1 --secure-port "$api_port" \
  --tls-cert-file "$work/apiserver.crt" --tls-private-key-file "$work/apiserver.key" \
  --client-ca-file "$work/ca.crt" --token-auth-file "$work/tokens.csv" \
  --service-account-issuer https://kubernetes.default.svc.cluster.local \
  --service-account-key-file "$work/sa.pub" --service-account-signing-key-file "$work/sa.key" \
  --authorization-mode RBAC --service-cluster-ip-range 10.96.0.0/16 \
  --allow-privileged=false --enable-priority-and-fairness=false \
  --cert-dir "$work/certs" >"$work/apiserver.log" 2>&1 &
pids+=($!)

export KUBECONFIG="$work/kubeconfig"
cat >"$KUBECONFIG" <<EOF
apiVersion: v1
kind: Config
clusters:
- name: test
  cluster:
    server: https://127.0.0.1:$api_port
    certificate-authority: $work/ca.crt
users:
- name: admin
  user:
    token: $token
contexts:
- name: test
  context: {cluster: test, user: admin, namespace: default}
current-context: test
EOF
ready=0
for _ in $(seq 1 240); do
  if "$kubectl" get --raw /readyz >/dev/null 2>&1; then ready=1; break; fi
  for pid in "${pids[@]}"; do kill -0 "$pid" 2>/dev/null || break 2; done
  sleep 0.5
done
if [ "$ready" != 1 ]; then
  log "the API server did not become ready"; tail -n 30 "$work/etcd.log" "$work/apiserver.log" >&2; exit 1
fi
# The default namespace and the bootstrap RBAC roles come a moment later.
for _ in $(seq 1 120); do
  "$kubectl" get namespace default >/dev/null 2>&1 &&
    "$kubectl" get clusterrole admin >/dev/null 2>&1 && break
  sleep 0.5
done
log "API server $("$kubectl" version -o json | sed -n 's/.*"gitVersion": "\(.*\)".*/\1/p' | tail -n 1) ready on 127.0.0.1:$api_port after $((SECONDS - started)) s"

# --- CRDs from their Go modules -------------------------------------------
module_dir() {
  (cd "$work" && GOFLAGS=-mod=mod go mod download -json "$1" |
    sed -n 's/^[[:space:]]*"Dir": "\(.*\)",$/\1/p')
}
gw="$(module_dir "sigs.k8s.io/gateway-api@$GATEWAY_API_VERSION")"
gie="$(module_dir "sigs.k8s.io/gateway-api-inference-extension@$INFERENCE_EXTENSION_VERSION")"
gie0="$(module_dir "sigs.k8s.io/gateway-api-inference-extension@$INFERENCE_EXTENSION_V0_VERSION")"
istio="$(module_dir "istio.io/api@$ISTIO_API_VERSION")"
eg="$(module_dir "github.com/envoyproxy/gateway@$ENVOY_GATEWAY_VERSION")"
prom="$(module_dir "github.com/prometheus-operator/prometheus-operator@$PROMETHEUS_OPERATOR_VERSION")"
crds=(
  "$gw/config/crd/standard"
  "$gie/config/crd/bases/inference.networking.k8s.io_inferencepools.yaml"
  "$gie0/config/crd/bases/inference.networking.x-k8s.io_inferencepools.yaml"
  "$istio/kubernetes/customresourcedefinitions.gen.yaml"
  "$eg/charts/gateway-helm/charts/crds/crds/generated/gateway.envoyproxy.io_envoyextensionpolicies.yaml"
  "$eg/charts/gateway-helm/charts/crds/crds/generated/gateway.envoyproxy.io_httproutefilters.yaml"
  "$eg/charts/gateway-helm/charts/crds/crds/generated/gateway.envoyproxy.io_envoyproxies.yaml"
  "$prom/example/prometheus-operator-crd/monitoring.coreos.com_servicemonitors.yaml"
)
for crd in "${crds[@]}"; do
  [ -e "$crd" ] || { log "CRD source missing: $crd"; exit 1; }
  "$kubectl" apply --server-side -f "$crd" >/dev/null
done
"$kubectl" wait --for condition=Established --timeout=60s crd --all >/dev/null
log "CRDs installed: Gateway API $GATEWAY_API_VERSION, InferencePool $INFERENCE_EXTENSION_VERSION and $INFERENCE_EXTENSION_V0_VERSION, Istio $ISTIO_API_VERSION, Envoy Gateway $ENVOY_GATEWAY_VERSION, ServiceMonitor $PROMETHEUS_OPERATOR_VERSION"
log "skipped: GKE's CRDs (GCPRoutingExtension, HealthCheckPolicy) are not published; the gke rendering is linted and templated, and its other objects applied"

# --- the checks -------------------------------------------------------------
passed=0; failed=0
check() { # check NAME COMMAND...: runs COMMAND, counts and reports it
  local name="$1"; shift
  if out="$("$@" 2>&1)"; then
    passed=$((passed + 1)); echo "ok     $name"
  else
    failed=$((failed + 1)); echo "FAILED $name"; echo "$out" | tail -n 20 | sed 's/^/       /'
  fi
}
refused() { # refused NAME EXPECTED_TEXT COMMAND...: COMMAND must fail, saying EXPECTED_TEXT
  local name="$1" expected="$2"; shift 2
  if out="$("$@" 2>&1)"; then
    failed=$((failed + 1)); echo "FAILED $name: accepted"
  elif ! grep -qF -- "$expected" <<<"$out"; then
    failed=$((failed + 1)); echo "FAILED $name: refused without saying '$expected':"; echo "$out" | tail -n 10 | sed 's/^/       /'
  else
    passed=$((passed + 1)); echo "ok     $name (refused: $(grep -F -m1 -- "$expected" <<<"$out" | sed 's/^[[:space:]]*//' | cut -c1-160))"
  fi
}

chart=charts/body-based-routing
examples=examples/kubernetes
values="$work/values"; mkdir -p "$values"

# The Go chart's default values files, v0.5.1 and v1.5.0, as values.
cat >"$values/go-v0.5.1.yaml" <<'EOF'
bbr:
  name: body-based-router
  replicas: 1
  image:
    name: bbr
    hub: registry.k8s.io/gateway-api-inference-extension
    tag: v0.5.1
    pullPolicy: Always
  port: 9004
  healthCheckPort: 9005
provider:
  name: none
inferenceGateway:
  name: inference-gateway
EOF
cat >"$values/go-v1.5.0.yaml" <<'EOF'
bbr:
  name: body-based-router
  replicas: 1
  image:
    registry: registry.k8s.io
    repository: gateway-api-inference-extension/bbr
    tag: v1.5.0
    pullPolicy: Always
  port: 9004
  healthCheckPort: 9005
  multiNamespace: false
  flags:
    v: 3
  plugins:
    - type: body-field-to-header
      name: model-extractor
      json:
        fieldName: model
        headerName: X-Gateway-Model-Name
    - type: base-model-to-header
      name: base-model-mapper
  tracing:
    enabled: false
    otelServiceName: "gateway-api-inference-extension/bbr"
    otelExporterEndpoint: "http://localhost:4317"
    sampling:
      sampler: "parentbased_traceidratio"
      samplerArg: "0.1"
provider:
  name: none
  istio:
    envoyFilter:
      operation: INSERT_FIRST
      anchorSubFilter: ""
inferenceGateway:
  name: inference-gateway
EOF
printf 'provider:\n  name: none\n' >"$values/none.yaml"
cp "$examples/values-gke.yaml" "$values/gke.yaml"
cp "$examples/values-istio.yaml" "$values/istio.yaml"
cp "$examples/values-envoy-gateway.yaml" "$values/envoy-gateway.yaml"
# The module mode: the examples' provider values with values-module.yaml
# (below); and every other module value: the module already in the proxy,
# an anchor, the module's options, no rules.
cat >"$values/module-options.yaml" <<'EOF'
provider: {name: istio, istio: {envoyFilter: {operation: INSERT_BEFORE, anchorSubFilter: envoy.filters.http.router}}}
bbr:
  mode: module
  module:
    source: none
    directory: /opt/bbr
    config: {policy: fast, max_body: 33554432, fail_open: [model_not_found], body_fields: [user=x-llm-user], serve_models: true}
EOF
cat >"$values/everything.yaml" <<'EOF'
provider: {name: istio, istio: {envoyFilter: {operation: INSERT_BEFORE, anchorSubFilter: envoy.filters.http.router}}}
bbr:
  multiNamespace: true
  secureServing: true
  tls: {secretName: bbr-tls}
  autoscaling: {enabled: true}
  serviceMonitor: {enabled: true}
  flags: {v: 2, policy: fast, fail-open: "invalid_json,too_large", tracing: false, enable-pprof: false}
  plugins:
    - {type: body-field-to-header, name: model, json: {fieldName: model, headerName: X-Gateway-Model-Name}}
    - {type: body-field-to-header, name: user, json: {fieldName: user, headerName: X-LLM-User}}
    - {type: base-model-to-header, name: base-model-mapper}
  rules:
    rules: [{name: chatbot, match: {model: {exact: chatbot}}, pool: gemma3}]
EOF

# Traces and /metrics behind tokens, without the ConfigMap watch.
cat >"$values/observability.yaml" <<'EOF'
bbr:
  plugins:
    - {type: body-field-to-header, name: model-extractor, json: {fieldName: model, headerName: X-Gateway-Model-Name}}
  tracing:
    enabled: true
    otelExporterEndpoint: "http://otel-collector.monitoring:4317"
    sampling: {sampler: parentbased_traceidratio, samplerArg: 0.5}
  metricsEndpointAuth:
    enabled: true
    readers: [{name: prometheus, namespace: monitoring}]
  serviceMonitor: {enabled: true}
EOF

# The payload processor chart's default values file, as values; and its
# customConfig (the payload processor's documented default pipeline), models,
# env and event toggles.
cat >"$values/payload-processor.yaml" <<'EOF'
payloadProcessor:
  name: payload-processor
  replicas: 1
  image:
    registry: ghcr.io/llm-d
    repository: llm-d-inference-payload-processor
    tag: main
    pullPolicy: IfNotPresent
  port: 9004
  healthCheckPort: 9005
  multiNamespace: false
  flags:
    v: 3
  env: []
  customConfig: {}
  tracing:
    enabled: false
    otelServiceName: "inference.llm-d.ai/inference-payload-processor"
    otelExporterEndpoint: "http://localhost:4317"
    sampling:
      sampler: "parentbased_traceidratio"
      samplerArg: "0.1"
provider:
  name: none
  supportedEvents:
    requestHeaders: true
    requestBody: true
    requestTrailers: true
    responseHeaders: true
    responseBody: true
    responseTrailers: true
  istio:
    envoyFilter:
      operation: INSERT_FIRST
      anchorSubFilter: ""
inferenceGateway:
  name: inference-gateway
EOF
cat >"$values/payload-processor-config.yaml" <<'EOF'
payloadProcessor:
  env:
    - {name: GATEWAY_NAME, value: inference-gateway}
  customConfig:
    plugins:
    - type: body-field-to-header
      parameters:
        fieldName: model
        headerName: X-Gateway-Model-Name
    - type: base-model-to-header
    profiles:
    - name: default
      plugins:
        request:
        - pluginRef: body-field-to-header
        - pluginRef: base-model-to-header
  models:
    models:
    - name: my-model
      pricing: {inputPerMillion: 2.5, outputPerMillion: 7.5}
provider:
  name: istio
  supportedEvents: {responseHeaders: true, requestTrailers: false}
EOF

# Models learned from the InferencePools' servers.
cat >"$values/discovery.yaml" <<'EOF'
bbr:
  discovery: {inferencePools: true, periodSeconds: 1, graceSeconds: 30, serveModels: true}
EOF

for v in none gke istio envoy-gateway go-v0.5.1 go-v1.5.0 everything observability payload-processor payload-processor-config discovery; do
  check "helm lint --strict ($v)" "$helm" lint --strict "$chart" -f "$values/$v.yaml"
  check "helm template ($v)" sh -c "'$helm' template body-based-router '$chart' -n bbr-${v//./-} -f '$values/$v.yaml' >'$work/$v.yaml'"
done
for v in istio envoy-gateway; do
  check "helm lint --strict (module-$v)" "$helm" lint --strict "$chart" -f "$values/$v.yaml" -f "$examples/values-module.yaml"
  check "helm template (module-$v)" sh -c "'$helm' template body-based-router '$chart' -n bbr-module-$v -f '$values/$v.yaml' -f '$examples/values-module.yaml' >'$work/module-$v.yaml'"
done
check "helm lint --strict (module-options)" "$helm" lint --strict "$chart" -f "$values/module-options.yaml"
check "helm template (module-options)" sh -c "'$helm' template body-based-router '$chart' -n bbr-module-options -f '$values/module-options.yaml' >'$work/module-options.yaml'"
same_as_default() { # the renderings of bbr.mode ext_proc are those of the defaults
  local v
  for v in none gke istio envoy-gateway everything observability payload-processor-config; do
    "$helm" template body-based-router "$chart" -n "bbr-$v" -f "$values/$v.yaml" --set bbr.mode=ext_proc |
      cmp -s - "$work/$v.yaml" || { echo "$v differs"; return 1; }
  done
}
check "bbr.mode ext_proc (the default, set) renders the same objects for every provider" same_as_default

# The known-bad values: refused by the schema, saying where.
printf 'bbr:\n  metricsEndpointAuth:\n    enabled: true\n    readers: [{name: prometheus}]\n' >"$values/bad-reader.yaml"
refused "a metrics reader without a namespace is refused" "/bbr/metricsEndpointAuth/readers/0" \
  "$helm" template x "$chart" -f "$values/bad-reader.yaml"
refused "--enable-pprof=true is refused (no pprof endpoint)" "enable-pprof" \
  "$helm" template x "$chart" --set bbr.flags.enable-pprof=true
printf 'bbr:\n  plugins:\n    - type: prefix-cache-scorer\n      name: p\n' >"$values/bad-plugin.yaml"
refused "values with an unknown plugin are refused" "/bbr/plugins" \
  "$helm" template x "$chart" -f "$values/bad-plugin.yaml"
printf 'payloadProcessor:\n  customConfig:\n    plugins: [{type: model-selector}]\n    profiles: [{name: p}]\n' >"$values/bad-ipp-plugin.yaml"
refused "a payload processor config naming a plugin bbr does not run is refused" "/payloadProcessor/customConfig/plugins/0/type" \
  "$helm" template x "$chart" -f "$values/bad-ipp-plugin.yaml"
refused "a payload processor config with a second profile is refused" "/payloadProcessor/customConfig/profiles" \
  "$helm" template x "$chart" --set-json 'payloadProcessor.customConfig={"profiles":[{"name":"a"},{"name":"b"}]}'
refused "a provider bbr has no manifests for is refused" "/provider/name" \
  "$helm" template x "$chart" --set provider.name=kgateway
refused "a Go logging flag bbr cannot honour is refused" "zap-devel" \
  "$helm" template x "$chart" --set bbr.flags.zap-devel=true
refused "INSERT_BEFORE without an anchor is refused" "anchorSubFilter" \
  "$helm" template x "$chart" --set provider.name=istio --set provider.istio.envoyFilter.operation=INSERT_BEFORE
refused "the module mode on GKE is refused (its gateway loads no module)" "/provider/name" \
  "$helm" template x "$chart" --set provider.name=gke --set bbr.mode=module
refused "the module mode without a provider is refused" "/provider/name" \
  "$helm" template x "$chart" --set bbr.mode=module
refused "a module option the module does not have is refused" "/bbr/module/config" \
  "$helm" template x "$chart" --set provider.name=istio --set bbr.mode=module --set bbr.module.config.grpc_port=1
refused "a module directory that is not absolute is refused" "/bbr/module/directory" \
  "$helm" template x "$chart" --set provider.name=istio --set bbr.mode=module --set bbr.module.directory=lib
refused "model discovery in module mode is refused (it runs in bbr-extproc)" "/bbr/discovery/inferencePools" \
  "$helm" template x "$chart" --set provider.name=istio --set bbr.mode=module --set bbr.discovery.inferencePools=true

# What each provider renders.
has() { grep -q -- "$2" "$work/$1.yaml"; }
check "gke renders GCPRoutingExtension (FullDuplexStreamed) and HealthCheckPolicy" sh -c \
  "grep -q 'kind: GCPRoutingExtension' '$work/gke.yaml' && grep -q 'requestBodySendMode: \"FullDuplexStreamed\"' '$work/gke.yaml' && grep -q 'kind: HealthCheckPolicy' '$work/gke.yaml'"
check "istio renders EnvoyFilter and DestinationRule" sh -c \
  "grep -q 'kind: EnvoyFilter' '$work/istio.yaml' && grep -q 'operation: INSERT_FIRST' '$work/istio.yaml' && grep -q 'kind: DestinationRule' '$work/istio.yaml'"
check "envoy-gateway renders EnvoyExtensionPolicy over h2c" sh -c \
  "grep -q 'kind: EnvoyExtensionPolicy' '$work/envoy-gateway.yaml' && grep -q 'appProtocol: kubernetes.io/h2c' '$work/envoy-gateway.yaml' && grep -q -- '--secure-serving=false' '$work/envoy-gateway.yaml'"
check "envoy-gateway renders the catch-all HTTPRoute and its 404 HTTPRouteFilter" sh -c \
  "grep -q 'name: body-based-router-catch-all' '$work/envoy-gateway.yaml' && grep -q 'kind: HTTPRouteFilter' '$work/envoy-gateway.yaml' && grep -q '\"code\":\"no_route\"' '$work/envoy-gateway.yaml'"
check "istio renders envoy_grpc.authority, the Service's DNS name" \
  grep -q 'authority: body-based-router.bbr-istio.svc.cluster.local' "$work/istio.yaml"
check "none renders no provider objects" sh -c \
  "! grep -qE 'kind: (GCPRoutingExtension|EnvoyFilter|EnvoyExtensionPolicy|DestinationRule)' '$work/none.yaml'"
check "without base-model-to-header: no watch, no RBAC, no token" sh -c \
  "'$helm' template x '$chart' --set-json 'bbr.plugins=[{\"type\":\"body-field-to-header\",\"name\":\"m\",\"json\":{\"fieldName\":\"model\",\"headerName\":\"X-Gateway-Model-Name\"}}]' >'$work/no-watch.yaml' && ! grep -qE 'kind: (Role|ClusterRole)\$|base-model-configmaps' '$work/no-watch.yaml' && grep -q 'automountServiceAccountToken: false' '$work/no-watch.yaml'"
check "everything renders the plugins as --plugin, TLS mount, HPA and ServiceMonitor" sh -c \
  "grep -q -- '--plugin=body-field-to-header:user:.*X-LLM-User' '$work/everything.yaml' && grep -q -- '--cert-path=/etc/bbr/tls' '$work/everything.yaml' && grep -q 'kind: HorizontalPodAutoscaler' '$work/everything.yaml' && grep -q 'kind: ServiceMonitor' '$work/everything.yaml' && grep -q 'kind: ClusterRole' '$work/everything.yaml'"
check "tracing renders --tracing=true and the Go chart's OTEL_* environment" sh -c \
  "grep -q -- '--tracing=true' '$work/observability.yaml' && grep -A1 'name: OTEL_EXPORTER_OTLP_ENDPOINT' '$work/observability.yaml' | grep -q 'otel-collector.monitoring:4317' && grep -A1 'name: OTEL_TRACES_SAMPLER_ARG' '$work/observability.yaml' | grep -q '\"0.5\"' && grep -q 'name: OTEL_SERVICE_NAME' '$work/observability.yaml' && grep -q 'k8s.pod.name=\$(OTEL_RESOURCE_ATTRIBUTES_POD_NAME)' '$work/observability.yaml'"
check "metrics auth renders the flag, the review RBAC, the reader role and a bearer token for the ServiceMonitor" sh -c \
  "grep -q -- '--metrics-endpoint-auth=true' '$work/observability.yaml' && grep -q 'tokenreviews' '$work/observability.yaml' && grep -q 'subjectaccessreviews' '$work/observability.yaml' && grep -q 'nonResourceURLs: \[\"/metrics\"\]' '$work/observability.yaml' && grep -q 'bearerTokenFile: /var/run/secrets/kubernetes.io/serviceaccount/token' '$work/observability.yaml' && grep -c 'automountServiceAccountToken: true' '$work/observability.yaml' | grep -q 2 && ! grep -q base-model-configmaps '$work/observability.yaml'"
check "the Go v1.5.0 defaults render neither tracing nor metrics auth" sh -c \
  "! grep -qE -- '--tracing|OTEL_|--metrics-endpoint-auth|tokenreviews' '$work/go-v1.5.0.yaml'"
check "the payload processor's values name the Deployment and keep the default plugins" sh -c \
  "grep -q 'name: payload-processor\$' '$work/payload-processor.yaml' && grep -q -- '--plugin=base-model-to-header' '$work/payload-processor.yaml' && grep -q 'image: \"ghcr.io/llm-d/llm-d-inference-payload-processor:main\"' '$work/payload-processor.yaml'"
check "customConfig renders the PayloadProcessorConfig, --config-file, models.json, env, RBAC and the event toggles" sh -c \
  "grep -q 'kind: PayloadProcessorConfig' '$work/payload-processor-config.yaml' && grep -q -- '--config-file=/config/config.yaml' '$work/payload-processor-config.yaml' && ! grep -q -- '--plugin' '$work/payload-processor-config.yaml' && grep -q 'models.json' '$work/payload-processor-config.yaml' && grep -q 'name: GATEWAY_NAME' '$work/payload-processor-config.yaml' && grep -q 'kind: Role\$' '$work/payload-processor-config.yaml' && grep -q 'response_header_mode: \"SEND\"' '$work/payload-processor-config.yaml' && grep -q 'request_trailer_mode: \"SKIP\"' '$work/payload-processor-config.yaml'"
check "v0.5.1 image spelling (hub/name:tag) is honoured" \
  grep -q 'image: "registry.k8s.io/gateway-api-inference-extension/bbr:v0.5.1"' "$work/go-v0.5.1.yaml"

# The module mode: what each provider renders.
no_extproc_objects() { # nothing of bbr-extproc: no Deployment, Service, RBAC, ext_proc filter
  ! grep -qE 'kind: (Deployment|Service|ServiceAccount|Role|ClusterRole|RoleBinding|ClusterRoleBinding|DestinationRule|PodDisruptionBudget|HorizontalPodAutoscaler)$|ExternalProcessor|extProc:' "$1"
}
module_istio_renders() {
  local f="$work/module-istio.yaml"
  grep -q 'type.googleapis.com/envoy.extensions.filters.http.dynamic_modules.v3.DynamicModuleFilter' "$f" &&
    grep -q 'operation: INSERT_FIRST' "$f" && grep -q 'name: bbr_envoy' "$f" &&
    grep -qF 'value: "{\"rules_file\":\"/etc/bbr/rules/rules.yaml\"}"' "$f" &&
    grep -q 'name: body-based-router-gateway' "$f" &&
    grep -A1 'name: ENVOY_DYNAMIC_MODULES_SEARCH_PATH' "$f" | grep -q '"/var/lib/bbr-module"' &&
    grep -q 'reference: "ghcr.io/bbr-rs/bbr-extproc:' "$f" &&
    grep -q 'name: body-based-router-rules' "$f" && grep -q 'base_model: google/gemma-3-27b-it' "$f" &&
    no_extproc_objects "$f"
}
check "module (istio): the module's EnvoyFilter where ext_proc's goes, its rules file, the Gateway's parameters (image volume, rules, search path), nothing of bbr-extproc" \
  module_istio_renders
module_options_render() {
  local f="$work/module-options.yaml"
  grep -q 'operation: INSERT_BEFORE' "$f" && grep -A1 'subFilter:' "$f" | grep -q 'envoy.filters.http.router' &&
    grep -qF '\"policy\":\"fast\"' "$f" && grep -qF '\"body_fields\":[\"user=x-llm-user\"]' "$f" &&
    grep -qF '\"max_body\":33554432' "$f" && ! grep -q 'rules_file' "$f" &&
    ! grep -q 'kind: ConfigMap' "$f" && no_extproc_objects "$f"
}
check "module (options): the anchor, the module's options as its JSON, no rules, no parameters with source none" \
  module_options_render
module_envoy_gateway_renders() {
  local f="$work/module-envoy-gateway.yaml"
  grep -q 'kind: EnvoyProxy' "$f" && grep -q 'mergeType: StrategicMerge' "$f" &&
    grep -q 'path: /var/lib/bbr-module/libbbr_envoy.so' "$f" &&
    grep -q 'reference: ghcr.io/bbr-rs/bbr-extproc:' "$f" && grep -q 'dynamicModule:' "$f" &&
    grep -qF 'config: {"rules_file":"/etc/bbr/rules/rules.yaml"}' "$f" &&
    grep -q 'name: body-based-router-catch-all' "$f" && no_extproc_objects "$f"
}
check "module (envoy-gateway): the EnvoyProxy registering the module (image volume, rules), the policy's dynamicModule, the catch-all route, nothing of bbr-extproc" \
  module_envoy_gateway_renders
envoy_proxy_merged() { # provider.envoyGateway.envoyProxy over the chart's EnvoyProxy spec
  "$helm" template body-based-router "$chart" -f "$values/envoy-gateway.yaml" -f "$examples/values-module.yaml" \
    --set-json 'provider.envoyGateway.envoyProxy={"provider": {"kubernetes": {"envoyDeployment": {"replicas": 3}}}, "concurrency": 2}' \
    --show-only templates/envoy-gateway.yaml >"$work/module-envoy-proxy.yaml" || return 1
  grep -q 'replicas: 3' "$work/module-envoy-proxy.yaml" && grep -q 'concurrency: 2' "$work/module-envoy-proxy.yaml" &&
    grep -q 'reference: ghcr.io/bbr-rs/bbr-extproc:' "$work/module-envoy-proxy.yaml" &&
    grep -q 'path: /var/lib/bbr-module/libbbr_envoy.so' "$work/module-envoy-proxy.yaml"
}
check "module (envoy-gateway): provider.envoyGateway.envoyProxy is merged over the chart's EnvoyProxy spec" envoy_proxy_merged

# Server-side apply, each rendering in its own namespace.
apply_ns() { # apply_ns NS FILE...
  local ns="$1"; shift
  "$kubectl" create namespace "$ns" --dry-run=client -o yaml | "$kubectl" apply --server-side -f - >/dev/null
  local f; for f in "$@"; do "$kubectl" apply --server-side -n "$ns" -f "$f" || return 1; done
}
# GKE: every object but the networking.gke.io ones.
awk 'BEGIN { RS = "\n---\n"; ORS = "\n---\n" } !/apiVersion: networking\.gke\.io\// { print }' \
  "$work/gke.yaml" >"$work/gke-applicable.yaml"
check "the gke rendering without its GKE objects keeps the Deployment" sh -c \
  "grep -q 'kind: Deployment' '$work/gke-applicable.yaml' && ! grep -q 'networking.gke.io' '$work/gke-applicable.yaml'"
check "apply: chart (none) and the demo (v1 InferencePool)" apply_ns bbr-none "$work/none.yaml" \
  "$examples/inferencepools.yaml" "$examples/httproute.yaml" "$examples/base-models.yaml" "$examples/gateway-istio.yaml"
check "apply: chart (istio) and its Gateway" apply_ns bbr-istio "$work/istio.yaml" "$examples/gateway-istio.yaml" \
  "$examples/inferencepools.yaml" "$examples/httproute.yaml"
check "apply: chart (envoy-gateway) and its GatewayClass and Gateway" apply_ns bbr-envoy-gateway \
  "$work/envoy-gateway.yaml" "$examples/gateway-envoy-gateway.yaml" "$examples/inferencepools.yaml" "$examples/httproute.yaml"
check "apply: chart (gke) without the GKE objects, and its Gateway" apply_ns bbr-gke "$work/gke-applicable.yaml" \
  "$examples/gateway-gke.yaml" "$examples/inferencepools.yaml" "$examples/httproute.yaml"
check "apply: the demo's HTTPRoute as written (inference.networking.x-k8s.io)" apply_ns bbr-v1alpha2 \
  "$examples/gateway-istio.yaml" "$examples/inferencepools-v1alpha2.yaml" "$examples/httproute-v1alpha2.yaml"
check "apply: the Go chart's v0.5.1 values" apply_ns bbr-go-v0-5-1 "$work/go-v0.5.1.yaml"
check "apply: the Go chart's v1.5.0 values" apply_ns bbr-go-v1-5-0 "$work/go-v1.5.0.yaml"
check "apply: the payload processor chart's values" apply_ns bbr-payload-processor "$work/payload-processor.yaml"
check "apply: the payload processor's customConfig, models and env" apply_ns bbr-payload-processor-config \
  "$work/payload-processor-config.yaml"
check "apply: everything on (TLS secret, HPA, ServiceMonitor, rules, multiNamespace)" apply_ns bbr-everything "$work/everything.yaml"
check "apply: tracing and metrics auth (ClusterRoles, bindings, ServiceMonitor with a bearer token)" apply_ns bbr-observability "$work/observability.yaml"
check "discovery renders its flags and a Role to list inferencepools and pods" sh -c \
  "grep -q -- '--discover-inference-pools' '$work/discovery.yaml' && grep -q -- '--discovery-period-secs=1' '$work/discovery.yaml' && grep -q -- '--discovery-grace-secs=30' '$work/discovery.yaml' && grep -q -- '--serve-models' '$work/discovery.yaml' && grep -q 'pool-reader' '$work/discovery.yaml' && ! grep -q -- '--discover-inference-pools' '$work/none.yaml'"
check "apply: discovery (the pool reader Role) and the demo's InferencePools" apply_ns bbr-discovery \
  "$work/discovery.yaml" "$examples/inferencepools.yaml"
check "apply: module mode (istio) and the Gateway naming its parameters" apply_ns bbr-module-istio \
  "$work/module-istio.yaml" "$examples/gateway-istio-module.yaml" "$examples/inferencepools.yaml" "$examples/httproute.yaml"
check "apply: module mode (envoy-gateway): EnvoyProxy with its image volume, the policy's dynamicModule, the Gateway naming the EnvoyProxy" \
  apply_ns bbr-module-envoy-gateway "$work/module-envoy-gateway.yaml" "$examples/gateway-envoy-gateway-module.yaml" \
  "$examples/inferencepools.yaml" "$examples/httproute.yaml"
check "apply: module mode with its options (source none)" apply_ns bbr-module-options "$work/module-options.yaml"
# The Gateway's parameters as istiod uses them: a strategic merge patch of
# the Deployment it makes for the Gateway. Patched into a Deployment of the
# same shape (kubectl's strategic merge, as istiod's), the API server takes
# the pod template: the image volume, the mounts, the environment.
parameters_overlay_valid() {
  local overlay
  overlay="$("$kubectl" -n bbr-module-istio get configmap body-based-router-gateway -o jsonpath='{.data.deployment}')" ||
    return 1
  cat >"$work/gateway-deployment.json" <<'EOF'
{"apiVersion": "apps/v1", "kind": "Deployment", "metadata": {"name": "inference-gateway-istio"},
 "spec": {"selector": {"matchLabels": {"app": "inference-gateway"}},
  "template": {"metadata": {"labels": {"app": "inference-gateway"}},
   "spec": {"containers": [{"name": "istio-proxy", "image": "docker.io/istio/proxyv2:1.29.0",
     "volumeMounts": [{"name": "istio-data", "mountPath": "/var/lib/istio/data"}]}],
    "volumes": [{"name": "istio-data", "emptyDir": {}}]}}}}
EOF
  "$kubectl" patch --local -f "$work/gateway-deployment.json" --type strategic -p "$overlay" -o json \
    >"$work/gateway-deployment-patched.json" || return 1
  grep -q '"reference": "ghcr.io/bbr-rs/bbr-extproc:' "$work/gateway-deployment-patched.json" &&
    grep -q '"mountPath": "/var/lib/istio/data"' "$work/gateway-deployment-patched.json" &&
    grep -q '"mountPath": "/etc/bbr/rules"' "$work/gateway-deployment-patched.json" ||
    { cat "$work/gateway-deployment-patched.json"; return 1; }
  "$kubectl" apply --server-side --dry-run=server -n bbr-module-istio -f "$work/gateway-deployment-patched.json"
}
check "module (istio): the Gateway's parameters merge into a gateway Deployment the API server accepts (image volume, mounts, search path)" \
  parameters_overlay_valid
check "the rules ConfigMap holds the rule table" sh -c \
  "'$kubectl' -n bbr-everything get configmap body-based-router-rules -o jsonpath='{.data.rules\\.yaml}' | grep -q 'pool: gemma3'"

# A broken HTTPRoute: a path that does not start with '/'.
sed 's|value: /$|value: v1|' "$examples/httproute.yaml" >"$work/broken-httproute.yaml"
check "the broken HTTPRoute differs from the good one" sh -c "! cmp -s '$examples/httproute.yaml' '$work/broken-httproute.yaml'"
refused "a broken HTTPRoute is refused by the API server" "Invalid value" \
  "$kubectl" apply --server-side -n bbr-none -f "$work/broken-httproute.yaml"
# A broken EnvoyExtensionPolicy: failOpen with full duplex (a CEL rule).
sed 's/failOpen: false/failOpen: true/' "$work/envoy-gateway.yaml" >"$work/broken-eg.yaml"
refused "full duplex with failOpen is refused by the EnvoyExtensionPolicy CEL rule" "FailOpen must be false" \
  "$kubectl" apply --server-side -n bbr-envoy-gateway -f "$work/broken-eg.yaml"

# RBAC: what the ServiceAccount may do.
can() { "$kubectl" auth can-i --as="system:serviceaccount:$1:body-based-router-body-based-router" "${@:2}"; }
cannot() { ! can "$@"; }
for verb in get list watch; do
  check "RBAC: the ServiceAccount may $verb configmaps" can bbr-none "$verb" configmaps -n bbr-none
done
for what in "create configmaps" "update configmaps" "patch configmaps" "delete configmaps" "get secrets" "list pods" "list configmaps --all-namespaces"; do
  # shellcheck disable=SC2086
  check "RBAC: the ServiceAccount may not $what" cannot bbr-none $what -n bbr-none
done
check "RBAC: the ServiceAccount may not list configmaps in another namespace" cannot bbr-none list configmaps -n bbr-istio
check "RBAC (discovery): may list inferencepools" can bbr-discovery list inferencepools.inference.networking.k8s.io -n bbr-discovery
check "RBAC (discovery): may list pods" can bbr-discovery list pods -n bbr-discovery
for what in "watch pods" "get secrets" "list pods -n bbr-none" "create inferencepools.inference.networking.k8s.io"; do
  # shellcheck disable=SC2086
  check "RBAC (discovery): may not $what" cannot bbr-discovery $what
done
check "RBAC (multiNamespace): may list configmaps in every namespace" can bbr-everything list configmaps --all-namespaces
check "RBAC (multiNamespace): may not get secrets" cannot bbr-everything get secrets -n bbr-none
check "RBAC (metrics auth): may create tokenreviews" can bbr-observability create tokenreviews.authentication.k8s.io
check "RBAC (metrics auth): may create subjectaccessreviews" can bbr-observability create subjectaccessreviews.authorization.k8s.io
check "RBAC (metrics auth, no watch): may not list configmaps" cannot bbr-observability list configmaps -n bbr-observability
check "RBAC (metrics auth): the listed reader may get /metrics" \
  "$kubectl" auth can-i --as=system:serviceaccount:monitoring:prometheus get /metrics
check "RBAC (metrics auth): another ServiceAccount may not get /metrics" sh -c \
  "! '$kubectl' auth can-i --as=system:serviceaccount:monitoring:grafana get /metrics"

# The chart's args start the real binary (ports moved to free ones):
# BBR_EXTPROC names one (scripts/test.sh passes the one its tests built),
# else a debug build.
if [ -n "${BBR_EXTPROC:-}" ]; then
  binary="$BBR_EXTPROC"
else
  binary="${CARGO_TARGET_DIR:-target}/debug/bbr-extproc"
  nice -n 10 cargo build -q -p bbr-extproc
fi
# The args of a rendered Deployment (one a line) as a local run takes them:
# on 127.0.0.1, every port moved to a free one.
local_argv() {
  local a
  echo --address
  echo 127.0.0.1
  while IFS= read -r a; do
    case "$a" in
      --grpc-port=*|--grpc-health-port=*|--metrics-port=*) echo "${a%%=*}=0" ;;
      *) echo "$a" ;;
    esac
  done <<<"$1"
}
# Starts the real bbr-extproc with the args of namespace NS's rendered
# Deployment (bounded: 60 s), waits up to 20 s for PATTERN in its log
# FILE, and stops it.
run_deployment_args() { # ns pattern file
  local args
  args="$("$kubectl" -n "$1" get deployment body-based-router \
    -o jsonpath='{range .spec.template.spec.containers[0].args[*]}{@}{"\n"}{end}')" || return 1
  local -a argv
  mapfile -t argv < <(local_argv "$args")
  echo "args: ${argv[*]}"
  NAMESPACE="$1" timeout 60 "$binary" "${argv[@]}" >"$3" 2>&1 &
  local pid=$!
  for _ in $(seq 1 200); do
    grep -q "$2" "$3" && break
    kill -0 "$pid" 2>/dev/null || break
    sleep 0.1
  done
  kill "$pid" 2>/dev/null; wait "$pid" 2>/dev/null || true
}
# Listening, then the ConfigMaps listed.
start_with_chart_args() {
  local out="$work/chart-args.log"
  run_deployment_args bbr-go-v1-5-0 'base-model ConfigMaps listed' "$out" || return 1
  grep -q 'bbr-extproc listening' "$out" && grep -q 'base-model ConfigMaps listed' "$out" ||
    { cat "$out"; return 1; }
}
check "the chart's Deployment args start bbr-extproc, which lists the ConfigMaps" start_with_chart_args

# The discovery values' args: bbr-extproc reads the namespace's
# InferencePools (the demo's two, no pods yet).
discovery_args_read_pools() {
  local out="$work/discovery-args.log"
  run_deployment_args bbr-discovery 'InferencePool endpoints changed' "$out" || return 1
  grep 'InferencePool endpoints changed' "$out" | grep -q 'gemma3' || { cat "$out"; return 1; }
}
check "the discovery values' args start bbr-extproc, which reads the InferencePools" discovery_args_read_pools

# The customConfig rendered into its ConfigMap starts bbr-extproc with the
# chart's args (--config-file pointed at a copy), and its
# base-model-to-header plugin lists the ConfigMaps of both labels.
config_file_starts() {
  local ns=bbr-payload-processor-config out="$work/config-file.log" args
  "$kubectl" -n "$ns" get configmap body-based-router-config \
    -o jsonpath='{.data.config\.yaml}' >"$work/ipp-config.yaml" || return 1
  args="$("$kubectl" -n "$ns" get deployment body-based-router \
    -o jsonpath='{range .spec.template.spec.containers[0].args[*]}{@}{"\n"}{end}')" || return 1
  args="${args//\/config\/config.yaml/$work/ipp-config.yaml}"
  local -a argv
  mapfile -t argv < <(local_argv "$args")
  echo "args: ${argv[*]}"
  NAMESPACE="$ns" timeout 60 "$binary" "${argv[@]}" >"$out" 2>&1 &
  local pid=$! listed
  for _ in $(seq 1 200); do
    [ "$(grep -c 'base-model ConfigMaps listed' "$out")" -ge 2 ] && break
    kill -0 "$pid" 2>/dev/null || break
    sleep 0.1
  done
  listed="$(grep -c 'base-model ConfigMaps listed' "$out")"
  kill "$pid" 2>/dev/null; wait "$pid" 2>/dev/null || true
  [ "$listed" -ge 2 ] || { cat "$out"; return 1; }
}
check "the rendered customConfig starts bbr-extproc, whose two watches list the ConfigMaps" config_file_starts

# The observability values' args (tracing and metrics auth) start the real
# binary: /metrics refuses an anonymous scrape and serves the admin token
# (reviewed by this API server); spans go to a collector that is not there.
observability_args_serve() {
  local out="$work/observability-args.log" args metrics anonymous admin
  args="$("$kubectl" -n bbr-observability get deployment body-based-router \
    -o jsonpath='{range .spec.template.spec.containers[0].args[*]}{@}{"\n"}{end}')" || return 1
  grep -qx -- '--tracing=true' <<<"$args" && grep -qx -- '--metrics-endpoint-auth=true' <<<"$args" ||
    { echo "args: $args"; return 1; }
  local -a argv
  mapfile -t argv < <(local_argv "$args")
  OTEL_EXPORTER_OTLP_ENDPOINT=http://127.0.0.1:9 timeout 60 "$binary" "${argv[@]}" >"$out" 2>&1 &
  local pid=$!
  for _ in $(seq 1 100); do grep -q 'bbr-extproc listening' "$out" && break; kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
  metrics="$(sed -n 's/^bbr-extproc listening.* metrics=\([^ ]*\).*/\1/p' "$out")"
  anonymous="$(curl -s -m 20 -o /dev/null -w '%{http_code}' "http://$metrics/metrics" || true)"
  admin="$(curl -s -m 20 -o /dev/null -w '%{http_code}' -H "Authorization: Bearer $token" "http://$metrics/metrics" || true)"
  kill "$pid" 2>/dev/null; wait "$pid" 2>/dev/null || true
  [ "$anonymous" = 401 ] && [ "$admin" = 200 ] || { echo "anonymous: $anonymous, admin: $admin"; cat "$out"; return 1; }
}
check "the observability values' args start bbr-extproc; /metrics: 401 anonymous, 200 for a reviewed token" observability_args_serve

# The rule table the envoy-gateway values put in the rules ConfigMap loads.
rules_load() {
  local out="$work/rules-load.log" pid
  "$kubectl" -n bbr-envoy-gateway get configmap body-based-router-rules \
    -o jsonpath='{.data.rules\.yaml}' >"$work/rules.yaml" || return 1
  timeout 60 "$binary" --address 127.0.0.1 --grpc-port=0 --grpc-health-port=0 --metrics-port=0 \
    --secure-serving=false --rules "$work/rules.yaml" >"$out" 2>&1 &
  pid=$!
  for _ in $(seq 1 100); do grep -q 'bbr-extproc listening' "$out" && break; kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
  kill "$pid" 2>/dev/null; wait "$pid" 2>/dev/null || true
  grep -q 'bbr-extproc listening' "$out" || { cat "$work/rules.yaml" "$out"; return 1; }
}
check "the rule table rendered from values loads in bbr-extproc" rules_load

# bbr-extproc follows base-model ConfigMaps through this API server, and
# learns adapters from the servers of InferencePools (the model server
# simulator, built from its Go module by scripts/install-control-planes.sh
# and cached outside the clone).
eval "$(scripts/install-control-planes.sh sim)"
export BBR_MODEL_SIM
export BBR_KUBECONFIG="$KUBECONFIG" BBR_KUBECTL="$kubectl" BBR_REQUIRE_KUBERNETES=1
check "cargo test --test kubernetes (ConfigMaps created, changed, deleted, malformed; /metrics tokens; InferencePools' servers)" \
  nice -n 10 cargo test -q --workspace --test kubernetes -- --test-threads 1

log "done in $((SECONDS - started)) s"
echo "test-kubernetes: $passed passed, $failed failed"
[ "$failed" = 0 ]
