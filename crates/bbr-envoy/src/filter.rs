//! One HTTP request as the Envoy filter sees it: a state machine driven by
//! Envoy's decoder events (headers, each body chunk, trailers), acting on
//! the stream through the [`Stream`] trait. It holds no pointer into Envoy
//! and does no I/O, so every path is unit-tested without Envoy (the tests
//! at the end of this file); `abi.rs` implements [`Stream`] with Envoy's
//! callbacks.
//!
//! What happens to a request comes from its
//! [`Session`](bbr_core::session::Session); this module only follows
//! Envoy's filter protocol. Before the verdict each chunk is left in
//! Envoy's buffer (`StopIterationAndBuffer`), with the headers held. At the
//! verdict the routing headers are set, a rewrite is spliced into the held
//! body, the route cache is cleared, and the held data goes on
//! (`Continue`). After it, with the strict policy, each chunk is checked as
//! it passes; a violation ends the request with the error contract's local
//! reply.

use std::{
    sync::Arc,
    time::{Duration, Instant},
};

pub(crate) use bbr_core::session::Tally;
use bbr_core::{
    Error, Verdict,
    rules::ContentLength,
    session::{HeadScan, Session, Step},
};
use bytes::Bytes;

use crate::config::Settings;

/// What the filter asks of the Envoy stream it runs on.
pub(crate) trait Stream {
    /// Calls `f` with the name and value of each request header.
    fn for_each_request_header(&mut self, f: &mut dyn FnMut(&[u8], &[u8]));
    /// Sets a request header, replacing every value it had.
    fn set_request_header(&mut self, name: &str, value: &[u8]);
    /// Removes a request header, every value of it.
    fn remove_request_header(&mut self, name: &str);
    /// Makes Envoy pick the route again on the changed headers.
    fn clear_route_cache(&mut self);
    /// Makes sure Envoy may buffer at least `bytes` of request body for
    /// this stream before it answers 413 itself.
    fn reserve_request_buffer(&mut self, bytes: u64);
    /// Ends the request with a local reply.
    fn send_local_reply(&mut self, reply: &LocalReply);
    /// Calls `f` once with this body event's chunk, in the parts Envoy
    /// holds it in, read where they lie: they are valid while `f` runs
    /// only (none when Envoy has no body to give).
    fn read_received_body(&mut self, f: &mut dyn FnMut(&[&[u8]]));
    /// The request body Envoy holds, from its first byte, copied: the
    /// buffered chunks, then (`with_received`, in a body event) this
    /// event's chunk. Only a rewrite asks for it.
    fn held_request_body(&mut self, with_received: bool) -> Vec<Bytes>;
    /// Replaces the request body Envoy holds (what
    /// [`held_request_body`](Stream::held_request_body) returns with the
    /// same `with_received`) by `body`. Returns whether Envoy took it.
    fn replace_held_request_body(&mut self, body: &[Bytes], with_received: bool) -> bool;
    /// Counts one event in Envoy's stats.
    fn count(&mut self, tally: Tally<'_>);
    /// Records a decision made on the body: `elapsed` since the request
    /// headers, and the body `bytes` read up to it.
    fn decided(&mut self, elapsed: Duration, bytes: u64);
}

/// A reply the filter sends in place of the upstream's.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct LocalReply {
    pub(crate) status: u16,
    pub(crate) headers: Vec<(&'static str, String)>,
    pub(crate) body: String,
    /// Envoy's response code details (access logs): `bbr_<code>`.
    pub(crate) details: String,
}

impl LocalReply {
    /// The error contract's answer: the status, body and content type of
    /// the table in `bbr-core`, as every adapter answers.
    pub(crate) fn error(e: &Error) -> LocalReply {
        let headers = e
            .response_headers()
            .map(|(name, value)| (name, String::from_utf8_lossy(value.as_bytes()).into_owned()))
            .collect();
        LocalReply {
            status: e.status(),
            headers,
            body: e.to_json(),
            details: format!("bbr_{}", e.kind().as_str()),
        }
    }

