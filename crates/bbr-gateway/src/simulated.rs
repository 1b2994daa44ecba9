//! The demo's simulated pools: an OpenAI-compatible model server in
//! process, which `bbr-gateway` runs for each pool given no server
//! (`--pool NAME`, and the two pools of the demo), and which the tests, the
//! examples and the load benchmarks route to. Not a model: every answer is
//! the same few tokens.
//!
//! Each pool answers `POST /v1/chat/completions`, `/v1/completions`,
//! `/v1/embeddings` and `/v1/responses` in OpenAI format with the model the
//! request named, adds the response header `x-inference-pool: <pool>`, and
//! answers `"stream": true` with server-sent events, one token per event,
//! ending in `data: [DONE]`.
//!
//! The body is read as it streams (hashed and scanned chunk by chunk with
//! bbr's own extractor, never collected): a pool's memory does not grow
//! with the bodies it is sent.
//!
//! So that a demo can show what reached the pool, every answer also carries
//! `x-pool-received-bytes`, `x-pool-received-sha256` (of the request body)
//! and `x-pool-received-model-header` (the `X-Gateway-Model-Name` the pool
//! saw); [`SimulatedPool::received`] lists the same for the latest requests,
//! including those whose body never arrived complete.

use std::{
    collections::VecDeque,
    convert::Infallible,
    fmt::Write as _,
    io,
    net::SocketAddr,
    sync::{Arc, Mutex},
    time::{Duration, SystemTime, UNIX_EPOCH},
};

use bbr_core::{BodyExtractor, ExtractorConfig, FieldValue};
use bytes::Bytes;
use futures_util::{StreamExt, stream};
use http::{HeaderMap, HeaderValue, Method, Request, Response, StatusCode, header};
use http_body::Frame;
use http_body_util::{BodyExt, Full, StreamBody, combinators::UnsyncBoxBody};
use hyper::body::Incoming;
use hyper_util::{
    rt::{TokioExecutor, TokioIo},
    server::conn::auto,
};
use serde_json::{Value, json};
use sha2::{Digest, Sha256};
use tokio::{net::TcpListener, sync::Semaphore, task::JoinHandle};

/// The body of a pool's answers: a whole JSON document or a stream of events.
pub type PoolBody = UnsyncBoxBody<Bytes, Infallible>;

/// The header every pool answer carries, naming the pool.
pub const POOL_HEADER: &str = "x-inference-pool";

/// Parses a pool given as `NAME=ADDR` (the `--pool` flag of the examples
/// and the load benchmarks).
pub fn parse_pool(text: &str) -> Result<(String, SocketAddr), String> {
    let (name, addr) = text
        .split_once('=')
        .ok_or_else(|| format!("expected NAME=ADDR, got {text:?}"))?;
    if name.is_empty() {
        return Err(format!("empty pool name in {text:?}"));
    }
    let addr = addr
        .parse()
        .map_err(|e| format!("bad address {addr:?}: {e}"))?;
    Ok((name.to_owned(), addr))
}

/// How many requests [`SimulatedPool::received`] remembers (the latest).
pub const RECEIVED_KEPT: usize = 1024;

/// What a pool received: one entry per request.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Received {
    /// The request path.
    pub path: String,
    /// The request headers.
    pub headers: HeaderMap,
    /// Body bytes received.
    pub bytes: u64,
    /// SHA-256 of the body bytes received, in lowercase hex.
    pub sha256: String,
    /// Whether the body ended cleanly (`false`: the sender aborted it).
    pub complete: bool,
}

impl Received {
    /// The `X-Gateway-Model-Name` header the pool saw, if any.
    pub fn model_header(&self) -> Option<&str> {
        self.headers
            .get("x-gateway-model-name")
            .and_then(|v| v.to_str().ok())
    }
}

/// A simulated model pool. Cheap to clone: clones share the record of what
/// was received.
#[derive(Clone, Debug)]
pub struct SimulatedPool {
    name: Arc<str>,
    token_delay: Duration,
    token_gate: Option<Arc<Semaphore>>,
    received: Arc<Mutex<VecDeque<Received>>>,
}

