//! Shared helpers of the integration tests: the demo gateway (or one like
//! it) served on a loopback port in front of simulated pools, and clients.
#![allow(dead_code, unreachable_pub)]

use std::{
    convert::Infallible,
    future::Future,
    net::SocketAddr,
    sync::{Arc, Mutex},
    task::{Context, Poll},
    time::Duration,
};

use bbr_core::rules::RuleTable;
use bbr_examples::{
    gateway::{self, Upstream},
    pool::SimulatedPool,
};
use bbr_tower::{Decision, ModelRoutingLayer, PoolRouter, RoutedBody};
use bytes::Bytes;
use http::Request;
use hyper::body::Incoming;
use sha2::{Digest, Sha256};
use tokio::{net::TcpListener, sync::Notify, task::JoinHandle};
use tower::{Layer, Service};

/// Every test is bounded: nothing here may hang a test run.
pub const LIMIT: Duration = Duration::from_secs(60);

/// The demo's rule table, as the demo gateway loads it.
pub fn demo_rules() -> RuleTable {
    let path = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../../examples/config/gateway.yaml"
    );
    RuleTable::from_path(std::path::Path::new(path)).expect("the demo rule table loads")
}

/// What the layer handed on: one decision per request that reached the pools.
#[derive(Clone, Default)]
pub struct Decisions {
    seen: Arc<Mutex<Vec<Decision>>>,
    notify: Arc<Notify>,
}

impl Decisions {
    pub fn all(&self) -> Vec<Decision> {
        self.seen.lock().unwrap().clone()
    }

    /// Waits until at least `n` decisions were made.
    pub async fn wait_for(&self, n: usize) {
        loop {
            let notified = self.notify.notified();
            if self.seen.lock().unwrap().len() >= n {
                return;
            }
            notified.await;
        }
    }
}

/// A service recording the [`Decision`] of each request before passing it on.
#[derive(Clone)]
pub struct Record<S> {
    inner: S,
    decisions: Decisions,
}

impl<S, B> Service<Request<B>> for Record<S>
where
    S: Service<Request<B>>,
{
    type Response = S::Response;
    type Error = S::Error;
    type Future = S::Future;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), S::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, request: Request<B>) -> S::Future {
        if let Some(decision) = request.extensions().get::<Decision>() {
            self.decisions.seen.lock().unwrap().push(decision.clone());
            self.decisions.notify.notify_waiters();
        }
        self.inner.call(request)
    }
}

/// A gateway on a loopback port, its pools and what it decided.
pub struct TestGateway {
    pub addr: SocketAddr,
    pub pools: Vec<SimulatedPool>,
    pub decisions: Decisions,
    tasks: Vec<JoinHandle<()>>,
}

impl Drop for TestGateway {
    fn drop(&mut self) {
        for task in &self.tasks {
            task.abort();
        }
    }
}

impl TestGateway {
    /// The demo gateway: the demo rules, pools `gemma3` and `deepseek-r1`.
    pub async fn demo() -> TestGateway {
        TestGateway::start(gateway::layer(demo_rules()), default_pools()).await
    }

    /// A gateway with `layer` in front of `pools`.
    pub async fn start(layer: ModelRoutingLayer, pools: Vec<SimulatedPool>) -> TestGateway {
        let mut tasks = Vec::new();
        let mut router = PoolRouter::new();
        for pool in &pools {
            let (addr, task) = pool.clone().spawn(loopback()).await.expect("pool starts");
            tasks.push(task);
            router = router.pool(pool.name(), Upstream::<RoutedBody<Incoming>>::new(addr));
        }
        let decisions = Decisions::default();
        let service = layer.layer(Record {
            inner: router,
            decisions: decisions.clone(),
        });
        let listener = TcpListener::bind(loopback()).await.expect("gateway binds");
        let addr = listener.local_addr().unwrap();
        tasks.push(tokio::spawn(async move {
            let _ = gateway::serve(listener, service).await;
        }));
        TestGateway {
            addr,
            pools,
            decisions,
            tasks,
        }
    }

    pub fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.addr)
    }

    pub fn pool(&self, name: &str) -> &SimulatedPool {
        self.pools
            .iter()
            .find(|p| p.name() == name)
            .expect("pool exists")
    }

    /// Every request any pool received.
    pub fn received_total(&self) -> usize {
        self.pools.iter().map(|p| p.received().len()).sum()
    }
}

pub fn default_pools() -> Vec<SimulatedPool> {
    vec![
        SimulatedPool::new("gemma3").token_delay(Duration::ZERO),
        SimulatedPool::new("deepseek-r1").token_delay(Duration::ZERO),
    ]
}

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
