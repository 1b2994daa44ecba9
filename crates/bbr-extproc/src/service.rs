//! The `ExternalProcessor` gRPC service and its builder.

use std::{
    convert::Infallible,
    future::Future,
    pin::Pin,
    sync::Arc,
    task::{Context, Poll},
};

use bbr_core::{BodyFieldHeader, Decider, ExtractorConfig, FailurePolicy, rules::SharedRules};
use bytes::Bytes;
use http_body::Frame;
use tokio_stream::Stream;
use tonic::{Status, server::NamedService};
use tower_service::Service;

use crate::{
    DynamicMetadata,
    exchange::{Answers, BodyMode, Exchange, Shared},
    inbound::Reader,
    wire::{self, ProcessingResponse},
};

/// The fully qualified gRPC name of the service, as health checks ask for it.
pub const SERVICE_NAME: &str = "envoy.service.ext_proc.v3.ExternalProcessor";

/// Envoy's `envoy.service.ext_proc.v3.ExternalProcessor`, routing each
/// request on the model named in its body.
///
/// Cheap to clone: clones share the configuration and the rule table.
/// Build one with [`BodyRoutingProcessor::builder`] and serve it with
/// [`BodyRoutingProcessor::into_server`].
#[derive(Clone, Debug)]
pub struct BodyRoutingProcessor {
    shared: Arc<Shared>,
}

impl BodyRoutingProcessor {
    /// A builder with the defaults: strict extraction, the default failure
    /// policy, no rules (the Go router's behaviour: the model is copied into
    /// `X-Gateway-Model-Name`), `BUFFERED` unless Envoy says otherwise.
    pub fn builder() -> ProcessorBuilder {
        ProcessorBuilder::default()
    }

    /// The rule table handle (clone it to reload the table while serving).
    pub fn rules(&self) -> &SharedRules {
        &self.shared.rules
    }

    /// The tonic service, with gRPC message limits raised so that a
    /// `BUFFERED` body as large as the extractor accepts fits in one message.
    pub fn into_server(self) -> ProcessorServer {
        ProcessorServer {
            max_message_size: message_limit(&self.shared.extractor),
            shared: self.shared,
        }
    }
}

/// The largest gRPC message the service sends or accepts: the body limit
/// plus room for headers and framing.
fn message_limit(config: &ExtractorConfig) -> usize {
    usize::try_from(config.max_body())
        .unwrap_or(usize::MAX)
        .saturating_add(1 << 20)
        .max(4 << 20)
}

/// Builds a [`BodyRoutingProcessor`].
#[derive(Debug)]
pub struct ProcessorBuilder {
    extractor: ExtractorConfig,
    decider: Decider,
    rules: SharedRules,
    default_mode: BodyMode,
    clear_route_cache: bool,
    request_key_header: String,
    serve_models: bool,
    metadata: Option<DynamicMetadata>,
    plugins: Vec<(String, String)>,
    tracer: Option<crate::otel::RequestTracer>,
}

impl Default for ProcessorBuilder {
    fn default() -> Self {
        ProcessorBuilder {
            extractor: ExtractorConfig::default(),
            decider: Decider::default(),
            rules: SharedRules::default(),
            default_mode: BodyMode::Buffered,
            clear_route_cache: true,
            request_key_header: "x-request-id".to_owned(),
            serve_models: false,
            metadata: None,
            plugins: Vec::new(),
            tracer: None,
        }
    }
}

impl ProcessorBuilder {
    /// Sets the extraction policy and limits.
    #[must_use]
    pub fn extractor(mut self, config: ExtractorConfig) -> Self {
        self.extractor = config;
        self
    }

    /// Sets which errors are rejected and which pass through unrouted.
    /// An error found after the routing went out (`FULL_DUPLEX_STREAMED` or
    /// `STREAMED`, strict policy) is rejected whatever the policy says: the
    /// request can no longer pass unchanged.
    #[must_use]
    pub fn failure_policy(mut self, policy: FailurePolicy) -> Self {
        self.decider = self.decider.with_failure_policy(policy);
        self
    }

    /// Sets the whole decision step at once — failure policy, body fields
    /// and the client headers removed besides those bbr writes (default:
    /// none) — replacing what
    /// [`failure_policy`](Self::failure_policy) and
    /// [`body_field`](Self::body_field) set.
    #[must_use]
    pub fn decider(mut self, decider: Decider) -> Self {
        self.decider = decider;
        self
    }

