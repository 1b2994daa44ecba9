//! [`PoolRouter`]: one inner service per pool, picked by the decision.

use std::{
    collections::HashMap,
    fmt,
    future::Future,
    pin::Pin,
    sync::Arc,
    task::{Context, Poll, ready},
};

use bbr_core::Error;
use bytes::Bytes;
use http::{Request, Response};
use http_body::Body;
use pin_project_lite::pin_project;
use tower_service::Service;

#[cfg(feature = "tokio")]
use crate::admission::{Admission, AdmissionStats, Entry, Gate};
use crate::{Decision, ResponseBody, response::Slot, response::reject};

/// Without tokio there is no admission: every request enters at once.
#[cfg(not(feature = "tokio"))]
#[derive(Default)]
struct Entry {}

#[cfg(not(feature = "tokio"))]
impl Entry {
    fn poll_admit(&mut self, _cx: &mut Context<'_>) -> Poll<Result<Slot, Error>> {
        Poll::Ready(Ok(Slot::default()))
    }
}

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
/// With [`admission`](PoolRouter::admission) (feature `tokio`), each pool
/// admits a limited number of requests in flight and, when saturated,
/// sheds, queues or admits by criticality; see [`Admission`](crate::Admission).
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
pub struct PoolRouter<S> {
    /// Shared by the clones a server makes per request or connection: a
    /// clone is one reference count, whatever the number of pools.
    inner: Arc<Pools<S>>,
}

/// The pools of a [`PoolRouter`].
#[derive(Clone)]
struct Pools<S> {
    pools: HashMap<Box<str>, S>,
    fallback: Option<S>,
    #[cfg(feature = "tokio")]
    admission: Option<Admission>,
    #[cfg(feature = "tokio")]
    gates: HashMap<Box<str>, Arc<Gate>>,
}

impl<S> Clone for PoolRouter<S> {
    fn clone(&self) -> Self {
        PoolRouter {
            inner: Arc::clone(&self.inner),
        }
    }
}

impl<S> Default for PoolRouter<S> {
    fn default() -> Self {
        PoolRouter {
            inner: Arc::new(Pools {
                pools: HashMap::new(),
                fallback: None,
                #[cfg(feature = "tokio")]
                admission: None,
                #[cfg(feature = "tokio")]
                gates: HashMap::new(),
            }),
        }
    }
}

impl<S> PoolRouter<S> {
    /// A router with no pools.
    pub fn new() -> PoolRouter<S> {
        PoolRouter::default()
    }

    /// The names of the pools served.
    pub fn pools(&self) -> impl Iterator<Item = &str> {
        self.inner.pools.keys().map(|k| &**k)
    }

    /// The service of `pool`, if any.
    pub fn get(&self, pool: &str) -> Option<&S> {
        self.inner.pools.get(pool)
    }

    /// What `pool`'s admission did so far, when admission is on.
    #[cfg(feature = "tokio")]
    #[cfg_attr(docsrs, doc(cfg(feature = "tokio")))]
    pub fn admission_stats(&self, pool: &str) -> Option<AdmissionStats> {
        self.inner.gates.get(pool).map(|gate| gate.stats())
    }
}

/// The builder methods: a router being built is not shared yet, so they
/// change it in place (a clone of a router is changed apart, hence `Clone`).
impl<S: Clone> PoolRouter<S> {
    fn edit(&mut self) -> &mut Pools<S> {
        Arc::make_mut(&mut self.inner)
    }

    /// Sends the requests routed to `pool` to `service` (replacing any
    /// service given for that pool before).
    #[must_use]
    pub fn pool(mut self, pool: impl Into<Box<str>>, service: S) -> Self {
        let pool = pool.into();
        let inner = self.edit();
        #[cfg(feature = "tokio")]
        if let Some(admission) = &inner.admission {
            let gate = Arc::new(Gate::new(&pool, admission.clone()));
            inner.gates.insert(pool.clone(), gate);
        }
        inner.pools.insert(pool, service);
        self
    }

