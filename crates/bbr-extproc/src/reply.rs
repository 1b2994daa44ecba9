//! Building the protobuf replies to Envoy: header and body mutations,
//! streamed body chunks, and the error contract as an immediate response.
//! What to send is decided in [`exchange`](crate::exchange); this module
//! only spells it in Envoy's messages ([`wire`](crate::wire)).

use bbr_core::{Error, Verdict};
use bytes::Bytes;

use crate::wire::{
    BodyMutation, BodyResponse, CommonResponse, HeaderMutation, HeaderValue as PbHeaderValue,
    HeaderValueOption, HeadersResponse, HttpStatus, ImmediateResponse, ProcessingResponse,
    StreamedBodyResponse, Struct, TrailersResponse, Value, body_mutation,
    processing_response::Response, value::Kind,
};

/// `HeaderAppendAction::OVERWRITE_IF_EXISTS_OR_ADD`.
const OVERWRITE_IF_EXISTS_OR_ADD: i32 = 2;

/// The names bbr sets, as static buffers: a header set under one of them
/// costs no copy of its name.
const KNOWN_NAMES: &[&str] = &[
    "x-gateway-model-name",
    "x-gateway-base-model-name",
    "x-gateway-inference-pool",
    "content-length",
    "content-type",
    "retry-after",
];

/// A header name as the bytes of a message.
fn name_bytes(name: &str) -> Bytes {
    match KNOWN_NAMES.iter().find(|known| **known == name) {
        Some(known) => Bytes::from_static(known.as_bytes()),
        None => Bytes::copy_from_slice(name.as_bytes()),
    }
}

/// The `CommonResponse` setting the headers of `verdict` and removing the
/// client's headers in `remove` (those the verdict does not overwrite
/// anyway). `clear_route_cache` asks Envoy to pick the route again: the
/// route was chosen on the headers Envoy first saw and must be recomputed
/// when they change.
pub(crate) fn common(
    verdict: Option<&Verdict>,
    remove: &[String],
    clear_route_cache: bool,
) -> CommonResponse {
    let set_headers: Vec<HeaderValueOption> = verdict
        .into_iter()
        .flat_map(|v| v.headers())
        .map(|(name, value)| header_option(name.as_str(), value.as_bytes()))
        .collect();
    // A header set by the verdict replaces the client's; only the others
    // need removing.
    let remove_headers: Vec<String> = remove
        .iter()
        .filter(|s| {
            !set_headers
                .iter()
                .filter_map(|o| o.header.as_ref())
                .any(|h| h.key == s.as_bytes())
        })
        .cloned()
        .collect();
    let changed = !set_headers.is_empty() || !remove_headers.is_empty();
    CommonResponse {
        header_mutation: changed.then_some(HeaderMutation {
            set_headers,
            remove_headers,
        }),
        clear_route_cache: changed && clear_route_cache,
        ..Default::default()
    }
}

/// One header to set, overwriting the client's.
pub(crate) fn header_option(key: &str, value: &[u8]) -> HeaderValueOption {
    HeaderValueOption {
        header: Some(PbHeaderValue {
            key: name_bytes(key),
            value: String::new(),
            raw_value: Bytes::copy_from_slice(value),
        }),
        append_action: OVERWRITE_IF_EXISTS_OR_ADD,
        ..Default::default()
    }
}

/// Wraps one response.
pub(crate) fn response(r: Response) -> ProcessingResponse {
    ProcessingResponse {
        response: Some(r),
        ..Default::default()
    }
}

/// The request headers response; no `CommonResponse` when nothing changes.
pub(crate) fn request_headers(common: CommonResponse) -> ProcessingResponse {
    let common = (common != CommonResponse::default()).then_some(common);
    response(Response::RequestHeaders(HeadersResponse {
        response: common,
    }))
}

/// A request body response carrying `common` (or nothing: continue).
pub(crate) fn request_body(common: Option<CommonResponse>) -> ProcessingResponse {
    response(Response::RequestBody(BodyResponse { response: common }))
}

/// A request body response that sends `body` on (`FULL_DUPLEX_STREAMED`).
pub(crate) fn request_chunk(body: Bytes, end_of_stream: bool) -> ProcessingResponse {
    request_body(Some(streamed(body, end_of_stream)))
}

/// A response body response: the chunk sent on as it came in
/// `FULL_DUPLEX_STREAMED`, or a plain continue.
pub(crate) fn response_body(streamed_chunk: Option<(Bytes, bool)>) -> ProcessingResponse {
    let response = streamed_chunk.map(|(body, eos)| streamed(body, eos));
    self::response(Response::ResponseBody(BodyResponse { response }))
}

/// The request trailers response (continue).
pub(crate) fn request_trailers() -> ProcessingResponse {
    response(Response::RequestTrailers(TrailersResponse::default()))
}

