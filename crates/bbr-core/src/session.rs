//! One request carried from its head to the end of its body, the same way
//! by every adapter: a state machine with no I/O, no clock and no runtime.
//!
//! An adapter (the tower layer, the ext_proc server, the Envoy module)
//! turns what its wire delivers into events — the head
//! ([`Session::start`]), each body chunk ([`Session::chunk`]), the end of
//! the body ([`Session::end`]) — and each event returns a [`Step`]: hold
//! the chunk, release it, carry out a [`Verdict`], answer with an error, or
//! drop what comes. The adapter only translates steps to its wire: where
//! the held chunks live (its own buffer, Envoy's), how a header is set, how
//! an answer goes out. The sequence around the policy — read, hold, decide,
//! release, check, count — is written here once.
//!
//! ```text
//!            start                 chunk / end              chunk / end
//!  Start ──────────────▶ Reading ─────────────▶ Checking ─────────────▶ Passing
//!    │   (no body, or      │ Hold … Verdict      │ Release … (strict)    │ Release
//!    │    refused: Verdict)│                     │ late error:           │
//!    └─────────────────────┴──── Reject ───────▶ Done ◀── Reject ────────┘
//! ```
//!
//! Before the verdict the body is *read*: each chunk is fed to the
//! extractor and held. The verdict comes when the extractor has what it
//! needs (the model, the body fields), fails, or the body ends; the chunk
//! that brought it is held too, so carrying a verdict out releases
//! everything held. After a verdict that routes or passes, the strict
//! policy *checks* each later chunk before it is released; an error there
//! ends the request ([`Step::Reject`]) or, when the failure policy lets
//! its kind through and the verdict changed nothing, stops the checking
//! ([`Step::ReleaseUnchecked`]).
//!
//! ```
//! use std::sync::Arc;
//! use bytes::Bytes;
//! use bbr_core::{Decider, ExtractorConfig, Verdict};
//! use bbr_core::rules::RuleTable;
//! use bbr_core::session::{Head, Session, Step};
//!
//! let table = RuleTable::from_yaml(
//!     "rules: [{name: chat, match: {model: {exact: chatbot}}, pool: gemma3}]",
//! ).unwrap();
//! let decider = Decider::new();
//! let config = ExtractorConfig::new();
//! let mut session = Session::new(Arc::new(table));
//!
//! let head = Head { content_type: Some("application/json"), ..Head::default() };
//! assert!(matches!(session.start(&decider, &config, &head, true), Step::Read));
//! let step = session.chunk(&decider, &Bytes::from_static(br#"{"messages":[],"#), false);
//! assert!(matches!(step, Step::Hold));
//! let step = session.chunk(&decider, &Bytes::from_static(br#""model":"chatbot"}"#), true);
//! let Step::Verdict(Verdict::Route(routing)) = &step else { panic!("{step:?}") };
//! assert_eq!(routing.route().pool(), Some("gemma3"));
//! ```

use std::sync::Arc;

use bytes::Bytes;

use crate::{
    BodyExtractor, Decider, Error, ErrorKind, ExtractorConfig, FieldValue, Input, LateAction,
    Status, Verdict,
    decision::PassReason,
    rules::{ContentLength, RuleTable},
};

/// What a request's head says that routing needs, gathered by the adapter
/// (for instance with a [`HeadScan`]) before [`Session::start`].
#[derive(Clone, Copy, Debug, Default)]
pub struct Head<'a> {
    /// The `Content-Type`, which picks the extractor.
    pub content_type: Option<&'a str>,
    /// The `Content-Encoding`, its lines joined by commas (one list, RFC
    /// 9110 §5.3).
    pub content_encoding: Option<&'a str>,
    /// The `Content-Length`, fixed after a rewrite (see
    /// [`Session::change_body`]): `None` when the request has none,
    /// `Some(None)` when its value is not a length (see
    /// [`parse_content_length`]).
    pub content_length: Option<Option<u64>>,
    /// The value that keeps a weighted choice stable (for example the
    /// `x-request-id` header); kept only when the rule table can use it.
    pub request_key: Option<&'a [u8]>,
}

