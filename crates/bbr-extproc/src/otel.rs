//! OpenTelemetry traces: one `gateway.request` span per request, exported
//! over OTLP (the `--tracing` flag of the binary).
//!
//! [`Tracing::from_env`] builds the export pipeline from the standard
//! `OTEL_*` environment variables: `OTEL_EXPORTER_OTLP_PROTOCOL` (`grpc`,
//! the default, or `http/protobuf`), `OTEL_EXPORTER_OTLP_ENDPOINT`
//! (default `http://localhost:4317` for gRPC, `http://localhost:4318` for
//! HTTP), `OTEL_EXPORTER_OTLP_TRACES_*`, `OTEL_SERVICE_NAME` and
//! `OTEL_RESOURCE_ATTRIBUTES`, `OTEL_TRACES_SAMPLER` and
//! `OTEL_TRACES_SAMPLER_ARG`, `OTEL_BSP_*`; `OTEL_TRACES_EXPORTER` is
//! `otlp` (the default) or `none`, and `OTEL_SDK_DISABLED=true` turns the
//! export off too. Spans are exported in batches from a thread of their
//! own; [`Tracing::shutdown`] flushes them.
//!
//! Hand [`Tracing::tracer`] to
//! [`ProcessorBuilder::tracer`](crate::ProcessorBuilder::tracer). Each
//! request's span is a SERVER span whose parent is the W3C trace context
//! (`traceparent`, `tracestate`) of the request headers Envoy forwards. Its
//! attributes say what was decided:
//!
//! | attribute | value |
//! | --- | --- |
//! | `bbr.outcome` | `routed`, `passed` (forwarded unrouted), `rejected` (answered with an error, also after it was routed), `models` (the model list served), or `incomplete` (the stream ended before a decision) |
//! | `bbr.model` | the model the body names |
//! | `bbr.model.routed` | the model sent upstream (differs when a rule rewrites it) |
//! | `bbr.rule` | the rule that matched, when one did |
//! | `bbr.pool` | the pool routed to, when named |
//! | `bbr.pass_reason` | why a request passed unrouted: `no_body`, `no_model`, `no_match` or `failed_open` |
//! | `error.type` | the error kind (`invalid_json`, `model_not_found` …) of a rejected request or of one passed by the failure policy |
//!
//! The span ends when Envoy closes the request's stream. Without a tracer
//! nothing of this runs: the request path allocates nothing for it.

use std::{fmt, time::Duration};

use bbr_core::{Error, Verdict, decision::PassReason};
use opentelemetry::{
    Context, KeyValue,
    propagation::{Extractor, TextMapPropagator},
    trace::{Span as _, SpanKind, Status, Tracer as _, TracerProvider as _},
};
use opentelemetry_otlp::{SpanExporter, WithExportConfig as _};
use opentelemetry_sdk::{
    Resource,
    propagation::TraceContextPropagator,
    trace::{SdkTracer, SdkTracerProvider},
};

/// The name of every request's span.
pub const SPAN_NAME: &str = "gateway.request";

/// The service name when neither `OTEL_SERVICE_NAME` nor `service.name` in
/// `OTEL_RESOURCE_ATTRIBUTES` gives one.
pub const DEFAULT_SERVICE_NAME: &str = "bbr-extproc";

/// A trace export pipeline could not be built.
#[derive(Debug)]
pub struct TracingError(String);

impl fmt::Display for TracingError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for TracingError {}

/// The OTLP export pipeline: a batch span processor and its exporter.
#[derive(Debug)]
pub struct Tracing {
    provider: SdkTracerProvider,
    protocol: &'static str,
}

