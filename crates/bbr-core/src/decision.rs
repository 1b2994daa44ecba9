//! The routing decision: what an adapter does with a request once the body
//! has been read up to its model, decided here for every adapter.
//!
//! An adapter (the tower layer, the ext_proc server) reads the body into a
//! [`BodyExtractor`](crate::BodyExtractor) and hands what it came to, an
//! [`Input`], to [`Decider::decide`]. The [`Verdict`] says what to do —
//! forward with these headers and this body rewrite, forward unrouted, or
//! answer with this error — and the adapter only translates it to its wire.
//! [`Decider::late_error`] says what to do with an error found in a chunk
//! after the verdict went out, and [`Decider::strips`] which client headers
//! are removed before anything else: exactly the headers bbr writes (the
//! rule table's [`managed_headers`](RuleTable::managed_headers) and the body
//! fields' targets), plus any named with
//! [`with_stripped_headers`](Decider::with_stripped_headers) or under a
//! prefix given to [`with_reserved_prefixes`](Decider::with_reserved_prefixes).
//! The rest of the `x-gateway-` family passes: the endpoint picker reads
//! `x-gateway-inference-objective` and `x-gateway-inference-fairness-id`
//! from the client.
//!
//! ```
//! use bytes::Bytes;
//! use bbr_core::{BodyExtractor, Decider, ExtractorConfig, Input, Verdict, rules::RuleTable};
//!
//! let table = RuleTable::from_yaml(
//!     "rules: [{name: chat, match: {model: {exact: chatbot}}, pool: gemma3}]\ndefault: {action: reject}",
//! ).unwrap();
//! let decider = Decider::new();
//! let mut extractor = BodyExtractor::new(Some("application/json"), ExtractorConfig::new()).unwrap();
//! extractor.feed(&Bytes::from_static(br#"{"model":"chatbot","messages":[]}"#)).unwrap();
//! let extraction = extractor.finish().unwrap();
//!
//! let verdict = decider.decide(&table, Input::body(extraction, true), None);
//! let Verdict::Route(routing) = &verdict else { panic!("{verdict:?}") };
//! assert_eq!(routing.route().pool(), Some("gemma3"));
//! let headers: Vec<&str> = verdict.headers().map(|(name, _)| name.as_str()).collect();
//! assert_eq!(headers, ["x-gateway-model-name", "x-gateway-inference-pool"]);
//! ```

use std::ops::Range;

use bytes::Bytes;
use http::{HeaderName, HeaderValue};

use crate::{
    BodyFieldHeader, Error, Extraction, ExtractorConfig, FailureAction, FailurePolicy,
    first_bytes::FirstBytes,
    rewrite::json_string,
    rules::{RewrittenBody, RouteHeaders, RouteMatch, RuleTable, rewrite_body_with},
};

/// The prefix of the headers bbr sets (`x-gateway-model-name` and friends)
/// and of those the inference gateway reads after it
/// (`x-gateway-destination-endpoint`): never set from a body field. Not
/// stripped as a family by default, since clients send some of them
/// (`x-gateway-inference-objective`); pass it to
/// [`Decider::with_reserved_prefixes`] to strip them all.
pub const RESERVED_PREFIX: &str = "x-gateway-";

/// Decides what happens to each request: the failure policy, the body
/// fields copied into headers and the client headers stripped, applied the
/// same way by every adapter.
///
/// Build one per configuration and share it; [`decide`](Decider::decide)
/// takes the rule table in force for the request.
#[derive(Clone, Debug, Default)]
pub struct Decider {
    failure: FailurePolicy,
    body_fields: Vec<BodyFieldHeader>,
    reserved_prefixes: Vec<Box<str>>,
    /// More header names stripped (lowercase).
    stripped: Vec<Box<str>>,
    /// The first bytes of the prefixes, the stripped names and the body
    /// fields' headers.
    first: FirstBytes,
}

impl Decider {
    /// The defaults: the default [`FailurePolicy`], no body fields, and only
    /// the headers bbr writes stripped.
    pub fn new() -> Decider {
        Decider::default()
    }

