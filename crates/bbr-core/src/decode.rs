//! Compressed request bodies: the `Content-Encoding` header read, and (with
//! the `decompress` feature) each compressed chunk decoded for the scan.
//!
//! Decoding serves the scan only. The adapters hold and forward the
//! compressed chunks as they came; the extractor is fed the decoded bytes,
//! a small buffer at a time, so a body never exists decoded in memory and
//! a compressed body is never rewritten. Two caps bound the work: the
//! decoded bytes count against the body limit before the decision (as a
//! plain body's do), and a body that decodes to more than
//! `max_expansion_ratio` times its compressed size (plus a slack) is
//! refused as a decompression bomb, before or after the decision.

use crate::{Error, ErrorKind};

/// A content coding bbr decodes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Coding {
    Gzip,
    Deflate,
    Brotli,
    Zstd,
}

impl Coding {
    /// The coding's name in `Content-Encoding`.
    pub(crate) const fn name(self) -> &'static str {
        match self {
            Coding::Gzip => "gzip",
            Coding::Deflate => "deflate",
            Coding::Brotli => "br",
            Coding::Zstd => "zstd",
        }
    }
}

/// The coding a `Content-Encoding` value names: `None` for `identity` (or
/// an empty value). A list of more than one coding is refused: clients send
/// one, and stacked codings multiply what a small body can expand to.
pub(crate) fn coding(header: &str) -> Result<Option<Coding>, Error> {
    let mut found = None;
    for name in header.split(',').map(str::trim) {
        let is = |n: &str| name.eq_ignore_ascii_case(n);
        let coding = if name.is_empty() || is("identity") {
            continue;
        } else if is("gzip") || is("x-gzip") {
            Coding::Gzip
        } else if is("deflate") {
            Coding::Deflate
        } else if is("br") {
            Coding::Brotli
        } else if is("zstd") {
            Coding::Zstd
        } else {
            return Err(Error::with_excerpt(
                ErrorKind::UnsupportedContentType,
                0,
                "unsupported content encoding",
                name.as_bytes(),
            ));
        };
        if found.is_some() {
            return Err(Error::with_excerpt(
                ErrorKind::UnsupportedContentType,
                0,
                "a body encoded more than once is not decoded",
                header.as_bytes(),
            ));
        }
        found = Some(coding);
    }
    Ok(found)
}

/// The error for a compressed body that is not decoded (decompression off,
/// or not built in).
#[cold]
pub(crate) fn not_decoded(coding: Coding) -> Error {
    Error::new(
        ErrorKind::UnsupportedContentType,
        0,
        format!(
            "compressed request bodies are not accepted here (content encoding {})",
            coding.name()
        ),
    )
}

#[cfg(feature = "decompress")]
pub use self::decoding::CompressedExtractor;

#[cfg(feature = "decompress")]
mod decoding {
    use std::fmt;

    use brotli_decompressor::{BrotliDecompressStream, BrotliResult, BrotliState, StandardAlloc};
    use bytes::{Bytes, BytesMut};
    use flate2::{Decompress, FlushDecompress, Status as FlateStatus};
    use zstd::stream::raw::{DParameter, Decoder as ZstdDecoder, InBuffer, Operation, OutBuffer};

    use super::Coding;
    use crate::{BodyExtractor, Error, ErrorKind, Extraction, ExtractorConfig, Status};

    /// Decoded bytes are written to a buffer of this size, then scanned.
    const DECODE_BUFFER: usize = 16 << 10;
    /// The largest zstd window accepted: 8 MiB (`2^23`), the most an HTTP
    /// sender may use (RFC 9659); a frame asking for more is refused.
    const ZSTD_WINDOW_LOG_MAX: u32 = 23;

    /// The extractor of a compressed body: each chunk is decoded and the
    /// decoded bytes are fed to the JSON or multipart extractor.
    ///
    /// Built by [`BodyExtractor::for_request`] and used through
    /// [`BodyExtractor`]. Offsets of errors in the decoded body (invalid
    /// JSON …), the model's span and [`Extraction::decided_at`] count
    /// decoded bytes; those of errors in the compressed stream itself
    /// ([`ErrorKind::InvalidEncoding`], a decompression bomb) count
    /// compressed bytes. The memory it keeps is the decoder's state (the
    /// window: 32 KiB for gzip and deflate, up to 16 MiB for br and 8 MiB
    /// for zstd, as the sender chose) and a 16 KiB buffer, whatever the
    /// body's size.
    pub struct CompressedExtractor {
        decoder: Decoder,
        inner: BodyExtractor,
        /// Compressed bytes received.
        received: u64,
        max_body: u64,
        error: Option<Error>,
    }

    impl CompressedExtractor {
        pub(crate) fn new(
            coding: Coding,
            inner: BodyExtractor,
            config: &ExtractorConfig,
        ) -> Result<CompressedExtractor, Error> {
            Ok(CompressedExtractor {
                decoder: Decoder::new(coding, config)?,
                inner,
                received: 0,
                max_body: config.max_body(),
                error: None,
            })
        }

