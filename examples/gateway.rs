//! The multi-model gateway of the demo: [`ModelRoutingLayer`] in front of a
//! [`PoolRouter`] whose pools are HTTP upstreams reached through a hyper
//! client.

use std::{
    convert::Infallible,
    future::Future,
    io,
    net::SocketAddr,
    pin::Pin,
    sync::Arc,
    task::{Context, Poll},
    time::Duration,
};

use bbr_core::rules::RuleTable;
use bbr_tower::{BoxError, ModelRouting, ModelRoutingLayer, PoolRouter, ResponseBody, RoutedBody};
use bytes::Bytes;
use http::{HeaderValue, Request, Response, StatusCode, Uri, Version, header};
use http_body::Body;
use http_body_util::{Either, Full};
use hyper::body::Incoming;
use hyper_util::{
    client::legacy::{Client, connect::HttpConnector},
    rt::{TokioExecutor, TokioIo, TokioTimer},
    server::{conn::auto, graceful::GracefulShutdown},
};
use tokio::{net::TcpListener, sync::Semaphore};
use tower::{Layer, Service, ServiceExt};

/// The response body of an [`Upstream`]: the pool's, or a `502` of its own.
pub type UpstreamBody = Either<Incoming, Full<Bytes>>;

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

/// A reverse proxy to one pool: forwards each request, body streaming, to
/// `http://<addr>` over a pooled hyper client, and the answer back.
#[derive(Debug)]
pub struct Upstream<B> {
    client: Client<HttpConnector, B>,
    authority: http::uri::Authority,
}

impl<B> Clone for Upstream<B> {
    fn clone(&self) -> Self {
        Upstream {
            client: self.client.clone(),
            authority: self.authority.clone(),
        }
    }
}

impl<B> Upstream<B>
where
    B: Body + Send + 'static + Unpin,
    B::Data: Send,
    B::Error: Into<BoxError>,
{
    /// A proxy to the pool listening on `addr`.
    pub fn new(addr: SocketAddr) -> Upstream<B> {
        let client = Client::builder(TokioExecutor::new()).build_http();
        let authority = addr
            .to_string()
            .parse()
            .unwrap_or_else(|_| http::uri::Authority::from_static("127.0.0.1"));
        Upstream { client, authority }
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

    fn call(&mut self, mut request: Request<B>) -> Self::Future {
        let mut uri = http::uri::Parts::default();
        uri.scheme = Some(http::uri::Scheme::HTTP);
        uri.authority = Some(self.authority.clone());
        uri.path_and_query = request.uri().path_and_query().cloned();
        if let Ok(uri) = Uri::from_parts(uri) {
            *request.uri_mut() = uri;
        }
        // Whatever the client spoke, the pool is reached over HTTP/1.1.
        *request.version_mut() = Version::HTTP_11;
        let headers = request.headers_mut();
        for name in HOP_BY_HOP {
            headers.remove(name);
        }
        headers.remove(header::HOST);
        let client = self.client.clone();
        Box::pin(async move {
            match client.request(request).await {
                Ok(mut response) => {
                    let headers = response.headers_mut();
                    for name in HOP_BY_HOP {
                        headers.remove(name);
                    }
                    // The framing is the client connection's own business.
                    headers.remove(header::TRANSFER_ENCODING);
                    Ok(response.map(Either::Left))
                }
                Err(e) => {
                    let body = format!(
                        "{{\"error\":{{\"message\":\"upstream request failed: {}\",\"type\":\"server_error\",\"param\":null,\"code\":\"bad_gateway\"}}}}",
                        escape(&e.to_string())
                    );
                    let mut response = Response::new(Either::Right(Full::new(Bytes::from(body))));
                    *response.status_mut() = StatusCode::BAD_GATEWAY;
                    response.headers_mut().insert(
                        header::CONTENT_TYPE,
                        HeaderValue::from_static("application/json"),
                    );
                    Ok(response)
                }
            }
        })
    }
}

fn escape(text: &str) -> String {
    text.chars()
        .filter(|c| !c.is_control())
        .map(|c| if c == '"' || c == '\\' { '\'' } else { c })
        .collect()
}

/// The gateway service: routing on the body, then one upstream per pool.
pub type GatewayService = ModelRouting<PoolRouter<Upstream<RoutedBody<Incoming>>>>;

/// The gateway's response body.
pub type GatewayBody = ResponseBody<ResponseBody<UpstreamBody>>;

/// Builds the gateway: `layer` (configured with the rules) in front of one
/// [`Upstream`] per `(pool, address)`.
pub fn gateway(layer: ModelRoutingLayer, pools: &[(String, SocketAddr)]) -> GatewayService {
    let router = pools
        .iter()
        .fold(PoolRouter::new(), |router, (name, addr)| {
            router.pool(name.as_str(), Upstream::new(*addr))
        });
    layer.layer(router)
}

/// The layer of the demo for `rules`, with the default (strict) policy,
/// answering `GET /v1/models` from the table.
pub fn layer(rules: RuleTable) -> ModelRoutingLayer {
    ModelRoutingLayer::new().rules(rules).serve_models(true)
}

/// How [`serve_with`] treats connections.
#[derive(Clone, Debug)]
pub struct ServeOptions {
    /// How long a client may take to send a request's headers (HTTP/1.1;
    /// an idle keep-alive connection is closed after it too).
    pub header_read_timeout: Duration,
    /// The most connections served at once; past it the listener waits
    /// (the kernel's backlog holds the rest).
    pub max_connections: usize,
    /// On shutdown, how long open requests (a token stream, say) may take
    /// to finish before their connections are closed.
    pub drain_timeout: Duration,
}

impl Default for ServeOptions {
    fn default() -> Self {
        ServeOptions {
            header_read_timeout: Duration::from_secs(10),
            max_connections: 4096,
            drain_timeout: Duration::from_secs(30),
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
/// An accept error (out of file descriptors, a connection reset before it
/// was accepted) is logged and the loop goes on after a short pause: one
/// client must not be able to stop the server.
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
    let graceful = GracefulShutdown::new();
    let slots = Arc::new(Semaphore::new(options.max_connections.max(1)));
    let mut builder = auto::Builder::new(TokioExecutor::new());
    builder
        .http1()
        .timer(TokioTimer::new())
        .header_read_timeout(options.header_read_timeout);
    let builder = Arc::new(builder);
    let mut shutdown = std::pin::pin!(shutdown);
    loop {
        let slot = tokio::select! {
            slot = Arc::clone(&slots).acquire_owned() => slot,
            () = &mut shutdown => break,
        };
        let Ok(slot) = slot else { break };
        let accepted = tokio::select! {
            accepted = listener.accept() => accepted,
            () = &mut shutdown => break,
        };
        let stream = match accepted {
            Ok((stream, _)) => stream,
            Err(e) => {
                // EMFILE and friends: wait for connections to close.
                eprintln!("gateway: accept failed ({e}); retrying");
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
        };
        let _ = stream.set_nodelay(true);
        let service = service.clone();
        let hyper_service =
            hyper::service::service_fn(move |request| service.clone().oneshot(request));
        let connection = builder
            .serve_connection(TokioIo::new(stream), hyper_service)
            .into_owned();
        let connection = graceful.watch(connection);
        tokio::spawn(async move {
            let _ = connection.await;
            drop(slot);
        });
    }
    drop(listener);
    if tokio::time::timeout(options.drain_timeout, graceful.shutdown())
        .await
        .is_err()
    {
        eprintln!("gateway: drain timed out; closing the connections left");
    }
}
