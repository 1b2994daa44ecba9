//! Choosing the extractor from the request's content type and encoding.

use bytes::Bytes;

use crate::{
    Error, ErrorKind, Extraction, ExtractorConfig, ModelExtractor, MultipartExtractor, Status,
};

/// The extractor for one request body, chosen from its `Content-Type` (and
/// its `Content-Encoding`, with [`for_request`](BodyExtractor::for_request)).
///
/// - `application/json`, any `+json` type, or no content type: JSON. A
///   `charset` other than `utf-8` is refused.
/// - `multipart/form-data; boundary=…`: the form field `model`.
/// - anything else: [`ErrorKind::UnsupportedContentType`] (415).
#[derive(Debug)]
#[expect(
    clippy::large_enum_variant,
    reason = "JSON is the hot path: kept inline to save an allocation per request"
)]
#[non_exhaustive]
pub enum BodyExtractor {
    /// A JSON body.
    Json(ModelExtractor),
    /// A `multipart/form-data` body (boxed: it is rare, and larger).
    Multipart(Box<MultipartExtractor>),
    /// A compressed body, decoded for the scan (feature `decompress`).
    #[cfg(feature = "decompress")]
    #[cfg_attr(docsrs, doc(cfg(feature = "decompress")))]
    Compressed(Box<crate::CompressedExtractor>),
}

impl BodyExtractor {
    /// The extractor for a request body of `content_type` sent with
    /// `content_encoding` (each `None` when the request has no such header;
    /// several `Content-Encoding` header lines are given joined by commas).
    ///
    /// With no encoding, or `identity`, this is [`new`](BodyExtractor::new).
    /// A body encoded with `gzip` (or `x-gzip`), `deflate` (zlib-wrapped or
    /// raw), `br` or `zstd` is decoded chunk by chunk for the scan, when
    /// [`ExtractorConfig::decompression`] is on and the `decompress`
    /// feature is built in; the caller still forwards the compressed chunks
    /// unchanged, and must not splice them (see
    /// [`is_rewritable`](BodyExtractor::is_rewritable)). Refused with
    /// [`ErrorKind::UnsupportedContentType`] (415): another coding, more
    /// than one coding, or a compressed body when decompression is off.
    ///
    /// The decoded bytes count against the body limit before the decision,
    /// and so do the compressed ones. A body that decodes to more than
    /// [`max_expansion_ratio`](ExtractorConfig::max_expansion_ratio) times
    /// its compressed size plus the slack is refused as a decompression bomb
    /// ([`ErrorKind::TooLarge`], 413), and a compressed stream that cannot
    /// be decoded with [`ErrorKind::InvalidEncoding`] (400).
    pub fn for_request(
        content_type: Option<&str>,
        content_encoding: Option<&str>,
        config: ExtractorConfig,
    ) -> Result<BodyExtractor, Error> {
        let Some(encoding) = content_encoding else {
            return BodyExtractor::new(content_type, config);
        };
        let Some(coding) = crate::decode::coding(encoding)? else {
            return BodyExtractor::new(content_type, config);
        };
        if !config.decompression() {
            return Err(crate::decode::not_decoded(coding));
        }
        #[cfg(feature = "decompress")]
        {
            let inner = BodyExtractor::new(content_type, config.clone())?;
            crate::CompressedExtractor::new(coding, inner, &config)
                .map(|x| BodyExtractor::Compressed(Box::new(x)))
        }
        #[cfg(not(feature = "decompress"))]
        {
            let _ = content_type;
            Err(crate::decode::not_decoded(coding))
        }
    }

    /// The extractor for a body of `content_type` (`None` when the request
    /// has none), not compressed.
    pub fn new(
        content_type: Option<&str>,
        config: ExtractorConfig,
    ) -> Result<BodyExtractor, Error> {
        let Some(ct) = content_type else {
            return Ok(BodyExtractor::Json(ModelExtractor::new(config)));
        };
        // What nearly every request sends, without parameters.
        if ct.eq_ignore_ascii_case("application/json") {
            return Ok(BodyExtractor::Json(ModelExtractor::new(config)));
        }
        let mut parts = ct.split(';');
        let essence = parts.next().unwrap_or("").trim();
        // Compared without allocating: this runs for every request.
        let is = |name: &str| essence.eq_ignore_ascii_case(name);
        let json_suffix = essence.len() >= "application/".len() + "+json".len()
            && essence.as_bytes()[..12].eq_ignore_ascii_case(b"application/")
            && essence.as_bytes()[essence.len() - 5..].eq_ignore_ascii_case(b"+json");
        if is("application/json") || json_suffix {
            // JSON is UTF-8 (RFC 8259); a body declared in another charset
            // would be read as something it is not.
            if let Some(charset) = parts.find_map(|p| {
                let (k, v) = p.split_once('=')?;
                k.trim().eq_ignore_ascii_case("charset").then_some(v)
            }) && !charset
                .trim()
                .trim_matches('"')
                .eq_ignore_ascii_case("utf-8")
            {
                return Err(Error::with_excerpt(
                    ErrorKind::UnsupportedContentType,
                    0,
                    "JSON bodies must be UTF-8, not charset",
                    charset.trim().as_bytes(),
                ));
            }
            return Ok(BodyExtractor::Json(ModelExtractor::new(config)));
        }
        if is("multipart/form-data") {
            let boundary = parts.find_map(|p| {
                let (k, v) = p.split_once('=')?;
                k.trim()
                    .eq_ignore_ascii_case("boundary")
                    .then(|| v.trim().trim_matches('"'))
            });
            return match boundary {
                Some(b) => MultipartExtractor::new(b, config)
                    .map(|x| BodyExtractor::Multipart(Box::new(x))),
                None => Err(Error::new(
                    ErrorKind::UnsupportedContentType,
                    0,
                    "multipart/form-data without a boundary",
                )),
            };
        }
        Err(Error::with_excerpt(
            ErrorKind::UnsupportedContentType,
            0,
            "unsupported content type",
            ct.as_bytes(),
        ))
    }