    /// Sets which errors are refused and which pass through unrouted.
    #[must_use]
    pub fn with_failure_policy(mut self, policy: FailurePolicy) -> Self {
        self.failure = policy;
        self
    }

    /// Copies a top-level body field into a request header (a string as it
    /// is, a number or a boolean as its JSON text), as the Go router's
    /// `body-field-to-header` plugin does. The header is removed from what
    /// the client sent, and set when the body was read without error: with
    /// the routing, and also when the body names no model or no rule
    /// matches and the request passes unrouted. An empty string, `null`, an
    /// object or an array sets nothing; a rule's own `set_headers` win over
    /// a body field of the same header. A second copy into the same header
    /// replaces the first.
    ///
    /// The field is read in the same pass as the model (see
    /// [`extractor_config`](Decider::extractor_config)), but the decision
    /// then waits until the field has been seen or the top-level object
    /// closes, so a body lacking it is held whole (up to the body limit).
    #[must_use]
    pub fn with_body_field(mut self, copy: BodyFieldHeader) -> Self {
        self.body_fields.retain(|b| b.header() != copy.header());
        self.body_fields.push(copy);
        self.with_first_bytes()
    }

    /// Sets the header name prefixes removed from every client request
    /// (compared without regard to case; default: none), besides the
    /// headers the rule table and the body fields set. `x-gateway-`
    /// ([`RESERVED_PREFIX`]) strips the whole family, the endpoint picker's
    /// client headers (`x-gateway-inference-objective`,
    /// `x-gateway-inference-fairness-id`) included.
    #[must_use]
    pub fn with_reserved_prefixes<I>(mut self, prefixes: I) -> Self
    where
        I: IntoIterator,
        I::Item: AsRef<str>,
    {
        self.reserved_prefixes = prefixes
            .into_iter()
            .map(|p| p.as_ref().to_ascii_lowercase().into_boxed_str())
            .filter(|p| !p.is_empty())
            .collect();
        self.with_first_bytes()
    }

    /// Adds header names removed from every client request (compared
    /// without regard to case), besides the headers the rule table and the
    /// body fields set: headers another part of the gateway sets after bbr
    /// and a client must not send.
    #[must_use]
    pub fn with_stripped_headers<I>(mut self, names: I) -> Self
    where
        I: IntoIterator,
        I::Item: AsRef<str>,
    {
        for name in names {
            let name = name.as_ref().trim().to_ascii_lowercase();
            if !name.is_empty() && !self.stripped.iter().any(|s| **s == *name) {
                self.stripped.push(name.into_boxed_str());
            }
        }
        self.with_first_bytes()
    }

    fn with_first_bytes(mut self) -> Self {
        let prefixes = self.reserved_prefixes.iter().map(|p| &**p);
        let names = self.stripped.iter().map(|p| &**p);
        let fields = self.body_fields.iter().map(|b| b.header().as_str());
        self.first = FirstBytes::of(prefixes.chain(names).chain(fields));
        self
    }

    /// Whether a header whose name starts with `b` may be one to strip.
    #[inline]
    fn may_strip(&self, table: &RuleTable, b: u8) -> bool {
        let b = b.to_ascii_lowercase();
        self.first.has(b) || table.managed_first_bytes().has(b)
    }

    /// The failure policy.
    pub fn failure_policy(&self) -> &FailurePolicy {
        &self.failure
    }

    /// The body fields copied into headers.
    pub fn body_fields(&self) -> &[BodyFieldHeader] {
        &self.body_fields
    }

    /// The reserved header name prefixes.
    pub fn reserved_prefixes(&self) -> impl Iterator<Item = &str> {
        self.reserved_prefixes.iter().map(|p| &**p)
    }

    /// The header names added by
    /// [`with_stripped_headers`](Decider::with_stripped_headers).
    pub fn stripped_headers(&self) -> impl Iterator<Item = &str> {
        self.stripped.iter().map(|p| &**p)
    }

