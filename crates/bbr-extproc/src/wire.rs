//! The ext_proc messages as the server decodes and encodes them, and the
//! gRPC codec that moves them.
//!
//! These are the messages of `envoy.service.ext_proc.v3` (and the few of
//! `envoy.config.core.v3`, `envoy.type.v3` and `google.protobuf` they
//! carry), written out with the fields this crate reads or sets, under the
//! same field numbers and wire types as Envoy's protos, so they are
//! interchangeable on the wire with the generated types in [`crate::pb`].
//! Fields they leave out are skipped when decoding.
//!
//! What differs from the generated types is the representation: body
//! chunks, header values and header names are [`Bytes`]. Decoded with
//! [`Codec`], which hands prost the whole gRPC message as one `Bytes`, they
//! are slices of the received buffer rather than copies, and a chunk sent
//! back in a `streamed_response` is the same buffer again. Header names
//! are `bytes` here although the proto says `string`: the two are the same
//! on the wire, and the names Envoy sends are ASCII.
//!
//! ```
//! use bbr_extproc::wire::{HttpBody, ProcessingRequest, processing_request::Request};
//! use bytes::Bytes;
//! use prost::Message;
//!
//! let sent = ProcessingRequest {
//!     request: Some(Request::RequestBody(HttpBody {
//!         body: Bytes::from_static(br#"{"model":"chatbot"}"#),
//!         end_of_stream: true,
//!     })),
//!     ..Default::default()
//! };
//! let encoded = Bytes::from(sent.encode_to_vec());
//! let received = ProcessingRequest::decode(encoded.clone()).unwrap();
//! let Some(Request::RequestBody(body)) = &received.request else { panic!() };
//! // The chunk points into the encoded message: nothing was copied.
//! assert!(encoded.as_ptr_range().contains(&body.body.as_ptr()));
//! assert_eq!(received, sent);
//! ```

use std::{collections::BTreeMap, fmt, marker::PhantomData};

use bytes::{Buf, Bytes};
use tonic::{
    Status,
    codec::{DecodeBuf, Decoder, EncodeBuf, Encoder},
};

/// `envoy.service.ext_proc.v3.ProcessingRequest`: one message from Envoy.
///
/// Left out (skipped when decoding): `metadata_context` (8), `attributes`
/// (9), `flow_control_init` (12), `client_window_update` (13).
#[derive(Clone, PartialEq, prost::Message)]
pub struct ProcessingRequest {
    /// What the message carries.
    #[prost(oneof = "processing_request::Request", tags = "2, 3, 4, 5, 6, 7")]
    pub request: Option<processing_request::Request>,
    /// Envoy does not wait for answers (`observability_mode`).
    #[prost(bool, tag = "10")]
    pub observability_mode: bool,
    /// The filter's body modes, sent on the first message (Envoy 1.33 and
    /// later).
    #[prost(message, optional, tag = "11")]
    pub protocol_config: Option<ProtocolConfiguration>,
}

/// The oneof of [`ProcessingRequest`].
pub mod processing_request {
    use super::{HttpBody, HttpHeaders, HttpTrailers};

    /// What a [`ProcessingRequest`](super::ProcessingRequest) carries.
    #[derive(Clone, PartialEq, prost::Oneof)]
    pub enum Request {
        /// The request headers.
        #[prost(message, tag = "2")]
        RequestHeaders(HttpHeaders),
        /// The response headers.
        #[prost(message, tag = "3")]
        ResponseHeaders(HttpHeaders),
        /// A request body chunk (or the whole body, `BUFFERED`).
        #[prost(message, tag = "4")]
        RequestBody(HttpBody),
        /// A response body chunk.
        #[prost(message, tag = "5")]
        ResponseBody(HttpBody),
        /// The request trailers.
        #[prost(message, tag = "6")]
        RequestTrailers(HttpTrailers),
        /// The response trailers.
        #[prost(message, tag = "7")]
        ResponseTrailers(HttpTrailers),
    }
}

/// `envoy.service.ext_proc.v3.ProtocolConfiguration`: the body modes of
/// the filter, as `BodySendMode` numbers (see
/// [`BodyMode::from_envoy`](crate::BodyMode::from_envoy)).
#[derive(Clone, Copy, PartialEq, Eq, prost::Message)]
pub struct ProtocolConfiguration {
    /// How request bodies are sent.
    #[prost(int32, tag = "1")]
    pub request_body_mode: i32,
    /// How response bodies are sent.
    #[prost(int32, tag = "2")]
    pub response_body_mode: i32,
    /// Envoy sends the body without waiting for the headers response.
    #[prost(bool, tag = "3")]
    pub send_body_without_waiting_for_header_response: bool,
}

/// `envoy.service.ext_proc.v3.HttpHeaders`. Left out: `attributes` (2).
#[derive(Clone, PartialEq, prost::Message)]
pub struct HttpHeaders {
    /// The headers.
    #[prost(message, optional, tag = "1")]
    pub headers: Option<HeaderMap>,
    /// No body follows.
    #[prost(bool, tag = "3")]
    pub end_of_stream: bool,
}

/// `envoy.service.ext_proc.v3.HttpBody`. Left out: the fields of Envoy's
/// gRPC body mode (3 to 5).
#[derive(Clone, PartialEq, Eq, prost::Message)]
pub struct HttpBody {
    /// The chunk: a slice of the received message when decoded by [`Codec`].
    #[prost(bytes = "bytes", tag = "1")]
    pub body: Bytes,
    /// The last chunk.
    #[prost(bool, tag = "2")]
    pub end_of_stream: bool,
}

