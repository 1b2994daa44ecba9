//! Reverse proxying to a pool's servers: [`Upstream`] forwards each request,
//! body streaming, to one of the pool's [`Endpoint`]s (balanced by requests
//! under way) and answers a failing server from the error contract.

use std::{
    convert::Infallible,
    future::Future,
    hash::{BuildHasher, Hasher},
    io,
    net::SocketAddr,
    pin::Pin,
    sync::{
        Arc,
        atomic::{AtomicUsize, Ordering},
    },
    task::{Context, Poll},
    time::Duration,
};

use bbr_core::Error;
use bbr_tower::{BoxError, Decision, ResponseBody, error_response};
use bytes::Bytes;
use http::{Request, Response, Uri, Version, header, uri};
use http_body::{Body, Frame, SizeHint};
use hyper::body::Incoming;
use hyper_util::{
    client::legacy::{Client, connect::HttpConnector},
    rt::{TokioExecutor, TokioTimer},
};
use tower::Service;

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
/// [`Front`](crate::Front)'s log line).
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
