//! Serving: the accept loop, the connection limits and timeouts, and the
//! drain on shutdown.

use std::{convert::Infallible, future::Future, io, time::Duration};

use bbr_listen::{Listener, ListenerOptions, http::HttpOptions, limits};
use bbr_tower::BoxError;
use bytes::Bytes;
use http::{Request, Response};
use http_body::Body;
use hyper::body::Incoming;
use tokio::net::TcpListener;
use tower::Service;

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
