//! Simulated model pools: HTTP servers that record what reached them.

use std::{
    collections::hash_map::DefaultHasher,
    convert::Infallible,
    hash::Hasher,
    net::SocketAddr,
    sync::{Arc, Mutex},
};

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::{Request, Response, body::Incoming, service::service_fn};
use hyper_util::rt::{TokioExecutor, TokioIo};

/// What one request looked like when it reached a pool.
#[derive(Clone, Debug)]
pub struct Seen {
    pub pool: String,
    pub path: String,
    pub headers: http::HeaderMap,
    pub body_len: usize,
    pub body_hash: u64,
}

pub fn body_hash(body: &[u8]) -> u64 {
    let mut h = DefaultHasher::new();
    h.write(body);
    h.finish()
}

/// One simulated pool on 127.0.0.1:0.
#[derive(Clone, Debug)]
pub struct Pool {
    pub name: String,
    pub addr: SocketAddr,
    pub seen: Arc<Mutex<Vec<Seen>>>,
}

impl Pool {
    pub async fn start(name: &str) -> Pool {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let seen = Arc::new(Mutex::new(Vec::new()));
        let pool = Pool {
            name: name.to_owned(),
            addr,
            seen: Arc::clone(&seen),
        };
        let name = name.to_owned();
        tokio::spawn(async move {
            loop {
                let Ok((stream, _)) = listener.accept().await else {
                    continue;
                };
                let seen = Arc::clone(&seen);
                let name = name.clone();
                tokio::spawn(async move {
                    let service = service_fn(move |req: Request<Incoming>| {
                        let seen = Arc::clone(&seen);
                        let name = name.clone();
                        async move {
                            let (parts, body) = req.into_parts();
                            let body = body
                                .collect()
                                .await
                                .map(|b| b.to_bytes())
                                .unwrap_or_default();
                            let model = serde_json::from_slice::<serde_json::Value>(&body)
                                .ok()
                                .and_then(|v| {
                                    v.get("model").and_then(|m| m.as_str()).map(str::to_owned)
                                })
                                .unwrap_or_default();
                            seen.lock().unwrap().push(Seen {
                                pool: name.clone(),
                                path: parts.uri.path().to_owned(),
                                headers: parts.headers,
                                body_len: body.len(),
                                body_hash: body_hash(&body),
                            });
                            let answer = serde_json::json!({
                                "object": "chat.completion",
                                "model": model,
                                "choices": [{"index": 0, "message": {"role": "assistant", "content": format!("served by {name}")}, "finish_reason": "stop"}],
                            });
                            let mut response =
                                Response::new(Full::new(Bytes::from(answer.to_string())));
                            response.headers_mut().insert(
                                "content-type",
                                http::HeaderValue::from_static("application/json"),
                            );
                            response.headers_mut().insert(
                                "x-inference-pool",
                                http::HeaderValue::from_str(&name).unwrap(),
                            );
                            Ok::<_, Infallible>(response)
                        }
                    });
                    let _ = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new())
                        .serve_connection(TokioIo::new(stream), service)
                        .await;
                });
            }
        });
        pool
    }

    pub fn seen(&self) -> Vec<Seen> {
        self.seen.lock().unwrap().clone()
    }
}