/// `envoy.service.ext_proc.v3.HttpTrailers`.
#[derive(Clone, PartialEq, prost::Message)]
pub struct HttpTrailers {
    /// The trailers.
    #[prost(message, optional, tag = "1")]
    pub trailers: Option<HeaderMap>,
}

/// `envoy.config.core.v3.HeaderMap`.
#[derive(Clone, PartialEq, Eq, prost::Message)]
pub struct HeaderMap {
    /// The headers, in order.
    #[prost(message, repeated, tag = "1")]
    pub headers: Vec<HeaderValue>,
}

/// `envoy.config.core.v3.HeaderValue`.
#[derive(Clone, PartialEq, Eq, prost::Message)]
pub struct HeaderValue {
    /// The name (a proto `string`, carried as its bytes).
    #[prost(bytes = "bytes", tag = "1")]
    pub key: Bytes,
    /// The value as text (Envoy sends `raw_value` instead).
    #[prost(string, tag = "2")]
    pub value: String,
    /// The value as bytes.
    #[prost(bytes = "bytes", tag = "3")]
    pub raw_value: Bytes,
}

/// `envoy.config.core.v3.HeaderValueOption`. Left out: the deprecated
/// `append` (2).
#[derive(Clone, PartialEq, Eq, prost::Message)]
pub struct HeaderValueOption {
    /// The header.
    #[prost(message, optional, tag = "1")]
    pub header: Option<HeaderValue>,
    /// A `HeaderAppendAction` number.
    #[prost(int32, tag = "3")]
    pub append_action: i32,
    /// Keep the header when its value is empty.
    #[prost(bool, tag = "4")]
    pub keep_empty_value: bool,
}

/// `envoy.service.ext_proc.v3.ProcessingResponse`: one answer to Envoy.
///
/// Left out: `mode_override` (9), `override_message_timeout` (10), the
/// drain flags (12, 15, 16), `typed_dynamic_metadata` (13),
/// `server_window_update` (14) and the `streamed_immediate_response` (11)
/// case of the oneof.
#[derive(Clone, PartialEq, prost::Message)]
pub struct ProcessingResponse {
    /// The answer.
    #[prost(oneof = "processing_response::Response", tags = "1, 2, 3, 4, 5, 6, 7")]
    pub response: Option<processing_response::Response>,
    /// Dynamic metadata for Envoy to keep (`google.protobuf.Struct`).
    #[prost(message, optional, tag = "8")]
    pub dynamic_metadata: Option<Struct>,
}

/// The oneof of [`ProcessingResponse`].
pub mod processing_response {
    use super::{BodyResponse, HeadersResponse, ImmediateResponse, TrailersResponse};

    /// What a [`ProcessingResponse`](super::ProcessingResponse) answers.
    #[derive(Clone, PartialEq, prost::Oneof)]
    pub enum Response {
        /// To the request headers.
        #[prost(message, tag = "1")]
        RequestHeaders(HeadersResponse),
        /// To the response headers.
        #[prost(message, tag = "2")]
        ResponseHeaders(HeadersResponse),
        /// To a request body message.
        #[prost(message, tag = "3")]
        RequestBody(BodyResponse),
        /// To a response body message.
        #[prost(message, tag = "4")]
        ResponseBody(BodyResponse),
        /// To the request trailers.
        #[prost(message, tag = "5")]
        RequestTrailers(TrailersResponse),
        /// To the response trailers.
        #[prost(message, tag = "6")]
        ResponseTrailers(TrailersResponse),
        /// An answer to the client in Envoy's place; ends the request.
        #[prost(message, tag = "7")]
        ImmediateResponse(ImmediateResponse),
    }
}

/// `envoy.service.ext_proc.v3.HeadersResponse`.
#[derive(Clone, PartialEq, prost::Message)]
pub struct HeadersResponse {
    /// What to change; `None`: continue unchanged.
    #[prost(message, optional, tag = "1")]
    pub response: Option<CommonResponse>,
}

/// `envoy.service.ext_proc.v3.BodyResponse`.
#[derive(Clone, PartialEq, prost::Message)]
pub struct BodyResponse {
    /// What to change; `None`: continue unchanged.
    #[prost(message, optional, tag = "1")]
    pub response: Option<CommonResponse>,
}

/// `envoy.service.ext_proc.v3.TrailersResponse`.
#[derive(Clone, PartialEq, prost::Message)]
pub struct TrailersResponse {
    /// The trailers to change.
    #[prost(message, optional, tag = "1")]
    pub header_mutation: Option<HeaderMutation>,
}

/// `envoy.service.ext_proc.v3.CommonResponse`. Left out: `trailers` (4).
#[derive(Clone, PartialEq, prost::Message)]
pub struct CommonResponse {
    /// A `ResponseStatus` number (`CONTINUE` is 0).
    #[prost(int32, tag = "1")]
    pub status: i32,
    /// The headers to set and remove.
    #[prost(message, optional, tag = "2")]
    pub header_mutation: Option<HeaderMutation>,
    /// The body to send instead.
    #[prost(message, optional, tag = "3")]
    pub body_mutation: Option<BodyMutation>,
    /// Have Envoy recompute the route (after changing headers).
    #[prost(bool, tag = "5")]
    pub clear_route_cache: bool,
}

