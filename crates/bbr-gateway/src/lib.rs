//! bbr-gateway: an HTTP gateway that routes OpenAI-style requests to model
//! pools on the `model` named in their body.
//!
//! The `bbr-gateway` binary is bbr's tower layer ([`ModelRoutingLayer`]) in
//! front of a [`PoolRouter`] whose pools are HTTP [`Upstream`]s (several
//! servers per pool, balanced), behind a [`Front`] that answers the health,
//! readiness and metrics endpoints ([`Admin`]) and writes one access log
//! line per request ([`log`]), served by [`serve_with`] with connection
//! limits, timeouts and a drain on shutdown.
//!
//! ```sh
//! cargo install --locked --path crates/bbr-gateway
//! bbr-gateway                                   # the demo: two simulated pools
//! bbr-gateway --rules rules.yaml --pool gemma3=http://10.0.0.11:8000 --pool deepseek-r1=http://10.0.0.12:8000
//! ```
//!
//! # Rules
//!
//! Without `--rules FILE` the gateway routes with the demo's table, built
//! into the binary ([`DEMO_RULES`]: `chatbot` → pool `gemma3`, `recommender`
//! → pool `deepseek-r1`, any other model refused), and reads no file. With
//! `--rules FILE` it loads that file and reloads it when it changes. The
//! binary never looks for a file of the source tree: a build from a
//! checkout and an installed binary behave the same wherever they are
//! started. (In a checkout, `--rules examples/config/gateway.yaml` is the
//! same table as a file to edit.)
//!
//! # Pools
//!
//! Without `--pool NAME=URL`, each pool is simulated in the gateway's own
//! process ([`simulated`]), so the demo needs nothing else to run.
//!
//! # As a library
//!
//! [`gateway`] builds the routing service from a layer and the pools;
//! [`Front`] and [`serve_with`] serve it; [`cli::run`] is the whole binary,
//! flags included ([`cli::Flags`]).
//!
//! `docs/gateway.md` in the repository describes every flag, the endpoints,
//! the log line, the metrics and the rules reload.

#![forbid(unsafe_code)]

pub mod admin;
pub mod cli;
pub mod front;
pub mod log;
pub mod serve;
pub mod simulated;
pub mod upstream;

pub use admin::{Admin, Readiness};
pub use front::{Front, FrontBody, LoggedBody};
pub use serve::{RESERVED_DESCRIPTORS, ServeOptions, serve, serve_with};
pub use upstream::{ClientBody, Endpoint, InFlightBody, Upstream, UpstreamBody, UpstreamOptions};

use bbr_core::rules::RuleTable;
use bbr_tower::{Admission, ModelRouting, ModelRoutingLayer, PoolRouter, ResponseBody, RoutedBody};
use hyper::body::Incoming;
use tower::Layer;

/// The demo's rule table (YAML), built into the binary: what the gateway
/// routes with when no `--rules` is given.
pub const DEMO_RULES: &str = include_str!("../config/demo.yaml");

/// [`DEMO_RULES`], compiled.
pub fn demo_rules() -> Result<RuleTable, bbr_core::rules::ConfigError> {
    RuleTable::from_yaml(DEMO_RULES)
}

/// The gateway service: routing on the body, then one upstream per pool.
pub type GatewayService = ModelRouting<PoolRouter<Upstream<RoutedBody<Incoming>>>>;

/// The gateway's response body.
pub type GatewayBody = ResponseBody<ResponseBody<UpstreamBody>>;

/// Builds the gateway: `layer` (configured with the rules) in front of one
/// [`Upstream`] per pool.
pub fn gateway(
    layer: ModelRoutingLayer,
    pools: impl IntoIterator<Item = (String, Upstream<RoutedBody<Incoming>>)>,
) -> GatewayService {
    gateway_with(layer, pools, None)
}

/// [`gateway`] with each pool's requests in flight limited by `admission`
/// (shed, queued or admitted by criticality when a pool is saturated).
pub fn gateway_with(
    layer: ModelRoutingLayer,
    pools: impl IntoIterator<Item = (String, Upstream<RoutedBody<Incoming>>)>,
    admission: Option<Admission>,
) -> GatewayService {
    let router = pools
        .into_iter()
        .fold(PoolRouter::new(), |router, (name, upstream)| {
            router.pool(name, upstream)
        });
    let router = match admission {
        Some(admission) => router.admission(admission),
        None => router,
    };
    layer.layer(router)
}

/// The gateway's layer for `rules`, with the default (strict) policy,
/// answering `GET /v1/models` from the table.
pub fn layer(rules: RuleTable) -> ModelRoutingLayer {
    ModelRoutingLayer::new().rules(rules).serve_models(true)
}
