//! The resumable JSON state machine behind [`ModelExtractor`].
//!
//! The body is validated exactly as `serde_json::from_slice::<Value>` would
//! (but for number range), one chunk at a time, keeping only a few bytes of
//! state across chunk boundaries: the nesting stack is a bit set (one bit a
//! level), a partial escape or UTF-8 sequence is a handful of integers, and
//! the only buffer is the small one that holds a top-level key or the model
//! while they are read. Nothing is recursive and nothing grows with the body.

use bytes::Bytes;

use crate::{
    Error, ErrorKind, Extraction, ExtractorConfig, FieldValue, Model, Status,
    config::MAX_FIELD_NAME_LEN,
    progress::{self, Chunk, Progress, Scan},
    scan,
};

/// Where the parser stands between two bytes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum State {
    /// Before the top-level value.
    Start,
    /// Expecting a value: after `:`, or after `,` in an array.
    Value,
    /// After `[`: a value or `]`.
    ArrayFirst,
    /// After `{`: a key or `}`.
    ObjectFirst,
    /// After `,` in an object: a key.
    Key,
    /// After a key: `:`.
    Colon,
    /// After a value: `,` or the closing bracket of the container.
    AfterValue,
    /// Inside a string.
    Str(Str),
    /// Inside a number.
    Num(Num),
    /// Inside `true` (0), `false` (1) or `null` (2), `pos` bytes matched.
    Lit { which: u8, pos: u8 },
    /// After the top-level object: whitespace only.
    Done,
}

/// Where the parser stands inside a string.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Str {
    /// Plain characters.
    Plain,
    /// After `\`.
    Escape,
    /// In `\uXXXX`, `n` hex digits read.
    Hex { n: u8, value: u16 },
    /// After a leading surrogate `\uD8xx`: a `\` must follow.
    LowBackslash { high: u16 },
    /// After the `\` that follows a leading surrogate: a `u` must follow.
    LowU { high: u16 },
    /// In the trailing surrogate's hex digits.
    LowHex { high: u16, n: u8, value: u16 },
    /// Inside a multi-byte UTF-8 sequence: `need` continuation bytes to go,
    /// the next one in `lo..=hi`.
    Utf8 { need: u8, lo: u8, hi: u8 },
}

/// Where the parser stands inside a number.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Num {
    /// After `-`: a digit must follow.
    Minus,
    /// After a leading `0`.
    Zero,
    /// In the integer digits.
    Int,
    /// After `.`: a digit must follow.
    Dot,
    /// In the fraction digits.
    Frac,
    /// After `e`/`E`: a sign or a digit.
    Exp,
    /// After the exponent sign: a digit must follow.
    ExpSign,
    /// In the exponent digits.
    ExpDigits,
}

/// What the string being read is.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum StrKind {
    /// A key of the top-level object (compared with `model` and the fields).
    TopKey,
    /// Any other key.
    Key,
    /// The value of the top-level `model`.
    Model,
    /// The value of requested field `n`.
    Field(u8),
    /// Any other string value.
    Value,
}

/// What the top-level value being started is.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Role {
    None,
    Model,
    /// A number in `model`, read as its text
    /// ([`ExtractorConfig::with_numeric_model`]).
    ModelNumber,
    Field(u8),
}

