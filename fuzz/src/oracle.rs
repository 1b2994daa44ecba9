//! Differential checks of the extractor against `serde_json`, and of the
//! extractor against itself under other chunk splits and policies.
//!
//! Shared by the fuzz targets and by the stable tests of `bbr-core` (which
//! include this file as a module), so a corpus file is replayed through
//! exactly the checks that found it.
//!
//! Every check panics with a description of the disagreement.

use std::{fmt, ops::Range};

use bbr_core::{
    ErrorKind, Extraction, ExtractorConfig, FieldValue, ModelExtractor, MultipartExtractor, Policy,
    Status,
};
use bytes::Bytes;
use serde::de::{Deserialize, Deserializer, IgnoredAny, MapAccess, Visitor};
use serde_json::Value;

/// The extra top-level field the differential checks ask for.
pub const EXTRA_FIELD: &str = "stream";

/// How an extraction ended, comparable across runs.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Outcome {
    /// A model, with the span of its value token.
    Found {
        /// The model (unescaped).
        model: String,
        /// The value token's byte range, quotes included.
        span: Range<u64>,
    },
    /// No top-level `model`.
    NotFound,
    /// An error of `kind` at byte `offset`.
    Error {
        /// The error kind.
        kind: ErrorKind,
        /// The error offset.
        offset: u64,
    },
}

/// One extraction of one body under one chunk split.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Run {
    /// How it ended.
    pub outcome: Outcome,
    /// The extra fields reported (empty on error).
    pub fields: Vec<(String, FieldValue)>,
    /// Whether the model was a slice of a chunk.
    pub borrowed: bool,
    /// Where the decision was made ([`Extraction::decided_at`]; none on error).
    pub decided_at: Option<u64>,
}

/// What `serde_json` (plus the rules of the design's table) says the
/// extractor must answer for a body under the strict policy.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Expected {
    /// `Found` with this model.
    Found(String),
    /// `NotFound`.
    NotFound,
    /// An error of exactly this kind.
    Error(ErrorKind),
    /// Some error, of any kind: the body is not JSON, but the first
    /// offending byte may be a model error before the syntax error.
    AnyError,
    /// Unknown: `serde_json` refuses a number out of range, which bbr
    /// checks for grammar only.
    Unknown,
}

/// Splits `body` at `cuts` (positions, clamped and sorted; duplicates give
/// empty chunks) into refcounted slices of one buffer.
pub fn chunks(body: &[u8], cuts: &[usize]) -> Vec<Bytes> {
    let whole = Bytes::copy_from_slice(body);
    let mut cuts: Vec<usize> = cuts.iter().map(|&c| c.min(body.len())).collect();
    cuts.sort_unstable();
    let mut out = Vec::with_capacity(cuts.len() + 1);
    let mut start = 0;
    for cut in cuts {
        out.push(whole.slice(start..cut));
        start = cut;
    }
    out.push(whole.slice(start..));
    out
}

/// The strict configuration the differential checks use, varied by `flags`:
/// bit 0 asks for [`EXTRA_FIELD`], bit 1 lowers the model length limit to 8.
pub fn config(flags: u8) -> ExtractorConfig {
    let mut config = ExtractorConfig::new();
    if flags & 1 != 0 {
        config = config.with_field(EXTRA_FIELD);
    }
    if flags & 2 != 0 {
        config = config.with_max_model_len(8);
    }
    config
}

