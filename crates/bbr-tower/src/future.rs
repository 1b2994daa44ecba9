//! [`ResponseFuture`]: reads the body up to the decision, then calls the
//! inner service (or answers at once).

use std::{
    borrow::Cow,
    fmt,
    future::Future,
    pin::Pin,
    sync::{Arc, OnceLock},
    task::{Context, Poll, ready},
};

use bbr_core::rules::{ContentLength, RuleTable};
use bbr_core::session::{Head, Session, Step, parse_content_length};
use bbr_core::{Error, Verdict};
use bytes::Bytes;
use http::{HeaderMap, HeaderName, HeaderValue, Request, Response, header, request::Parts};
use http_body::Body;
use pin_project_lite::pin_project;
use tower_service::Service;

use crate::{
    BoxError, Decision, ModelSource, ResponseBody, RoutedBody,
    body::{BodyReader, Read},
    config::Config,
    decision::DecisionData,
    response::{error_response, json_ok},
};

/// The header whose value picks among a rule's weighted targets (a name
/// built once: looking up by `&str` parses the name every time).
static REQUEST_ID: HeaderName = HeaderName::from_static("x-request-id");

pin_project! {
    /// The response future of [`ModelRouting`](crate::ModelRouting).
    ///
    /// It reads body frames into the extractor until the decision, then
    /// calls the inner service; a request refused before the decision is
    /// answered by the future itself.
    pub struct ResponseFuture<S, B>
    where
        S: Service<Request<RoutedBody<B>>>,
    {
        #[pin]
        state: State<S, B>,
    }
}

pin_project! {
    #[project = StateProj]
    enum State<S, B>
    where
        S: Service<Request<RoutedBody<B>>>,
    {
        // `None` once the future completed (or panicked while deciding).
        Reading { reading: Option<Reading<S, B>> },
        Calling {
            #[pin]
            future: S::Future,
            violation: Option<Arc<OnceLock<Error>>>,
        },
        // `None` once the answer went out.
        Answered { answer: Option<Answer> },
    }
}

/// A request the layer answers itself.
enum Answer {
    /// The error contract's answer (counted where it was decided).
    Refused(Error),
    /// `GET /v1/models`, from the rule table.
    Models(Bytes),
}

/// The panic message of a future polled after it completed.
const POLLED_AFTER_COMPLETION: &str = "ResponseFuture polled after completion";

/// The request while its body is read up to the decision.
struct Reading<S, B> {
    service: S,
    parts: Parts,
    /// The body, the session, the configuration and the held chunks: one
    /// allocation, handed on to the [`RoutedBody`] as it is.
    stream: Pin<Box<BodyReader<B>>>,
    /// When the request's headers arrived (the decision-time histogram).
    #[cfg(feature = "metrics")]
    started: std::time::Instant,
}

impl<S, B> ResponseFuture<S, B>
where
    S: Service<Request<RoutedBody<B>>>,
    B: Body<Data = Bytes>,
{
    pub(crate) fn new(service: S, config: Arc<Config>, request: Request<B>) -> Self {
        let (mut parts, body) = request.into_parts();
        let table = config.rules.load();
        let mut seen = Seen::of(&config, &table, &parts.headers);
        if seen.strip {
            // Rare: the headers are looked at again after the strip, so
            // that what is read of them is borrowed, not cloned.
            strip_client_headers(&config, &table, &mut parts);
            seen = Seen::of(&config, &table, &parts.headers);
        }
        if config.serve_models
            && parts.method == http::Method::GET
            && parts.uri.path() == MODELS_PATH
        {
            return ResponseFuture {
                state: State::Answered {
                    answer: Some(Answer::Models(Bytes::from(table.models_json()))),
                },
            };
        }
        let key = match table.uses_request_key() {
            true => parts.headers.get(&REQUEST_ID).map(HeaderValue::as_bytes),
            false => None,
        };
        let content_encoding = if seen.encoded {
            content_encoding(&parts.headers)
        } else {
            None
        };
        let head = Head {
            content_type: seen.content_type.map(|v| v.to_str().unwrap_or("")),
            content_encoding: content_encoding.as_deref(),
            content_length: seen.content_length,
            request_key: key,
        };
        if !config.paths.is_empty() {
            let path = parts.uri.path();
            if let Some(model) = config.paths.iter().find_map(|t| t.model(path)) {
                let model = model.to_owned();
                let mut session = Session::new(table);
                let step = session.start_with_model(&config.decider, &head, &model);
                let mut decision = DecisionData::unrouted(ModelSource::Path);
                decision.path_model = Some(model.into());
                drop(content_encoding);
                return forward(service, &config, &session, parts, body, step, decision);
            }
        }
        if body.is_end_stream() {
            let mut session = Session::new(table);
            let step = session.start(&config.decider, &config.extractor, &head, false);
            let decision = DecisionData::unrouted(ModelSource::None);
            drop(content_encoding);
            return forward(service, &config, &session, parts, body, step, decision);
        }
        // The session starts where it lives for the rest of the request:
        // its extractor is not moved after it is built.
        let mut stream = Box::pin(BodyReader::new(body, Session::new(table), config));
        let step = stream.as_mut().start(&head);
        drop(content_encoding);
        match step {
            Step::Read => ResponseFuture {
                state: State::Reading {
                    reading: Some(Reading {
                        service,
                        parts,
                        stream,
                        #[cfg(feature = "metrics")]
                        started: std::time::Instant::now(),
                    }),
                },
            },
            // Refused before a byte is read (a content type bbr does not
            // read), or passed by the failure policy: the body goes on as
            // it is.
            step => {
                let config = Arc::clone(stream.config_arc());
                let decision = DecisionData::unrouted(ModelSource::None);
                let session = stream.session();
                config.tally(session, &step);
                let Step::Verdict(verdict) = step else {
                    return answer(Error::body_read());
                };
                let mut parts = parts;
                if let Err(error) = apply(&verdict, &mut parts.headers) {
                    return answer(error);
                }
                let mut decision = decision;
                decision.take_verdict(verdict);
                call(service, parts, RoutedBody::replay(stream), decision, None)
            }
        }
    }
}