        /// The content coding decoded (`gzip`, `deflate`, `br`, `zstd`).
        pub fn content_encoding(&self) -> &'static str {
            self.decoder.coding.name()
        }

        /// Compressed bytes received so far.
        pub fn compressed_bytes(&self) -> u64 {
            self.received
        }

        /// The extractor fed the decoded bytes.
        pub fn decoded(&self) -> &BodyExtractor {
            &self.inner
        }

        pub(crate) fn feed(&mut self, chunk: &[u8]) -> Result<Status, Error> {
            if let Some(error) = &self.error {
                return Err(error.clone());
            }
            if !self.needs_scanning() {
                return Ok(Status::Found);
            }
            self.received += chunk.len() as u64;
            let inner = &mut self.inner;
            let mut result = self.decoder.decode(chunk, |piece| {
                inner.feed(&piece)?;
                Ok(inner.needs_scanning())
            });
            // The compressed bytes are what the adapter holds: they count
            // against the limit too (a stream may decode to little or nothing).
            if result.is_ok() && self.inner.extraction().is_none() && self.received > self.max_body
            {
                result = Err(Error::new(
                    ErrorKind::TooLarge,
                    self.max_body,
                    "request body is larger than the limit before the model",
                ));
            }
            match result {
                Ok(()) if self.inner.extraction().is_some() => Ok(Status::Found),
                Ok(()) => Ok(Status::Pending),
                Err(error) => {
                    self.error = Some(error.clone());
                    Err(error)
                }
            }
        }

        pub(crate) fn finish(&mut self) -> Result<&Extraction, Error> {
            if let Some(error) = &self.error {
                return Err(error.clone());
            }
            // Decoding stopped at the decision (fast policy): the decision is
            // all there is to check.
            let stopped = self.inner.extraction().is_some() && !self.inner.needs_scanning();
            if !stopped && let Err(error) = self.decoder.finish() {
                self.error = Some(error.clone());
                return Err(error);
            }
            self.inner.finish()
        }

        pub(crate) fn extraction(&self) -> Option<&Extraction> {
            self.inner.extraction()
        }

        pub(crate) fn needs_scanning(&self) -> bool {
            self.error.is_none() && self.inner.needs_scanning()
        }

        pub(crate) fn bytes_scanned(&self) -> u64 {
            self.inner.bytes_scanned()
        }