/// Feeds `body` split at `cuts` through a JSON extractor the way an adapter
/// does (stopping once no more scanning is needed), checking the API's own
/// invariants on the way.
pub fn run_json(body: &[u8], cuts: &[usize], config: &ExtractorConfig) -> Run {
    let chunks = chunks(body, cuts);
    let mut extractor = ModelExtractor::new(config.clone());
    let mut fed = 0u64;
    let mut decided = false;
    let mut failed = None;
    for chunk in &chunks {
        if decided && !extractor.needs_scanning() {
            break;
        }
        match extractor.feed(chunk) {
            Ok(status) => {
                fed += chunk.len() as u64;
                if decided {
                    assert_eq!(status, Status::Found, "a decision was taken back");
                }
                decided = status == Status::Found;
                assert_eq!(
                    extractor.extraction().is_some(),
                    decided,
                    "extraction() disagrees with the status {status:?}"
                );
                if config.policy() == Policy::Strict {
                    assert_eq!(extractor.bytes_scanned(), fed, "bytes_scanned");
                }
            }
            Err(error) => {
                // After an error, every call returns that error.
                let again = extractor.feed(&Bytes::from_static(b"}"));
                assert_eq!(again.as_ref().err(), Some(&error), "feed after an error");
                failed = Some(error);
                break;
            }
        }
    }
    if let Some(error) = failed {
        let finished = extractor.finish().map(|_| ()).err();
        assert_eq!(finished.as_ref(), Some(&error), "finish after an error");
        return Run {
            outcome: Outcome::Error {
                kind: error.kind(),
                offset: error.offset(),
            },
            fields: Vec::new(),
            borrowed: false,
            decided_at: None,
        };
    }
    let first = extractor.finish().map(run_of);
    let second = extractor.finish().map(run_of);
    assert_eq!(first, second, "finish is not idempotent");
    let run = match first {
        Ok(run) => run,
        Err(error) => Run {
            outcome: Outcome::Error {
                kind: error.kind(),
                offset: error.offset(),
            },
            fields: Vec::new(),
            borrowed: false,
            decided_at: None,
        },
    };
    if let Outcome::Found { model, span } = &run.outcome {
        check_model_token(body, &chunks, model, span, run.borrowed, config);
        let decided_at = run.decided_at.unwrap_or_default();
        assert!(
            span.end <= decided_at && decided_at <= body.len() as u64,
            "decided at {decided_at}, before the model's end ({span:?}) or past the body"
        );
    }
    if let Outcome::Error { offset, .. } = &run.outcome {
        assert!(
            *offset <= body.len() as u64,
            "error offset {offset} past the body ({} bytes)",
            body.len()
        );
    }
    run
}

fn run_of(extraction: &Extraction) -> Run {
    let (outcome, borrowed) = match extraction.model() {
        Some(model) => (
            Outcome::Found {
                model: model.as_str().to_owned(),
                span: model.span(),
            },
            model.is_borrowed(),
        ),
        None => (Outcome::NotFound, false),
    };
    Run {
        outcome,
        fields: extraction
            .fields()
            .iter()
            .map(|(name, value)| (name.to_string(), value.clone()))
            .collect(),
        borrowed,
        decided_at: Some(extraction.decided_at()),
    }
}

/// The span must hold a JSON string token that unescapes to the model, and
/// a model lying within one chunk without escapes must be borrowed.
fn check_model_token(
    body: &[u8],
    chunks: &[Bytes],
    model: &str,
    span: &Range<u64>,
    borrowed: bool,
    config: &ExtractorConfig,
) {
    let (start, end) = (span.start as usize, span.end as usize);
    assert!(
        start < end && end <= body.len(),
        "span {span:?} outside the body"
    );
    let token = &body[start..end];
    let unescaped: String = serde_json::from_slice(token)
        .unwrap_or_else(|e| panic!("span {span:?} is not a string token ({e}): {token:?}"));
    assert_eq!(unescaped, model, "the span does not hold the model");
    assert!(
        model_is_valid(model, config),
        "found an invalid model {model:?}"
    );
    let raw = &token[1..token.len() - 1];
    let mut chunk_start = 0;
    let within_one_chunk = chunks.iter().any(|c| {
        let range = chunk_start..chunk_start + c.len();
        chunk_start = range.end;
        range.start <= start && end <= range.end
    });
    if within_one_chunk && !raw.contains(&b'\\') {
        assert!(
            borrowed,
            "model {model:?} in one chunk without escapes was copied"
        );
    }
}

/// A model bbr accepts: not empty, within the length limit, and without a
/// control character — C0, DEL or C1 (U+0080–U+009F), exactly
/// `char::is_control`.
fn model_is_valid(model: &str, config: &ExtractorConfig) -> bool {
    !model.is_empty()
        && model.len() <= config.max_model_len()
        && !model.chars().any(char::is_control)
}

/// The top-level `model` values, in order, and the values of
/// [`EXTRA_FIELD`], of a body `serde_json` already accepted as an object.
#[derive(Default)]
struct TopLevel {
    models: Vec<Value>,
    extra: Vec<Value>,
}

