//! The poller against a real HTTP server on loopback whose model list
//! changes while it runs: adapters loaded and unloaded, the server gone.

use std::{
    convert::Infallible,
    sync::{Arc, Mutex},
    time::Duration,
};

use bbr_core::rules::{RuleTable, RuleTableBuilder, SharedRules};
use bbr_discovery::{Lists, ModelDiscovery, Options, Pool};
use bytes::Bytes;
use http_body_util::Full;
use hyper::{Response, server::conn::http1, service::service_fn};
use hyper_util::rt::TokioIo;
use tokio::{net::TcpListener, sync::mpsc, task::JoinHandle};

/// A server answering `/v1/models` with whatever `list` holds.
async fn server(list: Arc<Mutex<String>>) -> (String, JoinHandle<()>) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    let task = tokio::spawn(async move {
        // The connections die with the server's task (aborting it drops
        // the set).
        let mut connections = tokio::task::JoinSet::new();
        loop {
            let Ok((stream, _)) = listener.accept().await else {
                return;
            };
            let list = Arc::clone(&list);
            connections.spawn(async move {
                let service = service_fn(move |request: hyper::Request<hyper::body::Incoming>| {
                    let body = match request.uri().path() {
                        "/v1/models" => list.lock().unwrap().clone(),
                        _ => String::new(),
                    };
                    async move { Ok::<_, Infallible>(Response::new(Full::new(Bytes::from(body)))) }
                });
                let _ = http1::Builder::new()
                    .serve_connection(TokioIo::new(stream), service)
                    .await;
            });
        }
    });
    (url, task)
}

fn list(models: &[(&str, Option<&str>)]) -> String {
    let data: Vec<serde_json::Value> = models
        .iter()
        .map(|(id, parent)| {
            serde_json::json!({"id": id, "object": "model", "owned_by": "vllm", "parent": parent})
        })
        .collect();
    serde_json::json!({"object": "list", "data": data}).to_string()
}

/// The next lists the poller hands over that satisfy `want`.
async fn until(rx: &mut mpsc::UnboundedReceiver<Lists>, want: impl Fn(&Lists) -> bool) -> Lists {
    tokio::time::timeout(Duration::from_secs(10), async {
        loop {
            let lists = rx.recv().await.expect("the poller stopped");
            if want(&lists) {
                return lists;
            }
        }
    })
    .await
    .expect("the lists did not come within 10 s")
}

/// The rule table the lists make alone (no rules file).
fn table_of(lists: &Lists) -> RuleTable {
    lists
        .iter()
        .fold(RuleTableBuilder::new(), |b, (pool, models)| {
            b.discovered_models(pool, models.clone())
        })
        .build()
        .unwrap()
}

fn ids(lists: &Lists, pool: &str) -> Vec<String> {
    lists
        .get(pool)
        .map(|m| m.iter().map(|m| m.id.clone()).collect())
        .unwrap_or_default()
}

#[tokio::test]
async fn adapters_loaded_and_unloaded_reach_the_table_and_a_silent_server_drops_out() {
    let served = Arc::new(Mutex::new(list(&[("qwen", None)])));
    let (url, task) = server(Arc::clone(&served)).await;
    let pools = vec![Pool::new("qwen-pool", [url.parse().unwrap()])];
    let options = Options::default()
        .period(Duration::from_millis(50))
        .timeout(Duration::from_secs(1))
        .grace(Duration::from_millis(300));
    let (tx, mut rx) = mpsc::unbounded_channel();
    let poller = ModelDiscovery::new(pools, options).spawn(move |lists: &Lists| {
        let _ = tx.send(lists.clone());
    });

    let lists = until(&mut rx, |l| l.contains_key("qwen-pool")).await;
    assert_eq!(ids(&lists, "qwen-pool"), ["qwen"]);

    // An adapter loaded: mapped to its base model in the table built from
    // the lists, and listed with its parent.
    *served.lock().unwrap() = list(&[("qwen", None), ("sql-lora", Some("qwen"))]);
    let lists = until(&mut rx, |l| ids(l, "qwen-pool").len() == 2).await;
    let table = table_of(&lists);
    assert_eq!(table.base_model("sql-lora"), Some("qwen"));
    let route = table.route("sql-lora", None).unwrap().unwrap();
    assert_eq!(route.base_model(), Some("qwen"));
    let models: serde_json::Value = serde_json::from_str(&table.models_json()).unwrap();
    let adapter = models["data"]
        .as_array()
        .unwrap()
        .iter()
        .find(|m| m["id"] == "sql-lora")
        .unwrap();
    assert_eq!(adapter["parent"], "qwen");
    assert_eq!(adapter["owned_by"], "qwen-pool");

    // Unloaded: gone from the next lists.
    *served.lock().unwrap() = list(&[("qwen", None)]);
    let lists = until(&mut rx, |l| ids(l, "qwen-pool").len() == 1).await;
    assert_eq!(ids(&lists, "qwen-pool"), ["qwen"]);

    // The server gone: the pool drops out once the grace period passes.
    task.abort();
    let lists = until(&mut rx, |l| !l.contains_key("qwen-pool")).await;
    assert!(lists.is_empty());
    poller.abort();
}

