//! The multi-model gateway of the demo: [`ModelRoutingLayer`] in front of a
//! [`PoolRouter`] whose pools are HTTP upstreams reached through a hyper
//! client (several servers per pool, balanced), behind a [`Front`] that
//! answers the health, readiness and metrics endpoints and logs one line
//! per request.

use std::{
    convert::Infallible,
    future::Future,
    hash::{BuildHasher, Hasher},
    io,
    net::SocketAddr,
    pin::Pin,
    sync::{
        Arc,
        atomic::{AtomicBool, AtomicUsize, Ordering},
    },
    task::{Context, Poll},
    time::{Duration, Instant},
};

use bbr_core::{Error, rules::RuleTable};
use bbr_listen::{Listener, ListenerOptions, http::HttpOptions, limits};
use bbr_tower::{
    Admission, BoxError, Decision, ModelRouting, ModelRoutingLayer, PoolRouter, ResponseBody,
    RoutedBody, error_response,
};
use bytes::Bytes;
use http::{HeaderValue, Method, Request, Response, StatusCode, Uri, Version, header, uri};
use http_body::{Body, Frame, SizeHint};
use http_body_util::{Either, Full};
use hyper::body::Incoming;
use hyper_util::{
    client::legacy::{Client, connect::HttpConnector},
    rt::{TokioExecutor, TokioTimer},
};
use metrics_exporter_prometheus::PrometheusHandle;
use pin_project_lite::pin_project;
use tokio::net::TcpListener;
use tower::{Layer, Service};

/// The headers that concern one connection only (RFC 9110 §7.6.1): never
/// forwarded.
const HOP_BY_HOP: [&str; 8] = [
    "connection",
    "keep-alive",
    "proxy-connection",
    "proxy-authenticate",
    "proxy-authorization",
    "te",
    "trailer",
    "upgrade",
];

/// One server of a pool: `http://host:port`, with an optional path prefix
/// put in front of every request path.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Endpoint {
    authority: uri::Authority,
    prefix: String,
}

impl Endpoint {
    /// Parses `http://host:port[/prefix]`. Only plain HTTP is spoken to
    /// pools (HTTP/1.1); a query or fragment is refused.
    pub fn parse(text: &str) -> Result<Endpoint, String> {
        let uri: Uri = text.parse().map_err(|e| format!("bad URL {text:?}: {e}"))?;
        match uri.scheme_str() {
            Some("http") => {}
            Some(other) => {
                return Err(format!(
                    "unsupported scheme {other:?} in {text:?}: pools are reached over plain http"
                ));
            }
            None => return Err(format!("{text:?} is not a URL (expected http://host:port)")),
        }
        let authority = uri
            .authority()
            .cloned()
            .ok_or_else(|| format!("no host in {text:?}"))?;
        if authority.as_str().contains('@') {
            return Err(format!("credentials in {text:?} are not supported"));
        }
        if uri.query().is_some() {
            return Err(format!("a query in {text:?} is not supported"));
        }
        let prefix = uri.path().trim_end_matches('/').to_owned();
        Ok(Endpoint { authority, prefix })
    }

    /// The URI of `request_path` (path and query) on this server.
    fn uri(&self, path_and_query: Option<&uri::PathAndQuery>) -> Option<Uri> {
        let mut parts = uri::Parts::default();
        parts.scheme = Some(uri::Scheme::HTTP);
        parts.authority = Some(self.authority.clone());
        let path = path_and_query.map_or("/", uri::PathAndQuery::as_str);
        parts.path_and_query = Some(if self.prefix.is_empty() {
            path.parse().ok()?
        } else {
            format!("{}{path}", self.prefix).parse().ok()?
        });
        Uri::from_parts(parts).ok()
    }
}

impl From<SocketAddr> for Endpoint {
    fn from(addr: SocketAddr) -> Endpoint {
        let authority = addr
            .to_string()
            .parse()
            .unwrap_or_else(|_| uri::Authority::from_static("127.0.0.1"));
        Endpoint {
            authority,
            prefix: String::new(),
        }
    }
}

impl std::fmt::Display for Endpoint {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "http://{}{}", self.authority, self.prefix)
    }
}

/// How an [`Upstream`] treats its servers.
#[derive(Clone, Debug)]
pub struct UpstreamOptions {
    /// How long a TCP connection to a server may take.
    pub connect_timeout: Duration,
    /// How long a server may take, from the request's start, to begin its
    /// answer (its status and headers). A non-streamed completion begins
    /// only once generated, so this is long by default; a token stream
    /// begins at once, and its body is not bounded by it.
    pub response_header_timeout: Duration,
}

