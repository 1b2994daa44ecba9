//! [`ReadAhead`]: a connection read in large pieces, handed out in the
//! small ones an HTTP/2 decoder asks for.

use std::{
    io,
    pin::Pin,
    task::{Context, Poll, ready},
};

use pin_project_lite::pin_project;
use tokio::io::{AsyncRead, ReadBuf};

pin_project! {
    /// A connection whose reads fill a buffer of its own, `capacity`
    /// bytes, with one read of the connection when it is empty; reads
    /// then take from it. Writes go straight through.
    ///
    /// h2's decoder reads into a buffer as large as the frame it is
    /// decoding, or the 8 KiB it starts each frame with: a 16 KiB DATA
    /// frame is two reads of the socket. Under a large body that is two
    /// system calls for every 16 KiB; with 64 KiB read ahead it is one for
    /// every four frames, and the bytes are copied once more, out of a
    /// buffer still in the cache. A read asking for `capacity` bytes or
    /// more while the buffer is empty goes straight to the connection.
    ///
    /// The first read goes straight to the connection; the buffer is
    /// allocated once it has brought bytes, and kept for the connection's
    /// life (a connection that never sends a byte costs none).
    ///
    /// ```
    /// use bbr_listen::ReadAhead;
    /// use tokio::io::{AsyncReadExt, AsyncWriteExt};
    ///
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() -> std::io::Result<()> {
    /// let (mut client, server) = tokio::io::duplex(1024);
    /// let mut server = ReadAhead::new(server, 64 * 1024);
    /// client.write_all(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n").await?;
    /// let mut preface = [0; 24];
    /// server.read_exact(&mut preface[..9]).await?;
    /// server.read_exact(&mut preface[9..]).await?;
    /// assert_eq!(&preface, b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n");
    /// # Ok(())
    /// # }
    /// ```
    #[derive(Debug)]
    pub struct ReadAhead<IO> {
        #[pin]
        io: IO,
        buffer: Box<[u8]>,
        capacity: usize,
        // buffer[start..end] is read and not yet taken.
        start: usize,
        end: usize,
    }
}

impl<IO> ReadAhead<IO> {
    /// Reads `io` ahead, up to `capacity` bytes at a time.
    pub fn new(io: IO, capacity: usize) -> ReadAhead<IO> {
        ReadAhead {
            io,
            buffer: Box::default(),
            capacity: capacity.max(1),
            start: 0,
            end: 0,
        }
    }

    /// The connection inside.
    pub fn get_ref(&self) -> &IO {
        &self.io
    }

    /// The bytes read from the connection and not yet taken.
    pub fn buffered(&self) -> &[u8] {
        &self.buffer[self.start..self.end]
    }
}

impl<IO: AsyncRead> AsyncRead for ReadAhead<IO> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        out: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.project();
        if *this.start == *this.end {
            if this.buffer.is_empty() {
                // The first read goes straight through: a connection that
                // never sends a byte costs no buffer.
                let before = out.filled().len();
                ready!(this.io.poll_read(cx, out))?;
                if out.filled().len() > before {
                    *this.buffer = vec![0; *this.capacity].into_boxed_slice();
                }
                return Poll::Ready(Ok(()));
            }
            if out.remaining() >= *this.capacity {
                return this.io.poll_read(cx, out);
            }
            let mut ahead = ReadBuf::new(this.buffer);
            ready!(this.io.poll_read(cx, &mut ahead))?;
            *this.start = 0;
            *this.end = ahead.filled().len();
        }
        let n = out.remaining().min(*this.end - *this.start);
        out.put_slice(&this.buffer[*this.start..*this.start + n]);
        *this.start += n;
        Poll::Ready(Ok(()))
    }
}

crate::write_through!(ReadAhead);

#[cfg(test)]
mod tests {
    use proptest::prelude::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    use super::*;

