//! The demo gateway over real loopback sockets: routing, streaming bodies,
//! the error contract and server-sent events.

mod support;

use std::{sync::Arc, time::Duration};

use bbr_gateway::simulated::SimulatedPool;
use bbr_tower::ModelSource;
use bytes::Bytes;
use futures_util::StreamExt;
use support::*;
use tokio::sync::{Semaphore, mpsc};

const CHAT: &str = r#"{"model":"chatbot","messages":[{"role":"user","content":"What is the color of the sky?"}],"max_tokens":100,"temperature":0}"#;
const COMPLETION: &str = r#"{"model":"recommender","prompt":"Give me restaurant recommendations in Paris","max_tokens":100,"temperature":0}"#;

#[tokio::test]
async fn the_demo_requests_reach_their_pools() {
    bounded(async {
        let gw = TestGateway::demo().await;
        let client = http1();
        let cases = [
            ("/v1/chat/completions", "chatbot", "gemma3"),
            ("/v1/completions", "chatbot", "gemma3"),
            ("/v1/chat/completions", "recommender", "deepseek-r1"),
            ("/v1/completions", "recommender", "deepseek-r1"),
        ];
        for (path, model, pool) in cases {
            let body = if path == "/v1/completions" {
                COMPLETION.replace("recommender", model)
            } else {
                CHAT.replace("chatbot", model)
            };
            let response = post_json(&client, gw.url(path), body.clone()).await;
            assert_eq!(response.status(), 200, "{path} {model}");
            assert_eq!(
                response.headers()["x-inference-pool"],
                pool,
                "{path} {model}"
            );
            assert_eq!(response.headers()["x-pool-received-model-header"], model);
            assert_eq!(
                response.headers()["x-pool-received-sha256"],
                sha256(body.as_bytes())
            );
            let answer: serde_json::Value = response.json().await.unwrap();
            assert_eq!(answer["model"], model);
            let object = if path == "/v1/completions" {
                "text_completion"
            } else {
                "chat.completion"
            };
            assert_eq!(answer["object"], object);
        }
        assert_eq!(gw.pool("gemma3").received().len(), 2);
        assert_eq!(gw.pool("deepseek-r1").received().len(), 2);
        let decisions = gw.decisions.all();
        assert_eq!(decisions.len(), 4);
        for decision in &decisions {
            assert_eq!(decision.source(), ModelSource::Body);
            assert!(decision.route().is_some());
        }
    })
    .await;
}

#[tokio::test]
async fn bodies_in_many_small_chunks_are_routed_and_forwarded_intact() {
    bounded(async {
        let gw = TestGateway::demo().await;
        let body = format!(
            r#"{{"messages":[{{"role":"user","content":"{}"}}],"model":"recommender","stream":false}}"#,
            "tell me about Paris, ".repeat(200)
        );
        for size in [1, 3, 7, 64] {
            let response = post_json(&http1(), gw.url("/v1/chat/completions"), chunked(Bytes::from(body.clone()), size))
            .await;
            assert_eq!(response.status(), 200, "chunks of {size}");
            assert_eq!(response.headers()["x-inference-pool"], "deepseek-r1");
            assert_eq!(response.headers()["x-pool-received-sha256"], sha256(body.as_bytes()));
        }
        let received = gw.pool("deepseek-r1").received();
        assert_eq!(received.len(), 4);
        assert!(received.iter().all(|r| r.complete && r.bytes == body.len() as u64));
        // Chunked: the client sent no Content-Length, and none was invented.
        assert!(received.iter().all(|r| !r.headers.contains_key("content-length")));
    })
    .await;
}

#[tokio::test]
async fn http2_requests_are_routed() {
    bounded(async {
        let gw = TestGateway::demo().await;
        let client = http2();
        for (body, pool) in [(CHAT, "gemma3"), (COMPLETION, "deepseek-r1")] {
            let response = post_json(
                &client,
                gw.url("/v1/chat/completions"),
                chunked(Bytes::from(body), 5),
            )
            .await;
            assert_eq!(response.version(), reqwest::Version::HTTP_2);
            assert_eq!(response.status(), 200);
            assert_eq!(response.headers()["x-inference-pool"], pool);
            assert_eq!(
                response.headers()["x-pool-received-sha256"],
                sha256(body.as_bytes())
            );
        }
    })
    .await;
}

