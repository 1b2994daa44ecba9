//! One HTTP request as Envoy presents it on a `Process` stream: a pure state
//! machine fed [`ProcessingRequest`]s that appends the [`ProcessingResponse`]s
//! to send back. It does no I/O, so every protocol path is tested message by
//! message without a network (the tests at the end of this file).
//!
//! What a request's verdict is comes from [`Decider`]; this module only
//! follows Envoy's protocol: when each answer is owed, which message
//! carries the routing, how held chunks go back. Before the verdict the
//! body is *read* (chunks held); after it, with the strict policy, each
//! chunk is *checked* before it is released.

use std::{sync::Arc, time::Instant};

use bbr_core::{
    BodyExtractor, Decider, Error, ErrorKind, ExtractorConfig, FieldValue, Input, LateAction,
    Verdict,
    decision::PassReason,
    rules::{ContentLength, SharedRules},
};
use bytes::Bytes;
use http::{HeaderName, HeaderValue};

use crate::{
    metrics,
    pb::{
        BodySendMode, HttpBody, HttpHeaders, ProcessingRequest, ProcessingResponse,
        ProtocolConfiguration, processing_request::Request, processing_response::Response,
    },
    reply::{self, Mutation},
};

/// What every stream of one processor shares: the configuration and the
/// rule table handle.
#[derive(Debug)]
pub(crate) struct Shared {
    pub(crate) extractor: ExtractorConfig,
    pub(crate) decider: Decider,
    pub(crate) rules: SharedRules,
    pub(crate) default_mode: BodyMode,
    pub(crate) clear_route_cache: bool,
    pub(crate) request_key_header: String,
}

/// How Envoy sends the request body, as far as this service is concerned.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum BodyMode {
    /// No body is sent (`NONE`): the request is answered on its headers.
    None,
    /// The whole body in one message (`BUFFERED`, `BUFFERED_PARTIAL`).
    Buffered,
    /// Chunks, each answered by one body response (`STREAMED`). The headers
    /// are answered before the body is seen, so routing on the body works
    /// only when the model is in the first chunk; see the crate docs.
    Streamed,
    /// Chunks, answered by `streamed_response` body mutations at the
    /// server's pace (`FULL_DUPLEX_STREAMED`).
    FullDuplexStreamed,
}

