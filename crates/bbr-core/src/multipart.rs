//! The model of a `multipart/form-data` body (audio transcriptions and
//! translations): the content of the form field named `model`.
//!
//! The body is streamed like a JSON body: the extractor keeps only how much
//! of the delimiter it has matched at the end of the last chunk, the header
//! block of the current part (at most [`MAX_PART_HEADERS`] bytes) and the
//! value of the `model` field; file parts pass through unread but for the
//! delimiter search. The file part may come before the `model` field.

use bytes::Bytes;
use memchr::memmem;

use crate::{
    Error, ErrorKind, Extraction, ExtractorConfig, FieldValue, Model, Status,
    progress::{self, Chunk, Progress, Scan},
};

/// The largest header block a part may have, in bytes.
pub(crate) const MAX_PART_HEADERS: usize = 8 * 1024;

/// The longest boundary RFC 2046 allows.
const MAX_BOUNDARY: usize = 70;

/// Where the parser stands.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Phase {
    /// In the content of a part (or the preamble), looking for a delimiter;
    /// `matched` bytes of it seen at the end of the last chunk.
    Content,
    /// Right after a delimiter: `--` (the end) or padding and CRLF.
    AfterDelimiter,
    /// After the first `-` of a closing delimiter.
    CloseDash,
    /// In the transport padding after a delimiter.
    Padding,
    /// After the CR that ends a delimiter line.
    DelimiterLf,
    /// In the header block of a part.
    Headers,
    /// After the closing delimiter: ignored.
    Epilogue,
}

/// What the current part is.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Part {
    Preamble,
    Other,
    Model,
    Field(u8),
}

/// Finds the form field `model` in a streamed `multipart/form-data` body.
///
/// ```
/// use bytes::Bytes;
/// use bbr_core::{ExtractorConfig, MultipartExtractor};
///
/// let body = "--XyZ\r\nContent-Disposition: form-data; name=\"file\"; filename=\"a.wav\"\r\n\r\nRIFF....\r\n\
///             --XyZ\r\nContent-Disposition: form-data; name=\"model\"\r\n\r\nwhisper-1\r\n--XyZ--\r\n";
/// let mut extractor = MultipartExtractor::new("XyZ", ExtractorConfig::new()).unwrap();
/// extractor.feed(&Bytes::from(body)).unwrap();
/// assert_eq!(extractor.finish().unwrap().model().unwrap().as_str(), "whisper-1");
/// ```
#[derive(Debug)]
pub struct MultipartExtractor {
    /// The decision being built, the limit, errors.
    p: Progress,
    /// `\r\n--` followed by the boundary.
    delimiter: Box<[u8]>,
    finder: memmem::Finder<'static>,
    phase: Phase,
    matched: usize,
    part: Part,
    /// Header block of the current part, or the value being captured.
    buf: Vec<u8>,
    overflow: bool,
    /// Offset where the current part's content started.
    content_start: u64,
    /// Offset where the current part's header block started.
    headers_start: u64,
}

impl MultipartExtractor {
    /// An extractor for a body with the given boundary (1 to 70 characters).
    pub fn new(boundary: &str, config: ExtractorConfig) -> Result<MultipartExtractor, Error> {
        if boundary.is_empty()
            || boundary.len() > MAX_BOUNDARY
            || boundary.bytes().any(|b| !(0x20..0x7f).contains(&b))
        {
            return Err(Error::with_excerpt(
                ErrorKind::UnsupportedContentType,
                0,
                "invalid multipart boundary",
                boundary.as_bytes(),
            ));
        }
        let mut delimiter = b"\r\n--".to_vec();
        delimiter.extend_from_slice(boundary.as_bytes());
        let delimiter: Box<[u8]> = delimiter.into();
        let finder = memmem::Finder::new(&delimiter[..]).into_owned();
        Ok(MultipartExtractor {
            p: Progress::new(config),
            delimiter,
            finder,
            phase: Phase::Content,
            // The first delimiter may open the body without a CRLF before it.
            matched: 2,
            part: Part::Preamble,
            buf: Vec::new(),
            overflow: false,
            content_start: 0,
            headers_start: 0,
        })
    }

    /// Scans the next chunk. See [`ModelExtractor::feed`](crate::ModelExtractor::feed).
    pub fn feed(&mut self, chunk: &Bytes) -> Result<Status, Error> {
        progress::feed(self, Chunk::Shared(chunk))
    }

    /// Scans the next chunk, lent for this call only. See
    /// [`ModelExtractor::feed_lent`](crate::ModelExtractor::feed_lent).
    pub fn feed_lent(&mut self, chunk: &[u8]) -> Result<Status, Error> {
        progress::feed(self, Chunk::Lent(chunk))
    }