/// `common` with the whole body replaced (`BUFFERED` after a rewrite).
pub(crate) fn with_body(mut common: CommonResponse, body: Bytes) -> CommonResponse {
    common.body_mutation = Some(BodyMutation {
        mutation: Some(body_mutation::Mutation::Body(body)),
    });
    common
}

fn streamed(body: Bytes, end_of_stream: bool) -> CommonResponse {
    CommonResponse {
        body_mutation: Some(BodyMutation {
            mutation: Some(body_mutation::Mutation::StreamedResponse(
                StreamedBodyResponse {
                    body,
                    end_of_stream,
                },
            )),
        }),
        ..Default::default()
    }
}

/// The error contract's answer as an ext_proc immediate response: the
/// error's status, and the body and content type of [`Error::to_json`].
pub(crate) fn immediate(error: &Error) -> ProcessingResponse {
    response(Response::ImmediateResponse(ImmediateResponse {
        status: Some(HttpStatus {
            code: i32::from(error.status()),
        }),
        headers: Some(HeaderMutation {
            set_headers: error
                .response_headers()
                .map(|(name, value)| header_option(name, value.as_bytes()))
                .collect(),
            remove_headers: Vec::new(),
        }),
        body: error.to_json().into(),
        grpc_status: None,
        details: format!("bbr_{}", error.kind().as_str()),
    }))
}

/// `GET /v1/models` answered with the model list (`200`, JSON).
pub(crate) fn models(list: String) -> ProcessingResponse {
    response(Response::ImmediateResponse(ImmediateResponse {
        status: Some(HttpStatus { code: 200 }),
        headers: Some(HeaderMutation {
            set_headers: vec![header_option("content-type", b"application/json")],
            remove_headers: Vec::new(),
        }),
        body: list.into(),
        grpc_status: None,
        details: "bbr_models".to_owned(),
    }))
}

/// Where a routing decision is written in Envoy's dynamic metadata, for
/// filters and load balancers that read metadata rather than headers (a
/// subset load balancer choosing the pool, as `json_to_metadata` setups
/// do).
///
/// The routing response carries the struct `{namespace: {model_key:
/// model, pool_key: pool}}` (the pool only when the rule names one). Envoy
/// keeps it only for the namespaces listed in the ext_proc filter's
/// `metadata_options.receiving_namespaces.untyped`. A subset load balancer
/// matches on every key it finds under `envoy.lb`: give it a selector with
/// both keys falling back to `pool` (`fallback_keys_subset`), or leave the
/// model out with an empty [`model_key`](Self::model_key).
///
/// ```
/// use bbr_extproc::{BodyRoutingProcessor, DynamicMetadata};
///
/// let processor = BodyRoutingProcessor::builder()
///     .dynamic_metadata(DynamicMetadata::new("envoy.lb").pool_key("pool"))
///     .build();
/// # drop(processor);
/// ```
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DynamicMetadata {
    namespace: String,
    model_key: String,
    pool_key: String,
}

impl DynamicMetadata {
    /// The namespace `namespace` (Envoy's subset load balancer reads
    /// `envoy.lb`), with the keys `model` and `pool`.
    pub fn new(namespace: impl Into<String>) -> DynamicMetadata {
        DynamicMetadata {
            namespace: namespace.into(),
            model_key: "model".to_owned(),
            pool_key: "pool".to_owned(),
        }
    }

    /// Sets the key of the routed model (the value of
    /// `X-Gateway-Model-Name`); empty: the model is not written.
    #[must_use]
    pub fn model_key(mut self, key: impl Into<String>) -> Self {
        self.model_key = key.into();
        self
    }

    /// Sets the key of the pool; empty: the pool is not written.
    #[must_use]
    pub fn pool_key(mut self, key: impl Into<String>) -> Self {
        self.pool_key = key.into();
        self
    }

    /// The namespace.
    pub fn namespace(&self) -> &str {
        &self.namespace
    }

    /// The struct for a route to `model` in `pool`.
    pub(crate) fn of(&self, model: &str, pool: Option<&str>) -> Struct {
        let text = |s: &str| Value {
            kind: Some(Kind::StringValue(s.to_owned())),
        };
        let mut inner = Struct::default();
        if !self.model_key.is_empty() {
            inner.fields.insert(self.model_key.clone(), text(model));
        }
        if let Some(pool) = pool.filter(|_| !self.pool_key.is_empty()) {
            inner.fields.insert(self.pool_key.clone(), text(pool));
        }
        let mut outer = Struct::default();
        outer.fields.insert(
            self.namespace.clone(),
            Value {
                kind: Some(Kind::StructValue(inner)),
            },
        );
        outer
    }
}
