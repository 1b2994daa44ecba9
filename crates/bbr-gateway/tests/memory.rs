//! The gateway's memory under large and slow bodies, measured on the
//! gateway process itself (`/proc/<pid>/status`): a body streams through
//! in flat memory, the bytes held before decisions stay within the hold
//! budget, and a client that stops sending before the model is cut off.

mod support;

use std::time::Duration;

use bytes::Bytes;
use support::*;
use tokio::{
    io::{AsyncReadExt, AsyncWriteExt},
    net::TcpStream,
};

const MIB: u64 = 1 << 20;

/// `count` copies of one 64 KiB chunk of text (shared, not copied).
fn filler(count: usize) -> impl Iterator<Item = Bytes> {
    let chunk = Bytes::from(vec![b'a'; 64 << 10]);
    std::iter::repeat_n(chunk, count)
}

#[tokio::test]
async fn a_1_gib_body_with_the_model_first_streams_through_in_flat_memory() {
    tokio::time::timeout(Duration::from_secs(600), async {
        let gw = GatewayProcess::start(&[]);
        let head =
            Bytes::from_static(br#"{"model":"chatbot","messages":[{"role":"user","content":""#);
        let tail = Bytes::from_static(br#""}]}"#);
        let chunks = 16 * 1024; // 1 GiB of 64 KiB chunks
        let total = head.len() as u64 + chunks as u64 * (64 << 10) + tail.len() as u64;
        let body = std::iter::once(head)
            .chain(filler(chunks))
            .chain(std::iter::once(tail))
            .map(Ok::<_, std::io::Error>);
        let body = reqwest::Body::wrap_stream(futures_util::stream::iter(body));
        let response = post_json(&http1(), gw.url("/v1/chat/completions"), body).await;
        assert_eq!(response.status(), 200);
        assert_eq!(response.headers()["x-inference-pool"], "gemma3");
        assert_eq!(
            response.headers()["x-pool-received-bytes"],
            total.to_string().as_str()
        );
        let peak = gw.memory_kib("VmHWM") * 1024;
        eprintln!("gateway peak resident set: {} MiB", peak / MIB);
        assert!(
            peak < 64 * MIB,
            "the gateway's peak resident set was {} MiB",
            peak / MIB
        );
    })
    .await
    .expect("the test finished within its time limit");
}

/// Sends `head` (the request line and headers) and then `body` on a raw
/// connection, and returns the status of the answer, which may come before
/// the body is all sent (the writer stops when the gateway stops reading).
async fn raw_status(
    addr: std::net::SocketAddr,
    head: String,
    body: impl Iterator<Item = (Bytes, Duration)> + Send + 'static,
) -> (u16, String) {
    let stream = TcpStream::connect(addr).await.unwrap();
    let (mut reader, mut writer) = stream.into_split();
    let sender = tokio::spawn(async move {
        writer.write_all(head.as_bytes()).await?;
        for (chunk, pause) in body {
            if !pause.is_zero() {
                tokio::time::sleep(pause).await;
            }
            writer.write_all(&chunk).await?;
        }
        writer.flush().await?;
        Ok::<_, std::io::Error>(writer)
    });
    let mut answer = Vec::new();
    let mut buf = vec![0u8; 16 << 10];
    let status = loop {
        let n = reader.read(&mut buf).await.unwrap_or(0);
        if n == 0 {
            break 0;
        }
        answer.extend_from_slice(&buf[..n]);
        let text = String::from_utf8_lossy(&answer);
        if let Some(end) = text.find("\r\n\r\n") {
            let status = text[..end]
                .split_whitespace()
                .nth(1)
                .and_then(|s| s.parse().ok())
                .unwrap_or(0);
            break status;
        }
    };
    sender.abort();
    (status, String::from_utf8_lossy(&answer).into_owned())
}

fn request_head(length: u64) -> String {
    format!(
        "POST /v1/chat/completions HTTP/1.1\r\nhost: gateway\r\ncontent-type: application/json\r\ncontent-length: {length}\r\n\r\n"
    )
}

#[tokio::test]
async fn sixteen_bodies_of_31_mib_before_the_model_stay_within_the_hold_budget() {
    tokio::time::timeout(Duration::from_secs(600), async {
        let budget_mib = 128;
        let gw = GatewayProcess::start(&["--hold-budget-mib", &budget_mib.to_string()]);
        let head = Bytes::from_static(br#"{"messages":[{"role":"user","content":""#);
        let tail = Bytes::from_static(br#""}],"model":"chatbot"}"#);
        let chunks = 31 * 16; // 31 MiB of 64 KiB chunks
        let length = head.len() as u64 + chunks as u64 * (64 << 10) + tail.len() as u64;
        let clients: Vec<_> = (0..16)
            .map(|_| {
                let body = std::iter::once(head.clone())
                    .chain(filler(chunks))
                    .chain(std::iter::once(tail.clone()))
                    .map(|chunk| (chunk, Duration::ZERO));
                tokio::spawn(raw_status(gw.addr, request_head(length), body))
            })
            .collect();
        let mut statuses = Vec::new();
        for client in clients {
            let (status, answer) = client.await.unwrap();
            if status == 503 {
                assert!(answer.contains("retry-after: 1"), "{answer}");
            }
            statuses.push(status);
        }
        let ok = statuses.iter().filter(|s| **s == 200).count();
        let overloaded = statuses.iter().filter(|s| **s == 503).count();
        assert_eq!(ok + overloaded, 16, "{statuses:?}");
        assert!(ok >= 1, "none routed: {statuses:?}");
        assert!(overloaded >= 1, "none refused: {statuses:?}");
        // What is held is bounded by the budget, plus the process's own.
        let peak = gw.memory_kib("VmHWM") * 1024;
        eprintln!(
            "{statuses:?}; gateway peak resident set: {} MiB",
            peak / MIB
        );
        assert!(
            peak < (budget_mib + 64) * MIB,
            "the gateway's peak resident set was {} MiB for a budget of {budget_mib} MiB",
            peak / MIB
        );
    })
    .await
    .expect("the test finished within its time limit");
}

#[tokio::test]
async fn a_client_sending_a_byte_at_a_time_is_cut_off_by_the_body_idle_timeout() {
    bounded(async {
        // Gaps of 100 ms between bytes, twice the timeout.
        let gw = GatewayProcess::start(&["--body-idle-timeout-ms", "50"]);
        let body = br#"{"messages":[{"role":"user","content":"hi"}],"model":"chatbot"}"#;
        let bytes = body
            .iter()
            .map(|b| (Bytes::copy_from_slice(&[*b]), Duration::from_millis(100)));
        let (status, answer) = raw_status(gw.addr, request_head(body.len() as u64), bytes).await;
        assert_eq!(status, 408, "{answer}");
        let line = gw.log_line(&["gateway::access", "status=408"]).await;
        assert!(line.contains("error=body_timeout"), "{line}");
    })
    .await;
}