/// What a [`Session`] event asks of the adapter.
#[derive(Debug)]
#[non_exhaustive]
pub enum Step {
    /// The body is to be read: hold its chunks and give each to
    /// [`Session::chunk`] (from [`Session::start`] only).
    Read,
    /// Hold this chunk with the ones before it; nothing goes on yet.
    Hold,
    /// Carry out the verdict. [`Verdict::Route`] and [`Verdict::Pass`]:
    /// set [`Verdict::headers`], replace the held chunks as
    /// [`Session::change_body`] says, and release every held chunk (this
    /// one included). [`Verdict::Reject`]: answer with the error and
    /// forward nothing.
    Verdict(Verdict),
    /// Release this chunk (after the verdict).
    Release,
    /// This chunk broke the body after the verdict, and the failure policy
    /// lets the error's kind through: release it and the rest unchecked.
    ReleaseUnchecked(Error),
    /// This chunk broke the body after the verdict: answer with the error;
    /// this chunk and the rest are not released.
    Reject(Error),
    /// The request was answered: drop what comes.
    Drop,
}

impl Step {
    /// The error to answer with: a rejecting verdict or a late rejection.
    pub fn rejection(&self) -> Option<&Error> {
        match self {
            Step::Verdict(Verdict::Reject(error)) | Step::Reject(error) => Some(error),
            _ => None,
        }
    }
}

