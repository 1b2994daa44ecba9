//! `--discover-models`: the binary polls a pool server's `/v1/models`
//! while it runs; an adapter loaded there becomes routable to its base
//! model and listed, unloaded it goes away.

mod support;

use std::{
    convert::Infallible,
    sync::{Arc, Mutex},
};

use bbr_extproc::pb::external_processor_client::ExternalProcessorClient;
use bytes::Bytes;
use http_body_util::Full;
use hyper::{Response, server::conn::http1, service::service_fn};
use hyper_util::rt::TokioIo;
use support::{
    binary::start_binary,
    models::{entry, has, routing_headers, until},
};
use tokio::net::TcpListener;

/// The models a pool server lists: id and parent.
type Served = Arc<Mutex<Vec<(&'static str, Option<&'static str>)>>>;

/// A pool server answering `/v1/models` with what `list` holds (vLLM's
/// shape: adapters with their `parent`).
async fn pool_server(list: Served) -> String {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    tokio::spawn(async move {
        let mut connections = tokio::task::JoinSet::new();
        while let Ok((stream, _)) = listener.accept().await {
            let list = Arc::clone(&list);
            connections.spawn(async move {
                let service = service_fn(move |_: hyper::Request<hyper::body::Incoming>| {
                    let data: Vec<serde_json::Value> = list
                        .lock()
                        .unwrap()
                        .iter()
                        .map(|(id, parent)| serde_json::json!({"id": id, "object": "model", "owned_by": "vllm", "parent": parent}))
                        .collect();
                    let body = serde_json::json!({"object": "list", "data": data}).to_string();
                    async move { Ok::<_, Infallible>(Response::new(Full::new(Bytes::from(body)))) }
                });
                let _ = http1::Builder::new()
                    .serve_connection(TokioIo::new(stream), service)
                    .await;
            });
        }
    });
    url
}

#[tokio::test]
async fn an_adapter_loaded_on_a_pool_becomes_routable_to_its_base_model() {
    let served = Arc::new(Mutex::new(vec![("qwen", None)]));
    let url = pool_server(Arc::clone(&served)).await;
    let pool = format!("qwen-pool={url}");
    let (_process, grpc, _, _) = start_binary(&[
        "--secure-serving=false",
        "--serve-models",
        "--discover-models",
        &pool,
        "--discovery-period-secs",
        "1",
        "-v",
        "0",
    ]);
    let mut c = ExternalProcessorClient::connect(format!("http://{grpc}"))
        .await
        .unwrap();
    until(&mut c, |l| has(l, "qwen")).await;

    // Loaded on the pool: listed with its parent, and routed as it.
    served.lock().unwrap().push(("sql-lora", Some("qwen")));
    let list = until(&mut c, |l| has(l, "sql-lora")).await;
    let adapter = entry(&list, "sql-lora").unwrap();
    assert_eq!(adapter["parent"], "qwen");
    assert_eq!(adapter["owned_by"], "qwen-pool");
    let set = routing_headers(&mut c, "sql-lora").await;
    assert!(
        set.contains(&("x-gateway-base-model-name".to_owned(), "qwen".to_owned())),
        "{set:?}"
    );

    // Unloaded: gone from the list, and no longer mapped.
    served.lock().unwrap().retain(|(id, _)| *id != "sql-lora");
    until(&mut c, |l| !has(l, "sql-lora")).await;
    let set = routing_headers(&mut c, "sql-lora").await;
    assert!(
        set.iter().all(|(k, _)| k != "x-gateway-base-model-name"),
        "{set:?}"
    );
}

#[test]
fn a_discovered_pool_must_be_named_with_an_http_url() {
    for bad in ["qwen", "=http://h:1", "qwen=https://h:1", "qwen=h:1"] {
        let out = std::process::Command::new(support::binary::path())
            .args(support::binary::FREE_PORTS)
            .args(["--discover-models", bad])
            .output()
            .unwrap();
        assert_eq!(out.status.code(), Some(2), "{bad}");
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(stderr.contains("--discover-models"), "{bad}: {stderr}");
    }
}