    /// `config` with the body fields added to the fields it extracts.
    pub fn extractor_config(&self, config: ExtractorConfig) -> ExtractorConfig {
        self.body_fields
            .iter()
            .fold(config, |config, b| config.with_field(b.field()))
    }

    /// Whether the client's header `name` must be removed before the
    /// request goes on, routed or not: a header the table or a body field
    /// sets, one named by
    /// [`with_stripped_headers`](Decider::with_stripped_headers), or one
    /// under a reserved prefix. `name` is compared without regard to case.
    #[inline]
    pub fn strips(&self, table: &RuleTable, name: &str) -> bool {
        // Inlined into the caller's loop: most names end at the lookup.
        name.as_bytes()
            .first()
            .is_some_and(|&b| self.may_strip(table, b))
            && self.strips_named(table, name)
    }

    /// The text comparisons of [`strips`](Decider::strips), for the names
    /// the first-byte lookup lets through.
    #[inline(never)]
    fn strips_named(&self, table: &RuleTable, name: &str) -> bool {
        self.reserved_prefixes
            .iter()
            .any(|p| starts_with_ignore_case(name, p))
            || table
                .managed_headers()
                .iter()
                .any(|m| m.as_str().eq_ignore_ascii_case(name))
            || self.stripped.iter().any(|s| s.eq_ignore_ascii_case(name))
            || self
                .body_fields
                .iter()
                .any(|b| b.header().as_str().eq_ignore_ascii_case(name))
    }

    /// [`strips`](Decider::strips) for a header name as `http` holds it.
    #[inline]
    pub fn strips_header(&self, table: &RuleTable, name: &HeaderName) -> bool {
        // Most names are passed over by the first-byte lookup in `strips`;
        // the few left are compared as text.
        self.strips(table, name.as_str())
    }

    /// What to do with a request, given what reading it came to.
    ///
    /// `request_key` (for example the `x-request-id` header) makes the
    /// choice among a rule's weighted targets stable; look it up only when
    /// [`RuleTable::uses_request_key`] says the table can use it.
    pub fn decide(
        &self,
        table: &RuleTable,
        input: Input<'_>,
        request_key: Option<&[u8]>,
    ) -> Verdict {
        match input {
            Input::NoBody => Verdict::Pass(Pass::new(PassReason::NoBody, Vec::new())),
            Input::Failed(error) => self.refuse(error),
            Input::Path(model) => match table.route(model, request_key) {
                Ok(Some(route)) => Verdict::Route(Routing {
                    route,
                    fields: Vec::new(),
                    rewrite: None,
                }),
                Ok(None) => Verdict::Pass(Pass::new(PassReason::NoMatch, Vec::new())),
                Err(error) => self.refuse(error),
            },
            Input::Body {
                extraction,
                rewritable,
            } => {
                let fields = self.copied_fields(extraction);
                let Some(model) = extraction.model() else {
                    return match self.failure.missing_model() {
                        FailureAction::PassThrough => {
                            Verdict::Pass(Pass::new(PassReason::NoModel, fields))
                        }
                        FailureAction::Reject => Verdict::Reject(Error::missing_model()),
                    };
                };
                match table.route_model(model, request_key) {
                    Ok(Some(route)) => {
                        let rewrite = (rewritable && route.is_rewrite()).then(|| Rewrite {
                            span: model.span(),
                            token: json_string(route.model()),
                        });
                        let mut fields = fields;
                        if !fields.is_empty() {
                            // A rule's own headers win over a body field's.
                            fields.retain(|(name, _)| !route.headers().any(|(n, _)| n == name));
                        }
                        Verdict::Route(Routing {
                            route,
                            fields,
                            rewrite,
                        })
                    }
                    Ok(None) => Verdict::Pass(Pass::new(PassReason::NoMatch, fields)),
                    Err(error) => self.refuse(error),
                }
            }
        }
    }

