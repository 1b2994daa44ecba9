//! A minimal HTTP/1.1 client for the end-to-end tests.

use std::net::SocketAddr;

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::Request;
use hyper_util::rt::TokioIo;

/// A response, body collected.
#[derive(Debug)]
pub struct Reply {
    pub status: u16,
    pub headers: http::HeaderMap,
    pub body: Bytes,
}

impl Reply {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(name).and_then(|v| v.to_str().ok())
    }

    pub fn json(&self) -> serde_json::Value {
        serde_json::from_slice(&self.body)
            .unwrap_or_else(|e| panic!("body is not JSON ({e}): {:?}", self.body))
    }
}

type BoxError = Box<dyn std::error::Error + Send + Sync>;

pub async fn send(addr: SocketAddr, req: Request<Full<Bytes>>) -> Result<Reply, BoxError> {
    let stream = tokio::net::TcpStream::connect(addr).await?;
    let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream)).await?;
    tokio::spawn(conn);
    let response = tokio::time::timeout(super::WAIT, sender.send_request(req)).await??;
    let (parts, body) = response.into_parts();
    let body = tokio::time::timeout(super::WAIT, body.collect())
        .await??
        .to_bytes();
    Ok(Reply {
        status: parts.status.as_u16(),
        headers: parts.headers,
        body,
    })
}

pub async fn get(addr: SocketAddr, path: &str) -> Result<Reply, BoxError> {
    let req = Request::get(path)
        .header("host", "localhost")
        .body(Full::new(Bytes::new()))?;
    send(addr, req).await
}

/// `POST path` with `body` and the given headers (content type JSON unless given).
pub async fn post(
    addr: SocketAddr,
    path: &str,
    headers: &[(&str, &str)],
    body: impl Into<Bytes>,
) -> Reply {
    let mut req = Request::post(path).header("host", "localhost");
    if !headers
        .iter()
        .any(|(k, _)| k.eq_ignore_ascii_case("content-type"))
    {
        req = req.header("content-type", "application/json");
    }
    for (k, v) in headers {
        req = req.header(*k, *v);
    }
    let req = req.body(Full::new(body.into())).unwrap();
    send(addr, req).await.expect("request through envoy failed")
}