/// Finds the top-level `model` of a JSON body fed in chunks.
///
/// Feed each chunk as it arrives; [`Status::Found`] says the decision is
/// made (see [`extraction`](Self::extraction)). In the strict policy keep
/// feeding the later chunks, each before it is released, and call
/// [`finish`](Self::finish) at the end of the body.
///
/// ```
/// use bytes::Bytes;
/// use bbr_core::{ExtractorConfig, ModelExtractor, Status};
///
/// let mut extractor = ModelExtractor::new(ExtractorConfig::new());
/// let first = Bytes::from_static(b"{\"max_tokens\":100,\"model\":\"sql-lo");
/// let second = Bytes::from_static(b"ra-sheddable\",\"prompt\":\"test\"}");
/// assert_eq!(extractor.feed(&first).unwrap(), Status::Pending);
/// assert_eq!(extractor.feed(&second).unwrap(), Status::Found);
/// let extraction = extractor.finish().unwrap();
/// assert_eq!(extraction.model().unwrap().as_str(), "sql-lora-sheddable");
/// ```
#[derive(Debug)]
pub struct ModelExtractor {
    /// The decision being built, the limit, errors.
    p: Progress,
    state: State,
    /// Nesting depth; 0 outside the top-level object.
    depth: u32,
    /// The nesting stack as a shift register: bit 0 is set when the
    /// innermost open container is an array, bit 1 for the one around it…
    arrays: u128,
    /// What the string being read is.
    kind: StrKind,
    /// What the next value at depth 1 is (set by its key).
    role: Role,
    /// Whether the string being read is captured (a top-level key, the
    /// model, a requested field).
    capturing: bool,
    /// Where the captured string's content starts in the current chunk,
    /// while it is not `spilled`.
    cap_from: usize,
    /// Whether the captured string is being copied into `buf`: only once it
    /// has an escape or crosses a chunk boundary. Until then it is a slice
    /// of the chunk, skipped as fast as any other string and never copied.
    spilled: bool,
    /// A spilled string (unescaped), or a requested field's number.
    buf: Vec<u8>,
    /// The spilled string (or number) overflowed its limit.
    overflow: bool,
    /// Offset where the current string token started.
    token_start: u64,
    /// Offset of the lead byte of the UTF-8 sequence being read.
    utf8_start: u64,
}

impl ModelExtractor {
    /// A fresh extractor for one body.
    pub fn new(config: ExtractorConfig) -> ModelExtractor {
        ModelExtractor {
            p: Progress::new(config),
            state: State::Start,
            depth: 0,
            arrays: 0,
            kind: StrKind::Value,
            role: Role::None,
            capturing: false,
            cap_from: 0,
            spilled: false,
            buf: Vec::new(),
            overflow: false,
            token_start: 0,
            utf8_start: 0,
        }
    }

    /// Extracts from a whole body at once (one chunk, then the end).
    ///
    /// ```
    /// use bytes::Bytes;
    /// use bbr_core::{ExtractorConfig, ModelExtractor};
    ///
    /// let body = Bytes::from_static(br#"{"messages":[{"role":"user","content":"hi"}],"model":"chatbot"}"#);
    /// let extraction = ModelExtractor::extract(ExtractorConfig::new(), &body).unwrap();
    /// assert_eq!(extraction.model().unwrap().as_str(), "chatbot");
    /// ```
    pub fn extract(config: ExtractorConfig, body: &Bytes) -> Result<Extraction, Error> {
        let mut extractor = ModelExtractor::new(config);
        extractor.feed(body)?;
        extractor.finish().cloned()
    }

    /// Scans the next chunk.
    ///
    /// Returns [`Status::Pending`] while no decision is made, then
    /// [`Status::Found`]. After an error, every call returns that error.
    /// Past the configured body limit without a decision, the error is
    /// [`ErrorKind::TooLarge`].
    pub fn feed(&mut self, chunk: &Bytes) -> Result<Status, Error> {
        progress::feed(self, Chunk::Shared(chunk))
    }

    /// Scans the next chunk, lent for this call only (a proxy's buffer
    /// read in place): as [`feed`](Self::feed), but a model found whole in
    /// the chunk is copied instead of sliced, so nothing refers to `chunk`
    /// once the call returns.
    pub fn feed_lent(&mut self, chunk: &[u8]) -> Result<Status, Error> {
        progress::feed(self, Chunk::Lent(chunk))
    }

    /// Ends the body: checks that it is complete and returns the decision.
    ///
    /// In the strict policy the whole body must have been a complete JSON
    /// object; in the fast policy the decision is enough.
    pub fn finish(&mut self) -> Result<&Extraction, Error> {
        progress::finish(self)
    }

    /// The decision, once made.
    pub fn extraction(&self) -> Option<&Extraction> {
        self.p.extraction()
    }

