//! [`Listener::spread`]: one listener's connections served on several
//! threads, each connection on one.

use std::{io, net::SocketAddr};

use tokio::{
    net::TcpStream,
    sync::{OwnedSemaphorePermit, mpsc},
    time::Instant,
};

use crate::{
    guard::Guarded,
    listener::{Counters, Handover, Listener, QUEUE, hand_over},
};

/// An accepted connection on its way to the thread that serves it.
#[derive(Debug)]
struct Accepted {
    stream: std::net::TcpStream,
    peer: SocketAddr,
    slot: OwnedSemaphorePermit,
    deadline: Instant,
}

/// The connections a [`Listener::spread`] hands to one thread.
///
/// Call [`incoming`](Share::incoming) or
/// [`incoming_with`](Share::incoming_with) on the runtime of the thread
/// that serves them: each connection is registered with that runtime's
/// I/O driver and its header timeout with its timer, so that nothing of
/// the connection wakes another thread.
#[derive(Debug)]
pub struct Share {
    accepted: mpsc::Receiver<Accepted>,
    counters: Counters,
    name: &'static str,
}

impl Listener {
    /// Spreads the connections this listener accepts over `n` [`Share`]s
    /// (at least one), in turn, each to be served on a thread of its own
    /// (a current-thread runtime, say): a connection then lives on one
    /// thread from accept to close, and the tasks of its HTTP/2 streams
    /// never wake another thread. The accept loop runs as a task of the
    /// calling runtime; it ends once every share is dropped.
    ///
    /// The listener's bounds hold over all the shares together: the
    /// connection limit, and the header timeout counted from accept.
    ///
    /// ```
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() -> std::io::Result<()> {
    /// use bbr_listen::{Listener, ListenerOptions};
    /// use tokio::io::AsyncWriteExt;
    /// use tokio_stream::StreamExt;
    ///
    /// let listener = Listener::bind("127.0.0.1:0".parse().unwrap(), ListenerOptions::new("grpc", 64)).await?;
    /// let addr = listener.local_addr()?;
    /// let threads: Vec<_> = listener
    ///     .spread(2)
    ///     .into_iter()
    ///     .map(|share| {
    ///         std::thread::spawn(move || {
    ///             let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
    ///             runtime.block_on(async move {
    ///                 // A server's `serve_with_incoming` takes this stream.
    ///                 let mut connections = share.incoming();
    ///                 let mut connection = connections.next().await.unwrap()?;
    ///                 connection.write_all(b"served\n").await
    ///             })
    ///         })
    ///     })
    ///     .collect();
    /// // One connection to each thread, in turn.
    /// let _a = tokio::net::TcpStream::connect(addr).await?;
    /// let _b = tokio::net::TcpStream::connect(addr).await?;
    /// for thread in threads {
    ///     thread.join().unwrap()?;
    /// }
    /// # Ok(())
    /// # }
    /// ```
    pub fn spread(self, n: usize) -> Vec<Share> {
        let (senders, shares): (Vec<_>, Vec<_>) = (0..n.max(1))
            .map(|_| {
                let (tx, rx) = mpsc::channel(QUEUE);
                let share = Share {
                    accepted: rx,
                    counters: self.counters.clone(),
                    name: self.options().name,
                };
                (tx, share)
            })
            .unzip();
        tokio::spawn(async move {
            let mut next = 0;
            loop {
                let (stream, peer, slot, deadline) = tokio::select! {
                    accepted = self.accept_raw() => accepted,
                    () = all_closed(&senders) => return,
                };
                // Taken off this runtime's I/O driver, to join the share's.
                let stream = match stream.into_std() {
                    Ok(stream) => stream,
                    Err(e) => {
                        tracing::debug!(listener = self.options().name, %peer, error = %e,
                            "connection lost at hand-over");
                        continue;
                    }
                };
                let mut accepted = Accepted {
                    stream,
                    peer,
                    slot,
                    deadline,
                };
                // In turn; a share whose thread is gone is passed over.
                let mut tries = 0;
                loop {
                    let sender = &senders[next];
                    next = (next + 1) % senders.len();
                    match sender.send(accepted).await {
                        Ok(()) => break,
                        Err(mpsc::error::SendError(back)) => accepted = back,
                    }
                    tries += 1;
                    if tries == senders.len() {
                        return;
                    }
                }
            }
        });
        shares
    }
}

/// Resolves once every share has been dropped.
async fn all_closed(senders: &[mpsc::Sender<Accepted>]) {
    for sender in senders {
        sender.closed().await;
    }
}

impl Share {
    /// This share's connections, as [`Listener::incoming`] gives them; call
    /// it on the runtime that serves them.
    pub fn incoming(
        self,
    ) -> tokio_stream::wrappers::ReceiverStream<io::Result<Guarded<TcpStream>>> {
        self.incoming_with(|tcp| std::future::ready(Ok(tcp)))
    }

    /// This share's connections with a handshake first, as
    /// [`Listener::incoming_with`] gives them; call it on the runtime that
    /// serves them (the handshakes run there too).
    pub fn incoming_with<H, F, IO>(
        self,
        handshake: H,
    ) -> tokio_stream::wrappers::ReceiverStream<io::Result<Guarded<IO>>>
    where
        H: Fn(TcpStream) -> F + Send + 'static,
        F: std::future::Future<Output = io::Result<IO>> + Send + 'static,
        IO: Send + 'static,
    {
        let (tx, rx) = mpsc::channel(QUEUE);
        let Share {
            mut accepted,
            counters,
            name,
        } = self;
        tokio::spawn(async move {
            loop {
                let connection = tokio::select! {
                    connection = accepted.recv() => connection,
                    () = tx.closed() => return,
                };
                let Some(Accepted {
                    stream,
                    peer,
                    slot,
                    deadline,
                }) = connection
                else {
                    return;
                };
                let stream = match TcpStream::from_std(stream) {
                    Ok(stream) => stream,
                    Err(e) => {
                        tracing::warn!(listener = name, %peer, error = %e,
                            "cannot register a connection");
                        continue;
                    }
                };
                tokio::spawn(hand_over(
                    handshake(stream),
                    Handover {
                        peer,
                        slot,
                        deadline,
                        counters: counters.clone(),
                        name,
                    },
                    tx.clone(),
                ));
            }
        });
        tokio_stream::wrappers::ReceiverStream::new(rx)
    }
}

#[cfg(test)]
mod tests;
