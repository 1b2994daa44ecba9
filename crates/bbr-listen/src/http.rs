//! [`serve`]: HTTP/1.1 and HTTP/2 without TLS (hyper) on a [`Listener`].

use std::{convert::Infallible, future::Future, sync::Arc, time::Duration};

use bytes::Bytes;
use http_body::Body;
use hyper::{Request, Response, body::Incoming};
use hyper_util::{
    rt::{TokioExecutor, TokioIo, TokioTimer},
    server::{conn::auto, graceful::GracefulShutdown},
};
use tower::{Service, ServiceExt};

use crate::Listener;

type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// How [`serve`] treats connections once their first request head is in
/// (the header timeout before it is the [`Listener`]'s).
#[derive(Clone, Debug)]
pub struct HttpOptions {
    /// How long an HTTP/1.1 keep-alive connection may wait, after an
    /// answer, for the next request's complete head; past it the
    /// connection is closed. nginx's `keepalive_timeout` is 75 s, the
    /// default here.
    pub idle_timeout: Duration,
    /// How often an HTTP/2 connection is pinged; a ping not answered within
    /// as long again closes it.
    pub http2_keepalive: Duration,
    /// On shutdown, how long open requests (a token stream, say) may take
    /// to finish before their connections are closed.
    pub drain_timeout: Duration,
}

impl Default for HttpOptions {
    fn default() -> Self {
        HttpOptions {
            idle_timeout: Duration::from_secs(75),
            http2_keepalive: Duration::from_secs(30),
            drain_timeout: Duration::from_secs(30),
        }
    }
}

/// Serves `service` on `listener` until `shutdown` completes, then stops
/// accepting and lets open requests finish for up to
/// [`drain_timeout`](HttpOptions::drain_timeout).
///
/// ```no_run
/// use std::convert::Infallible;
///
/// use bbr_listen::{Listener, ListenerOptions, http::{HttpOptions, serve}};
/// use http_body_util::Full;
///
/// # #[tokio::main]
/// # async fn main() -> std::io::Result<()> {
/// let listener = Listener::bind("127.0.0.1:8080".parse().unwrap(), ListenerOptions::new("http", 1024)).await?;
/// let hello = tower::service_fn(|_request| async {
///     Ok::<_, Infallible>(hyper::Response::new(Full::new(bytes::Bytes::from_static(b"hello\n"))))
/// });
/// serve(listener, hello, HttpOptions::default(), std::future::pending()).await;
/// # Ok(())
/// # }
/// ```
pub async fn serve<S, ResBody>(
    listener: Listener,
    service: S,
    options: HttpOptions,
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
    let mut builder = auto::Builder::new(TokioExecutor::new());
    // hyper starts this timer each time an HTTP/1 connection waits for a
    // request head: after an answer, that is the keep-alive idle time. The
    // first head's deadline, from accept, is the listener's.
    builder
        .http1()
        .timer(TokioTimer::new())
        .header_read_timeout(options.idle_timeout);
    builder
        .http2()
        .timer(TokioTimer::new())
        .keep_alive_interval(Some(options.http2_keepalive))
        .keep_alive_timeout(options.http2_keepalive);
    let builder = Arc::new(builder);
    let mut shutdown = std::pin::pin!(shutdown);
    loop {
        let (stream, _peer) = tokio::select! {
            accepted = listener.accept() => accepted,
            () = &mut shutdown => break,
        };
        let service = service.clone();
        let hyper_service =
            hyper::service::service_fn(move |request| service.clone().oneshot(request));
        let connection = builder
            .serve_connection(TokioIo::new(stream), hyper_service)
            .into_owned();
        let connection = graceful.watch(connection);
        tokio::spawn(async move {
            let _ = connection.await;
        });
    }
    let name = listener.options().name;
    drop(listener);
    if tokio::time::timeout(options.drain_timeout, graceful.shutdown())
        .await
        .is_err()
    {
        tracing::warn!(
            listener = name,
            "drain timed out; closing the connections left"
        );
    }
}
