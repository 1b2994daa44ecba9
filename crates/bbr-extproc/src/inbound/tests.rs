//! The reader against prost: any stream of Envoy's messages, cut into
//! frames anywhere, reads back as the messages sent, and a body chunk
//! spread over frames comes out as slices of those frames.

use std::{
    pin::Pin,
    task::{Context, Poll},
};

use bytes::{Bytes, BytesMut};
use envoy_types::pb::envoy::service::ext_proc::v3 as ep;
use http_body::Frame;
use proptest::{collection::vec, prelude::*};
use prost::Message;

use super::*;
use crate::wire::{HttpBody, tests as wire};

/// An HTTP body that yields the given frames, then ends (or fails).
struct Frames {
    frames: VecDeque<Bytes>,
    fail_at_end: bool,
}

impl http_body::Body for Frames {
    type Data = Bytes;
    type Error = std::io::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        _cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, std::io::Error>>> {
        Poll::Ready(match self.frames.pop_front() {
            Some(data) => Some(Ok(Frame::data(data))),
            None if self.fail_at_end => {
                self.fail_at_end = false;
                Some(Err(std::io::Error::other("reset")))
            }
            None => None,
        })
    }
}

/// The messages of `stream` cut at `cuts` (offsets), read until the end.
fn read(stream: &[u8], cuts: &[usize], max: usize) -> Vec<Result<Inbound, Status>> {
    let mut offsets: Vec<usize> = cuts.iter().map(|c| c % (stream.len() + 1)).collect();
    offsets.extend([0, stream.len()]);
    offsets.sort_unstable();
    offsets.dedup();
    let frames = offsets
        .windows(2)
        .map(|w| Bytes::copy_from_slice(&stream[w[0]..w[1]]))
        .collect();
    let mut reader = Reader::new(
        Frames {
            frames,
            fail_at_end: false,
        },
        max,
    );
    let mut cx = Context::from_waker(std::task::Waker::noop());
    let mut out = Vec::new();
    loop {
        match reader.poll_next(&mut cx) {
            Poll::Ready(Some(m)) => out.push(m),
            Poll::Ready(None) => return out,
            Poll::Pending => unreachable!("the frames are all there"),
        }
    }
}

fn framed(message: &[u8]) -> Vec<u8> {
    let mut out = vec![0];
    out.extend((message.len() as u32).to_be_bytes());
    out.extend(message);
    out
}

/// The request as the reader hands it on, its chunk put back in place.
fn whole(mut inbound: Inbound) -> crate::wire::ProcessingRequest {
    let chunk = inbound.take_chunk();
    let mut request = inbound.request;
    if let Some(Request::RequestBody(b) | Request::ResponseBody(b)) = &mut request.request {
        b.body = chunk.into_bytes();
    }
    request
}

fn body_request(len: usize, eos: bool) -> crate::wire::ProcessingRequest {
    crate::wire::ProcessingRequest {
        request: Some(Request::RequestBody(HttpBody {
            body: Bytes::from((0..len).map(|i| (i % 251) as u8).collect::<Vec<u8>>()),
            end_of_stream: eos,
        })),
        ..Default::default()
    }
}

proptest! {
    #[test]
    fn any_messages_cut_anywhere_read_back_as_sent(
        requests in vec((wire::request(), any::<(bool, i64, u8)>()), 1..5),
        big in 0usize..3,
        cuts in vec(any::<usize>(), 0..12),
    ) {
        let mut requests: Vec<_> = requests;
        // Now and then a chunk larger than the cuts are apart.
        if big > 0 {
            requests.push((body_request(big * 40_000, big == 2), (big == 1, 7, 3)));
        }
        let mut stream = Vec::new();
        let mut want = Vec::new();
        for (request, extras) in &requests {
            // Encoded by Envoy's generated types, with fields bbr skips.
            let e = wire::with_request_extras(wire::processing_request(request), *extras);
            stream.extend(framed(&e.encode_to_vec()));
            want.push(request.clone());
        }
        let read = read(&stream, &cuts, 1 << 20);
        let got: Vec<_> = read.into_iter().map(|m| m.map(whole)).collect::<Result<_, _>>()
            .map_err(|s| TestCaseError::fail(s.to_string()))?;
        prop_assert_eq!(got, want);
    }
}