/// `envoy.service.ext_proc.v3.HeaderMutation`.
#[derive(Clone, PartialEq, Eq, prost::Message)]
pub struct HeaderMutation {
    /// Headers to set.
    #[prost(message, repeated, tag = "1")]
    pub set_headers: Vec<HeaderValueOption>,
    /// Names of headers to remove.
    #[prost(string, repeated, tag = "2")]
    pub remove_headers: Vec<String>,
}

/// `envoy.service.ext_proc.v3.BodyMutation`.
#[derive(Clone, PartialEq, Eq, prost::Message)]
pub struct BodyMutation {
    /// The change.
    #[prost(oneof = "body_mutation::Mutation", tags = "1, 2, 3")]
    pub mutation: Option<body_mutation::Mutation>,
}

/// The oneof of [`BodyMutation`].
pub mod body_mutation {
    use bytes::Bytes;

    use super::StreamedBodyResponse;

    /// How a body changes.
    #[derive(Clone, PartialEq, Eq, prost::Oneof)]
    pub enum Mutation {
        /// The whole new body (`BUFFERED`).
        #[prost(bytes = "bytes", tag = "1")]
        Body(Bytes),
        /// Empty the body.
        #[prost(bool, tag = "2")]
        ClearBody(bool),
        /// A chunk to send on (`FULL_DUPLEX_STREAMED`).
        #[prost(message, tag = "3")]
        StreamedResponse(StreamedBodyResponse),
    }
}

/// `envoy.service.ext_proc.v3.StreamedBodyResponse`. Left out: the fields
/// of Envoy's gRPC body mode (3 to 5).
#[derive(Clone, PartialEq, Eq, prost::Message)]
pub struct StreamedBodyResponse {
    /// The chunk to send on.
    #[prost(bytes = "bytes", tag = "1")]
    pub body: Bytes,
    /// The last chunk.
    #[prost(bool, tag = "2")]
    pub end_of_stream: bool,
}

/// `envoy.service.ext_proc.v3.ImmediateResponse`.
#[derive(Clone, PartialEq, prost::Message)]
pub struct ImmediateResponse {
    /// The HTTP status.
    #[prost(message, optional, tag = "1")]
    pub status: Option<HttpStatus>,
    /// The headers of the answer.
    #[prost(message, optional, tag = "2")]
    pub headers: Option<HeaderMutation>,
    /// The body of the answer.
    #[prost(bytes = "bytes", tag = "3")]
    pub body: Bytes,
    /// The gRPC status, for gRPC requests.
    #[prost(message, optional, tag = "4")]
    pub grpc_status: Option<GrpcStatus>,
    /// Envoy's response code details.
    #[prost(string, tag = "5")]
    pub details: String,
}

/// `envoy.type.v3.HttpStatus`.
#[derive(Clone, Copy, PartialEq, Eq, prost::Message)]
pub struct HttpStatus {
    /// The status code (a `StatusCode` number, which is the code itself).
    #[prost(int32, tag = "1")]
    pub code: i32,
}

/// `envoy.service.ext_proc.v3.GrpcStatus`.
#[derive(Clone, Copy, PartialEq, Eq, prost::Message)]
pub struct GrpcStatus {
    /// The gRPC status code.
    #[prost(uint32, tag = "1")]
    pub status: u32,
}

/// `google.protobuf.Struct`.
#[derive(Clone, PartialEq, prost::Message)]
pub struct Struct {
    /// The fields, by name.
    #[prost(btree_map = "string, message", tag = "1")]
    pub fields: BTreeMap<String, Value>,
}

/// `google.protobuf.Value`.
#[derive(Clone, PartialEq, prost::Message)]
pub struct Value {
    /// The value.
    #[prost(oneof = "value::Kind", tags = "1, 2, 3, 4, 5, 6")]
    pub kind: Option<value::Kind>,
}

/// The oneof of [`Value`].
pub mod value {
    use super::{ListValue, Struct};

    /// What a [`Value`](super::Value) holds.
    #[derive(Clone, PartialEq, prost::Oneof)]
    pub enum Kind {
        /// `null` (the `NullValue` number, 0).
        #[prost(int32, tag = "1")]
        NullValue(i32),
        /// A number.
        #[prost(double, tag = "2")]
        NumberValue(f64),
        /// A string.
        #[prost(string, tag = "3")]
        StringValue(String),
        /// A boolean.
        #[prost(bool, tag = "4")]
        BoolValue(bool),
        /// A struct.
        #[prost(message, tag = "5")]
        StructValue(Struct),
        /// A list.
        #[prost(message, tag = "6")]
        ListValue(ListValue),
    }
}

/// `google.protobuf.ListValue`.
#[derive(Clone, PartialEq, prost::Message)]
pub struct ListValue {
    /// The values.
    #[prost(message, repeated, tag = "1")]
    pub values: Vec<Value>,
}

/// A tonic codec for prost messages that decodes each gRPC message from one
/// [`Bytes`], so that the messages' `Bytes` fields borrow the received
/// buffer instead of copying out of it; `E` is encoded, `D` decoded.
///
/// The server uses `Codec<ProcessingResponse, ProcessingRequest>`.
pub struct Codec<E, D>(PhantomData<fn(E) -> D>);

impl<E, D> Default for Codec<E, D> {
    fn default() -> Self {
        Codec(PhantomData)
    }
}

impl<E, D> Clone for Codec<E, D> {
    fn clone(&self) -> Self {
        *self
    }
}

impl<E, D> Copy for Codec<E, D> {}

impl<E, D> fmt::Debug for Codec<E, D> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Codec")
    }
}