        pub(crate) fn is_json(&self) -> bool {
            self.inner.is_json()
        }
    }

    impl fmt::Debug for CompressedExtractor {
        fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
            f.debug_struct("CompressedExtractor")
                .field("content_encoding", &self.content_encoding())
                .field("compressed_bytes", &self.received)
                .field("decoded_bytes", &self.decoder.produced)
                .field("inner", &self.inner)
                .finish()
        }
    }

    /// A streaming decoder with the expansion cap, writing into a buffer it
    /// reuses.
    struct Decoder {
        coding: Coding,
        codec: Codec,
        /// The buffer decoded bytes are written to; each piece is split off
        /// and frozen for the scan, and the buffer reclaimed once the
        /// extractor has let go of it.
        out: BytesMut,
        /// Compressed bytes the codec consumed.
        consumed: u64,
        /// Decoded bytes produced.
        produced: u64,
        max_ratio: u64,
        slack: u64,
    }

    enum Codec {
        Gzip(Box<Gzip>),
        Deflate(Box<Deflate>),
        Brotli(
            Box<BrotliState<StandardAlloc, StandardAlloc, StandardAlloc>>,
            bool,
        ),
        /// The decoder, and whether the last frame is complete.
        Zstd(Box<ZstdDecoder<'static>>, bool),
    }

    /// What went wrong in the compressed stream (the message's tail).
    type Corrupt = &'static str;

    /// What one decoding step did: the bytes consumed and produced, and
    /// the error it stopped at (after what it produced, which is scanned
    /// first, so that the outcome does not depend on the chunks).
    type Step = (usize, usize, Option<Corrupt>);

    fn progressed((used, made): (usize, usize)) -> Step {
        (used, made, None)
    }

    impl Decoder {
        fn new(coding: Coding, config: &ExtractorConfig) -> Result<Decoder, Error> {
            let codec = match coding {
                Coding::Gzip => Codec::Gzip(Box::default()),
                Coding::Deflate => Codec::Deflate(Box::default()),
                Coding::Brotli => Codec::Brotli(
                    Box::new(BrotliState::new(
                        StandardAlloc::default(),
                        StandardAlloc::default(),
                        StandardAlloc::default(),
                    )),
                    false,
                ),
                Coding::Zstd => {
                    let zstd = ZstdDecoder::new()
                        .and_then(|mut d| {
                            d.set_parameter(DParameter::WindowLogMax(ZSTD_WINDOW_LOG_MAX))?;
                            Ok(d)
                        })
                        .map_err(|_| {
                            Error::new(
                                ErrorKind::UnsupportedContentType,
                                0,
                                "the zstd decoder could not be set up",
                            )
                        })?;
                    Codec::Zstd(Box::new(zstd), false)
                }
            };
            Ok(Decoder {
                coding,
                codec,
                out: BytesMut::new(),
                consumed: 0,
                produced: 0,
                max_ratio: u64::from(config.max_expansion_ratio()),
                slack: config.expansion_slack(),
            })
        }

        /// Decodes `input`, handing each decoded piece to `scan`, which
        /// returns whether it wants more.
        fn decode<F>(&mut self, mut input: &[u8], mut scan: F) -> Result<(), Error>
        where
            F: FnMut(Bytes) -> Result<bool, Error>,
        {
            loop {
                if self.out.len() < DECODE_BUFFER {
                    // Reclaims the buffer when the last piece has been
                    // dropped (the usual case), else starts a new one.
                    self.out.clear();
                    self.out.reserve(DECODE_BUFFER);
                    self.out.resize(DECODE_BUFFER, 0);
                }
                let (used, made, error) = self.codec.step(input, &mut self.out);
                input = &input[used..];
                self.consumed += used as u64;
                if made > 0 {
                    self.produced += made as u64;
                    let cap = self
                        .consumed
                        .saturating_mul(self.max_ratio)
                        .saturating_add(self.slack);
                    if self.produced > cap {
                        return Err(self.bomb());
                    }
                    if !scan(self.out.split_to(made).freeze())? {
                        return Ok(());
                    }
                }
                if let Some(why) = error {
                    return Err(self.corrupt(why));
                }
                // More output may be pending while the buffer came back full.
                if made < DECODE_BUFFER && (input.is_empty() || (used == 0 && made == 0)) {
                    if !input.is_empty() {
                        // No progress on input that is there: never loop on it.
                        return Err(self.corrupt("the decoder is stuck"));
                    }
                    return Ok(());
                }
            }
        }

        /// Checks that the compressed stream ended where the body did.
        fn finish(&mut self) -> Result<(), Error> {
            if self.codec.complete() {
                Ok(())
            } else {
                Err(self.corrupt("it ends before the compressed stream does"))
            }
        }

        #[cold]
        fn corrupt(&self, why: Corrupt) -> Error {
            Error::new(
                ErrorKind::InvalidEncoding,
                self.consumed,
                format!(
                    "the {} request body cannot be decoded: {why}",
                    self.coding.name()
                ),
            )
        }

        #[cold]
        fn bomb(&self) -> Error {
            Error::new(
                ErrorKind::TooLarge,
                self.consumed,
                format!(
                    "the {} request body expands more than {} times its compressed size: \
                     refused as a decompression bomb",
                    self.coding.name(),
                    self.max_ratio
                ),
            )
        }
    }

    impl Codec {
        /// Decodes what it can of `input` into `out`: the bytes consumed and
        /// produced.
        fn step(&mut self, input: &[u8], out: &mut [u8]) -> Step {
            match self {
                Codec::Gzip(gz) => gz.step(input, out),
                Codec::Deflate(d) => d.step(input, out),
                Codec::Brotli(state, done) => {
                    if *done {
                        return match input.is_empty() {
                            true => progressed((0, 0)),
                            false => (0, 0, Some("bytes follow the end of the brotli stream")),
                        };
                    }
                    let (mut avail_in, mut in_at) = (input.len(), 0);
                    let (mut avail_out, mut out_at, mut total) = (out.len(), 0, 0);
                    let result = BrotliDecompressStream(
                        &mut avail_in,
                        &mut in_at,
                        input,
                        &mut avail_out,
                        &mut out_at,
                        out,
                        &mut total,
                        state,
                    );
                    let error = match result {
                        BrotliResult::ResultFailure => Some("the brotli stream is corrupt"),
                        BrotliResult::ResultSuccess => {
                            *done = true;
                            (in_at < input.len())
                                .then_some("bytes follow the end of the brotli stream")
                        }
                        BrotliResult::NeedsMoreInput | BrotliResult::NeedsMoreOutput => None,
                    };
                    (in_at, out_at, error)
                }
                Codec::Zstd(zstd, frame_done) => {
                    let mut src = InBuffer::around(input);
                    let mut dst = OutBuffer::around(out);
                    let result = zstd.run(&mut src, &mut dst);
                    let (used, made) = (src.pos(), dst.pos());
                    match result {
                        Ok(hint) => {
                            if used > 0 || made > 0 {
                                // 0: a frame is complete and flushed; more
                                // input starts another.
                                *frame_done = hint == 0;
                            }
                            progressed((used, made))
                        }
                        Err(_) => (
                            used,
                            made,
                            Some("the zstd stream is corrupt or needs a window over 8 MiB"),
                        ),
                    }
                }
            }
        }

        /// Whether the compressed stream is complete.
        fn complete(&self) -> bool {
            match self {
                Codec::Gzip(gz) => gz.complete(),
                Codec::Deflate(d) => d.done,
                Codec::Brotli(_, done) => *done,
                Codec::Zstd(_, frame_done) => *frame_done,
            }
        }
    }

    /// `deflate`: a zlib stream (RFC 1950) as the HTTP specification says,
    /// or a raw deflate stream (RFC 1951) as some clients send, told apart
    /// by the zlib header in the first two bytes.
    #[derive(Default)]
    struct Deflate {
        inflate: Option<Decompress>,
        /// The first byte, when it came alone.
        first: Option<u8>,
        done: bool,
    }

    impl Deflate {
        fn step(&mut self, input: &[u8], out: &mut [u8]) -> Step {
            if self.done {
                return match input.is_empty() {
                    true => progressed((0, 0)),
                    false => (0, 0, Some("bytes follow the end of the deflate stream")),
                };
            }
            let inflate = match &mut self.inflate {
                Some(inflate) => inflate,
                None => {
                    let (b0, b1) = match (self.first, input) {
                        (_, []) => return progressed((0, 0)),
                        (None, [b0]) => {
                            self.first = Some(*b0);
                            return progressed((1, 0));
                        }
                        (None, [b0, b1, ..]) => (*b0, *b1),
                        (Some(b0), [b1, ..]) => (b0, *b1),
                    };
                    let zlib = b0 & 0x0f == 8
                        && b0 >> 4 <= 7
                        && (u16::from(b0) << 8 | u16::from(b1)) % 31 == 0;
                    let mut inflate = Decompress::new(zlib);
                    if let Some(b0) = self.first.take()
                        // One byte never completes a symbol: nothing comes out.
                        && inflate.decompress(&[b0], out, FlushDecompress::None).is_err()
                    {
                        return (0, 0, Some("the deflate stream is corrupt"));
                    }
                    self.inflate.insert(inflate)
                }
            };
            let (before_in, before_out) = (inflate.total_in(), inflate.total_out());
            let status = inflate.decompress(input, out, FlushDecompress::None);
            let used = (inflate.total_in() - before_in) as usize;
            let made = (inflate.total_out() - before_out) as usize;
            let error = match status {
                Err(_) => Some("the deflate stream is corrupt"),
                Ok(FlateStatus::StreamEnd) => {
                    self.done = true;
                    (used < input.len()).then_some("bytes follow the end of the deflate stream")
                }
                Ok(_) => None,
            };
            (used, made, error)
        }
    }

    /// `gzip` (RFC 1952): members, each a header, a raw deflate stream and a
    /// trailer holding the CRC-32 and length of what it decodes to.
    struct Gzip {
        part: GzPart,
        inflate: Decompress,
        crc: crc32fast::Hasher,
        /// Header or trailer bytes gathered so far.
        buf: [u8; 10],
        len: usize,
        flags: u8,
        /// Bytes of the extra field still to skip.
        skip: usize,
    }

    #[derive(Clone, Copy, Debug, PartialEq, Eq)]
    enum GzPart {
        /// The ten fixed bytes of a member's header.
        Header,
        /// The length of the extra field.
        ExtraLen,
        Extra,
        Name,
        Comment,
        HeaderCrc,
        Body,
        Trailer,
        /// A member ended; more bytes start another.
        End,
    }

    const FHCRC: u8 = 0x02;
    const FEXTRA: u8 = 0x04;
    const FNAME: u8 = 0x08;
    const FCOMMENT: u8 = 0x10;
    const RESERVED: u8 = 0xe0;

    impl Default for Gzip {
        fn default() -> Self {
            Gzip {
                part: GzPart::Header,
                inflate: Decompress::new(false),
                crc: crc32fast::Hasher::new(),
                buf: [0; 10],
                len: 0,
                flags: 0,
                skip: 0,
            }
        }
    }

    impl Gzip {
        fn complete(&self) -> bool {
            self.part == GzPart::End
        }

        /// Gathers up to `n` bytes into `buf`: whether there are `n` now.
        fn gather(&mut self, input: &[u8], n: usize, used: &mut usize) -> bool {
            let take = (n - self.len).min(input.len());
            self.buf[self.len..self.len + take].copy_from_slice(&input[..take]);
            self.len += take;
            *used = take;
            self.len == n
        }

        /// The part after the header's optional field `done` (0 after the
        /// fixed bytes): the next field the flags announce, in header order.
        fn after(&self, done: u8) -> GzPart {
            const ORDER: [(u8, GzPart); 4] = [
                (FEXTRA, GzPart::ExtraLen),
                (FNAME, GzPart::Name),
                (FCOMMENT, GzPart::Comment),
                (FHCRC, GzPart::HeaderCrc),
            ];
            let from = ORDER
                .iter()
                .position(|(f, _)| *f == done)
                .map_or(0, |i| i + 1);
            ORDER[from..]
                .iter()
                .find(|(f, _)| self.flags & f != 0)
                .map_or(GzPart::Body, |(_, part)| *part)
        }

        fn enter(&mut self, part: GzPart) {
            self.part = part;
            self.len = 0;
        }

        fn step(&mut self, input: &[u8], out: &mut [u8]) -> Step {
            let mut used = 0;
            match self.part {
                GzPart::Body => {
                    let (before_in, before_out) =
                        (self.inflate.total_in(), self.inflate.total_out());
                    let status = self.inflate.decompress(input, out, FlushDecompress::None);
                    used = (self.inflate.total_in() - before_in) as usize;
                    let made = (self.inflate.total_out() - before_out) as usize;
                    self.crc.update(&out[..made]);
                    let error = match status {
                        Err(_) => Some("the deflate stream is corrupt"),
                        Ok(FlateStatus::StreamEnd) => {
                            self.enter(GzPart::Trailer);
                            None
                        }
                        Ok(_) => None,
                    };
                    return (used, made, error);
                }
                _ if input.is_empty() => {}
                GzPart::Header | GzPart::End => {
                    if self.part == GzPart::End {
                        // Another member.
                        self.inflate.reset(false);
                        self.crc = crc32fast::Hasher::new();
                        self.enter(GzPart::Header);
                    }
                    if self.gather(input, 10, &mut used) {
                        if self.buf[..3] != [0x1f, 0x8b, 8] {
                            return (used, 0, Some("not a gzip stream"));
                        }
                        self.flags = self.buf[3];
                        if self.flags & RESERVED != 0 {
                            return (used, 0, Some("reserved header flags are set"));
                        }
                        let next = self.after(0);
                        self.enter(next);
                    }
                }
                GzPart::ExtraLen => {
                    if self.gather(input, 2, &mut used) {
                        self.skip = usize::from(u16::from_le_bytes([self.buf[0], self.buf[1]]));
                        let next = match self.skip {
                            0 => self.after(FEXTRA),
                            _ => GzPart::Extra,
                        };
                        self.enter(next);
                    }
                }
                GzPart::Extra => {
                    used = self.skip.min(input.len());
                    self.skip -= used;
                    if self.skip == 0 {
                        let next = self.after(FEXTRA);
                        self.enter(next);
                    }
                }
                GzPart::Name | GzPart::Comment => {
                    let field = if self.part == GzPart::Name {
                        FNAME
                    } else {
                        FCOMMENT
                    };
                    match memchr::memchr(0, input) {
                        Some(at) => {
                            used = at + 1;
                            let next = self.after(field);
                            self.enter(next);
                        }
                        None => used = input.len(),
                    }
                }
                GzPart::HeaderCrc => {
                    if self.gather(input, 2, &mut used) {
                        self.enter(GzPart::Body);
                    }
                }
                GzPart::Trailer => {
                    if self.gather(input, 8, &mut used) {
                        let crc = u32::from_le_bytes([
                            self.buf[0],
                            self.buf[1],
                            self.buf[2],
                            self.buf[3],
                        ]);
                        let size = u32::from_le_bytes([
                            self.buf[4],
                            self.buf[5],
                            self.buf[6],
                            self.buf[7],
                        ]);
                        let sum = std::mem::take(&mut self.crc).finalize();
                        // The size is kept modulo 2^32.
                        if crc != sum || size != self.inflate.total_out() as u32 {
                            let why = "the CRC or length in the gzip trailer does not match";
                            return (used, 0, Some(why));
                        }
                        self.enter(GzPart::End);
                    }
                }
            }
            progressed((used, 0))
        }
    }
}