/// A body of about `size` bytes: a long message, with `model` first or last.
fn large_body(size: usize, model_first: bool) -> (Bytes, usize) {
    let text = "a".repeat(size);
    let body = if model_first {
        format!(r#"{{"model":"recommender","messages":[{{"role":"user","content":"{text}"}}]}}"#)
    } else {
        format!(r#"{{"messages":[{{"role":"user","content":"{text}"}}],"model":"recommender"}}"#)
    };
    let model_end = body.rfind("recommender\"").unwrap() + "recommender\"".len();
    (Bytes::from(body), model_end)
}

#[tokio::test]
async fn a_50_mib_body_is_forwarded_intact_and_held_only_up_to_the_model() {
    bounded(async {
        let gw = TestGateway::start(
            bbr_gateway::layer(demo_rules()).max_body(64 << 20),
            default_pools(),
        )
        .await;
        // The most a server read may add past the model: hyper reads the
        // connection in buffers of at most a few hundred KiB.
        const READ_SLACK: u64 = 1 << 20;
        for model_first in [false, true] {
            let (body, model_end) = large_body(50 << 20, model_first);
            let response = http1()
                .post(gw.url("/v1/chat/completions"))
                .header("content-type", "application/json")
                .header("content-length", body.len())
                .body(chunked(body.clone(), 64 << 10))
                .send()
                .await
                .unwrap();
            assert_eq!(response.status(), 200);
            assert_eq!(response.headers()["x-inference-pool"], "deepseek-r1");
            assert_eq!(response.headers()["x-pool-received-sha256"], sha256(&body));
            let decision = gw.decisions.all().pop().unwrap();
            let held = decision.held_bytes();
            assert!(
                held >= model_end as u64,
                "held {held} < model end {model_end}"
            );
            assert!(
                held <= model_end as u64 + READ_SLACK,
                "held {held} bytes, the model ends at {model_end} (model first: {model_first})"
            );
        }
        let received = gw.pool("deepseek-r1").received();
        assert_eq!(received.len(), 2);
        assert!(received.iter().all(|r| r.complete && r.bytes > 50 << 20));
    })
    .await;
}

#[tokio::test]
async fn a_spoofed_model_header_is_replaced() {
    bounded(async {
        let gw = TestGateway::demo().await;
        let response = http1()
            .post(gw.url("/v1/chat/completions"))
            .header("content-type", "application/json")
            .header("X-Gateway-Model-Name", "recommender")
            .header("x-gateway-model-name", "other")
            .body(CHAT)
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), 200);
        assert_eq!(response.headers()["x-inference-pool"], "gemma3");
        let received = gw.pool("gemma3").received();
        let values: Vec<_> = received[0]
            .headers
            .get_all("x-gateway-model-name")
            .iter()
            .collect();
        assert_eq!(values, ["chatbot"]);
        assert!(gw.pool("deepseek-r1").received().is_empty());
    })
    .await;
}

#[tokio::test]
async fn refused_requests_get_the_error_contract() {
    bounded(async {
        let gw = TestGateway::start(
            bbr_gateway::layer(demo_rules()).max_body(4096),
            default_pools(),
        )
        .await;
        let long = format!(
            r#"{{"messages":["{}"],"model":"chatbot"}}"#,
            "x".repeat(8192)
        );
        let cases: [(&str, &str, u16, &str); 7] = [
            (
                "application/json",
                r#"{"model":"chatbot","messages":[}"#,
                400,
                "invalid_json",
            ),
            (
                "application/json",
                r#"{"model":"chatbot","model":"recommender"}"#,
                400,
                "duplicate_model",
            ),
            (
                "application/json",
                r#"{"model":42,"messages":[]}"#,
                400,
                "model_not_string",
            ),
            (
                "application/json",
                r#"{"model":"chat\r\nbot"}"#,
                400,
                "invalid_model",
            ),
            (
                "application/json",
                r#"{"model":"gpt-unknown","messages":[]}"#,
                404,
                "model_not_found",
            ),
            ("application/json", &long, 413, "too_large"),
            ("text/plain", CHAT, 415, "unsupported_content_type"),
        ];
        for (content_type, body, status, code) in cases {
            for client in [http1(), http2()] {
                let response = client
                    .post(gw.url("/v1/chat/completions"))
                    .header("content-type", content_type)
                    .body(chunked(Bytes::from(body.to_owned()), 16))
                    .send()
                    .await
                    .unwrap();
                assert_eq!(
                    error_code(response).await,
                    (status, code.to_owned()),
                    "{body:.60}"
                );
            }
        }
        assert_eq!(gw.received_total(), 0, "no refused request reached a pool");
    })
    .await;
}

