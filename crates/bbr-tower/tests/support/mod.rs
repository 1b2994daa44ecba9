//! Clients and bounds shared by the integration tests: loopback HTTP/1.1
//! and HTTP/2 clients, chunked bodies, the error contract's body, a time
//! limit on every test. Also used by the examples' gateway tests.
#![allow(dead_code, unreachable_pub)]

use std::{convert::Infallible, future::Future, net::SocketAddr, time::Duration};

use bytes::Bytes;
use sha2::{Digest, Sha256};

/// Every test is bounded: nothing here may hang a test run.
pub const LIMIT: Duration = Duration::from_secs(60);

pub fn loopback() -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], 0))
}

/// An HTTP/1.1 client.
pub fn http1() -> reqwest::Client {
    reqwest::Client::builder()
        .http1_only()
        .no_proxy()
        .build()
        .unwrap()
}

/// An HTTP/2 client (prior knowledge, no TLS).
pub fn http2() -> reqwest::Client {
    reqwest::Client::builder()
        .http2_prior_knowledge()
        .no_proxy()
        .build()
        .unwrap()
}

/// A body sent in chunks of `size` bytes (chunked transfer encoding on HTTP/1.1).
pub fn chunked(body: Bytes, size: usize) -> reqwest::Body {
    let chunks: Vec<Result<Bytes, Infallible>> = (0..body.len())
        .step_by(size.max(1))
        .map(|at| Ok(body.slice(at..(at + size).min(body.len()))))
        .collect();
    reqwest::Body::wrap_stream(futures_util::stream::iter(chunks))
}

pub fn sha256(bytes: &[u8]) -> String {
    Sha256::digest(bytes)
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

/// The JSON error body of a refused request, checked for the contract's shape.
/// POSTs `body` as JSON to `url` with `client`.
pub async fn post_json(
    client: &reqwest::Client,
    url: impl reqwest::IntoUrl,
    body: impl Into<reqwest::Body>,
) -> reqwest::Response {
    client
        .post(url)
        .header("content-type", "application/json")
        .body(body)
        .send()
        .await
        .unwrap()
}

pub async fn error_code(response: reqwest::Response) -> (u16, String) {
    let status = response.status().as_u16();
    assert_eq!(
        response.headers()["content-type"],
        "application/json",
        "error answers are JSON"
    );
    let body: serde_json::Value = response.json().await.expect("a JSON error body");
    let error = &body["error"];
    assert!(error["message"].is_string(), "{body}");
    assert!(error["type"].is_string(), "{body}");
    (
        status,
        error["code"].as_str().unwrap_or_default().to_owned(),
    )
}

/// Runs `future` within [`LIMIT`].
pub async fn bounded<F: Future>(future: F) -> F::Output {
    tokio::time::timeout(LIMIT, future)
        .await
        .expect("the test finished within its time limit")
}
