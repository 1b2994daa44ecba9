//! The accept loop of bbr's servers (the `bbr-extproc` binary's gRPC,
//! health and metrics ports; the demo gateway's main and admin listeners).
//!
//! A client can open a connection and send nothing. Left alone, a few
//! hundred such connections take every file descriptor of a process and
//! nothing is served any more. So, on every listener:
//!
//! - the **header timeout starts at accept**: a connection whose first
//!   request head (HTTP/1) or HTTP/2 client preface, TLS handshake
//!   included, is not complete in time is closed ([`Guarded`]);
//! - the number of connections is **bounded**, and at the bound the
//!   listener stops accepting (the kernel's backlog holds the rest) rather
//!   than accepting and stalling; the bound is derived from the descriptor
//!   limit, which is raised to its hard limit at start
//!   ([`limits::raise_descriptor_limit`], [`limits::connection_budget`]);
//! - an accept error (`EMFILE`, say) is waited out with a growing pause and
//!   **never spins**.
//!
//! After the first head, HTTP/1 keep-alive idle time and HTTP/2 pings are
//! [`http::serve`]'s (or tonic's) to time. [`shutdown_signal`] says when
//! to stop accepting and drain.
//!
//! Metrics, labelled `listener`: [`CONNECTIONS_ACCEPTED`],
//! [`CONNECTIONS_OPEN`], [`CONNECTIONS_TIMED_OUT`], [`ACCEPT_ERRORS`].
//!
//! ```
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() -> std::io::Result<()> {
//! use std::time::Duration;
//!
//! use bbr_listen::{Listener, ListenerOptions, limits};
//!
//! let descriptors = limits::raise_descriptor_limit();
//! // Keep 128 descriptors for everything but this listener's connections.
//! let budget = limits::connection_budget(descriptors.soft, 128, 1);
//! let options = ListenerOptions::new("http", budget).header_timeout(Duration::from_secs(10));
//! let listener = Listener::bind("127.0.0.1:0".parse().unwrap(), options).await?;
//! assert!(listener.local_addr()?.port() > 0);
//! # Ok(())
//! # }
//! ```
#![forbid(unsafe_code)]

/// `AsyncWrite` for a connection wrapper whose pinned field `io` is the
/// connection: every write goes straight to it.
macro_rules! write_through {
    ($wrapper:ident) => {
        impl<IO: tokio::io::AsyncWrite> tokio::io::AsyncWrite for $wrapper<IO> {
            fn poll_write(
                self: std::pin::Pin<&mut Self>,
                cx: &mut std::task::Context<'_>,
                buf: &[u8],
            ) -> std::task::Poll<std::io::Result<usize>> {
                self.project().io.poll_write(cx, buf)
            }

            fn poll_write_vectored(
                self: std::pin::Pin<&mut Self>,
                cx: &mut std::task::Context<'_>,
                bufs: &[std::io::IoSlice<'_>],
            ) -> std::task::Poll<std::io::Result<usize>> {
                self.project().io.poll_write_vectored(cx, bufs)
            }

            fn is_write_vectored(&self) -> bool {
                self.io.is_write_vectored()
            }

            fn poll_flush(
                self: std::pin::Pin<&mut Self>,
                cx: &mut std::task::Context<'_>,
            ) -> std::task::Poll<std::io::Result<()>> {
                self.project().io.poll_flush(cx)
            }

            fn poll_shutdown(
                self: std::pin::Pin<&mut Self>,
                cx: &mut std::task::Context<'_>,
            ) -> std::task::Poll<std::io::Result<()>> {
                self.project().io.poll_shutdown(cx)
            }
        }
    };
}
pub(crate) use write_through;

mod ahead;
mod guard;
#[cfg(feature = "http")]
pub mod http;
pub mod limits;
mod listener;
pub mod probe;
mod signal;
mod spread;
#[cfg(feature = "tonic")]
mod tonic;

pub use ahead::ReadAhead;
pub use guard::Guarded;
pub use listener::{Listener, ListenerOptions};
pub use signal::shutdown_signal;
pub use spread::Share;

/// Counter: connections accepted.
pub const CONNECTIONS_ACCEPTED: &str = "bbr_connections_accepted_total";
/// Gauge: connections open (handed to the server, not yet closed).
pub const CONNECTIONS_OPEN: &str = "bbr_connections_open";
/// Counter: connections closed because their first request head, HTTP/2
/// preface or TLS handshake did not complete within the header timeout.
pub const CONNECTIONS_TIMED_OUT: &str = "bbr_connections_header_timeouts_total";
/// Counter: errors of `accept(2)` (out of descriptors, a connection reset
/// in the backlog).
pub const ACCEPT_ERRORS: &str = "bbr_accept_errors_total";

/// Describes the listener metrics to the installed `metrics` recorder.
pub fn describe() {
    metrics::describe_counter!(CONNECTIONS_ACCEPTED, "Connections accepted, by listener.");
    metrics::describe_gauge!(CONNECTIONS_OPEN, "Connections open, by listener.");
    metrics::describe_counter!(
        CONNECTIONS_TIMED_OUT,
        "Connections closed because their first request head, HTTP/2 preface or TLS handshake was not complete within the header timeout, by listener."
    );
    metrics::describe_counter!(ACCEPT_ERRORS, "Errors accepting connections, by listener.");
}
