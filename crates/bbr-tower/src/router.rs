//! [`PoolRouter`]: one inner service per pool, picked by the decision.

use std::{
    collections::HashMap,
    fmt,
    future::Future,
    pin::Pin,
    task::{Context, Poll, ready},
};

use bbr_core::Error;
use bytes::Bytes;
use http::{Request, Response};
use http_body::Body;
use pin_project_lite::pin_project;
use tower_service::Service;

use crate::{Decision, ResponseBody, response::reject};

/// The panic message of a future polled after it completed.
const POLLED_AFTER_COMPLETION: &str = "RouterFuture polled after completion";

/// Dispatches each request to the service of the pool its [`Decision`]
/// names: put it behind [`ModelRouting`](crate::ModelRouting) and it is the
/// whole gateway.
///
/// Requests with no pool (no model, or a rule table that let them through
/// unrouted) go to the [`fallback`](PoolRouter::fallback) service; without
/// one they are answered `404` (`no_route`). A pool with no service is
/// answered `503` (`pool_unavailable`). Both answers have the error
/// contract's JSON shape.
///
/// Readiness is per pool: [`poll_ready`](Service::poll_ready) is always ready,
/// and each call drives a clone of the selected pool's service to readiness
/// before calling it, so a saturated pool holds back its own requests only,
/// never another pool's. Services are therefore cloned per request: use
/// cheaply cloned ones (a hyper client, a `tower::buffer::Buffer`).
///
/// ```
/// use std::convert::Infallible;
/// use bbr_tower::PoolRouter;
/// use tower::service_fn;
///
/// async fn gemma3(_: http::Request<String>) -> Result<http::Response<String>, Infallible> {
///     Ok(http::Response::new("gemma3".to_owned()))
/// }
/// let router = PoolRouter::new()
///     .pool("gemma3", service_fn(gemma3))
///     .pool("deepseek-r1", service_fn(gemma3));
/// assert_eq!(router.pools().count(), 2);
/// ```
#[derive(Clone)]
pub struct PoolRouter<S> {
    pools: HashMap<Box<str>, S>,
    fallback: Option<S>,
}

impl<S> Default for PoolRouter<S> {
    fn default() -> Self {
        PoolRouter {
            pools: HashMap::new(),
            fallback: None,
        }
    }
}

impl<S> PoolRouter<S> {
    /// A router with no pools.
    pub fn new() -> PoolRouter<S> {
        PoolRouter::default()
    }

    /// Sends the requests routed to `pool` to `service` (replacing any
    /// service given for that pool before).
    #[must_use]
    pub fn pool(mut self, pool: impl Into<Box<str>>, service: S) -> Self {
        self.pools.insert(pool.into(), service);
        self
    }

    /// Sends the requests that name no pool to `service`.
    #[must_use]
    pub fn fallback(mut self, service: S) -> Self {
        self.fallback = Some(service);
        self
    }

    /// The names of the pools served.
    pub fn pools(&self) -> impl Iterator<Item = &str> {
        self.pools.keys().map(|k| &**k)
    }

    /// The service of `pool`, if any.
    pub fn get(&self, pool: &str) -> Option<&S> {
        self.pools.get(pool)
    }
}

impl<S> fmt::Debug for PoolRouter<S> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut pools: Vec<&str> = self.pools().collect();
        pools.sort_unstable();
        f.debug_struct("PoolRouter")
            .field("pools", &pools)
            .field("fallback", &self.fallback.is_some())
            .finish()
    }
}

impl<S, B, ResBody> Service<Request<B>> for PoolRouter<S>
where
    S: Service<Request<B>, Response = Response<ResBody>> + Clone,
    ResBody: Body<Data = Bytes>,
{
    type Response = Response<ResponseBody<ResBody>>;
    type Error = S::Error;
    type Future = RouterFuture<S, B>;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), S::Error>> {
        // Readiness depends on the pool, known only once a request is here.
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, request: Request<B>) -> RouterFuture<S, B> {
        let pool = request
            .extensions()
            .get::<Decision>()
            .and_then(Decision::pool);
        let service = match pool {
            Some(pool) => match self.pools.get(pool) {
                Some(service) => service.clone(),
                None => return RouterFuture::answer(Error::pool_unavailable(pool)),
            },
            None => match &self.fallback {
                Some(service) => service.clone(),
                None => return RouterFuture::answer(Error::no_route()),
            },
        };
        RouterFuture {
            state: RouterState::NotReady {
                service,
                request: Some(request),
            },
        }
    }
}

pin_project! {
    /// The response future of [`PoolRouter`].
    pub struct RouterFuture<S, B>
    where
        S: Service<Request<B>>,
    {
        #[pin]
        state: RouterState<S, B>,
    }
}

pin_project! {
    #[project = RouterStateProj]
    enum RouterState<S, B>
    where
        S: Service<Request<B>>,
    {
        // `request` is `None` once it was handed to the service.
        NotReady { service: S, request: Option<Request<B>> },
        Called { #[pin] future: S::Future },
        // `None` once the answer went out.
        Answered { error: Option<Error> },
    }
}

impl<S, B> RouterFuture<S, B>
where
    S: Service<Request<B>>,
{
    fn answer(error: Error) -> Self {
        RouterFuture {
            state: RouterState::Answered { error: Some(error) },
        }
    }
}

impl<S, B, ResBody> Future for RouterFuture<S, B>
where
    S: Service<Request<B>, Response = Response<ResBody>>,
    ResBody: Body<Data = Bytes>,
{
    type Output = Result<Response<ResponseBody<ResBody>>, S::Error>;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        loop {
            let future = match self.as_mut().project().state.project() {
                RouterStateProj::NotReady { service, request } => {
                    ready!(service.poll_ready(cx))?;
                    let request = request.take().expect(POLLED_AFTER_COMPLETION);
                    service.call(request)
                }
                RouterStateProj::Called { future } => {
                    let response = ready!(future.poll(cx))?;
                    return Poll::Ready(Ok(response.map(ResponseBody::inner)));
                }
                RouterStateProj::Answered { error } => {
                    let error = error.take().expect(POLLED_AFTER_COMPLETION);
                    return Poll::Ready(Ok(reject(&error)));
                }
            };
            self.as_mut()
                .project()
                .state
                .set(RouterState::Called { future });
        }
    }
}

impl<S, B> fmt::Debug for RouterFuture<S, B>
where
    S: Service<Request<B>>,
{
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let state = match &self.state {
            RouterState::NotReady { .. } => "not_ready",
            RouterState::Called { .. } => "called",
            RouterState::Answered { .. } => "answered",
        };
        f.debug_struct("RouterFuture")
            .field("state", &state)
            .finish()
    }
}