#[tokio::test]
async fn an_answer_past_the_size_bound_or_not_a_list_is_not_taken() {
    let big = list(&[("a-model-with-a-long-name", None), ("another-one", None)]);
    let (big_url, big_task) = server(Arc::new(Mutex::new(big))).await;
    let (bad_url, bad_task) = server(Arc::new(Mutex::new("<html>".to_owned()))).await;
    let (good_url, good_task) = server(Arc::new(Mutex::new(list(&[("m", None)])))).await;
    let pools = vec![
        Pool::new("big", [big_url.parse().unwrap()]),
        Pool::new("bad", [bad_url.parse().unwrap()]),
        // One endpoint answering is enough for a pool.
        Pool::new(
            "mixed",
            [bad_url.parse().unwrap(), good_url.parse().unwrap()],
        ),
    ];
    let options = Options::default()
        .period(Duration::from_millis(50))
        .max_body(96);
    let (tx, mut rx) = mpsc::unbounded_channel();
    let poller = ModelDiscovery::new(pools, options).spawn(move |lists: &Lists| {
        let _ = tx.send(lists.clone());
    });
    // The first round's lists: only the pool with an endpoint that answered.
    let lists = until(&mut rx, |_| true).await;
    assert_eq!(lists.keys().collect::<Vec<_>>(), ["mixed"]);
    assert_eq!(ids(&lists, "mixed"), ["m"]);
    poller.abort();
    for task in [big_task, bad_task, good_task] {
        task.abort();
    }
}

/// Adapters loaded and unloaded on two pools while requests are routed
/// the whole time: every request for an adapter goes to its own base
/// model or, while it is not loaded, to none; never to the other pool's.
#[tokio::test]
async fn adapters_come_and_go_under_traffic_and_nothing_is_misrouted() {
    let qwen = Arc::new(Mutex::new(list(&[("qwen", None)])));
    let llama = Arc::new(Mutex::new(list(&[("llama", None)])));
    let (qwen_url, qwen_task) = server(Arc::clone(&qwen)).await;
    let (llama_url, llama_task) = server(Arc::clone(&llama)).await;
    let pools = vec![
        Pool::new("qwen-pool", [qwen_url.parse().unwrap()]),
        Pool::new("llama-pool", [llama_url.parse().unwrap()]),
    ];
    let rules = SharedRules::new(RuleTable::empty());
    let served = rules.clone();
    let (tx, mut rx) = mpsc::unbounded_channel();
    let poller = ModelDiscovery::new(pools, Options::default().period(Duration::from_millis(20)))
        .spawn(move |lists: &Lists| {
            served.replace(table_of(lists));
            let _ = tx.send(lists.clone());
        });
    until(&mut rx, |l| l.len() == 2).await;

    // Requests the whole time, counted: routed to the right base, to
    // none, to the wrong one.
    use std::sync::atomic::{AtomicBool, AtomicU64, Ordering::Relaxed};
    let counts = Arc::new([AtomicU64::new(0), AtomicU64::new(0), AtomicU64::new(0)]);
    let stop = Arc::new(AtomicBool::new(false));
    let traffic = {
        let (rules, stop, counts) = (rules.clone(), Arc::clone(&stop), Arc::clone(&counts));
        tokio::task::spawn_blocking(move || {
            while !stop.load(Relaxed) {
                let table = rules.load();
                for (adapter, base) in [("sql-lora", "qwen"), ("chat-lora", "llama")] {
                    let route = table.route(adapter, None).unwrap().unwrap();
                    let at = match route.base_model() {
                        Some(b) if b == base => 0,
                        None => 1,
                        Some(_) => 2,
                    };
                    counts[at].fetch_add(1, Relaxed);
                }
            }
        })
    };
    // Each state is held until the traffic has been routed in it.
    let seen_in = |at: usize| {
        let counts = Arc::clone(&counts);
        async move {
            let before = counts[at].load(Relaxed);
            tokio::time::timeout(Duration::from_secs(10), async {
                while counts[at].load(Relaxed) == before {
                    tokio::time::sleep(Duration::from_millis(1)).await;
                }
            })
            .await
            .expect("no request routed in this state within 10 s");
        }
    };
    for _ in 0..3 {
        *qwen.lock().unwrap() = list(&[("qwen", None), ("sql-lora", Some("qwen"))]);
        *llama.lock().unwrap() = list(&[("llama", None), ("chat-lora", Some("llama"))]);
        until(&mut rx, |l| {
            ids(l, "qwen-pool").len() == 2 && ids(l, "llama-pool").len() == 2
        })
        .await;
        seen_in(0).await;
        *qwen.lock().unwrap() = list(&[("qwen", None)]);
        *llama.lock().unwrap() = list(&[("llama", None)]);
        until(&mut rx, |l| {
            ids(l, "qwen-pool").len() == 1 && ids(l, "llama-pool").len() == 1
        })
        .await;
        seen_in(1).await;
    }
    stop.store(true, Relaxed);
    traffic.await.unwrap();
    let [right, unmapped, wrong] = [0, 1, 2].map(|i| counts[i].load(Relaxed));
    assert_eq!(
        wrong, 0,
        "misrouted: {wrong} (right {right}, unmapped {unmapped})"
    );
    poller.abort();
    qwen_task.abort();
    llama_task.abort();
}