    fn models(list: String) -> LocalReply {
        LocalReply {
            status: 200,
            headers: vec![("content-type", "application/json".to_owned())],
            body: list,
            details: "bbr_models".to_owned(),
        }
    }
}

/// What to tell Envoy after the request headers.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum HeadersStatus {
    /// Go on (`Continue`).
    Continue,
    /// Hold the headers (`StopIteration`): the body decides.
    Stop,
}

/// What to tell Envoy after a request body chunk.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum BodyStatus {
    /// Release what is held and this chunk (`Continue`).
    Continue,
    /// Keep this chunk with the held ones (`StopIterationAndBuffer`).
    Buffer,
    /// Release nothing (`StopIterationNoBuffer`): the request was answered.
    Drop,
}

/// What to tell Envoy after the request trailers.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum TrailersStatus {
    /// Go on (`Continue`).
    Continue,
    /// Release nothing (`StopIteration`): the request was answered.
    Stop,
}

/// The filter of one request.
#[derive(Debug)]
pub(crate) struct RequestFilter {
    settings: Arc<Settings>,
    /// The request's routing, from its headers on.
    session: Option<Session>,
    /// When the body's reading started (the request headers came): the
    /// decision latency is measured from there.
    started: Option<Instant>,
    /// The model list went out as a local reply.
    answered: bool,
    /// The client's headers were stripped (the route cache must be cleared
    /// even when the verdict sets nothing).
    stripped: bool,
}

impl RequestFilter {
    pub(crate) fn new(settings: Arc<Settings>) -> RequestFilter {
        RequestFilter {
            settings,
            session: None,
            started: None,
            answered: false,
            stripped: false,
        }
    }

    /// Whether the next body chunk is read or checked.
    #[cfg(test)]
    fn wants_body(&self) -> bool {
        self.session.as_ref().is_some_and(Session::wants_body)
    }

    pub(crate) fn on_request_headers(
        &mut self,
        stream: &mut impl Stream,
        end_of_stream: bool,
    ) -> HeadersStatus {
        if self.session.is_some() || self.answered {
            return HeadersStatus::Continue;
        }
        let settings = Arc::clone(&self.settings);
        let table = settings.rules.load();
        let mut scan = HeadScan::new(&settings.request_key_header);
        stream.for_each_request_header(&mut |name, value| {
            // Names are ASCII; one that is not UTF-8 is nothing bbr reads.
            if let Ok(name) = std::str::from_utf8(name) {
                scan.header(&settings.decider, &table, name, value);
            }
        });
        // Spoofed headers go before anything else, routed or not.
        for name in scan.stripped() {
            stream.remove_request_header(name);
        }
        self.stripped = !scan.stripped().is_empty();

        if settings.serve_models && scan.is_models_request() {
            self.answered = true;
            stream.send_local_reply(&LocalReply::models(table.models_json()));
            return HeadersStatus::Stop;
        }
        let mut session = Session::new(table);
        let step = session.start(
            &settings.decider,
            &settings.extractor,
            &scan.head(),
            !end_of_stream,
        );
        self.session = Some(session);
        if let Step::Read = step {
            self.started = Some(Instant::now());
            // The chunks up to the model wait in Envoy's buffer.
            stream.reserve_request_buffer(settings.extractor.max_body());
            return HeadersStatus::Stop;
        }
        match self.take(stream, step, false) {
            true => HeadersStatus::Continue,
            false => HeadersStatus::Stop,
        }
    }

    pub(crate) fn on_request_body(
        &mut self,
        stream: &mut impl Stream,
        end_of_stream: bool,
    ) -> BodyStatus {
        if self.answered {
            return BodyStatus::Drop;
        }
        let Some(session) = self.session.as_mut() else {
            return BodyStatus::Continue;
        };
        let decider = &self.settings.decider;
        // The chunk is scanned in Envoy's buffer; the session copies what
        // it keeps (the model), nothing else. A chunk the session no
        // longer reads is not even looked up.
        let mut step = None;
        match session.wants_body() {
            true => stream.read_received_body(&mut |parts| {
                step = Some(session.lent_chunk(decider, parts, end_of_stream));
            }),
            false => step = Some(session.lent_chunk(decider, &[], end_of_stream)),
        }
        let step = step.unwrap_or_else(|| session.lent_chunk(decider, &[], end_of_stream));
        match step {
            Step::Hold => BodyStatus::Buffer,
            step => match self.take(stream, step, true) {
                true => BodyStatus::Continue,
                false => BodyStatus::Drop,
            },
        }
    }