    /// Limits each pool's requests in flight (from the call to the end of
    /// the response body) and, when a pool is saturated, refuses, queues or
    /// admits its requests by their rule's criticality or priority (see
    /// [`Admission`]). The limits apply to every pool, given before or after.
    ///
    /// ```
    /// use std::convert::Infallible;
    /// use bbr_tower::{Admission, PoolRouter};
    /// use tower::service_fn;
    ///
    /// async fn pool(_: http::Request<String>) -> Result<http::Response<String>, Infallible> {
    ///     Ok(http::Response::new(String::new()))
    /// }
    /// let router = PoolRouter::new()
    ///     .pool("gemma3", service_fn(pool))
    ///     .admission(Admission::new(32));
    /// assert_eq!(router.admission_stats("gemma3").unwrap().admitted, [0, 0, 0]);
    /// ```
    #[cfg(feature = "tokio")]
    #[cfg_attr(docsrs, doc(cfg(feature = "tokio")))]
    #[must_use]
    pub fn admission(mut self, admission: Admission) -> Self {
        let inner = self.edit();
        inner.gates = inner
            .pools
            .keys()
            .map(|pool| (pool.clone(), Arc::new(Gate::new(pool, admission.clone()))))
            .collect();
        inner.admission = Some(admission);
        self
    }

    /// Sends the requests that name no pool to `service`.
    #[must_use]
    pub fn fallback(mut self, service: S) -> Self {
        self.edit().fallback = Some(service);
        self
    }
}

impl<S> fmt::Debug for PoolRouter<S> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut pools: Vec<&str> = self.pools().collect();
        pools.sort_unstable();
        f.debug_struct("PoolRouter")
            .field("pools", &pools)
            .field("fallback", &self.inner.fallback.is_some())
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
        let decision = request.extensions().get::<Decision>();
        let pool = decision.and_then(Decision::pool);
        #[cfg_attr(not(feature = "tokio"), allow(unused_mut))]
        let mut entry = Entry::default();
        let service = match pool {
            Some(pool) => match self.inner.pools.get(pool) {
                Some(service) => {
                    #[cfg(feature = "tokio")]
                    if let Some(gate) = self.inner.gates.get(pool) {
                        match Entry::new(gate, pool, decision.and_then(Decision::route)) {
                            Ok(admitted) => entry = admitted,
                            Err(error) => return RouterFuture::answer(error),
                        }
                    }
                    service.clone()
                }
                None => return RouterFuture::answer(Error::pool_unavailable(pool)),
            },
            None => match &self.inner.fallback {
                Some(service) => service.clone(),
                None => return RouterFuture::answer(Error::no_route()),
            },
        };
        RouterFuture {
            state: RouterState::NotReady {
                service,
                request: Some(request),
                entry,
                slot: None,
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
        // `request` is `None` once it was handed to the service; `slot` is
        // `Some` once the pool admitted the request.
        NotReady { service: S, request: Option<Request<B>>, entry: Entry, slot: Option<Slot> },
        Called { #[pin] future: S::Future, slot: Option<Slot> },
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
            let (future, slot) = match self.as_mut().project().state.project() {
                RouterStateProj::NotReady {
                    service,
                    request,
                    entry,
                    slot,
                } => {
                    if slot.is_none() {
                        match ready!(entry.poll_admit(cx)) {
                            Ok(admitted) => *slot = Some(admitted),
                            Err(error) => {
                                // Refused while waiting: the request is dropped unsent.
                                request.take();
                                return Poll::Ready(Ok(reject(&error)));
                            }
                        }
                    }
                    ready!(service.poll_ready(cx))?;
                    let request = request.take().expect(POLLED_AFTER_COMPLETION);
                    (service.call(request), slot.take())
                }
                RouterStateProj::Called { future, slot } => {
                    let response = ready!(future.poll(cx))?;
                    return Poll::Ready(Ok(response.map(|body| {
                        ResponseBody::admitted(body, slot.take().unwrap_or_default())
                    })));
                }
                RouterStateProj::Answered { error } => {
                    let error = error.take().expect(POLLED_AFTER_COMPLETION);
                    return Poll::Ready(Ok(reject(&error)));
                }
            };
            self.as_mut()
                .project()
                .state
                .set(RouterState::Called { future, slot });
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