    /// Whether later chunks still need [`feed`](Self::feed): `true` until
    /// the decision, and after it in the strict policy; `false` after an error.
    pub fn needs_scanning(&self) -> bool {
        self.p.needs_scanning()
    }

    /// Bytes scanned so far.
    pub fn bytes_scanned(&self) -> u64 {
        self.p.scanned
    }

    /// The configuration.
    pub fn config(&self) -> &ExtractorConfig {
        &self.p.config
    }

    #[cold]
    fn error(&self, kind: ErrorKind, at: u64, message: &str) -> Error {
        Error::new(kind, at, message)
    }

    #[cold]
    fn syntax(&self, at: u64, message: &str) -> Error {
        Error::new(ErrorKind::InvalidJson, at, message)
    }

    /// Scans `chunk[from..to]`. Stops early once decided in the fast policy.
    fn scan_json(&mut self, chunk: Chunk<'_>, from: usize, to: usize) -> Result<(), Error> {
        let buf = &chunk.bytes()[..to];
        let base = self.p.base;
        let mut i = from;
        // Where the block path may be tried again.
        let mut blocks_from = from;
        // The common opening `{"model":"`: straight into the model's value,
        // in exactly the state the byte-level machine would reach there.
        const OPENING: &[u8] = b"{\"model\":\"";
        if matches!(self.state, State::Start) && base == 0 && i == 0 && buf.starts_with(OPENING) {
            self.depth = 1;
            self.begin_string(StrKind::Model, OPENING.len() as u64 - 1, OPENING.len());
            i = OPENING.len();
        }
        let fast = self.p.config.policy() == crate::Policy::Fast;
        while i < buf.len() {
            if fast && self.p.decided {
                break;
            }
            if i >= blocks_from
                && self.depth >= 2
                && buf.len() - i >= 64
                && matches!(
                    self.state,
                    State::Value
                        | State::ArrayFirst
                        | State::ObjectFirst
                        | State::Key
                        | State::Colon
                        | State::AfterValue
                )
            {
                let (next, exit) = self.blocks(buf, i);
                blocks_from = match exit {
                    blocks::Exit::Room => usize::MAX,
                    blocks::Exit::Anomaly => next + 64,
                    // Inside a string: the block path may come back after it.
                    blocks::Exit::LongString => next,
                };
                i = next;
                continue;
            }
            match self.state {
                State::Str(Str::Plain) => {
                    if !self.spilled {
                        i += scan::find_string_special(&buf[i..]);
                        if i == buf.len() {
                            break;
                        }
                    }
                    let b = buf[i];
                    match b {
                        b'"' => {
                            self.end_string(chunk, base, i)?;
                            i += 1;
                        }
                        b'\\' => {
                            self.spill(&buf[..i]);
                            self.state = State::Str(Str::Escape);
                            i += 1;
                        }
                        0x00..=0x1f => {
                            return Err(self.syntax(base + i as u64, "control character in string"));
                        }
                        0x80..=0xff => i = self.utf8_run(buf, base, i)?,
                        _ => {
                            self.push(b);
                            i += 1;
                        }
                    }
                }
                State::Str(s) => {
                    self.string_slow(s, buf[i], base + i as u64)?;
                    i += 1;
                }
                State::Value | State::ArrayFirst | State::Start => {
                    let b = buf[i];
                    if is_ws(b) {
                        i += 1;
                        continue;
                    }
                    self.begin_value(b, base + i as u64, i)?;
                    i += 1;
                }
                State::ObjectFirst | State::Key => {
                    let b = buf[i];
                    i += 1;
                    match b {
                        b' ' | b'\n' | b'\r' | b'\t' => {}
                        b'"' => self.begin_key(base + i as u64 - 1, i),
                        b'}' if matches!(self.state, State::ObjectFirst) => {
                            self.close(base + i as u64)?;
                        }
                        _ => return Err(self.syntax(base + i as u64 - 1, "expected a key string")),
                    }
                }
                State::Colon => {
                    let b = buf[i];
                    i += 1;
                    match b {
                        b' ' | b'\n' | b'\r' | b'\t' => {}
                        b':' => {
                            self.state = State::Value;
                            // The usual `"key":value`: start the value now.
                            if let Some(&b) = buf.get(i)
                                && !is_ws(b)
                            {
                                self.begin_value(b, base + i as u64, i)?;
                                i += 1;
                            }
                        }
                        _ => return Err(self.syntax(base + i as u64 - 1, "expected `:`")),
                    }
                }
                State::AfterValue => {
                    let b = buf[i];
                    i += 1;
                    let in_array = self.in_array();
                    match b {
                        b' ' | b'\n' | b'\r' | b'\t' => {}
                        b',' if in_array => self.state = State::Value,
                        b',' => {
                            self.state = State::Key;
                            // The usual `,"key"`: start the key now.
                            if buf.get(i) == Some(&b'"') {
                                i += 1;
                                self.begin_key(base + i as u64 - 1, i);
                            }
                        }
                        b']' if in_array => self.close(base + i as u64)?,
                        b'}' if !in_array => self.close(base + i as u64)?,
                        _ => {
                            return Err(self.syntax(
                                base + i as u64 - 1,
                                if in_array {
                                    "expected `,` or `]`"
                                } else {
                                    "expected `,` or `}`"
                                },
                            ));
                        }
                    }
                }
                State::Num(n) => {
                    // A run of digits at once, unless the number is a
                    // requested field's (copied a digit at a time).
                    if matches!(n, Num::Int | Num::Frac | Num::ExpDigits) && self.role == Role::None
                    {
                        let run = buf[i..].iter().take_while(|b| b.is_ascii_digit()).count();
                        if run > 0 {
                            i += run;
                            continue;
                        }
                    }
                    let b = buf[i];
                    if self.number(n, b, base + i as u64)? {
                        i += 1;
                    }
                }
                State::Lit { which, pos } => {
                    let lit: &[u8] = match which {
                        0 => b"true",
                        1 => b"false",
                        _ => b"null",
                    };
                    if buf[i] != lit[pos as usize] {
                        return Err(self.syntax(base + i as u64, "invalid literal"));
                    }
                    i += 1;
                    if pos as usize + 1 == lit.len() {
                        if let Role::Field(n) = self.role {
                            let value = match which {
                                0 => FieldValue::Bool(true),
                                1 => FieldValue::Bool(false),
                                _ => FieldValue::Null,
                            };
                            self.p.set_field(n, value, base + i as u64);
                        }
                        self.role = Role::None;
                        self.after_value(base + i as u64);
                    } else {
                        self.state = State::Lit {
                            which,
                            pos: pos + 1,
                        };
                    }
                }
                State::Done => {
                    let b = buf[i];
                    if !is_ws(b) {
                        return Err(self
                            .syntax(base + i as u64, "trailing characters after the JSON object"));
                    }
                    i += 1;
                }
            }
        }
        // A captured string that goes on in the next chunk is copied now:
        // the chunk is not kept.
        if matches!(self.state, State::Str(_)) {
            self.spill(buf);
        }
        self.p.scanned = base + i as u64;
        Ok(())
    }

