//! The `ExternalProcessor` gRPC service and its builder.

use std::{collections::VecDeque, pin::Pin, sync::Arc};

use bbr_core::{BodyFieldHeader, Decider, ExtractorConfig, FailurePolicy, rules::SharedRules};
use tokio_stream::Stream;
use tonic::{Request, Response, Status, Streaming};

use crate::{
    DynamicMetadata,
    exchange::{BodyMode, Exchange, Shared},
    pb::{
        ProcessingRequest, ProcessingResponse,
        external_processor_server::{ExternalProcessor, ExternalProcessorServer},
    },
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
    pub fn into_server(self) -> ExternalProcessorServer<BodyRoutingProcessor> {
        let limit = message_limit(&self.shared.extractor);
        ExternalProcessorServer::new(self)
            .max_decoding_message_size(limit)
            .max_encoding_message_size(limit)
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
    /// and the reserved header prefixes removed from every client request
    /// (default `x-gateway-`) — replacing what
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
    #[must_use]
    pub fn tracer(mut self, tracer: crate::otel::RequestTracer) -> Self {
        self.tracer = Some(tracer);
        self
    }

    /// Builds the processor.
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
            }),
        }
    }
}

struct StreamState {
    inbound: Streaming<ProcessingRequest>,
    exchange: Exchange,
    out: VecDeque<ProcessingResponse>,
}

/// The response stream of one `Process` call.
pub type ProcessStream =
    Pin<Box<dyn Stream<Item = Result<ProcessingResponse, Status>> + Send + 'static>>;

#[tonic::async_trait]
impl ExternalProcessor for BodyRoutingProcessor {
    type ProcessStream = ProcessStream;

    async fn process(
        &self,
        request: Request<Streaming<ProcessingRequest>>,
    ) -> Result<Response<Self::ProcessStream>, Status> {
        // The responses are produced as the response stream is polled: no
        // task or channel per request, and Envoy's reading pace pushes back
        // on how fast its messages are taken.
        let state = StreamState {
            inbound: request.into_inner(),
            exchange: Exchange::new(Arc::clone(&self.shared)),
            out: VecDeque::new(),
        };
        let responses = futures_util::stream::unfold(state, |mut state| async move {
            loop {
                if let Some(r) = state.out.pop_front() {
                    return Some((Ok(r), state));
                }
                match state.inbound.message().await {
                    Ok(Some(msg)) => {
                        let mut out = Vec::new();
                        state.exchange.on_message(msg, &mut out);
                        state.out.extend(out);
                    }
                    Ok(None) => return None,
                    Err(status) => {
                        tracing::debug!(%status, "ext_proc stream ended by the client");
                        return None;
                    }
                }
            }
        });
        Ok(Response::new(Box::pin(responses)))
    }
}