/// One thing to count about a request, in the Go router's counters and
/// bbr's own (see [`Session::tally`]). The `metrics` feature records them
/// under the names of `bbr_core::metrics`; the Envoy module in Envoy's
/// stats.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum Tally<'a> {
    /// The body was read and decided on without an error, routed or not
    /// (`bbr_success_total`, the Go router's meaning).
    Success,
    /// The model was read and set as routing headers (`bbr_routed_total`).
    Routed,
    /// The rule and pool of a routing decision (`bbr_route_matches_total`).
    RouteMatch {
        /// The rule's name (empty without rules).
        rule: &'a str,
        /// The pool (empty when the rule names none).
        pool: &'a str,
    },
    /// The body names no model (`bbr_model_not_in_body_total`).
    ModelNotInBody,
    /// The body's `model` is not a model name
    /// (`bbr_model_not_parsed_total`).
    ModelNotParsed,
    /// The body's `model` is the empty string
    /// (`bbr_body_field_empty_total{field="model"}`).
    ModelEmpty,
    /// A body field copied into a header is absent
    /// (`bbr_body_field_not_found_total`).
    FieldNotFound(&'a str),
    /// A body field copied into a header is the empty string
    /// (`bbr_body_field_empty_total`).
    FieldEmpty(&'a str),
    /// Answered with an error of this kind (`bbr_rejected_total`).
    Rejected(ErrorKind),
    /// Passed on unrouted after an error of this kind, by the failure
    /// policy (`bbr_fail_open_total`).
    FailOpen(ErrorKind),
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Phase {
    /// Before [`Session::start`].
    Start,
    /// Chunks are read and held until the verdict.
    Reading,
    /// After the verdict, the strict policy checks each chunk.
    Checking,
    /// Chunks pass unchecked.
    Passing,
    /// The request was answered.
    Done,
}

/// One request's routing, from its head to the end of its body: see the
/// [module docs](self).
///
/// It owns the extractor, the phase, the count of held bytes, the request
/// key and the `Content-Length`; it holds no chunk (the adapter does, or
/// its proxy), so the same session serves a body held in a `Vec`, in a
/// tower body, or in Envoy's buffer.
#[derive(Debug)]
pub struct Session {
    table: Arc<RuleTable>,
    phase: Phase,
    extractor: Option<BodyExtractor>,
    held: u64,
    /// Whether the adapter can splice the held chunks (a rewrite).
    splice: bool,
    /// The verdict changed the request: it can no longer pass unchanged.
    changed: bool,
    /// The verdict came from an extraction (the body fields are counted).
    extracted: bool,
    /// The client's `Content-Length`: absent, or parsed (`None`: not a
    /// length).
    content_length: Option<Option<u64>>,
    request_key: Option<Bytes>,
}

impl Session {
    /// A request routed by `table` (the one in force when its head came;
    /// it stays the request's table to its end).
    pub fn new(table: Arc<RuleTable>) -> Session {
        Session {
            table,
            phase: Phase::Start,
            extractor: None,
            held: 0,
            splice: true,
            changed: false,
            extracted: false,
            content_length: None,
            request_key: None,
        }
    }

    /// Declares that the adapter cannot splice held chunks (ext_proc's
    /// `STREAMED` mode answers each chunk in place): a rule's other model
    /// then routes without rewriting the body.
    #[must_use]
    pub fn without_splicing(mut self) -> Self {
        self.splice = false;
        self
    }

    /// The rule table of the request.
    pub fn table(&self) -> &Arc<RuleTable> {
        &self.table
    }

    /// Starts the request on its head: [`Step::Read`] when it has a body
    /// to read (`body`), else a [`Step::Verdict`] — the request has no
    /// body, or its content type or coding is one bbr does not read.
    pub fn start(
        &mut self,
        decider: &Decider,
        config: &ExtractorConfig,
        head: &Head<'_>,
        body: bool,
    ) -> Step {
        if self.phase != Phase::Start {
            return Step::Drop;
        }
        self.content_length = head.content_length;
        if self.table.uses_request_key() {
            self.request_key = head.request_key.map(Bytes::copy_from_slice);
        }
        if !body {
            return self.decide(decider, Input::NoBody);
        }
        match BodyExtractor::for_request(head.content_type, head.content_encoding, config.clone()) {
            Ok(x) => {
                self.extractor = Some(x);
                self.phase = Phase::Reading;
                Step::Read
            }
            Err(error) => self.decide(decider, Input::Failed(error)),
        }
    }

    /// Starts a request whose model the URL path named: the body is not
    /// read (a [`PathTemplate`](crate::PathTemplate) matched).
    pub fn start_with_model(&mut self, decider: &Decider, head: &Head<'_>, model: &str) -> Step {
        if self.phase != Phase::Start {
            return Step::Drop;
        }
        if self.table.uses_request_key() {
            self.request_key = head.request_key.map(Bytes::copy_from_slice);
        }
        self.decide(decider, Input::Path(model))
    }

    /// A body chunk; `end` when it is the body's last (or, ext_proc's
    /// `BUFFERED`, the whole body).
    #[inline]
    pub fn chunk(&mut self, decider: &Decider, chunk: &Bytes, end: bool) -> Step {
        self.piece(decider, Piece::Shared(chunk), end)
    }

    /// A body chunk the adapter only lends for this call, in `parts` (a
    /// proxy's buffer read where it lies, Envoy's slices): the same step as
    /// [`chunk`](Self::chunk) on the parts joined, but nothing refers to
    /// them once the call returns — a model found in them is copied, the
    /// rest of the bytes are not.
    #[inline]
    pub fn lent_chunk(&mut self, decider: &Decider, parts: &[&[u8]], end: bool) -> Step {
        self.piece(decider, Piece::Lent(parts), end)
    }

    #[inline]
    fn piece(&mut self, decider: &Decider, chunk: Piece<'_>, end: bool) -> Step {
        match self.phase {
            Phase::Start | Phase::Passing => Step::Release,
            Phase::Done => Step::Drop,
            Phase::Checking => self.check(decider, chunk, end),
            Phase::Reading => {
                let Some(x) = self.extractor.as_mut() else {
                    return Step::Release;
                };
                let mut status = Ok(Status::Pending);
                let len = chunk.len();
                if len != 0 {
                    status = chunk.feed(x);
                    self.held += len;
                }
                match status {
                    Ok(Status::Pending) if !end => Step::Hold,
                    Ok(_) => self.read_done(decider, end),
                    Err(error) => self.decide(decider, Input::Failed(error)),
                }
            }
        }
    }

    /// The body ended with no chunk (trailers, or a stream that closed):
    /// before the verdict, it is decided on what was read; after it, the
    /// strict policy checks the body is complete. [`Step::Release`] means
    /// the request goes on.
    #[inline]
    pub fn end(&mut self, decider: &Decider) -> Step {
        match self.phase {
            Phase::Reading => self.read_done(decider, true),
            Phase::Checking => self.check(decider, Piece::Lent(&[]), true),
            Phase::Done => Step::Drop,
            Phase::Start | Phase::Passing => Step::Release,
        }
    }

    /// The adapter refused the body before the verdict (it idled too long,
    /// the process holds too much): decided on `error`.
    pub fn fail(&mut self, decider: &Decider, error: Error) -> Step {
        match self.phase {
            Phase::Done => Step::Drop,
            _ => self.decide(decider, Input::Failed(error)),
        }
    }

    /// The body was read up to the extractor's decision or its end.
    #[inline]
    fn read_done(&mut self, decider: &Decider, end: bool) -> Step {
        if end && self.held == 0 {
            // An empty body (in any framing): nothing to route on.
            return self.decide(decider, Input::NoBody);
        }
        let Some(x) = self.extractor.as_mut() else {
            return self.decide(decider, Input::NoBody);
        };
        if end && let Err(error) = x.finish() {
            return self.decide(decider, Input::Failed(error));
        }
        let Some(extraction) = x.extraction() else {
            return self.decide(decider, Input::NoBody);
        };
        let key = self.request_key.as_deref();
        // A compressed body goes on as it came: never spliced.
        let rewritable = self.splice && x.is_rewritable();
        let verdict = decider.decide(&self.table, Input::body(extraction, rewritable), key);
        self.extracted = true;
        self.after(verdict)
    }

    /// Decides on `input`, which needs no extraction.
    #[inline]
    fn decide(&mut self, decider: &Decider, input: Input<'_>) -> Step {
        let key = match input {
            Input::Path(_) => self.request_key.as_deref(),
            _ => None,
        };
        let verdict = decider.decide(&self.table, input, key);
        self.after(verdict)
    }

    /// Moves on after the verdict: checking, passing, or done.
    #[inline]
    fn after(&mut self, verdict: Verdict) -> Step {
        self.phase = match &verdict {
            Verdict::Reject(_) => Phase::Done,
            v if v.error().is_none()
                && self.extractor.as_ref().is_some_and(|x| x.needs_scanning()) =>
            {
                Phase::Checking
            }
            _ => Phase::Passing,
        };
        self.changed = verdict.changes_request();
        Step::Verdict(verdict)
    }

    /// Checks a chunk after the verdict (strict policy).
    fn check(&mut self, decider: &Decider, chunk: Piece<'_>, end: bool) -> Step {
        let Some(x) = self.extractor.as_mut() else {
            return Step::Release;
        };
        let mut result = Ok(());
        if x.needs_scanning() && chunk.len() != 0 {
            result = chunk.feed(x).map(drop);
        }
        if result.is_ok() && end {
            result = x.finish().map(drop);
        }
        match result {
            Ok(()) => {
                if end || !x.needs_scanning() {
                    self.phase = Phase::Passing;
                }
                Step::Release
            }
            Err(error) => match decider.late_error(&error, self.changed) {
                LateAction::Reject => {
                    self.phase = Phase::Done;
                    Step::Reject(error)
                }
                LateAction::Release => {
                    self.phase = Phase::Passing;
                    Step::ReleaseUnchecked(error)
                }
            },
        }
    }

    /// Whether the next chunk is read or checked: when not, an adapter
    /// need not hand it over (the Envoy module then copies nothing).
    pub fn wants_body(&self) -> bool {
        match self.phase {
            Phase::Reading => true,
            Phase::Checking => self.extractor.as_ref().is_some_and(|x| x.needs_scanning()),
            _ => false,
        }
    }

    /// Whether the session still reads the body up to its verdict.
    pub fn is_reading(&self) -> bool {
        self.phase == Phase::Reading
    }

    /// Whether the request was answered (a rejection went out).
    pub fn is_done(&self) -> bool {
        self.phase == Phase::Done
    }

    /// Whether the strict policy still checks the chunks to come.
    pub fn is_checking(&self) -> bool {
        self.phase == Phase::Checking
    }

    /// The body bytes held so far (before the verdict), or held until it.
    pub fn held_bytes(&self) -> u64 {
        self.held
    }

    /// Whether the verdict came from reading the body (the model was found,
    /// or the body was read whole without one): the decision histograms
    /// are recorded for it.
    pub fn decided_on_body(&self) -> bool {
        self.extracted
    }

    /// The body bytes read when the extractor decided (the
    /// `bbr_bytes_before_decision` histogram); 0 before, or without one.
    pub fn decided_at(&self) -> u64 {
        self.extractor
            .as_ref()
            .and_then(BodyExtractor::extraction)
            .map_or(0, |x| x.decided_at())
    }

    /// The extractor, once the body is read.
    pub fn extractor(&self) -> Option<&BodyExtractor> {
        self.extractor.as_ref()
    }

    /// The body change a verdict asks for: the held chunks (from byte 0 of
    /// the body) with the rule's other model spliced in, and what becomes
    /// of `Content-Length` — set to the new length, or removed when the
    /// client's was not a length or the change does not fit it; `None`
    /// when the client sent none. `None` for a verdict that changes no
    /// body, or a span that does not lie in `held`.
    pub fn change_body(&self, verdict: &Verdict, held: &[Bytes]) -> Option<BodyChange> {
        let Verdict::Route(routing) = verdict else {
            return None;
        };
        let rewritten = routing.rewrite()?.apply(held)?;
        let content_length = self.content_length.map(|old| {
            old.and_then(|old| old.checked_add_signed(rewritten.len_delta))
                .map_or(ContentLength::Remove, ContentLength::Set)
        });
        Some(BodyChange {
            chunks: rewritten.chunks,
            len: rewritten.len,
            content_length,
        })
    }

    /// Calls `f` with what `step` (this session's last) counts: for a
    /// verdict, what the Go router counts (a processed body, a route by
    /// rule and pool, a body without a model, a model that is not a name,
    /// the copied body fields absent or empty) and the rejection or the
    /// failure let through; for a late error, the rejection or the release.
    pub fn tally(&self, decider: &Decider, step: &Step, mut f: impl FnMut(Tally<'_>)) {
        match step {
            Step::Verdict(verdict) => {
                if self.extracted
                    && !decider.body_fields().is_empty()
                    && let Some(extraction) = self.extractor.as_ref().and_then(|x| x.extraction())
                {
                    for field in decider.body_fields().iter().map(|b| b.field()) {
                        match extraction.field(field) {
                            None => f(Tally::FieldNotFound(field)),
                            Some(FieldValue::String(s)) if s.is_empty() => {
                                f(Tally::FieldEmpty(field));
                            }
                            Some(_) => {}
                        }
                    }
                }
                verdict_tallies(verdict, f);
            }
            Step::Reject(error) => f(Tally::Rejected(error.kind())),
            Step::ReleaseUnchecked(error) => f(Tally::FailOpen(error.kind())),
            _ => {}
        }
    }
}

/// A body chunk as the session is given it.
#[derive(Clone, Copy)]
enum Piece<'a> {
    /// The adapter's own: what the extractor keeps of it is a slice.
    Shared(&'a Bytes),
    /// Lent for the call, in parts: what the extractor keeps is copied.
    Lent(&'a [&'a [u8]]),
}

impl Piece<'_> {
    #[inline]
    fn len(self) -> u64 {
        match self {
            Piece::Shared(chunk) => chunk.len() as u64,
            Piece::Lent(parts) => parts.iter().map(|p| p.len() as u64).sum(),
        }
    }

    /// Feeds the chunk to `x`, its parts in turn (the extractor resumes
    /// across them as across chunks), up to the first error.
    #[inline]
    fn feed(self, x: &mut BodyExtractor) -> Result<Status, Error> {
        match self {
            Piece::Shared(chunk) => x.feed(chunk),
            Piece::Lent(parts) => {
                let mut status = Ok(Status::Pending);
                for part in parts.iter().filter(|p| !p.is_empty()) {
                    status = x.feed_lent(part);
                    if status.is_err() {
                        break;
                    }
                }
                status
            }
        }
    }
}

/// What a verdict counts (see [`Session::tally`]).
pub fn verdict_tallies(verdict: &Verdict, mut f: impl FnMut(Tally<'_>)) {
    if verdict.body_processed() {
        f(Tally::Success);
    }
    let not_parsed = |e: &Error, f: &mut dyn FnMut(Tally<'_>)| {
        if matches!(
            e.kind(),
            ErrorKind::ModelNotString | ErrorKind::InvalidModel
        ) {
            f(Tally::ModelNotParsed);
            if e.is_empty_model() {
                f(Tally::ModelEmpty);
            }
        }
    };
    match verdict {
        Verdict::Route(routing) => {
            let route = routing.route();
            f(Tally::Routed);
            f(Tally::RouteMatch {
                rule: route.rule().unwrap_or(""),
                pool: route.pool().unwrap_or(""),
            });
        }
        Verdict::Pass(pass) => match pass.reason() {
            PassReason::NoModel => f(Tally::ModelNotInBody),
            PassReason::EmptyModel(_) => f(Tally::ModelEmpty),
            PassReason::FailedOpen(e) => {
                f(Tally::FailOpen(e.kind()));
                not_parsed(e, &mut f);
            }
            _ => {}
        },
        Verdict::Reject(e) => {
            if e.is_missing_model() {
                f(Tally::ModelNotInBody);
            } else {
                not_parsed(e, &mut f);
            }
            f(Tally::Rejected(e.kind()));
        }
    }
}

/// A `Content-Length` value: decimal digits, optionally surrounded by
/// spaces or tabs; `None` for anything else or a length past `u64`.
///
/// ```
/// use bbr_core::session::parse_content_length;
///
/// assert_eq!(parse_content_length(b" 41 "), Some(41));
/// assert_eq!(parse_content_length(b"4x"), None);
/// assert_eq!(parse_content_length(b""), None);
/// ```
#[inline]
pub fn parse_content_length(raw: &[u8]) -> Option<u64> {
    let is_space = |b: &u8| *b == b' ' || *b == b'\t';
    let start = raw.iter().position(|b| !is_space(b))?;
    let end = raw.iter().rposition(|b| !is_space(b))? + 1;
    raw[start..end].iter().try_fold(0u64, |n, &b| {
        let digit = b.wrapping_sub(b'0');
        (digit < 10).then_some(())?;
        n.checked_mul(10)?.checked_add(u64::from(digit))
    })
}

/// The body change of a routing verdict: see [`Session::change_body`].
#[derive(Clone, Debug)]
#[non_exhaustive]
pub struct BodyChange {
    /// The chunks to release in place of the held ones, in order; the
    /// untouched bytes are refcounted slices of the originals.
    pub chunks: Vec<Bytes>,
    /// Their total length.
    pub len: u64,
    /// What becomes of the `Content-Length` header, when the client sent
    /// one.
    pub content_length: Option<ContentLength>,
}

/// Gathers, header by header, what a [`Head`] needs, for an adapter whose
/// headers come as name and value pairs (ext_proc's header map, Envoy's
/// callbacks), and says which ones to strip.
///
/// ```
/// use bbr_core::{Decider, rules::RuleTable};
/// use bbr_core::session::{HeadScan, Seen};
///
/// let table = RuleTable::empty();
/// let decider = Decider::new();
/// let mut scan = HeadScan::new("x-request-id");
/// for (name, value) in [("Content-Type", "application/json"), ("X-Gateway-Model-Name", "spoof")] {
///     let seen = scan.header(&decider, &table, name, value.as_bytes());
///     assert_eq!(seen == Seen::Strip, name.starts_with("X-Gateway"));
/// }
/// assert_eq!(scan.head().content_type, Some("application/json"));
/// assert_eq!(scan.stripped(), ["x-gateway-model-name"]);
/// ```
#[derive(Debug)]
pub struct HeadScan<'k> {
    request_key_header: &'k str,
    content_type: Option<Bytes>,
    content_encoding: Option<String>,
    content_length: Option<Bytes>,
    request_key: Option<Bytes>,
    strip: Vec<String>,
    get: bool,
    models_path: bool,
}

/// What [`HeadScan::header`] made of a header.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Seen {
    /// The client may not send it: remove it from the request.
    Strip,
    /// Routing reads it (content type, coding, length, request key,
    /// method, path).
    Read,
    /// Nothing routing reads.
    Other,
}