    /// Starts copying the captured string, if it is one and not copied yet:
    /// `upto` ends where the string has been read to in the current chunk.
    fn spill(&mut self, upto: &[u8]) {
        if self.capturing && !self.spilled {
            self.spilled = true;
            let from = self.cap_from.min(upto.len());
            self.push_slice(&upto[from..]);
        }
    }

    /// Starts the value whose first byte is `b` (not whitespace), at `at`
    /// (`i` in the current chunk).
    #[inline(always)]
    fn begin_value(&mut self, b: u8, at: u64, i: usize) -> Result<(), Error> {
        let state = self.state;
        let role = std::mem::replace(&mut self.role, Role::None);
        if state == State::Start {
            return match b {
                b'{' => self.open(false, at),
                b'[' | b'"' | b'-' | b'0'..=b'9' | b't' | b'f' | b'n' => {
                    Err(self.syntax(at, "the body is not a JSON object"))
                }
                _ => Err(self.syntax(at, "expected a JSON object")),
            };
        }
        if role == Role::Model && b != b'"' {
            if self.p.config.numeric_model() && matches!(b, b'-' | b'0'..=b'9') {
                self.token_start = at;
                return self.begin_number(Role::ModelNumber, b);
            }
            return match b {
                b'{' | b'[' | b'-' | b'0'..=b'9' | b't' | b'f' | b'n' => {
                    Err(self.error(ErrorKind::ModelNotString, at, "`model` must be a string"))
                }
                _ => Err(self.syntax(at, "expected a value")),
            };
        }
        match b {
            b'"' => {
                let kind = match role {
                    Role::Model => StrKind::Model,
                    Role::Field(n) => StrKind::Field(n),
                    Role::None | Role::ModelNumber => StrKind::Value,
                };
                self.begin_string(kind, at, i + 1);
                Ok(())
            }
            b'{' | b'[' => {
                if let Role::Field(n) = role {
                    let value = if b == b'{' {
                        FieldValue::Object
                    } else {
                        FieldValue::Array
                    };
                    self.p.set_field(n, value, at + 1);
                }
                self.open(b == b'[', at)
            }
            b']' if state == State::ArrayFirst => self.close(at + 1),
            b'-' | b'0'..=b'9' => self.begin_number(role, b),
            b't' | b'f' | b'n' => {
                self.role = role;
                self.state = State::Lit {
                    which: match b {
                        b't' => 0,
                        b'f' => 1,
                        _ => 2,
                    },
                    pos: 1,
                };
                Ok(())
            }
            _ => Err(self.syntax(at, "expected a value")),
        }
    }