impl SimulatedPool {
    /// A pool named `name` that streams a token every 20 ms.
    pub fn new(name: &str) -> SimulatedPool {
        SimulatedPool {
            name: name.into(),
            token_delay: Duration::from_millis(20),
            token_gate: None,
            received: Arc::default(),
        }
    }

    /// Sets the pause between two streamed tokens.
    #[must_use]
    pub fn token_delay(mut self, delay: Duration) -> Self {
        self.token_delay = delay;
        self
    }

    /// Makes every streamed token after the first wait for a permit of
    /// `gate` (consumed), so that a test decides when each token is produced.
    #[must_use]
    pub fn token_gate(mut self, gate: Arc<Semaphore>) -> Self {
        self.token_gate = Some(gate);
        self
    }

    /// The pool's name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// What the pool received, in order of arrival: the latest
    /// [`RECEIVED_KEPT`] requests.
    pub fn received(&self) -> Vec<Received> {
        let log = self.received.lock().unwrap_or_else(|p| p.into_inner());
        log.iter().cloned().collect()
    }

    /// Answers one request.
    pub async fn handle(&self, request: Request<Incoming>) -> Response<PoolBody> {
        let answer = match (request.method(), request.uri().path()) {
            (
                &Method::POST,
                "/v1/chat/completions" | "/v1/completions" | "/v1/embeddings" | "/v1/responses",
            ) => complete(self, request).await,
            (&Method::GET, "/health") => Response::new(full("ok")),
            _ => {
                let body = json!({"error": {"message": "not found", "type": "invalid_request_error", "param": null, "code": "not_found"}});
                json_response(StatusCode::NOT_FOUND, &body)
            }
        };
        with_pool(self, answer)
    }

    /// Serves the pool on `listener` (HTTP/1.1 and HTTP/2 without TLS)
    /// until the task is dropped.
    pub async fn serve(self, listener: TcpListener) -> io::Result<()> {
        loop {
            let (stream, _) = listener.accept().await?;
            let pool = self.clone();
            tokio::spawn(async move {
                let service = hyper::service::service_fn(move |request| {
                    let pool = pool.clone();
                    async move { Ok::<_, Infallible>(pool.handle(request).await) }
                });
                let _ = auto::Builder::new(TokioExecutor::new())
                    .serve_connection(TokioIo::new(stream), service)
                    .await;
            });
        }
    }

    /// Binds `addr` (port 0 for any) and serves the pool in a task.
    /// Returns the bound address.
    pub async fn spawn(self, addr: SocketAddr) -> io::Result<(SocketAddr, JoinHandle<()>)> {
        let listener = TcpListener::bind(addr).await?;
        let local = listener.local_addr()?;
        let name = self.name.clone();
        let task = tokio::spawn(async move {
            if let Err(e) = self.serve(listener).await {
                eprintln!("pool {name}: {e}");
            }
        });
        Ok((local, task))
    }

    fn record(&self, received: Received) {
        let mut log = self.received.lock().unwrap_or_else(|p| p.into_inner());
        // Only the latest requests are kept: a pool serving a load test or
        // a long-running demo must not grow without bound.
        if log.len() == RECEIVED_KEPT {
            log.pop_front();
        }
        log.push_back(received);
    }
}

fn full(bytes: impl Into<Bytes>) -> PoolBody {
    Full::new(bytes.into()).boxed_unsync()
}

fn json_response(status: StatusCode, value: &Value) -> Response<PoolBody> {
    let mut response = Response::new(full(value.to_string()));
    *response.status_mut() = status;
    response.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    response
}

