//! The gateway as a client meets it: [`Front`] answers the [`Admin`]
//! endpoints and writes the access log, one line per request.

use std::{
    convert::Infallible,
    future::Future,
    pin::Pin,
    task::{Context, Poll},
    time::Instant,
};

use bbr_core::Error;
use bbr_tower::Decision;
use bytes::Bytes;
use http::{Method, Request, Response, StatusCode};
use http_body::{Body, Frame, SizeHint};
use http_body_util::{Either, Full};
use hyper::body::Incoming;
use pin_project_lite::pin_project;
use tower::Service;

use crate::admin::Admin;

/// The gateway as a client meets it: the [`Admin`] endpoints (unless they
/// are served on a listener of their own), then `inner`, with one log line
/// per request (target `gateway::access`, level INFO) when its answer's
/// body ends or is dropped: method, path, status, model, rule, pool, error
/// code, body bytes held before the decision, bytes answered, duration.
#[derive(Clone, Debug)]
pub struct Front<S> {
    inner: S,
    admin: Option<Admin>,
}

impl<S> Front<S> {
    /// `inner` behind the endpoints of `admin` (`None`: no endpoints here).
    pub fn new(inner: S, admin: Option<Admin>) -> Front<S> {
        Front { inner, admin }
    }
}

/// The response body of a [`Front`].
pub type FrontBody<B> = Either<LoggedBody<B>, Full<Bytes>>;

impl<S, ResBody> Service<Request<Incoming>> for Front<S>
where
    S: Service<Request<Incoming>, Response = Response<ResBody>, Error = Infallible>
        + Clone
        + Send
        + 'static,
    S::Future: Send + 'static,
    ResBody: Body<Data = Bytes> + Send + 'static,
{
    type Response = Response<FrontBody<ResBody>>;
    type Error = Infallible;
    type Future = Pin<Box<dyn Future<Output = Result<Self::Response, Infallible>> + Send>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, request: Request<Incoming>) -> Self::Future {
        if let Some(response) = self.admin.as_ref().and_then(|a| a.answer(&request)) {
            return Box::pin(std::future::ready(Ok(response.map(Either::Right))));
        }
        let mut log = RequestLog::new(&request);
        let clone = self.inner.clone();
        let future = std::mem::replace(&mut self.inner, clone).call(request);
        Box::pin(async move {
            let response = future.await?;
            log.answered(&response);
            Ok(response.map(|body| Either::Left(LoggedBody { body, log })))
        })
    }
}

/// What the access log line says about one request; written when dropped.
#[derive(Debug)]
struct RequestLog {
    started: Instant,
    method: Method,
    path: String,
    status: Option<StatusCode>,
    decision: Option<Decision>,
    error: Option<&'static str>,
    bytes_out: u64,
}

impl RequestLog {
    fn new<B>(request: &Request<B>) -> RequestLog {
        RequestLog {
            started: Instant::now(),
            method: request.method().clone(),
            path: request.uri().path().to_owned(),
            status: None,
            decision: None,
            error: None,
            bytes_out: 0,
        }
    }

    fn answered<B>(&mut self, response: &Response<B>) {
        self.status = Some(response.status());
        self.decision = response.extensions().get::<Decision>().cloned();
        self.error = response
            .extensions()
            .get::<Error>()
            .map(|e| e.kind().as_str());
    }
}

impl Drop for RequestLog {
    fn drop(&mut self) {
        let decision = self.decision.as_ref();
        let route = decision.and_then(Decision::route);
        tracing::info!(
            target: "gateway::access",
            method = self.method.as_str(),
            path = self.path.as_str(),
            status = self.status.map_or(0, |s| s.as_u16()),
            model = decision.and_then(Decision::model).unwrap_or("-"),
            rule = route.and_then(|r| r.rule()).unwrap_or("-"),
            pool = decision.and_then(Decision::pool).unwrap_or("-"),
            error = self.error.unwrap_or("-"),
            held_bytes = decision.map_or(0, Decision::held_bytes),
            bytes_out = self.bytes_out,
            // Whole microseconds: `16.215`, not `16.215543999999998`.
            duration_ms = self.started.elapsed().as_micros() as f64 / 1e3,
            "request"
        );
    }
}

pin_project! {
    /// A response body that counts what it yields for the access log line,
    /// written when it ends or is dropped.
    #[derive(Debug)]
    pub struct LoggedBody<B> {
        #[pin]
        body: B,
        log: RequestLog,
    }
}

impl<B> Body for LoggedBody<B>
where
    B: Body<Data = Bytes>,
{
    type Data = Bytes;
    type Error = B::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, B::Error>>> {
        let this = self.project();
        let frame = this.body.poll_frame(cx);
        if let Poll::Ready(Some(Ok(frame))) = &frame
            && let Some(data) = frame.data_ref()
        {
            this.log.bytes_out += data.len() as u64;
        }
        frame
    }

    fn is_end_stream(&self) -> bool {
        self.body.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.body.size_hint()
    }
}