#[test]
fn a_chunk_over_several_frames_is_slices_of_them() {
    let request = body_request(100_000, true);
    let stream = framed(&request.encode_to_vec());
    let frames: Vec<Bytes> = stream.chunks(16_384).map(Bytes::copy_from_slice).collect();
    let mut reader = Reader::new(
        Frames {
            frames: frames.iter().cloned().collect(),
            fail_at_end: false,
        },
        1 << 20,
    );
    let mut cx = Context::from_waker(std::task::Waker::noop());
    let Poll::Ready(Some(Ok(mut inbound))) = reader.poll_next(&mut cx) else {
        panic!("no message")
    };
    let Chunk::Parts(parts) = inbound.take_chunk() else {
        panic!("the chunk came in one piece")
    };
    assert_eq!(parts.len(), frames.len());
    for part in &parts {
        assert!(
            frames
                .iter()
                .any(|f| f.as_ptr_range().contains(&part.as_ptr())),
            "a piece was copied"
        );
    }
    let Some(Request::RequestBody(sent)) = request.request else {
        unreachable!()
    };
    assert_eq!(parts.concat(), sent.body);
    assert!(matches!(reader.poll_next(&mut cx), Poll::Ready(None)));
}

#[test]
fn a_message_in_one_frame_is_decoded_from_it() {
    let stream = Bytes::from(framed(&body_request(1_000, true).encode_to_vec()));
    let mut reader = Reader::new(
        Frames {
            frames: [stream.clone()].into(),
            fail_at_end: false,
        },
        1 << 20,
    );
    let mut cx = Context::from_waker(std::task::Waker::noop());
    let Poll::Ready(Some(Ok(mut inbound))) = reader.poll_next(&mut cx) else {
        panic!("no message")
    };
    let Chunk::One(chunk) = inbound.take_chunk() else {
        panic!("in pieces")
    };
    assert_eq!(chunk.len(), 1_000);
    assert!(stream.as_ptr_range().contains(&chunk.as_ptr()));
}

#[test]
fn a_message_over_the_limit_is_refused_at_its_prefix() {
    // Only the prefix is sent: the refusal does not wait for the message.
    let mut stream = vec![0];
    stream.extend(2_000u32.to_be_bytes());
    let read = read(&stream, &[], 1_999);
    assert_eq!(read.len(), 1);
    let status = read.into_iter().next().unwrap().unwrap_err();
    assert_eq!(status.code(), tonic::Code::OutOfRange, "{status}");
    assert!(status.message().contains("2000 bytes"), "{status}");
}

#[test]
fn a_compressed_message_is_refused() {
    let mut stream = framed(&body_request(10, true).encode_to_vec());
    stream[0] = 1;
    let read = read(&stream, &[3], 1 << 20);
    let status = read.into_iter().next().unwrap().unwrap_err();
    assert_eq!(status.code(), tonic::Code::Unimplemented, "{status}");
}

#[test]
fn a_stream_ending_inside_a_message_is_an_error() {
    let stream = framed(&body_request(100, true).encode_to_vec());
    for end in [3, 5, 50] {
        let read = read(&stream[..end], &[2], 1 << 20);
        assert_eq!(read.len(), 1, "cut at {end}");
        let status = read.into_iter().next().unwrap().unwrap_err();
        assert_eq!(status.code(), tonic::Code::Internal, "{status}");
    }
}

#[test]
fn a_reset_stream_is_an_error() {
    let mut reader = Reader::new(
        Frames {
            frames: VecDeque::new(),
            fail_at_end: true,
        },
        1 << 20,
    );
    let mut cx = Context::from_waker(std::task::Waker::noop());
    assert!(matches!(
        reader.poll_next(&mut cx),
        Poll::Ready(Some(Err(_)))
    ));
    assert!(matches!(reader.poll_next(&mut cx), Poll::Ready(None)));
}

#[test]
fn a_malformed_message_in_pieces_fails_as_prost_says() {
    // A body field whose length runs past the message, over two frames.
    let mut message = BytesMut::new();
    message.extend_from_slice(&[0x22, 0x80, 0x01]); // request_body, 128 bytes
    message.extend_from_slice(&[0x0a, 0x7d]); // body, 125 bytes
    message.extend_from_slice(&[7; 60]); // but only 60 follow
    let prost_says = ep::ProcessingRequest::decode(&message[..]).unwrap_err();
    let read = read(&framed(&message), &[20, 40], 1 << 20);
    let status = read.into_iter().next().unwrap().unwrap_err();
    assert_eq!(status.code(), tonic::Code::Internal);
    assert!(
        status.message().contains(&prost_says.to_string()),
        "{status} / {prost_says}"
    );
}