    /// What to do with `error`, found in a chunk after the verdict went out
    /// (the strict policy checks every later chunk before it is released).
    ///
    /// Failing open means passing the request on unchanged. Once the verdict
    /// set headers or rewrote the body (`changed`, see
    /// [`Verdict::changes_request`]) that is no longer possible: the request
    /// was routed on a body that turns out bad — a second `model` would
    /// reach a pool chosen by the first — so it is refused whatever the
    /// policy says for the kind.
    pub fn late_error(&self, error: &Error, changed: bool) -> LateAction {
        match self.failure.action(error.kind()) {
            FailureAction::PassThrough if !changed => LateAction::Release,
            _ => LateAction::Reject,
        }
    }

    /// An error before the verdict: refused, or passed unrouted.
    fn refuse(&self, error: Error) -> Verdict {
        if error.is_empty_model() {
            // `"model": ""` names no model: it follows the missing-model
            // policy, as the Go router passes it on unrouted.
            return match self.failure.missing_model() {
                FailureAction::PassThrough => {
                    Verdict::Pass(Pass::new(PassReason::EmptyModel(error), Vec::new()))
                }
                FailureAction::Reject => Verdict::Reject(error),
            };
        }
        match self.failure.action(error.kind()) {
            FailureAction::Reject => Verdict::Reject(error),
            FailureAction::PassThrough => {
                Verdict::Pass(Pass::new(PassReason::FailedOpen(error), Vec::new()))
            }
        }
    }

    /// The headers of the body fields the extraction has a value for.
    fn copied_fields(&self, extraction: &Extraction) -> Vec<(HeaderName, HeaderValue)> {
        self.body_fields
            .iter()
            .filter_map(|b| {
                let value = BodyFieldHeader::header_value(extraction.field(b.field())?)?;
                Some((b.header().clone(), value))
            })
            .collect()
    }
}

fn starts_with_ignore_case(name: &str, prefix: &str) -> bool {
    name.len() >= prefix.len()
        && name.as_bytes()[..prefix.len()].eq_ignore_ascii_case(prefix.as_bytes())
}

/// What reading a request came to, for [`Decider::decide`].
#[derive(Debug)]
#[non_exhaustive]
pub enum Input<'a> {
    /// The request has no body, or an empty one (in any framing): nothing
    /// to route on. It passes unrouted, whatever the missing-model policy
    /// (`GET /v1/models`, health checks).
    NoBody,
    /// The extractor decided on the body.
    Body {
        /// What it found.
        extraction: &'a Extraction,
        /// Whether the adapter can still replace the chunks up to the
        /// model: a JSON body whose held chunks have not gone out.
        rewritable: bool,
    },
    /// The URL path named the model (a
    /// [`PathTemplate`](crate::PathTemplate)); the body is not read.
    Path(&'a str),
    /// The body was refused before a decision: a content type bbr does not
    /// read, invalid JSON, a body over the limit …
    Failed(Error),
}

impl<'a> Input<'a> {
    /// [`Input::Body`].
    pub fn body(extraction: &'a Extraction, rewritable: bool) -> Input<'a> {
        Input::Body {
            extraction,
            rewritable,
        }
    }
}

/// What an adapter does with a request: the outcome of [`Decider::decide`].
#[derive(Debug)]
#[non_exhaustive]
pub enum Verdict {
    /// Forward the request with the routing headers (and the body rewrite,
    /// if any).
    Route(Routing),
    /// Forward the request unrouted: without routing headers, but with the
    /// copied body fields, if any.
    Pass(Pass),
    /// Answer with the error contract's status and body; forward nothing.
    Reject(Error),
}

impl Verdict {
    /// The headers to set on the request, in order: the route's (model,
    /// base model, pool, the rule's own) then the copied body fields. None
    /// for a rejection.
    pub fn headers(&self) -> VerdictHeaders<'_> {
        let (route, fields): (_, &[_]) = match self {
            Verdict::Route(routing) => (Some(routing.route.headers()), &routing.fields),
            Verdict::Pass(pass) => (None, &pass.fields),
            Verdict::Reject(_) => (None, &[]),
        };
        VerdictHeaders {
            route,
            fields: fields.iter(),
        }
    }

