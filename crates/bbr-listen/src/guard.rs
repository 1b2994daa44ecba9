//! [`Guarded`]: an accepted connection that must send its first request
//! head (HTTP/1) or the HTTP/2 client preface before a deadline set at
//! accept.

use std::{
    io,
    pin::Pin,
    task::{Context, Poll},
};

use pin_project_lite::pin_project;
use tokio::{
    io::{AsyncRead, ReadBuf},
    sync::OwnedSemaphorePermit,
    time::{Instant, Sleep},
};

use crate::listener::Counters;

/// The HTTP/2 connection preface a client sends first (RFC 9113 §3.4).
const H2_PREFACE: &[u8; 24] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";

/// How far the first bytes of a connection have come towards a complete
/// request head.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Head {
    /// The first `n` bytes matched the HTTP/2 preface so far.
    Preface(u8),
    /// An HTTP/1 head: the state of the search for its blank line (`0`:
    /// inside a line, `1`: just after LF, `2`: after LF CR).
    Http1(u8),
    /// A complete head or preface has arrived.
    Complete,
}

impl Head {
    /// Feeds the next bytes read; `true` once the head is complete.
    pub(crate) fn feed(&mut self, bytes: &[u8]) -> bool {
        for (i, &b) in bytes.iter().enumerate() {
            match *self {
                Head::Complete => return true,
                Head::Preface(n) => {
                    if H2_PREFACE[usize::from(n)] == b {
                        *self = if n + 1 == 24 {
                            Head::Complete
                        } else {
                            Head::Preface(n + 1)
                        };
                    } else {
                        // Not HTTP/2: what matched so far is the start of
                        // an HTTP/1 line; go on from there.
                        *self = Head::Http1(0);
                        self.feed(&H2_PREFACE[..usize::from(n)]);
                        return self.feed(&bytes[i..]);
                    }
                }
                Head::Http1(state) => {
                    *self = match (state, b) {
                        // A blank line: LF LF (httparse accepts bare LF) or
                        // LF CR LF ends the head.
                        (1 | 2, b'\n') => Head::Complete,
                        (_, b'\n') => Head::Http1(1),
                        (1, b'\r') => Head::Http1(2),
                        _ => Head::Http1(0),
                    };
                }
            }
        }
        *self == Head::Complete
    }
}

pin_project! {
    /// An accepted connection, closed with [`io::ErrorKind::TimedOut`] when
    /// its first request head (HTTP/1) or the HTTP/2 client preface is not
    /// complete by the deadline set at accept. Once it is, reads and writes
    /// go straight through; what comes after (keep-alive idle time, HTTP/2
    /// pings) is the HTTP server's to time.
    ///
    /// It also holds the listener's slot for the connection: dropping it
    /// lets the listener accept another one.
    #[derive(Debug)]
    pub struct Guarded<IO> {
        #[pin]
        io: IO,
        head: Head,
        deadline: Option<Pin<Box<Sleep>>>,
        counters: Counters,
        timed_out: bool,
        _slot: Option<OwnedSemaphorePermit>,
    }

    impl<IO> PinnedDrop for Guarded<IO> {
        fn drop(this: Pin<&mut Self>) {
            this.counters.open.decrement(1.0);
        }
    }
}

impl<IO> Guarded<IO> {
    pub(crate) fn new(
        io: IO,
        deadline: Instant,
        counters: Counters,
        slot: Option<OwnedSemaphorePermit>,
    ) -> Guarded<IO> {
        counters.open.increment(1.0);
        Guarded {
            io,
            head: Head::Preface(0),
            deadline: Some(Box::pin(tokio::time::sleep_until(deadline))),
            counters,
            timed_out: false,
            _slot: slot,
        }
    }

    /// Whether the first request head or the HTTP/2 preface has arrived.
    pub fn head_complete(&self) -> bool {
        self.head == Head::Complete
    }

    /// The connection inside.
    pub fn get_ref(&self) -> &IO {
        &self.io
    }
}

fn timed_out() -> io::Error {
    io::Error::new(
        io::ErrorKind::TimedOut,
        "no complete request head within the header timeout",
    )
}

impl<IO: AsyncRead> AsyncRead for Guarded<IO> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.project();
        let Some(deadline) = this.deadline.as_mut() else {
            return this.io.poll_read(cx, buf);
        };
        if *this.timed_out {
            return Poll::Ready(Err(timed_out()));
        }
        let before = buf.filled().len();
        match this.io.poll_read(cx, buf) {
            Poll::Ready(Ok(())) => {
                if this.head.feed(&buf.filled()[before..]) {
                    *this.deadline = None;
                }
                Poll::Ready(Ok(()))
            }
            Poll::Ready(Err(e)) => Poll::Ready(Err(e)),
            Poll::Pending => match deadline.as_mut().poll(cx) {
                Poll::Ready(()) => {
                    *this.timed_out = true;
                    this.counters.timed_out.increment(1);
                    Poll::Ready(Err(timed_out()))
                }
                Poll::Pending => Poll::Pending,
            },
        }
    }
}

crate::write_through!(Guarded);

#[cfg(test)]
mod tests {
    use super::*;

    fn feed_in_pieces(input: &[u8], piece: usize) -> Option<usize> {
        let mut head = Head::Preface(0);
        for (i, chunk) in input.chunks(piece).enumerate() {
            if head.feed(chunk) {
                return Some(i);
            }
        }
        None
    }

    #[test]
    fn the_h2_preface_completes_the_head_at_its_last_byte() {
        for piece in 1..=24 {
            assert!(feed_in_pieces(H2_PREFACE, piece).is_some(), "{piece}");
            assert_eq!(feed_in_pieces(&H2_PREFACE[..23], piece), None, "{piece}");
        }
        // Its first 18 bytes hold a blank line, but they are no HTTP/1 head.
        assert_eq!(feed_in_pieces(&H2_PREFACE[..18], 1), None);
    }

    #[test]
    fn an_http1_head_is_complete_at_its_blank_line() {
        let head = b"POST /v1/chat/completions HTTP/1.1\r\nHost: a\r\nContent-Length: 2\r\n\r\n";
        let mut state = Head::Preface(0);
        let done_at = head
            .iter()
            .position(|b| state.feed(std::slice::from_ref(b)));
        assert_eq!(done_at, Some(head.len() - 1));
        for piece in 1..head.len() {
            assert_eq!(feed_in_pieces(&head[..head.len() - 1], piece), None);
            assert!(feed_in_pieces(head, piece).is_some());
        }
        // Bare LF line endings, as httparse accepts them.
        assert!(feed_in_pieces(b"GET / HTTP/1.1\nHost: a\n\n", 3).is_some());
        // A head that starts like the preface and turns out HTTP/1.
        assert!(feed_in_pieces(b"PRI / HTTP/1.1\r\n\r\n", 1).is_some());
        assert_eq!(feed_in_pieces(b"PRI * HTTP/1.1\r\nHost: a\r\n", 2), None);
    }

    #[test]
    fn half_a_head_is_not_complete() {
        assert_eq!(
            feed_in_pieces(b"POST /v1/completions HTTP/1.1\r\nHost: a\r\n", 5),
            None
        );
        assert_eq!(feed_in_pieces(b"", 1), None);
        assert_eq!(feed_in_pieces(b"\r\r\r\r\r\r", 1), None);
    }
}
