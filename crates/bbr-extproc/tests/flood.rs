//! The `bbr-extproc` binary under a 1 024-descriptor limit (a common
//! container default) against clients that connect and send nothing: on
//! every port, such connections are closed after the header timeout,
//! counted from accept, and Envoy's requests, probes and scrapes are
//! served during the flood and after it.

mod support;

use std::{net::SocketAddr, time::Duration};

use bbr_extproc::pb::{external_processor_client::ExternalProcessorClient, processing_response};
use bbr_listen::{limits, probe::SilentFlood};
use support::{
    Stream,
    binary::{ServerProcess, start_binary_with_descriptors},
    common, http, protocol, set_headers,
};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tonic::transport::{Certificate, ClientTlsConfig, Endpoint};
use tonic_health::pb::{HealthCheckRequest, health_client::HealthClient};

/// More connections than the process has descriptors.
const FLOOD: usize = 1141;
/// How long every wait of this test may take, at most.
const BOUND: Duration = Duration::from_secs(40);

/// A new TLS connection to the gRPC port (trusting `cert`), and one
/// routed ext_proc exchange over it.
async fn route_one(grpc: SocketAddr, cert: &[u8]) {
    let tls = ClientTlsConfig::new()
        .ca_certificate(Certificate::from_pem(cert))
        .domain_name("localhost");
    let channel = Endpoint::from_shared(format!("https://{grpc}"))
        .unwrap()
        .tls_config(tls)
        .unwrap()
        .connect_timeout(BOUND)
        .connect()
        .await
        .expect("a new connection to the gRPC port is served");
    let mut client = ExternalProcessorClient::new(channel);
    let buffered = protocol(
        bbr_extproc::pb::BodySendMode::Buffered,
        bbr_extproc::pb::BodySendMode::None,
    );
    let mut stream = Stream::open(&mut client, Some(buffered)).await;
    stream
        .headers(
            &[
                (":path", "/v1/chat/completions"),
                ("content-type", "application/json"),
            ],
            false,
        )
        .await;
    let _ = stream.recv().await;
    stream
        .body(br#"{"model":"chatbot","prompt":"hi"}"#, true)
        .await;
    let answer = stream.recv().await;
    assert!(
        matches!(answer, processing_response::Response::RequestBody(_)),
        "{answer:?}"
    );
    let headers = set_headers(&common(&answer));
    assert!(
        headers
            .iter()
            .any(|(k, v)| k.eq_ignore_ascii_case("x-gateway-model-name") && v == "chatbot"),
        "{headers:?}"
    );
}

async fn health_serving(health: SocketAddr) {
    let channel = Endpoint::from_shared(format!("http://{health}"))
        .unwrap()
        .connect_timeout(BOUND)
        .connect()
        .await
        .expect("the health port accepts in time");
    let mut client = HealthClient::new(channel);
    let status = client
        .check(HealthCheckRequest {
            service: String::new(),
        })
        .await
        .unwrap()
        .into_inner()
        .status;
    assert_eq!(status, 1, "SERVING");
}

async fn metrics_text(metrics: SocketAddr) -> String {
    let reply = tokio::time::timeout(BOUND, http::get(metrics, "/metrics"))
        .await
        .expect("the metrics port answers in time")
        .expect("the metrics port answers");
    String::from_utf8_lossy(&reply.body).into_owned()
}

async fn flood_is_closed(addr: SocketAddr, count: usize) {
    let flood = SilentFlood::open(addr, count, Duration::from_secs(1)).await;
    assert!(flood.len() > 64, "only {} connected", flood.len());
    let outcome = flood.wait_closed(BOUND).await;
    assert_eq!(outcome.still_open, 0, "{outcome:?}");
}

fn start(dir: &std::path::Path) -> (ServerProcess, SocketAddr, SocketAddr, SocketAddr) {
    start_binary_with_descriptors(
        1024,
        &[
            "--cert-path",
            dir.to_str().unwrap(),
            "--header-read-timeout-secs",
            "2",
        ],
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn silent_connections_never_starve_any_port_of_descriptors() {
    // This test's own connections need descriptors too.
    limits::raise_descriptor_limit();
    let certified = rcgen::generate_simple_self_signed(vec!["localhost".to_owned()]).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let cert = certified.cert.pem();
    std::fs::write(dir.path().join("tls.crt"), &cert).unwrap();
    std::fs::write(
        dir.path().join("tls.key"),
        certified.signing_key.serialize_pem(),
    )
    .unwrap();
    let (process, grpc, health, metrics) = start(dir.path());
    // 1024 - 64 reserved - 64 health - 64 metrics.
    let log = process.log();
    assert!(
        log.contains("soft=1024") && log.contains("grpc_connections=832"),
        "{log}"
    );

    // The gRPC port (TLS) flooded: probes and scrapes are answered at
    // once, a new Envoy connection as soon as slots free up.
    let flood = SilentFlood::open(grpc, FLOOD, Duration::from_secs(1)).await;
    assert!(flood.len() > 832, "only {} connected", flood.len());
    health_serving(health).await;
    assert!(metrics_text(metrics).await.contains("bbr_connections_open"));
    route_one(grpc, cert.as_bytes()).await;
    let outcome = flood.wait_closed(BOUND).await;
    assert_eq!(outcome.still_open, 0, "{outcome:?}");
    route_one(grpc, cert.as_bytes()).await;

    // The health and metrics ports hold their own floods and serve after.
    flood_is_closed(health, 200).await;
    health_serving(health).await;
    flood_is_closed(metrics, 200).await;
    let text = metrics_text(metrics).await;
    for listener in ["grpc", "health", "metrics"] {
        let timeouts = format!("bbr_connections_header_timeouts_total{{listener=\"{listener}\"}}");
        let count: u64 = text
            .lines()
            .find_map(|l| l.strip_prefix(&timeouts)?.trim().parse().ok())
            .unwrap_or_else(|| panic!("no {timeouts} in {text}"));
        assert!(count >= 64, "{listener}: {count}");
    }
}

#[tokio::test]
async fn half_a_head_and_a_silent_http2_client_are_closed_on_every_port() {
    let (_process, grpc, health, metrics) = start_binary_with_descriptors(
        4096,
        &["--secure-serving=false", "--header-read-timeout-secs", "1"],
    );
    let cases: [(SocketAddr, &[u8]); 4] = [
        (metrics, b"GET /metrics HTTP/1.1\r\nHost: bbr\r\n"),
        (grpc, b"PRI * HTTP/2.0\r\n\r\nSM\r\n"),
        (health, b"PRI * HTTP/2.0\r\n"),
        (grpc, b""),
    ];
    for (addr, first) in cases {
        let mut client = tokio::net::TcpStream::connect(addr).await.unwrap();
        client.write_all(first).await.unwrap();
        let mut got = Vec::new();
        let closed = tokio::time::timeout(BOUND, client.read_to_end(&mut got)).await;
        assert!(closed.is_ok(), "{addr} kept {first:?} open");
    }
    health_serving(health).await;
}

/// `--max-connections` set above what the descriptors allow: accepting
/// fails with EMFILE (the header timeout is long enough for the whole
/// flood to be open at once, however slowly this machine opens it). The server pauses instead of spinning (a spin would
/// count millions of errors in the seconds the flood lasts), and serves
/// again once the silent connections are closed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn out_of_descriptors_the_accept_loop_waits_and_recovers() {
    limits::raise_descriptor_limit();
    let (_process, grpc, health, metrics) = start_binary_with_descriptors(
        1024,
        &[
            "--secure-serving=false",
            "--header-read-timeout-secs",
            "5",
            "--max-connections",
            "5000",
        ],
    );
    let flood = SilentFlood::open(grpc, FLOOD, Duration::from_secs(1)).await;
    let outcome = flood.wait_closed(BOUND).await;
    assert_eq!(outcome.still_open, 0, "{outcome:?}");
    health_serving(health).await;
    let text = metrics_text(metrics).await;
    let errors: u64 = text
        .lines()
        .find_map(|l| {
            l.strip_prefix(r#"bbr_accept_errors_total{listener="grpc"}"#)?
                .trim()
                .parse()
                .ok()
        })
        .unwrap_or_else(|| panic!("no accept errors counted in {text}"));
    assert!(
        (1..1000).contains(&errors),
        "{errors} accept errors: none provoked, or a spin"
    );
}