    /// Ends the body. In the strict policy the closing delimiter must have
    /// been seen.
    pub fn finish(&mut self) -> Result<&Extraction, Error> {
        progress::finish(self)
    }

    /// The decision, once made.
    pub fn extraction(&self) -> Option<&Extraction> {
        self.p.extraction()
    }

    /// Whether later chunks still need scanning.
    pub fn needs_scanning(&self) -> bool {
        self.p.needs_scanning() && self.phase != Phase::Epilogue
    }

    /// Bytes scanned so far.
    pub fn bytes_scanned(&self) -> u64 {
        self.p.scanned
    }

    #[cold]
    fn malformed(&self, at: u64, message: &str) -> Error {
        Error::new(ErrorKind::InvalidMultipart, at, message)
    }

    /// Scans `chunk[from..to]`.
    fn scan_multipart(&mut self, chunk: Chunk<'_>, from: usize, to: usize) -> Result<(), Error> {
        let buf = &chunk.bytes()[..to];
        let base = self.p.base;
        let mut i = from;
        while i < buf.len() {
            if self.p.fast_done() {
                break;
            }
            let at = base + i as u64;
            match self.phase {
                Phase::Content => i = self.content(buf, i, base)?,
                Phase::AfterDelimiter => {
                    self.phase = match buf[i] {
                        b'-' => Phase::CloseDash,
                        b' ' | b'\t' => Phase::Padding,
                        b'\r' => Phase::DelimiterLf,
                        _ => return Err(self.malformed(at, "bad delimiter line")),
                    };
                    i += 1;
                }
                Phase::CloseDash => {
                    if buf[i] != b'-' {
                        return Err(self.malformed(at, "bad closing delimiter"));
                    }
                    i += 1;
                    self.phase = Phase::Epilogue;
                    self.p.decide(base + i as u64);
                }
                Phase::Padding => {
                    self.phase = match buf[i] {
                        b' ' | b'\t' => Phase::Padding,
                        b'\r' => Phase::DelimiterLf,
                        _ => return Err(self.malformed(at, "bad delimiter line")),
                    };
                    i += 1;
                }
                Phase::DelimiterLf => {
                    if buf[i] != b'\n' {
                        return Err(self.malformed(at, "bad delimiter line"));
                    }
                    i += 1;
                    self.phase = Phase::Headers;
                    self.headers_start = base + i as u64;
                    self.buf.clear();
                }
                Phase::Headers => i = self.headers(buf, i, base)?,
                Phase::Epilogue => i = buf.len(),
            }
        }
        self.p.scanned = base + i as u64;
        Ok(())
    }

    /// Content bytes from `buf[i..]`; returns where scanning goes on.
    fn content(&mut self, buf: &[u8], mut i: usize, base: u64) -> Result<usize, Error> {
        let delimiter_len = self.delimiter.len();
        if self.matched > 0 {
            while self.matched < delimiter_len && i < buf.len() {
                if buf[i] != self.delimiter[self.matched] {
                    // What looked like a delimiter was content.
                    let matched = std::mem::take(&mut self.matched);
                    let delimiter = self.delimiter.clone();
                    self.emit(&delimiter[..matched]);
                    return Ok(i);
                }
                self.matched += 1;
                i += 1;
            }
            if self.matched == delimiter_len {
                self.matched = 0;
                let start = (base + i as u64).saturating_sub(delimiter_len as u64);
                self.end_part(start)?;
                self.phase = Phase::AfterDelimiter;
            }
            return Ok(i);
        }
        let rest = &buf[i..];
        if let Some(p) = self.finder.find(rest) {
            self.emit(&rest[..p]);
            self.end_part(base + (i + p) as u64)?;
            self.phase = Phase::AfterDelimiter;
            return Ok(i + p + delimiter_len);
        }
        // No whole delimiter: a prefix of one may end the chunk.
        let tail = rest.len().saturating_sub(delimiter_len - 1);
        let mut partial = rest.len();
        for q in memchr::memchr_iter(b'\r', &rest[tail..]).map(|q| tail + q) {
            if self.delimiter.starts_with(&rest[q..]) {
                partial = q;
                break;
            }
        }
        self.emit(&rest[..partial]);
        self.matched = rest.len() - partial;
        Ok(buf.len())
    }

    /// Content of the current part.
    fn emit(&mut self, bytes: &[u8]) {
        if matches!(self.part, Part::Model | Part::Field(_)) {
            let room = self.p.config.max_model_len().saturating_sub(self.buf.len());
            if bytes.len() > room {
                self.overflow = true;
            }
            self.buf.extend_from_slice(&bytes[..bytes.len().min(room)]);
        }
    }

