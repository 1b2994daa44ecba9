//! [`Listener`]: the one accept loop of bbr's servers.

use std::{io, net::SocketAddr, sync::Arc, time::Duration};

use tokio::{
    net::{TcpListener, TcpStream},
    sync::{OwnedSemaphorePermit, Semaphore},
    time::Instant,
};

use crate::guard::Guarded;

/// How a [`Listener`] treats the connections it accepts.
#[derive(Clone, Debug)]
pub struct ListenerOptions {
    /// The listener's name in log lines and in the `listener` label of its
    /// metrics (`grpc`, `health`, `metrics`, `http`, `admin`).
    pub name: &'static str,
    /// How long a connection may take, counted from accept, to send its
    /// first complete request head (HTTP/1) or the HTTP/2 client preface
    /// (TLS handshake included). Past it the connection is closed.
    pub header_timeout: Duration,
    /// The most connections open at once. At the limit the listener stops
    /// accepting: new connections wait in the kernel's backlog until one
    /// closes.
    pub max_connections: usize,
}

impl ListenerOptions {
    /// Options named `name`, with a 10 s header timeout and `max_connections`.
    pub fn new(name: &'static str, max_connections: usize) -> ListenerOptions {
        ListenerOptions {
            name,
            header_timeout: Duration::from_secs(10),
            max_connections,
        }
    }

    /// Sets [`header_timeout`](ListenerOptions::header_timeout).
    #[must_use]
    pub fn header_timeout(mut self, timeout: Duration) -> ListenerOptions {
        self.header_timeout = timeout;
        self
    }
}

/// The metric handles of one listener.
#[derive(Clone, Debug)]
pub(crate) struct Counters {
    pub(crate) accepted: metrics::Counter,
    pub(crate) timed_out: metrics::Counter,
    pub(crate) accept_errors: metrics::Counter,
    pub(crate) open: metrics::Gauge,
}

impl Counters {
    fn new(name: &'static str) -> Counters {
        Counters {
            accepted: metrics::counter!(crate::CONNECTIONS_ACCEPTED, "listener" => name),
            timed_out: metrics::counter!(crate::CONNECTIONS_TIMED_OUT, "listener" => name),
            accept_errors: metrics::counter!(crate::ACCEPT_ERRORS, "listener" => name),
            open: metrics::gauge!(crate::CONNECTIONS_OPEN, "listener" => name),
        }
    }
}