#[cfg(all(test, feature = "decompress"))]
mod tests {
    use std::io::Write;

    use bytes::Bytes;
    use proptest::prelude::*;

    use super::*;
    use crate::{BodyExtractor, ExtractorConfig, Policy};

    const BODY: &[u8] =
        br#"{"messages":[{"role":"user","content":"What is the color of the sky?"}],"model":"chatbot","stream":true}"#;

    fn gzip(body: &[u8]) -> Vec<u8> {
        let mut e = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
        e.write_all(body).unwrap();
        e.finish().unwrap()
    }

    fn zlib(body: &[u8]) -> Vec<u8> {
        let mut e = flate2::write::ZlibEncoder::new(Vec::new(), flate2::Compression::default());
        e.write_all(body).unwrap();
        e.finish().unwrap()
    }

    fn raw_deflate(body: &[u8]) -> Vec<u8> {
        let mut e = flate2::write::DeflateEncoder::new(Vec::new(), flate2::Compression::default());
        e.write_all(body).unwrap();
        e.finish().unwrap()
    }

    fn br(body: &[u8]) -> Vec<u8> {
        let mut e = brotli::CompressorWriter::new(Vec::new(), 4096, 5, 22);
        e.write_all(body).unwrap();
        e.into_inner()
    }

    fn zstd(body: &[u8]) -> Vec<u8> {
        zstd::stream::encode_all(body, 3).unwrap()
    }

