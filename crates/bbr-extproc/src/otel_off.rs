//! Request spans without the `otel` feature: nothing to start, nothing to
//! record. The service calls these as it calls the real ones; with no
//! tracer to be had, each call is empty and the request path keeps no
//! trace header.

use bbr_core::{Error, Verdict};

/// No tracer exists without the `otel` feature.
#[derive(Clone, Debug)]
pub(crate) enum RequestTracer {}

/// The trace context headers, never kept without a tracer. (A field, not
/// a unit struct: the service builds it with `default()`, as it builds the
/// real one.)
#[derive(Debug, Default)]
pub(crate) struct TraceHeaders {
    _none: (),
}

impl TraceHeaders {
    /// Keeps nothing (called only when a tracer is set, which cannot be).
    pub(crate) fn keep(&mut self, _key: &str, _value: &[u8]) -> bool {
        false
    }
}

/// The span of one request: never one.
#[derive(Debug, Default)]
pub(crate) struct RequestSpan;

impl RequestSpan {
    pub(crate) fn start(tracer: Option<&RequestTracer>, _headers: &TraceHeaders) -> RequestSpan {
        match tracer {
            Some(never) => match *never {},
            None => RequestSpan,
        }
    }

    pub(crate) fn verdict(&mut self, _verdict: &Verdict) {}

    pub(crate) fn rejected(&mut self, _error: &Error) {}

    pub(crate) fn models(&mut self) {}
}
