//! The error taxonomy and the one table that turns an error into an HTTP answer.
//!
//! Every adapter (the tower layer, the ext_proc server) answers a rejected
//! request from this table, so a client sees the same status and the same
//! OpenAI-style JSON body whichever way bbr is deployed.

use std::fmt;

/// Why a request is answered with an error instead of its upstream's
/// answer. See [`Error::kind`].
///
/// Three families, each answered from the same table:
/// - the request itself (the body, its content type or coding, its model):
///   `InvalidJson` … `InvalidMultipart`, `BodyTimeout`, `InvalidEncoding`,
///   found by the extractor or the rule table (every adapter);
/// - the routing layer's own limits: `BodyReadError`, `Overloaded` (the
///   tower layer);
/// - a gateway that forwards itself (the bbr gateway, a service behind the
///   tower layer): `NoRoute`, `PoolUnavailable`, `UpstreamError`,
///   `UpstreamTimeout`, `Shed`.
///
/// The variants are stable; their `Display` text is not.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum ErrorKind {
    /// The body is not valid JSON (syntax, escape, UTF-8, depth, trailing
    /// data, truncation) or its top level is not an object.
    InvalidJson,
    /// The top-level `model` member is not a string.
    ModelNotString,
    /// The `model` string is empty, too long, or holds a control character.
    InvalidModel,
    /// The top-level `model` member appears more than once.
    DuplicateModel,
    /// The body grew past the configured limit before a decision was made.
    TooLarge,
    /// No rule and no default matched the model.
    ModelNotFound,
    /// The request's content type is not one bbr reads.
    UnsupportedContentType,
    /// A `multipart/form-data` body is malformed (boundary, part headers,
    /// truncation) or its `model` field is not valid UTF-8.
    InvalidMultipart,
    /// The request body could not be read from the client (the connection
    /// failed or the client hung up before the decision).
    BodyReadError,
    /// The request names no pool and the gateway has no fallback for it.
    NoRoute,
    /// The request is routed to a pool that nothing serves.
    PoolUnavailable,
    /// The gateway holds as many body bytes awaiting a decision as its
    /// budget allows; the client may retry shortly.
    Overloaded,
    /// The client stopped sending the body before the decision (no data
    /// for longer than the body-idle timeout).
    BodyTimeout,
    /// A compressed body (`Content-Encoding`) cannot be decoded: the
    /// compressed stream is corrupt, truncated, or followed by other bytes.
    InvalidEncoding,
    /// The pool's server could not be reached, or failed before its answer
    /// began (connection refused or reset, malformed response).
    UpstreamError,
    /// The pool's server took longer than the gateway's limit to connect
    /// or to begin its answer.
    UpstreamTimeout,
    /// The pool is saturated and the request's class is not admitted (a
    /// sheddable request, or one that waited too long for a slot); the
    /// client may retry shortly.
    Shed,
}

impl ErrorKind {
    /// Every kind, in a fixed order (for metrics and tests).
    pub const ALL: [ErrorKind; 17] = [
        ErrorKind::InvalidJson,
        ErrorKind::ModelNotString,
        ErrorKind::InvalidModel,
        ErrorKind::DuplicateModel,
        ErrorKind::TooLarge,
        ErrorKind::ModelNotFound,
        ErrorKind::UnsupportedContentType,
        ErrorKind::InvalidMultipart,
        ErrorKind::BodyReadError,
        ErrorKind::NoRoute,
        ErrorKind::PoolUnavailable,
        ErrorKind::Overloaded,
        ErrorKind::BodyTimeout,
        ErrorKind::InvalidEncoding,
        ErrorKind::UpstreamError,
        ErrorKind::UpstreamTimeout,
        ErrorKind::Shed,
    ];