    /// Sends `data` in pieces of the sizes in `sends` (cycled) and reads it
    /// through a [`ReadAhead`] of `capacity` bytes with reads of the sizes
    /// in `reads` (cycled); returns what was read.
    async fn round_trip(
        data: Vec<u8>,
        sends: Vec<usize>,
        reads: Vec<usize>,
        capacity: usize,
    ) -> Vec<u8> {
        let (mut client, server) = tokio::io::duplex(4096);
        let sender = tokio::spawn(async move {
            let mut rest = &data[..];
            for size in sends.iter().cycle() {
                if rest.is_empty() {
                    break;
                }
                let (piece, tail) = rest.split_at((*size).min(rest.len()));
                client.write_all(piece).await.unwrap();
                rest = tail;
            }
        });
        let mut server = ReadAhead::new(server, capacity);
        let mut got = Vec::new();
        for size in reads.iter().cycle() {
            let mut buf = vec![0; *size];
            let n = server.read(&mut buf).await.unwrap();
            if n == 0 {
                break;
            }
            got.extend_from_slice(&buf[..n]);
        }
        sender.await.unwrap();
        got
    }

    proptest! {
        #[test]
        fn bytes_come_out_as_they_went_in(
            data in proptest::collection::vec(any::<u8>(), 0..20_000),
            sends in proptest::collection::vec(1usize..5000, 1..8),
            reads in proptest::collection::vec(1usize..9000, 1..8),
            capacity in 1usize..10_000,
        ) {
            let runtime = tokio::runtime::Builder::new_current_thread().build().unwrap();
            let got = runtime.block_on(round_trip(data.clone(), sends, reads, capacity));
            prop_assert_eq!(got, data);
        }
    }

    #[tokio::test]
    async fn a_small_read_takes_what_one_read_of_the_connection_brought() {
        let (mut client, server) = tokio::io::duplex(1 << 16);
        client.write_all(&[7; 40_000]).await.unwrap();
        let mut server = ReadAhead::new(server, 16 * 1024);
        let mut buf = [0; 9];
        // The first read is the connection's own.
        assert_eq!(server.read(&mut buf).await.unwrap(), 9);
        assert!(server.buffered().is_empty());
        assert_eq!(server.read(&mut buf).await.unwrap(), 9);
        // The rest of the 16 KiB the connection gave is waiting here.
        assert_eq!(server.buffered().len(), 16 * 1024 - 9);
        let mut big = vec![0; 64 * 1024];
        assert_eq!(server.read(&mut big).await.unwrap(), 16 * 1024 - 9);
        // Empty again: a read of the buffer's size or more goes straight
        // to the connection, past the buffer.
        assert_eq!(server.read(&mut big).await.unwrap(), 40_000 - 9 - 16 * 1024);
        assert!(server.buffered().is_empty());
    }

    #[tokio::test]
    async fn a_silent_connection_holds_no_buffer() {
        let (client, server) = tokio::io::duplex(64);
        let mut server = ReadAhead::new(server, 64 * 1024);
        let mut buf = [0; 9];
        let read =
            tokio::time::timeout(std::time::Duration::from_millis(20), server.read(&mut buf));
        assert!(read.await.is_err(), "nothing was sent");
        assert!(server.buffer.is_empty());
        drop(client);
        assert_eq!(server.read(&mut buf).await.unwrap(), 0);
        assert!(server.buffer.is_empty());
    }

    #[tokio::test]
    async fn the_end_of_the_connection_reads_as_zero_bytes() {
        let (mut client, server) = tokio::io::duplex(64);
        client.write_all(b"last").await.unwrap();
        drop(client);
        let mut server = ReadAhead::new(server, 1024);
        let mut rest = Vec::new();
        server.read_to_end(&mut rest).await.unwrap();
        assert_eq!(rest, b"last");
        assert_eq!(server.read(&mut [0; 8]).await.unwrap(), 0);
    }

    #[tokio::test]
    async fn writes_go_straight_through() {
        let (mut client, server) = tokio::io::duplex(64);
        let mut server = ReadAhead::new(server, 1024);
        server.write_all(b"answer").await.unwrap();
        server.flush().await.unwrap();
        let mut got = [0; 6];
        client.read_exact(&mut got).await.unwrap();
        assert_eq!(&got, b"answer");
        server.shutdown().await.unwrap();
        assert_eq!(client.read(&mut got).await.unwrap(), 0);
    }
}