impl Tracing {
    /// Builds the pipeline from the `OTEL_*` environment variables (see the
    /// module docs); `None` when they turn the export off
    /// (`OTEL_TRACES_EXPORTER=none`, `OTEL_SDK_DISABLED=true`). Call it
    /// inside a tokio runtime: the gRPC exporter's connection runs on it.
    /// Nothing is sent until the first spans end; a collector that cannot
    /// be reached costs dropped spans and log lines, never a request.
    pub fn from_env() -> Result<Option<Tracing>, TracingError> {
        let var = |name| {
            std::env::var(name)
                .ok()
                .map(|v| v.trim().to_ascii_lowercase())
        };
        if var("OTEL_SDK_DISABLED").as_deref() == Some("true") {
            return Ok(None);
        }
        match var("OTEL_TRACES_EXPORTER").as_deref() {
            None | Some("" | "otlp") => {}
            Some("none") => return Ok(None),
            Some(other) => {
                return Err(TracingError(format!(
                    "OTEL_TRACES_EXPORTER={other:?}: bbr-extproc exports traces over otlp (or none)"
                )));
            }
        }
        let protocol = [
            "OTEL_EXPORTER_OTLP_TRACES_PROTOCOL",
            "OTEL_EXPORTER_OTLP_PROTOCOL",
        ]
        .into_iter()
        .find_map(|name| std::env::var(name).ok().filter(|v| !v.trim().is_empty()))
        .unwrap_or_else(|| "grpc".to_owned());
        let (exporter, protocol) = match protocol.trim() {
            "grpc" => (
                SpanExporter::builder()
                    .with_tonic()
                    .with_protocol(opentelemetry_otlp::Protocol::Grpc)
                    .build(),
                "grpc",
            ),
            "http/protobuf" => (
                SpanExporter::builder()
                    .with_http()
                    .with_protocol(opentelemetry_otlp::Protocol::HttpBinary)
                    .build(),
                "http/protobuf",
            ),
            other => {
                return Err(TracingError(format!(
                    "OTEL_EXPORTER_OTLP_PROTOCOL={other:?}: bbr-extproc exports over \
                     grpc or http/protobuf"
                )));
            }
        };
        let exporter =
            exporter.map_err(|e| TracingError(format!("cannot build the OTLP exporter: {e}")))?;
        let mut resource = Resource::builder()
            .with_attribute(KeyValue::new("service.version", env!("CARGO_PKG_VERSION")));
        if !service_name_in_env() {
            resource = resource.with_service_name(DEFAULT_SERVICE_NAME);
        }
        let provider = SdkTracerProvider::builder()
            .with_resource(resource.build())
            .with_batch_exporter(exporter)
            .build();
        Ok(Some(Tracing { provider, protocol }))
    }

    /// The transport the spans are exported over: `grpc` or
    /// `http/protobuf`.
    pub fn protocol(&self) -> &'static str {
        self.protocol
    }

    /// The tracer requests' spans are started with.
    pub fn tracer(&self) -> RequestTracer {
        RequestTracer {
            tracer: self.provider.tracer("bbr-extproc"),
        }
    }

    /// Exports the spans still queued and stops the pipeline, waiting at
    /// most `deadline`. Blocks: call it from a blocking thread
    /// (`tokio::task::spawn_blocking`), never on the runtime the gRPC
    /// exporter's connection runs on.
    pub fn shutdown(self, deadline: Duration) -> Result<(), TracingError> {
        self.provider
            .shutdown_with_timeout(deadline)
            .map_err(|e| TracingError(format!("trace export at shutdown: {e}")))
    }
}

/// Whether the environment names the service (`OTEL_SERVICE_NAME`, or
/// `service.name` in `OTEL_RESOURCE_ATTRIBUTES`), which the SDK then uses.
fn service_name_in_env() -> bool {
    let set = |name| std::env::var(name).is_ok_and(|v: String| !v.trim().is_empty());
    set("OTEL_SERVICE_NAME")
        || std::env::var("OTEL_RESOURCE_ATTRIBUTES").is_ok_and(|attributes| {
            attributes
                .split(',')
                .any(|kv| kv.split('=').next().map(str::trim) == Some("service.name"))
        })
}

/// Starts the span of each request; see
/// [`ProcessorBuilder::tracer`](crate::ProcessorBuilder::tracer). Cheap
/// to clone.
#[derive(Clone, Debug)]
pub struct RequestTracer {
    tracer: SdkTracer,
}

/// The W3C trace context headers of one request, as Envoy forwarded them.
#[derive(Debug, Default)]
pub(crate) struct TraceHeaders {
    traceparent: Option<String>,
    tracestate: Option<String>,
}

impl TraceHeaders {
    /// Keeps `value` when `key` is `traceparent` or `tracestate`; returns
    /// whether it was one of them.
    pub(crate) fn keep(&mut self, key: &str, value: &[u8]) -> bool {
        let slot = if key.eq_ignore_ascii_case("traceparent") {
            &mut self.traceparent
        } else if key.eq_ignore_ascii_case("tracestate") {
            &mut self.tracestate
        } else {
            return false;
        };
        if let Ok(text) = std::str::from_utf8(value) {
            *slot = Some(text.to_owned());
        }
        true
    }
}