impl Default for UpstreamOptions {
    fn default() -> Self {
        UpstreamOptions {
            connect_timeout: Duration::from_secs(5),
            response_header_timeout: Duration::from_secs(300),
        }
    }
}

/// The requests under way at one server (from the call until the answer's
/// body ends or is dropped).
#[derive(Debug)]
struct Server {
    endpoint: Endpoint,
    in_flight: Arc<AtomicUsize>,
}

/// A reverse proxy to one pool: forwards each request, body streaming, to
/// one of the pool's servers over a pooled hyper client (HTTP/1.1), and
/// the answer back.
///
/// With several servers, each request goes to the less busy of two: the
/// next in turn and another picked at random (requests under way count;
/// a tie goes to the one in turn, so an idle pool is served in turn).
/// Failures are answered from the error contract: `502 upstream_error`
/// (refused, reset, malformed), `504 upstream_timeout` (no connection or
/// no answer's headers in time). A client that hangs up while its body is
/// forwarded is logged, not answered.
///
/// The answer carries the request's [`Decision`] as an extension (for the
/// [`Front`]'s log line).
#[derive(Debug)]
pub struct Upstream<B> {
    /// Shared: a clone of the client is a dozen reference counts, and a
    /// request already makes one.
    client: Arc<Client<HttpConnector, ClientBody<B>>>,
    servers: Arc<[Server]>,
    turn: Arc<AtomicUsize>,
    response_header_timeout: Duration,
}

impl<B> Clone for Upstream<B> {
    fn clone(&self) -> Self {
        Upstream {
            client: Arc::clone(&self.client),
            servers: Arc::clone(&self.servers),
            turn: Arc::clone(&self.turn),
            response_header_timeout: self.response_header_timeout,
        }
    }
}

impl<B> Upstream<B>
where
    B: Body + Send + 'static + Unpin,
    B::Data: Send,
    B::Error: Into<BoxError>,
{
    /// A proxy to the one server listening on `addr`, with the default
    /// [`UpstreamOptions`].
    pub fn new(addr: SocketAddr) -> Upstream<B> {
        Upstream::with_server(Endpoint::from(addr), &UpstreamOptions::default())
    }

    /// A proxy to the one server `endpoint`.
    pub fn with_server(endpoint: Endpoint, options: &UpstreamOptions) -> Upstream<B> {
        match Upstream::balanced(vec![endpoint], options) {
            Some(upstream) => upstream,
            None => unreachable!("one endpoint was given"),
        }
    }

    /// A proxy to the servers `endpoints` of one pool; `None` when there
    /// are none.
    pub fn balanced(endpoints: Vec<Endpoint>, options: &UpstreamOptions) -> Option<Upstream<B>> {
        if endpoints.is_empty() {
            return None;
        }
        let mut connector = HttpConnector::new();
        connector.set_connect_timeout(Some(options.connect_timeout));
        connector.set_nodelay(true);
        let client = Client::builder(TokioExecutor::new())
            .timer(TokioTimer::new())
            .build(connector);
        let servers: Vec<Server> = endpoints
            .into_iter()
            .map(|endpoint| Server {
                endpoint,
                in_flight: Arc::default(),
            })
            .collect();
        Some(Upstream {
            client: Arc::new(client),
            servers: servers.into(),
            turn: Arc::default(),
            response_header_timeout: options.response_header_timeout,
        })
    }

    /// The pool's servers.
    pub fn endpoints(&self) -> impl Iterator<Item = &Endpoint> {
        self.servers.iter().map(|s| &s.endpoint)
    }

    /// The server for the next request: of the next in turn and one other
    /// picked at random, the one with fewer requests under way.
    fn pick(&self) -> &Server {
        let n = self.servers.len();
        let first = self.turn.fetch_add(1, Ordering::Relaxed) % n;
        if n == 1 {
            return &self.servers[0];
        }
        let mut hasher = std::collections::hash_map::RandomState::new().build_hasher();
        hasher.write_usize(first);
        let other = (first + 1 + (hasher.finish() as usize) % (n - 1)) % n;
        let load = |i: usize| self.servers[i].in_flight.load(Ordering::Relaxed);
        if load(other) < load(first) {
            &self.servers[other]
        } else {
            &self.servers[first]
        }
    }
}

