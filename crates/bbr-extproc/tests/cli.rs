//! The `bbr-extproc` binary's failure-policy and body-field flags: usage
//! errors, and the behaviour they configure, over plaintext gRPC.

mod support;

use std::{
    net::SocketAddr,
    process::{Command, Stdio},
};

use bbr_extproc::pb::{
    BodySendMode, external_processor_client::ExternalProcessorClient, processing_response::Response,
};
use support::{
    binary::{FREE_PORTS, ServerProcess, start_binary},
    *,
};

/// Starts the binary on free ports; returns the gRPC and metrics addresses.
fn start(args: &[&str]) -> (ServerProcess, SocketAddr, SocketAddr) {
    let (process, grpc, _, metrics) = start_binary(args);
    (process, grpc, metrics)
}

/// Runs the binary with `args` and expects a usage error (exit status 2,
/// nothing bound); returns its standard error.
fn usage_error(args: &[&str]) -> String {
    let out = Command::new(support::binary::path())
        .args(FREE_PORTS)
        .args(args)
        .stdin(Stdio::null())
        .output()
        .expect("cannot start bbr-extproc");
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    assert_eq!(out.status.code(), Some(2), "{args:?}: {stderr}");
    assert!(out.stdout.is_empty(), "{args:?} started serving");
    stderr
}

/// Runs the binary with its gRPC port on a port that is already taken, and
/// returns its exit status and standard error (a pipe, not a terminal).
fn start_on_a_taken_port(args: &[&str]) -> (std::process::ExitStatus, String, u16) {
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = taken.local_addr().unwrap().port().to_string();
    let out = Command::new(support::binary::path())
        .args(["--address", "127.0.0.1", "--grpc-port", &port])
        .args(["--grpc-health-port", "0", "--metrics-port", "0"])
        .arg("--secure-serving=false")
        .args(args)
        .env_remove("RUST_LOG")
        .stdin(Stdio::null())
        .output()
        .expect("cannot start bbr-extproc");
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    assert!(out.stdout.is_empty(), "started serving on a taken port");
    (out.status, stderr, port.parse().unwrap())
}

#[test]
fn a_taken_port_is_named_in_plain_text_logs() {
    let (status, stderr, port) = start_on_a_taken_port(&[]);
    assert!(!status.success());
    assert!(
        stderr.contains(&format!(
            "cannot listen on 127.0.0.1:{port} (--grpc-port {port})"
        )),
        "{stderr}"
    );
    // stderr is a pipe here: no colour codes for a log file to carry.
    assert!(!stderr.contains('\x1b'), "{stderr:?}");
}

#[test]
fn log_format_json_writes_one_object_a_line() {
    let (status, stderr, port) = start_on_a_taken_port(&["--log-format", "json"]);
    assert!(!status.success());
    let lines: Vec<serde_json::Value> = stderr
        .lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("{e}: {l:?}")))
        .collect();
    let error = lines
        .iter()
        .find(|l| l["level"] == "ERROR")
        .unwrap_or_else(|| panic!("no error line in {stderr}"));
    assert_eq!(error["fields"]["message"], "bbr-extproc failed");
    let text = error["fields"]["error"].as_str().unwrap();
    assert!(text.contains(&format!("(--grpc-port {port})")), "{text}");

    let e = usage_error(&["--log-format", "xml"]);
    assert!(e.contains("xml"), "{e}");
}

#[test]
fn unknown_kinds_and_bad_headers_are_usage_errors() {
    let e = usage_error(&["--fail-open", "invalid_json,bogus_kind"]);
    assert!(e.contains("bogus_kind"), "{e}");
    let e = usage_error(&["-fail-open=Invalid_Json"]);
    assert!(e.contains("Invalid_Json"), "{e}");
    let e = usage_error(&["--body-field", "stream=x-gateway-inference-pool"]);
    assert!(e.contains("x-gateway-inference-pool"), "{e}");
    let e = usage_error(&["--body-field", "stream=keep-alive"]);
    assert!(e.contains("keep-alive"), "{e}");
    let e = usage_error(&["--body-field", "stream=x(stream)"]);
    assert!(e.contains("not a valid header name"), "{e}");
    let e = usage_error(&["--body-field=a=x-a", "--body-field=b=X-A"]);
    assert!(e.contains("same header"), "{e}");
}

