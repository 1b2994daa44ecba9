//! Body-based routing for LLM inference gateways as an Envoy dynamic
//! module: the same routing as `bbr-extproc`, run inside Envoy as an HTTP
//! filter, with no network hop between Envoy and bbr.
//!
//! Build `libbbr_envoy.so` with `cargo build --release -p bbr-envoy`, put
//! its directory in `ENVOY_DYNAMIC_MODULES_SEARCH_PATH`, and add the filter
//! to an HTTP connection manager:
//!
//! ```yaml
//! - name: bbr
//!   typed_config:
//!     "@type": type.googleapis.com/envoy.extensions.filters.http.dynamic_modules.v3.DynamicModuleFilter
//!     dynamic_module_config: { name: bbr_envoy }
//!     filter_name: bbr
//!     filter_config:
//!       "@type": type.googleapis.com/google.protobuf.StringValue
//!       value: '{"rules_file": "/etc/bbr/rules.yaml"}'
//! ```
//!
//! The filter reads the `model` of each request body as Envoy hands over
//! its chunks, holds them (in Envoy's buffer) until the decision, sets
//! `X-Gateway-Model-Name` and friends, clears the route cache so that
//! Envoy's router picks the route on them, and lets the body go on; later
//! chunks are checked as they pass. Errors are answered with the error
//! contract shared by every bbr adapter. `docs/envoy-module.md` has the
//! configuration, the limits and the Envoy versions.
//!
//! Built for Envoy 1.40 (dynamic module ABI `v0.2.0`, see [`ABI_VERSION`]).

mod filter;

pub mod config;

// The one module with `unsafe`: the bindings to Envoy's C ABI, each block
// with a SAFETY note.
#[allow(unsafe_code)]
mod abi;

pub use abi::ABI_VERSION;
pub use config::{ConfigError, ModuleConfig, Settings};

/// The Envoy release this module is built and tested against.
pub const ENVOY_VERSION: &str = "1.40.0";
