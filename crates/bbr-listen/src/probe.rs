//! [`SilentFlood`]: many connections that send nothing, to check that a
//! server built on [`Listener`](crate::Listener) closes them and keeps
//! serving (its tests use it; so can a deployment's).

use std::{net::SocketAddr, time::Duration};

use tokio::{io::AsyncReadExt, net::TcpStream, time::Instant};

/// Connections opened to a server and left silent.
#[derive(Debug)]
pub struct SilentFlood {
    connections: Vec<TcpStream>,
    /// Connections that could not be opened within the connect timeout
    /// (a full backlog).
    pub not_connected: usize,
}

/// What became of a [`SilentFlood`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct FloodOutcome {
    /// Connections the server closed.
    pub closed: usize,
    /// Connections still open when the wait ended.
    pub still_open: usize,
}

impl SilentFlood {
    /// Opens `count` connections to `addr`, each given `connect_timeout`,
    /// and sends nothing on any. The caller's own descriptor limit must
    /// allow them ([`raise_descriptor_limit`](crate::limits::raise_descriptor_limit)).
    pub async fn open(addr: SocketAddr, count: usize, connect_timeout: Duration) -> SilentFlood {
        let mut connections = Vec::with_capacity(count);
        let mut not_connected = 0;
        for _ in 0..count {
            match tokio::time::timeout(connect_timeout, TcpStream::connect(addr)).await {
                Ok(Ok(stream)) => connections.push(stream),
                _ => not_connected += 1,
            }
        }
        SilentFlood {
            connections,
            not_connected,
        }
    }

    /// The connections opened.
    pub fn len(&self) -> usize {
        self.connections.len()
    }

    /// Whether none could be opened.
    pub fn is_empty(&self) -> bool {
        self.connections.is_empty()
    }

    /// Waits, up to `bound` in all, for the server to close each
    /// connection (end of stream or a reset; any byte it sends first is
    /// read and ignored), and says how many it closed.
    pub async fn wait_closed(self, bound: Duration) -> FloodOutcome {
        let deadline = Instant::now() + bound;
        let waits = self.connections.into_iter().map(|mut stream| {
            tokio::spawn(async move {
                let mut buf = [0u8; 512];
                loop {
                    match tokio::time::timeout_at(deadline, stream.read(&mut buf)).await {
                        Ok(Ok(0) | Err(_)) => return true,
                        Ok(Ok(_)) => continue,
                        Err(_) => return false,
                    }
                }
            })
        });
        let waits: Vec<_> = waits.collect();
        let mut outcome = FloodOutcome {
            closed: 0,
            still_open: 0,
        };
        for wait in waits {
            match wait.await {
                Ok(true) => outcome.closed += 1,
                _ => outcome.still_open += 1,
            }
        }
        outcome
    }
}