    /// Whether forwarding as told changes the request (sets a header or
    /// rewrites the body): from then on it can no longer pass unchanged
    /// (see [`Decider::late_error`]).
    pub fn changes_request(&self) -> bool {
        match self {
            Verdict::Route(_) => true,
            Verdict::Pass(pass) => !pass.fields.is_empty(),
            Verdict::Reject(_) => false,
        }
    }

    /// Whether the body was read and decided on without an error: routed,
    /// or passed unrouted because it names no model (or an empty one) or
    /// no rule matches its model. What the Go router (v1.5) counts in
    /// `bbr_success_total`: every body it processed, routed or not.
    pub fn body_processed(&self) -> bool {
        match self {
            Verdict::Route(_) => true,
            Verdict::Pass(pass) => matches!(
                pass.reason,
                PassReason::NoModel | PassReason::NoMatch | PassReason::EmptyModel(_)
            ),
            Verdict::Reject(_) => false,
        }
    }

    /// The error: the one to answer with, or the one a pass let through
    /// (fail open, or an empty model). Once the verdict went out, the body
    /// is not checked further after such an error.
    pub fn error(&self) -> Option<&Error> {
        match self {
            Verdict::Reject(error) => Some(error),
            Verdict::Pass(Pass {
                reason: PassReason::FailedOpen(error) | PassReason::EmptyModel(error),
                ..
            }) => Some(error),
            _ => None,
        }
    }
}

/// A request to forward with its routing ([`Verdict::Route`]).
#[derive(Debug)]
pub struct Routing {
    route: RouteMatch,
    fields: Vec<(HeaderName, HeaderValue)>,
    rewrite: Option<Rewrite>,
}

impl Routing {
    /// The rule table's decision.
    pub fn route(&self) -> &RouteMatch {
        &self.route
    }

    /// The body rewrite, when the rule sends another model upstream and the
    /// input was [rewritable](Input::Body::rewritable).
    pub fn rewrite(&self) -> Option<&Rewrite> {
        self.rewrite.as_ref()
    }

    /// The copied body fields' headers (after the route's own).
    pub fn fields(&self) -> &[(HeaderName, HeaderValue)] {
        &self.fields
    }

    /// The rule table's decision, taken out.
    pub fn into_route(self) -> RouteMatch {
        self.route
    }
}

/// A request to forward unrouted ([`Verdict::Pass`]).
#[derive(Debug)]
pub struct Pass {
    reason: PassReason,
    fields: Vec<(HeaderName, HeaderValue)>,
}

impl Pass {
    fn new(reason: PassReason, fields: Vec<(HeaderName, HeaderValue)>) -> Pass {
        Pass { reason, fields }
    }

    /// The copied body fields' headers.
    pub fn fields(&self) -> &[(HeaderName, HeaderValue)] {
        &self.fields
    }

    /// Why the request is not routed.
    pub fn reason(&self) -> &PassReason {
        &self.reason
    }

    /// Why the request is not routed, taken out.
    pub fn into_reason(self) -> PassReason {
        self.reason
    }
}

/// Why a request passes unrouted.
#[derive(Debug)]
#[non_exhaustive]
pub enum PassReason {
    /// It has no body (or an empty one).
    NoBody,
    /// Its body names no model, and the failure policy lets such requests
    /// through (the default).
    NoModel,
    /// No rule matches its model and the table's default is `pass`.
    NoMatch,
    /// It was refused with this error, which the failure policy lets
    /// through unchanged (fail open).
    FailedOpen(Error),
    /// Its body's `model` is the empty string (the error says where), and
    /// the failure policy lets requests naming no model through.
    EmptyModel(Error),
}

/// What to do with an error found after the verdict went out: the outcome
/// of [`Decider::late_error`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum LateAction {
    /// End the request with the error contract's answer; the chunk and what
    /// follows are not released.
    Reject,
    /// Stop checking and release the chunk and the rest as they are.
    Release,
}

/// The body rewrite of a [`Routing`]: the model's value token replaced by
/// the upstream model's.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Rewrite {
    span: Range<u64>,
    token: Bytes,
}

