//! `--tracing`: the binary exports one `gateway.request` span per request
//! over OTLP, to a receiver of the test's own on 127.0.0.1 (gRPC, and
//! HTTP/protobuf), with the decision's attributes and the parent taken from
//! the `traceparent` Envoy forwards; SIGTERM flushes what is queued; a
//! collector that cannot be reached does not get in the way of routing.

mod support;

use std::{
    net::SocketAddr,
    process::{Command, Stdio},
    time::{Duration, Instant},
};

use bbr_extproc::pb::{
    BodySendMode, external_processor_client::ExternalProcessorClient, processing_response::Response,
};
use opentelemetry_proto::tonic::trace::v1::span::SpanKind;
use support::{
    JSON,
    binary::{ServerProcess, start_binary_with_env},
    otlp::{Received, attribute, grpc_receiver, hex, http_receiver},
    protocol,
};

/// The trace and parent span of the `traceparent` the requests carry.
const TRACE_ID: &str = "4bf92f3577b34da6a3ce929d0e0e4736";
const PARENT_ID: &str = "00f067aa0ba902b7";
const TRACEPARENT: &str = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";

const RULES: &str = "rules:\n  - name: chat\n    match: { model: { exact: chatbot } }\n    pool: gemma3\n    targets: [{ model: gemma-3-27b, weight: 1 }]\n";

/// Starts the binary with tracing on, exporting with `env`.
/// The rules file is removed when the returned path is dropped.
fn start(env: &[(&str, &str)]) -> (ServerProcess, SocketAddr, tempfile::TempPath) {
    let rules = tempfile::Builder::new()
        .prefix("bbr-tracing-rules-")
        .suffix(".yaml")
        .tempfile()
        .unwrap()
        .into_temp_path();
    std::fs::write(&rules, RULES).unwrap();
    let (process, grpc, _, _) = start_binary_with_env(
        &[
            "--secure-serving=false",
            "--tracing",
            "--rules",
            rules.to_str().unwrap(),
        ],
        env,
    );
    (process, grpc, rules)
}

/// One request through the ext_proc protocol with `headers`; returns the
/// first response once the stream ended (which ends the request's span).
async fn request(grpc: SocketAddr, headers: &[(&str, &str)], body: &str) -> Response {
    let mut client = ExternalProcessorClient::connect(format!("http://{grpc}"))
        .await
        .unwrap();
    let mode = protocol(BodySendMode::FullDuplexStreamed, BodySendMode::None);
    let mut s = support::Stream::open(&mut client, Some(mode)).await;
    s.headers(headers, false).await;
    s.body(body.as_bytes(), true).await;
    let first = s.recv().await;
    s.close();
    // The body chunks sent back, then the end.
    let mut ended = false;
    for _ in 0..16 {
        if s.ends().await {
            ended = true;
            break;
        }
    }
    assert!(ended, "the stream did not end");
    first
}