    pub(crate) fn on_request_trailers(&mut self, stream: &mut impl Stream) -> TrailersStatus {
        if self.answered {
            return TrailersStatus::Stop;
        }
        // Trailers mean the body is complete.
        let step = match self.session.as_mut() {
            Some(session) => session.end(&self.settings.decider),
            None => Step::Release,
        };
        match self.take(stream, step, false) {
            true => TrailersStatus::Continue,
            false => TrailersStatus::Stop,
        }
    }

    /// Translates a session step to the stream (in a body event when
    /// `in_body`). Returns whether the request goes on.
    fn take(&mut self, stream: &mut impl Stream, step: Step, in_body: bool) -> bool {
        let Some(session) = self.session.as_ref() else {
            return true;
        };
        let settings = &self.settings;
        session.tally(&settings.decider, &step, |t| stream.count(t));
        // A decision on the body, as the ext_proc server records it.
        if let Step::Verdict(_) = step
            && session.decided_on_body()
            && let Some(started) = self.started
        {
            stream.decided(started.elapsed(), session.decided_at());
        }
        match step {
            Step::Verdict(Verdict::Reject(e)) | Step::Reject(e) => {
                stream.send_local_reply(&LocalReply::error(&e));
                false
            }
            Step::Verdict(verdict) => {
                if let Verdict::Route(routing) = &verdict
                    && routing.rewrite().is_some()
                {
                    rewrite(stream, session, &verdict, in_body);
                }
                for (name, value) in verdict.headers() {
                    stream.set_request_header(name.as_str(), value.as_bytes());
                }
                if (verdict.changes_request() || self.stripped) && settings.clear_route_cache {
                    stream.clear_route_cache();
                }
                true
            }
            Step::Drop => false,
            _ => true,
        }
    }
}

/// Splices the rule's target model into the body Envoy holds, and fixes
/// `Content-Length` by the one rule every adapter follows.
fn rewrite(stream: &mut impl Stream, session: &Session, verdict: &Verdict, in_body: bool) {
    let held = stream.held_request_body(in_body);
    let Some(change) = session.change_body(verdict, &held) else {
        return;
    };
    if !stream.replace_held_request_body(&change.chunks, in_body) {
        return;
    }
    match change.content_length {
        Some(ContentLength::Set(len)) => {
            stream.set_request_header("content-length", len.to_string().as_bytes());
        }
        Some(ContentLength::Remove) => stream.remove_request_header("content-length"),
        None => {}
    }
}

#[cfg(test)]
mod tests {
    //! The filter driven event by event, against a recording stream.

    use super::*;
    use crate::config::Settings;

    /// What the filter did to the stream.
    #[derive(Debug, Default)]
    struct Recorder {
        headers: Vec<(String, String)>,
        set: Vec<(String, String)>,
        removed: Vec<String>,
        route_cache_cleared: usize,
        reserved: Option<u64>,
        reply: Option<LocalReply>,
        /// Envoy's buffered request body, this event's chunk, and what
        /// went upstream.
        buffered: Vec<Bytes>,
        received: Option<Bytes>,
        forwarded: Vec<Bytes>,
        counted: Vec<String>,
        /// The body bytes read at each decision recorded.
        decided: Vec<u64>,
    }

