//! Criticality-aware admission over real loopback sockets: the layer and a
//! `PoolRouter` with admission in front of a deliberately slow pool.

mod support;

use std::{
    convert::Infallible,
    sync::{
        Arc,
        atomic::{AtomicUsize, Ordering},
    },
    time::Duration,
};

use bbr_core::rules::RuleTable;
use bbr_tower::{Admission, ModelRoutingLayer, PoolRouter, RoutedBody};
use bytes::Bytes;
use http::{Request, Response};
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper_util::{rt::TokioIo, service::TowerToHyperService};
use support::{bounded, error_code, http1, loopback, post_json};
use tokio::{net::TcpListener, sync::Notify};
use tower::{Layer, service_fn};

/// How long the pool takes to answer.
const DELAY: Duration = Duration::from_millis(600);

const RULES: &str = "\
rules:
  - { name: critical, match: { model: { exact: critical } }, pool: slow, criticality: Critical }
  - { name: standard, match: { model: { exact: standard } }, pool: slow, criticality: Standard }
  - { name: sheddable, match: { model: { exact: sheddable } }, pool: slow, criticality: Sheddable }
";

/// Serves the gateway on loopback: `(address, requests the pool started,
/// notified at each)`.
async fn gateway(admission: Admission) -> (String, Arc<AtomicUsize>, Arc<Notify>) {
    let started = Arc::new(AtomicUsize::new(0));
    let arrived = Arc::new(Notify::new());
    let (count, notify) = (Arc::clone(&started), Arc::clone(&arrived));
    let pool = service_fn(move |request: Request<RoutedBody<Incoming>>| {
        count.fetch_add(1, Ordering::SeqCst);
        notify.notify_waiters();
        async move {
            let _ = request.into_body().collect().await;
            tokio::time::sleep(DELAY).await;
            Ok::<_, Infallible>(Response::new(Full::new(Bytes::from_static(b"{}"))))
        }
    });
    let router = PoolRouter::new().pool("slow", pool).admission(admission);
    let service = ModelRoutingLayer::new()
        .rules(RuleTable::from_yaml(RULES).unwrap())
        .layer(router);
    let listener = TcpListener::bind(loopback()).await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((stream, _)) = listener.accept().await {
            let service = TowerToHyperService::new(service.clone());
            tokio::spawn(
                hyper::server::conn::http1::Builder::new()
                    .serve_connection(TokioIo::new(stream), service),
            );
        }
    });
    (
        format!("http://{addr}/v1/chat/completions"),
        started,
        arrived,
    )
}

/// Sends one request for `model`: its status and error code (empty on 200).
async fn send(url: String, model: &'static str) -> (u16, String) {
    let body = format!(r#"{{"model":"{model}","messages":[]}}"#);
    let response = post_json(&http1(), url, body).await;
    if response.status() == 200 {
        (200, String::new())
    } else {
        assert_eq!(response.headers()["retry-after"], "1");
        error_code(response).await
    }
}

/// With two requests in flight (the limit), Sheddable ones are refused at
/// once, Critical ones are admitted up to the hard cap, Standard ones
/// queue: the first two get the slots freed when the pool is back at its
/// limit, the last two time out in the queue.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_saturated_pool_serves_critical_sheds_sheddable_and_queues_standard() {
    bounded(async {
        let admission = Admission::new(2)
            .critical_cap(6)
            .queue(4)
            .queue_timeout(DELAY + DELAY / 2);
        let (url, started, arrived) = gateway(admission).await;
        let until_started = |n: usize| {
            let (started, arrived) = (Arc::clone(&started), Arc::clone(&arrived));
            async move {
                while started.load(Ordering::SeqCst) < n {
                    let notified = arrived.notified();
                    if started.load(Ordering::SeqCst) >= n {
                        break;
                    }
                    let _ = tokio::time::timeout(Duration::from_millis(50), notified).await;
                }
            }
        };

        // Two Standard requests fill the pool to its limit.
        let first: Vec<_> = (0..2)
            .map(|_| tokio::spawn(send(url.clone(), "standard")))
            .collect();
        until_started(2).await;
        // Saturated: every Sheddable request is refused at once.
        for _ in 0..4 {
            assert_eq!(
                send(url.clone(), "sheddable").await,
                (429, "shed".to_owned())
            );
        }
        // Critical ones go past the limit, up to the cap of 6.
        let critical: Vec<_> = (0..4)
            .map(|_| tokio::spawn(send(url.clone(), "critical")))
            .collect();
        until_started(6).await;
        // Standard ones wait; the queue holds four.
        let queued: Vec<_> = (0..4)
            .map(|_| tokio::spawn(send(url.clone(), "standard")))
            .collect();

        let mut outcomes = Vec::new();
        for task in first.into_iter().chain(critical) {
            assert_eq!(task.await.unwrap(), (200, String::new()));
        }
        for task in queued {
            outcomes.push(task.await.unwrap());
        }
        let served = outcomes.iter().filter(|o| o.0 == 200).count();
        let timed_out = outcomes
            .iter()
            .filter(|o| **o == (429, "shed".to_owned()))
            .count();
        // Two slots came free (the pool went back to its limit) before the
        // queue's deadline; the other two waited past it.
        assert_eq!((served, timed_out), (2, 2), "{outcomes:?}");
        assert_eq!(started.load(Ordering::SeqCst), 8);
    })
    .await;
}
