//! [`ResponseFuture`]: reads the body up to the decision, then calls the
//! inner service (or answers at once).

use std::{
    fmt,
    future::Future,
    pin::Pin,
    sync::{Arc, OnceLock},
    task::{Context, Poll, ready},
};

use bbr_core::rules::RuleTable;
use bbr_core::{BodyExtractor, Error, ErrorKind, FailureAction, Status};
use bytes::{Bytes, BytesMut};
use http::{HeaderMap, HeaderValue, Request, Response, StatusCode, header, request::Parts};
use http_body::Body;
use pin_project_lite::pin_project;
use tower_service::Service;

use crate::{
    BoxError, Decision, ModelSource, ResponseBody, RoutedBody,
    body::Scan,
    decision::DecisionData,
    layer::Config,
    response::{local_error, reject},
};

/// Chunks smaller than this are copied together while they are held.
///
/// Each held chunk costs a `Bytes` handle and a reference on the buffer it
/// came from; a client sending the body a byte per chunk could otherwise
/// make the layer hold many times `max_body` in bookkeeping. Copying only
/// chunks this small bounds the count of held chunks by `held_len / 1 KiB`
/// (about) at a negligible cost; larger chunks are held as they are.
const COALESCE_BELOW: usize = 1 << 10;

/// The header whose value picks among a rule's weighted targets.
const REQUEST_ID: &str = "x-request-id";

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
        Reading { reading: Option<Box<Reading<S, B>>> },
        Calling {
            #[pin]
            future: S::Future,
            violation: Option<Arc<OnceLock<Error>>>,
        },
        Answered { answer: Option<Answer> },
    }
}

/// A request answered without the inner service.
enum Answer {
    Reject(Error),
    BodyReadError,
}

impl Answer {
    fn into_response<B>(self) -> Response<ResponseBody<B>> {
        match self {
            Answer::Reject(error) => reject(&error),
            Answer::BodyReadError => local_error(
                StatusCode::BAD_REQUEST,
                "invalid_request_error",
                "body_read_error",
                "the request body could not be read",
            ),
        }
    }
}

/// The request while its body is read up to the decision.
struct Reading<S, B> {
    service: S,
    config: Arc<Config>,
    table: Arc<RuleTable>,
    parts: Parts,
    body: Pin<Box<B>>,
    extractor: BodyExtractor,
    held: Vec<Bytes>,
    /// Small chunks held, coalesced (see [`COALESCE_BELOW`]).
    small: BytesMut,
    held_len: u64,
    /// The body has yielded its last frame.
    ended: bool,
}

impl<S, B> ResponseFuture<S, B>
where
    S: Service<Request<RoutedBody<B>>>,
    B: Body<Data = Bytes>,
{
    pub(crate) fn new(service: S, config: Arc<Config>, request: Request<B>) -> Self {
        let (mut parts, body) = request.into_parts();
        let table = config.rules.load();
        // A client must not choose its own routing headers, routed or not.
        // Requests rarely carry any: one pass over the few headers they have
        // is cheaper than a removal by name for each managed header.
        let managed = table.managed_headers();
        if parts.headers.keys().any(|name| managed.contains(name)) {
            for name in managed {
                parts.headers.remove(name);
            }
        }
        let body = Box::pin(body);

        let path = parts.uri.path();
        if let Some(model) = config.paths.iter().find_map(|t| t.model(path)) {
            let model = model.to_owned();
            return match decide(&config, &table, &mut parts, Some(ModelRef::Path(&model))) {
                Ok(decision) => call(
                    service,
                    parts,
                    RoutedBody::passthrough(body),
                    decision,
                    None,
                ),
                Err(error) => answer(Answer::Reject(error)),
            };
        }
        if body.is_end_stream() {
            // Nothing to route on (`GET /v1/models`, health checks).
            let decision = DecisionData::unrouted(ModelSource::None);
            return call(
                service,
                parts,
                RoutedBody::passthrough(body),
                decision,
                None,
            );
        }

        let content_type = parts
            .headers
            .get(header::CONTENT_TYPE)
            .map(|v| v.to_str().unwrap_or(""));
        match BodyExtractor::new(content_type, config.extractor.clone()) {
            Ok(extractor) => ResponseFuture {
                state: State::Reading {
                    reading: Some(Box::new(Reading {
                        service,
                        config,
                        table,
                        parts,
                        body,
                        extractor,
                        held: Vec::new(),
                        small: BytesMut::new(),
                        held_len: 0,
                        ended: false,
                    })),
                },
            },
            Err(error) => match config.failure.action(error.kind()) {
                FailureAction::Reject => answer(Answer::Reject(error)),
                FailureAction::PassThrough => {
                    let mut decision = DecisionData::unrouted(ModelSource::None);
                    decision.failed_open = Some(error);
                    call(
                        service,
                        parts,
                        RoutedBody::passthrough(body),
                        decision,
                        None,
                    )
                }
            },
        }
    }
}

