//! One HTTP request as Envoy presents it on a `Process` stream: a pure state
//! machine fed [`ProcessingRequest`]s that appends the [`ProcessingResponse`]s
//! to send back. It does no I/O, so every protocol path is tested message by
//! message without a network (the tests at the end of this file).
//!
//! What happens to a request comes from its [`Session`] (read, hold,
//! decide, release, check, count); this module only follows Envoy's
//! protocol: when each answer is owed, which message carries the routing,
//! how held chunks go back.

use std::{sync::Arc, time::Instant};

use bbr_core::{
    Decider, Error, ExtractorConfig, Verdict,
    rules::{ContentLength, SharedRules},
    session::{HeadScan, Session, Step},
};
use bytes::Bytes;

use crate::{
    inbound::{Chunk, Inbound},
    metrics,
    pb::BodySendMode,
    reply,
    wire::{
        CommonResponse, HttpHeaders, ProcessingResponse, ProtocolConfiguration,
        processing_request::Request, processing_response::Response,
    },
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
    /// Answer `GET /v1/models` from the rule table.
    pub(crate) serve_models: bool,
    /// Where routing decisions are written in Envoy's dynamic metadata.
    pub(crate) metadata: Option<reply::DynamicMetadata>,
    /// The Go router's plugin histograms the decision step is recorded in.
    pub(crate) plugin_histograms: Vec<::metrics::Histogram>,
    /// Starts each request's span; none when tracing is off.
    pub(crate) tracer: Option<crate::otel::RequestTracer>,
    /// The decision metrics, looked up when the processor was built.
    pub(crate) decision_metrics: metrics::DecisionMetrics,
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

pub(crate) struct Exchange {
    shared: Arc<Shared>,
    request_mode: BodyMode,
    response_mode: BodyMode,
    mode_known: bool,
    observability: bool,
    /// The request's routing, from its headers (or its first body message).
    session: Option<Session>,
    /// The model list went out as an immediate response.
    answered: bool,
    /// The chunks held until the verdict (one per body message: an empty
    /// one too, since each is owed a response in BUFFERED and STREAMED).
    held: Vec<Chunk>,
    /// FULL_DUPLEX_STREAMED: the request headers response is still owed.
    headers_owed: bool,
    /// Headers the client sent that it may not send, removed from the request.
    strip: Vec<String>,
    /// The body came with no headers message before it.
    headers_skipped: bool,
    started: Instant,
    span: crate::otel::RequestSpan,
}

/// The answers to one message, in order. A chunk sent back that arrived
/// in pieces is kept apart from its answer, as those pieces, so that it
/// goes out as they came ([`wire::encode_framed_pieces`](crate::wire)).
#[derive(Debug, Default)]
pub(crate) struct Answers {
    answers: Vec<ProcessingResponse>,
    /// (index in `answers`, the pieces of its streamed chunk).
    pieces: Vec<(usize, Vec<Bytes>)>,
}

impl std::ops::Deref for Answers {
    type Target = Vec<ProcessingResponse>;

    fn deref(&self) -> &Vec<ProcessingResponse> {
        &self.answers
    }
}

impl std::ops::DerefMut for Answers {
    fn deref_mut(&mut self) -> &mut Vec<ProcessingResponse> {
        &mut self.answers
    }
}

impl Answers {
    /// Appends a streamed-chunk answer whose chunk, when `pieces` is
    /// given, is those pieces (its own body being empty).
    fn push_chunk(&mut self, answer: ProcessingResponse, pieces: Option<Vec<Bytes>>) {
        if let Some(pieces) = pieces {
            self.pieces.push((self.answers.len(), pieces));
        }
        self.answers.push(answer);
    }

    /// Keeps the first `len` answers.
    pub(crate) fn truncate(&mut self, len: usize) {
        self.answers.truncate(len);
        self.pieces.retain(|(i, _)| *i < len);
    }

    /// Empties it for the next message.
    pub(crate) fn clear(&mut self) {
        self.answers.clear();
        self.pieces.clear();
    }

    /// Takes answer `i` out (a default one is left) with the pieces of its
    /// chunk (none when the chunk, if any, is in the answer).
    pub(crate) fn take(&mut self, i: usize) -> (ProcessingResponse, Vec<Bytes>) {
        let pieces = match self.pieces.iter().position(|(at, _)| *at == i) {
            Some(p) => self.pieces.swap_remove(p).1,
            None => Vec::new(),
        };
        (std::mem::take(&mut self.answers[i]), pieces)
    }

    /// Takes answer `i` out with its chunk joined into it.
    #[cfg(test)]
    pub(crate) fn take_joined(&mut self, i: usize) -> ProcessingResponse {
        let (mut answer, pieces) = self.take(i);
        if !pieces.is_empty() {
            crate::wire::join_streamed(&mut answer, &pieces);
        }
        answer
    }
}

/// The answer sending `chunk` back in `FULL_DUPLEX_STREAMED`, and the
/// chunk's pieces when it is in several (the answer's body then empty).
fn chunk_answer(chunk: Chunk, eos: bool) -> (ProcessingResponse, Option<Vec<Bytes>>) {
    match chunk {
        Chunk::One(bytes) => (reply::request_chunk(bytes, eos), None),
        Chunk::Parts(pieces) => (reply::request_chunk(Bytes::new(), eos), Some(pieces)),
    }
}

impl Exchange {
    pub(crate) fn new(shared: Arc<Shared>) -> Exchange {
        let mode = shared.default_mode;
        Exchange {
            shared,
            request_mode: mode,
            // Without protocol_config, the response direction follows the
            // configured default like the request direction.
            response_mode: mode,
            mode_known: false,
            observability: false,
            session: None,
            answered: false,
            held: Vec::new(),
            headers_owed: false,
            strip: Vec::new(),
            headers_skipped: false,
            started: Instant::now(),
            span: Default::default(),
        }
    }

    /// Handles one message from Envoy, appending the responses to `out`.
    #[cfg(test)]
    pub(crate) fn on_message(
        &mut self,
        msg: crate::wire::ProcessingRequest,
        out: &mut Vec<ProcessingResponse>,
    ) {
        let mut answers = Answers::default();
        self.on_inbound(
            Inbound {
                request: msg,
                parts: None,
            },
            &mut answers,
        );
        out.extend((0..answers.len()).map(|i| answers.take_joined(i)));
    }

    /// Handles one message from Envoy as the reader hands it over (its
    /// body chunk perhaps in pieces), appending the responses to `out`.
    pub(crate) fn on_inbound(&mut self, mut inbound: Inbound, out: &mut Answers) {
        let chunk = inbound.take_chunk();
        let msg = inbound.request;
        if msg.observability_mode {
            self.observability = true;
        }
        if let Some(config) = msg.protocol_config {
            self.learn_modes(config);
        }
        let start = out.len();
        match msg.request {
            Some(Request::RequestHeaders(h)) => self.on_request_headers(h, out),
            Some(Request::RequestBody(b)) => self.on_request_body(chunk, b.end_of_stream, out),
            Some(Request::RequestTrailers(_)) => self.on_request_trailers(out),
            Some(Request::ResponseHeaders(_)) => out.push(reply::response(
                Response::ResponseHeaders(Default::default()),
            )),
            Some(Request::ResponseBody(b)) => self.on_response_body(chunk, b.end_of_stream, out),
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

    /// The session of a request whose table is `table`: STREAMED answers
    /// each chunk in place, so a splice would not line up with the chunks
    /// Envoy waits on.
    fn session(&self, table: Arc<bbr_core::rules::RuleTable>) -> Session {
        let session = Session::new(table);
        match self.request_mode {
            BodyMode::Streamed => session.without_splicing(),
            _ => session,
        }
    }

    fn on_request_headers(&mut self, h: HttpHeaders, out: &mut Answers) {
        if self.session.is_some() || self.answered {
            // A second headers message is a protocol error on Envoy's side;
            // answer it so that the stream does not hang.
            out.push(reply::request_headers(Default::default()));
            return;
        }
        let shared = Arc::clone(&self.shared);
        let table = shared.rules.load();
        let mut scan = HeadScan::new(&shared.request_key_header);
        let mut trace = crate::otel::TraceHeaders::default();
        // The message is ours: header values are moved out, not copied
        // (they are slices of the received message).
        for header in h.headers.into_iter().flat_map(|m| m.headers) {
            // Names are ASCII; one that is not UTF-8 is nothing bbr reads.
            let Ok(key) = std::str::from_utf8(&header.key) else {
                continue;
            };
            let value = if header.raw_value.is_empty() {
                Bytes::from(header.value)
            } else {
                header.raw_value
            };
            if shared.tracer.is_some() && trace.keep(key, &value) {
                continue;
            }
            scan.header(&shared.decider, &table, key, value);
        }
        self.strip = scan.take_stripped();
        self.span = crate::otel::RequestSpan::start(shared.tracer.as_ref(), &trace);
        if shared.serve_models && scan.is_models_request() {
            // The model list, from the table in force, without a round
            // trip to a backend.
            self.answered = true;
            self.span.models();
            out.push(reply::models(table.models_json()));
            return;
        }
        let body = !h.end_of_stream && self.request_mode != BodyMode::None;
        let mut session = self.session(table);
        let step = session.start(&shared.decider, &shared.extractor, &scan.head(), body);
        self.session = Some(session);
        match step {
            Step::Read if self.request_mode == BodyMode::FullDuplexStreamed => {
                self.headers_owed = true;
            }
            // BUFFERED and STREAMED wait for this answer before sending
            // the body; the routing goes in the body response.
            Step::Read => out.push(reply::request_headers(self.strip_only())),
            step => {
                // No body to read, or one bbr does not read: the headers
                // answer carries the verdict (nothing was held).
                self.headers_owed = true;
                self.take_step(step, None, h.end_of_stream, out);
            }
        }
    }

    fn on_request_body(&mut self, chunk: Chunk, eos: bool, out: &mut Answers) {
        if self.answered {
            return;
        }
        if self.session.is_none() {
            // No headers message: Envoy's `request_header_mode: SKIP`.
            self.start_without_headers();
        }
        let Some(session) = self.session.as_mut() else {
            return;
        };
        let reading = session.is_reading();
        // A BUFFERED body message is the whole body, even when trailers
        // follow it.
        let end = eos || (reading && self.request_mode == BodyMode::Buffered);
        let timer = (reading && !self.shared.plugin_histograms.is_empty()).then(Instant::now);
        let step = match &chunk {
            Chunk::One(bytes) => session.chunk(&self.shared.decider, bytes, end),
            Chunk::Parts(parts) => {
                let parts: Vec<&[u8]> = parts.iter().map(|p| &p[..]).collect();
                session.lent_chunk(&self.shared.decider, &parts, end)
            }
        };
        if reading {
            if let (Some(start), Step::Verdict(_)) = (timer, &step) {
                let seconds = start.elapsed().as_secs_f64();
                for histogram in &self.shared.plugin_histograms {
                    histogram.record(seconds);
                }
            }
            self.held.push(chunk);
            self.take_step(step, None, eos, out);
        } else {
            self.take_step(step, Some(chunk), eos, out);
        }
    }

    /// A body with no headers message before it (`request_header_mode:
    /// SKIP`): read as JSON, nothing to strip, no headers answer owed. The
    /// routing goes out with the first body response, which Envoy applies
    /// to the headers it still holds.
    fn start_without_headers(&mut self) {
        self.headers_skipped = true;
        self.span = crate::otel::RequestSpan::start(
            self.shared.tracer.as_ref(),
            &crate::otel::TraceHeaders::default(),
        );
        let mut session = self.session(self.shared.rules.load());
        // Without a content type or coding the JSON extractor is chosen,
        // which cannot refuse the body.
        let step = session.start(
            &self.shared.decider,
            &self.shared.extractor,
            &Default::default(),
            true,
        );
        debug_assert!(matches!(step, Step::Read), "{step:?}");
        self.session = Some(session);
    }

    fn on_request_trailers(&mut self, out: &mut Answers) {
        if self.answered {
            return;
        }
        let step = match self.session.as_mut() {
            // Trailers mean the body is complete.
            Some(session) => session.end(&self.shared.decider),
            None => Step::Release,
        };
        self.take_step(step, None, false, out);
        if !self.session.as_ref().is_some_and(Session::is_done) {
            out.push(reply::request_trailers());
        }
    }

    fn on_response_body(&mut self, chunk: Chunk, eos: bool, out: &mut Answers) {
        // Never held: token streams must keep flowing.
        let chunk =
            (self.response_mode == BodyMode::FullDuplexStreamed).then(|| (chunk.into_bytes(), eos));
        out.push(reply::response_body(chunk));
    }

    /// Translates a session step to Envoy's protocol: `chunk` is the body
    /// message's chunk after the verdict (before it, chunks are held).
    fn take_step(&mut self, step: Step, chunk: Option<Chunk>, eos: bool, out: &mut Answers) {
        let Some(session) = self.session.as_ref() else {
            return;
        };
        let shared = &self.shared;
        session.tally(&shared.decider, &step, |t| {
            shared.decision_metrics.record(t)
        });
        match step {
            Step::Read | Step::Hold | Step::Drop => {}
            Step::Verdict(verdict) => {
                if session.decided_on_body() {
                    let seconds = self.started.elapsed().as_secs_f64();
                    shared
                        .decision_metrics
                        .decided(seconds, session.decided_at());
                }
                self.carry_out(verdict, eos, out);
            }
            Step::Release | Step::ReleaseUnchecked(_) => {
                self.flush_owed_headers(out);
                if let Some(chunk) = chunk {
                    self.release(chunk, eos, out);
                }
            }
            Step::Reject(e) => self.reject(&e, out),
            _ => {}
        }
    }

    /// Sends the verdict (headers response or body response, by mode) and
    /// the held chunks.
    fn carry_out(&mut self, verdict: Verdict, eos: bool, out: &mut Answers) {
        self.span.verdict(&verdict);
        if let Verdict::Reject(e) = &verdict {
            return self.reject(e, out);
        }
        // The first response pushed below carries the routing.
        let first = out.len();
        let mut common = self.common(&verdict);
        let mut held = std::mem::take(&mut self.held);
        let rewrites = matches!(&verdict, Verdict::Route(r) if r.rewrite().is_some());
        let change = self.session.as_ref().filter(|_| rewrites).and_then(|s| {
            let pieces: Vec<Bytes> = held.iter().flat_map(Chunk::parts).cloned().collect();
            s.change_body(&verdict, &pieces)
        });
        if let Some(change) = change {
            held = change.chunks.into_iter().map(Chunk::One).collect();
            match change.content_length {
                Some(ContentLength::Set(len)) => {
                    let mutation = common.header_mutation.get_or_insert_default();
                    mutation.set_headers.push(reply::header_option(
                        "content-length",
                        len.to_string().as_bytes(),
                    ));
                }
                Some(ContentLength::Remove) => {
                    let mutation = common.header_mutation.get_or_insert_default();
                    mutation.remove_headers.push("content-length".to_owned());
                }
                None => {}
            }
            if self.request_mode == BodyMode::Buffered {
                let body = Bytes::from(held.iter().flat_map(Chunk::parts).fold(
                    Vec::new(),
                    |mut body, part| {
                        body.extend_from_slice(part);
                        body
                    },
                ));
                out.push(reply::request_body(Some(reply::with_body(common, body))));
                return self.add_metadata(&verdict, &mut out[first..]);
            }
        }
        if self.headers_skipped && self.request_mode == BodyMode::FullDuplexStreamed {
            // No headers answer is owed: the routing rides on the first
            // chunk sent back.
            let n = held.len();
            let mut common = Some(common);
            for (i, chunk) in held.into_iter().enumerate() {
                let (mut chunk, pieces) = chunk_answer(chunk, eos && i + 1 == n);
                if let (Some(common), Some(Response::RequestBody(b))) =
                    (common.take(), chunk.response.as_mut())
                {
                    let streamed = b.response.get_or_insert_default();
                    streamed.header_mutation = common.header_mutation;
                    streamed.clear_route_cache = common.clear_route_cache;
                }
                out.push_chunk(chunk, pieces);
            }
        } else if self.headers_owed || self.request_mode == BodyMode::FullDuplexStreamed {
            self.headers_owed = false;
            out.push(reply::request_headers(common));
            let n = held.len();
            for (i, chunk) in held.into_iter().enumerate() {
                if self.request_mode == BodyMode::FullDuplexStreamed {
                    let (answer, pieces) = chunk_answer(chunk, eos && i + 1 == n);
                    out.push_chunk(answer, pieces);
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
        self.add_metadata(&verdict, &mut out[first..]);
    }

    /// Adds the dynamic metadata of a route to `sent`'s first response
    /// (the one with the routing).
    fn add_metadata(&self, verdict: &Verdict, sent: &mut [ProcessingResponse]) {
        if let (Some(metadata), Verdict::Route(routing), Some(response)) =
            (&self.shared.metadata, verdict, sent.first_mut())
        {
            let route = routing.route();
            response.dynamic_metadata = Some(metadata.of(route.model(), route.pool()));
        }
    }

    fn reject(&mut self, e: &Error, out: &mut Answers) {
        self.span.rejected(e);
        tracing::debug!(
            kind = e.kind().as_str(),
            offset = e.offset(),
            "request rejected"
        );
        self.held.clear();
        out.push(reply::immediate(e));
    }

    fn flush_owed_headers(&mut self, out: &mut Answers) {
        if self.headers_owed {
            self.headers_owed = false;
            out.push(reply::request_headers(self.strip_only()));
        }
    }

    fn release(&mut self, chunk: Chunk, eos: bool, out: &mut Answers) {
        if self.request_mode == BodyMode::FullDuplexStreamed {
            let (answer, pieces) = chunk_answer(chunk, eos);
            out.push_chunk(answer, pieces);
        } else {
            out.push(reply::request_body(None));
        }
    }

    /// The mutation of a verdict: spoofed headers removed, decided ones set.
    fn common(&self, verdict: &Verdict) -> CommonResponse {
        reply::common(Some(verdict), &self.strip, self.shared.clear_route_cache)
    }

    /// The mutation before a verdict: spoofed headers removed only.
    fn strip_only(&self) -> CommonResponse {
        reply::common(None, &self.strip, self.shared.clear_route_cache)
    }
}

impl std::fmt::Debug for Exchange {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Exchange")
            .field("request_mode", &self.request_mode)
            .field("session", &self.session)
            .field("held", &self.held.len())
            .finish_non_exhaustive()
    }
}

#[cfg(test)]
mod tests {
    //! The protocol driven message by message, with no network.

    use super::*;
    use crate::wire::{
        HeaderMap, HeaderValue as PbHeaderValue, HttpBody, HttpTrailers, ProcessingRequest,
        body_mutation::Mutation as BodyMut,
    };
    use bbr_core::{ErrorKind, FailureAction, FailurePolicy, rules::RuleTable};

    fn shared(mode: BodyMode, rules: Option<&str>, failure: FailurePolicy) -> Arc<Shared> {
        let table = rules.map_or_else(RuleTable::empty, |r| RuleTable::from_yaml(r).unwrap());
        Arc::new(Shared {
            extractor: ExtractorConfig::new(),
            decider: Decider::new().with_failure_policy(failure),
            rules: SharedRules::new(table),
            default_mode: mode,
            clear_route_cache: true,
            request_key_header: "x-request-id".to_owned(),
            serve_models: false,
            metadata: None,
            plugin_histograms: Vec::new(),
            tracer: None,
            decision_metrics: metrics::DecisionMetrics::noop(),
        })
    }

    fn exchange(mode: BodyMode) -> Exchange {
        Exchange::new(shared(mode, None, FailurePolicy::new()))
    }

    fn headers(x: &mut Exchange, headers: &[(&str, &str)], eos: bool) -> Vec<Response> {
        let h = HttpHeaders {
            headers: Some(HeaderMap {
                headers: headers
                    .iter()
                    .map(|(k, v)| PbHeaderValue {
                        key: Bytes::copy_from_slice(k.as_bytes()),
                        raw_value: Bytes::copy_from_slice(v.as_bytes()),
                        ..Default::default()
                    })
                    .collect(),
            }),
            end_of_stream: eos,
        };
        send(x, Request::RequestHeaders(h))
    }

    fn body(x: &mut Exchange, chunk: &[u8], eos: bool) -> Vec<Response> {
        let b = HttpBody {
            body: Bytes::copy_from_slice(chunk),
            end_of_stream: eos,
        };
        send(x, Request::RequestBody(b))
    }

    fn send(x: &mut Exchange, request: Request) -> Vec<Response> {
        let mut out = Vec::new();
        let msg = ProcessingRequest {
            request: Some(request),
            ..Default::default()
        };
        x.on_message(msg, &mut out);
        out.into_iter().filter_map(|r| r.response).collect()
    }

    fn common(r: &Response) -> CommonResponse {
        match r {
            Response::RequestHeaders(h) => h.response.clone().unwrap_or_default(),
            Response::RequestBody(b) => b.response.clone().unwrap_or_default(),
            other => panic!("{other:?}"),
        }
    }

    fn set(r: &Response) -> Vec<(String, String)> {
        let mutation = common(r).header_mutation.unwrap_or_default();
        mutation
            .set_headers
            .iter()
            .filter_map(|h| h.header.as_ref())
            .map(|h| {
                (
                    String::from_utf8_lossy(&h.key).into_owned(),
                    String::from_utf8_lossy(&h.raw_value).into_owned(),
                )
            })
            .collect()
    }

    fn removed(r: &Response) -> Vec<String> {
        common(r).header_mutation.unwrap_or_default().remove_headers
    }

    fn streamed(r: &Response) -> (Vec<u8>, bool) {
        match common(r).body_mutation.and_then(|m| m.mutation) {
            Some(BodyMut::StreamedResponse(s)) => (s.body.to_vec(), s.end_of_stream),
            other => panic!("{other:?}"),
        }
    }

    fn immediate(r: &Response) -> (i32, serde_json::Value) {
        let Response::ImmediateResponse(i) = r else {
            panic!("{r:?}")
        };
        let code = i.status.as_ref().map_or(0, |s| s.code);
        (code, serde_json::from_slice(&i.body).unwrap())
    }

    const JSON: (&str, &str) = ("content-type", "application/json");

    #[test]
    fn full_duplex_holds_the_headers_answer_until_the_model_then_the_chunks() {
        let mut x = exchange(BodyMode::FullDuplexStreamed);
        assert!(headers(&mut x, &[JSON], false).is_empty());
        assert!(body(&mut x, br#"{"messages":[],"mod"#, false).is_empty());
        let out = body(&mut x, br#"el":"chatbot","n":1"#, false);
        assert_eq!(out.len(), 3, "{out:?}");
        assert_eq!(
            set(&out[0]),
            [("x-gateway-model-name".to_owned(), "chatbot".to_owned())]
        );
        assert!(common(&out[0]).clear_route_cache);
        assert_eq!(
            streamed(&out[1]),
            (br#"{"messages":[],"mod"#.to_vec(), false)
        );
        assert_eq!(
            streamed(&out[2]),
            (br#"el":"chatbot","n":1"#.to_vec(), false)
        );
        // Checked, then released one for one.
        let out = body(&mut x, b"}", true);
        assert_eq!(out.len(), 1);
        assert_eq!(streamed(&out[0]), (b"}".to_vec(), true));
    }

    /// A body message whose chunk came in pieces (it spanned HTTP/2
    /// frames): read as the joined chunk, and sent back in full duplex as
    /// those pieces, not a copy.
    #[test]
    fn a_chunk_in_pieces_is_read_whole_and_sent_back_as_its_pieces() {
        let pieces = |parts: &[&'static [u8]]| -> Vec<Bytes> {
            parts.iter().map(|p| Bytes::from_static(p)).collect()
        };
        let body_message = |parts: Vec<Bytes>, eos: bool| Inbound {
            request: ProcessingRequest {
                request: Some(Request::RequestBody(HttpBody {
                    body: Bytes::new(),
                    end_of_stream: eos,
                })),
                ..Default::default()
            },
            parts: Some(parts),
        };
        // Full duplex: the model lies across the pieces of the first chunk.
        let mut x = exchange(BodyMode::FullDuplexStreamed);
        assert!(headers(&mut x, &[JSON], false).is_empty());
        let first = pieces(&[br#"{"messages":[],"mo"#, br#"del":"chat"#, br#"bot","n":1"#]);
        let mut out = Answers::default();
        x.on_inbound(body_message(first.clone(), false), &mut out);
        assert_eq!(out.len(), 2, "{:?}", *out);
        assert_eq!(
            set(out[0].response.as_ref().unwrap()),
            [("x-gateway-model-name".to_owned(), "chatbot".to_owned())]
        );
        let (answer, sent) = out.take(1);
        assert_eq!(
            streamed(answer.response.as_ref().unwrap()),
            (Vec::new(), false)
        );
        assert_eq!(sent.len(), first.len());
        for (sent, piece) in sent.iter().zip(&first) {
            assert_eq!(sent.as_ptr(), piece.as_ptr(), "a piece was copied");
        }
        // After the verdict: checked, and sent back as its pieces too.
        let last = pieces(&[b"", b"}"]);
        let mut out = Answers::default();
        x.on_inbound(body_message(last, true), &mut out);
        let (answer, sent) = out.take(0);
        assert_eq!(
            streamed(answer.response.as_ref().unwrap()),
            (Vec::new(), true)
        );
        assert_eq!(sent.concat(), b"}");

        // BUFFERED: the whole body in pieces, routed; a bad one refused.
        let mut x = exchange(BodyMode::Buffered);
        headers(&mut x, &[JSON], false);
        let mut out = Answers::default();
        x.on_inbound(
            body_message(pieces(&[br#"{"model":"cha"#, br#"tbot"}"#]), true),
            &mut out,
        );
        assert_eq!(out.len(), 1);
        assert_eq!(
            set(out[0].response.as_ref().unwrap()),
            [("x-gateway-model-name".to_owned(), "chatbot".to_owned())]
        );
        let mut x = exchange(BodyMode::Buffered);
        headers(&mut x, &[JSON], false);
        let mut out = Answers::default();
        x.on_inbound(
            body_message(pieces(&[br#"{"model":"cha"#, br#"tbot",}"#]), true),
            &mut out,
        );
        assert!(matches!(
            out[0].response,
            Some(Response::ImmediateResponse(_))
        ));
    }

    /// The routing response carries the decision as dynamic metadata, in
    /// both modes; nothing else does, and a request no rule routes has none.
    #[test]
    fn dynamic_metadata_rides_on_the_routing_response() {
        use crate::wire::{Struct, value::Kind};
        fn field<'a>(s: &'a Struct, key: &str) -> Option<&'a Kind> {
            s.fields.get(key).and_then(|v| v.kind.as_ref())
        }
        let rules =
            "rules:\n  - name: chat\n    match: { model: { exact: chatbot } }\n    pool: gemma3\n";
        for mode in [BodyMode::FullDuplexStreamed, BodyMode::Buffered] {
            let mut shared = shared(mode, Some(rules), FailurePolicy::new());
            Arc::get_mut(&mut shared).unwrap().metadata =
                Some(reply::DynamicMetadata::new("envoy.lb").pool_key("backend"));
            let mut x = Exchange::new(shared);
            let mut out = Vec::new();
            let message = |request| ProcessingRequest {
                request: Some(request),
                ..Default::default()
            };
            let h = HttpHeaders {
                headers: Some(HeaderMap {
                    headers: vec![PbHeaderValue {
                        key: Bytes::from_static(b"content-type"),
                        raw_value: Bytes::from_static(b"application/json"),
                        ..Default::default()
                    }],
                }),
                ..Default::default()
            };
            x.on_message(message(Request::RequestHeaders(h)), &mut out);
            let b = HttpBody {
                body: Bytes::from_static(br#"{"model":"chatbot"}"#),
                end_of_stream: true,
            };
            x.on_message(message(Request::RequestBody(b)), &mut out);
            let with: Vec<&Struct> = out
                .iter()
                .filter_map(|r| r.dynamic_metadata.as_ref())
                .collect();
            assert_eq!(with.len(), 1, "{mode:?}: {out:?}");
            let Some(Kind::StructValue(lb)) = field(with[0], "envoy.lb") else {
                panic!("{mode:?}: {with:?}")
            };
            assert_eq!(
                field(lb, "model"),
                Some(&Kind::StringValue("chatbot".into()))
            );
            assert_eq!(
                field(lb, "backend"),
                Some(&Kind::StringValue("gemma3".into()))
            );
            // The one that carries it is the one that sets the header.
            let routing = out.iter().find(|r| r.dynamic_metadata.is_some()).unwrap();
            let r = routing.response.as_ref().unwrap();
            assert_eq!(set(r)[0].1, "chatbot", "{mode:?}");
        }
    }

    /// `request_header_mode: SKIP`: the body comes with no headers message
    /// before it, and is routed all the same, in every body mode.
    #[test]
    fn a_body_without_a_headers_message_is_routed() {
        // BUFFERED: one body response, with the routing.
        let mut x = exchange(BodyMode::Buffered);
        let out = body(&mut x, br#"{"model":"chatbot"}"#, true);
        assert_eq!(out.len(), 1, "{out:?}");
        assert!(matches!(out[0], Response::RequestBody(_)));
        assert_eq!(set(&out[0])[0].1, "chatbot");
        assert!(common(&out[0]).clear_route_cache);

        // STREAMED: one body response per chunk, the first with the routing.
        let mut x = exchange(BodyMode::Streamed);
        assert!(body(&mut x, br#"{"messages":[],"#, false).is_empty());
        let out = body(&mut x, br#""model":"chatbot"}"#, true);
        assert_eq!(out.len(), 2, "{out:?}");
        assert_eq!(set(&out[0])[0].1, "chatbot");
        assert!(common(&out[1]).header_mutation.is_none());

        // FULL_DUPLEX_STREAMED: no headers response (Envoy asked for none);
        // the first chunk sent back carries the routing.
        let mut x = exchange(BodyMode::FullDuplexStreamed);
        assert!(body(&mut x, br#"{"messages":[],"#, false).is_empty());
        let out = body(&mut x, br#""model":"chatbot""#, false);
        assert_eq!(out.len(), 2, "{out:?}");
        assert!(out.iter().all(|r| matches!(r, Response::RequestBody(_))));
        assert_eq!(set(&out[0])[0].1, "chatbot");
        assert!(common(&out[0]).clear_route_cache);
        assert_eq!(streamed(&out[0]), (br#"{"messages":[],"#.to_vec(), false));
        assert!(set(&out[1]).is_empty());
        // Checked and released as the rest comes.
        let out = body(&mut x, b"}", true);
        assert_eq!(streamed(&out[0]), (b"}".to_vec(), true));

        // Errors are answered as they are after headers.
        let mut x = exchange(BodyMode::FullDuplexStreamed);
        let out = body(&mut x, br#"{"model":1}"#, true);
        assert_eq!(immediate(&out[0]).0, 400);
    }

    #[test]
    fn a_duplicate_after_the_routing_went_out_is_an_immediate_400() {
        let mut x = exchange(BodyMode::FullDuplexStreamed);
        headers(&mut x, &[JSON], false);
        assert_eq!(body(&mut x, br#"{"model":"a","#, false).len(), 2);
        let out = body(&mut x, br#""model":"b"}"#, true);
        assert_eq!(out.len(), 1);
        let (status, reply) = immediate(&out[0]);
        assert_eq!(status, 400);
        assert_eq!(reply["error"]["code"], "duplicate_model");
        // Nothing more is answered once the request is refused.
        assert!(body(&mut x, b" ", true).is_empty());
    }

    #[test]
    fn an_empty_body_passes_unrouted_in_every_framing() {
        // Chunked: headers without end of stream, then one empty chunk.
        for mode in [BodyMode::FullDuplexStreamed, BodyMode::Buffered] {
            let mut x = Exchange::new(shared(
                mode,
                None,
                FailurePolicy::new().on_missing_model(FailureAction::Reject),
            ));
            let mut out = headers(&mut x, &[JSON, ("x-gateway-model-name", "evil")], false);
            out.extend(body(&mut x, b"", true));
            assert!(
                out.iter()
                    .all(|r| !matches!(r, Response::ImmediateResponse(_))),
                "{mode:?}: {out:?}"
            );
            assert!(set(&out[0]).is_empty());
            assert_eq!(removed(&out[0]), ["x-gateway-model-name"]);
        }
    }

    #[test]
    fn header_only_requests_are_answered_at_once_and_stripped() {
        let mut x = exchange(BodyMode::FullDuplexStreamed);
        let out = headers(
            &mut x,
            &[
                ("X-Gateway-Model-Name", "evil"),
                ("x-gateway-inference-objective", "chatbot-objective"),
                ("accept", "*/*"),
            ],
            true,
        );
        assert_eq!(out.len(), 1);
        assert_eq!(removed(&out[0]), ["x-gateway-model-name"]);
    }

    #[test]
    fn buffered_routes_in_the_body_response_and_rewrites_with_the_length_rule() {
        let rules = "rules: [{name: c, match: {model: {exact: chat}}, pool: p, targets: [{model: gemma-3, weight: 1}]}]";
        let mut x = Exchange::new(shared(
            BodyMode::Buffered,
            Some(rules),
            FailurePolicy::new(),
        ));
        let out = headers(&mut x, &[JSON, ("content-length", "22")], false);
        assert_eq!(out.len(), 1, "the headers are answered before the body");
        let out = body(&mut x, br#"{"model":"chat","n":1}"#, true);
        assert_eq!(out.len(), 1);
        let sets = set(&out[0]);
        assert!(
            sets.contains(&("content-length".to_owned(), "25".to_owned())),
            "{sets:?}"
        );
        assert!(sets.contains(&("x-gateway-inference-pool".to_owned(), "p".to_owned())));
        let Some(BodyMut::Body(new)) = common(&out[0]).body_mutation.and_then(|m| m.mutation)
        else {
            panic!("{out:?}")
        };
        assert_eq!(&new[..], br#"{"model":"gemma-3","n":1}"#);

        // A content-length that is not a length is removed, not kept.
        let mut x = Exchange::new(shared(
            BodyMode::Buffered,
            Some(rules),
            FailurePolicy::new(),
        ));
        headers(&mut x, &[JSON, ("content-length", "x")], false);
        let out = body(&mut x, br#"{"model":"chat","n":1}"#, true);
        assert!(removed(&out[0]).contains(&"content-length".to_owned()));
    }

    #[test]
    fn errors_before_the_routing_are_refused_or_passed_by_policy() {
        let mut x = exchange(BodyMode::FullDuplexStreamed);
        headers(&mut x, &[JSON], false);
        let out = body(&mut x, br#"{"model":1}"#, true);
        let (status, reply) = immediate(&out[0]);
        assert_eq!(
            (status, reply["error"]["code"].as_str()),
            (400, Some("model_not_string"))
        );

        let open = FailurePolicy::new().on(ErrorKind::ModelNotString, FailureAction::PassThrough);
        let mut x = Exchange::new(shared(BodyMode::FullDuplexStreamed, None, open));
        headers(&mut x, &[JSON], false);
        let out = body(&mut x, br#"{"model":1}"#, true);
        assert_eq!(out.len(), 2, "{out:?}");
        assert!(set(&out[0]).is_empty());
        assert_eq!(streamed(&out[1]), (br#"{"model":1}"#.to_vec(), true));

        // A content type bbr does not read: 415 at the headers.
        let mut x = exchange(BodyMode::FullDuplexStreamed);
        let out = headers(&mut x, &[("content-type", "text/plain")], false);
        assert_eq!(immediate(&out[0]).0, 415);
    }

    #[test]
    fn the_model_list_is_an_immediate_answer_when_served() {
        let rules = "rules: [{name: c, match: {model: {exact: chatbot}}, pool: gemma3}]\ndefault: {action: reject}";
        let mut served = shared(
            BodyMode::FullDuplexStreamed,
            Some(rules),
            FailurePolicy::new(),
        );
        Arc::get_mut(&mut served).unwrap().serve_models = true;
        let get = [(":method", "GET"), (":path", "/v1/models?x=1")];
        let out = headers(&mut Exchange::new(Arc::clone(&served)), &get, true);
        let (status, list) = immediate(&out[0]);
        assert_eq!(status, 200);
        assert_eq!(list["data"][0]["id"], "chatbot");
        assert_eq!(list["data"][0]["owned_by"], "gemma3");
        // Other paths and methods go on; and nothing is served unless asked.
        let post = [(":method", "POST"), (":path", "/v1/models")];
        let out = headers(&mut Exchange::new(Arc::clone(&served)), &post, true);
        assert!(matches!(out[0], Response::RequestHeaders(_)));
        let out = headers(&mut exchange(BodyMode::FullDuplexStreamed), &get, true);
        assert!(matches!(out[0], Response::RequestHeaders(_)));
    }

    #[test]
    fn trailers_end_the_body_and_come_last() {
        let mut x = exchange(BodyMode::FullDuplexStreamed);
        headers(&mut x, &[JSON], false);
        assert!(body(&mut x, br#"{"messages":[]"#, false).is_empty());
        let mut out = body(&mut x, br#","model":"m"}"#, false);
        out.extend(send(
            &mut x,
            Request::RequestTrailers(HttpTrailers::default()),
        ));
        assert!(
            matches!(out.last(), Some(Response::RequestTrailers(_))),
            "{out:?}"
        );
        assert_eq!(set(&out[0])[0].1, "m");
    }

    fn gzip(body: &[u8]) -> Vec<u8> {
        use std::io::Write;
        let mut e = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
        e.write_all(body).unwrap();
        e.finish().unwrap()
    }

    #[test]
    fn a_gzip_body_routes_and_its_chunks_go_back_unchanged() {
        let rules = "rules: [{name: c, match: {model: {exact: chat}}, pool: p, targets: [{model: gemma-3, weight: 1}]}]";
        let mut x = Exchange::new(shared(
            BodyMode::FullDuplexStreamed,
            Some(rules),
            FailurePolicy::new(),
        ));
        let plain = br#"{"messages":[{"role":"user","content":"hi"}],"model":"chat","n":1}"#;
        let compressed = gzip(plain);
        let length = compressed.len().to_string();
        let encoded = [
            JSON,
            ("content-encoding", "gzip"),
            ("content-length", &length),
        ];
        assert!(headers(&mut x, &encoded, false).is_empty());
        let (first, rest) = compressed.split_at(compressed.len() / 2);
        let (second, last) = rest.split_at(rest.len() - 3);
        let mut out = body(&mut x, first, false);
        out.extend(body(&mut x, second, false));
        // The model decoded: the headers answer and the held chunks go out.
        assert_eq!(out.len(), 3, "{out:?}");
        let sets = set(&out[0]);
        assert!(sets.contains(&("x-gateway-model-name".to_owned(), "chat".to_owned())));
        assert!(sets.contains(&("x-gateway-inference-pool".to_owned(), "p".to_owned())));
        // Not rewritten: no new length, no body mutation but the chunks.
        assert!(sets.iter().all(|(k, _)| k != "content-length"), "{sets:?}");
        assert_eq!(streamed(&out[1]), (first.to_vec(), false));
        assert_eq!(streamed(&out[2]), (second.to_vec(), false));
        // The gzip trailer: checked, then released as it came.
        let out = body(&mut x, last, true);
        assert_eq!(out.len(), 1);
        assert_eq!(streamed(&out[0]), (last.to_vec(), true));
    }

    #[test]
    fn compressed_bodies_bbr_cannot_read_are_refused() {
        // A corrupt stream: 400 invalid_encoding.
        let mut x = exchange(BodyMode::FullDuplexStreamed);
        headers(&mut x, &[JSON, ("content-encoding", "gzip")], false);
        let out = body(&mut x, br#"{"model":"chat"}"#, true);
        let (status, reply) = immediate(&out[0]);
        assert_eq!(
            (status, reply["error"]["code"].as_str()),
            (400, Some("invalid_encoding"))
        );

        // A bomb: 413 once the body expands past the cap.
        let mut x = exchange(BodyMode::FullDuplexStreamed);
        headers(&mut x, &[JSON, ("content-encoding", "gzip")], false);
        let mut bomb = b"{".to_vec();
        bomb.resize(64 << 20, b' ');
        let out = body(&mut x, &gzip(&bomb), false);
        let (status, reply) = immediate(&out[0]);
        assert_eq!(
            (status, reply["error"]["code"].as_str()),
            (413, Some("too_large"))
        );

        // Unknown codings, several lines of codings, other charsets: 415 at the headers.
        for sent in [
            &[JSON, ("content-encoding", "compress")][..],
            &[
                JSON,
                ("content-encoding", "gzip"),
                ("content-encoding", "br"),
            ],
            &[("content-type", "application/json; charset=utf-16")],
        ] {
            let mut x = exchange(BodyMode::FullDuplexStreamed);
            let out = headers(&mut x, sent, false);
            assert_eq!(immediate(&out[0]).0, 415, "{sent:?}");
        }
    }
}