    /// Sets the rule table. The handle is shared: a
    /// [`SharedRules::replace`] or [`SharedRules::reload_from`] on a clone
    /// applies to the next request, while requests under way keep the table
    /// they started with.
    #[must_use]
    pub fn rules(mut self, rules: SharedRules) -> Self {
        self.rules = rules;
        self
    }

    /// Sets the body mode assumed when Envoy does not announce one in
    /// `ProcessingRequest.protocol_config` (Envoy before 1.33 does not):
    /// `true` for `FULL_DUPLEX_STREAMED` (the `--streaming` flag), `false`
    /// for `BUFFERED`.
    #[must_use]
    pub fn streaming(mut self, streaming: bool) -> Self {
        self.default_mode = if streaming {
            BodyMode::FullDuplexStreamed
        } else {
            BodyMode::Buffered
        };
        self
    }

    /// Sets the body mode assumed when Envoy does not announce one.
    #[must_use]
    pub fn default_mode(mut self, mode: BodyMode) -> Self {
        self.default_mode = mode;
        self
    }

    /// Whether responses that change request headers ask Envoy to recompute
    /// the route (`clear_route_cache`). On by default, and required for
    /// routing on the headers this service sets; turn it off only where the
    /// filter runs in the upstream filter chain, where Envoy ignores it.
    #[must_use]
    pub fn clear_route_cache(mut self, clear: bool) -> Self {
        self.clear_route_cache = clear;
        self
    }

    /// Sets the request header whose value keys weighted target choices
    /// (default `x-request-id`, which Envoy sets on every request).
    #[must_use]
    pub fn request_key_header(mut self, name: &str) -> Self {
        self.request_key_header = name.to_ascii_lowercase();
        self
    }

    /// Copies a top-level body field into a request header, as the Go
    /// router's `body-field-to-header` plugin does; see
    /// [`Decider::with_body_field`] for what is copied and when.
    ///
    /// Absent and empty fields are counted in
    /// `bbr_body_field_not_found_total` and `bbr_body_field_empty_total`
    /// (label `field`).
    #[must_use]
    pub fn body_field(mut self, copy: BodyFieldHeader) -> Self {
        self.decider = self.decider.with_body_field(copy);
        self
    }

    /// Answers `GET /v1/models` with an `ImmediateResponse` carrying the
    /// rule table's model list (the OpenAI list format; see
    /// [`RuleTable::models_json`](bbr_core::rules::RuleTable::models_json)),
    /// so that an Envoy gateway serves the list from the same table it
    /// routes with. Off by default. Envoy must send the request headers of
    /// that route to the server (it does wherever the filter runs).
    #[must_use]
    pub fn serve_models(mut self, serve: bool) -> Self {
        self.serve_models = serve;
        self
    }

    /// Also writes each routing decision into Envoy's dynamic metadata
    /// (off by default); see [`DynamicMetadata`].
    #[must_use]
    pub fn dynamic_metadata(mut self, metadata: DynamicMetadata) -> Self {
        self.metadata = Some(metadata);
        self
    }

    /// The Go router's plugin instances, `(type, name)`, this processor
    /// stands for: the time of each decision step is recorded in
    /// [`bbr_plugin_duration_seconds`](crate::metrics::PLUGIN_DURATION_SECONDS)
    /// under each, as the Go router records each plugin's. The histograms
    /// are registered with the `metrics` recorder installed when
    /// [`build`](Self::build) runs. None by default.
    #[must_use]
    pub fn plugins<I, T, N>(mut self, plugins: I) -> Self
    where
        I: IntoIterator<Item = (T, N)>,
        T: Into<String>,
        N: Into<String>,
    {
        self.plugins = plugins
            .into_iter()
            .map(|(kind, name)| (kind.into(), name.into()))
            .collect();
        self
    }

    /// Starts a `gateway.request` span for each request with `tracer`
    /// (see [`otel`](crate::otel)). Off by default.
    #[cfg(feature = "otel")]
    #[cfg_attr(docsrs, doc(cfg(feature = "otel")))]
    #[must_use]
    pub fn tracer(mut self, tracer: crate::otel::RequestTracer) -> Self {
        self.tracer = Some(tracer);
        self
    }

