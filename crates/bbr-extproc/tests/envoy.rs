//! End to end through a real Envoy: client → Envoy (ext_proc filter) →
//! bbr-extproc → Envoy's router → the simulated pool the model names.

mod support;

use std::{
    net::SocketAddr,
    process::{Command, Stdio},
};

use bbr_extproc::{BodyRoutingProcessor, serve::self_signed_identity};
use support::{
    binary::{FREE_PORTS, ServerProcess, start_binary, start_binary_with_env},
    envoy::{self, Envoy, Ports},
    http::{self, Reply},
    otlp,
    upstream::{Pool, body_hash},
};
use tokio_stream::wrappers::TcpListenerStream;
use tonic::transport::{Server, ServerTlsConfig};

const CHAT: &str = r#"{"model":"chatbot","messages":[{"role":"user","content":"What is the color of the sky?"}],"max_tokens":100,"temperature":0}"#;
const COMPLETION: &str = r#"{"model":"recommender","prompt":"Give me restaurant recommendations in Paris","max_tokens":100,"temperature":0}"#;

/// The two pools, Envoy, and whatever serves ext_proc.
struct Scene {
    gemma3: Pool,
    deepseek: Pool,
    envoy: Envoy,
    _server: Option<ServerProcess>,
    metrics: Option<SocketAddr>,
    health: Option<SocketAddr>,
}

/// Serves `processor` over TLS (self-signed, as the binary does) on 127.0.0.1:0.
async fn serve_tls(processor: BodyRoutingProcessor) -> u16 {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    let tls = ServerTlsConfig::new().identity(self_signed_identity().unwrap());
    tokio::spawn(
        Server::builder()
            .tls_config(tls)
            .unwrap()
            .add_service(processor.into_server())
            .serve_with_incoming(TcpListenerStream::new(listener)),
    );
    port
}

async fn scene(template: &str, processor: BodyRoutingProcessor) -> Scene {
    scene_edited(template, |config| config, processor).await
}

/// [`scene`] with Envoy's configuration passed through `edit` first.
async fn scene_edited(
    template: &str,
    edit: impl FnOnce(String) -> String,
    processor: BodyRoutingProcessor,
) -> Scene {
    let gemma3 = Pool::start("gemma3").await;
    let deepseek = Pool::start("deepseek-r1").await;
    let bbr = serve_tls(processor).await;
    let ports = Ports {
        bbr,
        gemma3: gemma3.addr.port(),
        deepseek: deepseek.addr.port(),
    };
    let envoy = Envoy::start(&edit(envoy::config(template, &ports))).await;
    Scene {
        gemma3,
        deepseek,
        envoy,
        _server: None,
        metrics: None,
        health: None,
    }
}

async fn scene_binary(template: &str, args: &[&str]) -> Scene {
    scene_binary_with_env(template, args, &[]).await
}

async fn scene_binary_with_env(template: &str, args: &[&str], env: &[(&str, &str)]) -> Scene {
    let gemma3 = Pool::start("gemma3").await;
    let deepseek = Pool::start("deepseek-r1").await;
    let (process, grpc, health, metrics) = start_binary_with_env(args, env);
    let ports = Ports {
        bbr: grpc.port(),
        gemma3: gemma3.addr.port(),
        deepseek: deepseek.addr.port(),
    };
    let envoy = Envoy::start(&envoy::config(template, &ports)).await;
    Scene {
        gemma3,
        deepseek,
        envoy,
        _server: Some(process),
        metrics: Some(metrics),
        health: Some(health),
    }
}

impl Scene {
    async fn post(
        &self,
        path: &str,
        headers: &[(&str, &str)],
        body: impl Into<bytes::Bytes>,
    ) -> Reply {
        http::post(self.envoy.addr(), path, headers, body).await
    }

    fn seen(&self) -> usize {
        self.gemma3.seen().len() + self.deepseek.seen().len()
    }
}