    /// The delimiter that ends the current part starts at `at`.
    fn end_part(&mut self, at: u64) -> Result<(), Error> {
        let start = self.content_start;
        match self.part {
            Part::Model => {
                if std::str::from_utf8(&self.buf).is_err() {
                    return Err(self.malformed(start, "the `model` field is not valid UTF-8"));
                }
                let max_len = self.p.config.max_model_len();
                progress::check_model(&self.buf, self.overflow, false, start, max_len)?;
                let model = Model::new(Bytes::copy_from_slice(&self.buf), start..at, false);
                self.p.set_model(model, at);
            }
            Part::Field(n) => {
                let value = if self.overflow {
                    FieldValue::LongString
                } else {
                    FieldValue::String(String::from_utf8_lossy(&self.buf).into_owned())
                };
                self.p.set_field(n, value, at);
            }
            Part::Preamble | Part::Other => {}
        }
        self.part = Part::Other;
        self.buf.clear();
        Ok(())
    }

    /// Header bytes from `buf[i..]`; returns where scanning goes on.
    fn headers(&mut self, buf: &[u8], i: usize, base: u64) -> Result<usize, Error> {
        let mut k = i;
        while k < buf.len() {
            let b = buf[k];
            k += 1;
            if self.buf.len() >= MAX_PART_HEADERS {
                return Err(self.malformed(self.headers_start, "part headers are too large"));
            }
            self.buf.push(b);
            // The block ends at an empty line (possibly the first one).
            if b == b'\n' && (self.buf == b"\r\n" || self.buf.ends_with(b"\r\n\r\n")) {
                self.part = self.part_of(self.headers_start)?;
                self.buf.clear();
                self.overflow = false;
                self.content_start = base + k as u64;
                self.phase = Phase::Content;
                return Ok(k);
            }
        }
        Ok(k)
    }

    /// Reads the header block in `buf`: which form field this part is.
    fn part_of(&self, at: u64) -> Result<Part, Error> {
        let Ok(block) = std::str::from_utf8(&self.buf) else {
            return Err(self.malformed(at, "part headers are not valid UTF-8"));
        };
        let mut name = None;
        for line in block.split("\r\n").filter(|l| !l.is_empty()) {
            let Some((header, value)) = line.split_once(':') else {
                return Err(self.malformed(at, "malformed part header"));
            };
            if header.trim().eq_ignore_ascii_case("content-disposition") {
                name = disposition_name(value);
            }
        }
        let Some(name) = name else {
            return Ok(Part::Other);
        };
        if name == "model" {
            if self.p.model_seen {
                return Err(Error::new(
                    ErrorKind::DuplicateModel,
                    at,
                    "`model` appears more than once",
                ));
            }
            return Ok(Part::Model);
        }
        Ok(self
            .p
            .field_index(name.as_bytes())
            .map_or(Part::Other, Part::Field))
    }
}

impl Scan for MultipartExtractor {
    const TRUNCATED: ErrorKind = ErrorKind::InvalidMultipart;

    fn progress(&self) -> &Progress {
        &self.p
    }

    fn progress_mut(&mut self) -> &mut Progress {
        &mut self.p
    }

    fn scan(&mut self, chunk: Chunk<'_>, from: usize, to: usize) -> Result<(), Error> {
        self.scan_multipart(chunk, from, to)
    }

    fn complete(&self) -> bool {
        self.phase == Phase::Epilogue
    }

    fn needs_scanning(&self) -> bool {
        MultipartExtractor::needs_scanning(self)
    }
}

