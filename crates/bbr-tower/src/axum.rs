//! axum support: [`Decision`] as an extractor.
//!
//! [`ModelRoutingLayer`](crate::ModelRoutingLayer) is an ordinary tower
//! layer, so an axum app adds it with `Router::layer` (or `route_layer`), and
//! handlers take the decision as an argument:
//!
//! ```
//! use axum::{Router, routing::post};
//! use bbr_core::rules::RuleTable;
//! use bbr_tower::{Decision, ModelRoutingLayer};
//!
//! async fn chat(decision: Decision, body: String) -> String {
//!     format!("{} → {:?} ({} body bytes)", decision.model().unwrap_or("-"), decision.pool(), body.len())
//! }
//!
//! let rules = RuleTable::from_yaml(
//!     "rules:\n  - name: chatbot\n    match: { model: { exact: chatbot } }\n    pool: gemma3\n",
//! )
//! .unwrap();
//! let app: Router = Router::new()
//!     .route("/v1/chat/completions", post(chat))
//!     .layer(ModelRoutingLayer::new().rules(rules));
//! ```
//!
//! A handler taking `Decision` on a route without the layer is answered
//! `500`; take `Option<Decision>` where the layer is optional.

use axum_core::{
    extract::{FromRequestParts, OptionalFromRequestParts},
    response::{IntoResponse, Response},
};
use http::{StatusCode, request::Parts};

use crate::Decision;

/// The rejection of the [`Decision`] extractor: the request did not pass
/// through [`ModelRouting`](crate::ModelRouting).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct MissingDecision;

impl std::fmt::Display for MissingDecision {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("the request carries no routing decision: is ModelRoutingLayer installed?")
    }
}

impl std::error::Error for MissingDecision {}

impl IntoResponse for MissingDecision {
    fn into_response(self) -> Response {
        (StatusCode::INTERNAL_SERVER_ERROR, self.to_string()).into_response()
    }
}

impl<S> FromRequestParts<S> for Decision
where
    S: Send + Sync,
{
    type Rejection = MissingDecision;

    async fn from_request_parts(parts: &mut Parts, _state: &S) -> Result<Self, MissingDecision> {
        parts
            .extensions
            .get::<Decision>()
            .cloned()
            .ok_or(MissingDecision)
    }
}

impl<S> OptionalFromRequestParts<S> for Decision
where
    S: Send + Sync,
{
    type Rejection = std::convert::Infallible;

    async fn from_request_parts(
        parts: &mut Parts,
        _state: &S,
    ) -> Result<Option<Self>, std::convert::Infallible> {
        Ok(parts.extensions.get::<Decision>().cloned())
    }
}