    /// The stable snake_case name, used as the error `code` in responses,
    /// as a metric label and by the `extract` tool.
    pub const fn as_str(self) -> &'static str {
        match self {
            ErrorKind::InvalidJson => "invalid_json",
            ErrorKind::ModelNotString => "model_not_string",
            ErrorKind::InvalidModel => "invalid_model",
            ErrorKind::DuplicateModel => "duplicate_model",
            ErrorKind::TooLarge => "too_large",
            ErrorKind::ModelNotFound => "model_not_found",
            ErrorKind::UnsupportedContentType => "unsupported_content_type",
            ErrorKind::InvalidMultipart => "invalid_multipart",
            ErrorKind::BodyReadError => "body_read_error",
            ErrorKind::NoRoute => "no_route",
            ErrorKind::PoolUnavailable => "pool_unavailable",
            ErrorKind::Overloaded => "overloaded",
            ErrorKind::BodyTimeout => "body_timeout",
            ErrorKind::InvalidEncoding => "invalid_encoding",
            ErrorKind::UpstreamError => "upstream_error",
            ErrorKind::UpstreamTimeout => "upstream_timeout",
            ErrorKind::Shed => "shed",
        }
    }

    /// The HTTP status code this kind is answered with.
    pub const fn status(self) -> u16 {
        match self {
            ErrorKind::InvalidJson
            | ErrorKind::ModelNotString
            | ErrorKind::InvalidModel
            | ErrorKind::DuplicateModel
            | ErrorKind::InvalidMultipart
            | ErrorKind::InvalidEncoding
            | ErrorKind::BodyReadError => 400,
            ErrorKind::ModelNotFound | ErrorKind::NoRoute => 404,
            ErrorKind::TooLarge => 413,
            ErrorKind::UnsupportedContentType => 415,
            ErrorKind::BodyTimeout => 408,
            ErrorKind::PoolUnavailable | ErrorKind::Overloaded => 503,
            ErrorKind::UpstreamError => 502,
            ErrorKind::UpstreamTimeout => 504,
            ErrorKind::Shed => 429,
        }
    }

    /// The `Retry-After` (seconds) an answer of this kind carries: a
    /// client may retry an overloaded gateway shortly.
    pub const fn retry_after(self) -> Option<u32> {
        match self {
            ErrorKind::Overloaded | ErrorKind::Shed => Some(1),
            _ => None,
        }
    }

    /// The OpenAI error `type` field: `server_error` when the gateway or a
    /// pool is at fault, `invalid_request_error` otherwise.
    pub const fn error_type(self) -> &'static str {
        match self {
            ErrorKind::PoolUnavailable
            | ErrorKind::Overloaded
            | ErrorKind::UpstreamError
            | ErrorKind::UpstreamTimeout
            | ErrorKind::Shed => "server_error",
            _ => "invalid_request_error",
        }
    }

    /// The OpenAI error `param` field, when the error concerns one.
    pub const fn param(self) -> Option<&'static str> {
        match self {
            ErrorKind::ModelNotString
            | ErrorKind::InvalidModel
            | ErrorKind::DuplicateModel
            | ErrorKind::ModelNotFound => Some("model"),
            ErrorKind::InvalidJson
            | ErrorKind::TooLarge
            | ErrorKind::UnsupportedContentType
            | ErrorKind::InvalidMultipart
            | ErrorKind::BodyReadError
            | ErrorKind::NoRoute
            | ErrorKind::PoolUnavailable
            | ErrorKind::Overloaded
            | ErrorKind::BodyTimeout
            | ErrorKind::InvalidEncoding
            | ErrorKind::UpstreamError
            | ErrorKind::UpstreamTimeout
            | ErrorKind::Shed => None,
        }
    }
}

impl fmt::Display for ErrorKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// The longest excerpt of client input an error message may carry.
const MAX_EXCERPT: usize = 48;

/// A rejected body: what is wrong and where.
///
/// Errors are built on a cold path; the hot path only carries a `Result`.
#[derive(Clone, PartialEq, Eq)]
pub struct Error {
    kind: ErrorKind,
    offset: u64,
    message: Box<str>,
    detail: Detail,
}