/// The `name` parameter of a `form-data` Content-Disposition value.
fn disposition_name(value: &str) -> Option<String> {
    let mut params = value.split(';');
    let kind = params.next()?.trim();
    if !kind.eq_ignore_ascii_case("form-data") {
        return None;
    }
    for param in params {
        let (key, val) = param.split_once('=')?;
        if !key.trim().eq_ignore_ascii_case("name") {
            continue;
        }
        let val = val.trim();
        return Some(
            match val.strip_prefix('"').and_then(|v| v.strip_suffix('"')) {
                Some(quoted) => quoted.replace("\\\"", "\"").replace("\\\\", "\\"),
                None => val.to_owned(),
            },
        );
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::Policy;

    const AUDIO: &str = "--b0undary\r\nContent-Disposition: form-data; name=\"file\"; filename=\"a.wav\"\r\nContent-Type: audio/wav\r\n\r\nRIFF\r\n--b0und not yet\r\n-\r\r\n--b0undary\r\ncontent-disposition: form-data; name=model\r\n\r\nwhisper-1\r\n--b0undary\r\nContent-Disposition: form-data; name=\"language\"\r\n\r\nen\r\n--b0undary--\r\nepilogue";

    fn run(config: &ExtractorConfig, chunks: &[&[u8]]) -> Result<Option<String>, (ErrorKind, u64)> {
        let mut x = MultipartExtractor::new("b0undary", config.clone()).unwrap();
        for c in chunks {
            x.feed(&Bytes::copy_from_slice(c))
                .map_err(|e| (e.kind(), e.offset()))?;
        }
        x.finish()
            .map(|e| e.model().map(|m| m.as_str().to_owned()))
            .map_err(|e| (e.kind(), e.offset()))
    }

    fn check_splits(body: &[u8]) -> Result<Option<String>, (ErrorKind, u64)> {
        let config = ExtractorConfig::new();
        let whole = run(&config, &[body]);
        for a in 0..=body.len() {
            for b in (a..=body.len()).step_by(3) {
                let got = run(&config, &[&body[..a], &body[a..b], &body[b..]]);
                assert_eq!(got, whole, "split at {a},{b}");
            }
        }
        let bytes: Vec<&[u8]> = body.chunks(1).collect();
        assert_eq!(run(&config, &bytes), whole, "byte by byte");
        whole
    }

    #[test]
    fn the_model_after_the_file_part() {
        assert_eq!(check_splits(AUDIO.as_bytes()), Ok(Some("whisper-1".into())));
    }

    #[test]
    fn span_and_extra_fields() {
        let config = ExtractorConfig::new().with_field("language");
        let mut x = MultipartExtractor::new("b0undary", config).unwrap();
        x.feed(&Bytes::from_static(AUDIO.as_bytes())).unwrap();
        let e = x.finish().unwrap();
        let span = e.model().unwrap().span();
        assert_eq!(
            &AUDIO.as_bytes()[span.start as usize..span.end as usize],
            b"whisper-1"
        );
        assert_eq!(e.field("language"), Some(&FieldValue::String("en".into())));
    }

    #[test]
    fn no_model_field() {
        let body =
            "--b0undary\r\nContent-Disposition: form-data; name=\"file\"\r\n\r\nx\r\n--b0undary--";
        assert_eq!(check_splits(body.as_bytes()), Ok(None));
    }

    #[test]
    fn errors() {
        let dup = "--b0undary\r\nContent-Disposition: form-data; name=\"model\"\r\n\r\na\r\n--b0undary\r\nContent-Disposition: form-data; name=\"model\"\r\n\r\nb\r\n--b0undary--";
        assert_eq!(
            check_splits(dup.as_bytes()).unwrap_err().0,
            ErrorKind::DuplicateModel
        );
        let empty =
            "--b0undary\r\nContent-Disposition: form-data; name=\"model\"\r\n\r\n\r\n--b0undary--";
        assert_eq!(
            check_splits(empty.as_bytes()).unwrap_err().0,
            ErrorKind::InvalidModel
        );
        let control = "--b0undary\r\nContent-Disposition: form-data; name=\"model\"\r\n\r\na\rb\r\n--b0undary--";
        assert_eq!(
            check_splits(control.as_bytes()).unwrap_err().0,
            ErrorKind::InvalidModel
        );
        let truncated = "--b0undary\r\nContent-Disposition: form-data; name=\"model\"\r\n\r\nabc";
        assert_eq!(
            check_splits(truncated.as_bytes()).unwrap_err().0,
            ErrorKind::InvalidMultipart
        );
        let bad_utf8 = b"--b0undary\r\nContent-Disposition: form-data; name=\"model\"\r\n\r\n\xff\r\n--b0undary--";
        assert_eq!(
            check_splits(bad_utf8).unwrap_err().0,
            ErrorKind::InvalidMultipart
        );
        let bad_line =
            "--b0undary\r\nContent-Disposition: form-data; name=\"x\"\r\n\r\na\r\n--b0undaryX\r\n";
        assert_eq!(
            check_splits(bad_line.as_bytes()).unwrap_err().0,
            ErrorKind::InvalidMultipart
        );
        let big_headers = format!("--b0undary\r\nX: {}\r\n\r\n", "h".repeat(MAX_PART_HEADERS));
        assert_eq!(
            run(&ExtractorConfig::new(), &[big_headers.as_bytes()])
                .unwrap_err()
                .0,
            ErrorKind::InvalidMultipart
        );
        assert!(MultipartExtractor::new("", ExtractorConfig::new()).is_err());
        assert!(MultipartExtractor::new(&"b".repeat(71), ExtractorConfig::new()).is_err());
    }

    #[test]
    fn too_large_before_the_model() {
        let config = ExtractorConfig::new().with_max_body(40);
        assert_eq!(
            run(&config, &[AUDIO.as_bytes()]).unwrap_err(),
            (ErrorKind::TooLarge, 40)
        );
    }

    #[test]
    fn fast_policy_stops_at_the_model() {
        let config = ExtractorConfig::new().with_policy(Policy::Fast);
        let cut = AUDIO.find("en\r\n").unwrap();
        assert_eq!(
            run(&config, &[&AUDIO.as_bytes()[..cut]]),
            Ok(Some("whisper-1".into()))
        );
    }
}
