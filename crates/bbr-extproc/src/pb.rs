//! Envoy's ext_proc protocol as `envoy-types` generates it, re-exported:
//! the client (to drive the service as Envoy would, as the crate example
//! does), the complete messages, and the `BodySendMode` numbers.
//!
//! The server itself decodes and encodes the leaner [`wire`](crate::wire)
//! types, which are the same on the wire; a user needs no direct
//! dependency on `envoy-types` (and cannot end up with a second copy of it).

pub use envoy_types::pb::envoy::config::core::v3::{
    HeaderMap, HeaderValue, HeaderValueOption, header_value_option::HeaderAppendAction,
};
pub use envoy_types::pb::envoy::extensions::filters::http::ext_proc::v3::{
    ProcessingMode,
    processing_mode::{BodySendMode, HeaderSendMode},
};
pub use envoy_types::pb::envoy::service::ext_proc::v3::{
    BodyMutation, BodyResponse, CommonResponse, HeaderMutation, HeadersResponse, HttpBody,
    HttpHeaders, HttpTrailers, ImmediateResponse, ProcessingRequest, ProcessingResponse,
    ProtocolConfiguration, StreamedBodyResponse, TrailersResponse, body_mutation, common_response,
    external_processor_client, external_processor_server, processing_request, processing_response,
};
pub use envoy_types::pb::envoy::r#type::v3::{HttpStatus, StatusCode};