    /// Every coding, with the `Content-Encoding` it is sent with.
    fn encodings(body: &[u8]) -> Vec<(&'static str, Vec<u8>)> {
        vec![
            ("gzip", gzip(body)),
            ("deflate", zlib(body)),
            ("deflate", raw_deflate(body)),
            ("br", br(body)),
            ("zstd", zstd(body)),
        ]
    }

    type Outcome = Result<(Option<String>, u64), (ErrorKind, String)>;

    /// The model and the decoded bytes scanned, or the error, for `chunks`.
    fn run(encoding: Option<&str>, config: &ExtractorConfig, chunks: &[&[u8]]) -> Outcome {
        let fail = |e: Error| (e.kind(), e.message().to_owned());
        let mut x = BodyExtractor::for_request(Some("application/json"), encoding, config.clone())
            .map_err(fail)?;
        for chunk in chunks {
            x.feed(&Bytes::copy_from_slice(chunk)).map_err(fail)?;
        }
        let model = x.finish().map_err(fail)?.model().map(|m| m.to_string());
        Ok((model, x.bytes_scanned()))
    }

    /// The one-chunk outcome, checked against every split in two and byte
    /// by byte.
    fn check_splits(encoding: &str, config: &ExtractorConfig, body: &[u8]) -> Outcome {
        let whole = run(Some(encoding), config, &[body]);
        let bytes: Vec<&[u8]> = body.chunks(1).collect();
        assert_eq!(
            run(Some(encoding), config, &bytes),
            whole,
            "{encoding} byte by byte"
        );
        for at in 0..=body.len() {
            let two = run(Some(encoding), config, &[&body[..at], &body[at..]]);
            assert_eq!(two, whole, "{encoding} split at {at}");
        }
        whole
    }

