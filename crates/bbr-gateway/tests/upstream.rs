//! The gateway in front of real servers: pools given by URL (servers this
//! test runs itself, OpenAI-compatible enough), balanced across the URLs of
//! one pool, and the error contract's answers when a server fails.

mod support;

use std::{
    convert::Infallible,
    net::SocketAddr,
    sync::{Arc, Mutex},
};

use bbr_gateway::{Endpoint, Upstream, UpstreamOptions};
use bytes::Bytes;
use http::{Request, Response};
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper_util::{
    rt::{TokioExecutor, TokioIo},
    server::conn::auto,
};
use support::*;
use tokio::{net::TcpListener, task::JoinHandle};

/// What one test server saw: the headers of each request.
type Seen = Arc<Mutex<Vec<http::HeaderMap>>>;

/// An OpenAI-compatible chat server of the test's own on a loopback port,
/// naming itself in `x-server`.
async fn openai_server(name: &'static str) -> (SocketAddr, Seen, JoinHandle<()>) {
    let listener = TcpListener::bind(loopback()).await.unwrap();
    let addr = listener.local_addr().unwrap();
    let seen = Seen::default();
    let log = Arc::clone(&seen);
    let task = tokio::spawn(async move {
        loop {
            let Ok((stream, _)) = listener.accept().await else {
                return;
            };
            let log = Arc::clone(&log);
            tokio::spawn(async move {
                let service = hyper::service::service_fn(move |request: Request<Incoming>| {
                    let log = Arc::clone(&log);
                    async move {
                        let headers = request.headers().clone();
                        let body = request.into_body().collect().await.unwrap().to_bytes();
                        let body: serde_json::Value = serde_json::from_slice(&body).unwrap();
                        log.lock().unwrap().push(headers);
                        let answer = serde_json::json!({
                            "id": "chatcmpl-test", "object": "chat.completion",
                            "model": body["model"],
                            "choices": [{"index": 0, "message": {"role": "assistant", "content": name}, "finish_reason": "stop"}],
                        });
                        let mut response =
                            Response::new(Full::new(Bytes::from(answer.to_string())));
                        response
                            .headers_mut()
                            .insert("content-type", "application/json".parse().unwrap());
                        response
                            .headers_mut()
                            .insert("x-server", name.parse().unwrap());
                        Ok::<_, Infallible>(response)
                    }
                });
                let _ = auto::Builder::new(TokioExecutor::new())
                    .serve_connection(TokioIo::new(stream), service)
                    .await;
            });
        }
    });
    (addr, seen, task)
}

const CHAT: &str =
    r#"{"model":"chatbot","messages":[{"role":"user","content":"What is the color of the sky?"}]}"#;

#[tokio::test]
async fn a_pool_given_by_two_urls_is_served_by_both_servers() {
    bounded(async {
        let (a, seen_a, task_a) = openai_server("a").await;
        let (b, seen_b, task_b) = openai_server("b").await;
        let gw = GatewayProcess::start(&[
            "--pool",
            &format!("gemma3=http://{a}"),
            "--pool",
            &format!("gemma3=http://{b}/"),
            "--pool",
            "deepseek-r1",
        ]);
        let client = http1();
        let mut servers = Vec::new();
        for _ in 0..6 {
            let response = post_json(&client, gw.url("/v1/chat/completions"), CHAT).await;
            assert_eq!(response.status(), 200);
            servers.push(response.headers()["x-server"].to_str().unwrap().to_owned());
            let answer: serde_json::Value = response.json().await.unwrap();
            assert_eq!(answer["model"], "chatbot");
        }
        assert!(servers.contains(&"a".to_owned()), "{servers:?}");
        assert!(servers.contains(&"b".to_owned()), "{servers:?}");
        // Both servers were told the model by the routing header.
        let seen: Vec<String> = [seen_a, seen_b]
            .iter()
            .flat_map(|s| s.lock().unwrap().clone())
            .map(|h| h["x-gateway-model-name"].to_str().unwrap().to_owned())
            .collect();
        assert_eq!(seen, vec!["chatbot".to_owned(); 6]);

        // A pool without a URL is still simulated.
        let body = CHAT.replace("chatbot", "recommender");
        let response = post_json(&client, gw.url("/v1/chat/completions"), body).await;
        assert_eq!(response.status(), 200);
        assert_eq!(response.headers()["x-inference-pool"], "deepseek-r1");
        task_a.abort();
        task_b.abort();
    })
    .await;
}

/// The gateway removes the client's copies of the headers it sets, and
/// the prefixes of `--strip-header-prefix`; the client's own
/// `x-gateway-inference-objective` and `x-gateway-inference-fairness-id`,
/// which an endpoint picker reads, reach the pool.
#[tokio::test]
async fn client_headers_reach_the_pool_except_bbrs_own_and_stripped_prefixes() {
    bounded(async {
        let (a, seen, task) = openai_server("a").await;
        let gw = GatewayProcess::start(&[
            "--pool",
            &format!("gemma3=http://{a}"),
            "--pool",
            "deepseek-r1",
            "--strip-header-prefix",
            "x-internal-",
        ]);
        let response = http1()
            .post(gw.url("/v1/chat/completions"))
            .header("content-type", "application/json")
            .header("x-gateway-model-name", "recommender")
            .header("x-gateway-inference-objective", "premium")
            .header("x-gateway-inference-fairness-id", "tenant-a")
            .header("x-internal-debug", "1")
            .body(CHAT)
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), 200);
        assert_eq!(response.headers()["x-server"], "a");
        let headers = seen.lock().unwrap()[0].clone();
        let models: Vec<_> = headers.get_all("x-gateway-model-name").iter().collect();
        assert_eq!(models, ["chatbot"]);
        assert_eq!(headers["x-gateway-inference-objective"], "premium");
        assert_eq!(headers["x-gateway-inference-fairness-id"], "tenant-a");
        assert!(headers.get("x-internal-debug").is_none(), "{headers:?}");
        task.abort();
    })
    .await;
}