impl BodyMode {
    /// The mode of an Envoy `BodySendMode` value, `None` when unknown.
    pub fn from_envoy(mode: i32) -> Option<BodyMode> {
        Some(match BodySendMode::try_from(mode).ok()? {
            BodySendMode::None => BodyMode::None,
            BodySendMode::Buffered | BodySendMode::BufferedPartial => BodyMode::Buffered,
            BodySendMode::Streamed | BodySendMode::Grpc => BodyMode::Streamed,
            BodySendMode::FullDuplexStreamed => BodyMode::FullDuplexStreamed,
        })
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Phase {
    /// Waiting for the request headers.
    Start,
    /// Body chunks are read and held until the verdict.
    Reading,
    /// Decided; later chunks are checked (strict policy) before release.
    Checking,
    /// Chunks are released as they come, unchecked.
    Passing,
    /// An immediate response went out; Envoy ends the stream.
    Done,
}

pub(crate) struct Exchange {
    shared: Arc<Shared>,
    request_mode: BodyMode,
    response_mode: BodyMode,
    mode_known: bool,
    observability: bool,
    phase: Phase,
    extractor: Option<BodyExtractor>,
    held: Vec<Bytes>,
    held_len: u64,
    /// FULL_DUPLEX_STREAMED: the request headers response is still owed.
    headers_owed: bool,
    /// The verdict that went out changed the request (set headers or
    /// rewrote the body): it can no longer pass through unchanged.
    changed: bool,
    /// Headers the client sent that it may not send, removed from the request.
    strip: Vec<String>,
    /// The raw `content-length` the client sent, if any.
    content_length: Option<Vec<u8>>,
    request_key: Option<Vec<u8>>,
    started: Instant,
}

impl Exchange {
    pub(crate) fn new(shared: Arc<Shared>) -> Exchange {
        let mode = shared.default_mode;
        Exchange {
            shared,
            request_mode: mode,
            response_mode: BodyMode::None,
            mode_known: false,
            observability: false,
            phase: Phase::Start,
            extractor: None,
            held: Vec::new(),
            held_len: 0,
            headers_owed: false,
            changed: false,
            strip: Vec::new(),
            content_length: None,
            request_key: None,
            started: Instant::now(),
        }
    }

    /// Handles one message from Envoy, appending the responses to `out`.
    pub(crate) fn on_message(&mut self, msg: ProcessingRequest, out: &mut Vec<ProcessingResponse>) {
        if msg.observability_mode {
            self.observability = true;
        }
        if let Some(config) = msg.protocol_config {
            self.learn_modes(config);
        }
        let start = out.len();
        match msg.request {
            Some(Request::RequestHeaders(h)) => self.on_request_headers(h, out),
            Some(Request::RequestBody(b)) => self.on_request_body(b, out),
            Some(Request::RequestTrailers(_)) => self.on_request_trailers(out),
            Some(Request::ResponseHeaders(_)) => out.push(reply::response(
                Response::ResponseHeaders(Default::default()),
            )),
            Some(Request::ResponseBody(b)) => self.on_response_body(b, out),
            Some(Request::ResponseTrailers(_)) => out.push(reply::response(
                Response::ResponseTrailers(Default::default()),
            )),
            None => {}
        }
        if self.observability {
            // Envoy ignores answers in observability mode; send none.
            out.truncate(start);
        }
    }

    fn learn_modes(&mut self, config: ProtocolConfiguration) {
        if self.mode_known {
            return;
        }
        self.mode_known = true;
        if let Some(mode) = BodyMode::from_envoy(config.request_body_mode) {
            self.request_mode = mode;
        }
        if let Some(mode) = BodyMode::from_envoy(config.response_body_mode) {
            self.response_mode = mode;
        }
    }

    fn on_request_headers(&mut self, h: HttpHeaders, out: &mut Vec<ProcessingResponse>) {
        if self.phase != Phase::Start {
            // A second headers message is a protocol error on Envoy's side;
            // answer it so that the stream does not hang.
            out.push(reply::request_headers(Default::default()));
            return;
        }
        if !self.mode_known {
            // Without protocol_config, the response direction follows the
            // configured default like the request direction.
            self.response_mode = self.request_mode;
        }
        let table = self.shared.rules.load();
        let mut content_type = None;
        // The message is ours: header values are moved out, not copied.
        for header in h.headers.into_iter().flat_map(|m| m.headers) {
            let key = header.key;
            let value = if header.raw_value.is_empty() {
                header.value.into_bytes()
            } else {
                header.raw_value
            };
            if self.shared.decider.strips(&table, &key) {
                if !self.strip.iter().any(|s| s.eq_ignore_ascii_case(&key)) {
                    self.strip.push(key.to_ascii_lowercase());
                }
            } else if key.eq_ignore_ascii_case("content-type") {
                content_type = String::from_utf8(value).ok();
            } else if key.eq_ignore_ascii_case("content-length") {
                self.content_length = Some(value);
            } else if key.eq_ignore_ascii_case(&self.shared.request_key_header) {
                self.request_key = Some(value);
            }
        }

        if h.end_of_stream || self.request_mode == BodyMode::None {
            // No body to read: answer at once, removing spoofed headers.
            self.phase = Phase::Passing;
            let verdict = self.shared.decider.decide(&table, Input::NoBody, None);
            out.push(reply::request_headers(self.common(&verdict)));
            return;
        }
        match BodyExtractor::new(content_type.as_deref(), self.shared.extractor.clone()) {
            Ok(x) => {
                self.extractor = Some(x);
                self.phase = Phase::Reading;
                if self.request_mode == BodyMode::FullDuplexStreamed {
                    self.headers_owed = true;
                } else {
                    // BUFFERED and STREAMED wait for this answer before
                    // sending the body; the routing goes in the body
                    // response.
                    out.push(reply::request_headers(self.strip_only()));
                }
            }
            Err(e) => {
                // Nothing was held; the headers answer carries the verdict.
                self.headers_owed = true;
                self.decide(Input::Failed(e), false, out);
            }
        }
    }

    fn on_request_body(&mut self, b: HttpBody, out: &mut Vec<ProcessingResponse>) {
        let chunk = Bytes::from(b.body);
        let eos = b.end_of_stream;
        match self.phase {
            Phase::Done => {}
            Phase::Start | Phase::Passing => {
                // Body without headers cannot happen with a conforming Envoy;
                // pass it on rather than stall the request.
                self.flush_owed_headers(out);
                self.release(chunk, eos, out);
            }
            Phase::Checking => {
                if let Some(x) = self.extractor.as_mut() {
                    let mut result = Ok(());
                    if x.needs_scanning() && !chunk.is_empty() {
                        result = x.feed(&chunk).map(drop);
                    }
                    if result.is_ok() && eos {
                        result = x.finish().map(drop);
                    }
                    if let Err(e) = result
                        && !self.late_error(&e, out)
                    {
                        return;
                    }
                }
                self.release(chunk, eos, out);
            }
            Phase::Reading => {
                let Some(x) = self.extractor.as_mut() else {
                    return;
                };
                // A BUFFERED body message is the whole body, even when
                // trailers follow it.
                let end = eos || self.request_mode == BodyMode::Buffered;
                let mut result = Ok(bbr_core::Status::Pending);
                if !chunk.is_empty() {
                    result = x.feed(&chunk);
                    self.held_len += chunk.len() as u64;
                }
                // One body response is owed per body message in BUFFERED and
                // STREAMED: an empty chunk is held too.
                self.held.push(chunk);
                if matches!(result, Ok(bbr_core::Status::Pending)) && !end {
                    return;
                }
                self.read_done(result.map(drop), end, eos, out);
            }
        }
    }

    /// The body was read up to a decision, an error, or its end (`end`).
    fn read_done(
        &mut self,
        result: Result<(), Error>,
        end: bool,
        eos: bool,
        out: &mut Vec<ProcessingResponse>,
    ) {
        if let Err(e) = result {
            return self.decide(Input::Failed(e), eos, out);
        }
        if end && self.held_len == 0 {
            // An empty body (in any framing): nothing to route on.
            return self.decide(Input::NoBody, eos, out);
        }
        let finished = match self.extractor.as_mut() {
            Some(x) if end => x.finish().map(drop),
            _ => Ok(()),
        };
        match finished {
            Ok(()) => self.decide_on_body(eos, out),
            Err(e) => self.decide(Input::Failed(e), eos, out),
        }
    }

    fn on_request_trailers(&mut self, out: &mut Vec<ProcessingResponse>) {
        match self.phase {
            Phase::Done => return,
            // Trailers mean the body is complete.
            Phase::Reading => self.read_done(Ok(()), true, false, out),
            Phase::Checking => {
                if let Some(Err(e)) = self.extractor.as_mut().map(|x| x.finish().map(drop))
                    && !self.late_error(&e, out)
                {
                    return;
                }
                self.phase = Phase::Passing;
            }
            Phase::Start | Phase::Passing => self.flush_owed_headers(out),
        }
        if self.phase != Phase::Done {
            out.push(reply::request_trailers());
        }
    }

    fn on_response_body(&mut self, b: HttpBody, out: &mut Vec<ProcessingResponse>) {
        // Never held: token streams must keep flowing.
        let chunk = (self.response_mode == BodyMode::FullDuplexStreamed)
            .then_some((b.body, b.end_of_stream));
        out.push(reply::response_body(chunk));
    }

    /// Decides on what the extractor found, counting what the Go router
    /// counts.
    fn decide_on_body(&mut self, eos: bool, out: &mut Vec<ProcessingResponse>) {
        let Exchange {
            shared, extractor, ..
        } = self;
        let Some(x) = extractor.as_ref() else {
            return;
        };
        let Some(extraction) = x.extraction() else {
            return;
        };
        metrics::decided(
            self.started.elapsed().as_secs_f64(),
            extraction.decided_at(),
        );
        // Counted as the Go router counts them: absent, or an empty string.
        for field in shared.decider.body_fields().iter().map(|b| b.field()) {
            match extraction.field(field) {
                None => metrics::field_not_found(field),
                Some(FieldValue::String(s)) if s.is_empty() => metrics::field_empty(field),
                Some(_) => {}
            }
        }
        // STREAMED answers each chunk in place; a splice would not line up
        // with the chunks Envoy waits on.
        let rewritable = x.is_json() && self.request_mode != BodyMode::Streamed;
        let table = shared.rules.load();
        let key = match table.uses_request_key() {
            true => self.request_key.as_deref(),
            false => None,
        };
        let verdict = shared
            .decider
            .decide(&table, Input::body(extraction, rewritable), key);
        self.carry_out(verdict, eos, out);
    }

    /// Decides on `input`, which needs no extraction.
    fn decide(&mut self, input: Input<'_>, eos: bool, out: &mut Vec<ProcessingResponse>) {
        let table = self.shared.rules.load();
        let verdict = self.shared.decider.decide(&table, input, None);
        self.carry_out(verdict, eos, out);
    }

    /// Sends the verdict (headers response or body response, by mode) and
    /// the held chunks, then moves on to checking or passing.
    fn carry_out(&mut self, verdict: Verdict, eos: bool, out: &mut Vec<ProcessingResponse>) {
        count(&verdict);
        if let Verdict::Reject(e) = &verdict {
            return self.reject(e, out);
        }
        self.changed = verdict.changes_request();
        let mut common = self.common(&verdict);
        let mut held = std::mem::take(&mut self.held);
        self.held_len = 0;
        if let Verdict::Route(routing) = &verdict
            && let Some(rewritten) = routing.rewrite().and_then(|r| r.apply(&held))
        {
            held = rewritten.chunks.clone();
            if let Some(old) = self.content_length.as_deref() {
                let mutation = common.header_mutation.get_or_insert_default();
                match rewritten.content_length(old) {
                    ContentLength::Set(len) => mutation.set_headers.push(reply::header_option(
                        "content-length",
                        len.to_string().as_bytes(),
                    )),
                    ContentLength::Remove => {
                        mutation.remove_headers.push("content-length".to_owned());
                    }
                }
            }
            if self.request_mode == BodyMode::Buffered {
                let body: Vec<u8> = held.concat();
                out.push(reply::request_body(Some(reply::with_body(common, body))));
                return self.after_verdict(&verdict);
            }
        }
        if self.headers_owed || self.request_mode == BodyMode::FullDuplexStreamed {
            self.headers_owed = false;
            out.push(reply::request_headers(common));
            let n = held.len();
            for (i, chunk) in held.into_iter().enumerate() {
                if self.request_mode == BodyMode::FullDuplexStreamed {
                    out.push(reply::request_chunk(chunk.into(), eos && i + 1 == n));
                } else {
                    out.push(reply::request_body(None));
                }
            }
        } else {
            // BUFFERED and STREAMED: one body response per body message
            // received, in order; the first carries the routing.
            let mut common = Some(common);
            for _ in 0..held.len().max(1) {
                out.push(reply::request_body(common.take()));
            }
        }
        self.after_verdict(&verdict);
    }

    fn after_verdict(&mut self, verdict: &Verdict) {
        let checking = verdict.error().is_none()
            && self.extractor.as_ref().is_some_and(|x| x.needs_scanning());
        self.phase = if checking {
            Phase::Checking
        } else {
            Phase::Passing
        };
    }

    /// An error in a chunk after the verdict went out (strict policy).
    /// Returns whether the chunk may still be released.
    fn late_error(&mut self, e: &Error, out: &mut Vec<ProcessingResponse>) -> bool {
        match self.shared.decider.late_error(e, self.changed) {
            LateAction::Reject => {
                self.reject(e, out);
                false
            }
            LateAction::Release => {
                metrics::fail_open(e.kind().as_str());
                self.phase = Phase::Passing;
                true
            }
        }
    }

    fn reject(&mut self, e: &Error, out: &mut Vec<ProcessingResponse>) {
        metrics::rejected(e.kind().as_str());
        tracing::debug!(
            kind = e.kind().as_str(),
            offset = e.offset(),
            "request rejected"
        );
        self.phase = Phase::Done;
        self.held.clear();
        out.push(reply::immediate(e));
    }

    fn flush_owed_headers(&mut self, out: &mut Vec<ProcessingResponse>) {
        if self.headers_owed {
            self.headers_owed = false;
            out.push(reply::request_headers(self.strip_only()));
        }
    }

    fn release(&mut self, chunk: Bytes, eos: bool, out: &mut Vec<ProcessingResponse>) {
        if self.request_mode == BodyMode::FullDuplexStreamed {
            out.push(reply::request_chunk(chunk.into(), eos));
        } else {
            out.push(reply::request_body(None));
        }
    }

    /// The mutation of a verdict: spoofed headers removed, decided ones set.
    fn common(&self, verdict: &Verdict) -> crate::pb::CommonResponse {
        let set: Vec<(HeaderName, HeaderValue)> = verdict
            .headers()
            .map(|(name, value)| (name.clone(), value.clone()))
            .collect();
        Mutation {
            set,
            remove: self.strip.clone(),
        }
        .common(self.shared.clear_route_cache)
    }

    /// The mutation before a verdict: spoofed headers removed only.
    fn strip_only(&self) -> crate::pb::CommonResponse {
        Mutation {
            set: Vec::new(),
            remove: self.strip.clone(),
        }
        .common(self.shared.clear_route_cache)
    }
}

/// Counts a verdict in the Go router's metrics and bbr's own.
fn count(verdict: &Verdict) {
    let model_not_parsed = |e: &Error| {
        if matches!(
            e.kind(),
            ErrorKind::ModelNotString | ErrorKind::InvalidModel
        ) {
            metrics::model_not_parsed(e.is_empty_model());
        }
    };
    match verdict {
        Verdict::Route(routing) => {
            let route = routing.route();
            metrics::success();
            metrics::route_match(route.rule().unwrap_or(""), route.pool().unwrap_or(""));
        }
        Verdict::Pass(pass) => match pass.reason() {
            PassReason::NoModel => metrics::model_not_in_body(),
            PassReason::FailedOpen(e) => {
                metrics::fail_open(e.kind().as_str());
                model_not_parsed(e);
            }
            _ => {}
        },
        Verdict::Reject(e) if e.is_missing_model() => metrics::model_not_in_body(),
        Verdict::Reject(e) => model_not_parsed(e),
        _ => {}
    }
}

impl std::fmt::Debug for Exchange {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Exchange")
            .field("request_mode", &self.request_mode)
            .field("phase", &self.phase)
            .field("held", &self.held.len())
            .finish_non_exhaustive()
    }
}
