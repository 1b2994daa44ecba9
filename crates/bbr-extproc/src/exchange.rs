//! One HTTP request as Envoy presents it on a `Process` stream: a pure state
//! machine fed [`ProcessingRequest`]s that appends the [`ProcessingResponse`]s
//! to send back. It does no I/O, so every protocol path can be tested
//! without a network.

use std::{sync::Arc, time::Instant};

use bbr_core::{
    BodyExtractor, Error, ErrorKind, FailureAction, FieldValue,
    rewrite::{json_string, splice},
};
use bytes::Bytes;
use http::{HeaderName, HeaderValue};

use crate::{
    BodyFieldHeader, metrics,
    pb::{
        BodyMutation, BodyResponse, BodySendMode, CommonResponse, HeaderAppendAction,
        HeaderMutation, HeaderValue as PbHeaderValue, HeaderValueOption, HeadersResponse, HttpBody,
        HttpHeaders, HttpStatus, ImmediateResponse, ProcessingRequest, ProcessingResponse,
        ProtocolConfiguration, StreamedBodyResponse, TrailersResponse, body_mutation,
        processing_request::Request, processing_response::Response,
    },
    service::Shared,
};

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
    /// Body chunks are held until the decision.
    Scanning,
    /// Decided; later chunks are scanned (strict policy) before release.
    Checking,
    /// Chunks are released as they come, unscanned.
    Passing,
    /// An immediate response went out; Envoy ends the stream.
    Done,
}

/// The header mutation of a decision (or of no decision: the strip only).
#[derive(Debug, Default)]
struct Routing {
    set: Vec<(HeaderName, HeaderValue)>,
}