impl<E, D> tonic::codec::Codec for Codec<E, D>
where
    E: prost::Message + Send + 'static,
    D: prost::Message + Default + Send + 'static,
{
    type Encode = E;
    type Decode = D;
    type Encoder = Codec<E, D>;
    type Decoder = Codec<E, D>;

    fn encoder(&mut self) -> Self::Encoder {
        *self
    }

    fn decoder(&mut self) -> Self::Decoder {
        *self
    }
}

impl<E: prost::Message, D> Encoder for Codec<E, D> {
    type Item = E;
    type Error = Status;

    fn encode(&mut self, item: E, dst: &mut EncodeBuf<'_>) -> Result<(), Status> {
        // The buffer grows as needed: encoding cannot run out of room.
        item.encode(dst)
            .map_err(|e| Status::internal(format!("encoding a message: {e}")))
    }
}

impl<E, D: prost::Message + Default> Decoder for Codec<E, D> {
    type Item = D;
    type Error = Status;

    fn decode(&mut self, src: &mut DecodeBuf<'_>) -> Result<Option<D>, Status> {
        // Split off the message without a copy: `Bytes` fields then slice it.
        let message = src.copy_to_bytes(src.remaining());
        D::decode(message)
            .map(Some)
            .map_err(|e| Status::internal(format!("decoding a message: {e}")))
    }
}

/// Streamed chunks at least this long leave [`encode_framed`] apart from
/// the bytes before them, uncopied; shorter ones are copied in (a frame of
/// their own would cost more than the copy).
pub const SPLIT_CHUNK_LEN: usize = 4096;

/// Appends `msg` to `buf` as one gRPC message: the 5-byte prefix (not
/// compressed, the length), then the message.
///
/// When `msg` answers a body message with a `streamed_response` chunk of at
/// least [`SPLIT_CHUNK_LEN`] bytes, the chunk is not copied: the message is
/// encoded with the chunk as its last bytes (the other fields first, which
/// protobuf allows), the bytes before it appended to `buf`, and the chunk
/// itself returned, to be sent right after `buf`. A chunk sent back in
/// full duplex then goes from the received buffer to the socket as it
/// came. Otherwise the whole message is in `buf` and `None` is returned.
///
/// # Errors
///
/// A message of 4 GiB or more, which a gRPC prefix cannot give the length
/// of (`buf` is then left as it was).
pub fn encode_framed(
    msg: ProcessingResponse,
    buf: &mut bytes::BytesMut,
) -> Result<Option<Bytes>, Status> {
    encode_framed_pieces(msg, Vec::new(), buf).map(|pieces| pieces.into_iter().next())
}

/// The streamed chunk of a body response, if it is one.
fn streamed_body(msg: &mut ProcessingResponse) -> Option<&mut Bytes> {
    match &mut msg.response {
        Some(
            processing_response::Response::RequestBody(b)
            | processing_response::Response::ResponseBody(b),
        ) => match b
            .response
            .as_mut()
            .and_then(|c| c.body_mutation.as_mut())
            .and_then(|m| m.mutation.as_mut())
        {
            Some(body_mutation::Mutation::StreamedResponse(s)) => Some(&mut s.body),
            _ => None,
        },
        _ => None,
    }
}

/// Puts `pieces`, joined, as the streamed chunk of `msg`.
pub(crate) fn join_streamed(msg: &mut ProcessingResponse, pieces: &[Bytes]) {
    if let Some(body) = streamed_body(msg) {
        *body = Bytes::from(pieces.concat());
    }
}

/// [`encode_framed`] for a streamed chunk given in `pieces` (the answer's
/// own chunk being empty): from [`SPLIT_CHUNK_LEN`] bytes they are
/// returned as they are, to be sent in order after `buf`; below, they are
/// copied into it. Without pieces, as [`encode_framed`], the chunk
/// returned as the only piece.
pub(crate) fn encode_framed_pieces(
    mut msg: ProcessingResponse,
    pieces: Vec<Bytes>,
    buf: &mut bytes::BytesMut,
) -> Result<Vec<Bytes>, Status> {
    use bytes::BufMut;
    use prost::{
        Message,
        encoding::{WireType, encode_key, encode_varint, encoded_len_varint, key_len},
    };

    let too_large = || Status::internal("a message of 4 GiB or more");
    let chunk_len: usize = pieces.iter().map(Bytes::len).sum();
    let pieces = match streamed_body(&mut msg) {
        Some(body) if chunk_len >= SPLIT_CHUNK_LEN => {
            debug_assert!(body.is_empty(), "a chunk both in the answer and in pieces");
            pieces
        }
        Some(body) if !pieces.is_empty() => {
            *body = Bytes::from(pieces.concat());
            Vec::new()
        }
        Some(body) if body.len() >= SPLIT_CHUNK_LEN => vec![std::mem::take(body)],
        _ => Vec::new(),
    };
    if pieces.is_empty() {
        let len = msg.encoded_len();
        let prefix = u32::try_from(len).map_err(|_| too_large())?;
        buf.reserve(5 + len);
        buf.put_u8(0);
        buf.put_u32(prefix);
        msg.encode_raw(buf);
        return Ok(pieces);
    }
    let chunk_len: usize = pieces.iter().map(Bytes::len).sum();
    // Taken apart from the outside in: what is left of each level is
    // encoded by prost, the level below after it, the chunk last.
    let (tag, body) = match msg.response.take() {
        Some(processing_response::Response::RequestBody(b)) => (3, b),
        Some(processing_response::Response::ResponseBody(b)) => (4, b),
        _ => unreachable!("the chunk was found in a body response"),
    };
    let mut common = body.response.unwrap_or_default();
    let streamed = match common.body_mutation.take().and_then(|m| m.mutation) {
        Some(body_mutation::Mutation::StreamedResponse(s)) => s,
        _ => unreachable!("the chunk was found in a streamed response"),
    };
    let field = |tag: u32, len: usize| key_len(tag) + encoded_len_varint(len as u64) + len;
    let streamed_len = streamed.encoded_len() + field(1, chunk_len);
    let mutation_len = field(3, streamed_len);
    let common_len = common.encoded_len() + field(3, mutation_len);
    let body_len = field(1, common_len);
    let total = msg.encoded_len() + field(tag, body_len);
    let prefix = u32::try_from(total).map_err(|_| too_large())?;
    let start = buf.len();
    buf.reserve(5 + total - chunk_len);
    buf.put_u8(0);
    buf.put_u32(prefix);
    let delimited = |buf: &mut bytes::BytesMut, tag: u32, len: usize| {
        encode_key(tag, WireType::LengthDelimited, buf);
        encode_varint(len as u64, buf);
    };
    // The dynamic metadata, the only field left in `msg`.
    msg.encode_raw(buf);
    delimited(buf, tag, body_len);
    delimited(buf, 1, common_len);
    common.encode_raw(buf);
    delimited(buf, 3, mutation_len);
    delimited(buf, 3, streamed_len);
    streamed.encode_raw(buf);
    delimited(buf, 1, chunk_len);
    debug_assert_eq!(buf.len() - start + chunk_len, 5 + total);
    Ok(pieces)
}