    /// Builds the processor. The metrics it records per request (the
    /// decision histograms, `bbr_success_total`, the plugin histograms)
    /// are looked up once, here, in the `metrics` recorder installed at
    /// that moment: install the recorder before calling `build`, or those
    /// go unrecorded.
    pub fn build(self) -> BodyRoutingProcessor {
        BodyRoutingProcessor {
            shared: Arc::new(Shared {
                extractor: self.decider.extractor_config(self.extractor),
                decider: self.decider,
                rules: self.rules,
                default_mode: self.default_mode,
                clear_route_cache: self.clear_route_cache,
                request_key_header: self.request_key_header,
                serve_models: self.serve_models,
                metadata: self.metadata,
                plugin_histograms: crate::metrics::plugin_histograms(&self.plugins),
                tracer: self.tracer,
                decision_metrics: crate::metrics::DecisionMetrics::register(),
            }),
        }
    }
}

/// The `Process` stream of one HTTP request: Envoy's messages are decoded
/// and handled as the response stream is polled, so there is no task or
/// channel per request, and Envoy's reading pace pushes back on how fast
/// its messages are taken. The answers to one message wait in a buffer
/// that is reused for the next.
pub struct ProcessStream {
    inbound: Reader,
    exchange: Exchange,
    out: Answers,
    /// The first answer in `out` not yet sent.
    next: usize,
}

/// An answer, and the pieces of its streamed chunk when that came in
/// several (its own chunk then empty).
type Answer = (ProcessingResponse, Vec<Bytes>);

impl ProcessStream {
    /// The next answer, with the pieces of a streamed chunk that arrived
    /// in several (to be sent as they are after it).
    fn poll_answer(&mut self, cx: &mut Context<'_>) -> Poll<Option<Result<Answer, Status>>> {
        let this = self;
        loop {
            if this.next < this.out.len() {
                this.next += 1;
                return Poll::Ready(Some(Ok(this.out.take(this.next - 1))));
            }
            this.out.clear();
            this.next = 0;
            match std::task::ready!(this.inbound.poll_next(cx)) {
                Some(Ok(msg)) => this.exchange.on_inbound(msg, &mut this.out),
                Some(Err(status)) => {
                    tracing::debug!(%status, "ext_proc stream ended");
                    return Poll::Ready(Some(Err(status)));
                }
                None => return Poll::Ready(None),
            }
        }
    }
}

impl Stream for ProcessStream {
    type Item = Result<ProcessingResponse, Status>;

    fn poll_next(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        let this = self.get_mut();
        Poll::Ready(std::task::ready!(this.poll_answer(cx)).map(|answer| {
            answer.map(|(mut answer, pieces)| {
                if !pieces.is_empty() {
                    wire::join_streamed(&mut answer, &pieces);
                }
                answer
            })
        }))
    }
}

impl std::fmt::Debug for ProcessStream {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ProcessStream")
            .field("exchange", &self.exchange)
            .field("pending", &(self.out.len() - self.next))
            .finish_non_exhaustive()
    }
}

/// The response body of a `Process` stream: the answers of a
/// [`ProcessStream`] in gRPC framing, then the `grpc-status` trailers.
/// The answers ready at once go out in one frame, as tonic's own response
/// body sends them; each is encoded by [`wire::encode_framed`], so that a
/// chunk sent back in full duplex leaves as a frame of its own, the buffer
/// it arrived in, rather than copied into the encoding buffer (which
/// tonic's body would do: one more copy of every body that goes through
/// the server in `FULL_DUPLEX_STREAMED`).
struct ResponseBody {
    answers: ProcessStream,
    /// The chunk of the answer whose first bytes went out last, in pieces.
    chunk: std::collections::VecDeque<Bytes>,
    /// How the stream ends, once the answers are over (sent after the
    /// frame of the answers before).
    end: Option<Status>,
    /// The largest message sent (the answer is an error past it).
    max_message_size: usize,
    done: bool,
}

/// Answers are gathered in one frame up to this many bytes (tonic's own
/// threshold).
const BATCH_LEN: usize = 32 * 1024;

impl ResponseBody {
    fn trailers(&mut self, status: &Status) -> Poll<Option<Result<Frame<Bytes>, Status>>> {
        self.done = true;
        let mut trailers = http::HeaderMap::new();
        // A status whose message is not a valid header value still has its
        // code written; only the message is left out.
        if status.add_header(&mut trailers).is_err() {
            trailers.insert("grpc-status", http::HeaderValue::from(status.code() as i32));
        }
        Poll::Ready(Some(Ok(Frame::trailers(trailers))))
    }
}

