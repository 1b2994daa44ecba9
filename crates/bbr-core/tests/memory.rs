//! The extractor holds no body bytes: fed a 100 MiB body generated on the
//! fly, the memory it keeps is the same as for a 10 MiB body, and it keeps
//! no reference to any chunk but the one its (borrowed) model lies in.
//!
//! Live bytes are counted per thread by this test binary's global
//! allocator, so the tests may run in parallel.

// A counting global allocator needs `unsafe`; test code only.
#![allow(unsafe_code)]

use std::{
    alloc::{GlobalAlloc, Layout, System},
    cell::Cell,
};

use bbr_core::{ErrorKind, ExtractorConfig, ModelExtractor, Policy, Status};
use bytes::Bytes;

struct Counting;

thread_local! {
    static LIVE: Cell<isize> = const { Cell::new(0) };
    static PEAK: Cell<isize> = const { Cell::new(0) };
}

fn track(delta: isize) {
    // `try_with`: the thread's locals may be gone while it exits.
    let _ = LIVE.try_with(|live| {
        let now = live.get() + delta;
        live.set(now);
        let _ = PEAK.try_with(|peak| peak.set(peak.get().max(now)));
    });
}

// SAFETY: every call is forwarded to `System` unchanged; the counters are
// thread-local cells that never allocate.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        track(layout.size() as isize);
        // SAFETY: same contract as ours.
        unsafe { System.alloc(layout) }
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        track(-(layout.size() as isize));
        // SAFETY: same contract as ours.
        unsafe { System.dealloc(ptr, layout) }
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        track(new_size as isize - layout.size() as isize);
        // SAFETY: same contract as ours.
        unsafe { System.realloc(ptr, layout, new_size) }
    }
}

#[global_allocator]
static ALLOCATOR: Counting = Counting;

const MIB: usize = 1 << 20;
const CHUNK: usize = 64 * 1024;

/// Restarts the peak at the current live bytes; returns them.
fn reset_peak() -> isize {
    let live = LIVE.with(Cell::get);
    PEAK.with(|peak| peak.set(live));
    live
}

fn peak() -> isize {
    PEAK.with(Cell::get)
}

/// Where the model sits in a generated body.
#[derive(Clone, Copy, Debug, PartialEq)]
enum Position {
    First,
    Last,
}

/// A chat body of at least `size` bytes, produced one `CHUNK` at a time into
/// fresh buffers, so that nothing but the extractor can hold its bytes.
struct ChatStream {
    body: Vec<u8>,
    message: Vec<u8>,
    size: usize,
    produced: usize,
    position: Position,
    done: bool,
}

const MODEL: &str = "meta-llama/Llama-3.1-8B-Instruct";

impl ChatStream {
    fn new(size: usize, position: Position) -> ChatStream {
        let head = match position {
            Position::First => format!("{{\"model\":\"{MODEL}\",\"messages\":["),
            Position::Last => "{\"messages\":[".to_owned(),
        };
        let message = br#"{"role":"user","content":"Summarise this paragraph, citing \"sources\" \u00e9t\u00e9 \ud83d\ude00 and 12.5e3 numbers.","tool_calls":[{"model":"decoy","n":[1,2,3]}]},"#;
        ChatStream {
            body: head.into_bytes(),
            message: message.to_vec(),
            size,
            produced: 0,
            position,
            done: false,
        }
    }

    fn tail(&self) -> String {
        let last = br#"{"role":"user","content":"end"}]"#;
        let mut tail = String::from_utf8_lossy(last).into_owned();
        if self.position == Position::Last {
            tail.push_str(&format!(",\"stream\":true,\"model\":\"{MODEL}\""));
        }
        tail.push('}');
        tail
    }
}

impl Iterator for ChatStream {
    type Item = Bytes;

    fn next(&mut self) -> Option<Bytes> {
        if self.done {
            return None;
        }
        let mut chunk = Vec::with_capacity(CHUNK + 256);
        chunk.append(&mut self.body);
        while self.produced + chunk.len() < self.size && chunk.len() + self.message.len() <= CHUNK {
            chunk.extend_from_slice(&self.message);
        }
        if self.produced + chunk.len() >= self.size {
            let tail = self.tail();
            chunk.extend_from_slice(tail.as_bytes());
            self.done = true;
        }
        self.produced += chunk.len();
        Some(Bytes::from(chunk))
    }
}