#[cfg(test)]
pub(crate) mod tests {
    //! Wire compatibility with Envoy's generated types, both ways: a message
    //! encoded from one decodes to the same content in the other, and the
    //! fields the wire types leave out are skipped.

    use super::*;
    use envoy_types::pb::{
        envoy::{
            config::core::v3 as core, extensions::filters::http::ext_proc::v3::ProcessingMode,
            service::ext_proc::v3 as ep,
        },
        google::protobuf as gp,
    };
    use proptest::{collection::vec, option, prelude::*};
    use prost::Message;

    // The wire types into Envoy's, field by field.

    fn header_value(h: &HeaderValue) -> core::HeaderValue {
        core::HeaderValue {
            key: String::from_utf8(h.key.to_vec()).unwrap(),
            value: h.value.clone(),
            raw_value: h.raw_value.to_vec(),
        }
    }

    fn header_map(m: &HeaderMap) -> core::HeaderMap {
        core::HeaderMap {
            headers: m.headers.iter().map(header_value).collect(),
        }
    }

    fn http_headers(h: &HttpHeaders) -> ep::HttpHeaders {
        ep::HttpHeaders {
            headers: h.headers.as_ref().map(header_map),
            end_of_stream: h.end_of_stream,
            ..Default::default()
        }
    }

    fn http_body(b: &HttpBody) -> ep::HttpBody {
        ep::HttpBody {
            body: b.body.to_vec(),
            end_of_stream: b.end_of_stream,
            ..Default::default()
        }
    }

    fn http_trailers(t: &HttpTrailers) -> ep::HttpTrailers {
        ep::HttpTrailers {
            trailers: t.trailers.as_ref().map(header_map),
        }
    }

    pub(crate) fn processing_request(r: &ProcessingRequest) -> ep::ProcessingRequest {
        use ep::processing_request::Request as E;
        use processing_request::Request as W;
        ep::ProcessingRequest {
            request: r.request.as_ref().map(|r| match r {
                W::RequestHeaders(h) => E::RequestHeaders(http_headers(h)),
                W::ResponseHeaders(h) => E::ResponseHeaders(http_headers(h)),
                W::RequestBody(b) => E::RequestBody(http_body(b)),
                W::ResponseBody(b) => E::ResponseBody(http_body(b)),
                W::RequestTrailers(t) => E::RequestTrailers(http_trailers(t)),
                W::ResponseTrailers(t) => E::ResponseTrailers(http_trailers(t)),
            }),
            observability_mode: r.observability_mode,
            protocol_config: r.protocol_config.map(|c| ep::ProtocolConfiguration {
                request_body_mode: c.request_body_mode,
                response_body_mode: c.response_body_mode,
                send_body_without_waiting_for_header_response: c
                    .send_body_without_waiting_for_header_response,
            }),
            ..Default::default()
        }
    }

    fn header_option(o: &HeaderValueOption) -> core::HeaderValueOption {
        core::HeaderValueOption {
            header: o.header.as_ref().map(header_value),
            append_action: o.append_action,
            keep_empty_value: o.keep_empty_value,
            ..Default::default()
        }
    }

    fn header_mutation(m: &HeaderMutation) -> ep::HeaderMutation {
        ep::HeaderMutation {
            set_headers: m.set_headers.iter().map(header_option).collect(),
            remove_headers: m.remove_headers.clone(),
        }
    }

    fn streamed(s: &StreamedBodyResponse) -> ep::StreamedBodyResponse {
        ep::StreamedBodyResponse {
            body: s.body.to_vec(),
            end_of_stream: s.end_of_stream,
            ..Default::default()
        }
    }

