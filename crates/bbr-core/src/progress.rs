//! What the JSON and multipart extractors share: the decision being built,
//! the body limit before a decision, sticky errors, and the feed/finish
//! protocol around each one's scanner.

use std::ops::Range;

use bytes::Bytes;

use crate::{Error, ErrorKind, Extraction, ExtractorConfig, FieldValue, Model, Policy, Status};

/// A body chunk as a scanner sees it: the caller's [`Bytes`], of which a
/// value found whole in the chunk is kept as a refcounted slice, or bytes
/// only lent for the call (a proxy's own buffer), of which a value kept is
/// copied.
#[derive(Clone, Copy, Debug)]
pub(crate) enum Chunk<'a> {
    Shared(&'a Bytes),
    Lent(&'a [u8]),
}

impl<'a> Chunk<'a> {
    /// The chunk's bytes.
    #[inline]
    pub(crate) fn bytes(self) -> &'a [u8] {
        match self {
            Chunk::Shared(chunk) => chunk,
            Chunk::Lent(chunk) => chunk,
        }
    }

    /// `range` of the chunk, kept past the call: a slice of a shared chunk
    /// (`true`: borrowed, nothing copied), a copy of a lent one.
    #[inline]
    pub(crate) fn keep(self, range: Range<usize>) -> (Bytes, bool) {
        match self {
            Chunk::Shared(chunk) => (chunk.slice(range), true),
            Chunk::Lent(chunk) => (Bytes::copy_from_slice(&chunk[range]), false),
        }
    }
}

/// The most extra fields one extractor looks for (a bit each in a `u64`).
pub(crate) const MAX_FIELDS: usize = 64;

/// The state of one body's extraction, apart from the scanner's own.
#[derive(Debug)]
pub(crate) struct Progress {
    pub(crate) config: ExtractorConfig,
    /// Offset of the first byte of the chunk being scanned (or of the next one).
    pub(crate) base: u64,
    /// Bytes scanned so far.
    pub(crate) scanned: u64,
    /// What has been found so far: the extraction once `decided`.
    found: Extraction,
    pub(crate) decided: bool,
    /// Whether a `model` has been read.
    pub(crate) model_seen: bool,
    /// Bit `n` is set once requested field `n` has been seen.
    fields_seen: u64,
    fields_all: u64,
    pub(crate) error: Option<Error>,
}

impl Progress {
    pub(crate) fn new(config: ExtractorConfig) -> Progress {
        let nfields = config.fields().len().min(MAX_FIELDS);
        let fields_all = if nfields == MAX_FIELDS {
            u64::MAX
        } else {
            (1u64 << nfields) - 1
        };
        Progress {
            config,
            base: 0,
            scanned: 0,
            found: Extraction {
                model: None,
                fields: Vec::new(),
                decided_at: 0,
            },
            decided: false,
            model_seen: false,
            fields_seen: 0,
            fields_all,
            error: None,
        }
    }

    /// The index of the requested field called `name`.
    #[inline]
    pub(crate) fn field_index(&self, name: &[u8]) -> Option<u8> {
        if self.fields_all == 0 {
            return None;
        }
        self.config
            .fields()
            .iter()
            .take(MAX_FIELDS)
            .position(|f| f.as_bytes() == name)
            .map(|n| n as u8)
    }

    /// Records the model; decides at `at` if nothing else is awaited.
    pub(crate) fn set_model(&mut self, model: Model, at: u64) {
        if !self.decided {
            self.found.model = Some(model);
        }
        self.model_seen = true;
        self.maybe_decide(at);
    }

    /// Records requested field `n` (the first occurrence wins; nothing
    /// after the decision); decides at `at` if nothing else is awaited.
    pub(crate) fn set_field(&mut self, n: u8, value: FieldValue, at: u64) {
        let bit = 1u64 << n;
        if self.fields_seen & bit == 0 && !self.decided {
            self.fields_seen |= bit;
            let name = self.config.fields()[n as usize].clone();
            self.found.fields.push((name, value));
        }
        self.maybe_decide(at);
    }

    /// Decides at `at` once the model and every requested field are in.
    pub(crate) fn maybe_decide(&mut self, at: u64) {
        if !self.decided && self.model_seen && self.fields_seen & self.fields_all == self.fields_all
        {
            self.decide(at);
        }
    }

    /// Decides at `at` with what has been read (the body's end is near).
    pub(crate) fn decide(&mut self, at: u64) {
        if !self.decided {
            self.decided = true;
            self.found.decided_at = at;
        }
    }

    /// The extraction, once decided.
    #[inline]
    pub(crate) fn extraction(&self) -> Option<&Extraction> {
        self.decided.then_some(&self.found)
    }

    /// Whether the fast policy has decided (so scanning stops).
    #[inline]
    pub(crate) fn fast_done(&self) -> bool {
        self.decided && self.config.policy() == Policy::Fast
    }

    /// Whether later chunks still need scanning: until the decision, and
    /// after it in the strict policy; not after an error.
    pub(crate) fn needs_scanning(&self) -> bool {
        self.error.is_none() && (!self.decided || self.config.policy() == Policy::Strict)
    }
}