/// What the metrics tell apart within a kind.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Detail {
    None,
    /// An [`ErrorKind::InvalidModel`] for a `model` that is `""`.
    EmptyModel,
    /// An [`ErrorKind::InvalidModel`] for a request that names no model.
    MissingModel,
}

impl Error {
    /// Builds an error of `kind` found at byte `offset` of the body.
    #[cold]
    pub fn new(kind: ErrorKind, offset: u64, message: impl Into<Box<str>>) -> Error {
        Error {
            kind,
            offset,
            message: message.into(),
            detail: Detail::None,
        }
    }

    /// The error for a `model` that is the empty string.
    #[cold]
    pub(crate) fn empty_model(offset: u64) -> Error {
        let mut error = Error::new(ErrorKind::InvalidModel, offset, "`model` is empty");
        error.detail = Detail::EmptyModel;
        error
    }

    /// The error for a request that names no model, when the failure
    /// policy refuses such requests.
    #[cold]
    pub fn missing_model() -> Error {
        let mut error = Error::new(ErrorKind::InvalidModel, 0, "the request names no model");
        error.detail = Detail::MissingModel;
        error
    }

    /// The error for a request body the client failed to send.
    #[cold]
    pub fn body_read() -> Error {
        Error::new(
            ErrorKind::BodyReadError,
            0,
            "the request body could not be read",
        )
    }

    /// The error for a request that names no pool, where nothing serves
    /// such requests.
    #[cold]
    pub fn no_route() -> Error {
        Error::new(ErrorKind::NoRoute, 0, "no pool serves this request")
    }

    /// The error for a request refused because the gateway holds as many
    /// body bytes awaiting a decision as its budget allows.
    #[cold]
    pub fn overloaded() -> Error {
        Error::new(
            ErrorKind::Overloaded,
            0,
            "too many request bodies are awaiting a routing decision; retry shortly",
        )
    }

    /// The error for a body whose client stopped sending before the
    /// decision, `held` bytes in.
    #[cold]
    pub fn body_timeout(held: u64) -> Error {
        Error::new(
            ErrorKind::BodyTimeout,
            held,
            "the request body stopped arriving before the model was read",
        )
    }

    /// The error for a request routed to `pool`, which nothing serves.
    #[cold]
    pub fn pool_unavailable(pool: &str) -> Error {
        Error::with_excerpt(
            ErrorKind::PoolUnavailable,
            0,
            "no service for pool",
            pool.as_bytes(),
        )
    }

    /// The error for a request whose pool's server could not be reached or
    /// failed before its answer began; `reason` says what happened (it is
    /// the gateway's own text, not client input, and is escaped all the
    /// same).
    #[cold]
    pub fn upstream(reason: &str) -> Error {
        Error::with_excerpt(
            ErrorKind::UpstreamError,
            0,
            "the pool's server failed",
            reason.as_bytes(),
        )
    }

    /// The error for a request whose pool's server did not connect or
    /// begin its answer within the gateway's limit.
    #[cold]
    pub fn upstream_timeout() -> Error {
        Error::new(
            ErrorKind::UpstreamTimeout,
            0,
            "the pool's server did not answer in time",
        )
    }

    /// The error for a request to `pool` not admitted while the pool is
    /// saturated; `class` says which class it was admitted as.
    #[cold]
    pub fn shed(pool: &str, class: &str) -> Error {
        Error::with_excerpt(
            ErrorKind::Shed,
            0,
            &format!(
                "a {class} request is not admitted while its pool is saturated (retry shortly)"
            ),
            pool.as_bytes(),
        )
    }

    /// Builds an error whose message ends with a short, escaped excerpt of
    /// client input (never more than a few dozen characters).
    #[cold]
    pub fn with_excerpt(kind: ErrorKind, offset: u64, message: &str, input: &[u8]) -> Error {
        let mut text = String::with_capacity(message.len() + MAX_EXCERPT + 8);
        text.push_str(message);
        text.push_str(": \"");
        push_excerpt(&mut text, input);
        text.push('"');
        Error::new(kind, offset, text)
    }

