//! The layer in an axum app over loopback sockets: the `Decision`
//! extractor, model rewrites, fail-open policies and path templates.

mod support;

use axum::{Json, Router, body::Bytes, http::HeaderMap, routing::post};
use bbr_core::rules::RuleTable;
use bbr_core::{ErrorKind, FailureAction, FailurePolicy, PathTemplate};
use bbr_tower::{Decision, ModelRoutingLayer};
use serde_json::{Value, json};
use support::*;
use tokio::net::TcpListener;

const RULES: &str = r#"
rules:
  - name: chatbot
    match: { model: { exact: chatbot } }
    pool: gemma3
    criticality: Critical
    targets:
      - { model: google/gemma-3-27b-it, weight: 100 }
  - name: recommender
    match: { model: { exact: recommender } }
    pool: deepseek-r1
default: { action: reject }
"#;

/// Echoes what the handler saw: the decision, the routing headers, the body.
async fn echo(decision: Decision, headers: HeaderMap, body: Bytes) -> Json<Value> {
    let header = |name: &str| {
        headers
            .get(name)
            .and_then(|v| v.to_str().ok())
            .map(str::to_owned)
    };
    Json(json!({
        "model": decision.model(),
        "upstream_model": decision.upstream_model(),
        "pool": decision.pool(),
        "source": format!("{:?}", decision.source()),
        "failed_open": decision.failed_open().map(|e| e.kind().as_str()),
        "stream": decision.field("stream").map(|v| format!("{v:?}")),
        "model_header": header("x-gateway-model-name"),
        "content_length": header("content-length"),
        "body": String::from_utf8_lossy(&body),
    }))
}

async fn optional(decision: Option<Decision>) -> String {
    decision.map_or_else(
        || "none".to_owned(),
        |d| d.model().unwrap_or("-").to_owned(),
    )
}

async fn serve(app: Router) -> String {
    let listener = TcpListener::bind(loopback()).await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        let _ = axum::serve(listener, app).await;
    });
    format!("http://{addr}")
}

fn layer() -> ModelRoutingLayer {
    ModelRoutingLayer::new().rules(RuleTable::from_yaml(RULES).unwrap())
}

#[tokio::test]
async fn handlers_extract_the_decision() {
    bounded(async {
        let base = serve(
            Router::new()
                .route("/v1/chat/completions", post(echo))
                .layer(layer()),
        )
        .await;
        let body = r#"{"messages":[],"model":"recommender","stream":true}"#;
        let response = http1()
            .post(format!("{base}/v1/chat/completions"))
            .header("content-type", "application/json")
            .header("x-gateway-model-name", "spoofed")
            .body(chunked(Bytes::from_static(body.as_bytes()), 4))
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), 200);
        let seen: Value = response.json().await.unwrap();
        assert_eq!(seen["model"], "recommender");
        assert_eq!(seen["upstream_model"], "recommender");
        assert_eq!(seen["pool"], "deepseek-r1");
        assert_eq!(seen["source"], "Body");
        assert_eq!(seen["model_header"], "recommender");
        assert_eq!(seen["body"], body);
    })
    .await;
}

#[tokio::test]
async fn a_rewritten_model_fixes_the_body_and_its_length() {
    bounded(async {
        let base = serve(
            Router::new()
                .route("/v1/chat/completions", post(echo))
                .layer(layer()),
        )
        .await;
        let body = r#"{"model":"chatbot","messages":[{"role":"user","content":"hi"}]}"#;
        let response = post_json(&http1(), format!("{base}/v1/chat/completions"), body).await;
        assert_eq!(response.status(), 200);
        let seen: Value = response.json().await.unwrap();
        let expected = body.replace("\"chatbot\"", "\"google/gemma-3-27b-it\"");
        assert_eq!(seen["body"], expected);
        assert_eq!(seen["content_length"], expected.len().to_string());
        assert_eq!(seen["model"], "chatbot");
        assert_eq!(seen["upstream_model"], "google/gemma-3-27b-it");
        assert_eq!(seen["model_header"], "chatbot");
        assert_eq!(seen["pool"], "gemma3");
    })
    .await;
}

#[tokio::test]
async fn errors_are_answered_before_the_handler() {
    bounded(async {
        let base = serve(
            Router::new()
                .route("/v1/chat/completions", post(echo))
                .layer(layer()),
        )
        .await;
        for (body, status, code) in [
            (r#"{"model":"nobody"}"#, 404, "model_not_found"),
            (r#"{"model":null}"#, 400, "model_not_string"),
            (r#"["model","chatbot"]"#, 400, "invalid_json"),
        ] {
            let response = post_json(&http2(), format!("{base}/v1/chat/completions"), body).await;
            assert_eq!(
                error_code(response).await,
                (status, code.to_owned()),
                "{body}"
            );
        }
    })
    .await;
}

#[tokio::test]
async fn fail_open_policies_let_errors_through_without_headers() {
    bounded(async {
        let policy = FailurePolicy::new()
            .on(ErrorKind::InvalidJson, FailureAction::PassThrough)
            .on(ErrorKind::ModelNotFound, FailureAction::PassThrough);
        let base = serve(
            Router::new()
                .route("/v1/chat/completions", post(echo))
                .layer(layer().failure_policy(policy)),
        )
        .await;
        for (body, kind) in [
            (r#"{"model":"chatbot",,}"#, "invalid_json"),
            (r#"{"model":"nobody"}"#, "model_not_found"),
        ] {
            let response = http1()
                .post(format!("{base}/v1/chat/completions"))
                .header("content-type", "application/json")
                .header("x-gateway-model-name", "spoofed")
                .body(body)
                .send()
                .await
                .unwrap();
            assert_eq!(response.status(), 200, "{body}");
            let seen: Value = response.json().await.unwrap();
            assert_eq!(seen["failed_open"], kind);
            assert_eq!(seen["body"], body);
            assert!(seen["pool"].is_null());
            assert!(
                seen["model_header"].is_null(),
                "the spoofed header is gone: {seen}"
            );
        }
    })
    .await;
}

#[tokio::test]
async fn a_path_template_routes_without_reading_the_body() {
    bounded(async {
        let template = PathTemplate::parse("/v1beta/models/{model}:generateContent").unwrap();
        let base = serve(
            Router::new()
                .route("/v1beta/models/{call}", post(echo))
                .layer(layer().path_template(template)),
        )
        .await;
        let body = r#"{"contents":[{"parts":[{"text":"hi"}]}]}"#;
        let response = post_json(
            &http1(),
            format!("{base}/v1beta/models/recommender:generateContent"),
            body,
        )
        .await;
        assert_eq!(response.status(), 200);
        let seen: Value = response.json().await.unwrap();
        assert_eq!(seen["source"], "Path");
        assert_eq!(seen["pool"], "deepseek-r1");
        assert_eq!(seen["model_header"], "recommender");
        assert_eq!(seen["body"], body);
    })
    .await;
}

#[tokio::test]
async fn the_extractor_needs_the_layer_unless_optional() {
    bounded(async {
        let base = serve(
            Router::new()
                .route("/required", post(echo))
                .route("/optional", post(optional)),
        )
        .await;
        let response = http1()
            .post(format!("{base}/required"))
            .body("{}")
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), 500);
        let response = http1()
            .post(format!("{base}/optional"))
            .body("{}")
            .send()
            .await
            .unwrap();
        assert_eq!(response.text().await.unwrap(), "none");
    })
    .await;
}