/// What one streamed extraction used.
#[derive(Debug)]
struct Usage {
    body_len: u64,
    /// Peak live bytes on this thread above the start, chunk in flight included.
    peak: isize,
    /// Live bytes after the last chunk was dropped (the extractor's own).
    retained: isize,
}

/// Streams a generated body through an extractor, checking after each
/// chunk that the extractor keeps no reference to it (but for the one the
/// borrowed model lies in).
fn stream(size: usize, position: Position, config: ExtractorConfig) -> Usage {
    let start = reset_peak();
    let mut extractor = ModelExtractor::new(config);
    let mut body_len = 0u64;
    for chunk in ChatStream::new(size, position) {
        let range = body_len..body_len + chunk.len() as u64;
        body_len = range.end;
        if !extractor.needs_scanning() {
            // The fast policy decided: an adapter forwards the rest unread.
            continue;
        }
        let status = extractor.feed(&chunk).expect("a valid body");
        let holds_model = extractor
            .extraction()
            .and_then(|e| e.model())
            .is_some_and(|m| m.is_borrowed() && range.contains(&m.span().start));
        if !holds_model {
            assert!(
                chunk.is_unique(),
                "the extractor kept a reference to the chunk at {range:?} ({status:?})"
            );
        }
    }
    let extraction = extractor.finish().expect("a valid body");
    assert_eq!(extraction.model().map(|m| m.as_str()), Some(MODEL));
    let retained = LIVE.with(Cell::get) - start;
    let usage = Usage {
        body_len,
        peak: peak() - start,
        retained,
    };
    drop(extractor);
    usage
}

fn assert_constant(small: &Usage, large: &Usage) {
    assert!(
        large.body_len >= 100 * MIB as u64 && small.body_len < 11 * MIB as u64,
        "{small:?} {large:?}"
    );
    // The chunk in flight, a borrowed model's chunk, and the extractor's
    // few small buffers: nothing that grows with the body.
    assert!(
        large.peak <= 3 * CHUNK as isize,
        "peak {} bytes for a {} byte body",
        large.peak,
        large.body_len
    );
    assert!(
        large.peak <= small.peak + 1024 && large.retained <= small.retained + 1024,
        "memory grows with the body: 10 MiB {small:?}, 100 MiB {large:?}"
    );
}

#[test]
fn strict_model_last_holds_nothing_of_a_100_mib_body() {
    let config = ExtractorConfig::new().with_max_body(u64::MAX);
    let small = stream(10 * MIB, Position::Last, config.clone());
    let large = stream(100 * MIB, Position::Last, config);
    assert_constant(&small, &large);
}

#[test]
fn strict_model_first_holds_nothing_of_a_100_mib_body() {
    let small = stream(10 * MIB, Position::First, ExtractorConfig::new());
    let large = stream(100 * MIB, Position::First, ExtractorConfig::new());
    assert_constant(&small, &large);
}

#[test]
fn fast_model_first_stops_at_the_model() {
    let config = ExtractorConfig::new().with_policy(Policy::Fast);
    let mut extractor = ModelExtractor::new(config);
    let mut chunks = ChatStream::new(100 * MIB, Position::First);
    let first = chunks.next().expect("a chunk");
    assert_eq!(extractor.feed(&first).expect("valid"), Status::Found);
    assert!(!extractor.needs_scanning());
    let model = extractor.finish().expect("decided").model().cloned();
    assert_eq!(model.as_ref().map(|m| m.as_str()), Some(MODEL));
    assert!(model.is_some_and(|m| m.is_borrowed()));
    assert!(extractor.bytes_scanned() <= first.len() as u64);
}

/// Past the default 32 MiB limit without a model, the body is refused,
/// and memory stays flat on the way there.
#[test]
fn model_after_the_limit_is_too_large() {
    let start = reset_peak();
    let mut extractor = ModelExtractor::new(ExtractorConfig::new());
    let mut error = None;
    for chunk in ChatStream::new(100 * MIB, Position::Last) {
        match extractor.feed(&chunk) {
            Ok(Status::Pending) => assert!(chunk.is_unique()),
            Ok(Status::Found) => panic!("decided before the model"),
            Err(e) => {
                error = Some(e);
                break;
            }
        }
    }
    let error = error.expect("refused");
    assert_eq!(error.kind(), ErrorKind::TooLarge);
    assert_eq!(error.offset(), bbr_core::DEFAULT_MAX_BODY);
    assert!(peak() - start <= 3 * CHUNK as isize, "{}", peak() - start);
}