    impl Stream for Recorder {
        fn for_each_request_header(&mut self, f: &mut dyn FnMut(&[u8], &[u8])) {
            for (k, v) in &self.headers {
                f(k.as_bytes(), v.as_bytes());
            }
        }
        fn set_request_header(&mut self, name: &str, value: &[u8]) {
            let value = String::from_utf8(value.to_vec()).unwrap();
            self.headers.retain(|(k, _)| k != name);
            self.headers.push((name.to_owned(), value.clone()));
            self.set.push((name.to_owned(), value));
        }
        fn remove_request_header(&mut self, name: &str) {
            self.headers.retain(|(k, _)| !k.eq_ignore_ascii_case(name));
            self.removed.push(name.to_owned());
        }
        fn clear_route_cache(&mut self) {
            self.route_cache_cleared += 1;
        }
        fn reserve_request_buffer(&mut self, bytes: u64) {
            self.reserved = Some(bytes);
        }
        fn send_local_reply(&mut self, reply: &LocalReply) {
            assert!(self.reply.is_none(), "a second local reply");
            self.reply = Some(reply.clone());
        }
        fn read_received_body(&mut self, f: &mut dyn FnMut(&[&[u8]])) {
            match &self.received {
                Some(chunk) => f(&[chunk]),
                None => f(&[]),
            }
        }
        fn held_request_body(&mut self, with_received: bool) -> Vec<Bytes> {
            let mut held = self.buffered.clone();
            if with_received {
                held.extend(self.received.clone());
            }
            held
        }
        fn count(&mut self, tally: Tally<'_>) {
            self.counted.push(format!("{tally:?}"));
        }
        fn decided(&mut self, _: Duration, bytes: u64) {
            self.decided.push(bytes);
        }
        fn replace_held_request_body(&mut self, body: &[Bytes], with_received: bool) -> bool {
            self.buffered.clear();
            if with_received {
                self.received = Some(Bytes::from(body.concat()));
            } else {
                self.buffered = body.to_vec();
            }
            true
        }
    }

    impl Recorder {
        /// Feeds `chunk` as Envoy does: the received chunk of the event,
        /// kept in the buffer or sent on as the filter says.
        fn body(&mut self, f: &mut RequestFilter, chunk: &str, eos: bool) -> BodyStatus {
            let chunk = Bytes::copy_from_slice(chunk.as_bytes());
            self.received = Some(chunk.clone());
            let status = f.on_request_body(self, eos);
            let received = self.received.take().unwrap_or_default();
            match status {
                BodyStatus::Buffer => self.buffered.push(received),
                BodyStatus::Continue => {
                    self.forwarded.append(&mut self.buffered);
                    self.forwarded.push(received);
                }
                BodyStatus::Drop => {}
            }
            status
        }
    }

    fn settings(config: &str) -> Arc<Settings> {
        Arc::new(Settings::from_text(config.as_bytes()).unwrap().0)
    }

    fn request(config: &str, headers: &[(&str, &str)]) -> (RequestFilter, Recorder) {
        let filter = RequestFilter::new(settings(config));
        let stream = Recorder {
            headers: headers
                .iter()
                .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
                .collect(),
            ..Recorder::default()
        };
        (filter, stream)
    }

    fn reply_code(stream: &Recorder) -> (u16, String) {
        let reply = stream.reply.as_ref().expect("a local reply");
        let json: serde_json::Value = serde_json::from_str(&reply.body).unwrap();
        (
            reply.status,
            json["error"]["code"].as_str().unwrap().to_owned(),
        )
    }

    const JSON: (&str, &str) = ("content-type", "application/json");
    const DEMO: &str = r#"{"rules":"rules: [{name: chatbot, match: {model: {exact: chatbot}}, pool: gemma3}, {name: recommender, match: {model: {exact: recommender}}, pool: deepseek-r1}]\ndefault: {action: reject}"}"#;