/// A header value given to [`HeadScan::header`]: taken when it is a
/// [`Bytes`], copied when borrowed, and only when it is kept.
pub trait HeaderBytes: AsRef<[u8]> {
    /// The value as [`Bytes`].
    fn into_bytes(self) -> Bytes;
}

impl HeaderBytes for Bytes {
    fn into_bytes(self) -> Bytes {
        self
    }
}

impl HeaderBytes for &[u8] {
    fn into_bytes(self) -> Bytes {
        Bytes::copy_from_slice(self)
    }
}

impl<'k> HeadScan<'k> {
    /// A scan that keeps the header `request_key_header` as the request
    /// key (compared without regard to case).
    pub fn new(request_key_header: &'k str) -> HeadScan<'k> {
        HeadScan {
            request_key_header,
            content_type: None,
            content_encoding: None,
            content_length: None,
            request_key: None,
            strip: Vec::new(),
            get: false,
            models_path: false,
        }
    }

    /// Looks at one header. A header the client may not send (see
    /// [`Decider::strips`]) is listed in [`stripped`](HeadScan::stripped)
    /// once, lowercase.
    pub fn header(
        &mut self,
        decider: &Decider,
        table: &RuleTable,
        name: &str,
        value: impl HeaderBytes,
    ) -> Seen {
        if decider.strips(table, name) {
            if !self.strip.iter().any(|s| s.eq_ignore_ascii_case(name)) {
                self.strip.push(name.to_ascii_lowercase());
            }
            return Seen::Strip;
        }
        if name.eq_ignore_ascii_case("content-type") {
            if self.content_type.is_none() {
                self.content_type = Some(value.into_bytes());
            }
        } else if name.eq_ignore_ascii_case("content-encoding") {
            let value = String::from_utf8_lossy(value.as_ref());
            match &mut self.content_encoding {
                Some(list) => {
                    list.push(',');
                    list.push_str(&value);
                }
                None => self.content_encoding = Some(value.into_owned()),
            }
        } else if name.eq_ignore_ascii_case("content-length") {
            self.content_length = Some(value.into_bytes());
        } else if name.eq_ignore_ascii_case(self.request_key_header) {
            self.request_key = Some(value.into_bytes());
        } else if name == ":method" {
            self.get = value.as_ref() == b"GET";
        } else if name == ":path" {
            let value = value.as_ref();
            let path = value.split(|&b| b == b'?').next().unwrap_or_default();
            self.models_path = path == b"/v1/models";
        } else {
            return Seen::Other;
        }
        Seen::Read
    }

    /// The headers to remove, lowercase, each once.
    pub fn stripped(&self) -> &[String] {
        &self.strip
    }

    /// The headers to remove, taken out.
    pub fn take_stripped(&mut self) -> Vec<String> {
        std::mem::take(&mut self.strip)
    }

    /// Whether the request is `GET /v1/models` (the model list).
    pub fn is_models_request(&self) -> bool {
        self.get && self.models_path
    }

    /// What the headers seen so far say.
    pub fn head(&self) -> Head<'_> {
        Head {
            content_type: self
                .content_type
                .as_deref()
                .and_then(|v| std::str::from_utf8(v).ok()),
            content_encoding: self.content_encoding.as_deref(),
            content_length: self.content_length.as_deref().map(parse_content_length),
            request_key: self.request_key.as_deref(),
        }
    }
}

#[cfg(test)]
mod tests;