impl<B> Service<Request<B>> for Upstream<B>
where
    B: Body + Send + 'static + Unpin,
    B::Data: Send,
    B::Error: Into<BoxError>,
{
    type Response = Response<UpstreamBody>;
    type Error = Infallible;
    type Future = Pin<Box<dyn Future<Output = Result<Response<UpstreamBody>, Infallible>> + Send>>;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, request: Request<B>) -> Self::Future {
        let server = self.pick();
        let in_flight = InFlight::enter(&server.in_flight);
        let (mut parts, body) = request.into_parts();
        if let Some(uri) = server.endpoint.uri(parts.uri.path_and_query()) {
            parts.uri = uri;
        }
        // Whatever the client spoke, the pool is reached over HTTP/1.1.
        parts.version = Version::HTTP_11;
        for name in HOP_BY_HOP {
            parts.headers.remove(name);
        }
        parts.headers.remove(header::HOST);
        let decision = parts.extensions.get::<Decision>().cloned();
        let request = Request::from_parts(parts, ClientBody { body });
        let exchange =
            tokio::time::timeout(self.response_header_timeout, self.client.request(request));
        Box::pin(async move {
            let mut response = match exchange.await {
                Ok(Ok(response)) => {
                    let (mut parts, body) = response.into_parts();
                    for name in HOP_BY_HOP {
                        parts.headers.remove(name);
                    }
                    // The framing is the client connection's own business.
                    parts.headers.remove(header::TRANSFER_ENCODING);
                    let body = InFlightBody {
                        body,
                        _in_flight: in_flight,
                    };
                    Response::from_parts(parts, ResponseBody::inner(body))
                }
                Ok(Err(e)) => error_response(&failure(&e)),
                Err(_) => error_response(&Error::upstream_timeout()),
            };
            if let Some(decision) = decision {
                response.extensions_mut().insert(decision);
            }
            Ok(response)
        })
    }
}

/// What a failed exchange with a pool's server is answered with (and
/// logged as).
fn failure(e: &hyper_util::client::legacy::Error) -> Error {
    let mut source: Option<&(dyn std::error::Error + 'static)> = Some(e);
    while let Some(cause) = source {
        if let Some(client) = cause.downcast_ref::<ClientBodyError>() {
            // The body the client sent failed: a violation the layer found
            // after its decision (it answers the client itself), or the
            // client went away; either way nobody waits for a 502.
            if let Some(violation) = client.0.downcast_ref::<Error>() {
                return violation.clone();
            }
            tracing::info!(error = %client.0, "the client hung up while its body was forwarded");
            return Error::body_read();
        }
        if let Some(io) = cause.downcast_ref::<io::Error>()
            && io.kind() == io::ErrorKind::TimedOut
        {
            tracing::warn!(error = %e, "pool server: connect timeout");
            return Error::upstream_timeout();
        }
        source = cause.source();
    }
    let reason = std::iter::successors(Some(e as &dyn std::error::Error), |c| c.source())
        .last()
        .map_or_else(|| e.to_string(), ToString::to_string);
    tracing::warn!(error = %reason, "pool server failed");
    Error::upstream(&reason)
}

/// A request under way at a server, counted until dropped.
#[derive(Debug)]
struct InFlight(Arc<AtomicUsize>);

impl InFlight {
    fn enter(count: &Arc<AtomicUsize>) -> InFlight {
        count.fetch_add(1, Ordering::Relaxed);
        InFlight(Arc::clone(count))
    }
}

impl Drop for InFlight {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::Relaxed);
    }
}

/// A pool server's answer body; the request counts as under way at the
/// server until it ends or is dropped.
#[derive(Debug)]
pub struct InFlightBody {
    body: Incoming,
    _in_flight: InFlight,
}

impl Body for InFlightBody {
    type Data = Bytes;
    type Error = hyper::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, hyper::Error>>> {
        Pin::new(&mut self.body).poll_frame(cx)
    }

    fn is_end_stream(&self) -> bool {
        self.body.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.body.size_hint()
    }
}

/// The response body of an [`Upstream`]: the pool's, or the error
/// contract's answer to a failed exchange.
pub type UpstreamBody = ResponseBody<InFlightBody>;

/// The request body on its way to a pool, its errors marked as the
/// client's, so that a client hanging up is told apart from a failing pool.
#[derive(Debug)]
pub struct ClientBody<B> {
    body: B,
}

/// An error of the body the client sent.
#[derive(Debug)]
struct ClientBodyError(BoxError);

impl std::fmt::Display for ClientBodyError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "client body: {}", self.0)
    }
}