/// What one pass over the request's headers finds: whether any must be
/// stripped, and the two the extractor is built from (two lookups by name
/// would hash each name again).
struct Seen<'a> {
    /// A header the client may not send is present.
    strip: bool,
    /// The first `Content-Type`.
    content_type: Option<&'a HeaderValue>,
    /// A `Content-Encoding` is present.
    encoded: bool,
    /// The first `Content-Length`, parsed (`Some(None)`: not a length).
    content_length: Option<Option<u64>>,
}

impl<'a> Seen<'a> {
    fn of(config: &Config, table: &RuleTable, headers: &'a HeaderMap) -> Seen<'a> {
        let mut seen = Seen {
            strip: false,
            content_type: None,
            encoded: false,
            content_length: None,
        };
        for (name, value) in headers {
            if *name == header::CONTENT_TYPE {
                if seen.content_type.is_none() {
                    seen.content_type = Some(value);
                }
            } else if *name == header::CONTENT_LENGTH {
                if seen.content_length.is_none() {
                    seen.content_length = Some(parse_content_length(value.as_bytes()));
                }
            } else if *name == header::CONTENT_ENCODING {
                seen.encoded = true;
            }
            seen.strip |= config.decider.strips_header(table, name);
        }
        seen
    }
}

/// Removes the headers a client may not send (the routing headers, the
/// reserved family): called when [`Seen`] found one, which is rare.
fn strip_client_headers(config: &Config, table: &RuleTable, parts: &mut Parts) {
    let names: Vec<HeaderName> = parts
        .headers
        .keys()
        .filter(|n| config.decider.strips_header(table, n))
        .cloned()
        .collect();
    for name in names {
        parts.headers.remove(name);
    }
}

/// The request's `Content-Encoding`: its header lines joined by commas, as
/// one list (RFC 9110 §5.3).
fn content_encoding(headers: &HeaderMap) -> Option<Cow<'_, str>> {
    let mut values = headers.get_all(header::CONTENT_ENCODING).iter();
    fn text(v: &HeaderValue) -> Cow<'_, str> {
        String::from_utf8_lossy(v.as_bytes())
    }
    let first = text(values.next()?);
    Some(values.fold(first, |mut list, v| {
        let list_mut = list.to_mut();
        list_mut.push(',');
        list_mut.push_str(&text(v));
        list
    }))
}

fn answer<S, B>(error: Error) -> ResponseFuture<S, B>
where
    S: Service<Request<RoutedBody<B>>>,
{
    ResponseFuture {
        state: State::Answered {
            answer: Some(Answer::Refused(error)),
        },
    }
}

/// The path of the model list the layer serves (see
/// [`ModelRoutingLayer::serve_models`](crate::ModelRoutingLayer::serve_models)).
const MODELS_PATH: &str = "/v1/models";

/// Carries out a verdict for a request whose body is not held (no body, a
/// model from the path, a body refused before it was read).
fn forward<S, B>(
    service: S,
    config: &Config,
    session: &Session,
    mut parts: Parts,
    body: B,
    step: Step,
    mut decision: DecisionData,
) -> ResponseFuture<S, B>
where
    S: Service<Request<RoutedBody<B>>>,
{
    config.tally(session, &step);
    let Step::Verdict(verdict) = step else {
        return answer(Error::body_read());
    };
    if let Err(error) = apply(&verdict, &mut parts.headers) {
        return answer(error);
    }
    decision.take_verdict(verdict);
    call(
        service,
        parts,
        RoutedBody::passthrough(body),
        decision,
        None,
    )
}

/// Sets the verdict's headers; `Err` for a rejection.
fn apply(verdict: &Verdict, headers: &mut HeaderMap) -> Result<(), Error> {
    // The route's headers, then the body fields': the order of
    // `Verdict::headers`, walked without its iterator on the hot path.
    let fields = match verdict {
        Verdict::Route(routing) => {
            for (name, value) in routing.route().headers() {
                headers.insert(name.clone(), value.clone());
            }
            routing.fields()
        }
        Verdict::Pass(pass) => pass.fields(),
        Verdict::Reject(error) => return Err(error.clone()),
        _ => &[],
    };
    for (name, value) in fields {
        headers.insert(name.clone(), value.clone());
    }
    Ok(())
}