    fn common(c: &CommonResponse) -> ep::CommonResponse {
        use body_mutation::Mutation as W;
        use ep::body_mutation::Mutation as E;
        ep::CommonResponse {
            status: c.status,
            header_mutation: c.header_mutation.as_ref().map(header_mutation),
            body_mutation: c.body_mutation.as_ref().map(|m| ep::BodyMutation {
                mutation: m.mutation.as_ref().map(|m| match m {
                    W::Body(b) => E::Body(b.to_vec()),
                    W::ClearBody(c) => E::ClearBody(*c),
                    W::StreamedResponse(s) => E::StreamedResponse(streamed(s)),
                }),
            }),
            clear_route_cache: c.clear_route_cache,
            ..Default::default()
        }
    }

    fn value(v: &Value) -> gp::Value {
        use gp::value::Kind as E;
        use value::Kind as W;
        gp::Value {
            kind: v.kind.as_ref().map(|k| match k {
                W::NullValue(n) => E::NullValue(*n),
                W::NumberValue(n) => E::NumberValue(*n),
                W::StringValue(s) => E::StringValue(s.clone()),
                W::BoolValue(b) => E::BoolValue(*b),
                W::StructValue(s) => E::StructValue(structure(s)),
                W::ListValue(l) => E::ListValue(gp::ListValue {
                    values: l.values.iter().map(value).collect(),
                }),
            }),
        }
    }

    fn structure(s: &Struct) -> gp::Struct {
        gp::Struct {
            fields: s
                .fields
                .iter()
                .map(|(k, v)| (k.clone(), value(v)))
                .collect(),
        }
    }