impl<'de> Deserialize<'de> for TopLevel {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct Members;
        impl<'de> Visitor<'de> for Members {
            type Value = TopLevel;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("an object")
            }
            fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<TopLevel, A::Error> {
                let mut top = TopLevel::default();
                while let Some(key) = map.next_key::<String>()? {
                    if key == "model" {
                        top.models.push(map.next_value()?);
                    } else if key == EXTRA_FIELD {
                        top.extra.push(map.next_value()?);
                    } else {
                        map.next_value::<IgnoredAny>()?;
                    }
                }
                Ok(top)
            }
        }
        deserializer.deserialize_map(Members)
    }
}

/// What the strict extractor must answer for `body`, per `serde_json`.
pub fn expected(body: &[u8], config: &ExtractorConfig) -> Expected {
    let value = match serde_json::from_slice::<Value>(body) {
        Ok(value) => value,
        Err(e) if e.to_string().contains("number out of range") => return Expected::Unknown,
        Err(_) => return Expected::AnyError,
    };
    if !value.is_object() {
        return Expected::Error(ErrorKind::InvalidJson);
    }
    let top: TopLevel = serde_json::from_slice(body).expect("an object serde_json accepted");
    let Some(first) = top.models.first() else {
        return Expected::NotFound;
    };
    // The first offending byte decides the kind: the first model's value
    // comes before a duplicate key.
    match first {
        Value::String(model) if !model_is_valid(model, config) => {
            Expected::Error(ErrorKind::InvalidModel)
        }
        Value::String(_) if top.models.len() > 1 => Expected::Error(ErrorKind::DuplicateModel),
        Value::String(model) => Expected::Found(model.clone()),
        _ => Expected::Error(ErrorKind::ModelNotString),
    }
}

/// Checks a strict run against [`expected`], including the extra field.
pub fn check_against_oracle(body: &[u8], config: &ExtractorConfig, run: &Run) {
    let expected = expected(body, config);
    let ok = match (&expected, &run.outcome) {
        (Expected::Found(want), Outcome::Found { model, .. }) => want == model,
        (Expected::NotFound, Outcome::NotFound) => true,
        (Expected::Error(want), Outcome::Error { kind, .. }) => want == kind,
        (Expected::AnyError, Outcome::Error { .. }) => true,
        (Expected::Unknown, _) => true,
        _ => false,
    };
    assert!(
        ok,
        "serde_json says {expected:?}, bbr says {:?}\nbody: {:?}",
        run.outcome,
        String::from_utf8_lossy(body)
    );
    if matches!(run.outcome, Outcome::Error { .. }) || expected == Expected::Unknown {
        return;
    }
    if config.fields().iter().any(|f| &**f == EXTRA_FIELD) {
        let top: TopLevel = serde_json::from_slice(body).expect("accepted above");
        let got = run
            .fields
            .iter()
            .find(|(name, _)| name == EXTRA_FIELD)
            .map(|(_, v)| v);
        match (top.extra.as_slice(), got) {
            ([], None) => {}
            ([], Some(got)) => panic!("field {EXTRA_FIELD} reported as {got:?} but absent"),
            ([value], got) => check_field(value, got, config),
            // Which of duplicated extra fields wins is not specified.
            _ => {}
        }
    }
}

fn check_field(value: &Value, got: Option<&FieldValue>, config: &ExtractorConfig) {
    let Some(got) = got else {
        panic!("field {EXTRA_FIELD} = {value} not reported");
    };
    let ok = match (value, got) {
        (Value::Null, FieldValue::Null) => true,
        (Value::Bool(a), FieldValue::Bool(b)) => a == b,
        (Value::Number(n), FieldValue::Number(text)) => {
            serde_json::from_str::<Value>(text).ok().as_ref() == Some(&Value::Number(n.clone()))
        }
        (Value::String(s), FieldValue::String(t)) => s == t,
        (Value::String(s), FieldValue::LongString) => s.len() > config.max_model_len(),
        (Value::Number(_), FieldValue::LongNumber) => {
            // The number as written was longer than the limit.
            true
        }
        (Value::Array(_), FieldValue::Array) | (Value::Object(_), FieldValue::Object) => true,
        _ => false,
    };
    assert!(ok, "field {EXTRA_FIELD} = {value} reported as {got:?}");
}

/// The strict checks of one body under one split: the API invariants, the
/// `serde_json` oracle, and agreement with the one-shot extraction.
pub fn check_strict(body: &[u8], cuts: &[usize], config: &ExtractorConfig) {
    assert_eq!(config.policy(), Policy::Strict);
    let whole = run_json(body, &[], config);
    check_against_oracle(body, config, &whole);
    let split = run_json(body, cuts, config);
    assert_same(&whole, &split, body, cuts);
}