/// A TCP listener that holds at most
/// [`max_connections`](ListenerOptions::max_connections) connections, hands
/// each out as a [`Guarded`] connection whose header timeout started at
/// accept, and backs off on accept errors instead of spinning.
///
/// ```
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() -> std::io::Result<()> {
/// use bbr_listen::{Listener, ListenerOptions};
/// use tokio::io::AsyncReadExt;
///
/// let listener = Listener::bind("127.0.0.1:0".parse().unwrap(), ListenerOptions::new("http", 64)).await?;
/// let addr = listener.local_addr()?;
/// tokio::spawn(async move {
///     let (mut connection, _peer) = listener.accept().await;
///     let mut byte = [0u8; 1];
///     // A client that sends nothing is cut off after the header timeout.
///     let _ = connection.read(&mut byte).await;
/// });
/// let _client = tokio::net::TcpStream::connect(addr).await?;
/// # Ok(())
/// # }
/// ```
#[derive(Debug)]
pub struct Listener {
    tcp: TcpListener,
    options: ListenerOptions,
    slots: Arc<Semaphore>,
    pub(crate) counters: Counters,
}

/// The first pause after an accept error; it doubles up to [`MAX_BACKOFF`]
/// while errors go on.
const FIRST_BACKOFF: Duration = Duration::from_millis(5);
const MAX_BACKOFF: Duration = Duration::from_secs(1);

impl Listener {
    /// Binds `addr`. The error names the address.
    pub async fn bind(addr: SocketAddr, options: ListenerOptions) -> io::Result<Listener> {
        let tcp = TcpListener::bind(addr)
            .await
            .map_err(|e| io::Error::new(e.kind(), format!("cannot listen on {addr}: {e}")))?;
        Ok(Listener::new(tcp, options))
    }

    /// A listener on `tcp`.
    pub fn new(tcp: TcpListener, options: ListenerOptions) -> Listener {
        let slots = Arc::new(Semaphore::new(options.max_connections.max(1)));
        let counters = Counters::new(options.name);
        Listener {
            tcp,
            options,
            slots,
            counters,
        }
    }

    /// The address it listens on.
    pub fn local_addr(&self) -> io::Result<SocketAddr> {
        self.tcp.local_addr()
    }

    /// Its options.
    pub fn options(&self) -> &ListenerOptions {
        &self.options
    }

    /// Waits for a free slot, then for a connection. Accept errors (out of
    /// descriptors, a connection reset before it was accepted) are counted,
    /// logged once per run of errors, and waited out with a growing pause:
    /// this never returns an error and never spins.
    pub async fn accept(&self) -> (Guarded<TcpStream>, SocketAddr) {
        let (stream, peer, slot, deadline) = self.accept_raw().await;
        (
            Guarded::new(stream, deadline, self.counters.clone(), Some(slot)),
            peer,
        )
    }

    /// A connection with its slot and the deadline of its head, before any
    /// handshake.
    pub(crate) async fn accept_raw(
        &self,
    ) -> (TcpStream, SocketAddr, OwnedSemaphorePermit, Instant) {
        let slot = match Arc::clone(&self.slots).acquire_owned().await {
            Ok(slot) => slot,
            Err(_) => unreachable!("the listener never closes its semaphore"),
        };
        let mut backoff = FIRST_BACKOFF;
        loop {
            match self.tcp.accept().await {
                Ok((stream, peer)) => {
                    let deadline = Instant::now() + self.options.header_timeout;
                    self.counters.accepted.increment(1);
                    // ext_proc messages and token streams are small and
                    // latency-bound.
                    let _ = stream.set_nodelay(true);
                    if backoff > FIRST_BACKOFF {
                        tracing::info!(listener = self.options.name, "accepting again");
                    }
                    return (stream, peer, slot, deadline);
                }
                Err(e) if is_per_connection(&e) => {
                    // The connection went away before it was accepted: the
                    // listener is fine.
                    self.counters.accept_errors.increment(1);
                }
                Err(e) => {
                    self.counters.accept_errors.increment(1);
                    if backoff == FIRST_BACKOFF {
                        tracing::warn!(listener = self.options.name, error = %e,
                            open = self.options.max_connections - self.slots.available_permits(),
                            "accept failed; pausing until connections close");
                    }
                    tokio::time::sleep(backoff).await;
                    backoff = (backoff * 2).min(MAX_BACKOFF);
                }
            }
        }
    }
}

/// Errors that concern the one connection being accepted, not the
/// listener (`accept(2)` reports them for connections that died in the
/// backlog).
fn is_per_connection(e: &io::Error) -> bool {
    matches!(
        e.kind(),
        io::ErrorKind::ConnectionAborted
            | io::ErrorKind::ConnectionReset
            | io::ErrorKind::ConnectionRefused
    )
}

/// How many accepted connections may wait for the server to take them.
pub(crate) const QUEUE: usize = 64;

impl Listener {
    /// The connections it accepts, as a stream (for tonic's
    /// `serve_with_incoming`). A task of its own accepts them; it stops
    /// when the stream is dropped.
    pub fn incoming(
        self,
    ) -> tokio_stream::wrappers::ReceiverStream<io::Result<Guarded<TcpStream>>> {
        let (tx, rx) = tokio::sync::mpsc::channel(QUEUE);
        tokio::spawn(async move {
            loop {
                let accepted = tokio::select! {
                    accepted = self.accept() => accepted,
                    () = tx.closed() => return,
                };
                if tx.send(Ok(accepted.0)).await.is_err() {
                    return;
                }
            }
        });
        tokio_stream::wrappers::ReceiverStream::new(rx)
    }

    /// [`incoming`](Listener::incoming) with a handshake first (TLS, say):
    /// each runs in a task of its own and must end, with the first request
    /// head or HTTP/2 preface after it, within the header timeout counted
    /// from accept. A failed or late handshake closes the connection (it is
    /// logged at debug level and never reaches the server).
    ///
    /// ```no_run
    /// # async fn run(listener: bbr_listen::Listener) {
    /// use tokio::io::AsyncReadExt;
    ///
    /// // A "handshake" that reads one byte before the server sees the
    /// // connection; a TLS acceptor's `accept` goes here.
    /// let connections = listener.incoming_with(|mut tcp: tokio::net::TcpStream| async move {
    ///     let mut hello = [0u8; 1];
    ///     tcp.read_exact(&mut hello).await?;
    ///     Ok(tcp)
    /// });
    /// # drop(connections);
    /// # }
    /// ```
    pub fn incoming_with<H, F, IO>(
        self,
        handshake: H,
    ) -> tokio_stream::wrappers::ReceiverStream<io::Result<Guarded<IO>>>
    where
        H: Fn(TcpStream) -> F + Send + 'static,
        F: std::future::Future<Output = io::Result<IO>> + Send + 'static,
        IO: Send + 'static,
    {
        let (tx, rx) = tokio::sync::mpsc::channel(QUEUE);
        let name = self.options.name;
        tokio::spawn(async move {
            loop {
                let (stream, peer, slot, deadline) = tokio::select! {
                    accepted = self.accept_raw() => accepted,
                    () = tx.closed() => return,
                };
                tokio::spawn(hand_over(
                    handshake(stream),
                    Handover {
                        peer,
                        slot,
                        deadline,
                        counters: self.counters.clone(),
                        name,
                    },
                    tx.clone(),
                ));
            }
        });
        tokio_stream::wrappers::ReceiverStream::new(rx)
    }
}

/// What comes with a connection until its handshake is over.
pub(crate) struct Handover {
    pub(crate) peer: SocketAddr,
    pub(crate) slot: OwnedSemaphorePermit,
    pub(crate) deadline: Instant,
    pub(crate) counters: Counters,
    pub(crate) name: &'static str,
}

/// Runs a connection's handshake within its header timeout, then hands
/// the connection to the server through `tx` (a failed or late handshake
/// closes it).
pub(crate) async fn hand_over<F, IO>(
    handshake: F,
    with: Handover,
    tx: tokio::sync::mpsc::Sender<io::Result<Guarded<IO>>>,
) where
    F: std::future::Future<Output = io::Result<IO>>,
{
    let Handover {
        peer,
        slot,
        deadline,
        counters,
        name,
    } = with;
    match tokio::time::timeout_at(deadline, handshake).await {
        Ok(Ok(io)) => {
            let _ = tx
                .send(Ok(Guarded::new(io, deadline, counters, Some(slot))))
                .await;
        }
        Ok(Err(e)) => {
            tracing::debug!(listener = name, %peer, error = %e, "handshake failed");
        }
        Err(_) => {
            counters.timed_out.increment(1);
            tracing::debug!(listener = name, %peer, "handshake timed out");
        }
    }
}