    fn processing_response(r: &ProcessingResponse) -> ep::ProcessingResponse {
        use ep::processing_response::Response as E;
        use processing_response::Response as W;
        let headers = |h: &HeadersResponse| ep::HeadersResponse {
            response: h.response.as_ref().map(common),
        };
        let body = |b: &BodyResponse| ep::BodyResponse {
            response: b.response.as_ref().map(common),
        };
        let trailers = |t: &TrailersResponse| ep::TrailersResponse {
            header_mutation: t.header_mutation.as_ref().map(header_mutation),
        };
        ep::ProcessingResponse {
            response: r.response.as_ref().map(|r| match r {
                W::RequestHeaders(h) => E::RequestHeaders(headers(h)),
                W::ResponseHeaders(h) => E::ResponseHeaders(headers(h)),
                W::RequestBody(b) => E::RequestBody(body(b)),
                W::ResponseBody(b) => E::ResponseBody(body(b)),
                W::RequestTrailers(t) => E::RequestTrailers(trailers(t)),
                W::ResponseTrailers(t) => E::ResponseTrailers(trailers(t)),
                W::ImmediateResponse(i) => E::ImmediateResponse(ep::ImmediateResponse {
                    status: i
                        .status
                        .map(|s| envoy_types::pb::envoy::r#type::v3::HttpStatus { code: s.code }),
                    headers: i.headers.as_ref().map(header_mutation),
                    body: i.body.to_vec(),
                    grpc_status: i.grpc_status.map(|g| ep::GrpcStatus { status: g.status }),
                    details: i.details.clone(),
                }),
            }),
            dynamic_metadata: r.dynamic_metadata.as_ref().map(structure),
            ..Default::default()
        }
    }

    // Strategies for the wire types.

    fn bytes(max: usize) -> impl Strategy<Value = Bytes> + Clone {
        vec(any::<u8>(), 0..max).prop_map(Bytes::from)
    }

    fn header() -> impl Strategy<Value = HeaderValue> + Clone {
        ("[a-z:-]{0,12}", "[ -~]{0,12}", bytes(24)).prop_map(|(key, value, raw_value)| {
            HeaderValue {
                key: Bytes::from(key),
                value,
                raw_value,
            }
        })
    }

    fn headers() -> impl Strategy<Value = HeaderMap> + Clone {
        vec(header(), 0..6).prop_map(|headers| HeaderMap { headers })
    }

    pub(crate) fn request() -> impl Strategy<Value = ProcessingRequest> + Clone {
        use processing_request::Request as W;
        let http_headers = || {
            (option::of(headers()), any::<bool>()).prop_map(|(headers, eos)| HttpHeaders {
                headers,
                end_of_stream: eos,
            })
        };
        let body = || {
            (bytes(256), any::<bool>()).prop_map(|(body, end_of_stream)| HttpBody {
                body,
                end_of_stream,
            })
        };
        let trailers = || option::of(headers()).prop_map(|trailers| HttpTrailers { trailers });
        let request = prop_oneof![
            http_headers().prop_map(W::RequestHeaders),
            http_headers().prop_map(W::ResponseHeaders),
            body().prop_map(W::RequestBody),
            body().prop_map(W::ResponseBody),
            trailers().prop_map(W::RequestTrailers),
            trailers().prop_map(W::ResponseTrailers),
        ];
        let config =
            (0..6i32, 0..6i32, any::<bool>()).prop_map(|(req, resp, send)| ProtocolConfiguration {
                request_body_mode: req,
                response_body_mode: resp,
                send_body_without_waiting_for_header_response: send,
            });
        (option::of(request), any::<bool>(), option::of(config)).prop_map(
            |(request, observability_mode, protocol_config)| ProcessingRequest {
                request,
                observability_mode,
                protocol_config,
            },
        )
    }

    fn mutation() -> impl Strategy<Value = HeaderMutation> + Clone {
        let option = (option::of(header()), 0..4i32, any::<bool>()).prop_map(
            |(header, append_action, keep_empty_value)| HeaderValueOption {
                header,
                append_action,
                keep_empty_value,
            },
        );
        (vec(option, 0..4), vec("[a-z-]{0,12}", 0..3)).prop_map(|(set_headers, remove_headers)| {
            HeaderMutation {
                set_headers,
                remove_headers,
            }
        })
    }

    fn common_response() -> impl Strategy<Value = CommonResponse> + Clone {
        use body_mutation::Mutation as W;
        let body_mutation = option::of(prop_oneof![
            bytes(64).prop_map(W::Body),
            any::<bool>().prop_map(W::ClearBody),
            (bytes(256), any::<bool>()).prop_map(|(body, end_of_stream)| {
                W::StreamedResponse(StreamedBodyResponse {
                    body,
                    end_of_stream,
                })
            }),
        ])
        .prop_map(|mutation| BodyMutation { mutation });
        (
            0..2i32,
            option::of(mutation()),
            option::of(body_mutation),
            any::<bool>(),
        )
            .prop_map(
                |(status, header_mutation, body_mutation, clear_route_cache)| CommonResponse {
                    status,
                    header_mutation,
                    body_mutation,
                    clear_route_cache,
                },
            )
    }

    fn metadata() -> impl Strategy<Value = Struct> + Clone {
        use value::Kind as W;
        let leaf = prop_oneof![
            Just(W::NullValue(0)),
            (-1e9..1e9f64).prop_map(W::NumberValue),
            "[ -~]{0,8}".prop_map(W::StringValue),
            any::<bool>().prop_map(W::BoolValue),
        ]
        .prop_map(|k| Value { kind: Some(k) });
        let value = leaf.prop_recursive(3, 16, 4, |inner| {
            prop_oneof![
                proptest::collection::btree_map("[a-z.]{0,6}", inner.clone(), 0..4)
                    .prop_map(|fields| W::StructValue(Struct { fields })),
                vec(inner, 0..4).prop_map(|values| W::ListValue(ListValue { values })),
            ]
            .prop_map(|k| Value { kind: Some(k) })
        });
        proptest::collection::btree_map("[a-z.]{0,6}", value, 0..4)
            .prop_map(|fields| Struct { fields })
    }

    fn response() -> impl Strategy<Value = ProcessingResponse> + Clone {
        use processing_response::Response as W;
        let headers =
            || option::of(common_response()).prop_map(|response| HeadersResponse { response });
        let body = || option::of(common_response()).prop_map(|response| BodyResponse { response });
        let trailers = || {
            option::of(mutation()).prop_map(|header_mutation| TrailersResponse { header_mutation })
        };
        let immediate = (
            option::of(100..600i32),
            option::of(mutation()),
            bytes(64),
            option::of(0..17u32),
            "[ -~]{0,12}",
        )
            .prop_map(|(status, headers, body, grpc, details)| ImmediateResponse {
                status: status.map(|code| HttpStatus { code }),
                headers,
                body,
                grpc_status: grpc.map(|status| GrpcStatus { status }),
                details,
            });
        let response = prop_oneof![
            headers().prop_map(W::RequestHeaders),
            headers().prop_map(W::ResponseHeaders),
            body().prop_map(W::RequestBody),
            body().prop_map(W::ResponseBody),
            trailers().prop_map(W::RequestTrailers),
            trailers().prop_map(W::ResponseTrailers),
            immediate.prop_map(W::ImmediateResponse),
        ];
        (option::of(response), option::of(metadata())).prop_map(|(response, dynamic_metadata)| {
            ProcessingResponse {
                response,
                dynamic_metadata,
            }
        })
    }

    /// Fields of Envoy's messages the wire types leave out, of every wire
    /// type (varint, fixed, length-delimited, nested), for decoding to skip.
    pub(crate) fn with_request_extras(
        mut e: ep::ProcessingRequest,
        extras: (bool, i64, u8),
    ) -> ep::ProcessingRequest {
        let (set, window, n) = extras;
        if !set {
            return e;
        }
        let attributes: std::collections::HashMap<String, gp::Struct> = (0..n)
            .map(|i| {
                let mut s = gp::Struct::default();
                s.fields.insert(
                    format!("k{i}"),
                    gp::Value {
                        kind: Some(gp::value::Kind::NumberValue(f64::from(i))),
                    },
                );
                (format!("envoy.filters.{i}"), s)
            })
            .collect();
        e.attributes = attributes.clone();
        e.metadata_context = Some(core::Metadata {
            filter_metadata: attributes.clone(),
            ..Default::default()
        });
        e.flow_control_init = Some(ep::processing_request::FlowControlInit {
            initial_window_downstream_to_sidestream: window,
            ..Default::default()
        });
        use ep::processing_request::Request as E;
        match &mut e.request {
            Some(E::RequestHeaders(h) | E::ResponseHeaders(h)) => h.attributes = attributes,
            Some(E::RequestBody(b) | E::ResponseBody(b)) => {
                b.end_of_stream_without_message = true;
                b.drain_complete = n % 2 == 0;
            }
            _ => {}
        }
        e
    }

    fn with_response_extras(mut e: ep::ProcessingResponse, set: bool) -> ep::ProcessingResponse {
        if !set {
            return e;
        }
        e.mode_override = Some(ProcessingMode {
            request_header_mode: 1,
            request_body_mode: 3,
            ..Default::default()
        });
        e.override_message_timeout = Some(gp::Duration {
            seconds: 7,
            nanos: 5,
        });
        e.request_drain_requests = true;
        e
    }

    /// The streamed chunk of a body response, if it has one.
    fn streamed_chunk(r: &mut ProcessingResponse) -> Option<&mut Bytes> {
        use processing_response::Response as W;
        match &mut r.response {
            Some(W::RequestBody(b) | W::ResponseBody(b)) => {
                match b
                    .response
                    .as_mut()?
                    .body_mutation
                    .as_mut()?
                    .mutation
                    .as_mut()?
                {
                    body_mutation::Mutation::StreamedResponse(s) => Some(&mut s.body),
                    _ => None,
                }
            }
            _ => None,
        }
    }

    proptest! {
        #[test]
        fn framed_responses_read_by_envoy_types_as_written(
            mut r in response(),
            len in 0..3 * SPLIT_CHUNK_LEN,
        ) {
            // Chunks on both sides of the split length.
            let chunk = streamed_chunk(&mut r).map(|body| {
                *body = Bytes::from((0..len).map(|i| (i % 251) as u8).collect::<Vec<u8>>());
                body.clone()
            });
            // After another message, as answers are batched.
            let mut head = bytes::BytesMut::from(&b"before"[..]);
            let rest = encode_framed(r.clone(), &mut head).unwrap();
            prop_assert_eq!(&head[..6], b"before");
            let head = head.split_off(6);
            let split = chunk.as_ref().is_some_and(|c| c.len() >= SPLIT_CHUNK_LEN);
            prop_assert_eq!(rest.is_some(), split);
            if let (Some(rest), Some(chunk)) = (&rest, &chunk) {
                // The chunk itself, not a copy of it.
                prop_assert_eq!(rest.as_ptr(), chunk.as_ptr());
                prop_assert_eq!(rest.len(), chunk.len());
            }
            let mut framed = head.to_vec();
            framed.extend_from_slice(rest.as_deref().unwrap_or_default());
            prop_assert_eq!(framed[0], 0);
            let len = u32::from_be_bytes(framed[1..5].try_into().unwrap());
            prop_assert_eq!(len as usize, framed.len() - 5);
            let decoded = ep::ProcessingResponse::decode(&framed[5..]).unwrap();
            prop_assert_eq!(decoded, processing_response(&r));
            let decoded = ProcessingResponse::decode(Bytes::from(framed[5..].to_vec())).unwrap();
            prop_assert_eq!(decoded, r);
        }

        #[test]
        fn framed_responses_with_the_chunk_in_pieces_read_as_joined(
            mut r in response(),
            len in 0..3 * SPLIT_CHUNK_LEN,
            cuts in vec(any::<usize>(), 0..4),
        ) {
            let Some(body) = streamed_chunk(&mut r) else {
                return Ok(());
            };
            let chunk = Bytes::from((0..len).map(|i| (i % 251) as u8).collect::<Vec<u8>>());
            *body = Bytes::new();
            let mut at: Vec<usize> = cuts.iter().map(|c| c % (len + 1)).collect();
            at.extend([0, len]);
            at.sort_unstable();
            at.dedup();
            let pieces: Vec<Bytes> = at.windows(2).map(|w| chunk.slice(w[0]..w[1])).collect();
            let mut head = bytes::BytesMut::new();
            let rest = encode_framed_pieces(r.clone(), pieces.clone(), &mut head).unwrap();
            if len >= SPLIT_CHUNK_LEN {
                // The pieces themselves, in order, not copies.
                prop_assert_eq!(rest.len(), pieces.len());
                for (sent, piece) in rest.iter().zip(&pieces) {
                    prop_assert_eq!(sent.as_ptr(), piece.as_ptr());
                }
            } else {
                prop_assert!(rest.is_empty());
            }
            let mut framed = head.to_vec();
            for piece in &rest {
                framed.extend_from_slice(piece);
            }
            let len_prefix = u32::from_be_bytes(framed[1..5].try_into().unwrap());
            prop_assert_eq!(len_prefix as usize, framed.len() - 5);
            join_streamed(&mut r, &pieces);
            let decoded = ep::ProcessingResponse::decode(&framed[5..]).unwrap();
            prop_assert_eq!(decoded, processing_response(&r));
        }

        #[test]
        fn requests_read_by_envoy_types_as_written(r in request()) {
            let bytes = r.encode_to_vec();
            let decoded = ep::ProcessingRequest::decode(&bytes[..]).unwrap();
            prop_assert_eq!(decoded, processing_request(&r));
        }

        #[test]
        fn requests_from_envoy_types_decode_to_the_same(
            r in request(),
            extras in (any::<bool>(), any::<i64>(), 0..3u8),
        ) {
            let sent = with_request_extras(processing_request(&r), extras);
            let decoded = ProcessingRequest::decode(Bytes::from(sent.encode_to_vec())).unwrap();
            prop_assert_eq!(decoded, r);
        }

        #[test]
        fn responses_read_by_envoy_types_as_written(r in response()) {
            let bytes = r.encode_to_vec();
            let decoded = ep::ProcessingResponse::decode(&bytes[..]).unwrap();
            prop_assert_eq!(decoded, processing_response(&r));
        }

        #[test]
        fn responses_from_envoy_types_decode_to_the_same(
            r in response(),
            extras in any::<bool>(),
        ) {
            let sent = with_response_extras(processing_response(&r), extras);
            let decoded = ProcessingResponse::decode(Bytes::from(sent.encode_to_vec())).unwrap();
            prop_assert_eq!(decoded, r);
        }
    }
}