    #[test]
    fn every_coding_decodes_to_the_plain_outcome_at_every_split() {
        let config = ExtractorConfig::new();
        let plain = run(None, &config, &[BODY]);
        assert_eq!(plain, Ok((Some("chatbot".into()), BODY.len() as u64)));
        for (encoding, compressed) in encodings(BODY) {
            assert_eq!(
                check_splits(encoding, &config, &compressed),
                plain,
                "{encoding}"
            );
        }
    }

    #[test]
    fn errors_in_the_decoded_body_are_the_plain_errors() {
        let config = ExtractorConfig::new();
        for body in [
            &br#"{"model":"a","model":"b"}"#[..],
            br#"{"model":1}"#,
            br#"{"model":"a""#,
            br#"{"messages":[],"model":"a"} x"#,
        ] {
            let plain = run(None, &config, &[body]);
            assert!(plain.is_err());
            for (encoding, compressed) in encodings(body) {
                assert_eq!(
                    check_splits(encoding, &config, &compressed),
                    plain,
                    "{encoding}"
                );
            }
        }
    }

    #[test]
    fn gzip_header_fields_and_members_are_read() {
        let mut e = flate2::GzBuilder::new()
            .extra(vec![7; 300])
            .filename("body.json")
            .comment("a comment")
            .write(Vec::new(), flate2::Compression::fast());
        e.write_all(BODY).unwrap();
        let with_fields = e.finish().unwrap();
        let config = ExtractorConfig::new();
        let plain = run(None, &config, &[BODY]);
        assert_eq!(check_splits("gzip", &config, &with_fields), plain);

        // Two members decode as their concatenation (RFC 1952 §2.2).
        let (a, b) = BODY.split_at(40);
        let members = [gzip(a), gzip(b)].concat();
        assert_eq!(check_splits("x-gzip", &config, &members), plain);
    }

    #[test]
    fn corrupt_streams_are_invalid_encoding() {
        let config = ExtractorConfig::new();
        let kind = |encoding, body: &[u8]| run(Some(encoding), &config, &[body]).map_err(|e| e.0);
        for (encoding, compressed) in encodings(BODY) {
            // Cut short: the decoded JSON may be whole, the stream is not.
            let cut = &compressed[..compressed.len() - 1];
            assert_eq!(
                kind(encoding, cut),
                Err(ErrorKind::InvalidEncoding),
                "{encoding} cut"
            );
            // Followed by other bytes.
            let mut more = compressed.clone();
            more.extend_from_slice(b"trailing");
            assert_eq!(
                kind(encoding, &more),
                Err(ErrorKind::InvalidEncoding),
                "{encoding}+"
            );
        }
        // A plain body labelled as compressed.
        for encoding in ["gzip", "br", "zstd"] {
            let err = run(Some(encoding), &config, &[BODY]).unwrap_err();
            assert_eq!(err.0, ErrorKind::InvalidEncoding, "{encoding}");
            assert!(err.1.contains(encoding), "{err:?}");
        }
        // Raw deflate has no header: `{"` starts a valid block, which decodes
        // to bytes that are not JSON.
        let err = run(Some("deflate"), &config, &[BODY]).unwrap_err();
        assert!(
            matches!(err.0, ErrorKind::InvalidJson | ErrorKind::InvalidEncoding),
            "{err:?}"
        );
        // A changed CRC in the trailer.
        let mut flipped = gzip(BODY);
        let at = flipped.len() - 6;
        flipped[at] ^= 0x55;
        let err = run(Some("gzip"), &config, &[&flipped]).unwrap_err();
        assert_eq!(err.0, ErrorKind::InvalidEncoding);
        assert!(err.1.contains("CRC"), "{err:?}");
        let err = Error::new(ErrorKind::InvalidEncoding, 0, "");
        assert_eq!(
            (err.status(), err.kind().as_str()),
            (400, "invalid_encoding")
        );
    }

