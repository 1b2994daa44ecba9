//! Body-based routing for tower and axum: route LLM inference requests on
//! the `model` named in their JSON body, while the body streams in.
//!
//! [`ModelRoutingLayer`] wraps any tower service taking `http::Request`s
//! whose body yields [`Bytes`] (hyper, axum and tonic bodies; HTTP/1.1 and
//! HTTP/2 alike). For each request it
//!
//! 1. removes the routing headers the client sent (`X-Gateway-Model-Name`
//!    and every header the rule table sets), so they cannot be spoofed;
//! 2. feeds body frames to the [`bbr_core`] extractor, holding them, until
//!    the model is known (bounded by the position of `model` in the body,
//!    not by its size);
//! 3. matches the model against the [rule table](bbr_core::rules), sets the
//!    decision's headers, rewrites the model in the held chunks if the rule
//!    says so (fixing `Content-Length`), and calls the inner service with a
//!    [`Decision`] request extension and a [`RoutedBody`] that replays the
//!    held chunks and then streams the rest, each chunk unchanged;
//! 4. with the strict policy, scans each later chunk before releasing it: a
//!    second `model` or invalid JSON ends the body with an error, so the
//!    upstream never receives the complete body of a refused request.
//!
//! A request refused before the decision is answered at once with the error
//! contract of [`bbr_core::Error`]: 400 (invalid JSON, model not a string,
//! invalid or duplicate model), 404 (`model_not_found`), 413 (too large),
//! 415 (unsupported content type), each with an OpenAI-style JSON body.
//!
//! [`PoolRouter`] then dispatches on the decision's pool, one service per
//! pool: the two together are a gateway. With the `axum` feature,
//! [`Decision`] is an axum extractor (see the `axum` module).
//!
//! # Example
//!
//! ```
//! use std::convert::Infallible;
//!
//! use bbr_core::rules::RuleTable;
//! use bbr_tower::{Decision, ModelRoutingLayer, RoutedBody};
//! use bytes::Bytes;
//! use http::{Request, Response};
//! use http_body_util::{BodyExt, Full};
//! use tower::{ServiceBuilder, ServiceExt, service_fn};
//!
//! async fn pool(request: Request<RoutedBody<Full<Bytes>>>) -> Result<Response<String>, Infallible> {
//!     let decision = request.extensions().get::<Decision>().cloned();
//!     let header = request.headers()["x-gateway-model-name"].to_str().unwrap().to_owned();
//!     let body = request.into_body().collect().await.unwrap().to_bytes();
//!     let pool = decision.as_ref().and_then(Decision::pool).unwrap_or("-").to_owned();
//!     Ok(Response::new(format!("{pool} {header} {}", body.len())))
//! }
//!
//! # tokio::runtime::Builder::new_current_thread().build().unwrap().block_on(async {
//! let rules = RuleTable::from_yaml(
//!     "rules:\n  - name: chatbot\n    match: { model: { exact: chatbot } }\n    pool: gemma3\n",
//! )
//! .unwrap();
//! let service = ServiceBuilder::new()
//!     .layer(ModelRoutingLayer::new().rules(rules))
//!     .service(service_fn(pool));
//!
//! let body = r#"{"messages":[{"role":"user","content":"hi"}],"model":"chatbot"}"#;
//! let request = Request::post("/v1/chat/completions")
//!     .header("content-type", "application/json")
//!     .header("x-gateway-model-name", "spoofed")
//!     .body(Full::new(Bytes::from(body)))
//!     .unwrap();
//! let response = service.oneshot(request).await.unwrap();
//! let text = response.into_body().collect().await.unwrap().to_bytes();
//! assert_eq!(text, format!("gemma3 chatbot {}", body.len()));
//! # });
//! ```

#![forbid(unsafe_code)]
#![cfg_attr(docsrs, feature(doc_cfg))]

#[cfg(feature = "tokio")]
mod admission;
mod body;
mod budget;
mod config;
mod decision;
mod future;
mod layer;
mod response;
mod router;

#[cfg(feature = "axum")]
#[cfg_attr(docsrs, doc(cfg(feature = "axum")))]
pub mod axum;

#[cfg(feature = "watch")]
#[cfg_attr(docsrs, doc(cfg(feature = "watch")))]
pub mod watch;

#[cfg(feature = "tokio")]
#[cfg_attr(docsrs, doc(cfg(feature = "tokio")))]
pub use admission::{Admission, AdmissionStats, Class};
pub use body::RoutedBody;
pub use budget::{DEFAULT_HOLD_BUDGET, HoldBudget};
pub use config::DEFAULT_HOLD_IDLE_TIMEOUT;
pub use decision::{Decision, ModelSource};
pub use future::ResponseFuture;
pub use layer::{ModelRouting, ModelRoutingLayer};
pub use response::{ResponseBody, error_response};
pub use router::{PoolRouter, RouterFuture};

pub use bbr_core;
pub use bytes::Bytes;

/// A boxed error, as body errors are reported.
pub type BoxError = Box<dyn std::error::Error + Send + Sync>;

#[cfg(test)]
mod tests;