impl http_body::Body for ResponseBody {
    type Data = Bytes;
    type Error = Status;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Status>>> {
        let this = self.get_mut();
        if let Some(piece) = this.chunk.pop_front() {
            return Poll::Ready(Some(Ok(Frame::data(piece))));
        }
        if this.done {
            return Poll::Ready(None);
        }
        if let Some(status) = this.end.take() {
            return this.trailers(&status);
        }
        let mut buf = bytes::BytesMut::new();
        while buf.len() < BATCH_LEN {
            match this.answers.poll_answer(cx) {
                Poll::Ready(Some(Ok((answer, pieces)))) => {
                    let start = buf.len();
                    match wire::encode_framed_pieces(answer, pieces, &mut buf) {
                        Ok(chunk) => {
                            let len =
                                buf.len() - start - 5 + chunk.iter().map(Bytes::len).sum::<usize>();
                            if len > this.max_message_size {
                                buf.truncate(start);
                                this.end = Some(Status::out_of_range(format!(
                                    "an answer of {len} bytes, over the limit of {}",
                                    this.max_message_size
                                )));
                                break;
                            }
                            if !chunk.is_empty() {
                                this.chunk = chunk.into();
                                break;
                            }
                        }
                        Err(status) => {
                            this.end = Some(status);
                            break;
                        }
                    }
                }
                Poll::Ready(Some(Err(status))) => {
                    this.end = Some(status);
                    break;
                }
                Poll::Ready(None) => {
                    this.end = Some(Status::ok(""));
                    break;
                }
                Poll::Pending if buf.is_empty() => return Poll::Pending,
                Poll::Pending => break,
            }
        }
        if buf.is_empty() {
            // Nothing before the end: the trailers now.
            return match this.end.take() {
                Some(status) => this.trailers(&status),
                None => Poll::Ready(None),
            };
        }
        Poll::Ready(Some(Ok(Frame::data(buf.freeze()))))
    }

    fn is_end_stream(&self) -> bool {
        self.done && self.chunk.is_empty()
    }
}

/// The gRPC path of the one method, `Process`.
const PROCESS_PATH: &str = "/envoy.service.ext_proc.v3.ExternalProcessor/Process";

/// The tonic service of a [`BodyRoutingProcessor`]
/// ([`BodyRoutingProcessor::into_server`]): Envoy's
/// `envoy.service.ext_proc.v3.ExternalProcessor`, to add to a
/// [`tonic::transport::Server`] (or any server of `http` requests). Its
/// messages are the [`wire`](crate::wire) types, read straight from the
/// HTTP/2 frames they arrive in: a body chunk is a slice of those frames
/// (several, when it spans frames), never copied into one buffer first.
///
/// Cheap to clone. Other methods than `Process` answer `UNIMPLEMENTED`.
#[derive(Clone, Debug)]
pub struct ProcessorServer {
    shared: Arc<Shared>,
    max_message_size: usize,
}

impl ProcessorServer {
    /// Sets the largest message accepted and sent, in bytes (by default the
    /// body limit of the extractor plus 1 MiB, at least 4 MiB).
    #[must_use]
    pub fn max_message_size(mut self, limit: usize) -> Self {
        self.max_message_size = limit;
        self
    }
}

impl NamedService for ProcessorServer {
    const NAME: &'static str = SERVICE_NAME;
}

impl<B> Service<http::Request<B>> for ProcessorServer
where
    B: http_body::Body + Send + 'static,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>> + Send + 'static,
{
    type Response = http::Response<tonic::body::Body>;
    type Error = Infallible;
    type Future = Pin<Box<dyn Future<Output = Result<Self::Response, Infallible>> + Send>>;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, request: http::Request<B>) -> Self::Future {
        if request.uri().path() != PROCESS_PATH {
            let status = Status::unimplemented(format!("no method {}", request.uri().path()));
            return Box::pin(std::future::ready(Ok(status.into_http())));
        }
        // Envoy does not compress its messages; a client that says it does
        // is told so, as tonic's own service would.
        if let Some(encoding) = request.headers().get("grpc-encoding")
            && encoding.as_bytes() != b"identity"
        {
            let status = Status::unimplemented("compressed messages are not accepted");
            return Box::pin(std::future::ready(Ok(status.into_http())));
        }
        let limit = self.max_message_size;
        let answers = ProcessStream {
            inbound: Reader::new(request.into_body(), limit),
            exchange: Exchange::new(Arc::clone(&self.shared)),
            out: Answers::default(),
            next: 0,
        };
        let body = ResponseBody {
            answers,
            chunk: Default::default(),
            end: None,
            max_message_size: limit,
            done: false,
        };
        let mut response = http::Response::new(tonic::body::Body::new(body));
        response.headers_mut().insert(
            http::header::CONTENT_TYPE,
            http::HeaderValue::from_static("application/grpc"),
        );
        Box::pin(std::future::ready(Ok(response)))
    }
}