    /// Starts a key at offset `at` (its opening quote), its content at
    /// `content` in the current chunk.
    #[inline]
    fn begin_key(&mut self, at: u64, content: usize) {
        let kind = if self.depth == 1 {
            StrKind::TopKey
        } else {
            StrKind::Key
        };
        self.begin_string(kind, at, content);
    }

    /// Starts a string token at offset `at`, its content at `content` in
    /// the current chunk.
    fn begin_string(&mut self, kind: StrKind, at: u64, content: usize) {
        self.kind = kind;
        self.capturing = !matches!(kind, StrKind::Key | StrKind::Value);
        self.cap_from = content;
        self.spilled = false;
        self.buf.clear();
        self.overflow = false;
        self.token_start = at;
        self.state = State::Str(Str::Plain);
    }

    /// Opens an object or array at `at`.
    fn open(&mut self, array: bool, at: u64) -> Result<(), Error> {
        if self.depth as usize >= self.p.config.max_depth() {
            return Err(self.syntax(at, "nesting is too deep"));
        }
        self.arrays = (self.arrays << 1) | array as u128;
        self.depth += 1;
        self.state = if array {
            State::ArrayFirst
        } else {
            State::ObjectFirst
        };
        Ok(())
    }

    /// Closes the current container; `after` is the offset just past the bracket.
    fn close(&mut self, after: u64) -> Result<(), Error> {
        self.depth -= 1;
        self.arrays >>= 1;
        if self.depth == 0 {
            self.state = State::Done;
            self.p.decide(after);
        } else {
            self.state = State::AfterValue;
        }
        Ok(())
    }

    #[inline]
    fn in_array(&self) -> bool {
        self.depth > 0 && self.arrays & 1 != 0
    }

    fn after_value(&mut self, after: u64) {
        self.state = State::AfterValue;
        self.p.maybe_decide(after);
    }

    /// The most bytes captured for the current string.
    #[inline]
    fn capture_limit(&self) -> usize {
        match self.kind {
            StrKind::TopKey => MAX_FIELD_NAME_LEN,
            _ => self.p.config.max_model_len(),
        }
    }

    #[inline]
    fn push(&mut self, b: u8) {
        if self.capturing && self.spilled {
            if self.buf.len() < self.capture_limit() {
                self.buf.push(b);
            } else {
                self.overflow = true;
            }
        }
    }