    /// Scans the next chunk. See [`ModelExtractor::feed`].
    pub fn feed(&mut self, chunk: &Bytes) -> Result<Status, Error> {
        match self {
            BodyExtractor::Json(x) => x.feed(chunk),
            BodyExtractor::Multipart(x) => x.feed(chunk),
            #[cfg(feature = "decompress")]
            BodyExtractor::Compressed(x) => x.feed(chunk),
        }
    }

    /// Scans the next chunk, lent for this call only. See
    /// [`ModelExtractor::feed_lent`].
    pub fn feed_lent(&mut self, chunk: &[u8]) -> Result<Status, Error> {
        match self {
            BodyExtractor::Json(x) => x.feed_lent(chunk),
            BodyExtractor::Multipart(x) => x.feed_lent(chunk),
            // The compressed bytes are decoded into the extractor's own
            // buffer: nothing of them is kept.
            #[cfg(feature = "decompress")]
            BodyExtractor::Compressed(x) => x.feed(chunk),
        }
    }

    /// Ends the body. See [`ModelExtractor::finish`].
    pub fn finish(&mut self) -> Result<&Extraction, Error> {
        match self {
            BodyExtractor::Json(x) => x.finish(),
            BodyExtractor::Multipart(x) => x.finish(),
            #[cfg(feature = "decompress")]
            BodyExtractor::Compressed(x) => x.finish(),
        }
    }

    /// The decision, once made.
    pub fn extraction(&self) -> Option<&Extraction> {
        match self {
            BodyExtractor::Json(x) => x.extraction(),
            BodyExtractor::Multipart(x) => x.extraction(),
            #[cfg(feature = "decompress")]
            BodyExtractor::Compressed(x) => x.extraction(),
        }
    }

    /// Whether later chunks still need [`feed`](Self::feed).
    pub fn needs_scanning(&self) -> bool {
        match self {
            BodyExtractor::Json(x) => x.needs_scanning(),
            BodyExtractor::Multipart(x) => x.needs_scanning(),
            #[cfg(feature = "decompress")]
            BodyExtractor::Compressed(x) => x.needs_scanning(),
        }
    }

    /// Bytes scanned so far (decoded bytes, for a compressed body).
    pub fn bytes_scanned(&self) -> u64 {
        match self {
            BodyExtractor::Json(x) => x.bytes_scanned(),
            BodyExtractor::Multipart(x) => x.bytes_scanned(),
            #[cfg(feature = "decompress")]
            BodyExtractor::Compressed(x) => x.bytes_scanned(),
        }
    }

    /// Whether the body is JSON (decoded, for a compressed body).
    pub fn is_json(&self) -> bool {
        match self {
            BodyExtractor::Json(_) => true,
            BodyExtractor::Multipart(_) => false,
            #[cfg(feature = "decompress")]
            BodyExtractor::Compressed(x) => x.is_json(),
        }
    }

    /// Whether the model can be rewritten by splicing the body's chunks: a
    /// JSON body that is not compressed. A compressed body is forwarded as
    /// it came, so a rule's weighted targets route it (the headers are set)
    /// but do not replace its model: pass this as
    /// [`Input::Body::rewritable`](crate::Input::Body::rewritable).
    pub fn is_rewritable(&self) -> bool {
        matches!(self, BodyExtractor::Json(_))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn kind(content_type: Option<&str>) -> Result<bool, ErrorKind> {
        BodyExtractor::new(content_type, ExtractorConfig::new())
            .map(|x| x.is_json())
            .map_err(|e| e.kind())
    }

    #[test]
    fn content_types_choose_the_extractor() {
        for json in [
            None,
            Some("application/json"),
            Some("Application/JSON; charset=utf-8"),
            Some(" application/json "),
            Some("application/vnd.api+json"),
            Some("APPLICATION/problem+JSON;q=1"),
        ] {
            assert_eq!(kind(json), Ok(true), "{json:?}");
        }
        assert_eq!(kind(Some("multipart/form-data; boundary=x")), Ok(false));
        assert_eq!(kind(Some("Multipart/Form-Data; BOUNDARY=\"x\"")), Ok(false));
        for refused in [
            "text/plain",
            "application/jsonx",
            "application/x-www-form-urlencoded",
            "text/+json",
            "multipart/form-data",
            "",
        ] {
            assert_eq!(
                kind(Some(refused)),
                Err(ErrorKind::UnsupportedContentType),
                "{refused:?}"
            );
        }
    }

    #[test]
    fn a_charset_other_than_utf8_is_refused_with_415() {
        let kind = |ct| BodyExtractor::new(Some(ct), ExtractorConfig::new()).map(|x| x.is_json());
        for ok in [
            "application/json; charset=utf-8",
            "application/json;charset=UTF-8",
            "application/json; charset=\"utf-8\"",
            "application/vnd.api+json; charset=Utf-8",
        ] {
            assert_eq!(kind(ok), Ok(true), "{ok}");
        }
        for refused in [
            "application/json; charset=utf-16",
            "application/json;charset=UTF-16LE",
            "application/json; charset=iso-8859-1",
            "application/problem+json; charset=\"utf-32\"",
        ] {
            let err = kind(refused).unwrap_err();
            assert_eq!(err.kind(), ErrorKind::UnsupportedContentType, "{refused}");
            assert_eq!(err.status(), 415);
        }
    }
}