impl std::error::Error for ClientBodyError {}

impl<B> Body for ClientBody<B>
where
    B: Body + Unpin,
    B::Error: Into<BoxError>,
{
    type Data = B::Data;
    type Error = BoxError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<B::Data>, BoxError>>> {
        match Pin::new(&mut self.body).poll_frame(cx) {
            Poll::Ready(Some(Err(e))) => {
                Poll::Ready(Some(Err(Box::new(ClientBodyError(e.into())))))
            }
            other => other.map(|f| f.map(|f| f.map_err(|e| e.into()))),
        }
    }

    fn is_end_stream(&self) -> bool {
        self.body.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.body.size_hint()
    }
}

/// The gateway service: routing on the body, then one upstream per pool.
pub type GatewayService = ModelRouting<PoolRouter<Upstream<RoutedBody<Incoming>>>>;

/// The gateway's response body.
pub type GatewayBody = ResponseBody<ResponseBody<UpstreamBody>>;

/// Builds the gateway: `layer` (configured with the rules) in front of one
/// [`Upstream`] per pool.
pub fn gateway(
    layer: ModelRoutingLayer,
    pools: impl IntoIterator<Item = (String, Upstream<RoutedBody<Incoming>>)>,
) -> GatewayService {
    gateway_with(layer, pools, None)
}

/// [`gateway`] with each pool's requests in flight limited by `admission`
/// (shed, queued or admitted by criticality when a pool is saturated).
pub fn gateway_with(
    layer: ModelRoutingLayer,
    pools: impl IntoIterator<Item = (String, Upstream<RoutedBody<Incoming>>)>,
    admission: Option<Admission>,
) -> GatewayService {
    let router = pools
        .into_iter()
        .fold(PoolRouter::new(), |router, (name, upstream)| {
            router.pool(name, upstream)
        });
    let router = match admission {
        Some(admission) => router.admission(admission),
        None => router,
    };
    layer.layer(router)
}

/// The layer of the demo for `rules`, with the default (strict) policy,
/// answering `GET /v1/models` from the table.
pub fn layer(rules: RuleTable) -> ModelRoutingLayer {
    ModelRoutingLayer::new().rules(rules).serve_models(true)
}

/// Whether the gateway takes traffic: set once it listens with its rules
/// loaded, cleared when it starts draining. Cheap to clone: clones share
/// the flag.
#[derive(Clone, Debug, Default)]
pub struct Readiness {
    ready: Arc<AtomicBool>,
}

impl Readiness {
    /// Marks the gateway ready (`true`) or not.
    pub fn set(&self, ready: bool) {
        self.ready.store(ready, Ordering::Release);
    }

    /// Whether the gateway is ready.
    pub fn is_ready(&self) -> bool {
        self.ready.load(Ordering::Acquire)
    }
}

/// The gateway's own endpoints: `GET /healthz` (200 while the process
/// serves), `GET /readyz` (200 when [`Readiness`] says so, 503 otherwise)
/// and `GET /metrics` (the Prometheus text format, when a recorder is
/// given).
#[derive(Clone, Debug)]
pub struct Admin {
    readiness: Readiness,
    metrics: Option<PrometheusHandle>,
}

impl Admin {
    /// The endpoints for `readiness`, with `/metrics` rendered from
    /// `metrics` (404 without).
    pub fn new(readiness: Readiness, metrics: Option<PrometheusHandle>) -> Admin {
        Admin { readiness, metrics }
    }

    /// The answer when `request` is for one of the endpoints.
    pub fn answer<B>(&self, request: &Request<B>) -> Option<Response<Full<Bytes>>> {
        if request.method() != Method::GET && request.method() != Method::HEAD {
            return None;
        }
        let (status, body, content_type) = match request.uri().path() {
            "/healthz" => (StatusCode::OK, Bytes::from_static(b"ok\n"), "text/plain"),
            "/readyz" if self.readiness.is_ready() => {
                (StatusCode::OK, Bytes::from_static(b"ready\n"), "text/plain")
            }
            "/readyz" => (
                StatusCode::SERVICE_UNAVAILABLE,
                Bytes::from_static(b"not ready\n"),
                "text/plain",
            ),
            "/metrics" => {
                let handle = self.metrics.as_ref()?;
                (
                    StatusCode::OK,
                    Bytes::from(handle.render()),
                    "text/plain; version=0.0.4",
                )
            }
            _ => return None,
        };
        let mut response = Response::new(Full::new(body));
        *response.status_mut() = status;
        response
            .headers_mut()
            .insert(header::CONTENT_TYPE, HeaderValue::from_static(content_type));
        Some(response)
    }
}