/// A routed request and a refused one: their spans, with the routed one
/// the child of the traceparent.
async fn routed_and_refused(received: &Received, grpc: SocketAddr) {
    let first = request(
        grpc,
        &[JSON, ("traceparent", TRACEPARENT), ("tracestate", "k=v")],
        r#"{"model":"chatbot","messages":[]}"#,
    )
    .await;
    assert!(matches!(first, Response::RequestHeaders(_)), "{first:?}");
    let refused = request(grpc, &[JSON], r#"{"model":1}"#).await;
    assert!(
        matches!(refused, Response::ImmediateResponse(_)),
        "{refused:?}"
    );

    let spans = received.wait_for(2, Duration::from_secs(15)).await;
    assert_eq!(spans.len(), 2, "{spans:?}");
    for e in &spans {
        assert_eq!(e.span.name, "gateway.request");
        assert_eq!(e.span.kind, SpanKind::Server as i32);
        assert_eq!(e.service, "bbr-test");
    }
    let routed = spans
        .iter()
        .map(|e| &e.span)
        .find(|s| attribute(s, "bbr.outcome").as_deref() == Some("routed"))
        .expect("the routed request's span");
    assert_eq!(hex(&routed.trace_id), TRACE_ID);
    assert_eq!(hex(&routed.parent_span_id), PARENT_ID);
    assert_eq!(routed.trace_state, "k=v");
    assert_eq!(attribute(routed, "bbr.model").as_deref(), Some("chatbot"));
    assert_eq!(
        attribute(routed, "bbr.model.routed").as_deref(),
        Some("gemma-3-27b")
    );
    assert_eq!(attribute(routed, "bbr.rule").as_deref(), Some("chat"));
    assert_eq!(attribute(routed, "bbr.pool").as_deref(), Some("gemma3"));
    assert_eq!(attribute(routed, "error.type"), None);

    let rejected = spans
        .iter()
        .map(|e| &e.span)
        .find(|s| attribute(s, "bbr.outcome").as_deref() == Some("rejected"))
        .expect("the refused request's span");
    // No traceparent: a trace of its own, no parent.
    assert_ne!(hex(&rejected.trace_id), TRACE_ID);
    assert!(rejected.parent_span_id.is_empty());
    assert_eq!(
        attribute(rejected, "error.type").as_deref(),
        Some("model_not_string")
    );
    assert_eq!(
        attribute(rejected, "http.response.status_code").as_deref(),
        Some("400")
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn spans_go_to_an_otlp_grpc_collector_with_the_decision_and_the_parent() {
    let received = Received::default();
    let collector = grpc_receiver(received.clone()).await;
    let endpoint = format!("http://{collector}");
    let (_process, grpc, _rules) = start(&[
        ("OTEL_EXPORTER_OTLP_ENDPOINT", &endpoint),
        ("OTEL_SERVICE_NAME", "bbr-test"),
        ("OTEL_BSP_SCHEDULE_DELAY", "50"),
    ]);
    routed_and_refused(&received, grpc).await;

    // A request that passes unrouted says why.
    request(grpc, &[JSON], r#"{"messages":[]}"#).await;
    let spans = received.wait_for(3, Duration::from_secs(15)).await;
    let passed = spans
        .iter()
        .map(|e| &e.span)
        .find(|s| attribute(s, "bbr.outcome").as_deref() == Some("passed"))
        .expect("the passed request's span");
    assert_eq!(
        attribute(passed, "bbr.pass_reason").as_deref(),
        Some("no_model")
    );

    // Routed, then refused: the model named twice, the second time after
    // the routing went out. And a stream Envoy ends before the body.
    let mut client = ExternalProcessorClient::connect(format!("http://{grpc}"))
        .await
        .unwrap();
    let mode = protocol(BodySendMode::FullDuplexStreamed, BodySendMode::None);
    let mut s = support::Stream::open(&mut client, Some(mode)).await;
    s.headers(&[JSON], false).await;
    s.body(br#"{"model":"chatbot","#, false).await;
    assert!(matches!(s.recv().await, Response::RequestHeaders(_)));
    s.body(br#""model":"other"}"#, true).await;
    let mut refused = false;
    for _ in 0..8 {
        if matches!(s.recv().await, Response::ImmediateResponse(_)) {
            refused = true;
            break;
        }
    }
    assert!(refused, "the duplicate was not refused");
    s.close();
    let mut cut = support::Stream::open(&mut client, Some(mode)).await;
    cut.headers(&[JSON], false).await;
    cut.close();
    assert!(cut.ends().await);

    let spans = received.wait_for(5, Duration::from_secs(15)).await;
    assert_eq!(spans.len(), 5, "{spans:?}");
    let late = spans
        .iter()
        .map(|e| &e.span)
        .find(|s| attribute(s, "error.type").as_deref() == Some("duplicate_model"))
        .expect("the span of the request refused after it was routed");
    assert_eq!(attribute(late, "bbr.outcome").as_deref(), Some("rejected"));
    assert_eq!(attribute(late, "bbr.pool").as_deref(), Some("gemma3"));
    assert!(
        spans
            .iter()
            .any(|e| attribute(&e.span, "bbr.outcome").as_deref() == Some("incomplete")),
        "{spans:?}"
    );
    // One outcome each, whatever happened in between.
    for e in &spans {
        let outcomes = e
            .span
            .attributes
            .iter()
            .filter(|kv| kv.key == "bbr.outcome");
        assert_eq!(outcomes.count(), 1, "{:?}", e.span);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn spans_go_to_an_otlp_http_collector_when_the_protocol_says_so() {
    let received = Received::default();
    let collector = http_receiver(received.clone()).await;
    let endpoint = format!("http://{collector}");
    let (_process, grpc, _rules) = start(&[
        ("OTEL_EXPORTER_OTLP_PROTOCOL", "http/protobuf"),
        ("OTEL_EXPORTER_OTLP_ENDPOINT", &endpoint),
        ("OTEL_SERVICE_NAME", "bbr-test"),
        ("OTEL_BSP_SCHEDULE_DELAY", "50"),
    ]);
    routed_and_refused(&received, grpc).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_flushes_the_spans_still_queued() {
    let received = Received::default();
    let collector = grpc_receiver(received.clone()).await;
    let endpoint = format!("http://{collector}");
    // Batches every ten minutes: only the flush at shutdown sends them.
    let (mut process, grpc, _rules) = start(&[
        ("OTEL_EXPORTER_OTLP_ENDPOINT", &endpoint),
        ("OTEL_SERVICE_NAME", "bbr-test"),
        ("OTEL_BSP_SCHEDULE_DELAY", "600000"),
    ]);
    request(
        grpc,
        &[JSON, ("traceparent", TRACEPARENT)],
        r#"{"model":"chatbot"}"#,
    )
    .await;
    assert!(
        received
            .wait_for(1, Duration::from_millis(300))
            .await
            .is_empty(),
        "exported before the shutdown"
    );
    let killed = Command::new("kill")
        .args(["-TERM", &process.0.id().to_string()])
        .stdin(Stdio::null())
        .status()
        .unwrap();
    assert!(killed.success());
    let spans = received.wait_for(1, Duration::from_secs(15)).await;
    assert_eq!(spans.len(), 1, "{spans:?}");
    assert_eq!(hex(&spans[0].span.trace_id), TRACE_ID);
    // And the process exits by itself.
    let deadline = Instant::now() + Duration::from_secs(15);
    while process.0.try_wait().unwrap().is_none() {
        assert!(Instant::now() < deadline, "no exit after SIGTERM");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unreachable_collector_does_not_get_in_the_way_of_routing() {
    // A port nothing listens on.
    let closed = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap();
    for protocol in ["grpc", "http/protobuf"] {
        let endpoint = format!("http://{closed}");
        let (mut process, grpc, _rules) = start(&[
            ("OTEL_EXPORTER_OTLP_PROTOCOL", protocol),
            ("OTEL_EXPORTER_OTLP_ENDPOINT", &endpoint),
            ("OTEL_BSP_SCHEDULE_DELAY", "20"),
        ]);
        for _ in 0..20 {
            let first = request(grpc, &[JSON], r#"{"model":"chatbot"}"#).await;
            let Response::RequestHeaders(h) = &first else {
                panic!("{protocol}: {first:?}")
            };
            let set = support::set_headers(&h.response.clone().unwrap_or_default());
            assert!(
                set.contains(&("x-gateway-inference-pool".to_owned(), "gemma3".to_owned())),
                "{protocol}: {set:?}"
            );
        }
        // And it still stops on SIGTERM, the flush bounded.
        Command::new("kill")
            .args(["-TERM", &process.0.id().to_string()])
            .status()
            .unwrap();
        let deadline = Instant::now() + Duration::from_secs(15);
        while process.0.try_wait().unwrap().is_none() {
            assert!(
                Instant::now() < deadline,
                "{protocol}: no exit after SIGTERM"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
}

#[test]
fn an_unknown_otlp_protocol_or_exporter_is_an_error_that_names_it() {
    for (name, value) in [
        ("OTEL_EXPORTER_OTLP_PROTOCOL", "http/json"),
        ("OTEL_TRACES_EXPORTER", "zipkin"),
    ] {
        let out = Command::new(support::binary::path())
            .args(support::binary::FREE_PORTS)
            .args(["--secure-serving=false", "--tracing"])
            .env(name, value)
            .stdin(Stdio::null())
            .output()
            .unwrap();
        assert!(!out.status.success(), "{name}={value} accepted");
        assert!(out.stdout.is_empty(), "{name}={value}: started serving");
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(stderr.contains(value), "{stderr}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn otel_traces_exporter_none_turns_the_export_off() {
    let received = Received::default();
    let collector = grpc_receiver(received.clone()).await;
    let endpoint = format!("http://{collector}");
    let (mut process, grpc, _rules) = start(&[
        ("OTEL_EXPORTER_OTLP_ENDPOINT", &endpoint),
        ("OTEL_TRACES_EXPORTER", "none"),
        ("OTEL_BSP_SCHEDULE_DELAY", "20"),
    ]);
    let first = request(grpc, &[JSON], r#"{"model":"chatbot"}"#).await;
    assert!(matches!(first, Response::RequestHeaders(_)), "{first:?}");
    // Nothing queued: nothing flushed at exit either.
    Command::new("kill")
        .args(["-TERM", &process.0.id().to_string()])
        .status()
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(15);
    while process.0.try_wait().unwrap().is_none() {
        assert!(Instant::now() < deadline, "no exit after SIGTERM");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(received.spans.lock().unwrap().is_empty());
}