    fn push_slice(&mut self, s: &[u8]) {
        if self.capturing && self.spilled {
            let room = self.capture_limit().saturating_sub(self.buf.len());
            if s.len() > room {
                self.overflow = true;
            }
            self.buf.extend_from_slice(&s[..s.len().min(room)]);
        }
    }

    fn push_char(&mut self, c: char) {
        let mut tmp = [0u8; 4];
        self.push_slice(c.encode_utf8(&mut tmp).as_bytes());
    }

    /// Validates the run of non-ASCII text starting at `buf[i]` (≥ 0x80) up
    /// to the next `"`, `\` or control byte; returns where it ends.
    #[cold]
    fn utf8_run(&mut self, buf: &[u8], base: u64, i: usize) -> Result<usize, Error> {
        let run_len = scan::find_string_end(&buf[i..]);
        let run = &buf[i..i + run_len];
        match std::str::from_utf8(run) {
            Ok(_) => {
                self.push_slice(run);
                Ok(i + run_len)
            }
            Err(e) => {
                let valid = e.valid_up_to();
                self.push_slice(&run[..valid]);
                let at = i + valid;
                if e.error_len().is_some() || i + run_len < buf.len() {
                    return Err(self.syntax(base + at as u64, "invalid UTF-8 in string"));
                }
                // The chunk ends inside a sequence: carry it byte by byte.
                for (k, &b) in run[valid..].iter().enumerate() {
                    let state = match self.state {
                        State::Str(s) => s,
                        _ => Str::Plain,
                    };
                    self.string_slow(state, b, base + (at + k) as u64)?;
                }
                Ok(buf.len())
            }
        }
    }

    /// One byte of a string outside the plain fast path.
    #[cold]
    fn string_slow(&mut self, s: Str, b: u8, at: u64) -> Result<(), Error> {
        match s {
            Str::Plain => match b {
                0x80..=0xff => {
                    let (need, lo, hi) =
                        utf8_lead(b).ok_or_else(|| self.syntax(at, "invalid UTF-8 in string"))?;
                    self.utf8_start = at;
                    self.push(b);
                    self.state = State::Str(Str::Utf8 { need, lo, hi });
                }
                // Plain ASCII (`scan` takes these itself, but the meaning is the same).
                _ => self.push(b),
            },
            Str::Utf8 { need, lo, hi } => {
                if b < lo || b > hi {
                    return Err(self.syntax(self.utf8_start, "invalid UTF-8 in string"));
                }
                self.push(b);
                self.state = State::Str(if need == 1 {
                    Str::Plain
                } else {
                    Str::Utf8 {
                        need: need - 1,
                        lo: 0x80,
                        hi: 0xbf,
                    }
                });
            }
            Str::Escape => {
                let c = match b {
                    b'"' => b'"',
                    b'\\' => b'\\',
                    b'/' => b'/',
                    b'b' => 0x08,
                    b'f' => 0x0c,
                    b'n' => b'\n',
                    b'r' => b'\r',
                    b't' => b'\t',
                    b'u' => {
                        self.state = State::Str(Str::Hex { n: 0, value: 0 });
                        return Ok(());
                    }
                    _ => return Err(self.syntax(at, "invalid escape")),
                };
                self.push(c);
                self.state = State::Str(Str::Plain);
            }
            Str::Hex { n, value } => {
                let value =
                    (value << 4) | hex(b).ok_or_else(|| self.syntax(at, "invalid \\u escape"))?;
                if n < 3 {
                    self.state = State::Str(Str::Hex { n: n + 1, value });
                } else if (0xd800..0xdc00).contains(&value) {
                    self.state = State::Str(Str::LowBackslash { high: value });
                } else if (0xdc00..0xe000).contains(&value) {
                    return Err(self.syntax(at, "lone trailing surrogate in \\u escape"));
                } else {
                    // Outside the surrogate range every value is a char.
                    self.push_char(char::from_u32(value as u32).unwrap_or('\u{fffd}'));
                    self.state = State::Str(Str::Plain);
                }
            }
            Str::LowBackslash { high } => {
                if b != b'\\' {
                    return Err(self.syntax(at, "lone leading surrogate in \\u escape"));
                }
                self.state = State::Str(Str::LowU { high });
            }
            Str::LowU { high } => {
                if b != b'u' {
                    return Err(self.syntax(at, "lone leading surrogate in \\u escape"));
                }
                self.state = State::Str(Str::LowHex {
                    high,
                    n: 0,
                    value: 0,
                });
            }
            Str::LowHex { high, n, value } => {
                let value =
                    (value << 4) | hex(b).ok_or_else(|| self.syntax(at, "invalid \\u escape"))?;
                if n < 3 {
                    self.state = State::Str(Str::LowHex {
                        high,
                        n: n + 1,
                        value,
                    });
                } else if (0xdc00..0xe000).contains(&value) {
                    let c = 0x10000 + (((high as u32) - 0xd800) << 10) + ((value as u32) - 0xdc00);
                    self.push_char(char::from_u32(c).unwrap_or('\u{fffd}'));
                    self.state = State::Str(Str::Plain);
                } else {
                    return Err(self.syntax(at, "lone leading surrogate in \\u escape"));
                }
            }
        }
        Ok(())
    }