/// The two requests of the demo reach the pool their model names, with
/// the body unchanged.
async fn demo_requests_route(s: &Scene) {
    let r = s.post("/v1/chat/completions", &[], CHAT).await;
    assert_eq!(r.status, 200, "{r:?}");
    assert_eq!(r.header("x-inference-pool"), Some("gemma3"));
    assert_eq!(r.json()["model"], "chatbot");
    let seen = s.gemma3.seen();
    let last = seen.last().unwrap();
    assert_eq!(last.headers.get("x-gateway-model-name").unwrap(), "chatbot");
    assert_eq!(last.body_hash, body_hash(CHAT.as_bytes()));

    let r = s.post("/v1/completions", &[], COMPLETION).await;
    assert_eq!(r.status, 200, "{r:?}");
    assert_eq!(r.header("x-inference-pool"), Some("deepseek-r1"));
    let seen = s.deepseek.seen();
    assert_eq!(seen.len(), 1);
    assert_eq!(seen[0].path, "/v1/completions");
    assert_eq!(seen[0].body_hash, body_hash(COMPLETION.as_bytes()));
}

/// A client naming the other pool in the routing header is routed on its
/// body; the headers the endpoint picker reads from the client reach the
/// pool.
async fn spoofed_header_is_stripped(s: &Scene) {
    let before = s.deepseek.seen().len();
    let r = s
        .post(
            "/v1/chat/completions",
            &[
                ("X-Gateway-Model-Name", "recommender"),
                ("x-gateway-base-model-name", "evil"),
                ("x-gateway-inference-objective", "chatbot-objective"),
                ("x-gateway-inference-fairness-id", "tenant-a"),
            ],
            CHAT,
        )
        .await;
    assert_eq!(r.header("x-inference-pool"), Some("gemma3"), "{r:?}");
    assert_eq!(s.deepseek.seen().len(), before);
    let seen = s.gemma3.seen();
    let last = seen.last().unwrap();
    let models: Vec<_> = last
        .headers
        .get_all("x-gateway-model-name")
        .iter()
        .collect();
    assert_eq!(models, ["chatbot"]);
    assert!(last.headers.get("x-gateway-base-model-name").is_none());
    assert_eq!(
        last.headers.get("x-gateway-inference-objective").unwrap(),
        "chatbot-objective"
    );
    assert_eq!(
        last.headers.get("x-gateway-inference-fairness-id").unwrap(),
        "tenant-a"
    );
}

