//! `--discover-models`: the gateway polls its pools' `/v1/models`; an
//! adapter loaded on a pool's server is listed with its parent and routed
//! as its base model, and goes away when unloaded.

mod support;

use std::{
    convert::Infallible,
    sync::{Arc, Mutex},
    time::{Duration, Instant},
};

use bytes::Bytes;
use http_body_util::Full;
use hyper::{Response, server::conn::http1, service::service_fn};
use hyper_util::rt::TokioIo;
use support::*;
use tokio::net::TcpListener;

/// What the pool's server lists (id, parent), and the base-model header of
/// the last request it received.
#[derive(Default)]
struct Server {
    models: Vec<(&'static str, Option<&'static str>)>,
    base_model: Option<String>,
}

async fn pool_server(state: Arc<Mutex<Server>>) -> String {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    tokio::spawn(async move {
        let mut connections = tokio::task::JoinSet::new();
        while let Ok((stream, _)) = listener.accept().await {
            let state = Arc::clone(&state);
            connections.spawn(async move {
                let service = service_fn(move |request: hyper::Request<hyper::body::Incoming>| {
                    let mut state = state.lock().unwrap();
                    let body = if request.uri().path() == "/v1/models" {
                        let data: Vec<serde_json::Value> = state
                            .models
                            .iter()
                            .map(|(id, parent)| serde_json::json!({"id": id, "object": "model", "parent": parent}))
                            .collect();
                        serde_json::json!({"object": "list", "data": data}).to_string()
                    } else {
                        state.base_model = request
                            .headers()
                            .get("x-gateway-base-model-name")
                            .map(|v| v.to_str().unwrap().to_owned());
                        r#"{"choices":[]}"#.to_owned()
                    };
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

async fn listed(client: &reqwest::Client, gw: &GatewayProcess) -> serde_json::Value {
    let response = client.get(gw.url("/v1/models")).send().await.unwrap();
    assert_eq!(response.status(), 200);
    response.json().await.unwrap()
}

fn entry<'a>(list: &'a serde_json::Value, id: &str) -> Option<&'a serde_json::Value> {
    list["data"]
        .as_array()
        .unwrap()
        .iter()
        .find(|m| m["id"] == id)
}

async fn until(
    client: &reqwest::Client,
    gw: &GatewayProcess,
    want: impl Fn(&serde_json::Value) -> bool,
) -> serde_json::Value {
    let start = Instant::now();
    loop {
        let list = listed(client, gw).await;
        if want(&list) {
            return list;
        }
        assert!(
            start.elapsed() < Duration::from_secs(20),
            "not in time: {list}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test]
async fn an_adapter_loaded_on_a_pool_is_listed_and_routed_as_its_base_model() {
    bounded(async {
        let state = Arc::new(Mutex::new(Server {
            models: vec![("qwen", None)],
            base_model: None,
        }));
        let url = pool_server(Arc::clone(&state)).await;
        let rules =
            std::env::temp_dir().join(format!("bbr-gateway-discovery-{}.yaml", std::process::id()));
        // Only the base model has a rule: the adapter reaches its pool
        // through it, and no further once unloaded.
        std::fs::write(
            &rules,
            "rules: [{name: qwen, match: {model: {exact: qwen}}, pool: qwen}]\ndefault: {action: reject}\n",
        )
        .unwrap();
        let pool = format!("qwen={url}");
        let gw = GatewayProcess::start(&[
            "--rules",
            rules.to_str().unwrap(),
            "--pool",
            &pool,
            "--discover-models",
            "--discovery-period-secs",
            "1",
        ]);
        let client = http1();
        until(&client, &gw, |l| entry(l, "qwen").is_some()).await;

        state
            .lock()
            .unwrap()
            .models
            .push(("sql-lora", Some("qwen")));
        let list = until(&client, &gw, |l| entry(l, "sql-lora").is_some()).await;
        let adapter = entry(&list, "sql-lora").unwrap();
        assert_eq!(adapter["parent"], "qwen");
        assert_eq!(adapter["owned_by"], "qwen");
        let chat = r#"{"model":"sql-lora","messages":[]}"#;
        let response = post_json(&client, gw.url("/v1/chat/completions"), chat).await;
        assert_eq!(response.status(), 200);
        let _ = response.bytes().await.unwrap();
        assert_eq!(state.lock().unwrap().base_model.as_deref(), Some("qwen"));

        state
            .lock()
            .unwrap()
            .models
            .retain(|(id, _)| *id != "sql-lora");
        until(&client, &gw, |l| entry(l, "sql-lora").is_none()).await;
        state.lock().unwrap().base_model = None;
        let response = post_json(&client, gw.url("/v1/chat/completions"), chat).await;
        assert_eq!(response.status(), 404);
        let _ = response.bytes().await.unwrap();
        assert_eq!(state.lock().unwrap().base_model, None);
        let _ = std::fs::remove_file(&rules);
    })
    .await;
}