    /// The closing quote of a string at `chunk[i]`.
    fn end_string(&mut self, chunk: Chunk<'_>, base: u64, i: usize) -> Result<(), Error> {
        let end = base + i as u64 + 1;
        if !self.capturing {
            if self.kind == StrKind::Key {
                self.state = State::Colon;
            } else {
                self.after_value(end);
            }
            return Ok(());
        }
        // The content: a slice of this chunk unless it was copied.
        let (content, overflow): (&[u8], bool) = if self.spilled {
            (&self.buf, self.overflow)
        } else {
            let content = &chunk.bytes()[self.cap_from.min(i)..i];
            (content, content.len() > self.capture_limit())
        };
        match self.kind {
            StrKind::TopKey => {
                self.state = State::Colon;
                if overflow {
                    return Ok(());
                }
                if content == b"model" {
                    if self.p.model_seen {
                        return Err(self.error(
                            ErrorKind::DuplicateModel,
                            self.token_start,
                            "`model` appears more than once",
                        ));
                    }
                    self.role = Role::Model;
                } else if let Some(n) = self.p.field_index(content) {
                    self.role = Role::Field(n);
                }
                Ok(())
            }
            StrKind::Field(n) => {
                let value = if overflow {
                    FieldValue::LongString
                } else {
                    FieldValue::String(String::from_utf8_lossy(content).into_owned())
                };
                self.p.set_field(n, value, end);
                self.after_value(end);
                Ok(())
            }
            StrKind::Model => {
                let start = self.token_start;
                // Unescaped content cannot hold a byte below 0x20: that is
                // invalid JSON, refused before the closing quote.
                let max_len = self.p.config.max_model_len();
                progress::check_model(content, overflow, !self.spilled, start, max_len)?;
                // Borrowed when the whole value lies in this chunk, unescaped
                // (and the chunk is the caller's to share).
                let model = if self.spilled {
                    Model::new(Bytes::copy_from_slice(content), start..end, false)
                } else {
                    let (text, borrowed) = chunk.keep(self.cap_from..i);
                    Model::new(text, start..end, borrowed)
                };
                self.p.set_model(model, end);
                self.after_value(end);
                Ok(())
            }
            StrKind::Key | StrKind::Value => Ok(()),
        }
    }

    /// Starts a number whose first byte is `b`, captured when it is a
    /// requested field or a numeric model.
    fn begin_number(&mut self, role: Role, b: u8) -> Result<(), Error> {
        self.role = role;
        if matches!(role, Role::Field(_) | Role::ModelNumber) {
            self.buf.clear();
            self.buf.push(b);
            self.overflow = false;
        }
        self.state = State::Num(match b {
            b'-' => Num::Minus,
            b'0' => Num::Zero,
            _ => Num::Int,
        });
        Ok(())
    }