fn assert_same(whole: &Run, split: &Run, body: &[u8], cuts: &[usize]) {
    assert!(
        whole.outcome == split.outcome
            && whole.fields == split.fields
            && whole.decided_at == split.decided_at,
        "one chunk gives {whole:?}, split at {cuts:?} gives {split:?}\nbody: {:?}",
        String::from_utf8_lossy(body)
    );
}

/// The fast policy answers as strict does, except that it decides (at a
/// valid first model, or at the end of the top-level object) before a later
/// error, which it does not see; and it is split-independent too.
pub fn check_fast_vs_strict(body: &[u8], cuts: &[usize]) {
    let strict = run_json(body, cuts, &ExtractorConfig::new());
    let fast_config = ExtractorConfig::new().with_policy(Policy::Fast);
    let fast = run_json(body, cuts, &fast_config);
    let fast_whole = run_json(body, &[], &fast_config);
    assert_same(&fast_whole, &fast, body, cuts);
    let ok = match (&strict.outcome, &fast.outcome) {
        (a, b) if a == b => fast.decided_at <= strict.decided_at,
        (Outcome::Error { offset, .. }, Outcome::Found { .. } | Outcome::NotFound) => {
            fast.decided_at.is_some_and(|at| at <= *offset)
        }
        _ => false,
    };
    assert!(
        ok,
        "strict says {:?}, fast says {:?}\nbody: {:?}",
        strict.outcome,
        fast.outcome,
        String::from_utf8_lossy(body)
    );
}

/// A fuzz input: the first byte holds flags (configuration bits, and how
/// many cut positions follow as little-endian `u16`s); the rest is the body.
#[derive(Debug)]
pub struct Input<'a> {
    /// Configuration bits (see [`config`]).
    pub flags: u8,
    /// Cut positions into the body.
    pub cuts: Vec<usize>,
    /// The body.
    pub body: &'a [u8],
}

