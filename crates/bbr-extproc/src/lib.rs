//! An Envoy external-processing (`ext_proc`) server that routes LLM inference
//! requests on the `model` named in their JSON body.
//!
//! Envoy opens one `Process` stream per HTTP request. The service reads the
//! body as Envoy streams it, finds the top-level `model` with
//! [`bbr_core::BodyExtractor`], matches the [rule table](bbr_core::rules), and
//! answers with header mutations (`X-Gateway-Model-Name`,
//! `X-Gateway-Base-Model-Name`, `x-gateway-inference-pool` and the rule's own
//! headers) plus `clear_route_cache`, so that Envoy's router picks the route
//! (the InferencePool) from them. Routing headers sent by the client are
//! always removed first.
//!
//! - `FULL_DUPLEX_STREAMED` (what the Gateway API Inference Extension's chart
//!   configures): the headers response is held until the decision; the
//!   chunks received by then are sent back as `streamed_response` body
//!   mutations; later chunks go back as soon as they are scanned. Only the
//!   chunks up to the `model` are held, not the body.
//! - `BUFFERED`: Envoy sends the whole body in one message; the routing goes
//!   in the body response (and a body mutation when a rule rewrites the model).
//! - `STREAMED`: the headers must be answered before the body is seen; the
//!   routing goes on the first body response, which Envoy honours only when
//!   the model lies in the first chunk it sends. The body is still
//!   validated, but use one of the two modes above to route on the model.
//!
//! Errors (invalid JSON, a `model` that is not a string, duplicates, an
//! unknown model …) are answered with an `ImmediateResponse` carrying the
//! status and OpenAI-style JSON body of [`bbr_core::Error`], also when they are
//! found after the routing went out (strict policy). The failure policy can
//! turn each kind into a pass-through instead (the request goes on unchanged,
//! without routing headers), except where the routing already went out: a
//! request routed on a body that then proves bad is refused whatever the
//! policy, since it can no longer pass unchanged.
//!
//! [`ProcessorBuilder::body_field`] copies other top-level body fields into
//! request headers, as the Go router's `body-field-to-header` plugin does.
//!
//! The body mode is taken from `ProcessingRequest.protocol_config` when Envoy
//! sends it (Envoy 1.33 and later) and from [`ProcessorBuilder::streaming`]
//! otherwise.
//!
//! The service ([`ProcessorServer`]) decodes Envoy's messages into the
//! [`wire`] types, whose body chunks and header values are slices of the
//! received gRPC message rather than copies, and sends a chunk back in the
//! same buffer; [`pb`] has the complete generated types and the client.
//!
//! # Example
//!
//! Serve the processor and drive one request through it as Envoy would:
//!
//! ```
//! use bbr_extproc::{BodyRoutingProcessor, pb};
//! use pb::{processing_request::Request, processing_response::Response};
//! use tokio_stream::wrappers::TcpListenerStream;
//!
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() -> Result<(), Box<dyn std::error::Error>> {
//! let processor = BodyRoutingProcessor::builder().streaming(true).build();
//! let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
//! let addr = listener.local_addr()?;
//! tokio::spawn(
//!     tonic::transport::Server::builder()
//!         .add_service(processor.into_server())
//!         .serve_with_incoming(TcpListenerStream::new(listener)),
//! );
//!
//! let mut client =
//!     pb::external_processor_client::ExternalProcessorClient::connect(format!("http://{addr}"))
//!         .await?;
//! let headers = pb::HttpHeaders {
//!     headers: Some(pb::HeaderMap {
//!         headers: vec![pb::HeaderValue {
//!             key: "content-type".into(),
//!             raw_value: b"application/json".to_vec(),
//!             ..Default::default()
//!         }],
//!     }),
//!     ..Default::default()
//! };
//! let body = pb::HttpBody {
//!     body: br#"{"model":"chatbot","messages":[]}"#.to_vec(),
//!     end_of_stream: true,
//!     ..Default::default()
//! };
//! let requests = [Request::RequestHeaders(headers), Request::RequestBody(body)].map(|r| {
//!     pb::ProcessingRequest { request: Some(r), ..Default::default() }
//! });
//! let mut responses = client.process(tokio_stream::iter(requests)).await?.into_inner();
//!
//! // The headers response, held until the model was read, sets the header
//! // and asks Envoy to recompute the route.
//! let first = responses.message().await?.and_then(|r| r.response);
//! let Some(Response::RequestHeaders(h)) = first else { panic!("{first:?}") };
//! let common = h.response.unwrap_or_default();
//! assert!(common.clear_route_cache);
//! let set = &common.header_mutation.unwrap_or_default().set_headers;
//! let header = set[0].header.as_ref().unwrap();
//! assert_eq!(header.key, "x-gateway-model-name");
//! assert_eq!(header.raw_value, b"chatbot");
//! # Ok(())
//! # }
//! ```
//!
//! The `bbr-extproc` binary adds TLS, health, metrics and hot reload of the
//! rules file (`serve`, `tls`); see `docs/extproc.md` for its flags and for
//! Envoy configurations.
//!
//! # Features
//!
//! - `server` (default): the binary and the modules only it needs, `serve`
//!   and `tls` (flags, logs, TLS, the Prometheus endpoint, signals); turns
//!   on `otel`. Without the default features the crate is the service
//!   alone, over tonic: `bbr-extproc = { version = "0.1",
//!   default-features = false }`.
//! - `otel` (with `server`): a span per request, exported over OTLP
//!   (`otel`, `ProcessorBuilder::tracer`).
//! - `kubernetes` (default): base models from ConfigMaps (`kubernetes`);
//!   with `server`, `/metrics` behind token reviews (`metrics_auth`).
//! - `decompress` (default): compressed request bodies decoded for the
//!   scan; without it they are refused with 415.
//! - `vendored-openssl`: the binary with OpenSSL built from source.

#![forbid(unsafe_code)]
#![cfg_attr(docsrs, feature(doc_cfg))]

mod exchange;
mod inbound;
#[cfg(feature = "kubernetes")]
#[cfg_attr(docsrs, doc(cfg(feature = "kubernetes")))]
pub mod inference_pools;
#[cfg(feature = "kubernetes")]
#[cfg_attr(docsrs, doc(cfg(feature = "kubernetes")))]
pub mod kubernetes;
pub mod metrics;
#[cfg(all(feature = "kubernetes", feature = "server"))]
#[cfg_attr(docsrs, doc(cfg(all(feature = "kubernetes", feature = "server"))))]
pub mod metrics_auth;
#[cfg(feature = "otel")]
#[cfg_attr(docsrs, doc(cfg(feature = "otel")))]
pub mod otel;
#[cfg(not(feature = "otel"))]
#[path = "otel_off.rs"]
mod otel;
pub mod pb;
mod reply;
#[cfg(feature = "server")]
#[cfg_attr(docsrs, doc(cfg(feature = "server")))]
pub mod serve;
mod service;
pub mod sources;
#[cfg(feature = "server")]
#[cfg_attr(docsrs, doc(cfg(feature = "server")))]
pub mod tls;
pub mod wire;

pub use bbr_core::{BodyFieldHeader, BodyFieldHeaderError};
pub use exchange::BodyMode;
pub use reply::DynamicMetadata;
pub use service::{
    BodyRoutingProcessor, ProcessStream, ProcessorBuilder, ProcessorServer, SERVICE_NAME,
};