    /// One byte in a number; returns whether the byte was consumed (a byte
    /// that ends the number is left for the next state).
    fn number(&mut self, n: Num, b: u8, at: u64) -> Result<bool, Error> {
        let next = match (n, b) {
            (Num::Minus, b'0') => Num::Zero,
            (Num::Minus, b'1'..=b'9') => Num::Int,
            (Num::Int, b'0'..=b'9') => Num::Int,
            (Num::Zero | Num::Int, b'.') => Num::Dot,
            (Num::Zero | Num::Int | Num::Frac, b'e' | b'E') => Num::Exp,
            (Num::Dot | Num::Frac, b'0'..=b'9') => Num::Frac,
            (Num::Exp, b'+' | b'-') => Num::ExpSign,
            (Num::Exp | Num::ExpSign | Num::ExpDigits, b'0'..=b'9') => Num::ExpDigits,
            (Num::Zero | Num::Int | Num::Frac | Num::ExpDigits, _) => {
                // The number is complete; `b` belongs to what follows.
                if let Role::Field(f) = self.role {
                    let value = if self.overflow {
                        FieldValue::LongNumber
                    } else {
                        FieldValue::Number(String::from_utf8_lossy(&self.buf).into_owned())
                    };
                    self.p.set_field(f, value, at);
                } else if self.role == Role::ModelNumber {
                    let start = self.token_start;
                    let max_len = self.p.config.max_model_len();
                    progress::check_model(&self.buf, self.overflow, true, start, max_len)?;
                    let model = Model::new(Bytes::copy_from_slice(&self.buf), start..at, false);
                    self.p.set_model(model, at);
                }
                self.role = Role::None;
                self.after_value(at);
                return Ok(false);
            }
            _ => return Err(self.syntax(at, "invalid number")),
        };
        if matches!(self.role, Role::Field(_) | Role::ModelNumber) {
            if self.buf.len() < self.p.config.max_model_len() {
                self.buf.push(b);
            } else {
                self.overflow = true;
            }
        }
        self.state = State::Num(next);
        Ok(true)
    }
}

#[inline(always)]
fn is_ws(b: u8) -> bool {
    matches!(b, b' ' | b'\n' | b'\r' | b'\t')
}

fn hex(b: u8) -> Option<u16> {
    match b {
        b'0'..=b'9' => Some((b - b'0') as u16),
        b'a'..=b'f' => Some((b - b'a' + 10) as u16),
        b'A'..=b'F' => Some((b - b'A' + 10) as u16),
        _ => None,
    }
}

/// For a UTF-8 lead byte: how many continuation bytes follow and the range
/// of the first one (which rules out overlong forms and surrogates).
fn utf8_lead(b: u8) -> Option<(u8, u8, u8)> {
    match b {
        0xc2..=0xdf => Some((1, 0x80, 0xbf)),
        0xe0 => Some((2, 0xa0, 0xbf)),
        0xe1..=0xec | 0xee..=0xef => Some((2, 0x80, 0xbf)),
        0xed => Some((2, 0x80, 0x9f)),
        0xf0 => Some((3, 0x90, 0xbf)),
        0xf1..=0xf3 => Some((3, 0x80, 0xbf)),
        0xf4 => Some((3, 0x80, 0x8f)),
        _ => None,
    }
}

impl Scan for ModelExtractor {
    const TRUNCATED: ErrorKind = ErrorKind::InvalidJson;

    fn progress(&self) -> &Progress {
        &self.p
    }

    fn progress_mut(&mut self) -> &mut Progress {
        &mut self.p
    }

    fn scan(&mut self, chunk: Chunk<'_>, from: usize, to: usize) -> Result<(), Error> {
        self.scan_json(chunk, from, to)
    }

    fn complete(&self) -> bool {
        matches!(self.state, State::Done)
    }
}

mod blocks;
#[cfg(test)]
mod tests;