/// Checks a model's value (unescaped): not empty, not longer than the
/// limit (`overflow`: it was cut there), no control character. Where the
/// value cannot hold a byte below 0x20 (`no_low_controls`: unescaped JSON,
/// where such bytes were refused as invalid), only DEL is looked for.
#[inline]
pub(crate) fn check_model(
    content: &[u8],
    overflow: bool,
    no_low_controls: bool,
    at: u64,
    max_len: usize,
) -> Result<(), Error> {
    if !content.is_empty() && !overflow && no_low_controls && !has_del_or_non_ascii(content) {
        return Ok(());
    }
    refuse_model(content, overflow, at, max_len)
}

/// Checks a model name given as text (from the URL path, or to
/// [`RuleTable::route`](crate::rules::RuleTable::route)): the same rules
/// and messages as a model read from a body, without a length limit.
pub(crate) fn check_model_name(model: &str) -> Result<(), Error> {
    check_model(model.as_bytes(), false, false, 0, usize::MAX)
}

/// [`check_model`] for a value that may be refused: the error, if any.
///
/// A model is refused when it is empty, longer than `max_len`, or holds a
/// control character: C0 (U+0000–U+001F), DEL (U+007F) or C1
/// (U+0080–U+009F). Such a value could split or smuggle a header, or be
/// read as a line break (NEL) by a backend.
#[cold]
fn refuse_model(content: &[u8], overflow: bool, at: u64, max_len: usize) -> Result<(), Error> {
    if content.is_empty() {
        return Err(Error::empty_model(at));
    }
    if overflow || content.len() > max_len {
        let message = format!("`model` is longer than {max_len} bytes");
        return Err(Error::with_excerpt(
            ErrorKind::InvalidModel,
            at,
            &message,
            content,
        ));
    }
    let control = match std::str::from_utf8(content) {
        Ok(text) => text.chars().any(char::is_control),
        // The extractors hand over valid UTF-8 only; refuse rather than guess.
        Err(_) => true,
    };
    if control {
        return Err(Error::with_excerpt(
            ErrorKind::InvalidModel,
            at,
            "`model` holds a control character",
            content,
        ));
    }
    Ok(())
}

/// Whether `s` holds a DEL (0x7f) or a byte above 0x7f (a non-ASCII
/// character, which the cold path checks for C1 controls), eight bytes at
/// a time: model names are short, and `memchr` costs more to set up than
/// this takes.
fn has_del_or_non_ascii(s: &[u8]) -> bool {
    const LO: u64 = 0x0101_0101_0101_0101;
    const HI: u64 = 0x8080_8080_8080_8080;
    let (words, rest) = s.as_chunks::<8>();
    // Bytes equal to 0x7f become zero, and a zero byte sets its high bit;
    // a byte above 0x7f has its high bit set already.
    let flags = words.iter().fold(0, |acc, w| {
        let w = u64::from_le_bytes(*w);
        let x = w ^ (LO * 0x7f);
        acc | (x.wrapping_sub(LO) & !x) | w
    });
    flags & HI != 0 || rest.iter().fold(false, |any, &b| any | (b >= 0x7f))
}

/// A scanner fed through [`feed`] and [`finish`].
pub(crate) trait Scan {
    /// The error kind of a body that ends too early.
    const TRUNCATED: ErrorKind;

    fn progress(&self) -> &Progress;
    fn progress_mut(&mut self) -> &mut Progress;
    /// Scans `chunk[from..to]`; offsets are relative to `progress().base`.
    fn scan(&mut self, chunk: Chunk<'_>, from: usize, to: usize) -> Result<(), Error>;
    /// Whether the body may end here in the strict policy.
    fn complete(&self) -> bool;
    /// Whether later chunks still need scanning.
    fn needs_scanning(&self) -> bool {
        self.progress().needs_scanning()
    }
}

/// Scans the next chunk: the body limit applies before the decision only;
/// after an error every call returns it.
pub(crate) fn feed<S: Scan>(s: &mut S, chunk: Chunk<'_>) -> Result<Status, Error> {
    let len = chunk.bytes().len();
    let p = s.progress();
    if let Some(err) = &p.error {
        return Err(err.clone());
    }
    if p.decided && !s.needs_scanning() {
        return Ok(Status::Found);
    }
    let mut end = len;
    if !p.decided {
        let budget = p.config.max_body().saturating_sub(p.base);
        end = end.min(usize::try_from(budget).unwrap_or(usize::MAX));
    }
    let mut result = s.scan(chunk, 0, end);
    if result.is_ok() && end < len {
        let p = s.progress();
        if !p.decided {
            result = Err(Error::new(
                ErrorKind::TooLarge,
                p.config.max_body(),
                "request body is larger than the limit before the model",
            ));
        } else if s.needs_scanning() {
            result = s.scan(chunk, end, len);
        }
    }
    let p = s.progress_mut();
    p.base += len as u64;
    match result {
        Ok(()) if p.decided => Ok(Status::Found),
        Ok(()) => Ok(Status::Pending),
        Err(err) => {
            p.error = Some(err.clone());
            Err(err)
        }
    }
}

/// Ends the body: in the strict policy it must be complete; in the fast
/// policy the decision is enough.
pub(crate) fn finish<S: Scan>(s: &mut S) -> Result<&Extraction, Error> {
    if let Some(err) = &s.progress().error {
        return Err(err.clone());
    }
    let complete = match s.progress().config.policy() {
        Policy::Strict => s.complete(),
        Policy::Fast => s.progress().decided,
    };
    let p = s.progress_mut();
    if !complete || !p.decided {
        let err = Error::new(S::TRUNCATED, p.base, "unexpected end of the body");
        p.error = Some(err.clone());
        return Err(err);
    }
    Ok(&p.found)
}
