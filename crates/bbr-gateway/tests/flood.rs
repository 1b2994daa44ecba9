//! The gateway process under a 1 024-descriptor limit (a common container
//! default) against clients that connect and send nothing: every such
//! connection is closed after the header timeout, counted from accept,
//! and normal requests are served during the flood and after it.

mod support;

use std::time::Duration;

use bbr_listen::{limits, probe::SilentFlood};
use support::*;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// More connections than the process has descriptors.
const FLOOD: usize = 1141;
const CHAT: &str = r#"{"model":"chatbot","messages":[{"role":"user","content":"hi"}]}"#;

/// A chat request on a new connection, given `within` to be answered.
async fn chat(gw: &GatewayProcess, within: Duration) -> u16 {
    let client = reqwest::Client::builder()
        .http1_only()
        .no_proxy()
        .timeout(within)
        .build()
        .unwrap();
    let response = client
        .post(gw.url("/v1/chat/completions"))
        .header("content-type", "application/json")
        .body(CHAT)
        .send()
        .await
        .expect("the chat request is answered");
    response.status().as_u16()
}

#[tokio::test]
async fn silent_connections_never_starve_the_gateway_of_descriptors() {
    // This test's own connections need descriptors too.
    limits::raise_descriptor_limit();
    let gw = GatewayProcess::start_with_descriptors(
        Some(1024),
        &[
            "--admin-listen",
            "127.0.0.1:0",
            "--header-read-timeout-secs",
            "2",
        ],
    );
    // It says what it found and what it derived: (1024 - 128 - 64) / 2.
    let said = gw.stdout().join("\n");
    assert!(
        said.contains("descriptor limit 1024 (was 1024, hard 1024): up to 416 client connections"),
        "{said}"
    );
    bounded(async {
        let started = std::time::Instant::now();
        let flood = SilentFlood::open(gw.addr, FLOOD, Duration::from_secs(1)).await;
        eprintln!(
            "{} connected, {} not, in {:?}",
            flood.len(),
            flood.not_connected,
            started.elapsed()
        );
        assert!(flood.len() > 416, "only {} connected", flood.len());

        // The admin listener has its own slots: it answers at once.
        let admin = reqwest::Client::builder()
            .no_proxy()
            .timeout(Duration::from_secs(5))
            .build()
            .unwrap();
        let health = admin.get(gw.admin_url("/healthz")).send().await.unwrap();
        assert_eq!(health.status(), 200);
        // A normal request waits for slots to free up, then is served.
        assert_eq!(chat(&gw, Duration::from_secs(30)).await, 200);

        eprintln!("served during the flood after {:?}", started.elapsed());
        let outcome = flood.wait_closed(Duration::from_secs(30)).await;
        eprintln!("all closed after {:?}", started.elapsed());
        assert_eq!(outcome.still_open, 0, "{outcome:?}");
        assert_eq!(chat(&gw, Duration::from_secs(5)).await, 200);

        // The admin listener too closes silent connections.
        let admin_flood = SilentFlood::open(gw.admin.unwrap(), 200, Duration::from_secs(1)).await;
        assert!(
            admin_flood.len() > 64,
            "only {} connected",
            admin_flood.len()
        );
        let outcome = admin_flood.wait_closed(Duration::from_secs(30)).await;
        assert_eq!(outcome.still_open, 0, "{outcome:?}");
        let health = admin.get(gw.admin_url("/healthz")).send().await.unwrap();
        assert_eq!(health.status(), 200);
    })
    .await;
}

#[tokio::test]
async fn half_a_head_and_a_silent_http2_client_are_closed() {
    let gw = GatewayProcess::start(&["--header-read-timeout-secs", "1"]);
    bounded(async {
        for first in [
            &b"POST /v1/chat/completions HTTP/1.1\r\nHost: gateway\r\n"[..],
            b"PRI * HTTP/2.0\r\n\r\nSM\r\n",
            b"",
        ] {
            let mut client = tokio::net::TcpStream::connect(gw.addr).await.unwrap();
            client.write_all(first).await.unwrap();
            let mut got = Vec::new();
            // Closed (end of stream or reset) with no answer.
            let _ = client.read_to_end(&mut got).await;
            assert!(got.is_empty(), "{}", String::from_utf8_lossy(&got));
        }
        assert_eq!(chat(&gw, Duration::from_secs(5)).await, 200);
    })
    .await;
}

#[tokio::test]
async fn an_idle_keep_alive_connection_is_closed_after_the_idle_timeout() {
    let gw = GatewayProcess::start(&["--idle-timeout-secs", "1"]);
    bounded(async {
        let mut client = tokio::net::TcpStream::connect(gw.addr).await.unwrap();
        let request = format!(
            "POST /v1/chat/completions HTTP/1.1\r\nHost: gateway\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{CHAT}",
            CHAT.len()
        );
        client.write_all(request.as_bytes()).await.unwrap();
        let mut answer = Vec::new();
        // The answer, then the connection is closed once idle.
        let _ = client.read_to_end(&mut answer).await;
        let answer = String::from_utf8_lossy(&answer);
        assert!(answer.starts_with("HTTP/1.1 200 OK"), "{answer}");
        assert!(answer.contains("chatbot"), "{answer}");
    })
    .await;
}
