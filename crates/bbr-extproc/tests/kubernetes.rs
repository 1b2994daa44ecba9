//! bbr-extproc as it runs in Kubernetes: the rules file mounted from a
//! ConfigMap (the kubelet's symlink swap), readiness held while the
//! base-model ConfigMaps cannot be listed, and — against a real API server
//! (`BBR_KUBECONFIG` and `BBR_KUBECTL`, exported by
//! `scripts/test-kubernetes.sh`) — base models that follow ConfigMaps as
//! they are created, changed and deleted, and `/metrics` behind bearer
//! tokens reviewed by the API server (`--metrics-endpoint-auth`).
//!
//! Without `BBR_KUBECONFIG` the API-server test says it skipped, unless
//! `BBR_REQUIRE_KUBERNETES=1`, which makes a missing API server an error.

#![cfg(feature = "kubernetes")]

mod support;

use std::{
    net::SocketAddr,
    path::{Path, PathBuf},
    process::{Command, Stdio},
    time::{Duration, Instant},
};

use bbr_extproc::pb::BodySendMode;
use support::{
    JSON,
    binary::{ServerProcess, start_binary_with_env},
    common, protocol, set_headers,
};
use tonic_health::pb::{
    HealthCheckRequest, health_check_response::ServingStatus, health_client::HealthClient,
};

const BASE: &str = "x-gateway-base-model-name";
const POOL: &str = "x-gateway-inference-pool";

/// How long a ConfigMap change may take to show in a decision.
const FOLLOW: Duration = Duration::from_secs(2);