    #[test]
    fn holds_the_headers_and_chunks_until_the_model_then_routes() {
        let (mut f, mut s) = request(DEMO, &[JSON, ("x-gateway-model-name", "recommender")]);
        assert_eq!(f.on_request_headers(&mut s, false), HeadersStatus::Stop);
        // The spoofed header is gone before anything else.
        assert_eq!(s.removed, ["x-gateway-model-name"]);
        assert_eq!(s.reserved, Some(bbr_core::DEFAULT_MAX_BODY));
        assert!(f.wants_body());
        let status = s.body(&mut f, r#"{"messages":[],"mod"#, false);
        assert_eq!(status, BodyStatus::Buffer);
        assert!(s.set.is_empty());
        let status = s.body(&mut f, r#"el":"chatbot","n":1"#, false);
        assert_eq!(status, BodyStatus::Continue);
        assert_eq!(
            s.set,
            [
                ("x-gateway-model-name".to_owned(), "chatbot".to_owned()),
                ("x-gateway-inference-pool".to_owned(), "gemma3".to_owned()),
            ]
        );
        assert_eq!(s.route_cache_cleared, 1);
        // Recorded once, at the byte after the model's value.
        assert_eq!(s.decided, [32]);
        // Checked as it passes.
        assert!(f.wants_body());
        assert_eq!(s.body(&mut f, "}", true), BodyStatus::Continue);
        assert!(s.reply.is_none());
        assert!(!f.wants_body());
    }

    #[test]
    fn a_duplicate_after_the_routing_went_out_ends_the_request() {
        let (mut f, mut s) = request("", &[JSON]);
        f.on_request_headers(&mut s, false);
        let status = s.body(&mut f, r#"{"model":"a","#, false);
        assert_eq!(status, BodyStatus::Continue);
        let status = s.body(&mut f, r#""model":"b"}"#, true);
        assert_eq!(status, BodyStatus::Drop);
        assert_eq!(reply_code(&s), (400, "duplicate_model".to_owned()));
        assert_eq!(s.reply.as_ref().unwrap().details, "bbr_duplicate_model");
        // Nothing more passes once the request is answered.
        assert_eq!(s.body(&mut f, " ", true), BodyStatus::Drop);
        assert_eq!(f.on_request_trailers(&mut s), TrailersStatus::Stop);
    }

    #[test]
    fn the_fast_policy_stops_checking_at_the_model() {
        let (mut f, mut s) = request(r#"{"policy":"fast"}"#, &[JSON]);
        f.on_request_headers(&mut s, false);
        s.body(&mut f, r#"{"model":"a","#, false);
        assert!(!f.wants_body());
        let status = s.body(&mut f, r#""model":"b"}"#, true);
        assert_eq!(status, BodyStatus::Continue);
        assert!(s.reply.is_none());
    }

    #[test]
    fn errors_before_the_verdict_are_answered_from_the_error_table() {
        for (body, status, code) in [
            (r#"{"model":123}"#, 400, "model_not_string"),
            (r#"{"model":"chatbot",}"#, 400, "invalid_json"),
            (r#"{"model":"chatbot","model":"x"}"#, 400, "duplicate_model"),
            (r#"{"model":"gpt-4"}"#, 404, "model_not_found"),
            (r#"{"model":"chatbot""#, 400, "invalid_json"),
        ] {
            let (mut f, mut s) = request(DEMO, &[JSON]);
            f.on_request_headers(&mut s, false);
            assert_eq!(s.body(&mut f, body, true), BodyStatus::Drop, "{body}");
            assert_eq!(reply_code(&s), (status, code.to_owned()), "{body}");
            let reply = s.reply.as_ref().unwrap();
            assert_eq!(
                reply.headers,
                [("content-type", "application/json".to_owned())]
            );
            assert!(s.set.is_empty(), "{body}");
        }
        // A content type bbr does not read: 415 at the headers.
        let (mut f, mut s) = request(DEMO, &[("content-type", "text/plain")]);
        assert_eq!(f.on_request_headers(&mut s, false), HeadersStatus::Stop);
        assert_eq!(reply_code(&s), (415, "unsupported_content_type".to_owned()));
        // A body over the limit: 413.
        let (mut f, mut s) = request(r#"{"max_body":8}"#, &[JSON]);
        f.on_request_headers(&mut s, false);
        assert_eq!(s.reserved, Some(8));
        let status = s.body(&mut f, r#"{"messages":[1,2,3]}"#, false);
        assert_eq!(status, BodyStatus::Drop);
        assert_eq!(reply_code(&s).0, 413);
    }

    #[test]
    fn fail_open_kinds_pass_unrouted_before_the_verdict_but_not_after() {
        let open = r#"{"fail_open":["invalid_json","duplicate_model"]}"#;
        let (mut f, mut s) = request(open, &[JSON]);
        f.on_request_headers(&mut s, false);
        let status = s.body(&mut f, r#"{"model":"a",}"#, true);
        assert_eq!(status, BodyStatus::Continue);
        assert!(s.reply.is_none() && s.set.is_empty());

        // Once routed, a duplicate is refused whatever the policy says.
        let (mut f, mut s) = request(open, &[JSON]);
        f.on_request_headers(&mut s, false);
        s.body(&mut f, r#"{"model":"a","#, false);
        let status = s.body(&mut f, r#""model":"b"}"#, true);
        assert_eq!(status, BodyStatus::Drop);
        assert_eq!(reply_code(&s).1, "duplicate_model");
    }

    #[test]
    fn requests_without_a_body_are_decided_at_once() {
        let (mut f, mut s) = request(
            DEMO,
            &[
                ("X-Gateway-Model-Name", "evil"),
                ("x-gateway-inference-objective", "chatbot-objective"),
            ],
        );
        assert_eq!(f.on_request_headers(&mut s, true), HeadersStatus::Continue);
        assert_eq!(s.removed, ["x-gateway-model-name"]);
        assert!(s.set.is_empty());
        assert!(s.decided.is_empty(), "not decided on a body");
        assert_eq!(
            s.route_cache_cleared, 1,
            "the route is picked again without the spoof"
        );
        assert!(s.reserved.is_none());

        // Nothing stripped, nothing set: the route stands.
        let (mut f, mut s) = request(DEMO, &[("accept", "*/*")]);
        assert_eq!(f.on_request_headers(&mut s, true), HeadersStatus::Continue);
        assert_eq!(s.route_cache_cleared, 0);

        // An empty chunked body is no body either.
        let (mut f, mut s) = request(
            r#"{"reject_missing_model":true}"#,
            &[JSON, ("x-gateway-model-name", "evil")],
        );
        f.on_request_headers(&mut s, false);
        assert_eq!(s.body(&mut f, "", true), BodyStatus::Continue);
        assert!(s.reply.is_none());
        assert_eq!(s.removed, ["x-gateway-model-name"]);
    }

    #[test]
    fn trailers_end_the_body() {
        let (mut f, mut s) = request(DEMO, &[JSON]);
        f.on_request_headers(&mut s, false);
        let status = s.body(&mut f, r#"{"messages":[],"model":"recommender"}"#, false);
        // The object closed: decided without waiting for the end.
        assert_eq!(status, BodyStatus::Continue);
        assert_eq!(f.on_request_trailers(&mut s), TrailersStatus::Continue);
        assert_eq!(s.set[1].1, "deepseek-r1");

        // A body that never names its model before the trailers passes.
        let (mut f, mut s) = request("", &[JSON]);
        f.on_request_headers(&mut s, false);
        assert_eq!(
            s.body(&mut f, r#"{"prompt":"x""#, false),
            BodyStatus::Buffer
        );
        assert_eq!(f.on_request_trailers(&mut s), TrailersStatus::Stop);
        assert_eq!(
            reply_code(&s),
            (400, "invalid_json".to_owned()),
            "truncated"
        );
    }

    #[test]
    fn one_byte_chunks_decide_the_same() {
        let body = r#"{"messages":[{"role":"user","content":"hi \"model\""}],"model":"recommender","n":1}"#;
        let (mut f, mut s) = request(DEMO, &[JSON]);
        f.on_request_headers(&mut s, false);
        let mut statuses = Vec::new();
        for (i, b) in body.as_bytes().iter().enumerate() {
            let last = i + 1 == body.len();
            statuses.push(s.body(&mut f, std::str::from_utf8(&[*b]).unwrap(), last));
        }
        let decided = statuses
            .iter()
            .position(|s| *s == BodyStatus::Continue)
            .unwrap();
        assert!(statuses[..decided].iter().all(|s| *s == BodyStatus::Buffer));
        assert!(
            statuses[decided..]
                .iter()
                .all(|s| *s == BodyStatus::Continue)
        );
        assert_eq!(
            s.set[0],
            ("x-gateway-model-name".to_owned(), "recommender".to_owned())
        );
        assert!(s.reply.is_none());
    }

    #[test]
    fn a_weighted_target_is_spliced_into_the_held_body_with_its_length() {
        let rules = r#"{"rules":"rules: [{name: c, match: {model: {exact: chat}}, pool: p, targets: [{model: gemma-3, weight: 1}]}]"}"#;
        let body = [r#"{"messages":[],"mo"#, r#"del":"chat","n":1"#, "}"];
        let length = body.concat().len().to_string();
        let (mut f, mut s) = request(rules, &[JSON, ("content-length", &length)]);
        f.on_request_headers(&mut s, false);
        assert_eq!(s.body(&mut f, body[0], false), BodyStatus::Buffer);
        assert_eq!(s.body(&mut f, body[1], false), BodyStatus::Continue);
        assert_eq!(s.body(&mut f, body[2], true), BodyStatus::Continue);
        let sent = s.forwarded.concat();
        assert_eq!(sent, br#"{"messages":[],"model":"gemma-3","n":1}"#);
        let length = ("content-length".to_owned(), sent.len().to_string());
        assert!(s.set.contains(&length), "{:?}", s.set);
        // The header names the model the client sent.
        assert_eq!(
            s.set[1],
            ("x-gateway-model-name".to_owned(), "chat".to_owned())
        );

        assert!(s.reply.is_none());
    }

    #[test]
    fn verdicts_are_counted_as_the_ext_proc_server_counts_them() {
        let counted = |config: &str, chunks: &[&str]| {
            let (mut f, mut s) = request(config, &[JSON]);
            f.on_request_headers(&mut s, false);
            for (i, c) in chunks.iter().enumerate() {
                s.body(&mut f, c, i + 1 == chunks.len());
            }
            s.counted
        };
        assert_eq!(
            counted(DEMO, &[r#"{"model":"chatbot"}"#]),
            [
                "Success",
                "Routed",
                r#"RouteMatch { rule: "chatbot", pool: "gemma3" }"#
            ]
        );
        // Processed bodies count as successes, routed or not.
        assert_eq!(
            counted(DEMO, &[r#"{"prompt":"x"}"#]),
            ["Success", "ModelNotInBody"]
        );
        assert_eq!(
            counted(DEMO, &[r#"{"model":""}"#]),
            ["Success", "ModelEmpty"]
        );
        let strict = r#"{"reject_missing_model":true}"#;
        assert_eq!(
            counted(strict, &[r#"{"model":""}"#]),
            ["ModelNotParsed", "ModelEmpty", "Rejected(InvalidModel)"]
        );
        assert_eq!(
            counted(DEMO, &[r#"{"model":"gpt-4"}"#]),
            ["Rejected(ModelNotFound)"]
        );
        assert_eq!(
            counted(r#"{"fail_open":["model_not_string"]}"#, &[r#"{"model":1}"#]),
            ["FailOpen(ModelNotString)", "ModelNotParsed"]
        );
        // A late violation after the routing went out.
        assert_eq!(
            counted("", &[r#"{"model":"a","#, r#""model":"b"}"#]),
            [
                "Success",
                "Routed",
                r#"RouteMatch { rule: "", pool: "" }"#,
                "Rejected(DuplicateModel)"
            ]
        );
    }

    #[test]
    fn body_fields_are_copied_and_stripped() {
        let (mut f, mut s) = request(
            r#"{"body_fields":["stream=x-llm-stream"]}"#,
            &[JSON, ("X-LLM-Stream", "spoof")],
        );
        f.on_request_headers(&mut s, false);
        assert_eq!(s.removed, ["x-llm-stream"]);
        s.body(&mut f, r#"{"model":"m","stream":true}"#, true);
        assert_eq!(
            s.set,
            [
                ("x-gateway-model-name".to_owned(), "m".to_owned()),
                ("x-llm-stream".to_owned(), "true".to_owned()),
            ]
        );
    }

    /// A stream that lends each body event's chunk in parts, as Envoy's
    /// buffer holds it, and records nothing that allocates.
    struct Lender<'b> {
        headers: Vec<(&'static str, String)>,
        parts: &'b [&'b [u8]],
        set: usize,
        replied: bool,
    }

    impl Stream for Lender<'_> {
        fn for_each_request_header(&mut self, f: &mut dyn FnMut(&[u8], &[u8])) {
            for (k, v) in &self.headers {
                f(k.as_bytes(), v.as_bytes());
            }
        }
        fn set_request_header(&mut self, _: &str, _: &[u8]) {
            self.set += 1;
        }
        fn remove_request_header(&mut self, _: &str) {}
        fn clear_route_cache(&mut self) {}
        fn reserve_request_buffer(&mut self, _: u64) {}
        fn send_local_reply(&mut self, _: &LocalReply) {
            self.replied = true;
        }
        fn read_received_body(&mut self, f: &mut dyn FnMut(&[&[u8]])) {
            f(self.parts);
        }
        fn held_request_body(&mut self, _: bool) -> Vec<Bytes> {
            unreachable!("no rewrite in these rules")
        }
        fn replace_held_request_body(&mut self, _: &[Bytes], _: bool) -> bool {
            unreachable!("no rewrite in these rules")
        }
        fn count(&mut self, _: Tally<'_>) {}
        fn decided(&mut self, _: Duration, _: u64) {}
    }

    /// The bytes the filter allocates for one request of `size` bytes
    /// with the model after a long message (the load benchmark's body),
    /// in body events of 64 KiB lent as four 16 KiB slices.
    fn allocated_for(settings: &Arc<Settings>, size: usize) -> u64 {
        let head = r#"{"messages":[{"role":"user","content":""#;
        let tail = r#""}],"model":"chatbot","max_tokens":100}"#;
        let body = [head, &"x".repeat(size - head.len() - tail.len()), tail].concat();
        let events: Vec<Vec<&[u8]>> = body
            .as_bytes()
            .chunks(64 << 10)
            .map(|event| event.chunks(16 << 10).collect())
            .collect();
        let mut stream = Lender {
            headers: vec![
                ("content-type", "application/json".to_owned()),
                ("content-length", size.to_string()),
            ],
            parts: &[],
            set: 0,
            replied: false,
        };
        let mut filter = RequestFilter::new(Arc::clone(settings));
        let (statuses, allocated) = crate::abi::allocations::during(|| {
            filter.on_request_headers(&mut stream, false);
            let mut statuses = [0usize; 3];
            for (i, parts) in events.iter().enumerate() {
                stream.parts = parts;
                let status = filter.on_request_body(&mut stream, i + 1 == events.len());
                statuses[status as usize] += 1;
            }
            drop(filter);
            statuses
        });
        assert_eq!(body.len(), size);
        assert!(!stream.replied);
        assert_eq!(stream.set, 2, "routed: model and pool headers");
        // Held up to the model, then released, the rest checked as it passes.
        assert_eq!(statuses[BodyStatus::Drop as usize], 0);
        assert!(statuses[BodyStatus::Continue as usize] >= 1);
        allocated
    }

    #[test]
    fn the_body_is_read_in_place_and_only_the_model_copied() {
        let settings = settings(DEMO);
        // The first request of a thread sets up what the thread keeps
        // (the rule table's reader slot).
        allocated_for(&settings, 1 << 10);
        let small = allocated_for(&settings, 1 << 10);
        let large = allocated_for(&settings, 1 << 20);
        let huge = allocated_for(&settings, 10 << 20);
        eprintln!("bytes allocated per request: 1 KiB {small}, 1 MiB {large}, 10 MiB {huge}");
        // What the request allocates (the session, the routing headers,
        // the model's copy) does not grow with the body: no body byte is
        // copied out of the buffer it is lent in.
        assert!(large <= small + 64, "1 MiB: {large} against {small}");
        assert!(huge <= small + 64, "10 MiB: {huge} against {small}");
        assert!(small < 1024, "{small}");
    }

    #[test]
    fn the_model_list_is_served_when_asked() {
        let config = DEMO.replacen('{', r#"{"serve_models":true,"#, 1);
        let (mut f, mut s) = request(&config, &[(":method", "GET"), (":path", "/v1/models?x=1")]);
        assert_eq!(f.on_request_headers(&mut s, true), HeadersStatus::Stop);
        let reply = s.reply.unwrap();
        assert_eq!(reply.status, 200);
        let list: serde_json::Value = serde_json::from_str(&reply.body).unwrap();
        assert_eq!(list["data"][0]["id"], "chatbot");
        // Not asked: the request goes on.
        let (mut f, mut s) = request(DEMO, &[(":method", "GET"), (":path", "/v1/models")]);
        assert_eq!(f.on_request_headers(&mut s, true), HeadersStatus::Continue);
    }
}
