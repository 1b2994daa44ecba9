//! Zero-copy rewrite of the model in a body held as `Bytes` chunks.
//!
//! The extractor reports the byte span of the model's value token; a rewrite
//! is `prefix ++ new value ++ suffix`, where prefix and suffix are slices of
//! the chunks received (refcounted, not copied) and only the new value token
//! is freshly allocated.

use std::ops::Range;

use bytes::Bytes;

/// The result of [`splice`]: the new chunk sequence and the length change.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Spliced {
    /// The chunks to send in place of the ones given, in order.
    pub chunks: Vec<Bytes>,
    /// New length minus old length, in bytes (add it to `Content-Length`).
    pub len_delta: i64,
}

/// Encodes `value` as a JSON string token (quotes included), escaping `"`,
/// `\` and control characters so that the result parses back to `value`.
pub fn json_string(value: &str) -> Bytes {
    let mut out = String::with_capacity(value.len() + 2);
    crate::error::push_json_string(&mut out, value);
    Bytes::from(out)
}

/// Replaces the bytes at `span` (absolute offsets into the concatenation of
/// `chunks`) with `replacement`, without copying the untouched bytes.
///
/// Returns `None` when `span` does not lie within the chunks.
///
/// ```
/// use bytes::Bytes;
/// use bbr_core::rewrite::{json_string, splice};
///
/// let chunks = [Bytes::from_static(b"{\"model\":\"cha"), Bytes::from_static(b"tbot\"}")];
/// // The value token `"chatbot"` spans bytes 9..18.
/// let out = splice(&chunks, 9..18, json_string("gemma")).unwrap();
/// let body: Vec<u8> = out.chunks.iter().flat_map(|c| c.iter().copied()).collect();
/// assert_eq!(body, b"{\"model\":\"gemma\"}");
/// assert_eq!(out.len_delta, -2);
/// ```
pub fn splice(chunks: &[Bytes], span: Range<u64>, replacement: Bytes) -> Option<Spliced> {
    if span.start > span.end {
        return None;
    }
    let total: u64 = chunks.iter().map(|c| c.len() as u64).sum();
    if span.end > total {
        return None;
    }
    let mut out = Vec::with_capacity(chunks.len() + 2);
    let mut offset = 0u64;
    let mut inserted = false;
    for chunk in chunks {
        let start = offset;
        let end = offset + chunk.len() as u64;
        offset = end;
        // Part of this chunk before the span.
        if start < span.start {
            let keep = (span.start.min(end) - start) as usize;
            if keep > 0 {
                out.push(chunk.slice(..keep));
            }
        }
        if !inserted && end >= span.start && (start <= span.start) {
            if !replacement.is_empty() {
                out.push(replacement.clone());
            }
            inserted = true;
        }
        // Part of this chunk after the span.
        if end > span.end {
            let from = (span.end.max(start) - start) as usize;
            out.push(chunk.slice(from..));
        }
    }
    if !inserted {
        // Empty chunk list with an empty span at 0.
        if !replacement.is_empty() {
            out.push(replacement.clone());
        }
    }
    let len_delta = replacement.len() as i64 - (span.end - span.start) as i64;
    Some(Spliced {
        chunks: out,
        len_delta,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn concat(chunks: &[Bytes]) -> Vec<u8> {
        chunks.iter().flat_map(|c| c.iter().copied()).collect()
    }

    #[test]
    fn splice_at_every_split_matches_naive_replace() {
        let body = b"{\"messages\":[],\"model\":\"sql-lora-sheddable\",\"x\":1}";
        let span = 23..43u64;
        assert_eq!(&body[23..43], b"\"sql-lora-sheddable\"");
        let new = json_string("qwen/Qwen2.5-7B \"x\"");
        let mut expected = body[..23].to_vec();
        expected.extend_from_slice(&new);
        expected.extend_from_slice(&body[43..]);
        for a in 0..=body.len() {
            for b in a..=body.len() {
                let whole = Bytes::from_static(body);
                let chunks = [whole.slice(..a), whole.slice(a..b), whole.slice(b..)];
                let out = splice(&chunks, span.clone(), new.clone()).unwrap();
                assert_eq!(concat(&out.chunks), expected, "split at {a},{b}");
                assert_eq!(out.len_delta, new.len() as i64 - 20);
            }
        }
    }

    #[test]
    fn untouched_bytes_are_not_copied() {
        let whole = Bytes::from(b"{\"model\":\"a\",\"rest\":\"long tail\"}".to_vec());
        let out = splice(std::slice::from_ref(&whole), 9..12, json_string("bb")).unwrap();
        // The suffix is a slice of the original allocation.
        let suffix = out.chunks.last().unwrap();
        let base = whole.as_ptr() as usize;
        let ptr = suffix.as_ptr() as usize;
        assert!(ptr >= base && ptr < base + whole.len());
    }

    #[test]
    fn json_string_escapes_what_json_requires() {
        let token = json_string("a\"b\\c\nd\u{1}e\u{7f}é");
        let back: String = serde_json::from_slice(&token).unwrap();
        assert_eq!(back, "a\"b\\c\nd\u{1}e\u{7f}é");
    }

    #[test]
    fn span_outside_the_body_is_refused() {
        let chunks = [Bytes::from_static(b"{}")];
        assert!(splice(&chunks, 1..5, Bytes::new()).is_none());
        #[allow(clippy::reversed_empty_ranges)]
        let reversed = 2..1;
        assert!(splice(&chunks, reversed, Bytes::new()).is_none());
    }
}