async fn complete(pool: &SimulatedPool, request: Request<Incoming>) -> Response<PoolBody> {
    let (parts, mut body) = request.into_parts();
    let path = parts.uri.path().to_owned();
    // The body is read as it streams: hashed and scanned chunk by chunk,
    // never collected, so that a pool takes the same little memory for a
    // body of any size (what the gateway's memory tests rely on).
    let content_type = parts
        .headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok());
    let encoding = parts
        .headers
        .get(header::CONTENT_ENCODING)
        .and_then(|v| v.to_str().ok());
    let config = ExtractorConfig::new()
        .with_max_body(u64::MAX)
        .with_field("stream");
    let mut extractor = BodyExtractor::for_request(content_type, encoding, config);
    let mut bytes = 0u64;
    let mut hasher = Sha256::new();
    let mut complete = true;
    while let Some(frame) = body.frame().await {
        match frame {
            Ok(frame) => {
                if let Some(chunk) = frame.data_ref() {
                    hasher.update(chunk);
                    bytes += chunk.len() as u64;
                    // After an error the rest is only counted and hashed.
                    if let Ok(x) = &mut extractor
                        && let Err(e) = x.feed(chunk)
                    {
                        extractor = Err(e);
                    }
                }
            }
            Err(_) => {
                complete = false;
                break;
            }
        }
    }
    let sha256 = hex(&hasher.finalize());
    let received = Received {
        path: path.clone(),
        headers: parts.headers.clone(),
        bytes,
        sha256: sha256.clone(),
        complete,
    };
    let model_header = received.model_header().map(str::to_owned);
    pool.record(received);
    if !complete {
        return error(StatusCode::BAD_REQUEST, "the request body was cut short");
    }
    let extraction = match extractor
        .as_mut()
        .map_err(|e| e.clone())
        .and_then(|x| x.finish().cloned())
    {
        Ok(extraction) => extraction,
        Err(e) => {
            return error(
                StatusCode::BAD_REQUEST,
                &format!("invalid body: {}", e.message()),
            );
        }
    };
    let Some(model) = extraction.model().map(|m| m.as_str().to_owned()) else {
        return error(
            StatusCode::BAD_REQUEST,
            "you must provide a model parameter",
        );
    };
    let stream = matches!(extraction.field("stream"), Some(FieldValue::Bool(true)));

    let mut response = if path == "/v1/embeddings" {
        json_response(StatusCode::OK, &embedding(&model))
    } else if stream {
        sse(pool, &path, &model)
    } else {
        json_response(StatusCode::OK, &answer(pool, &path, &model))
    };
    let headers = response.headers_mut();
    headers.insert("x-pool-received-bytes", HeaderValue::from(bytes));
    if let Ok(v) = HeaderValue::from_str(&sha256) {
        headers.insert("x-pool-received-sha256", v);
    }
    if let Some(v) = model_header.and_then(|m| HeaderValue::from_str(&m).ok()) {
        headers.insert("x-pool-received-model-header", v);
    }
    response
}

fn with_pool(pool: &SimulatedPool, mut response: Response<PoolBody>) -> Response<PoolBody> {
    if let Ok(v) = HeaderValue::from_str(pool.name()) {
        response.headers_mut().insert(POOL_HEADER, v);
    }
    response
}

fn error(status: StatusCode, message: &str) -> Response<PoolBody> {
    let body = json!({"error": {"message": message, "type": "invalid_request_error", "param": null, "code": null}});
    json_response(status, &body)
}

fn hex(digest: &[u8]) -> String {
    digest.iter().fold(String::with_capacity(64), |mut s, b| {
        let _ = write!(s, "{b:02x}");
        s
    })
}

fn now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

/// The words of the simulated answer; a streamed one says it is.
fn tokens(pool: &SimulatedPool, model: &str, streamed: bool) -> Vec<String> {
    let how = if streamed {
        ", streamed one token at a time"
    } else {
        ""
    };
    format!(
        "This is {model} served by pool {}: a simulated answer{how}.",
        pool.name()
    )
    .split(' ')
    .enumerate()
    .map(|(i, w)| {
        if i == 0 {
            w.to_owned()
        } else {
            format!(" {w}")
        }
    })
    .collect()
}