#[tokio::test]
async fn metrics_are_listed_from_start_up() {
    let (_process, _grpc, metrics) = start(&[
        "--secure-serving=false",
        "--body-field",
        "stream=x-llm-stream",
        "-v",
        "0",
    ]);
    let reply = http::get(metrics, "/metrics").await.unwrap();
    let text = String::from_utf8_lossy(&reply.body);
    for line in [
        "bbr_success_total 0",
        "bbr_model_not_in_body_total 0",
        "bbr_model_not_parsed_total 0",
        "bbr_body_field_not_found_total{field=\"model\"} 0",
        "bbr_body_field_empty_total{field=\"stream\"} 0",
        "bbr_rejected_total{reason=\"duplicate_model\"} 0",
        "bbr_fail_open_total{reason=\"invalid_json\"} 0",
        "bbr_rules_reload_failures_total 0",
    ] {
        assert!(
            text.lines().any(|l| l == line),
            "{line:?} missing from:\n{text}"
        );
    }
}

#[tokio::test]
async fn flags_set_the_failure_policy_and_the_body_fields() {
    let (_process, grpc, metrics) = start(&[
        "--secure-serving=false",
        "--fail-open",
        "invalid_json",
        "--reject-missing-model",
        "--body-field",
        "stream=x-llm-stream",
        "-v",
        "0",
    ]);
    let mut c = ExternalProcessorClient::connect(format!("http://{grpc}"))
        .await
        .unwrap();
    let mode = || {
        Some(protocol(
            BodySendMode::FullDuplexStreamed,
            BodySendMode::None,
        ))
    };

    // invalid_json fails open: passed through, nothing set.
    let mut s = Stream::open(&mut c, mode()).await;
    s.headers(&[JSON, ("x-llm-stream", "spoof")], false).await;
    s.body(br#"{"model":"chatbot",}"#, true).await;
    let h = s.recv().await;
    assert!(matches!(h, Response::RequestHeaders(_)), "{h:?}");
    let hc = common(&h);
    assert!(set_headers(&hc).is_empty(), "{hc:?}");
    assert_eq!(removed_headers(&hc), ["x-llm-stream"]);
    assert_eq!(
        streamed(&s.recv().await),
        (br#"{"model":"chatbot",}"#.to_vec(), true)
    );

    // Other kinds are still refused.
    let mut s = Stream::open(&mut c, mode()).await;
    s.headers(&[JSON], false).await;
    s.body(br#"{"model":true}"#, true).await;
    let (status, body, _) = immediate(&s.recv().await);
    assert_eq!(
        (status, &body["error"]["code"]),
        (400, &"model_not_string".into())
    );

    // A body without a model is refused.
    let mut s = Stream::open(&mut c, mode()).await;
    s.headers(&[JSON], false).await;
    s.body(br#"{"prompt":"x"}"#, true).await;
    let (status, body, _) = immediate(&s.recv().await);
    assert_eq!(
        (status, &body["error"]["code"]),
        (400, &"invalid_model".into())
    );

    // The body field is copied.
    let mut s = Stream::open(&mut c, mode()).await;
    s.headers(&[JSON], false).await;
    s.body(br#"{"model":"chatbot","stream":false}"#, true).await;
    assert_eq!(
        set_headers(&common(&s.recv().await)),
        [
            ("x-gateway-model-name".to_owned(), "chatbot".to_owned()),
            ("x-llm-stream".to_owned(), "false".to_owned()),
        ]
    );

    let reply = http::get(metrics, "/metrics").await.unwrap();
    let text = String::from_utf8_lossy(&reply.body);
    for line in [
        "bbr_fail_open_total{reason=\"invalid_json\"} 1",
        "bbr_rejected_total{reason=\"model_not_string\"} 1",
        "bbr_rejected_total{reason=\"invalid_model\"} 1",
        "bbr_body_field_not_found_total{field=\"stream\"} 1",
        "bbr_body_field_not_found_total{field=\"model\"} 1",
        "bbr_success_total 1",
    ] {
        assert!(
            text.lines().any(|l| l == line),
            "{line} missing from\n{text}"
        );
    }
}