    /// What is wrong.
    pub fn kind(&self) -> ErrorKind {
        self.kind
    }

    /// The byte offset in the body at which the problem was found (0 where
    /// the error does not concern a position, such as an unknown model).
    pub fn offset(&self) -> u64 {
        self.offset
    }

    /// A human-readable explanation. Not a stable API.
    pub fn message(&self) -> &str {
        &self.message
    }

    /// Whether this is an [`ErrorKind::InvalidModel`] for an empty `model`
    /// (`"model": ""`), which the metrics count apart.
    pub fn is_empty_model(&self) -> bool {
        self.detail == Detail::EmptyModel
    }

    /// Whether this is the [`ErrorKind::InvalidModel`] of a request that
    /// names no model at all ([`Error::missing_model`]).
    pub fn is_missing_model(&self) -> bool {
        self.detail == Detail::MissingModel
    }

    /// The HTTP status this error is answered with.
    pub fn status(&self) -> u16 {
        self.kind.status()
    }

    /// The `content-type` of [`to_json`](Self::to_json)'s body.
    pub const CONTENT_TYPE: &'static str = "application/json";

    /// The headers of the error contract's answer, the one list every
    /// adapter sends: `content-type` ([`CONTENT_TYPE`](Self::CONTENT_TYPE))
    /// and, for a kind the client may retry shortly, `retry-after` in
    /// seconds ([`ErrorKind::retry_after`]).
    ///
    /// ```
    /// use bbr_core::Error;
    ///
    /// let names: Vec<&str> = Error::overloaded().response_headers().map(|(n, _)| n).collect();
    /// assert_eq!(names, ["content-type", "retry-after"]);
    /// ```
    pub fn response_headers(&self) -> impl Iterator<Item = (&'static str, http::HeaderValue)> {
        let content_type = http::HeaderValue::from_static(Self::CONTENT_TYPE);
        let retry_after = self
            .kind()
            .retry_after()
            .map(|seconds| ("retry-after", http::HeaderValue::from(seconds)));
        std::iter::once(("content-type", content_type)).chain(retry_after)
    }

    /// The OpenAI-style JSON error body, the one writer of the error
    /// contract's body for every adapter:
    /// `{"error":{"message":…,"type":"invalid_request_error","param":"model","code":…}}`.
    pub fn to_json(&self) -> String {
        let mut out = String::with_capacity(self.message.len() + 128);
        out.push_str("{\"error\":{\"message\":");
        push_json_string(&mut out, &self.message);
        out.push_str(",\"type\":");
        push_json_string(&mut out, self.kind.error_type());
        out.push_str(",\"param\":");
        match self.kind.param() {
            Some(param) => push_json_string(&mut out, param),
            None => out.push_str("null"),
        }
        out.push_str(",\"code\":");
        push_json_string(&mut out, self.kind.as_str());
        out.push_str("}}");
        out
    }
}

impl fmt::Debug for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Error")
            .field("kind", &self.kind)
            .field("offset", &self.offset)
            .field("message", &self.message)
            .finish()
    }
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} at byte {}", self.message, self.offset)
    }
}

impl std::error::Error for Error {}

/// What an adapter does when a request meets an error of some kind.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum FailureAction {
    /// Answer with the error contract's status and body (fail closed).
    Reject,
    /// Forward the request unchanged and without routing headers (fail open).
    PassThrough,
}

/// Per-kind fail-open / fail-closed choices, plus the choice for a body
/// that names no model at all.
///
/// The defaults are safe: every error is rejected, and a body with no
/// `model` passes through (gateways carry non-inference traffic too).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct FailurePolicy {
    actions: [FailureAction; ErrorKind::ALL.len()],
    missing_model: FailureAction,
}

impl Default for FailurePolicy {
    fn default() -> Self {
        FailurePolicy {
            actions: [FailureAction::Reject; ErrorKind::ALL.len()],
            missing_model: FailureAction::PassThrough,
        }
    }
}

impl FailurePolicy {
    /// The default policy: reject every error, pass bodies without a model.
    pub fn new() -> FailurePolicy {
        FailurePolicy::default()
    }