#[tokio::test]
async fn a_duplicate_model_after_the_decision_aborts_the_upstream_body() {
    bounded(async {
        let gw = TestGateway::demo().await;
        let (tx, rx) = mpsc::channel::<Result<Bytes, std::io::Error>>(4);
        let head = format!(
            r#"{{"model":"chatbot","messages":[{{"role":"user","content":"{}"}}]"#,
            "b".repeat(100_000)
        );
        let tail = r#","model":"recommender"}"#;
        let decisions = gw.decisions.clone();
        let sender = tokio::spawn(async move {
            tx.send(Ok(Bytes::from(head))).await.unwrap();
            // The duplicate is sent only once the layer has decided and the
            // upstream request is under way.
            decisions.wait_for(1).await;
            tx.send(Ok(Bytes::from_static(tail.as_bytes())))
                .await
                .unwrap();
        });
        let body = reqwest::Body::wrap_stream(tokio_stream::wrappers::ReceiverStream::new(rx));
        let response = post_json(&http1(), gw.url("/v1/chat/completions"), body).await;
        assert_eq!(
            error_code(response).await,
            (400, "duplicate_model".to_owned())
        );
        sender.await.unwrap();
        assert_eq!(gw.decisions.all()[0].pool(), Some("gemma3"));
        // The pool may have seen the start of the body, never all of it.
        for received in gw.pool("gemma3").received() {
            assert!(!received.complete, "the pool received a complete body");
        }
        assert!(gw.pool("deepseek-r1").received().is_empty());
    })
    .await;
}

#[tokio::test]
async fn server_sent_events_stream_through_token_by_token() {
    bounded(async {
        let gate = Arc::new(Semaphore::new(0));
        let pools = vec![
            SimulatedPool::new("gemma3")
                .token_delay(Duration::ZERO)
                .token_gate(gate.clone()),
            SimulatedPool::new("deepseek-r1").token_delay(Duration::ZERO),
        ];
        let gw = TestGateway::start(bbr_gateway::layer(demo_rules()), pools).await;
        let body = CHAT.replace("\"temperature\":0", "\"temperature\":0,\"stream\":true");
        let response = post_json(&http1(), gw.url("/v1/chat/completions"), body).await;
        assert_eq!(response.status(), 200);
        assert_eq!(response.headers()["content-type"], "text/event-stream");
        assert_eq!(response.headers()["x-inference-pool"], "gemma3");
        let mut stream = response.bytes_stream();
        let mut events = Vec::new();
        let mut pending = String::new();
        // The pool produces each event after the first only when the gate
        // lets it, and the gate opens only once the previous event arrived:
        // a gateway that buffered the response would never finish.
        while let Some(chunk) = stream.next().await {
            pending.push_str(std::str::from_utf8(&chunk.unwrap()).unwrap());
            while let Some(end) = pending.find("\n\n") {
                let event: String = pending.drain(..end + 2).collect();
                events.push(event);
                gate.add_permits(1);
            }
        }
        assert!(events.len() > 3, "{events:?}");
        assert!(events[0].starts_with("data: {"), "{:?}", events[0]);
        assert!(events[0].contains("chat.completion.chunk"));
        assert_eq!(events.last().unwrap(), "data: [DONE]\n\n");
        let text: String = events[..events.len() - 1]
            .iter()
            .filter_map(|e| {
                let v: serde_json::Value =
                    serde_json::from_str(e.strip_prefix("data: ")?.trim()).ok()?;
                v["choices"][0]["delta"]["content"]
                    .as_str()
                    .map(str::to_owned)
            })
            .collect();
        assert!(text.contains("chatbot served by pool gemma3"), "{text}");
    })
    .await;
}

#[tokio::test]
async fn requests_without_a_model_pass_through_unrouted() {
    bounded(async {
        let gw = TestGateway::demo().await;
        // No body: nothing to route on; the router has no fallback pool.
        let response = http1().get(gw.url("/v1/files")).send().await.unwrap();
        assert_eq!(error_code(response).await, (404, "no_route".to_owned()));
        let response = http1()
            .post(gw.url("/v1/chat/completions"))
            .header("content-type", "application/json")
            .header("x-gateway-model-name", "chatbot")
            .body(r#"{"messages":[]}"#)
            .send()
            .await
            .unwrap();
        assert_eq!(error_code(response).await, (404, "no_route".to_owned()));
        let decisions = gw.decisions.all();
        assert_eq!(decisions.len(), 2);
        assert!(
            decisions
                .iter()
                .all(|d| d.model().is_none() && d.pool().is_none())
        );
        assert_eq!(gw.received_total(), 0);
    })
    .await;
}

#[tokio::test]
async fn the_gateway_lists_its_models() {
    bounded(async {
        let gw = TestGateway::demo().await;
        let response = http1()
            .get(format!("http://{}/v1/models", gw.addr))
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), 200);
        let list: serde_json::Value = response.json().await.unwrap();
        let models: Vec<(&str, &str)> = list["data"]
            .as_array()
            .unwrap()
            .iter()
            .map(|m| (m["id"].as_str().unwrap(), m["owned_by"].as_str().unwrap()))
            .collect();
        assert_eq!(
            models,
            [("chatbot", "gemma3"), ("recommender", "deepseek-r1")]
        );
    })
    .await;
}