#[tokio::test]
async fn pools_that_change_while_the_poller_runs_are_read_at_once_and_forgotten_at_once() {
    let (qwen_url, qwen_task) = server(Arc::new(Mutex::new(list(&[
        ("qwen", None),
        ("sql-lora", Some("qwen")),
    ]))))
    .await;
    let (llama_url, llama_task) = server(Arc::new(Mutex::new(list(&[("llama", None)])))).await;
    // A long period and grace: whatever happens below happens because the
    // pools changed, not because a period or the grace passed.
    let options = Options::default()
        .period(Duration::from_secs(3600))
        .timeout(Duration::from_secs(1))
        .grace(Duration::from_secs(3600));
    let (pools_tx, pools_rx) =
        tokio::sync::watch::channel(vec![Pool::new("qwen-pool", [qwen_url.parse().unwrap()])]);
    let (tx, mut rx) = mpsc::unbounded_channel();
    let poller = ModelDiscovery::watching(pools_rx, options).spawn(move |lists: &Lists| {
        let _ = tx.send(lists.clone());
    });
    let lists = until(&mut rx, |l| l.contains_key("qwen-pool")).await;
    assert_eq!(ids(&lists, "qwen-pool"), ["qwen", "sql-lora"]);

    // A second pool appears: read without waiting for the period.
    pools_tx.send_replace(vec![
        Pool::new("qwen-pool", [qwen_url.parse().unwrap()]),
        Pool::new("llama-pool", [llama_url.parse().unwrap()]),
    ]);
    let lists = until(&mut rx, |l| l.contains_key("llama-pool")).await;
    assert_eq!(ids(&lists, "llama-pool"), ["llama"]);
    assert_eq!(ids(&lists, "qwen-pool"), ["qwen", "sql-lora"]);

    // qwen's endpoint moves to the llama server (the pod replaced): its
    // old list leaves at once, with no grace period.
    pools_tx.send_replace(vec![
        Pool::new("qwen-pool", [llama_url.parse().unwrap()]),
        Pool::new("llama-pool", [llama_url.parse().unwrap()]),
    ]);
    let lists = until(&mut rx, |l| ids(l, "qwen-pool") == ["llama"]).await;
    assert_eq!(ids(&lists, "llama-pool"), ["llama"]);

    // A pool with no endpoints, then none at all: gone from the lists.
    pools_tx.send_replace(vec![
        Pool::new("qwen-pool", []),
        Pool::new("llama-pool", [llama_url.parse().unwrap()]),
    ]);
    let lists = until(&mut rx, |l| !l.contains_key("qwen-pool")).await;
    assert_eq!(lists.keys().collect::<Vec<_>>(), ["llama-pool"]);
    pools_tx.send_replace(Vec::new());
    let lists = until(&mut rx, Lists::is_empty).await;
    assert!(lists.is_empty());

    // The publisher gone: the poller keeps the last pools and runs on.
    drop(pools_tx);
    tokio::time::sleep(Duration::from_millis(50)).await;
    assert!(!poller.is_finished());
    poller.abort();
    qwen_task.abort();
    llama_task.abort();
}