    #[test]
    fn content_encodings_are_read_or_refused_with_415() {
        let config = ExtractorConfig::new();
        let gz = gzip(BODY);
        let plain = run(None, &config, &[BODY]);
        for identity in ["identity", "", " IDENTITY "] {
            assert_eq!(run(Some(identity), &config, &[BODY]), plain, "{identity:?}");
        }
        for gzip in ["gzip", "GZip", "gzip, identity", "identity,gzip", "x-gzip"] {
            assert_eq!(run(Some(gzip), &config, &[&gz]), plain, "{gzip:?}");
        }
        for refused in ["compress", "gzip, br", "br,br", "exi", "gzip;q=1"] {
            let err = run(Some(refused), &config, &[&gz]).unwrap_err();
            assert_eq!(err.0, ErrorKind::UnsupportedContentType, "{refused:?}");
            assert!(err.1.contains("encod"), "{err:?}");
        }
        // Decompression turned off: a compressed body is refused, a plain one is not.
        let off = ExtractorConfig::new().with_decompression(false);
        let err = run(Some("gzip"), &off, &[&gz]).unwrap_err();
        assert_eq!(err.0, ErrorKind::UnsupportedContentType);
        assert_eq!(run(Some("identity"), &off, &[BODY]), plain);
    }

    #[test]
    fn compressed_bodies_are_not_rewritable() {
        let config = ExtractorConfig::new();
        let x = BodyExtractor::for_request(Some("application/json"), Some("gzip"), config.clone())
            .unwrap();
        assert!(x.is_json() && !x.is_rewritable());
        let x = BodyExtractor::for_request(None, None, config).unwrap();
        assert!(x.is_json() && x.is_rewritable());
    }