#[tokio::test]
async fn a_busy_server_gets_fewer_requests_than_an_idle_one() {
    bounded(async {
        let (a, _, task_a) = openai_server("a").await;
        let (b, _, task_b) = openai_server("b").await;
        let upstream: Upstream<Full<Bytes>> = Upstream::balanced(
            vec![Endpoint::from(a), Endpoint::from(b)],
            &UpstreamOptions::default(),
        )
        .expect("two servers");
        // Answers held open count as requests under way at their server.
        let mut held = Vec::new();
        let mut first = Vec::new();
        for _ in 0..4 {
            let request = Request::post("/v1/chat/completions")
                .header("content-type", "application/json")
                .body(Full::new(Bytes::from_static(CHAT.as_bytes())))
                .unwrap();
            let response = tower::ServiceExt::oneshot(upstream.clone(), request)
                .await
                .unwrap();
            first.push(response.headers()["x-server"].to_str().unwrap().to_owned());
            held.push(response);
        }
        // Idle servers are taken in turn; with two answers held open at
        // each, they stay even.
        assert_eq!(first.iter().filter(|s| *s == "a").count(), 2, "{first:?}");
        // Finish every answer at `a`: `b` is busier, so `a` serves next.
        held.retain(|r| r.headers()["x-server"] != "a");
        for _ in 0..2 {
            let request = Request::post("/v1/chat/completions")
                .header("content-type", "application/json")
                .body(Full::new(Bytes::from_static(CHAT.as_bytes())))
                .unwrap();
            let response = tower::ServiceExt::oneshot(upstream.clone(), request)
                .await
                .unwrap();
            assert_eq!(response.headers()["x-server"], "a");
            held.push(response);
        }
        task_a.abort();
        task_b.abort();
    })
    .await;
}

#[tokio::test]
async fn an_unreachable_server_is_answered_from_the_error_contract() {
    bounded(async {
        // A port nothing listens on any more.
        let closed = TcpListener::bind(loopback()).await.unwrap();
        let addr = closed.local_addr().unwrap();
        drop(closed);
        let service = bbr_gateway::gateway(
            bbr_gateway::layer(demo_rules()),
            [("gemma3".to_owned(), Upstream::new(addr))],
        );
        let listener = TcpListener::bind(loopback()).await.unwrap();
        let gw = listener.local_addr().unwrap();
        let task = tokio::spawn(bbr_gateway::serve(listener, service));
        let response = post_json(&http1(), format!("http://{gw}/v1/chat/completions"), CHAT).await;
        assert_eq!(
            error_code(response).await,
            (502, "upstream_error".to_owned())
        );
        task.abort();
    })
    .await;
}

#[tokio::test]
async fn a_server_that_never_answers_is_answered_504() {
    bounded(async {
        // Accepts connections and reads nothing back.
        let silent = TcpListener::bind(loopback()).await.unwrap();
        let addr = silent.local_addr().unwrap();
        let hold = tokio::spawn(async move {
            let mut open = Vec::new();
            while let Ok((stream, _)) = silent.accept().await {
                open.push(stream);
            }
        });
        let options = UpstreamOptions {
            response_header_timeout: std::time::Duration::from_millis(200),
            ..UpstreamOptions::default()
        };
        let upstream = Upstream::with_server(Endpoint::from(addr), &options);
        let service = bbr_gateway::gateway(
            bbr_gateway::layer(demo_rules()),
            [("gemma3".to_owned(), upstream)],
        );
        let listener = TcpListener::bind(loopback()).await.unwrap();
        let gw = listener.local_addr().unwrap();
        let task = tokio::spawn(bbr_gateway::serve(listener, service));
        let response = post_json(&http1(), format!("http://{gw}/v1/chat/completions"), CHAT).await;
        assert_eq!(
            error_code(response).await,
            (504, "upstream_timeout".to_owned())
        );
        task.abort();
        hold.abort();
    })
    .await;
}

#[test]
fn a_pool_needs_a_server() {
    let none: Option<Upstream<Full<Bytes>>> =
        Upstream::balanced(Vec::new(), &UpstreamOptions::default());
    assert!(none.is_none());
}

#[test]
fn pool_urls_are_checked() {
    assert!(Endpoint::parse("http://127.0.0.1:8000").is_ok());
    assert_eq!(
        Endpoint::parse("http://10.0.0.1:8000/openai/")
            .unwrap()
            .to_string(),
        "http://10.0.0.1:8000/openai"
    );
    for bad in [
        "https://127.0.0.1:8000",
        "127.0.0.1:8000",
        "http://user:pw@127.0.0.1:8000",
        "http://127.0.0.1:8000/?x=1",
        "not a url",
    ] {
        assert!(Endpoint::parse(bad).is_err(), "{bad}");
    }
}