impl<'a> Input<'a> {
    /// Decodes a fuzz input; every byte string is a valid input.
    pub fn parse(data: &'a [u8]) -> Input<'a> {
        let Some((&flags, rest)) = data.split_first() else {
            return Input {
                flags: 0,
                cuts: Vec::new(),
                body: data,
            };
        };
        let count = usize::from(flags >> 4).min(rest.len() / 2);
        let (head, body) = rest.split_at(count * 2);
        let cuts = head
            .chunks_exact(2)
            .map(|pair| usize::from(u16::from_le_bytes([pair[0], pair[1]])) % (body.len() + 1))
            .collect();
        Input {
            flags: flags & 0x0f,
            cuts,
            body,
        }
    }
}

/// The `extract_differential` check of a fuzz input.
pub fn differential(data: &[u8]) {
    let input = Input::parse(data);
    check_strict(input.body, &input.cuts, &config(input.flags));
}

/// The `extract_fast_vs_strict` check of a fuzz input.
pub fn fast_vs_strict(data: &[u8]) {
    let input = Input::parse(data);
    check_fast_vs_strict(input.body, &input.cuts);
}

/// The boundary of the multipart bodies built by [`multipart`].
pub const BOUNDARY: &str = "bbr-fuzz-7MA4YWxkTrZu0gW";

/// Feeds a multipart body split at `cuts`; returns the outcome.
pub fn run_multipart(body: &[u8], cuts: &[usize], config: &ExtractorConfig) -> Outcome {
    let mut extractor = match MultipartExtractor::new(BOUNDARY, config.clone()) {
        Ok(extractor) => extractor,
        Err(error) => {
            return Outcome::Error {
                kind: error.kind(),
                offset: error.offset(),
            };
        }
    };
    let mut decided = false;
    for chunk in chunks(body, cuts) {
        if decided && !extractor.needs_scanning() {
            break;
        }
        match extractor.feed(&chunk) {
            Ok(status) => {
                decided = status == Status::Found;
                assert_eq!(extractor.extraction().is_some(), decided);
            }
            Err(error) => {
                let finished = extractor.finish().map(|_| ()).err();
                assert_eq!(finished.as_ref(), Some(&error), "finish after an error");
                return Outcome::Error {
                    kind: error.kind(),
                    offset: error.offset(),
                };
            }
        }
    }
    match extractor.finish() {
        Ok(extraction) => match extraction.model() {
            Some(model) => {
                let span = model.span();
                assert_eq!(
                    body.get(span.start as usize..span.end as usize),
                    Some(model.as_str().as_bytes()),
                    "the span does not hold the model"
                );
                Outcome::Found {
                    model: model.as_str().to_owned(),
                    span,
                }
            }
            None => Outcome::NotFound,
        },
        Err(error) => Outcome::Error {
            kind: error.kind(),
            offset: error.offset(),
        },
    }
}

/// Builds a well-formed `multipart/form-data` body: a file part of `file`
/// bytes and a `model` part, in either order, with an optional text part
/// and an optional second `model` part at the end.
pub fn multipart_body(
    model: &str,
    file: &[u8],
    model_first: bool,
    prompt: bool,
    duplicate: bool,
) -> Vec<u8> {
    let mut body = Vec::new();
    let mut part = |headers: &str, content: &[u8]| {
        body.extend_from_slice(format!("--{BOUNDARY}\r\n{headers}\r\n\r\n").as_bytes());
        body.extend_from_slice(content);
        body.extend_from_slice(b"\r\n");
    };
    let file_headers = "Content-Disposition: form-data; name=\"file\"; filename=\"a.wav\"\r\nContent-Type: audio/wav";
    let model_headers = "Content-Disposition: form-data; name=\"model\"";
    if model_first {
        part(model_headers, model.as_bytes());
        part(file_headers, file);
    } else {
        part(file_headers, file);
        part(model_headers, model.as_bytes());
    }
    if prompt {
        part(
            "Content-Disposition: form-data; name=\"prompt\"",
            b"the model is not here",
        );
    }
    if duplicate {
        part(model_headers, b"another-model");
    }
    body.extend_from_slice(format!("--{BOUNDARY}--\r\n").as_bytes());
    body
}

/// The `multipart` check of a fuzz input. Flag bit 0 selects a raw body
/// (only split independence is checked); otherwise the input builds a
/// well-formed body whose model must be found under any split (bits 1 and
/// 2: model first, an extra text part; bit 3: a second `model` part, which
/// strict refuses and fast never reaches).
pub fn multipart(data: &[u8]) {
    let input = Input::parse(data);
    let config = ExtractorConfig::new();
    if input.flags & 1 != 0 {
        let whole = run_multipart(input.body, &[], &config);
        let split = run_multipart(input.body, &input.cuts, &config);
        assert_eq!(whole, split, "split at {:?}", input.cuts);
        return;
    }
    let (head, file) = input.body.split_at(input.body.len().min(16));
    const ALPHABET: &[u8] = b"abcdefghijklmnopqrstuvwxyz0123456789-._/";
    let mut model: String = head
        .iter()
        .map(|b| char::from(ALPHABET[usize::from(*b) % ALPHABET.len()]))
        .collect();
    if model.is_empty() {
        model.push('m');
    }
    let delimiter = format!("\r\n--{BOUNDARY}");
    if file
        .windows(delimiter.len())
        .any(|w| w == delimiter.as_bytes())
    {
        return;
    }
    let duplicate = input.flags & 8 != 0;
    let body = multipart_body(
        &model,
        file,
        input.flags & 2 != 0,
        input.flags & 4 != 0,
        duplicate,
    );
    let cuts: Vec<usize> = input.cuts.iter().map(|c| c % (body.len() + 1)).collect();
    let whole = run_multipart(&body, &[], &config);
    let ok = match &whole {
        Outcome::Error { kind, .. } if duplicate => *kind == ErrorKind::DuplicateModel,
        Outcome::Found { model: m, .. } => !duplicate && *m == model,
        _ => false,
    };
    assert!(
        ok,
        "expected {model:?} (a duplicate: {duplicate}), got {whole:?}\nbody: {:?}",
        String::from_utf8_lossy(&body)
    );
    // The fast policy stops at the first model part.
    let fast = run_multipart(&body, &cuts, &config.clone().with_policy(Policy::Fast));
    assert!(
        matches!(&fast, Outcome::Found { model: m, .. } if *m == model),
        "fast: expected {model:?}, got {fast:?}"
    );
    let split = run_multipart(&body, &cuts, &config);
    assert_eq!(whole, split, "split at {cuts:?}");
}