/// Invalid bodies get the error contract's status and JSON through Envoy,
/// and never reach a pool.
async fn invalid_bodies_get_the_json_error(s: &Scene) {
    let before = s.seen();
    type Case<'a> = (&'a [(&'a str, &'a str)], &'a str, u16, &'a str);
    let cases: [Case<'_>; 4] = [
        (
            &[],
            r#"{"model":123,"prompt":"x"}"#,
            400,
            "model_not_string",
        ),
        (
            &[],
            r#"{"model":"chatbot","prompt":"x",}"#,
            400,
            "invalid_json",
        ),
        (
            &[],
            r#"{"model":"chatbot","model":"recommender"}"#,
            400,
            "duplicate_model",
        ),
        (
            &[("content-type", "text/plain")],
            "model=chatbot",
            415,
            "unsupported_content_type",
        ),
    ];
    for (headers, body, status, code) in cases {
        let r = s.post("/v1/completions", headers, body.to_owned()).await;
        assert_eq!(r.status, status, "{body}: {r:?}");
        assert_eq!(r.header("content-type"), Some("application/json"), "{r:?}");
        let json = r.json();
        assert_eq!(json["error"]["code"], code, "{json}");
        assert_eq!(json["error"]["type"], "invalid_request_error");
    }
    assert_eq!(s.seen(), before, "a rejected body reached a pool");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn binary_full_duplex_routes_demo_requests_strips_spoofs_and_rejects_bad_bodies() {
    let s = scene_binary("envoy-full-duplex.yaml", &["--streaming", "-v", "1"]).await;
    demo_requests_route(&s).await;
    spoofed_header_is_stripped(&s).await;
    invalid_bodies_get_the_json_error(&s).await;

    // A body without a model passes unrouted: Envoy's fallback route answers.
    let r = s.post("/v1/completions", &[], r#"{"prompt":"x"}"#).await;
    assert_eq!(r.status, 404);
    assert_eq!(&r.body[..], b"no route for this model\n");

    // An empty model names none, and passes unrouted too.
    let r = s
        .post("/v1/completions", &[], r#"{"model":"","prompt":"x"}"#)
        .await;
    assert_eq!(r.status, 404);
    assert_eq!(&r.body[..], b"no route for this model\n");

    let metrics = http::get(s.metrics.unwrap(), "/metrics").await.unwrap();
    let text = String::from_utf8_lossy(&metrics.body);
    for name in [
        // Every body read without an error, as the Go router counts it.
        "bbr_success_total 5",
        "bbr_routed_total 3",
        "bbr_model_not_in_body_total 1",
        "bbr_model_not_parsed_total 1",
        "bbr_body_field_empty_total{field=\"model\"} 1",
        "bbr_body_field_not_found_total{field=\"model\"} 1",
        "bbr_rejected_total{reason=\"duplicate_model\"} 1",
        "bbr_decision_duration_seconds_bucket",
        "bbr_info{",
        "bbr_plugin_duration_seconds_bucket{extension_point=\"request\",plugin_type=\"body-field-to-header\",plugin_name=\"body-field-to-header\",le=\"0.0001\"}",
        "bbr_plugin_duration_seconds_count{extension_point=\"request\",plugin_type=\"base-model-to-header\",plugin_name=\"base-model-to-header\"}",
    ] {
        assert!(text.contains(name), "{name} missing from\n{text}");
    }

    let channel = tonic::transport::Endpoint::from_shared(format!("http://{}", s.health.unwrap()))
        .unwrap()
        .connect()
        .await
        .unwrap();
    let mut health = tonic_health::pb::health_client::HealthClient::new(channel);
    for service in ["", bbr_extproc::SERVICE_NAME] {
        let status = health
            .check(tonic_health::pb::HealthCheckRequest {
                service: service.to_owned(),
            })
            .await
            .unwrap()
            .into_inner()
            .status;
        assert_eq!(
            status,
            tonic_health::pb::health_check_response::ServingStatus::Serving as i32
        );
    }
}

/// With `--tracing`, a request through Envoy gets its span, the child of
/// the `traceparent` the client sent (Envoy forwards it in the request
/// headers), and is routed as without.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn binary_traces_a_request_as_the_child_of_the_traceparent_envoy_forwards() {
    let received = otlp::Received::default();
    let collector = otlp::grpc_receiver(received.clone()).await;
    let endpoint = format!("http://{collector}");
    let s = scene_binary_with_env(
        "envoy-full-duplex.yaml",
        &["--streaming", "--tracing", "-v", "1"],
        &[
            ("OTEL_EXPORTER_OTLP_ENDPOINT", &endpoint),
            ("OTEL_BSP_SCHEDULE_DELAY", "50"),
        ],
    )
    .await;
    let traceparent = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01";
    let r = s
        .post(
            "/v1/chat/completions",
            &[("traceparent", traceparent)],
            CHAT,
        )
        .await;
    assert_eq!(r.status, 200, "{r:?}");
    assert_eq!(r.header("x-inference-pool"), Some("gemma3"));

    let spans = received
        .wait_for(1, std::time::Duration::from_secs(15))
        .await;
    assert_eq!(spans.len(), 1, "{spans:?}");
    let span = &spans[0].span;
    assert_eq!(span.name, "gateway.request");
    assert_eq!(
        otlp::hex(&span.trace_id),
        "0af7651916cd43dd8448eb211c80319c"
    );
    assert_eq!(otlp::hex(&span.parent_span_id), "b7ad6b7169203331");
    assert_eq!(
        otlp::attribute(span, "bbr.outcome").as_deref(),
        Some("routed")
    );
    assert_eq!(
        otlp::attribute(span, "bbr.model").as_deref(),
        Some("chatbot")
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn buffered_routes_demo_requests_and_rejects_bad_bodies() {
    let s = scene(
        "envoy-buffered.yaml",
        BodyRoutingProcessor::builder().build(),
    )
    .await;
    demo_requests_route(&s).await;
    spoofed_header_is_stripped(&s).await;
    invalid_bodies_get_the_json_error(&s).await;
}

/// With `request_header_mode: SKIP` Envoy sends the body with no headers
/// message before it, after it has sent the headers on: the route is the
/// one the client's headers chose (here a catch-all to gemma3), whatever
/// bbr answers. bbr's answer (the routing on the first body response) must
/// still be one Envoy takes, in both modes: a headers response there would
/// end the request with 500 in `FULL_DUPLEX_STREAMED`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_body_without_a_headers_message_is_answered_as_envoy_expects() {
    for template in ["envoy-buffered.yaml", "envoy-full-duplex.yaml"] {
        let skip = |config: String| {
            config
                .replace("request_header_mode: SEND", "request_header_mode: SKIP")
                .replace(
                    r#"direct_response: { status: 404, body: { inline_string: "no route for this model\n" } }"#,
                    "route: { cluster: gemma3, timeout: 60s }",
                )
        };
        let s = scene_edited(template, skip, BodyRoutingProcessor::builder().build()).await;
        let r = s.post("/v1/completions", &[], COMPLETION).await;
        assert_eq!(r.status, 200, "{template}: {r:?}");
        assert_eq!(r.header("x-inference-pool"), Some("gemma3"), "{template}");
        let seen = s.gemma3.seen();
        assert_eq!(seen.len(), 1, "{template}");
        assert_eq!(
            seen[0].body_hash,
            body_hash(COMPLETION.as_bytes()),
            "{template}"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn full_duplex_routes_a_10_mib_body() {
    let s = scene(
        "envoy-full-duplex.yaml",
        BodyRoutingProcessor::builder().build(),
    )
    .await;
    // Letters in a period of 23 bytes, so that a piece of the body sent
    // back out of place changes the hash the pool reports.
    let content: String = (0..10 << 20)
        .map(|i| char::from(b'a' + (i % 23) as u8))
        .collect();
    let body = format!(
        r#"{{"messages":[{{"role":"user","content":"{content}"}}],"model":"recommender","max_tokens":1}}"#
    );
    let r = s.post("/v1/chat/completions", &[], body.clone()).await;
    assert_eq!(r.status, 200, "{:?}", r.body);
    assert_eq!(r.header("x-inference-pool"), Some("deepseek-r1"));
    let seen = s.deepseek.seen();
    assert_eq!(seen[0].body_len, body.len());
    assert_eq!(seen[0].body_hash, body_hash(body.as_bytes()));
}

/// The control: without `clear_route_cache` Envoy keeps the route it chose
/// on the client's headers, and the same request is not routed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn routing_fails_without_clear_route_cache() {
    let processor = BodyRoutingProcessor::builder()
        .clear_route_cache(false)
        .build();
    let s = scene("envoy-full-duplex.yaml", processor).await;
    let r = s.post("/v1/chat/completions", &[], CHAT).await;
    assert_eq!(r.status, 404, "{r:?}");
    assert_eq!(s.seen(), 0);
}

/// Polls `/metrics` until it contains `needle` (bounded; fails otherwise).
async fn wait_for_metric(addr: SocketAddr, needle: &str) {
    let deadline = std::time::Instant::now() + support::WAIT;
    loop {
        let text = http::get(addr, "/metrics")
            .await
            .map(|r| String::from_utf8_lossy(&r.body).into_owned())
            .unwrap_or_default();
        if text.contains(needle) {
            return;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "{needle} never appeared in\n{text}"
        );
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn binary_reloads_rules_and_keeps_the_old_table_on_a_bad_file() {
    let dir = std::env::temp_dir().join(format!("bbr-rules-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join("rules.yaml");
    let demo = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../../examples/config/gateway.yaml"
    );
    std::fs::copy(demo, &path).unwrap();
    let s = scene_binary(
        "envoy-buffered.yaml",
        &[
            "--rules",
            path.to_str().unwrap(),
            "--rules-poll-ms",
            "20",
            "-v",
            "0",
        ],
    )
    .await;
    demo_requests_route(&s).await;
    let r = s
        .post("/v1/completions", &[], r#"{"model":"gpt-4","prompt":"x"}"#)
        .await;
    assert_eq!(r.status, 404);
    assert_eq!(r.json()["error"]["code"], "model_not_found");
    let metrics = s.metrics.unwrap();
    wait_for_metric(
        metrics,
        "bbr_route_matches_total{rule=\"chatbot\",pool=\"gemma3\"} 1",
    )
    .await;

    // A broken file is refused; the table in force keeps routing.
    std::fs::write(&path, "rules: [ {name: broken").unwrap();
    wait_for_metric(metrics, "bbr_rules_reload_failures_total 1").await;
    let r = s.post("/v1/chat/completions", &[], CHAT).await;
    assert_eq!(r.header("x-inference-pool"), Some("gemma3"), "{r:?}");
    // Counted again, in the counter the first decision looked up.
    wait_for_metric(
        metrics,
        "bbr_route_matches_total{rule=\"chatbot\",pool=\"gemma3\"} 2",
    )
    .await;

    // A good file replaces it: chatbot is no longer served.
    std::fs::write(
        &path,
        "rules: [{name: recommender, match: {model: {exact: recommender}}, pool: deepseek-r1}]\ndefault: {action: reject}\n",
    )
    .unwrap();
    wait_for_metric(metrics, "bbr_rules_reloads_total 1").await;
    let r = s.post("/v1/chat/completions", &[], CHAT).await;
    assert_eq!(r.status, 404, "{r:?}");
    assert_eq!(r.json()["error"]["code"], "model_not_found");
    let _ = std::fs::remove_dir_all(&dir);
}

/// SIGTERM stops new connections but lets a stream under way finish.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn binary_shuts_down_gracefully() {
    use bbr_extproc::pb::{BodySendMode, processing_response::Response};
    use support::{JSON, Stream, protocol, streamed};

    let (mut process, grpc, _, metrics) = start_binary(&["--secure-serving=false", "-v", "0"]);
    let mut client = bbr_extproc::pb::external_processor_client::ExternalProcessorClient::connect(
        format!("http://{grpc}"),
    )
    .await
    .unwrap();
    let mode = Some(protocol(
        BodySendMode::FullDuplexStreamed,
        BodySendMode::None,
    ));
    let mut s = Stream::open(&mut client, mode).await;
    s.headers(&[JSON], false).await;
    s.body(br#"{"messages":[],"#, false).await;

    let status = Command::new("kill")
        .args(["-TERM", &process.0.id().to_string()])
        .status()
        .unwrap();
    assert!(status.success());
    // Shutdown has begun once the metrics port stops answering.
    let deadline = std::time::Instant::now() + support::WAIT;
    while http::get(metrics, "/metrics").await.is_ok() {
        assert!(
            std::time::Instant::now() < deadline,
            "no shutdown after SIGTERM"
        );
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }

    // The request under way completes after the signal.
    s.body(br#""model":"chatbot"}"#, true).await;
    assert!(matches!(s.recv().await, Response::RequestHeaders(_)));
    assert_eq!(streamed(&s.recv().await).0, br#"{"messages":[],"#);
    assert_eq!(
        streamed(&s.recv().await),
        (br#""model":"chatbot"}"#.to_vec(), true)
    );
    s.close();
    assert!(s.ends().await);
    drop(client);

    let deadline = std::time::Instant::now() + support::WAIT;
    let code = loop {
        if let Some(code) = process.0.try_wait().unwrap() {
            break code;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "bbr-extproc did not exit"
        );
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    };
    assert!(code.success(), "{code}");
}

/// A weighted target rewrites the model in the body the pool receives,
/// with a Content-Length that matches, in both body modes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rewritten_model_reaches_the_pool_in_both_modes() {
    let rules = "rules:\n  - name: chatbot\n    match: { model: { exact: chatbot } }\n    pool: gemma3\n    targets: [{ model: google/gemma-3-27b-it, weight: 1 }]\n";
    let sent = format!(
        r#"{{"messages":[{{"role":"user","content":"{}"}}],"model":"chatbot","max_tokens":1}}"#,
        "z".repeat(200_000)
    );
    let expected = sent.replace(r#""model":"chatbot""#, r#""model":"google/gemma-3-27b-it""#);
    for template in ["envoy-full-duplex.yaml", "envoy-buffered.yaml"] {
        let table = bbr_core::rules::RuleTable::from_yaml(rules).unwrap();
        let processor = BodyRoutingProcessor::builder()
            .rules(bbr_core::rules::SharedRules::new(table))
            .build();
        let s = scene(template, processor).await;
        let r = s.post("/v1/chat/completions", &[], sent.clone()).await;
        assert_eq!(r.status, 200, "{template}: {r:?}");
        assert_eq!(r.json()["model"], "google/gemma-3-27b-it", "{template}");
        let seen = s.gemma3.seen();
        assert_eq!(seen[0].body_len, expected.len(), "{template}");
        assert_eq!(
            seen[0].body_hash,
            body_hash(expected.as_bytes()),
            "{template}"
        );
        if let Some(len) = seen[0].headers.get("content-length") {
            assert_eq!(
                len.to_str().unwrap(),
                expected.len().to_string(),
                "{template}"
            );
        }
        assert_eq!(
            seen[0].headers.get("x-gateway-model-name").unwrap(),
            "chatbot",
            "{template}"
        );
    }
}

/// `--cert-path` serves the given certificate; Envoy reaches the server
/// over TLS with it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn binary_serves_a_given_certificate() {
    let dir = std::env::temp_dir().join(format!("bbr-cert-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let certified = rcgen::generate_simple_self_signed(vec!["localhost".to_owned()]).unwrap();
    std::fs::write(dir.join("tls.crt"), certified.cert.pem()).unwrap();
    std::fs::write(dir.join("tls.key"), certified.signing_key.serialize_pem()).unwrap();
    let gemma3 = Pool::start("gemma3").await;
    let deepseek = Pool::start("deepseek-r1").await;
    let (process, grpc, _, _) = start_binary(&[
        "--streaming",
        "--cert-path",
        dir.to_str().unwrap(),
        "-v",
        "0",
    ]);
    let ports = Ports {
        bbr: grpc.port(),
        gemma3: gemma3.addr.port(),
        deepseek: deepseek.addr.port(),
    };
    // Envoy verifies the server against that very certificate.
    let ca = dir.join("tls.crt");
    let config = envoy::config("envoy-full-duplex.yaml", &ports).replace(
        "sni: localhost",
        &format!(
            "sni: localhost\n          common_tls_context:\n            validation_context:\n              trusted_ca: {{ filename: {} }}",
            ca.display()
        ),
    );
    let envoy = Envoy::start(&config).await;
    let s = Scene {
        gemma3,
        deepseek,
        envoy,
        _server: Some(process),
        metrics: None,
        health: None,
    };
    demo_requests_route(&s).await;
    let _ = std::fs::remove_dir_all(&dir);

    // A missing certificate is a start-up error, not a silent fallback.
    let out = Command::new(support::binary::path())
        .args(FREE_PORTS)
        .args(["--cert-path", "/nonexistent-bbr-certs"])
        .stdin(Stdio::null())
        .output()
        .unwrap();
    assert!(!out.status.success());
}

/// Envoy reaches the TLS port whatever server name it sends: the cluster
/// name that Istio's auto-SNI makes it send (not a DNS name), an ordinary
/// DNS name, and none.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn binary_takes_any_server_name_envoy_sends() {
    for sni in [
        "sni: 'outbound|9004||body-based-router.default.svc.cluster.local'",
        "sni: body-based-router.default.svc.cluster.local",
        "",
    ] {
        let gemma3 = Pool::start("gemma3").await;
        let deepseek = Pool::start("deepseek-r1").await;
        let (process, grpc, _, _) = start_binary(&["--streaming", "-v", "0"]);
        let ports = Ports {
            bbr: grpc.port(),
            gemma3: gemma3.addr.port(),
            deepseek: deepseek.addr.port(),
        };
        let config = envoy::config("envoy-full-duplex.yaml", &ports).replace("sni: localhost", sni);
        let s = Scene {
            gemma3,
            deepseek,
            envoy: Envoy::start(&config).await,
            _server: Some(process),
            metrics: None,
            health: None,
        };
        demo_requests_route(&s).await;
    }
}

/// With `--metadata-namespace envoy.lb`, the decision is also written as
/// dynamic metadata, and an Envoy whose only route goes to one cluster of
/// every pool's endpoints picks the pool with a subset load balancer on it.
/// Without the flag the same Envoy finds no subset (503): the metadata,
/// not a header, chose the pool.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dynamic_metadata_picks_the_pool_through_a_subset_load_balancer() {
    let rules = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../../examples/config/gateway.yaml"
    );
    let s = scene_binary(
        "envoy-metadata.yaml",
        &[
            "--streaming",
            "--rules",
            rules,
            "--metadata-namespace",
            "envoy.lb",
        ],
    )
    .await;
    demo_requests_route(&s).await;
    assert_eq!(s.gemma3.seen().len(), 1);
    assert_eq!(s.deepseek.seen().len(), 1);
    // A model no rule knows is refused by bbr-extproc before any pool.
    let r = s
        .post(
            "/v1/chat/completions",
            &[],
            r#"{"model":"no-such-model","messages":[]}"#,
        )
        .await;
    assert_eq!(r.status, 404, "{r:?}");
    assert_eq!(r.json()["error"]["code"], "model_not_found");
    drop(s);

    let control = scene_binary("envoy-metadata.yaml", &["--streaming", "--rules", rules]).await;
    let r = control.post("/v1/chat/completions", &[], CHAT).await;
    assert_eq!(r.status, 503, "{r:?}");
    assert_eq!(control.seen(), 0);
}

/// Envoy keeps its HTTP/2 connection to bbr-extproc open while idle for
/// longer than every timeout of the server: pings, answered by Envoy,
/// keep it; the header timeout only concerns a connection's first bytes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn binary_keeps_envoys_idle_connection_past_its_timeouts() {
    let s = scene_binary(
        "envoy-full-duplex.yaml",
        &[
            "--streaming",
            "--header-read-timeout-secs",
            "1",
            "--http2-keepalive-secs",
            "1",
        ],
    )
    .await;
    let metrics = s.metrics.unwrap();
    demo_requests_route(&s).await;
    let one = r#"bbr_connections_accepted_total{listener="grpc"} 1"#;
    wait_for_metric(metrics, one).await;
    // Idle for three times the header timeout and the ping interval.
    tokio::time::sleep(std::time::Duration::from_secs(3)).await;
    let r = s.post("/v1/chat/completions", &[], CHAT).await;
    assert_eq!(r.status, 200, "{r:?}");
    assert_eq!(r.header("x-inference-pool"), Some("gemma3"));
    // Still the one connection: nothing was closed and opened again.
    let text = http::get(metrics, "/metrics").await.unwrap();
    let text = String::from_utf8_lossy(&text.body);
    assert!(text.contains(one), "{text}");
    assert!(
        text.contains(r#"bbr_connections_header_timeouts_total{listener="grpc"} 0"#),
        "{text}"
    );
}