impl Service<Request<Incoming>> for Admin {
    type Response = Response<Full<Bytes>>;
    type Error = Infallible;
    type Future = std::future::Ready<Result<Response<Full<Bytes>>, Infallible>>;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, request: Request<Incoming>) -> Self::Future {
        let response = self.answer(&request).unwrap_or_else(|| {
            let mut response = Response::new(Full::new(Bytes::from_static(b"not found\n")));
            *response.status_mut() = StatusCode::NOT_FOUND;
            response
        });
        std::future::ready(Ok(response))
    }
}

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

/// How [`serve_with`] treats connections.
#[derive(Clone, Debug)]
pub struct ServeOptions {
    /// The listener's name in log lines and in the `listener` label of the
    /// connection metrics (`http`; `admin` for the admin listener).
    pub name: &'static str,
    /// How long a client may take, counted from accept, to send its first
    /// request's complete head (or the HTTP/2 preface).
    pub header_read_timeout: Duration,
    /// How long an HTTP/1.1 keep-alive connection may wait, after an
    /// answer, for the next request's complete head.
    pub idle_timeout: Duration,
    /// The most connections served at once; past it the listener waits
    /// (the kernel's backlog holds the rest).
    pub max_connections: usize,
    /// On shutdown, how long open requests (a token stream, say) may take
    /// to finish before their connections are closed.
    pub drain_timeout: Duration,
}

/// Descriptors a gateway keeps for everything but client connections and
/// their upstream connections: the pools' listeners, the rules file, the
/// log, the admin listener's connections.
pub const RESERVED_DESCRIPTORS: u64 = 128;

impl Default for ServeOptions {
    /// 10 s for the first head, 75 s keep-alive (nginx's
    /// `keepalive_timeout`), 30 s drain, and as many connections as the
    /// descriptor limit in force allows: two descriptors each (the client's
    /// and one to a pool) after [`RESERVED_DESCRIPTORS`].
    fn default() -> Self {
        let http = HttpOptions::default();
        ServeOptions {
            name: "http",
            header_read_timeout: Duration::from_secs(10),
            idle_timeout: http.idle_timeout,
            max_connections: limits::connection_budget(
                limits::descriptor_limit(),
                RESERVED_DESCRIPTORS,
                2,
            ),
            drain_timeout: http.drain_timeout,
        }
    }
}

/// Serves `service` on `listener` (HTTP/1.1 and HTTP/2 without TLS) with
/// the default [`ServeOptions`], until the task is dropped.
pub async fn serve<S, ResBody>(listener: TcpListener, service: S) -> io::Result<()>
where
    S: Service<Request<Incoming>, Response = Response<ResBody>, Error = Infallible>
        + Clone
        + Send
        + 'static,
    S::Future: Send + 'static,
    ResBody: Body<Data = Bytes> + Send + 'static,
    ResBody::Error: Into<BoxError>,
{
    serve_with(
        listener,
        service,
        ServeOptions::default(),
        std::future::pending(),
    )
    .await;
    Ok(())
}

/// Serves `service` on `listener` until `shutdown` completes, then stops
/// accepting and lets open requests finish for up to
/// [`drain_timeout`](ServeOptions::drain_timeout).
///
/// The accept loop is [`bbr_listen`]'s: a connection that has not sent a
/// complete request head within the header timeout, counted from accept,
/// is closed; at [`max_connections`](ServeOptions::max_connections) the
/// listener stops accepting; an accept error (out of file descriptors) is
/// waited out with a growing pause, never in a spin.
pub async fn serve_with<S, ResBody>(
    listener: TcpListener,
    service: S,
    options: ServeOptions,
    shutdown: impl Future<Output = ()>,
) where
    S: Service<Request<Incoming>, Response = Response<ResBody>, Error = Infallible>
        + Clone
        + Send
        + 'static,
    S::Future: Send + 'static,
    ResBody: Body<Data = Bytes> + Send + 'static,
    ResBody::Error: Into<BoxError>,
{
    let listener = Listener::new(
        listener,
        ListenerOptions::new(options.name, options.max_connections)
            .header_timeout(options.header_read_timeout),
    );
    let http = HttpOptions {
        idle_timeout: options.idle_timeout,
        drain_timeout: options.drain_timeout,
        ..HttpOptions::default()
    };
    bbr_listen::http::serve(listener, service, http, shutdown).await;
}