    /// Sets the action for errors of `kind`.
    #[must_use]
    pub fn on(mut self, kind: ErrorKind, action: FailureAction) -> FailurePolicy {
        self.actions[index(kind)] = action;
        self
    }

    /// Sets the action for bodies that carry no `model` member.
    #[must_use]
    pub fn on_missing_model(mut self, action: FailureAction) -> FailurePolicy {
        self.missing_model = action;
        self
    }

    /// The action for errors of `kind`.
    pub fn action(&self, kind: ErrorKind) -> FailureAction {
        self.actions[index(kind)]
    }

    /// The action for bodies that carry no `model` member.
    pub fn missing_model(&self) -> FailureAction {
        self.missing_model
    }
}

fn index(kind: ErrorKind) -> usize {
    ErrorKind::ALL
        .iter()
        .position(|k| *k == kind)
        .unwrap_or_default()
}

/// Appends `input` as a short excerpt: printable ASCII kept, everything
/// else escaped, cut after [`MAX_EXCERPT`] characters.
fn push_excerpt(out: &mut String, input: &[u8]) {
    let text = String::from_utf8_lossy(input);
    for (i, c) in text.chars().enumerate() {
        if i == MAX_EXCERPT {
            out.push('…');
            break;
        }
        if c.is_control() || c == '\u{fffd}' {
            out.extend(c.escape_default());
        } else {
            out.push(c);
        }
    }
}