/// A compressed body is decoded a buffer at a time: scanning a gzip body
/// that decodes to 100 MiB keeps no more than one that decodes to 10 MiB.
/// The body is compressed on another thread, so that only the decoding is
/// counted here.
#[cfg(feature = "decompress")]
#[test]
fn a_compressed_body_is_decoded_in_constant_memory() {
    use bbr_core::BodyExtractor;

    fn gzip_stream(size: usize) -> std::sync::mpsc::Receiver<Bytes> {
        use std::io::Write;
        let (tx, rx) = std::sync::mpsc::sync_channel(2);
        std::thread::spawn(move || {
            let level = flate2::Compression::fast();
            let mut encoder = flate2::write::GzEncoder::new(Vec::new(), level);
            for chunk in ChatStream::new(size, Position::Last) {
                encoder.write_all(&chunk).expect("in memory");
                if encoder.get_ref().len() >= CHUNK {
                    let out = std::mem::take(encoder.get_mut());
                    tx.send(Bytes::from(out)).expect("the test reads on");
                }
            }
            let out = encoder.finish().expect("in memory");
            tx.send(Bytes::from(out)).expect("the test reads on");
        });
        rx
    }

    fn decode(size: usize) -> (u64, isize) {
        // One message repeated compresses far beyond the default ratio.
        let config = ExtractorConfig::new()
            .with_max_body(u64::MAX)
            .with_max_expansion_ratio(u32::MAX);
        let chunks = gzip_stream(size);
        let start = reset_peak();
        let mut extractor =
            BodyExtractor::for_request(None, Some("gzip"), config).expect("gzip is read");
        for chunk in chunks {
            extractor.feed(&chunk).expect("a valid body");
        }
        let extraction = extractor.finish().expect("a valid body");
        assert_eq!(extraction.model().map(|m| m.as_str()), Some(MODEL));
        (extractor.bytes_scanned(), peak() - start)
    }

    let (small_len, small_peak) = decode(10 * MIB);
    let (large_len, large_peak) = decode(100 * MIB);
    assert!(large_len >= 100 * MIB as u64 && small_len < 11 * MIB as u64);
    // The decoder's state, its 16 KiB buffer and the chunk in flight.
    assert!(large_peak <= 256 << 10, "peak {large_peak} bytes");
    assert!(
        large_peak <= small_peak + 4096,
        "memory grows with the body: {small_peak} then {large_peak}"
    );
}

/// A decompression bomb is refused early, and its decoding takes no more
/// memory than any other body's.
#[cfg(feature = "decompress")]
#[test]
fn a_decompression_bomb_is_refused_in_bounded_memory() {
    use std::io::Write;

    use bbr_core::BodyExtractor;

    // The first 10 KB of the gzip stream of 10 GiB of spaces after `{`,
    // made here a MiB at a time.
    let mut encoder = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::best());
    encoder.write_all(b"{").expect("in memory");
    let spaces = vec![b' '; MIB];
    let mut decoded = 0u64;
    while encoder.get_ref().len() < 10_000 && decoded < 10 << 30 {
        encoder.write_all(&spaces).expect("in memory");
        decoded += MIB as u64;
    }
    let bomb = Bytes::from(encoder.finish().expect("in memory")).slice(..10_000);
    let chunks: Vec<Bytes> = (0..10)
        .map(|i| bomb.slice(i * 1000..(i + 1) * 1000))
        .collect();
    drop(spaces);

    let start = reset_peak();
    let mut extractor = BodyExtractor::for_request(None, Some("gzip"), ExtractorConfig::new())
        .expect("gzip is read");
    let error = chunks
        .iter()
        .find_map(|chunk| extractor.feed(chunk).err())
        .expect("refused");
    assert_eq!(error.kind(), ErrorKind::TooLarge);
    assert!(error.message().contains("decompression bomb"), "{error}");
    assert!(extractor.bytes_scanned() < 3 * MIB as u64);
    assert!(peak() - start <= 256 << 10, "peak {} bytes", peak() - start);
}
