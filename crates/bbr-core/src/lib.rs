//! Body-based routing for LLM inference gateways: the core.
//!
//! `bbr-core` reads the `model` of an OpenAI-style request body while the
//! body streams in, without copying it, validates the body, and matches the
//! model against a compiled rule table. It has no async runtime and no HTTP
//! server or gRPC dependency: the `bbr-tower` and `bbr-extproc` crates adapt it.
//!
//! - [`ModelExtractor`]: the resumable JSON extractor, fed `Bytes` chunks.
//! - [`BodyExtractor`]: picks the JSON or `multipart/form-data` extractor
//!   from a content type, and decodes a compressed body (`Content-Encoding`
//!   `gzip`, `deflate`, `br`, `zstd`; feature `decompress`) for the scan.
//! - [`PathTemplate`]: the model named in the URL path.
//! - [`rewrite`]: zero-copy splice of a new model into the body.
//! - [`Decider`]: the routing decision every adapter makes the same way —
//!   route with these headers and this rewrite, pass unrouted, or reject.
//! - [`session`]: one request from head to end of body, the sequence
//!   every adapter follows (read, hold, decide, release, check, count),
//!   with no I/O.
//! - [`rules`]: the compiled rule table (model → pool, criticality,
//!   weighted rewrite, LoRA base models) and its atomic reload.
//! - [`Error`], [`ErrorKind`]: the error taxonomy and its HTTP answers.
//! - [`watch`]: hot reload of the rules file, polled on a thread of its
//!   own, a file caught half-written left alone.
//! - `metrics` (feature `metrics`): the metric names both adapters record
//!   and what each verdict counts, through the `metrics` facade.
//! - `document` (feature `document`): the whole body parsed with
//!   `simd-json`, on demand, for rules that need nested fields.

#![cfg_attr(docsrs, feature(doc_cfg))]

mod body;
mod body_field;
mod config;
pub mod decision;
mod decode;
#[cfg(feature = "document")]
#[cfg_attr(docsrs, doc(cfg(feature = "document")))]
pub mod document;
mod error;
mod extract;
mod first_bytes;
mod json;
#[cfg(feature = "metrics")]
#[cfg_attr(docsrs, doc(cfg(feature = "metrics")))]
pub mod metrics;
mod multipart;
mod path;
mod progress;
pub mod rewrite;
pub mod rules;
pub mod session;
// The one module with `unsafe`: the SIMD scanner, each block with a SAFETY note.
#[allow(unsafe_code)]
mod scan;
pub mod watch;

pub use body::BodyExtractor;
pub use body_field::{BodyFieldHeader, BodyFieldHeaderError};
pub use config::{
    DEFAULT_EXPANSION_SLACK, DEFAULT_MAX_BODY, DEFAULT_MAX_DEPTH, DEFAULT_MAX_EXPANSION_RATIO,
    DEFAULT_MAX_MODEL_LEN, ExtractorConfig, MAX_FIELD_NAME_LEN, ParsePolicyError, Policy,
};
pub use decision::{Decider, Input, LateAction, Verdict};
#[cfg(feature = "decompress")]
pub use decode::CompressedExtractor;
pub use error::{Error, ErrorKind, FailureAction, FailurePolicy};
pub use extract::{Extraction, FieldValue, Model, Status};
pub use json::ModelExtractor;
pub use multipart::MultipartExtractor;
pub use path::{PathTemplate, PathTemplateError};
