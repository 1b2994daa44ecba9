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
use bbr_core::{BodyExtractor, Error, ErrorKind, FailureAction};
use bytes::Bytes;
use http::{
    HeaderMap, HeaderName, HeaderValue, Request, Response, StatusCode, header, request::Parts,
};
use http_body::Body;
use pin_project_lite::pin_project;
use tower_service::Service;

use crate::{
    BoxError, Decision, ModelSource, ResponseBody, RoutedBody,
    body::{Read, Stream},
    decision::DecisionData,
    layer::Config,
    response::{local_error, reject},
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
        Reading { reading: Option<Reading<S, B>> },
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
    /// The body, the extractor and the held chunks: one allocation, handed
    /// on to the [`RoutedBody`] as it is.
    stream: Pin<Box<Stream<B>>>,
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

        if !config.paths.is_empty() {
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
                    reading: Some(Reading {
                        service,
                        config,
                        table,
                        parts,
                        stream: Box::pin(Stream::new(body, extractor)),
                    }),
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
    let request_id = if table.uses_request_key() {
        parts.headers.get(&REQUEST_ID).map(HeaderValue::as_bytes)
    } else {
        None
    };
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
                    let read = ready!(state.stream.as_mut().poll_read(cx));
                    match reading.take() {
                        Some(state) => state.proceed(read),
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
    fn proceed(mut self, read: Read) -> ResponseFuture<S, B> {
        match read {
            Read::BodyError => return answer(Answer::BodyReadError),
            Read::Failed(error) => return self.fail(error),
            Read::Decided => {}
            Read::Ended => {
                if self.stream.held.is_empty() {
                    // An empty body: nothing to route on.
                    let decision = DecisionData::unrouted(ModelSource::None);
                    let body = RoutedBody::replay(self.stream);
                    return call(self.service, self.parts, body, decision, None);
                }
            }
        }
        let ended = self.stream.ended();
        let extractor = &mut self.stream.as_mut().project().extractor;
        // At the end of the body the extractor checks it is complete; in the
        // middle, the strict policy goes on scanning in the body.
        if (ended || extractor.extraction().is_none())
            && let Err(error) = extractor.finish()
        {
            return self.fail(error);
        }
        let Some(extraction) = extractor.extraction().cloned() else {
            // `finish` succeeded, so this cannot happen; refuse rather than guess.
            let error = Error::new(
                ErrorKind::InvalidJson,
                self.stream.held.len(),
                "no decision",
            );
            return self.fail(error);
        };
        let is_json = extractor.is_json();
        let needs_scanning = extractor.needs_scanning();
        let model = extraction.model().map(ModelRef::Body);
        let mut decision = match decide(&self.config, &self.table, &mut self.parts, model) {
            Ok(decision) => decision,
            Err(error) => return answer(Answer::Reject(error)),
        };
        decision.held_bytes = extraction.decided_at();

        // Only a JSON body can be rewritten; a multipart one keeps its model.
        if let (Some(route), Some(model)) = (decision.route.as_ref(), extraction.model())
            && route.is_rewrite()
            && is_json
        {
            let held = &mut self.stream.as_mut().project().held;
            let chunks = held.take();
            match bbr_core::rules::rewrite_body(&chunks, model, route) {
                Some(rewritten) => {
                    fix_content_length(&mut self.parts.headers, |old| {
                        rewritten.content_length(old)
                    });
                    held.replace(rewritten.chunks);
                }
                None => held.replace(chunks),
            }
        }
        decision.extraction = Some(extraction);

        let violation = (!ended && needs_scanning)
            .then(|| self.stream.as_mut().scan_rest(self.config.failure.clone()));
        let body = RoutedBody::replay(self.stream);
        call(self.service, self.parts, body, decision, violation)
    }

    /// An error before the decision: refuse, or forward unchanged (fail open).
    fn fail(self, error: Error) -> ResponseFuture<S, B> {
        match self.config.failure.action(error.kind()) {
            FailureAction::Reject => answer(Answer::Reject(error)),
            FailureAction::PassThrough => {
                let mut decision = DecisionData::unrouted(ModelSource::None);
                decision.held_bytes = self.stream.held.len();
                decision.failed_open = Some(error);
                let body = RoutedBody::replay(self.stream);
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