impl Rewrite {
    /// The byte span of the model's value token in the body.
    pub fn span(&self) -> Range<u64> {
        self.span.clone()
    }

    /// The new value token (a JSON string, quotes included).
    pub fn token(&self) -> &Bytes {
        &self.token
    }

    /// Applies the rewrite to the chunks held up to the decision (starting
    /// at byte 0 of the body): the untouched bytes are refcounted slices of
    /// `chunks`. `None` when the span does not lie within them.
    pub fn apply(&self, chunks: &[Bytes]) -> Option<RewrittenBody> {
        rewrite_body_with(chunks, self.span.clone(), self.token.clone())
    }
}

/// The headers of a [`Verdict`]: see [`Verdict::headers`].
#[derive(Debug)]
pub struct VerdictHeaders<'a> {
    route: Option<RouteHeaders<'a>>,
    fields: std::slice::Iter<'a, (HeaderName, HeaderValue)>,
}

impl<'a> Iterator for VerdictHeaders<'a> {
    type Item = (&'a HeaderName, &'a HeaderValue);

    fn next(&mut self) -> Option<Self::Item> {
        if let Some(route) = self.route.as_mut() {
            match route.next() {
                Some(header) => return Some(header),
                None => self.route = None,
            }
        }
        self.fields.next().map(|(name, value)| (name, value))
    }

    fn size_hint(&self) -> (usize, Option<usize>) {
        let n = self.route.as_ref().map_or(0, ExactSizeIterator::len) + self.fields.len();
        (n, Some(n))
    }
}

impl ExactSizeIterator for VerdictHeaders<'_> {}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{BodyExtractor, ErrorKind};

    const TABLE: &str = r#"
rules:
  - name: chatbot
    match: { model: { exact: chatbot } }
    pool: gemma3
    set_headers: { x-tier: gold }
  - name: canary
    match: { model: { exact: chat } }
    targets: [{ model: "gemma-3", weight: 1 }]
