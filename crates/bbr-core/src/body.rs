//! Choosing the extractor from the request's content type.

use bytes::Bytes;

use crate::{
    Error, ErrorKind, Extraction, ExtractorConfig, ModelExtractor, MultipartExtractor, Status,
};

/// The extractor for one request body, chosen from its `Content-Type`.
///
/// - `application/json`, any `+json` type, or no content type: JSON.
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
}

impl BodyExtractor {
    /// The extractor for a body of `content_type` (`None` when the request has none).
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
        }
    }

    /// Ends the body. See [`ModelExtractor::finish`].
    pub fn finish(&mut self) -> Result<&Extraction, Error> {
        match self {
            BodyExtractor::Json(x) => x.finish(),
            BodyExtractor::Multipart(x) => x.finish(),
        }
    }

    /// The decision, once made.
    pub fn extraction(&self) -> Option<&Extraction> {
        match self {
            BodyExtractor::Json(x) => x.extraction(),
            BodyExtractor::Multipart(x) => x.extraction(),
        }
    }

    /// Whether later chunks still need [`feed`](Self::feed).
    pub fn needs_scanning(&self) -> bool {
        match self {
            BodyExtractor::Json(x) => x.needs_scanning(),
            BodyExtractor::Multipart(x) => x.needs_scanning(),
        }
    }

    /// Bytes scanned so far.
    pub fn bytes_scanned(&self) -> u64 {
        match self {
            BodyExtractor::Json(x) => x.bytes_scanned(),
            BodyExtractor::Multipart(x) => x.bytes_scanned(),
        }
    }

    /// Whether the body is JSON (a rewrite of the model is possible).
    pub fn is_json(&self) -> bool {
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
}