/// The routing headers bbr-extproc at `grpc` (plaintext) sets for `model`.
async fn route(grpc: SocketAddr, model: &str) -> Vec<(String, String)> {
    let mut client = bbr_extproc::pb::external_processor_client::ExternalProcessorClient::connect(
        format!("http://{grpc}"),
    )
    .await
    .expect("connect to bbr-extproc");
    let mode = protocol(BodySendMode::FullDuplexStreamed, BodySendMode::None);
    let mut s = support::Stream::open(&mut client, Some(mode)).await;
    s.headers(&[JSON], false).await;
    let body = format!(r#"{{"model":"{model}","messages":[]}}"#);
    s.body(body.as_bytes(), true).await;
    let first = s.recv().await;
    assert!(
        matches!(
            first,
            bbr_extproc::pb::processing_response::Response::RequestHeaders(_)
        ),
        "{first:?}"
    );
    s.close();
    set_headers(&common(&first))
}

fn header(headers: &[(String, String)], name: &str) -> Option<String> {
    headers
        .iter()
        .find(|(k, _)| k == name)
        .map(|(_, v)| v.clone())
}

/// Polls until the base model `model` gets equals `expected`, for at most
/// [`FOLLOW`]; returns what was seen last.
async fn base_model_becomes(
    grpc: SocketAddr,
    model: &str,
    expected: Option<&str>,
) -> Option<String> {
    let deadline = Instant::now() + FOLLOW;
    loop {
        let seen = header(&route(grpc, model).await, BASE);
        if seen.as_deref() == expected || Instant::now() >= deadline {
            return seen;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

async fn health_status(health: SocketAddr) -> i32 {
    let channel = tonic::transport::Endpoint::from_shared(format!("http://{health}"))
        .unwrap()
        .connect()
        .await
        .unwrap();
    HealthClient::new(channel)
        .check(HealthCheckRequest {
            service: String::new(),
        })
        .await
        .unwrap()
        .into_inner()
        .status
}

fn temp_dir(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("bbr-k8s-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

/// Lays out `files` as the kubelet does for a ConfigMap volume: a
/// timestamped directory, `..data` pointing to it, and each file a link
/// through `..data`. A second call swaps `..data` atomically (rename).
fn kubelet_write(dir: &Path, generation: u32, files: &[(&str, &str)]) {
    let data = format!("..2026_01_01_00_00_0{generation}.{generation}");
    std::fs::create_dir(dir.join(&data)).unwrap();
    for (name, text) in files {
        std::fs::write(dir.join(&data).join(name), text).unwrap();
    }
    let tmp = dir.join("..data_tmp");
    std::os::unix::fs::symlink(&data, &tmp).unwrap();
    std::fs::rename(&tmp, dir.join("..data")).unwrap();
    for (name, _) in files {
        let link = dir.join(name);
        if std::fs::symlink_metadata(&link).is_err() {
            std::os::unix::fs::symlink(format!("..data/{name}"), &link).unwrap();
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rules_mounted_from_a_configmap_follow_the_kubelets_symlink_swap() {
    let dir = temp_dir("rules");
    let rules = |pool: &str| {
        format!("rules: [{{name: chat, match: {{model: {{exact: chatbot}}}}, pool: {pool}}}]\n")
    };
    kubelet_write(&dir, 1, &[("rules.yaml", &rules("gemma3"))]);
    let path = dir.join("rules.yaml");
    let (_server, grpc, _, _) = start_binary_with_env(
        &[
            "--secure-serving=false",
            "--rules",
            path.to_str().unwrap(),
            "--rules-poll-ms",
            "50",
        ],
        &[],
    );
    assert_eq!(
        header(&route(grpc, "chatbot").await, POOL).as_deref(),
        Some("gemma3")
    );
    // Same length, so that only the swap (a new inode and mtime) can tell.
    kubelet_write(&dir, 2, &[("rules.yaml", &rules("gemma4"))]);
    let deadline = Instant::now() + Duration::from_secs(10);
    let mut pool = None;
    while Instant::now() < deadline {
        pool = header(&route(grpc, "chatbot").await, POOL);
        if pool.as_deref() == Some("gemma4") {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(pool.as_deref(), Some("gemma4"), "the swap was not reloaded");
    std::fs::remove_dir_all(&dir).unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn not_ready_while_the_base_models_cannot_be_listed_yet_requests_are_served() {
    let dir = temp_dir("unreachable");
    // An API server that is not there: a closed port on loopback.
    let closed = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = closed.local_addr().unwrap().port();
    drop(closed);
    let kubeconfig = dir.join("kubeconfig");
    std::fs::write(
        &kubeconfig,
        format!(
            "apiVersion: v1\nkind: Config\nclusters:\n- name: c\n  cluster:\n    server: https://127.0.0.1:{port}\n    insecure-skip-tls-verify: true\nusers:\n- name: u\n  user:\n    token: t\ncontexts:\n- name: c\n  context: {{cluster: c, user: u}}\ncurrent-context: c\n"
        ),
    )
    .unwrap();
    let (_server, grpc, health, _) = start_binary_with_env(
        &["--secure-serving=false", "--base-model-configmaps"],
        &[
            ("KUBECONFIG", kubeconfig.to_str().unwrap()),
            ("NAMESPACE", "default"),
        ],
    );
    // Still not serving after retries have had time to fail.
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(
        health_status(health).await,
        ServingStatus::NotServing as i32
    );
    // Requests that reach it anyway are routed on the model.
    let headers = route(grpc, "chatbot").await;
    assert_eq!(
        header(&headers, "x-gateway-model-name").as_deref(),
        Some("chatbot")
    );
    std::fs::remove_dir_all(&dir).unwrap();
}

/// The API server of `scripts/test-kubernetes.sh`, or `None` (skipped).
fn cluster() -> Option<(String, String)> {
    let kubeconfig = std::env::var("BBR_KUBECONFIG")
        .ok()
        .filter(|v| !v.is_empty());
    let kubectl = std::env::var("BBR_KUBECTL").ok().filter(|v| !v.is_empty());
    match (kubeconfig, kubectl) {
        (Some(c), Some(k)) => Some((c, k)),
        _ => {
            assert!(
                std::env::var("BBR_REQUIRE_KUBERNETES").as_deref() != Ok("1"),
                "BBR_REQUIRE_KUBERNETES=1 but BBR_KUBECONFIG or BBR_KUBECTL is not set"
            );
            eprintln!(
                "skipped: no API server (BBR_KUBECONFIG and BBR_KUBECTL unset; scripts/test-kubernetes.sh sets them)"
            );
            None
        }
    }
}

struct Kubectl {
    bin: String,
    kubeconfig: String,
    namespace: String,
}

impl Kubectl {
    fn run(&self, args: &[&str], stdin: Option<&str>) -> String {
        use std::io::Write;
        let mut child = Command::new(&self.bin)
            .env("KUBECONFIG", &self.kubeconfig)
            .args(["--request-timeout=20s", "-n", &self.namespace])
            .args(args)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("cannot run kubectl");
        child
            .stdin
            .take()
            .unwrap()
            .write_all(stdin.unwrap_or("").as_bytes())
            .unwrap();
        let out = child.wait_with_output().unwrap();
        assert!(
            out.status.success(),
            "kubectl {args:?} failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    fn apply(&self, manifest: &str) {
        self.run(&["apply", "-f", "-"], Some(manifest));
    }
}

impl Drop for Kubectl {
    fn drop(&mut self) {
        let _ = Command::new(&self.bin)
            .env("KUBECONFIG", &self.kubeconfig)
            .args([
                "delete",
                "namespace",
                &self.namespace,
                "--wait=false",
                "--request-timeout=20s",
            ])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status();
    }
}

fn base_model_configmap(name: &str, base: &str, adapters: &[&str], managed: bool) -> String {
    let list: String = adapters.iter().map(|a| format!("    - {a}\n")).collect();
    format!(
        "apiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: {name}\n  labels:\n    inference.networking.k8s.io/bbr-managed: \"{managed}\"\ndata:\n  baseModel: {base}\n  adapters: |\n{list}"
    )
}

/// A base-model ConfigMap as the llm-d inference payload processor labels it.
fn ipp_configmap(name: &str, base: &str, adapters: &[&str]) -> String {
    base_model_configmap(name, base, adapters, true).replace(
        "inference.networking.k8s.io/bbr-managed",
        "inference.llm-d.ai/ipp-managed",
    )
}

/// The payload processor's default configuration: the model and its base
/// model into headers.
const IPP_CONFIG: &str = "apiVersion: llm-d.ai/v1alpha1
kind: PayloadProcessorConfig
plugins:
- type: body-field-to-header
  parameters: {fieldName: model, headerName: X-Gateway-Model-Name}
- type: base-model-to-header
profiles:
- name: default
  plugins:
    request: [{pluginRef: body-field-to-header}, {pluginRef: base-model-to-header}]
";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn base_models_follow_configmaps_through_the_api_server() {
    let Some((kubeconfig, kubectl)) = cluster() else {
        return;
    };
    let k = Kubectl {
        bin: kubectl,
        kubeconfig: kubeconfig.clone(),
        namespace: format!("bbr-watch-{}", std::process::id()),
    };
    Command::new(&k.bin)
        .env("KUBECONFIG", &k.kubeconfig)
        .args(["create", "namespace", &k.namespace])
        .status()
        .expect("kubectl create namespace");
    // Present before the start: part of the first list.
    k.apply(&base_model_configmap(
        "llama",
        "llama-3",
        &["sql-lora"],
        true,
    ));
    // Labelled as the payload processor labels them: watched too.
    k.apply(&ipp_configmap("qwen", "qwen-2.5", &["summarizer"]));
    // In another namespace: not watched.
    let other = format!("{}-other", k.namespace);
    k.run(&["create", "namespace", &other], None);
    k.run(
        &["apply", "-n", &other, "-f", "-"],
        Some(&base_model_configmap(
            "elsewhere",
            "qwen",
            &["far-lora"],
            true,
        )),
    );

    // Started as the payload processor's chart starts it: its
    // base-model-to-header plugin turns the watch on.
    let (server, grpc, health, metrics): (ServerProcess, _, _, _) = start_binary_with_env(
        &["--secure-serving=false", "--config-text", IPP_CONFIG],
        &[
            ("KUBECONFIG", kubeconfig.as_str()),
            ("NAMESPACE", k.namespace.as_str()),
        ],
    );
    let deadline = Instant::now() + Duration::from_secs(20);
    while health_status(health).await != ServingStatus::Serving as i32 {
        assert!(Instant::now() < deadline, "never became ready");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    // Ready means listed: the mapping is there at once.
    assert_eq!(
        header(&route(grpc, "sql-lora").await, BASE).as_deref(),
        Some("llama-3")
    );
    assert_eq!(header(&route(grpc, "far-lora").await, BASE), None);
    assert_eq!(
        header(&route(grpc, "summarizer").await, BASE).as_deref(),
        Some("qwen-2.5")
    );

    // Created.
    k.apply(&base_model_configmap(
        "gemma",
        "gemma-3",
        &["chat-lora"],
        true,
    ));
    assert_eq!(
        base_model_becomes(grpc, "chat-lora", Some("gemma-3"))
            .await
            .as_deref(),
        Some("gemma-3")
    );
    // Changed: the adapter moves to another base model.
    k.apply(&base_model_configmap(
        "gemma",
        "gemma-3-27b",
        &["chat-lora", "qa-lora"],
        true,
    ));
    assert_eq!(
        base_model_becomes(grpc, "qa-lora", Some("gemma-3-27b"))
            .await
            .as_deref(),
        Some("gemma-3-27b")
    );
    assert_eq!(
        header(&route(grpc, "chat-lora").await, BASE).as_deref(),
        Some("gemma-3-27b")
    );

    // Malformed: refused, counted, and everything else keeps serving.
    k.apply(
        "apiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: broken\n  labels:\n    inference.networking.k8s.io/bbr-managed: \"true\"\ndata:\n  adapters: \"not: [a list\"\n",
    );
    let deadline = Instant::now() + Duration::from_secs(5);
    let refused = loop {
        let reply = support::http::get(metrics, "/metrics").await.unwrap();
        let text = String::from_utf8_lossy(&reply.body).into_owned();
        if let Some(line) = text.lines().find(|l| {
            l.starts_with("bbr_base_model_configmaps_refused_total{")
                && l.contains("name=\"broken\"")
        }) {
            break line.to_owned();
        }
        assert!(
            Instant::now() < deadline,
            "the broken ConfigMap was not counted:\n{text}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    let count: f64 = refused
        .rsplit(' ')
        .next()
        .and_then(|v| v.parse().ok())
        .unwrap_or(0.0);
    assert!(count >= 1.0, "{refused}");
    assert_eq!(
        header(&route(grpc, "sql-lora").await, BASE).as_deref(),
        Some("llama-3")
    );
    assert_eq!(
        header(&route(grpc, "qa-lora").await, BASE).as_deref(),
        Some("gemma-3-27b")
    );
    assert_eq!(health_status(health).await, ServingStatus::Serving as i32);

    // Label removed: like a delete.
    k.apply(&base_model_configmap(
        "llama",
        "llama-3",
        &["sql-lora"],
        false,
    ));
    assert_eq!(base_model_becomes(grpc, "sql-lora", None).await, None);
    // Deleted.
    k.run(&["delete", "configmap", "gemma"], None);
    assert_eq!(base_model_becomes(grpc, "qa-lora", None).await, None);
    assert_eq!(base_model_becomes(grpc, "chat-lora", None).await, None);
    // The model header is still set on every request.
    assert_eq!(
        header(&route(grpc, "qa-lora").await, "x-gateway-model-name").as_deref(),
        Some("qa-lora")
    );
    drop(server);
    let _ = Command::new(&k.bin)
        .env("KUBECONFIG", &k.kubeconfig)
        .args(["delete", "namespace", &other, "--wait=false"])
        .stdout(Stdio::null())
        .status();
}

/// The model server simulator (`BBR_MODEL_SIM`, llm-d-inference-sim as
/// `scripts/install-control-planes.sh` builds it), required with the API
/// server.
fn simulator() -> String {
    std::env::var("BBR_MODEL_SIM")
        .ok()
        .filter(|v| !v.is_empty())
        .expect("BBR_MODEL_SIM (the llm-d-inference-sim binary) is not set; scripts/test-kubernetes.sh sets it")
}

/// A simulator serving `model` (with `lora`, the adapters loaded at start)
/// on a free loopback port; killed on drop.
struct Simulator {
    child: std::process::Child,
    addr: SocketAddr,
}

impl Simulator {
    fn start(bin: &str, model: &str, lora: &[&str]) -> Simulator {
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let mut cmd = Command::new("timeout");
        cmd.args(["300", bin, "--model", model, "--port", &port.to_string()])
            .args(["--max-loras", "4", "--max-cpu-loras", "4"])
            .stdout(Stdio::null())
            .stderr(Stdio::null());
        if !lora.is_empty() {
            cmd.arg("--lora-modules");
            for name in lora {
                cmd.arg(format!(
                    r#"{{"name":"{name}","path":"/adapters/{name}","base_model_name":"{model}"}}"#
                ));
            }
        }
        let child = cmd.spawn().expect("cannot start the simulator");
        let addr = SocketAddr::from(([127, 0, 0, 1], port));
        let deadline = Instant::now() + Duration::from_secs(20);
        while std::net::TcpStream::connect(addr).is_err() {
            assert!(Instant::now() < deadline, "the simulator did not listen");
            std::thread::sleep(Duration::from_millis(50));
        }
        Simulator { child, addr }
    }

    /// `POST /v1/load_lora_adapter` or `/v1/unload_lora_adapter`.
    async fn lora(&self, action: &str, name: &str) {
        let body = format!(r#"{{"lora_name":"{name}","lora_path":"/adapters/{name}"}}"#);
        let reply =
            support::http::post(self.addr, &format!("/v1/{action}_lora_adapter"), &[], body).await;
        assert_eq!(reply.status, 200, "{action} {name}");
    }
}

impl Drop for Simulator {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// An InferencePool selecting `app: NAME` pods on `port`, and one such pod
/// at 127.0.0.1 (the API server takes a pod's status from whoever writes
/// it: here, this test, in the kubelet's place).
fn pool_and_pod(k: &Kubectl, name: &str, port: u16) {
    k.apply(&format!(
        "apiVersion: inference.networking.k8s.io/v1\nkind: InferencePool\nmetadata:\n  name: {name}\nspec:\n  selector:\n    matchLabels: {{app: {name}}}\n  targetPorts: [{{number: {port}}}]\n  endpointPickerRef: {{name: {name}-epp, port: {{number: 9002}}}}\n---\napiVersion: v1\nkind: Pod\nmetadata:\n  name: {name}-0\n  labels: {{app: {name}}}\nspec:\n  automountServiceAccountToken: false\n  containers: [{{name: vllm, image: vllm}}]\n"
    ));
    k.run(
        &[
            "patch",
            "pod",
            &format!("{name}-0"),
            "--subresource=status",
            "--type=merge",
            "-p",
            r#"{"status":{"phase":"Running","podIP":"127.0.0.1","podIPs":[{"ip":"127.0.0.1"}]}}"#,
        ],
        None,
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn adapters_loaded_on_an_inference_pools_servers_route_to_their_base_model() {
    use support::models::{entry, has, routing_headers, until};
    let Some((kubeconfig, kubectl)) = cluster() else {
        return;
    };
    let sim = simulator();
    let k = Kubectl {
        bin: kubectl,
        kubeconfig: kubeconfig.clone(),
        namespace: format!("bbr-pools-{}", std::process::id()),
    };
    k.run(&["create", "namespace", &k.namespace], None);
    // No controller manager runs: the namespace's default ServiceAccount,
    // which admission wants for a pod, is made here.
    k.run(&["create", "serviceaccount", "default"], None);
    let qwen = Simulator::start(&sim, "qwen", &["sql-lora"]);
    let llama = Simulator::start(&sim, "llama", &[]);
    pool_and_pod(&k, "qwen-pool", qwen.addr.port());
    pool_and_pod(&k, "llama-pool", llama.addr.port());

    let (_server, grpc, _, _) = start_binary_with_env(
        &[
            "--secure-serving=false",
            "--serve-models",
            "--discover-inference-pools",
            "--discovery-period-secs",
            "1",
        ],
        &[
            ("KUBECONFIG", kubeconfig.as_str()),
            ("NAMESPACE", k.namespace.as_str()),
        ],
    );
    let mut c = bbr_extproc::pb::external_processor_client::ExternalProcessorClient::connect(
        format!("http://{grpc}"),
    )
    .await
    .unwrap();
    // Both pools' servers read: the adapter loaded at start is listed with
    // its parent and its pool, and routed as its base model.
    let list = until(&mut c, |l| has(l, "sql-lora") && has(l, "llama")).await;
    let adapter = entry(&list, "sql-lora").unwrap();
    assert_eq!(adapter["parent"], "qwen", "{list}");
    assert_eq!(adapter["owned_by"], "qwen-pool", "{list}");
    assert_eq!(
        header(&routing_headers(&mut c, "sql-lora").await, BASE).as_deref(),
        Some("qwen")
    );

    // Traffic runs while adapters are loaded and unloaded: an adapter is
    // routed as qwen or not mapped yet (or any more), never as llama.
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let traffic = {
        let stop = stop.clone();
        let mut c = c.clone();
        tokio::spawn(async move {
            let (mut routed, mut misrouted) = (0u32, Vec::new());
            while !stop.load(std::sync::atomic::Ordering::Relaxed) && routed < 5_000 {
                for model in ["sql-lora", "chat-lora", "llama", "qwen"] {
                    let base = header(&routing_headers(&mut c, model).await, BASE);
                    let want = match model {
                        "llama" => Some("llama"),
                        _ => Some("qwen"),
                    };
                    if base.is_some() && base.as_deref() != want {
                        misrouted.push((model, base));
                    }
                    routed += 1;
                }
            }
            (routed, misrouted)
        })
    };
    qwen.lora("load", "chat-lora").await;
    let loaded = Instant::now();
    until(&mut c, |l| {
        entry(l, "chat-lora").is_some_and(|m| m["parent"] == "qwen")
    })
    .await;
    eprintln!(
        "chat-lora listed {} ms after it was loaded (period 1 s)",
        loaded.elapsed().as_millis()
    );
    assert_eq!(
        header(&routing_headers(&mut c, "chat-lora").await, BASE).as_deref(),
        Some("qwen")
    );
    qwen.lora("unload", "sql-lora").await;
    until(&mut c, |l| !has(l, "sql-lora")).await;
    assert_eq!(
        header(&routing_headers(&mut c, "sql-lora").await, BASE),
        None
    );

    // The pod deleted: its server's models leave with it, at once (no
    // grace period: the API server says it is gone).
    k.run(
        &[
            "delete",
            "pod",
            "qwen-pool-0",
            "--grace-period=0",
            "--force",
        ],
        None,
    );
    until(&mut c, |l| !has(l, "chat-lora") && has(l, "llama")).await;
    assert_eq!(
        header(&routing_headers(&mut c, "chat-lora").await, BASE),
        None
    );

    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let (routed, misrouted) = traffic.await.unwrap();
    assert!(misrouted.is_empty(), "misrouted: {misrouted:?}");
    eprintln!("{routed} requests routed during the changes, none misrouted");
    assert!(routed > 0);
}

/// `GET /metrics` at `metrics` with `authorization` (if any): the status.
async fn scrape(metrics: SocketAddr, authorization: Option<&str>) -> (u16, String) {
    let mut req = hyper::Request::get("/metrics").header("host", "localhost");
    if let Some(value) = authorization {
        req = req.header("authorization", value);
    }
    let req = req
        .body(http_body_util::Full::new(bytes::Bytes::new()))
        .unwrap();
    let reply = support::http::send(metrics, req)
        .await
        .expect("GET /metrics");
    (
        reply.status,
        String::from_utf8_lossy(&reply.body).into_owned(),
    )
}

/// A kubeconfig for `cluster`'s server that authenticates with `token`.
fn kubeconfig_with_token(dir: &Path, kubeconfig: &str, kubectl: &str, token: &str) -> PathBuf {
    let view = |path: &str| {
        let out = Command::new(kubectl)
            .env("KUBECONFIG", kubeconfig)
            .args(["config", "view", "--raw", "--minify", "-o"])
            .arg(format!("jsonpath={path}"))
            .output()
            .expect("kubectl config view");
        assert!(out.status.success());
        String::from_utf8(out.stdout).unwrap()
    };
    let server = view("{.clusters[0].cluster.server}");
    let ca = view("{.clusters[0].cluster.certificate-authority}");
    let path = dir.join("kubeconfig");
    std::fs::write(
        &path,
        format!(
            "apiVersion: v1\nkind: Config\nclusters:\n- name: c\n  cluster:\n    server: {server}\n    certificate-authority: {ca}\nusers:\n- name: u\n  user:\n    token: {token}\ncontexts:\n- name: c\n  context: {{cluster: c, user: u}}\ncurrent-context: c\n"
        ),
    )
    .unwrap();
    path
}

/// `--metrics-endpoint-auth` against the API server: bbr-extproc runs as a
/// ServiceAccount allowed only to create token and access reviews (what
/// the chart grants); a scraper bound to a `/metrics` reader role gets the
/// metrics, another ServiceAccount 403, a bad or missing token 401.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_need_a_token_allowed_to_get_metrics() {
    let Some((kubeconfig, kubectl)) = cluster() else {
        return;
    };
    let k = Kubectl {
        bin: kubectl.clone(),
        kubeconfig: kubeconfig.clone(),
        namespace: format!("bbr-metrics-auth-{}", std::process::id()),
    };
    k.run(&["create", "namespace", &k.namespace], None);
    let ns = &k.namespace;
    let cluster_role = |name: &str, rules: &str, sa: &str| {
        format!(
            "apiVersion: rbac.authorization.k8s.io/v1\nkind: ClusterRole\nmetadata: {{name: {ns}-{name}}}\nrules:\n{rules}---\napiVersion: rbac.authorization.k8s.io/v1\nkind: ClusterRoleBinding\nmetadata: {{name: {ns}-{name}}}\nsubjects: [{{kind: ServiceAccount, name: {sa}, namespace: {ns}}}]\nroleRef: {{apiGroup: rbac.authorization.k8s.io, kind: ClusterRole, name: {ns}-{name}}}\n"
        )
    };
    for sa in ["bbr", "scraper", "stranger"] {
        k.run(&["create", "serviceaccount", sa], None);
    }
    k.apply(&cluster_role(
        "reviewer",
        "- {apiGroups: [authentication.k8s.io], resources: [tokenreviews], verbs: [create]}\n- {apiGroups: [authorization.k8s.io], resources: [subjectaccessreviews], verbs: [create]}\n",
        "bbr",
    ));
    k.apply(&cluster_role(
        "metrics-reader",
        "- {nonResourceURLs: [/metrics], verbs: [get]}\n",
        "scraper",
    ));
    let token = |sa: &str| k.run(&["create", "token", sa], None).trim().to_owned();
    let (bbr, scraper, stranger) = (token("bbr"), token("scraper"), token("stranger"));

    let dir = temp_dir("metrics-auth");
    let own = kubeconfig_with_token(&dir, &kubeconfig, &kubectl, &bbr);
    let (_server, _, _, metrics) = start_binary_with_env(
        &["--secure-serving=false", "--metrics-endpoint-auth"],
        &[("KUBECONFIG", own.to_str().unwrap())],
    );

    let (status, _) = scrape(metrics, None).await;
    assert_eq!(status, 401, "no token");
    let (status, _) = scrape(metrics, Some("Bearer not-a-token")).await;
    assert_eq!(status, 401, "a token the API server does not know");
    let (status, _) = scrape(metrics, Some(&format!("Basic {scraper}"))).await;
    assert_eq!(status, 401, "not a bearer token");
    let stranger = format!("Bearer {stranger}");
    let (status, _) = scrape(metrics, Some(&stranger)).await;
    assert_eq!(status, 403, "a ServiceAccount without the reader role");
    let scraper = format!("Bearer {scraper}");
    for _ in 0..2 {
        // The second answer comes from the cache.
        let (status, body) = scrape(metrics, Some(&scraper)).await;
        assert_eq!(status, 200);
        assert!(body.contains("bbr_info"), "{body}");
    }
    let (status, _) = scrape(metrics, Some(&stranger)).await;
    assert_eq!(status, 403, "refused again, from the cache");
    let _ = std::fs::remove_dir_all(&dir);
}

/// A kubeconfig for an API server at `addr` (whatever listens there).
fn kubeconfig_for(dir: &Path, addr: SocketAddr) -> PathBuf {
    let kubeconfig = dir.join("kubeconfig");
    std::fs::write(
        &kubeconfig,
        format!(
            "apiVersion: v1\nkind: Config\nclusters:\n- name: c\n  cluster:\n    server: https://{addr}\n    insecure-skip-tls-verify: true\nusers:\n- name: u\n  user:\n    token: t\ncontexts:\n- name: c\n  context: {{cluster: c, user: u}}\ncurrent-context: c\n"
        ),
    )
    .unwrap();
    kubeconfig
}

/// `--metrics-endpoint-auth` with an API server that cannot be reached:
/// 500 for a token, 401 still without one.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_answer_500_when_the_api_server_cannot_review() {
    let closed = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap();
    let dir = temp_dir("metrics-auth-down");
    let kubeconfig = kubeconfig_for(&dir, closed);
    let (_server, _, _, metrics) = start_binary_with_env(
        &["--secure-serving=false", "--metrics-endpoint-auth"],
        &[("KUBECONFIG", kubeconfig.to_str().unwrap())],
    );
    assert_eq!(scrape(metrics, None).await.0, 401);
    assert_eq!(scrape(metrics, Some("Bearer some-token")).await.0, 500);
    // Not cached: asked again, failing again.
    assert_eq!(scrape(metrics, Some("Bearer some-token")).await.0, 500);
    // Other paths are not guarded.
    let other = support::http::get(metrics, "/other").await.unwrap();
    assert_eq!(other.status, 404);
    let _ = std::fs::remove_dir_all(&dir);
}

/// An API server that takes connections and never answers: the scrape is
/// answered 500 once the review's deadline passes, not held.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_answer_500_when_the_api_server_never_answers() {
    let silent = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = silent.local_addr().unwrap();
    let held = tokio::spawn(async move {
        let mut open = Vec::new();
        while let Ok((stream, _)) = silent.accept().await {
            open.push(stream);
        }
    });
    let dir = temp_dir("metrics-auth-silent");
    let kubeconfig = kubeconfig_for(&dir, addr);
    let (_server, _, _, metrics) = start_binary_with_env(
        &["--secure-serving=false", "--metrics-endpoint-auth"],
        &[("KUBECONFIG", kubeconfig.to_str().unwrap())],
    );
    assert_eq!(scrape(metrics, Some("Bearer some-token")).await.0, 500);
    held.abort();
    let _ = std::fs::remove_dir_all(&dir);
}
