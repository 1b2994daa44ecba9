//! Envoy's messages on a `Process` stream, read from the HTTP/2 body
//! without joining the frames they arrive in.
//!
//! A gRPC message longer than an HTTP/2 DATA frame (16 KiB unless the
//! server announces more) arrives in several frames. tonic's decoder copies
//! every frame into one buffer before decoding, so a `BUFFERED` body of
//! 1 MiB was copied once more on its way in. [`Reader`] keeps the frames as
//! they came: a message lying in one frame is decoded from a slice of it
//! (the body chunk a slice too, as before), and a body chunk spread over
//! several frames is handed on as its [`Chunk::Parts`], slices of those
//! frames. Only the fields around the body (a few bytes) are joined.

use std::{
    collections::VecDeque,
    pin::Pin,
    task::{Context, Poll},
};

use bytes::{Buf, BufMut, Bytes, BytesMut};
use prost::{
    Message,
    encoding::{WireType, decode_key, decode_varint, encode_key, encode_varint},
};
use tonic::Status;

use crate::wire::{ProcessingRequest, processing_request::Request};

/// A body chunk: one slice, or the slices of the frames it arrived in.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) enum Chunk {
    /// The chunk in one piece.
    One(Bytes),
    /// The chunk in several pieces, in order (never fewer than two).
    Parts(Vec<Bytes>),
}

impl Chunk {
    /// The pieces, in order.
    pub(crate) fn parts(&self) -> &[Bytes] {
        match self {
            Chunk::One(b) => std::slice::from_ref(b),
            Chunk::Parts(parts) => parts,
        }
    }

    /// The chunk in one piece: the pieces are copied together when there
    /// are several.
    pub(crate) fn into_bytes(self) -> Bytes {
        match self {
            Chunk::One(b) => b,
            Chunk::Parts(parts) => Bytes::from(parts.concat()),
        }
    }
}

/// One message from Envoy. When the body chunk of a `request_body` or
/// `response_body` arrived in several frames, the message's `body` field is
/// empty and the chunk is `parts`.
#[derive(Debug)]
pub(crate) struct Inbound {
    pub(crate) request: ProcessingRequest,
    pub(crate) parts: Option<Vec<Bytes>>,
}

impl Inbound {
    /// The body chunk of a body message (empty for other messages).
    pub(crate) fn take_chunk(&mut self) -> Chunk {
        if let Some(parts) = self.parts.take() {
            return Chunk::Parts(parts);
        }
        match &mut self.request.request {
            Some(Request::RequestBody(b) | Request::ResponseBody(b)) => {
                Chunk::One(std::mem::take(&mut b.body))
            }
            _ => Chunk::One(Bytes::new()),
        }
    }
}

