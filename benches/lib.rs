//! Benchmarks of bbr against its peers (see `benches/`).
//!
//! The request bodies the core extraction benchmark measures, shared with
//! anything else that wants realistic bodies: [`body`] builds one,
//! [`extract_cases`] lists the benchmark's matrix, [`chunks`] splits a body
//! the way a server hands it over.

use bytes::Bytes;

/// The model every generated body names.
pub const MODEL: &str = "meta-llama/Llama-3.1-8B-Instruct";

/// The chunk size bbr is fed in the extraction benchmark (a typical
/// HTTP/2 DATA frame or read buffer).
pub const CHUNK: usize = 16 * 1024;

/// What a body is made of.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Shape {
    /// Many short chat messages: token-dense, structure in every few bytes.
    DenseChat,
    /// One message carrying a long base64 image: string-heavy.
    Base64Image,
}

impl Shape {
    /// A short name for tables and file names.
    pub const fn name(self) -> &'static str {
        match self {
            Shape::DenseChat => "dense",
            Shape::Base64Image => "base64",
        }
    }
}

/// Where `model` sits in a body.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Position {
    /// Before everything else.
    First,
    /// After `messages` and the other fields (what the OpenAI Python SDK sends).
    Last,
}

impl Position {
    /// A short name for tables and file names.
    pub const fn name(self) -> &'static str {
        match self {
            Position::First => "first",
            Position::Last => "last",
        }
    }
}

/// The body sizes of the extraction benchmark, with their names.
pub const SIZES: [(&str, usize); 4] = [
    ("1KiB", 1 << 10),
    ("100KiB", 100 << 10),
    ("1MiB", 1 << 20),
    ("10MiB", 10 << 20),
];

/// One body of the extraction benchmark.
#[derive(Clone, Debug)]
pub struct Case {
    /// `<shape>-<size>-<position>`, e.g. `dense-1MiB-last`.
    pub name: String,
    /// What the body is made of.
    pub shape: Shape,
    /// Where the model sits.
    pub position: Position,
    /// The body.
    pub body: Vec<u8>,
}

/// Every body of the extraction benchmark: both shapes, every size in
/// [`SIZES`], model first and last.
pub fn extract_cases() -> Vec<Case> {
    let mut cases = Vec::new();
    for shape in [Shape::DenseChat, Shape::Base64Image] {
        for (size_name, size) in SIZES {
            for position in [Position::First, Position::Last] {
                cases.push(Case {
                    name: format!("{}-{size_name}-{}", shape.name(), position.name()),
                    shape,
                    position,
                    body: body(shape, size, position),
                });
            }
        }
    }
    cases
}

/// A deterministic pseudo-random sequence (no dependency, same bodies everywhere).
struct Lcg(u64);

impl Lcg {
    fn next(&mut self) -> u64 {
        self.0 = self
            .0
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        self.0 >> 33
    }
}

const WORDS: [&str; 16] = [
    "the", "model", "sky", "is", "blue", "why", "color", "light", "scatter", "Rayleigh", "and",
    "short", "answer", "please", "ok", "thanks",
];

/// An OpenAI chat-completions body of about `size` bytes (never less than
/// the fixed fields need), naming [`MODEL`] at `position`.
pub fn body(shape: Shape, size: usize, position: Position) -> Vec<u8> {
    let mut out = Vec::with_capacity(size + 256);
    out.push(b'{');
    if position == Position::First {
        out.extend_from_slice(format!("\"model\":\"{MODEL}\",").as_bytes());
    }
    out.extend_from_slice(b"\"messages\":[");
    let tail = match position {
        Position::First => "],\"max_tokens\":100,\"temperature\":0.7,\"stream\":false}".to_owned(),
        Position::Last => {
            format!(
                "],\"max_tokens\":100,\"temperature\":0.7,\"stream\":false,\"model\":\"{MODEL}\"}}"
            )
        }
    };
    match shape {
        Shape::DenseChat => dense_messages(&mut out, size.saturating_sub(tail.len())),
        Shape::Base64Image => image_message(&mut out, size.saturating_sub(tail.len())),
    }
    out.extend_from_slice(tail.as_bytes());
    out
}

/// Short messages until `out` reaches `until` bytes.
fn dense_messages(out: &mut Vec<u8>, until: usize) {
    let mut rng = Lcg(7);
    let mut first = true;
    loop {
        if !first {
            out.push(b',');
        }
        first = false;
        let role = if rng.next().is_multiple_of(2) {
            "user"
        } else {
            "assistant"
        };
        out.extend_from_slice(b"{\"role\":\"");
        out.extend_from_slice(role.as_bytes());
        out.extend_from_slice(b"\",\"content\":\"");
        for i in 0..1 + rng.next() % 6 {
            if i > 0 {
                out.push(b' ');
            }
            out.extend_from_slice(WORDS[(rng.next() % 16) as usize].as_bytes());
        }
        out.push(b'"');
        if rng.next().is_multiple_of(4) {
            out.extend_from_slice(
                format!(
                    ",\"name\":\"u{}\",\"n\":[{},{}]",
                    rng.next() % 100,
                    rng.next() % 1000,
                    rng.next() % 10
                )
                .as_bytes(),
            );
        }
        out.push(b'}');
        if out.len() >= until {
            break;
        }
    }
}

/// One user message with a text part and a base64 PNG filling `out` up to `until`.
fn image_message(out: &mut Vec<u8>, until: usize) {
    const BASE64: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    out.extend_from_slice(
        br#"{"role":"user","content":[{"type":"text","text":"What is in this image?"},{"type":"image_url","image_url":{"url":"data:image/png;base64,"#,
    );
    let end = br#""}}]}"#;
    let mut rng = Lcg(11);
    let len = until
        .saturating_sub(out.len() + end.len())
        .max(4)
        .div_ceil(4)
        * 4;
    out.extend((0..len).map(|_| BASE64[(rng.next() % 64) as usize]));
    out.extend_from_slice(end);
}

/// Splits `body` into `chunk`-byte refcounted slices of one buffer.
pub fn chunks(body: &[u8], chunk: usize) -> Vec<Bytes> {
    let whole = Bytes::copy_from_slice(body);
    (0..body.len())
        .step_by(chunk.max(1))
        .map(|start| whole.slice(start..(start + chunk).min(body.len())))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bodies_are_valid_and_name_the_model_where_asked() {
        for case in extract_cases() {
            let value: serde_json::Value = serde_json::from_slice(&case.body).unwrap();
            assert_eq!(value["model"], MODEL, "{}", case.name);
            let key = b"\"model\":";
            let at: Vec<usize> = (0..case.body.len() - key.len())
                .filter(|&i| case.body[i..].starts_with(key))
                .collect();
            match case.position {
                Position::First => assert_eq!(at, [1], "{}", case.name),
                Position::Last => {
                    assert!(
                        at.len() == 1 && at[0] > case.body.len() - 100,
                        "{}",
                        case.name
                    )
                }
            }
            let target = SIZES
                .iter()
                .find(|(n, _)| case.name.contains(&format!("-{n}-")))
                .unwrap()
                .1;
            assert!(
                case.body.len() >= target && case.body.len() <= target + 512,
                "{}: {} bytes",
                case.name,
                case.body.len()
            );
        }
    }

    #[test]
    fn chunks_cover_the_body() {
        let body = body(Shape::DenseChat, 100_000, Position::Last);
        let parts = chunks(&body, CHUNK);
        assert!(parts.iter().all(|c| c.len() <= CHUNK));
        assert_eq!(parts.concat(), body);
    }
}