fn answer<S, B>(answer: Answer) -> ResponseFuture<S, B>
where
    S: Service<Request<RoutedBody<B>>>,
{
    ResponseFuture {
        state: State::Answered {
            answer: Some(answer),
        },
    }
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

/// Matches `model` against the table and sets the routing headers.
///
/// `Ok` carries the decision to forward with (routed or not); `Err` an error
/// the failure policy refuses.
fn decide(
    config: &Config,
    table: &RuleTable,
    parts: &mut Parts,
    model: Option<ModelRef<'_>>,
) -> Result<DecisionData, Error> {
    let source = match model {
        Some(ModelRef::Path(_)) => ModelSource::Path,
        _ => ModelSource::Body,
    };
    let mut decision = DecisionData::unrouted(source);
    let Some(model) = model else {
        decision.source = ModelSource::None;
        return match config.failure.missing_model() {
            FailureAction::PassThrough => Ok(decision),
            FailureAction::Reject => Err(Error::new(
                ErrorKind::InvalidModel,
                0,
                "the request names no model",
            )),
        };
    };
    let request_id = parts.headers.get(REQUEST_ID).map(HeaderValue::as_bytes);
    let decided = match model {
        ModelRef::Path(model) => {
            decision.path_model = Some(model.into());
            table.decide(model, request_id)
        }
        ModelRef::Body(model) => table.decide_model(model, request_id),
    };
    match decided {
        Ok(Some(route)) => {
            for (name, value) in route.headers() {
                parts.headers.insert(name.clone(), value.clone());
            }
            decision.route = Some(route);
            Ok(decision)
        }
        Ok(None) => Ok(decision),
        Err(error) => match config.failure.action(error.kind()) {
            FailureAction::Reject => Err(error),
            FailureAction::PassThrough => {
                decision.failed_open = Some(error);
                Ok(decision)
            }
        },
    }
}

/// Where the model to decide on came from.
#[derive(Clone, Copy)]
enum ModelRef<'a> {
    Path(&'a str),
    Body(&'a bbr_core::Model),
}

/// What reading the body up to the decision came to.
enum Read {
    /// The extractor decided; `ended` when the body has no more frames.
    Decided {
        ended: bool,
        trailers: Option<HeaderMap>,
    },
    /// The body ended without a decision before it.
    Ended {
        trailers: Option<HeaderMap>,
    },
    Failed(Error),
    BodyError,
}

impl<S, B> Reading<S, B>
where
    B: Body<Data = Bytes>,
{
    /// Moves the coalesced small chunks to the held ones, in order.
    fn flush_small(&mut self) {
        if !self.small.is_empty() {
            self.held.push(self.small.split().freeze());
        }
    }

    fn poll_read(&mut self, cx: &mut Context<'_>) -> Poll<Read> {
        loop {
            let frame = match ready!(self.body.as_mut().poll_frame(cx)) {
                None => {
                    self.ended = true;
                    return Poll::Ready(Read::Ended { trailers: None });
                }
                Some(Err(_)) => return Poll::Ready(Read::BodyError),
                Some(Ok(frame)) => frame,
            };
            let chunk = match frame.into_data() {
                Ok(chunk) => chunk,
                Err(frame) => match frame.into_trailers() {
                    Ok(trailers) => {
                        self.ended = true;
                        return Poll::Ready(Read::Ended {
                            trailers: Some(trailers),
                        });
                    }
                    Err(_) => continue,
                },
            };
            if chunk.is_empty() {
                continue;
            }
            let status = self.extractor.feed(&chunk);
            self.held_len += chunk.len() as u64;
            if chunk.len() < COALESCE_BELOW {
                self.small.extend_from_slice(&chunk);
            } else {
                self.flush_small();
                self.held.push(chunk);
            }
            match status {
                Ok(Status::Pending) => {}
                Ok(Status::Decided) => {
                    return Poll::Ready(Read::Decided {
                        ended: self.body.is_end_stream(),
                        trailers: None,
                    });
                }
                Err(error) => return Poll::Ready(Read::Failed(error)),
            }
        }
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
                    if let Some(error) = violation.as_ref().and_then(|v| v.get()) {
                        return Poll::Ready(Ok(reject(error)));
                    }
                    return Poll::Ready(result.map(|r| r.map(ResponseBody::inner)));
                }
                StateProj::Answered { answer } => {
                    let answer = answer.take().unwrap_or(Answer::BodyReadError);
                    return Poll::Ready(Ok(answer.into_response()));
                }
                StateProj::Reading { reading } => {
                    let Some(state) = reading.as_mut() else {
                        // Only reachable if polled after a panic.
                        return Poll::Pending;
                    };
                    let read = ready!(state.poll_read(cx));
                    match reading.take() {
                        Some(state) => (*state).proceed(read),
                        None => return Poll::Pending,
                    }
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
        let mut this = self;
        this.flush_small();
        let (ended, trailers) = match read {
            Read::BodyError => return answer(Answer::BodyReadError),
            Read::Failed(error) => return this.fail(error, None),
            Read::Decided { ended, trailers } => (ended, trailers),
            Read::Ended { trailers } => {
                if this.held_len == 0 {
                    // An empty body: nothing to route on.
                    let decision = DecisionData::unrouted(ModelSource::None);
                    let body = RoutedBody::replay(Vec::new(), trailers, None, None);
                    return call(this.service, this.parts, body, decision, None);
                }
                (true, trailers)
            }
        };
        // At the end of the body the extractor checks it is complete; in the
        // middle, the strict policy goes on scanning in the body.
        if (ended || this.extractor.extraction().is_none())
            && let Err(error) = this.extractor.finish()
        {
            return this.fail(error, trailers);
        }
        let Some(extraction) = this.extractor.extraction().cloned() else {
            // `finish` succeeded, so this cannot happen; refuse rather than guess.
            let error = Error::new(ErrorKind::InvalidJson, this.held_len, "no decision");
            return this.fail(error, trailers);
        };
        let model = extraction.model().map(ModelRef::Body);
        let mut decision = match decide(&this.config, &this.table, &mut this.parts, model) {
            Ok(decision) => decision,
            Err(error) => return answer(Answer::Reject(error)),
        };
        decision.held_bytes = extraction.decided_at();

        let mut held = std::mem::take(&mut this.held);
        // Only a JSON body can be rewritten; a multipart one keeps its model.
        if let (Some(route), Some(model)) = (decision.route.as_ref(), extraction.model())
            && this.extractor.is_json()
            && let Some(rewritten) = bbr_core::rules::rewrite_body(&held, model, route)
        {
            fix_content_length(&mut this.parts.headers, |old| rewritten.content_length(old));
            held = rewritten.chunks;
        }
        decision.extraction = Some(extraction);

        if ended {
            let body = RoutedBody::replay(held, trailers, None, None);
            return call(this.service, this.parts, body, decision, None);
        }
        let (scan, violation) = if this.extractor.needs_scanning() {
            let violation = Arc::new(OnceLock::new());
            let scan = Box::new(Scan {
                extractor: this.extractor,
                failure: this.config.failure.clone(),
                violation: Arc::clone(&violation),
            });
            (Some(scan), Some(violation))
        } else {
            (None, None)
        };
        let body = RoutedBody::replay(held, trailers, Some(this.body), scan);
        call(this.service, this.parts, body, decision, violation)
    }

    /// An error before the decision: refuse, or forward unchanged (fail open).
    /// `trailers` are the body's, when it has ended with them.
    fn fail(self, error: Error, trailers: Option<HeaderMap>) -> ResponseFuture<S, B> {
        match self.config.failure.action(error.kind()) {
            FailureAction::Reject => answer(Answer::Reject(error)),
            FailureAction::PassThrough => {
                let mut decision = DecisionData::unrouted(ModelSource::None);
                decision.held_bytes = self.held_len;
                decision.failed_open = Some(error);
                let ended = self.ended || self.body.is_end_stream();
                let rest = (!ended).then_some(self.body);
                let body = RoutedBody::replay(self.held, trailers, rest, None);
                call(self.service, self.parts, body, decision, None)
            }
        }
    }
}

/// Sets the request's `Content-Length`, if it has one, to `new(old)`; drops
/// it when the new length cannot be computed (a `Content-Length` that lied).
fn fix_content_length(headers: &mut HeaderMap, new: impl FnOnce(u64) -> Option<u64>) {
    let Some(old) = headers
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok())
    else {
        return;
    };
    match new(old) {
        Some(length) => {
            headers.insert(header::CONTENT_LENGTH, HeaderValue::from(length));
        }
        None => {
            headers.remove(header::CONTENT_LENGTH);
        }
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