    /// The first `len` bytes of the gzip stream of `{` and `total` spaces:
    /// what a decompression bomb sends first. Generated a MiB at a time.
    fn bomb(total: u64, len: usize) -> Vec<u8> {
        let mut e = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::best());
        e.write_all(b"{").unwrap();
        let spaces = vec![b' '; 1 << 20];
        let mut written = 0;
        while e.get_ref().len() < len && written < total {
            e.write_all(&spaces).unwrap();
            written += spaces.len() as u64;
        }
        let mut out = e.finish().unwrap();
        out.truncate(len);
        out
    }

    #[test]
    fn a_bomb_is_too_large_and_decoding_stops_early() {
        // 10 KB of a stream that inflates to 10 GiB.
        let start = bomb(10 << 30, 10_000);
        let config = ExtractorConfig::new();
        let mut x = BodyExtractor::for_request(None, Some("gzip"), config.clone()).unwrap();
        let mut error = None;
        for chunk in start.chunks(1000) {
            if let Err(e) = x.feed(&Bytes::copy_from_slice(chunk)) {
                error = Some(e);
                break;
            }
        }
        let error = error.expect("refused");
        assert_eq!(error.kind(), ErrorKind::TooLarge);
        assert_eq!(error.status(), 413);
        assert!(error.message().contains("decompression bomb"), "{error}");
        // Stopped at the cap: 100 times what was consumed, plus the slack.
        let cap = 100 * 10_000 + config.expansion_slack() + (16 << 10);
        assert!(x.bytes_scanned() <= cap, "{}", x.bytes_scanned());
        // Sticky.
        assert_eq!(
            x.feed(&Bytes::from_static(b" ")).unwrap_err().kind(),
            ErrorKind::TooLarge
        );

        // A lower ratio refuses sooner; a higher one lets the body limit refuse it.
        let tight = ExtractorConfig::new()
            .with_max_expansion_ratio(2)
            .with_expansion_slack(0);
        assert!(run(Some("gzip"), &tight, &[&gzip(BODY)]).is_ok());
        let spaces = gzip(&[b' '; 4096]);
        let err = run(Some("gzip"), &tight, &[&spaces]).unwrap_err();
        assert_eq!(err.0, ErrorKind::TooLarge);
        let loose = ExtractorConfig::new()
            .with_max_expansion_ratio(u32::MAX)
            .with_max_body(1 << 20);
        let err = run(Some("gzip"), &loose, &[&start]).unwrap_err();
        assert_eq!(err.0, ErrorKind::TooLarge);
        assert!(!err.1.contains("bomb"), "{err:?}");
    }

    #[test]
    fn a_bomb_after_the_decision_is_refused_in_the_strict_policy_only() {
        let mut body = br#"{"model":"m","pad":""#.to_vec();
        body.extend(std::iter::repeat_n(b'a', 4 << 20));
        body.extend_from_slice(br#""}"#);
        let compressed = gzip(&body);
        let tight = ExtractorConfig::new().with_expansion_slack(64 << 10);
        let chunks: Vec<&[u8]> = compressed.chunks(64).collect();
        let mut x = BodyExtractor::for_request(None, Some("gzip"), tight.clone()).unwrap();
        let mut statuses = chunks.iter().map(|c| x.feed(&Bytes::copy_from_slice(c)));
        assert_eq!(statuses.next().map(|s| s.is_ok()), Some(true));
        assert!(statuses.any(|s| s.is_err_and(|e| e.kind() == ErrorKind::TooLarge)));
        // The fast policy stops decoding at the decision.
        let fast = tight.with_policy(Policy::Fast);
        assert_eq!(
            run(Some("gzip"), &fast, &chunks).map(|o| o.0),
            Ok(Some("m".into()))
        );
    }

    #[test]
    fn compressed_bytes_count_against_the_body_limit() {
        // A gzip header whose file name takes 64 KiB decodes to nothing.
        let mut e = flate2::GzBuilder::new()
            .filename(vec![b'n'; 64 << 10])
            .write(Vec::new(), flate2::Compression::fast());
        e.write_all(BODY).unwrap();
        let padded = e.finish().unwrap();
        let config = ExtractorConfig::new().with_max_body(16 << 10);
        let chunks: Vec<&[u8]> = padded.chunks(4096).collect();
        let err = run(Some("gzip"), &config, &chunks).unwrap_err();
        assert_eq!(err.0, ErrorKind::TooLarge);
        // Decoded bytes count as a plain body's do.
        let small = ExtractorConfig::new().with_max_body(20);
        let err = run(Some("br"), &small, &[&br(BODY)]).unwrap_err();
        assert_eq!(err.0, ErrorKind::TooLarge);
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(64))]

        /// Any bytes, in any coding, split anywhere: an outcome, never a
        /// panic, and the one-chunk outcome, but for which error comes
        /// first in a corrupt stream. Decoders buffer output, and how much
        /// of what lies before the corruption they have let out when they
        /// find it depends on the chunks: the scan of that output may
        /// refuse it first (as invalid JSON, say).
        #[test]
        fn arbitrary_bytes_never_panic(
            bytes in proptest::collection::vec(any::<u8>(), 0..2000),
            mangle in proptest::option::of((any::<prop::sample::Index>(), any::<u8>())),
            cut in any::<prop::sample::Index>(),
            which in 0usize..5,
        ) {
            // Mostly valid streams with a byte changed, and raw noise.
            let (encoding, mut stream) = match which {
                4 => ("gzip", bytes.clone()),
                n => encodings(&bytes).swap_remove(n),
            };
            if let Some((at, value)) = mangle && !stream.is_empty() {
                let at = at.index(stream.len());
                stream[at] = value;
            }
            let config = ExtractorConfig::new();
            let at = cut.index(stream.len() + 1);
            let whole = run(Some(encoding), &config, &[&stream]);
            let split = run(Some(encoding), &config, &[&stream[..at], &stream[at..]]);
            let corrupt = |o: &Outcome| matches!(o, Err((ErrorKind::InvalidEncoding, _)));
            if split != whole {
                prop_assert!(
                    (corrupt(&whole) && split.is_err()) || (corrupt(&split) && whole.is_err()),
                    "{:?} in one chunk, {:?} split at {}", whole, split, at
                );
            }
        }

        /// Any body, any coding, split anywhere: the plain body's outcome.
        #[test]
        fn decoding_is_split_independent(
            content in "[a-z \\\\\"]{0,3000}",
            model_first in any::<bool>(),
            cuts in proptest::collection::vec(any::<prop::sample::Index>(), 0..8),
            which in 0usize..5,
        ) {
            let content = serde_json::to_string(&content).unwrap();
            let body = if model_first {
                format!(r#"{{"model":"m","messages":[{{"content":{content}}}]}}"#)
            } else {
                format!(r#"{{"messages":[{{"content":{content}}}],"model":"m"}}"#)
            };
            let config = ExtractorConfig::new();
            let plain = run(None, &config, &[body.as_bytes()]);
            let (encoding, compressed) = encodings(body.as_bytes()).swap_remove(which);
            let mut at: Vec<usize> = cuts.iter().map(|i| i.index(compressed.len() + 1)).collect();
            at.sort_unstable();
            let mut chunks = Vec::new();
            let mut from = 0;
            for to in at.into_iter().chain([compressed.len()]) {
                chunks.push(&compressed[from..to]);
                from = to;
            }
            prop_assert_eq!(run(Some(encoding), &config, &chunks), plain);
        }
    }
}