/// Appends `s` as a JSON string literal (with quotes).
pub(crate) fn push_json_string(out: &mut String, s: &str) {
    out.push('"');
    let mut start = 0;
    for (i, b) in s.bytes().enumerate() {
        let escape = match b {
            b'"' => "\\\"",
            b'\\' => "\\\\",
            b'\n' => "\\n",
            b'\r' => "\\r",
            b'\t' => "\\t",
            0x00..=0x1f | 0x7f => "",
            _ => continue,
        };
        out.push_str(&s[start..i]);
        if escape.is_empty() {
            out.push_str(&format!("\\u{b:04x}"));
        } else {
            out.push_str(escape);
        }
        start = i + 1;
    }
    out.push_str(&s[start..]);
    out.push('"');
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn statuses_follow_the_contract() {
        assert_eq!(ErrorKind::InvalidJson.status(), 400);
        assert_eq!(ErrorKind::ModelNotString.status(), 400);
        assert_eq!(ErrorKind::InvalidModel.status(), 400);
        assert_eq!(ErrorKind::DuplicateModel.status(), 400);
        assert_eq!(ErrorKind::ModelNotFound.status(), 404);
        assert_eq!(ErrorKind::TooLarge.status(), 413);
        assert_eq!(ErrorKind::UnsupportedContentType.status(), 415);
        assert_eq!(ErrorKind::InvalidMultipart.status(), 400);
        assert_eq!(ErrorKind::BodyReadError.status(), 400);
        assert_eq!(ErrorKind::NoRoute.status(), 404);
        assert_eq!(ErrorKind::PoolUnavailable.status(), 503);
        assert_eq!(ErrorKind::InvalidEncoding.status(), 400);
        assert_eq!(ErrorKind::PoolUnavailable.error_type(), "server_error");
        assert_eq!(ErrorKind::Overloaded.status(), 503);
        assert_eq!(ErrorKind::Overloaded.retry_after(), Some(1));
        assert_eq!(ErrorKind::BodyTimeout.status(), 408);
        assert_eq!(ErrorKind::TooLarge.retry_after(), None);
        assert_eq!(ErrorKind::UpstreamError.status(), 502);
        assert_eq!(ErrorKind::UpstreamTimeout.status(), 504);
        assert_eq!(ErrorKind::UpstreamError.error_type(), "server_error");
        assert_eq!(ErrorKind::UpstreamTimeout.error_type(), "server_error");
        assert_eq!(ErrorKind::Shed.status(), 429);
        assert_eq!(ErrorKind::Shed.retry_after(), Some(1));
        // Every kind has its own code.
        let codes: std::collections::HashSet<_> =
            ErrorKind::ALL.iter().map(|k| k.as_str()).collect();
        assert_eq!(codes.len(), ErrorKind::ALL.len());
    }

    #[test]
    fn gateway_errors_are_written_by_the_same_writer() {
        let body: serde_json::Value =
            serde_json::from_str(&Error::pool_unavailable("gemma3\r\n").to_json()).unwrap();
        assert_eq!(body["error"]["code"], "pool_unavailable");
        assert_eq!(body["error"]["type"], "server_error");
        assert!(body["error"]["param"].is_null());
        let message = body["error"]["message"].as_str().unwrap();
        assert!(
            message.contains("gemma3") && !message.contains('\r'),
            "{message}"
        );
        assert_eq!(Error::no_route().status(), 404);
        assert_eq!(Error::body_read().kind(), ErrorKind::BodyReadError);
        assert!(!Error::missing_model().is_empty_model());
        assert!(Error::missing_model().is_missing_model());
        assert!(Error::empty_model(3).is_empty_model());
    }

    #[test]
    fn upstream_failures_are_written_by_the_same_writer() {
        let error = Error::upstream("connection refused\r\n\"}");
        let body: serde_json::Value = serde_json::from_str(&error.to_json()).unwrap();
        assert_eq!(error.status(), 502);
        assert_eq!(body["error"]["code"], "upstream_error");
        assert_eq!(body["error"]["type"], "server_error");
        assert!(body["error"]["param"].is_null());
        let message = body["error"]["message"].as_str().unwrap();
        assert!(
            message.contains("connection refused") && !message.contains('\r'),
            "{message}"
        );
        let body: serde_json::Value =
            serde_json::from_str(&Error::upstream_timeout().to_json()).unwrap();
        assert_eq!(body["error"]["code"], "upstream_timeout");
        assert_eq!(Error::upstream_timeout().status(), 504);
    }

    #[test]
    fn json_body_is_openai_shaped_and_escaped() {
        let err = Error::with_excerpt(
            ErrorKind::InvalidModel,
            9,
            "model holds a control character",
            b"a\r\nX-Evil: 1\"}",
        );
        let body: serde_json::Value = serde_json::from_str(&err.to_json()).unwrap();
        assert_eq!(body["error"]["type"], "invalid_request_error");
        assert_eq!(body["error"]["param"], "model");
        assert_eq!(body["error"]["code"], "invalid_model");
        let message = body["error"]["message"].as_str().unwrap();
        assert!(
            !message.contains('\r') && !message.contains('\n'),
            "{message}"
        );
        assert!(message.contains("\\r\\n"), "{message}");
    }

    #[test]
    fn excerpt_is_bounded() {
        let input = vec![b'a'; 10_000];
        let err = Error::with_excerpt(ErrorKind::InvalidModel, 0, "too long", &input);
        assert!(err.message().len() < 100, "{}", err.message().len());
        assert!(err.to_json().len() < 250);
    }

    #[test]
    fn param_is_null_when_not_about_the_model() {
        let err = Error::new(ErrorKind::TooLarge, 10, "body too large");
        let body: serde_json::Value = serde_json::from_str(&err.to_json()).unwrap();
        assert!(body["error"]["param"].is_null());
        assert_eq!(body["error"]["code"], "too_large");
    }

    #[test]
    fn failure_policy_defaults_are_safe() {
        let policy = FailurePolicy::default();
        for kind in ErrorKind::ALL {
            assert_eq!(policy.action(kind), FailureAction::Reject);
        }
        assert_eq!(policy.missing_model(), FailureAction::PassThrough);
        let open = policy.on(ErrorKind::InvalidJson, FailureAction::PassThrough);
        assert_eq!(
            open.action(ErrorKind::InvalidJson),
            FailureAction::PassThrough
        );
        assert_eq!(open.action(ErrorKind::TooLarge), FailureAction::Reject);
    }
}