impl Routing {
    /// The decision's headers, then the copied body fields whose header the
    /// decision does not set itself.
    fn with_fields(
        mut set: Vec<(HeaderName, HeaderValue)>,
        copied: Vec<(HeaderName, HeaderValue)>,
    ) -> Routing {
        for (name, value) in copied {
            if !set.iter().any(|(n, _)| *n == name) {
                set.push((name, value));
            }
        }
        Routing { set }
    }
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
    /// FULL_DUPLEX_STREAMED: the request headers response is still owed.
    headers_owed: bool,
    /// The decision that went out set headers (or rewrote the body): the
    /// request can no longer pass through unchanged.
    mutated: bool,
    /// Routing headers the client sent, removed from the request.
    strip: Vec<String>,
    content_length: Option<u64>,
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
            headers_owed: false,
            mutated: false,
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
            Some(Request::ResponseHeaders(_)) => out.push(response(Response::ResponseHeaders(
                HeadersResponse::default(),
            ))),
            Some(Request::ResponseBody(b)) => self.on_response_body(b, out),
            Some(Request::ResponseTrailers(_)) => out.push(response(Response::ResponseTrailers(
                TrailersResponse::default(),
            ))),
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
            out.push(response(Response::RequestHeaders(
                HeadersResponse::default(),
            )));
            return;
        }
        if !self.mode_known {
            // Without protocol_config, the response direction follows the
            // configured default like the request direction.
            self.response_mode = self.request_mode;
        }
        let table = self.shared.rules.load();
        let managed = table.managed_headers();
        let mut content_type = None;
        for header in h.headers.iter().flat_map(|m| m.headers.iter()) {
            let key = header.key.as_str();
            let value = header_value(header);
            let owned = managed.iter().any(|m| m.as_str().eq_ignore_ascii_case(key))
                || (self.shared.body_fields.iter())
                    .any(|b| b.header().as_str().eq_ignore_ascii_case(key));
            if owned {
                if !self.strip.iter().any(|s| s.eq_ignore_ascii_case(key)) {
                    self.strip.push(key.to_ascii_lowercase());
                }
            } else if key.eq_ignore_ascii_case("content-type") {
                content_type = std::str::from_utf8(value).ok().map(str::to_owned);
            } else if key.eq_ignore_ascii_case("content-length") {
                self.content_length = std::str::from_utf8(value)
                    .ok()
                    .and_then(|v| v.trim().parse().ok());
            } else if key.eq_ignore_ascii_case(&self.shared.request_key_header) {
                self.request_key = Some(value.to_vec());
            }
        }

        if h.end_of_stream || self.request_mode == BodyMode::None {
            // No body to read: answer at once, removing spoofed headers.
            self.phase = Phase::Passing;
            out.push(self.headers_response(&Routing::default()));
            return;
        }
        match BodyExtractor::new(content_type.as_deref(), self.shared.extractor.clone()) {
            Ok(x) => {
                self.extractor = Some(x);
                self.phase = Phase::Scanning;
                if self.request_mode == BodyMode::FullDuplexStreamed {
                    self.headers_owed = true;
                } else {
                    // BUFFERED and STREAMED wait for this answer before
                    // sending the body; the routing headers go in the body
                    // response.
                    out.push(self.headers_response(&Routing::default()));
                }
            }
            Err(e) => match self.shared.failure.action(e.kind()) {
                FailureAction::Reject => self.reject(&e, out),
                FailureAction::PassThrough => {
                    metrics::fail_open(e.kind().as_str());
                    self.phase = Phase::Passing;
                    out.push(self.headers_response(&Routing::default()));
                }
            },
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
                    if x.needs_scanning() {
                        result = x.feed(&chunk).map(drop);
                    }
                    if result.is_ok() && eos {
                        result = x.finish().map(drop);
                    }
                    if let Err(e) = result
                        && !self.violation(&e, out)
                    {
                        return;
                    }
                }
                self.release(chunk, eos, out);
            }
            Phase::Scanning => {
                let Some(x) = self.extractor.as_mut() else {
                    return;
                };
                // A BUFFERED body message is the whole body, even when
                // trailers follow it.
                let end = eos || self.request_mode == BodyMode::Buffered;
                let mut result = x.feed(&chunk);
                self.held.push(chunk);
                if matches!(result, Ok(bbr_core::Status::Pending)) && !end {
                    return;
                }
                if result.is_ok() && end {
                    result = x.finish().map(|_| bbr_core::Status::Decided);
                }
                match result {
                    Ok(_) => self.decide(eos, out),
                    Err(e) => self.fail_before_decision(&e, eos, out),
                }
            }
        }
    }

    fn on_request_trailers(&mut self, out: &mut Vec<ProcessingResponse>) {
        match self.phase {
            Phase::Done => return,
            Phase::Scanning => {
                // Trailers mean the body is complete.
                let result = match self.extractor.as_mut() {
                    Some(x) => x.finish().map(drop),
                    None => Ok(()),
                };
                match result {
                    Ok(()) => self.decide(false, out),
                    Err(e) => self.fail_before_decision(&e, false, out),
                }
            }
            Phase::Checking => {
                if let Some(Err(e)) = self.extractor.as_mut().map(|x| x.finish().map(drop))
                    && !self.violation(&e, out)
                {
                    return;
                }
                self.phase = Phase::Passing;
            }
            Phase::Start | Phase::Passing => self.flush_owed_headers(out),
        }
        if self.phase != Phase::Done {
            out.push(response(Response::RequestTrailers(
                TrailersResponse::default(),
            )));
        }
    }

    fn on_response_body(&mut self, b: HttpBody, out: &mut Vec<ProcessingResponse>) {
        // Never held: token streams must keep flowing.
        let body = if self.response_mode == BodyMode::FullDuplexStreamed {
            BodyResponse {
                response: Some(streamed(b.body, b.end_of_stream)),
            }
        } else {
            BodyResponse::default()
        };
        out.push(response(Response::ResponseBody(body)));
    }

    /// The body (or its first part) named the model, or ended: route.
    fn decide(&mut self, eos: bool, out: &mut Vec<ProcessingResponse>) {
        let Some(x) = self.extractor.as_ref() else {
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
        for field in self.shared.extractor.get_fields() {
            match extraction.field(field) {
                None => metrics::field_not_found(field),
                Some(FieldValue::String(s)) if s.is_empty() => metrics::field_empty(field),
                Some(_) => {}
            }
        }
        let copied: Vec<(HeaderName, HeaderValue)> = (self.shared.body_fields.iter())
            .filter_map(|b| {
                let value = extraction.field(b.field())?;
                let header = BodyFieldHeader::header_value(value);
                if header.is_none() {
                    tracing::debug!(field = b.field(), "body field not copied: no header value");
                }
                Some((b.header().clone(), header?))
            })
            .collect();
        let Some(model) = extraction.model() else {
            metrics::model_not_in_body();
            match self.shared.failure.missing_model() {
                FailureAction::PassThrough => {
                    self.emit_decision(Routing::with_fields(Vec::new(), copied), None, eos, out)
                }
                FailureAction::Reject => {
                    let e = Error::new(ErrorKind::InvalidModel, 0, "the body names no model");
                    self.reject(&e, out);
                }
            }
            return;
        };
        let model_text = model.as_str().to_owned();
        let span = model.span();
        let is_json = x.is_json();
        let table = self.shared.rules.load();
        match table.decide(&model_text, self.request_key.as_deref()) {
            Ok(Some(decision)) => {
                metrics::success();
                metrics::route_match(decision.rule().unwrap_or(""), decision.pool().unwrap_or(""));
                // STREAMED answers each chunk in place; a splice would not
                // line up with the chunks Envoy waits on.
                let rewrite =
                    (decision.is_rewrite() && is_json && self.request_mode != BodyMode::Streamed)
                        .then(|| (span, json_string(decision.model())));
                let routing = Routing::with_fields(
                    decision
                        .headers()
                        .map(|(name, value)| (name.clone(), value.clone()))
                        .collect(),
                    copied,
                );
                self.emit_decision(routing, rewrite, eos, out);
            }
            Ok(None) => {
                self.emit_decision(Routing::with_fields(Vec::new(), copied), None, eos, out)
            }
            Err(e) => self.fail_before_decision(&e, eos, out),
        }
    }

    /// Sends the routing (headers response or body response, by mode) and
    /// the held chunks, then moves on to checking or passing.
    fn emit_decision(
        &mut self,
        mut routing: Routing,
        rewrite: Option<(std::ops::Range<u64>, Bytes)>,
        eos: bool,
        out: &mut Vec<ProcessingResponse>,
    ) {
        self.mutated = !routing.set.is_empty() || rewrite.is_some();
        let mut held = std::mem::take(&mut self.held);
        if let Some((span, token)) = rewrite
            && let Some(spliced) = splice(&held, span, token)
        {
            {
                held = spliced.chunks;
                if let Some(len) = self.content_length {
                    let new_len = (len as i64 + spliced.len_delta).max(0);
                    if let Ok(v) = HeaderValue::from_str(&new_len.to_string()) {
                        routing.set.push((http::header::CONTENT_LENGTH, v));
                    }
                }
                if self.request_mode == BodyMode::Buffered {
                    let body: Vec<u8> = held.iter().flat_map(|c| c.iter().copied()).collect();
                    let mut common = self.common(&routing);
                    common.body_mutation = Some(BodyMutation {
                        mutation: Some(body_mutation::Mutation::Body(body)),
                    });
                    out.push(response(Response::RequestBody(BodyResponse {
                        response: Some(common),
                    })));
                    self.after_decision();
                    return;
                }
            }
        }
        match self.request_mode {
            BodyMode::FullDuplexStreamed => {
                self.headers_owed = false;
                out.push(self.headers_response(&routing));
                let n = held.len();
                for (i, chunk) in held.into_iter().enumerate() {
                    out.push(response(Response::RequestBody(BodyResponse {
                        response: Some(streamed(chunk.into(), eos && i + 1 == n)),
                    })));
                }
            }
            BodyMode::Buffered | BodyMode::Streamed | BodyMode::None => {
                // One body response per body message received, in order; the
                // first carries the routing.
                for i in 0..held.len().max(1) {
                    let common = if i == 0 {
                        Some(self.common(&routing))
                    } else {
                        None
                    };
                    out.push(response(Response::RequestBody(BodyResponse {
                        response: common,
                    })));
                }
            }
        }
        self.after_decision();
    }

    fn after_decision(&mut self) {
        let scanning = self.extractor.as_ref().is_some_and(|x| x.needs_scanning());
        self.phase = if scanning {
            Phase::Checking
        } else {
            Phase::Passing
        };
    }

    /// An error before the routing went out: reject, or pass without routing.
    fn fail_before_decision(&mut self, e: &Error, eos: bool, out: &mut Vec<ProcessingResponse>) {
        if matches!(
            e.kind(),
            ErrorKind::ModelNotString | ErrorKind::InvalidModel
        ) {
            metrics::model_not_parsed(is_empty_model(e));
        }
        match self.shared.failure.action(e.kind()) {
            FailureAction::Reject => self.reject(e, out),
            FailureAction::PassThrough => {
                metrics::fail_open(e.kind().as_str());
                self.emit_decision(Routing::default(), None, eos, out);
                self.phase = Phase::Passing;
            }
        }
    }

    /// An error in a chunk after the routing went out (strict policy).
    /// Returns whether the chunk may still be released.
    ///
    /// Failing open means passing the request on unchanged. Once headers
    /// were set (or the body rewritten) that is no longer possible: the
    /// request has been routed on a body that turns out bad — a second
    /// `model` would reach a pool chosen by the first — so it is refused
    /// whatever the policy says for the kind.
    fn violation(&mut self, e: &Error, out: &mut Vec<ProcessingResponse>) -> bool {
        match self.shared.failure.action(e.kind()) {
            FailureAction::Reject => {
                self.reject(e, out);
                false
            }
            FailureAction::PassThrough if self.mutated => {
                tracing::debug!(
                    kind = e.kind().as_str(),
                    "fail-open kind found after the routing went out; rejected"
                );
                self.reject(e, out);
                false
            }
            FailureAction::PassThrough => {
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
        out.push(immediate_response(e));
    }

    fn flush_owed_headers(&mut self, out: &mut Vec<ProcessingResponse>) {
        if self.headers_owed {
            self.headers_owed = false;
            out.push(self.headers_response(&Routing::default()));
        }
    }

    fn release(&mut self, chunk: Bytes, eos: bool, out: &mut Vec<ProcessingResponse>) {
        let body = if self.request_mode == BodyMode::FullDuplexStreamed {
            BodyResponse {
                response: Some(streamed(chunk.into(), eos)),
            }
        } else {
            BodyResponse::default()
        };
        out.push(response(Response::RequestBody(body)));
    }

    fn headers_response(&self, routing: &Routing) -> ProcessingResponse {
        let common = self.common(routing);
        let common = (common != CommonResponse::default()).then_some(common);
        response(Response::RequestHeaders(HeadersResponse {
            response: common,
        }))
    }

    /// The mutation: spoofed routing headers removed, decided ones set.
    fn common(&self, routing: &Routing) -> CommonResponse {
        let set_headers: Vec<HeaderValueOption> = routing
            .set
            .iter()
            .map(|(name, value)| HeaderValueOption {
                header: Some(PbHeaderValue {
                    key: name.as_str().to_owned(),
                    value: String::new(),
                    raw_value: value.as_bytes().to_vec(),
                }),
                append_action: HeaderAppendAction::OverwriteIfExistsOrAdd as i32,
                ..Default::default()
            })
            .collect();
        // A header set by the decision replaces the client's; only the
        // others need removing.
        let remove_headers: Vec<String> = self
            .strip
            .iter()
            .filter(|s| !routing.set.iter().any(|(n, _)| n.as_str() == s.as_str()))
            .cloned()
            .collect();
        let changed = !set_headers.is_empty() || !remove_headers.is_empty();
        let header_mutation = changed.then_some(HeaderMutation {
            set_headers,
            remove_headers,
        });
        CommonResponse {
            header_mutation,
            // The route was chosen on the headers Envoy first saw; it must
            // be recomputed whenever they changed.
            clear_route_cache: changed && self.shared.clear_route_cache,
            ..Default::default()
        }
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

fn header_value(h: &PbHeaderValue) -> &[u8] {
    if h.raw_value.is_empty() {
        h.value.as_bytes()
    } else {
        &h.raw_value
    }
}

fn is_empty_model(e: &Error) -> bool {
    e.kind() == ErrorKind::InvalidModel && e.message().contains("empty")
}

fn response(r: Response) -> ProcessingResponse {
    ProcessingResponse {
        response: Some(r),
        ..Default::default()
    }
}

fn streamed(body: Vec<u8>, end_of_stream: bool) -> CommonResponse {
    CommonResponse {
        body_mutation: Some(BodyMutation {
            mutation: Some(body_mutation::Mutation::StreamedResponse(
                StreamedBodyResponse {
                    body,
                    end_of_stream,
                    ..Default::default()
                },
            )),
        }),
        ..Default::default()
    }
}

/// The error contract's answer (DESIGN §4) as an ext_proc immediate response.
pub(crate) fn immediate_response(e: &Error) -> ProcessingResponse {
    let content_type = HeaderValueOption {
        header: Some(PbHeaderValue {
            key: "content-type".to_owned(),
            value: String::new(),
            raw_value: b"application/json".to_vec(),
        }),
        append_action: HeaderAppendAction::OverwriteIfExistsOrAdd as i32,
        ..Default::default()
    };
    response(Response::ImmediateResponse(ImmediateResponse {
        status: Some(HttpStatus {
            code: i32::from(e.status()),
        }),
        headers: Some(HeaderMutation {
            set_headers: vec![content_type],
            remove_headers: Vec::new(),
        }),
        body: e.to_json().into_bytes(),
        grpc_status: None,
        details: format!("bbr_{}", e.kind().as_str()),
    }))
}
