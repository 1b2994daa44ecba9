//! The whole document, parsed on demand (feature `document`).
//!
//! Routing never needs more than the top-level fields the extractor reads
//! in its single pass. A rule or plugin that needs nested data (the last
//! user message, a tool's name) can parse the whole body with `simd-json`,
//! off the routing path: this copies the held chunks into one buffer (simd-json
//! parses in place) and is as costly as a full parse, so call it only when
//! such a rule asks.

use bytes::Bytes;
pub use simd_json::OwnedValue;

use crate::{Error, ErrorKind};

/// Parses a body held as chunks into a `simd_json::OwnedValue`.
///
/// ```
/// use bytes::Bytes;
/// use bbr_core::document::{parse, OwnedValue};
/// use simd_json::prelude::*;
///
/// let chunks = [Bytes::from_static(br#"{"model":"m","messages":[{"role":"user","#),
///               Bytes::from_static(br#""content":"hi"}]}"#)];
/// let doc = parse(&chunks).unwrap();
/// let last = doc.get("messages").and_then(|m| m.as_array()).and_then(|m| m.last()).unwrap();
/// assert_eq!(last.get("content").and_then(|c| c.as_str()), Some("hi"));
/// ```
pub fn parse(chunks: &[Bytes]) -> Result<OwnedValue, Error> {
    let len = chunks.iter().map(Bytes::len).sum();
    let mut buf = Vec::with_capacity(len);
    for chunk in chunks {
        buf.extend_from_slice(chunk);
    }
    simd_json::to_owned_value(&mut buf).map_err(|e| {
        Error::new(
            ErrorKind::InvalidJson,
            e.index() as u64,
            format!("invalid JSON: {:?}", e.error()),
        )
    })
}

#[cfg(test)]
mod tests {
    use simd_json::prelude::*;

    use super::*;

    #[test]
    fn nested_fields_across_chunks() {
        let body =
            br#"{"model":"m","tools":[{"type":"function","function":{"name":"get_weather"}}]}"#;
        for cut in 0..=body.len() {
            let chunks = [
                Bytes::copy_from_slice(&body[..cut]),
                Bytes::copy_from_slice(&body[cut..]),
            ];
            let doc = parse(&chunks).unwrap();
            let name = doc["tools"][0]["function"]["name"].as_str();
            assert_eq!(name, Some("get_weather"), "cut at {cut}");
        }
    }

    #[test]
    fn invalid_json_is_an_error() {
        let err = parse(&[Bytes::from_static(b"{\"model\":")]).unwrap_err();
        assert_eq!(err.kind(), ErrorKind::InvalidJson);
        let err = parse(&[Bytes::from_static(b"{\"a\":tru}")]).unwrap_err();
        assert_eq!(err.kind(), ErrorKind::InvalidJson);
    }
}