type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// An HTTP request body, its data frames as [`Bytes`].
trait Frames: Send {
    /// The next frame: its data, `None` for a frame without (trailers).
    fn poll_data(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Option<Bytes>, BoxError>>>;
}

impl<B> Frames for B
where
    B: http_body::Body + Send,
    B::Error: Into<BoxError>,
{
    fn poll_data(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Option<Bytes>, BoxError>>> {
        Poll::Ready(match std::task::ready!(self.poll_frame(cx)) {
            // `Bytes` (hyper's) moves out without a copy.
            Some(Ok(frame)) => Some(Ok(frame
                .into_data()
                .ok()
                .map(|mut data| data.copy_to_bytes(data.remaining())))),
            Some(Err(e)) => Some(Err(e.into())),
            None => None,
        })
    }
}

/// Reads gRPC messages (a 5-byte prefix, then the message) from an HTTP
/// body, at most `max` bytes each.
pub(crate) struct Reader {
    body: Pin<Box<dyn Frames>>,
    /// Received bytes not yet part of a message, as their frames came.
    frames: VecDeque<Bytes>,
    buffered: usize,
    /// The length of the message whose prefix was read.
    pending: Option<usize>,
    max: usize,
    done: bool,
}

impl Reader {
    /// Reads `body`.
    pub(crate) fn new<B>(body: B, max: usize) -> Reader
    where
        B: http_body::Body + Send + 'static,
        B::Error: Into<BoxError>,
    {
        Reader {
            body: Box::pin(body),
            frames: VecDeque::new(),
            buffered: 0,
            pending: None,
            max,
            done: false,
        }
    }

    /// The next message; `None` when the stream ended between messages.
    pub(crate) fn poll_next(
        &mut self,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Inbound, Status>>> {
        loop {
            if self.done {
                return Poll::Ready(None);
            }
            if let Some(message) = self.message().transpose() {
                if message.is_err() {
                    self.done = true;
                }
                return Poll::Ready(Some(message));
            }
            match std::task::ready!(self.body.as_mut().poll_data(cx)) {
                Some(Ok(Some(data))) => {
                    if !data.is_empty() {
                        self.buffered += data.len();
                        self.frames.push_back(data);
                    }
                }
                // Trailers end nothing here: the stream's end does.
                Some(Ok(None)) => {}
                Some(Err(e)) => {
                    self.done = true;
                    return Poll::Ready(Some(Err(Status::from_error(e))));
                }
                None => {
                    self.done = true;
                    if self.buffered > 0 || self.pending.is_some() {
                        return Poll::Ready(Some(Err(Status::internal(
                            "the stream ended inside a message",
                        ))));
                    }
                    return Poll::Ready(None);
                }
            }
        }
    }

    /// The next message, when all of it has arrived.
    fn message(&mut self) -> Result<Option<Inbound>, Status> {
        let len = match self.pending {
            Some(len) => len,
            None => {
                if self.buffered < 5 {
                    return Ok(None);
                }
                let mut prefix = [0; 5];
                self.take_into(&mut prefix);
                if prefix[0] != 0 {
                    return Err(Status::unimplemented(
                        "compressed messages are not accepted",
                    ));
                }
                let len = u32::from_be_bytes([prefix[1], prefix[2], prefix[3], prefix[4]]);
                let len = usize::try_from(len).unwrap_or(usize::MAX);
                if len > self.max {
                    return Err(Status::out_of_range(format!(
                        "a message of {len} bytes, over the limit of {}",
                        self.max
                    )));
                }
                self.pending = Some(len);
                len
            }
        };
        if self.buffered < len {
            return Ok(None);
        }
        self.pending = None;
        let parts = self.take_parts(len);
        decode(parts).map(Some)
    }

    /// Fills `out` from the front of the received bytes.
    fn take_into(&mut self, out: &mut [u8]) {
        let mut filled = 0;
        while filled < out.len() {
            let Some(front) = self.frames.front_mut() else {
                unreachable!("fewer bytes received than counted");
            };
            let n = front.len().min(out.len() - filled);
            out[filled..filled + n].copy_from_slice(&front[..n]);
            front.advance(n);
            filled += n;
            if front.is_empty() {
                self.frames.pop_front();
            }
        }
        self.buffered -= out.len();
    }

    /// The first `len` received bytes, as slices of their frames.
    fn take_parts(&mut self, len: usize) -> Vec<Bytes> {
        self.buffered -= len;
        split_front(&mut self.frames, len)
    }
}

/// Takes the first `len` bytes (at most what there is) off `queue`, as
/// slices of its buffers.
fn split_front(queue: &mut VecDeque<Bytes>, mut len: usize) -> Vec<Bytes> {
    let mut out = Vec::with_capacity(1);
    while len > 0 {
        let Some(front) = queue.front_mut() else {
            break;
        };
        if front.len() <= len {
            len -= front.len();
            out.extend(queue.pop_front());
        } else {
            out.push(front.split_to(len));
            len = 0;
        }
    }
    out
}

/// Decodes one message from its pieces.
fn decode(parts: Vec<Bytes>) -> Result<Inbound, Status> {
    let failed = |e: prost::DecodeError| Status::internal(format!("decoding a message: {e}"));
    if parts.len() <= 1 {
        let message = parts.into_iter().next().unwrap_or_default();
        return ProcessingRequest::decode(message)
            .map(|request| Inbound {
                request,
                parts: None,
            })
            .map_err(failed);
    }
    if let Some((rest, (tag, chunk))) = split_body(parts.clone()) {
        let mut request = ProcessingRequest::decode(rest).map_err(failed)?;
        let parts = match &mut request.request {
            Some(Request::RequestBody(b)) if tag == 4 => attach(b, chunk),
            Some(Request::ResponseBody(b)) if tag == 5 => attach(b, chunk),
            _ => None,
        };
        return Ok(Inbound { request, parts });
    }
    // No body chunk, or an encoding this reader does not take apart: the
    // pieces joined and decoded whole (prost then says what is wrong).
    ProcessingRequest::decode(Bytes::from(parts.concat()))
        .map(|request| Inbound {
            request,
            parts: None,
        })
        .map_err(failed)
}

/// Puts a chunk in one piece into its message; a chunk in pieces is
/// returned.
fn attach(body: &mut crate::wire::HttpBody, chunk: Vec<Bytes>) -> Option<Vec<Bytes>> {
    if chunk.len() > 1 {
        return Some(chunk);
    }
    body.body = chunk.into_iter().next().unwrap_or_default();
    None
}

/// Takes a message apart into the body chunk of its body message, as
/// slices of `parts`, with the field number of that message (4 request, 5
/// response), and the rest of the message re-encoded without the chunk (a
/// few bytes, copied). `None` when there is no body message, or the
/// message is not well formed or holds groups (which Envoy never sends).
fn split_body(parts: Vec<Bytes>) -> Option<(Bytes, (u32, Vec<Bytes>))> {
    let mut message = Pieces::new(parts);
    let mut rest = BytesMut::new();
    let mut body = None;
    while message.has_remaining() {
        let (tag, wire_type) = decode_key(&mut message).ok()?;
        if matches!(tag, 4 | 5) && wire_type == WireType::LengthDelimited {
            let len = length(&mut message)?;
            let mut inner = Pieces::new(message.take_parts(len));
            let mut fields = BytesMut::new();
            let mut chunk = Vec::new();
            while inner.has_remaining() {
                let (inner_tag, inner_type) = decode_key(&mut inner).ok()?;
                if inner_tag == 1 && inner_type == WireType::LengthDelimited {
                    // The last occurrence wins, as protobuf says.
                    let len = length(&mut inner)?;
                    chunk = inner.take_parts(len);
                } else {
                    copy_field(inner_tag, inner_type, &mut inner, &mut fields)?;
                }
            }
            encode_key(tag, WireType::LengthDelimited, &mut rest);
            encode_varint(fields.len() as u64, &mut rest);
            rest.put(fields);
            body = Some((tag, chunk));
        } else {
            copy_field(tag, wire_type, &mut message, &mut rest)?;
        }
    }
    Some((rest.freeze(), body?))
}

/// A length prefix, no longer than what is left.
fn length(buf: &mut Pieces) -> Option<usize> {
    let len = usize::try_from(decode_varint(buf).ok()?).ok()?;
    (len <= buf.remaining()).then_some(len)
}

/// Copies one field (its value; the key was read) from `buf` to `out`.
fn copy_field(tag: u32, wire_type: WireType, buf: &mut Pieces, out: &mut BytesMut) -> Option<()> {
    encode_key(tag, wire_type, out);
    let len = match wire_type {
        WireType::Varint => {
            encode_varint(decode_varint(buf).ok()?, out);
            return Some(());
        }
        WireType::SixtyFourBit => 8,
        WireType::ThirtyTwoBit => 4,
        WireType::LengthDelimited => {
            let len = length(buf)?;
            encode_varint(len as u64, out);
            len
        }
        WireType::StartGroup | WireType::EndGroup => return None,
    };
    if buf.remaining() < len {
        return None;
    }
    out.put(Buf::take(buf, len));
    Some(())
}

/// A message in pieces, read as one [`Buf`].
struct Pieces {
    parts: VecDeque<Bytes>,
    remaining: usize,
}

impl Pieces {
    fn new(parts: Vec<Bytes>) -> Pieces {
        Pieces {
            remaining: parts.iter().map(Bytes::len).sum(),
            parts: parts.into_iter().filter(|p| !p.is_empty()).collect(),
        }
    }

    /// The next `len` bytes (at most what is left), as slices.
    fn take_parts(&mut self, len: usize) -> Vec<Bytes> {
        let len = len.min(self.remaining);
        self.remaining -= len;
        split_front(&mut self.parts, len)
    }
}

impl Buf for Pieces {
    fn remaining(&self) -> usize {
        self.remaining
    }

    fn chunk(&self) -> &[u8] {
        self.parts.front().map_or(&[], |b| &b[..])
    }

    fn advance(&mut self, mut cnt: usize) {
        assert!(cnt <= self.remaining, "advanced past the end");
        self.remaining -= cnt;
        while cnt > 0 {
            let Some(front) = self.parts.front_mut() else {
                return;
            };
            if front.len() <= cnt {
                cnt -= front.len();
                self.parts.pop_front();
            } else {
                front.advance(cnt);
                cnt = 0;
            }
        }
    }
}

#[cfg(test)]
mod tests;