impl Extractor for TraceHeaders {
    fn get(&self, key: &str) -> Option<&str> {
        match key {
            "traceparent" => self.traceparent.as_deref(),
            "tracestate" => self.tracestate.as_deref(),
            _ => None,
        }
    }

    fn keys(&self) -> Vec<&str> {
        vec!["traceparent", "tracestate"]
    }
}

/// The span of one request: nothing when tracing is off.
#[derive(Default)]
pub(crate) struct RequestSpan(Option<Active>);

/// A request's span while the request runs. What may change (a routed
/// request refused later) is kept here and set once, as the span ends:
/// the SDK keeps every value set under a key.
struct Active {
    span: opentelemetry_sdk::trace::Span,
    outcome: &'static str,
    error: Option<&'static str>,
}

impl RequestSpan {
    /// Starts the span, child of the trace context in `headers`, when a
    /// tracer is set.
    pub(crate) fn start(tracer: Option<&RequestTracer>, headers: &TraceHeaders) -> RequestSpan {
        let Some(RequestTracer { tracer }) = tracer else {
            return RequestSpan(None);
        };
        let parent = TraceContextPropagator::new().extract_with_context(&Context::new(), headers);
        let span = tracer
            .span_builder(SPAN_NAME)
            .with_kind(SpanKind::Server)
            .start_with_context(tracer, &parent);
        RequestSpan(Some(Active {
            span,
            outcome: "incomplete",
            error: None,
        }))
    }

    /// Records a verdict that forwards the request (a rejection is recorded
    /// by [`rejected`](Self::rejected)).
    pub(crate) fn verdict(&mut self, verdict: &Verdict) {
        let Some(active) = &mut self.0 else {
            return;
        };
        let span = &mut active.span;
        match verdict {
            Verdict::Route(routing) => {
                let route = routing.route();
                active.outcome = "routed";
                span.set_attribute(KeyValue::new(
                    "bbr.model",
                    route.original_model().to_owned(),
                ));
                span.set_attribute(KeyValue::new("bbr.model.routed", route.model().to_owned()));
                if let Some(rule) = route.rule() {
                    span.set_attribute(KeyValue::new("bbr.rule", rule.to_owned()));
                }
                if let Some(pool) = route.pool() {
                    span.set_attribute(KeyValue::new("bbr.pool", pool.to_owned()));
                }
            }
            Verdict::Pass(pass) => {
                let reason = match pass.reason() {
                    PassReason::NoBody => "no_body",
                    PassReason::NoModel => "no_model",
                    PassReason::NoMatch => "no_match",
                    PassReason::FailedOpen(e) => {
                        active.error = Some(e.kind().as_str());
                        "failed_open"
                    }
                    _ => "other",
                };
                active.outcome = "passed";
                span.set_attribute(KeyValue::new("bbr.pass_reason", reason));
            }
            _ => {}
        }
    }

    /// Records a request answered with `error` (also after it was routed).
    pub(crate) fn rejected(&mut self, error: &Error) {
        let Some(active) = &mut self.0 else {
            return;
        };
        active.outcome = "rejected";
        active.error = Some(error.kind().as_str());
        active.span.set_attribute(KeyValue::new(
            "http.response.status_code",
            i64::from(error.status()),
        ));
        // A server span's status is an error for 5xx answers only; a
        // request the client got wrong is not the server's failure.
        if error.status() >= 500 {
            active.span.set_status(Status::error(error.kind().as_str()));
        }
    }

    /// Records a `GET /v1/models` answered from the rule table.
    pub(crate) fn models(&mut self) {
        if let Some(active) = &mut self.0 {
            active.outcome = "models";
        }
    }
}

impl Drop for RequestSpan {
    /// Sets what was decided last; the span ends right after, with it.
    fn drop(&mut self) {
        if let Some(active) = &mut self.0 {
            active
                .span
                .set_attribute(KeyValue::new("bbr.outcome", active.outcome));
            if let Some(kind) = active.error {
                active.span.set_attribute(KeyValue::new("error.type", kind));
            }
        }
    }
}

impl fmt::Debug for RequestSpan {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_tuple("RequestSpan")
            .field(&self.0.as_ref().map(|a| a.span.span_context().trace_id()))
            .finish()
    }
}
