//! Shared helpers of the gateway tests: the demo gateway (or one like it)
//! served on a loopback port in front of simulated pools; the clients come
//! from the tower layer's own test support.
#![allow(dead_code, unreachable_pub)]

#[path = "../../../bbr-tower/tests/support/mod.rs"]
mod clients;
pub use clients::*;

use std::{
    future::Future,
    net::SocketAddr,
    sync::{Arc, Mutex},
    task::{Context, Poll},
    time::Duration,
};

use bbr_core::rules::RuleTable;
use bbr_gateway::{Upstream, simulated::SimulatedPool};
use bbr_tower::{Decision, ModelRoutingLayer, PoolRouter, RoutedBody};
use http::Request;
use hyper::body::Incoming;
use tokio::{net::TcpListener, sync::Notify, task::JoinHandle};
use tower::{Layer, Service};

/// The demo's rule table, as the gateway builds it in.
pub fn demo_rules() -> RuleTable {
    bbr_gateway::demo_rules().expect("the demo rule table loads")
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
        TestGateway::start(bbr_gateway::layer(demo_rules()), default_pools()).await
    }

    /// A gateway with `layer` in front of `pools`.
    pub async fn start(layer: ModelRoutingLayer, pools: Vec<SimulatedPool>) -> TestGateway {
        let options = bbr_gateway::ServeOptions::default();
        TestGateway::start_with(layer, pools, options, std::future::pending()).await
    }

    /// [`start`](Self::start), served with `options` until `shutdown`.
    pub async fn start_with(
        layer: ModelRoutingLayer,
        pools: Vec<SimulatedPool>,
        options: bbr_gateway::ServeOptions,
        shutdown: impl Future<Output = ()> + Send + 'static,
    ) -> TestGateway {
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
        tasks.push(tokio::spawn(bbr_gateway::serve_with(
            listener, service, options, shutdown,
        )));
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

mod process;
#[allow(unused_imports)]
pub use process::*;