fn answer(pool: &SimulatedPool, path: &str, model: &str) -> Value {
    let tokens = tokens(pool, model, false);
    let text: String = tokens.concat();
    let n = tokens.len();
    let usage = json!({"prompt_tokens": 12, "completion_tokens": n, "total_tokens": 12 + n});
    match path {
        "/v1/completions" => json!({
            "id": "cmpl-sim", "object": "text_completion", "created": now(), "model": model,
            "choices": [{"index": 0, "text": text, "logprobs": null, "finish_reason": "stop"}],
            "usage": usage,
        }),
        "/v1/responses" => json!({
            "id": "resp-sim", "object": "response", "created_at": now(), "model": model, "status": "completed",
            "output": [{"type": "message", "role": "assistant", "content": [{"type": "output_text", "text": text}]}],
        }),
        _ => json!({
            "id": "chatcmpl-sim", "object": "chat.completion", "created": now(), "model": model,
            "choices": [{"index": 0, "message": {"role": "assistant", "content": text}, "finish_reason": "stop"}],
            "usage": usage,
        }),
    }
}

fn embedding(model: &str) -> Value {
    json!({
        "object": "list", "model": model,
        "data": [{"object": "embedding", "index": 0, "embedding": [0.25, -0.5, 0.125, 0.0]}],
        "usage": {"prompt_tokens": 4, "total_tokens": 4},
    })
}

fn chunk(path: &str, model: &str, token: Option<&str>) -> Bytes {
    let finish = if token.is_none() {
        json!("stop")
    } else {
        Value::Null
    };
    let event = if path == "/v1/completions" {
        json!({"id": "cmpl-sim", "object": "text_completion", "created": now(), "model": model,
               "choices": [{"index": 0, "text": token.unwrap_or(""), "finish_reason": finish}]})
    } else {
        let delta = token.map_or_else(|| json!({}), |t| json!({"content": t}));
        json!({"id": "chatcmpl-sim", "object": "chat.completion.chunk", "created": now(), "model": model,
               "choices": [{"index": 0, "delta": delta, "finish_reason": finish}]})
    };
    Bytes::from(format!("data: {event}\n\n"))
}

/// Server-sent events, one token per event, then a final event and `[DONE]`.
fn sse(pool: &SimulatedPool, path: &str, model: &str) -> Response<PoolBody> {
    let mut events: Vec<Bytes> = tokens(pool, model, true)
        .iter()
        .map(|t| chunk(path, model, Some(t)))
        .collect();
    events.push(chunk(path, model, None));
    events.push(Bytes::from_static(b"data: [DONE]\n\n"));
    let delay = pool.token_delay;
    let gate = pool.token_gate.clone();
    let events = stream::unfold((events.into_iter(), 0usize), move |(mut it, i)| {
        let gate = gate.clone();
        async move {
            let event = it.next()?;
            if i > 0 {
                if let Some(gate) = gate {
                    // A closed gate releases everything.
                    if let Ok(permit) = gate.acquire().await {
                        permit.forget();
                    }
                }
                if !delay.is_zero() {
                    tokio::time::sleep(delay).await;
                }
            }
            Some((event, (it, i + 1)))
        }
    });
    let frames = events.map(|event| Ok::<_, Infallible>(Frame::data(event)));
    let mut response = Response::new(StreamBody::new(frames).boxed_unsync());
    let headers = response.headers_mut();
    headers.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/event-stream"),
    );
    headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-cache"));
    response
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_a_streamed_answer_says_it_is_streamed() {
        let pool = SimulatedPool::new("gemma3");
        let whole = answer(&pool, "/v1/chat/completions", "chatbot");
        let text = whole["choices"][0]["message"]["content"].as_str().unwrap();
        assert_eq!(
            text,
            "This is chatbot served by pool gemma3: a simulated answer."
        );
        let streamed = tokens(&pool, "chatbot", true).concat();
        assert!(
            streamed.ends_with("streamed one token at a time."),
            "{streamed}"
        );
    }

    #[test]
    fn the_log_keeps_only_the_latest_requests() {
        let pool = SimulatedPool::new("p");
        for n in 0..RECEIVED_KEPT as u64 + 10 {
            pool.record(Received {
                path: "/v1/completions".to_owned(),
                headers: HeaderMap::new(),
                bytes: n,
                sha256: String::new(),
                complete: true,
            });
        }
        let log = pool.received();
        assert_eq!(log.len(), RECEIVED_KEPT);
        assert_eq!(log[0].bytes, 10);
        assert_eq!(log[RECEIVED_KEPT - 1].bytes, RECEIVED_KEPT as u64 + 9);
    }
}