fn call<S, B>(
    mut service: S,
    parts: Parts,
    body: RoutedBody<B>,
    decision: DecisionData,
    violation: Option<Arc<OnceLock<Error>>>,
) -> ResponseFuture<S, B>
where
    S: Service<Request<RoutedBody<B>>>,
{
    let mut request = Request::from_parts(parts, body);
    request.extensions_mut().insert(Decision::from(decision));
    ResponseFuture {
        state: State::Calling {
            future: service.call(request),
            violation,
        },
    }
}

impl<S, B, ResBody> Future for ResponseFuture<S, B>
where
    S: Service<Request<RoutedBody<B>>, Response = Response<ResBody>>,
    B: Body<Data = Bytes>,
    B::Error: Into<BoxError>,
    ResBody: Body<Data = Bytes>,
{
    type Output = Result<Response<ResponseBody<ResBody>>, S::Error>;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        loop {
            let next = match self.as_mut().project().state.project() {
                StateProj::Calling { future, violation } => {
                    let result = ready!(future.poll(cx));
                    // A violation found after the decision ends the upstream
                    // body; the client gets the error contract's answer.
                    if let Some(error) = violation.take().as_ref().and_then(|v| v.get()) {
                        return Poll::Ready(Ok(error_response(error)));
                    }
                    return Poll::Ready(result.map(|r| r.map(ResponseBody::inner)));
                }
                StateProj::Answered { answer } => {
                    let response = match answer.take().expect(POLLED_AFTER_COMPLETION) {
                        Answer::Refused(error) => error_response(&error),
                        Answer::Models(list) => json_ok(list),
                    };
                    return Poll::Ready(Ok(response));
                }
                StateProj::Reading { reading } => {
                    let state = reading.as_mut().expect(POLLED_AFTER_COMPLETION);
                    let read = ready!(state.stream.as_mut().poll_read(cx));
                    let state = reading.take().expect(POLLED_AFTER_COMPLETION);
                    state.proceed(read)
                }
            };
            self.as_mut().project().state.set(next.state);
        }
    }
}

impl<S, B> Reading<S, B>
where
    S: Service<Request<RoutedBody<B>>>,
    B: Body<Data = Bytes>,
{
    /// Turns what the read came to into the next state.
    fn proceed(self, read: Read) -> ResponseFuture<S, B> {
        match read {
            Read::BodyError => {
                #[cfg(feature = "metrics")]
                bbr_core::metrics::record_rejected(&Error::body_read());
                answer(Error::body_read())
            }
            Read::Step(step) => self.carry_out(step),
        }
    }

    /// Carries the verdict out: the headers set, the held chunks
    /// rewritten, the rest of the body checked.
    fn carry_out(mut self, step: Step) -> ResponseFuture<S, B> {
        let (session, config) = (self.stream.session(), self.stream.config());
        config.tally(session, &step);
        #[cfg(feature = "metrics")]
        if session.decided_on_body() {
            let seconds = self.started.elapsed().as_secs_f64();
            config.metrics().decided(seconds, session.decided_at());
        }
        let Step::Verdict(verdict) = step else {
            return answer(Error::body_read());
        };
        if let Err(error) = apply(&verdict, &mut self.parts.headers) {
            return answer(error);
        }
        let extraction = session
            .extractor()
            .and_then(|x| x.extraction())
            .filter(|_| session.decided_on_body())
            .cloned();
        let (held, content_length, violation) = self.stream.as_mut().settle(&verdict);
        fix_content_length(&mut self.parts.headers, content_length);
        let source = match extraction.as_ref().and_then(|x| x.model()) {
            Some(_) => ModelSource::Body,
            None => ModelSource::None,
        };
        let mut decision = DecisionData::unrouted(source);
        decision.held_bytes = held;
        decision.take_verdict(verdict);
        decision.extraction = extraction;
        let body = RoutedBody::replay(self.stream);
        call(self.service, self.parts, body, decision, violation)
    }
}

/// Applies the one `Content-Length` rule after a rewrite (see
/// [`Session::change_body`]).
fn fix_content_length(headers: &mut HeaderMap, change: Option<ContentLength>) {
    match change {
        Some(ContentLength::Set(length)) => {
            headers.insert(header::CONTENT_LENGTH, HeaderValue::from(length));
        }
        Some(ContentLength::Remove) => {
            headers.remove(header::CONTENT_LENGTH);
        }
        None => {}
    }
}

impl<S, B> fmt::Debug for ResponseFuture<S, B>
where
    S: Service<Request<RoutedBody<B>>>,
{
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let state = match &self.state {
            State::Reading { .. } => "reading",
            State::Calling { .. } => "calling",
            State::Answered { .. } => "answered",
        };
        f.debug_struct("ResponseFuture")
            .field("state", &state)
            .finish()
    }
}
