//! bbr in an axum app: `ModelRoutingLayer` added with `Router::layer`, and
//! handlers that take the routing [`Decision`] as an extractor.
//!
//! ```sh
//! cargo run -p bbr-examples --example axum_layer   # listens on 127.0.0.1:3000
//! curl -s localhost:3000/v1/chat/completions -H 'content-type: application/json' \
//!   -d '{"messages":[{"role":"user","content":"hi"}],"model":"chatbot"}'
//! ```
//!
//! The handler answers with what the layer decided: the model, the rule,
//! the pool and its criticality. Unknown models are refused with 404 before
//! the handler runs; invalid JSON with 400.

use std::net::SocketAddr;

use axum::{Json, Router, routing::post};
use bbr_core::rules::RuleTable;
use bbr_tower::{Decision, ModelRoutingLayer};
use serde_json::{Value, json};
use tokio::net::TcpListener;

/// The demo's rules: `chatbot` → pool `gemma3`, `recommender` → `deepseek-r1`.
const RULES: &str = include_str!("../config/gateway.yaml");

async fn chat(decision: Decision, body: axum::body::Bytes) -> Json<Value> {
    let route = decision.route();
    Json(json!({
        "model": decision.model(),
        "rule": route.and_then(|r| r.rule()),
        "pool": decision.pool(),
        "criticality": route.and_then(|r| r.criticality()).map(|c| c.to_string()),
        "upstream_model": decision.upstream_model(),
        "bytes_held_before_the_decision": decision.held_bytes(),
        "body_bytes": body.len(),
    }))
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let listen: SocketAddr = std::env::args()
        .nth(1)
        .unwrap_or_else(|| "127.0.0.1:3000".to_owned())
        .parse()?;
    let rules = RuleTable::from_yaml(RULES)?;
    let app = Router::new()
        .route("/v1/chat/completions", post(chat))
        .route("/v1/completions", post(chat))
        .layer(ModelRoutingLayer::new().rules(rules));
    let listener = TcpListener::bind(listen).await?;
    println!("listening on http://{}", listener.local_addr()?);
    axum::serve(listener, app).await?;
    Ok(())
}