default: { action: pass }
"#;

    fn table() -> RuleTable {
        RuleTable::from_yaml(TABLE).unwrap()
    }

    fn extract(body: &'static [u8], config: ExtractorConfig) -> Result<Extraction, Error> {
        let mut x = BodyExtractor::new(Some("application/json"), config)?;
        x.feed(&Bytes::from_static(body))?;
        x.finish().cloned()
    }

    fn headers(verdict: &Verdict) -> Vec<(String, String)> {
        verdict
            .headers()
            .map(|(n, v)| (n.to_string(), v.to_str().unwrap().to_owned()))
            .collect()
    }

    #[test]
    fn routes_with_the_rule_headers_then_the_body_fields() {
        let decider = Decider::new()
            .with_body_field("stream=x-stream".parse().unwrap())
            .with_body_field("tier=x-tier".parse().unwrap());
        let config = decider.extractor_config(ExtractorConfig::new());
        let x = extract(
            br#"{"model":"chatbot","stream":true,"tier":"bronze"}"#,
            config,
        )
        .unwrap();
        let verdict = decider.decide(&table(), Input::body(&x, true), None);
        assert!(matches!(verdict, Verdict::Route(_)));
        assert!(verdict.changes_request());
        // The rule's x-tier wins over the body field's.
        assert_eq!(
            headers(&verdict),
            [
                ("x-gateway-model-name", "chatbot"),
                ("x-gateway-inference-pool", "gemma3"),
                ("x-tier", "gold"),
                ("x-stream", "true"),
            ]
            .map(|(n, v)| (n.to_owned(), v.to_owned()))
        );
        assert_eq!(verdict.headers().len(), 4);
    }

    #[test]
    fn a_rewrite_is_offered_only_when_the_adapter_can_splice() {
        let body: &[u8] = br#"{"model":"chat","n":1}"#;
        let x = extract(br#"{"model":"chat","n":1}"#, ExtractorConfig::new()).unwrap();
        let decider = Decider::new();
        let Verdict::Route(routing) = decider.decide(&table(), Input::body(&x, true), None) else {
            panic!()
        };
        let rewrite = routing.rewrite().unwrap();
        let out = rewrite.apply(&[Bytes::from_static(body)]).unwrap();
        assert_eq!(out.chunks.concat(), br#"{"model":"gemma-3","n":1}"#);
        assert_eq!(
            out.content_length(b"22"),
            crate::rules::ContentLength::Set(25)
        );
        let Verdict::Route(routing) = decider.decide(&table(), Input::body(&x, false), None) else {
            panic!()
        };
        assert!(routing.rewrite().is_none());
        assert_eq!(routing.route().model(), "gemma-3");
    }

    #[test]
    fn missing_models_pass_or_are_refused_by_policy() {
        let x = extract(
            br#"{"prompt":"hi","stream":false}"#,
            ExtractorConfig::new().with_field("stream"),
        )
        .unwrap();
        let open = Decider::new().with_body_field("stream=x-stream".parse().unwrap());
        let verdict = open.decide(&table(), Input::body(&x, true), None);
        let Verdict::Pass(pass) = &verdict else {
            panic!("{verdict:?}")
        };
        assert!(matches!(pass.reason(), PassReason::NoModel));
        // Body fields are still copied, so the request is changed.
        assert_eq!(
            headers(&verdict),
            [("x-stream".to_owned(), "false".to_owned())]
        );
        assert!(verdict.changes_request());

        let closed = Decider::new()
            .with_failure_policy(FailurePolicy::new().on_missing_model(FailureAction::Reject));
        let verdict = closed.decide(&table(), Input::body(&x, true), None);
        let Verdict::Reject(e) = &verdict else {
            panic!("{verdict:?}")
        };
        assert!(e.is_missing_model());
        assert_eq!(e.status(), 400);
        assert_eq!(headers(&verdict), Vec::<(String, String)>::new());

        // No body at all passes whatever the policy.
        let verdict = closed.decide(&table(), Input::NoBody, None);
        assert!(
            matches!(verdict, Verdict::Pass(ref p) if matches!(p.reason(), PassReason::NoBody))
        );
        assert!(!verdict.changes_request());
    }

    #[test]
    fn errors_are_refused_or_let_through_by_kind() {
        let reject = Error::new(ErrorKind::InvalidJson, 3, "bad");
        let closed = Decider::new();
        assert!(matches!(
            closed.decide(&table(), Input::Failed(reject.clone()), None),
            Verdict::Reject(ref e) if e.kind() == ErrorKind::InvalidJson
        ));
        let open = Decider::new().with_failure_policy(
            FailurePolicy::new().on(ErrorKind::InvalidJson, FailureAction::PassThrough),
        );
        let verdict = open.decide(&table(), Input::Failed(reject.clone()), None);
        assert_eq!(
            verdict.error().map(Error::kind),
            Some(ErrorKind::InvalidJson)
        );
        assert!(!verdict.changes_request());
        assert!(verdict.headers().next().is_none());

        // After the verdict: released only while the request is unchanged.
        assert_eq!(open.late_error(&reject, false), LateAction::Release);
        assert_eq!(open.late_error(&reject, true), LateAction::Reject);
        assert_eq!(closed.late_error(&reject, false), LateAction::Reject);
    }

    #[test]
    fn path_models_follow_the_same_rules_and_messages_as_body_models() {
        let decider = Decider::new();
        let by_path = decider.decide(&table(), Input::Path(""), None);
        let from_body = extract(br#"{"model":""}"#, ExtractorConfig::new()).unwrap_err();
        // An empty model names none: it passes unrouted, as a missing one.
        let Verdict::Pass(pass) = &by_path else {
            panic!("{by_path:?}")
        };
        let PassReason::EmptyModel(e) = pass.reason() else {
            panic!("{pass:?}")
        };
        assert_eq!(e.kind(), from_body.kind());
        assert_eq!(e.message(), from_body.message());
        assert!(e.is_empty_model() && from_body.is_empty_model());
        assert!(!by_path.changes_request());
        let verdict = decider.decide(&table(), Input::Failed(from_body.clone()), None);
        assert!(
            matches!(&verdict, Verdict::Pass(p) if matches!(p.reason(), PassReason::EmptyModel(_)))
        );
        // Refused, as a missing model is, when the policy says so.
        let strict = Decider::new()
            .with_failure_policy(FailurePolicy::new().on_missing_model(FailureAction::Reject));
        let verdict = strict.decide(&table(), Input::Failed(from_body), None);
        assert!(matches!(&verdict, Verdict::Reject(e) if e.is_empty_model() && e.status() == 400));

        // C1 controls are refused alike, from the body and from the path.
        let from_body = extract(br#"{"model":"a\u0085b"}"#, ExtractorConfig::new()).unwrap_err();
        let Verdict::Reject(e) = decider.decide(&table(), Input::Path("a\u{85}b"), None) else {
            panic!()
        };
        assert_eq!(from_body.kind(), ErrorKind::InvalidModel);
        assert_eq!(e.message(), from_body.message());
        let raw = extract(
            "{\"model\":\"a\u{85}b\"}".as_bytes().to_vec().leak(),
            ExtractorConfig::new(),
        );
        assert_eq!(raw.unwrap_err().kind(), ErrorKind::InvalidModel);

        let Verdict::Pass(pass) = decider.decide(&table(), Input::Path("other"), None) else {
            panic!()
        };
        assert!(matches!(pass.reason(), PassReason::NoMatch));
    }

    #[test]
    fn exactly_the_headers_bbr_writes_are_stripped() {
        let t = table();
        let decider = Decider::new().with_body_field("stream=x-stream".parse().unwrap());
        for name in [
            "x-gateway-model-name",
            "X-Gateway-Model-Name",
            "x-gateway-base-model-name",
            "x-gateway-inference-pool",
            // The table rewrites (weighted targets): the endpoint picker's
            // rewrite header would undo it.
            "x-gateway-model-name-rewrite",
            "x-tier",
            "X-Stream",
        ] {
            assert!(decider.strips(&t, name), "{name}");
        }
        // The client's own: the endpoint picker reads them.
        for name in [
            "x-gateway-inference-objective",
            "X-Gateway-Inference-Fairness-Id",
            "x-gateway-destination-endpoint",
            "content-type",
            "x-gateway",
            "x-request-id",
            "authorization",
        ] {
            assert!(!decider.strips(&t, name), "{name}");
        }
        // A table that rewrites nothing leaves the rewrite header alone.
        let plain = RuleTable::empty();
        assert!(!decider.strips(&plain, "x-gateway-model-name-rewrite"));
        assert!(decider.strips(&plain, "x-gateway-model-name"));
        // The same answers for header names as `http` holds them.
        for name in [
            "x-gateway-model-name",
            "x-gateway-inference-objective",
            "x-tier",
            "x-stream",
            "accept",
        ] {
            let header = HeaderName::from_static(name);
            assert_eq!(
                decider.strips_header(&t, &header),
                decider.strips(&t, name),
                "{name}"
            );
        }
    }

    #[test]
    fn more_names_and_prefixes_are_stripped_when_asked() {
        let t = table();
        let named = Decider::new().with_stripped_headers(["X-Gateway-Destination-Endpoint", ""]);
        assert!(named.strips(&t, "x-gateway-destination-endpoint"));
        assert!(!named.strips(&t, "x-gateway-inference-objective"));
        assert_eq!(
            named.stripped_headers().collect::<Vec<_>>(),
            ["x-gateway-destination-endpoint"]
        );
        let family = Decider::new().with_reserved_prefixes([RESERVED_PREFIX]);
        assert!(family.strips(&t, "x-gateway-inference-objective"));
        assert!(family.strips(&t, "X-Gateway-Anything"));
        let custom = Decider::new().with_reserved_prefixes(["X-Internal-"]);
        assert!(custom.strips(&t, "x-internal-user"));
        assert!(!custom.strips(&t, "x-gateway-destination-endpoint"));
        // The table's own headers stay managed whatever the prefixes.
        assert!(custom.strips(&t, "x-gateway-model-name"));
    }
}
