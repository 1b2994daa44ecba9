//! Top-level body fields copied into request headers
//! ([`Decider::with_body_field`](crate::Decider::with_body_field)).

use std::{fmt, str::FromStr};

use crate::{FieldValue, MAX_FIELD_NAME_LEN};
use http::{HeaderName, HeaderValue};

use crate::decision::RESERVED_PREFIX;

/// A top-level body field whose value is copied into a request header, as
/// the Go router's `body-field-to-header` plugin does.
///
/// Parsed from `NAME=HEADER` (the `--body-field` flag). The header name is
/// checked once, here: it must be a valid header name, outside bbr's own
/// `x-gateway-*` headers, and not one that frames or addresses the request
/// (`content-length`, `host`, hop-by-hop headers …).
///
/// ```
/// use bbr_core::BodyFieldHeader;
///
/// let copy: BodyFieldHeader = "stream=x-llm-stream".parse().unwrap();
/// assert_eq!(copy.field(), "stream");
/// assert_eq!(copy.header().as_str(), "x-llm-stream");
/// assert!("stream=x-gateway-model-name".parse::<BodyFieldHeader>().is_err());
/// assert!("stream=Connection".parse::<BodyFieldHeader>().is_err());
/// ```
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct BodyFieldHeader {
    field: Box<str>,
    header: HeaderName,
}

impl BodyFieldHeader {
    /// Copies the top-level field `field` into the request header `header`.
    pub fn new(field: &str, header: &str) -> Result<BodyFieldHeader, BodyFieldHeaderError> {
        if field.is_empty() {
            return Err(BodyFieldHeaderError::new("the field name is empty"));
        }
        if field.len() > MAX_FIELD_NAME_LEN {
            return Err(BodyFieldHeaderError::new(format!(
                "the field name is longer than {MAX_FIELD_NAME_LEN} bytes"
            )));
        }
        if field == "model" {
            return Err(BodyFieldHeaderError::new(
                "`model` is always copied into x-gateway-model-name",
            ));
        }
        let name = HeaderName::from_bytes(header.as_bytes()).map_err(|_| {
            BodyFieldHeaderError::new(format!("{header:?} is not a valid header name"))
        })?;
        if name.as_str().starts_with(RESERVED_PREFIX) {
            return Err(BodyFieldHeaderError::new(format!(
                "{:?} is reserved: bbr and the gateway own the {RESERVED_PREFIX}* headers",
                name.as_str()
            )));
        }
        if crate::rules::is_reserved_header(&name) {
            return Err(BodyFieldHeaderError::new(format!(
                "{:?} frames or addresses the request and may not be set from the body",
                name.as_str()
            )));
        }
        Ok(BodyFieldHeader {
            field: field.into(),
            header: name,
        })
    }

    /// The top-level body field.
    pub fn field(&self) -> &str {
        &self.field
    }

    /// The request header it is copied into (lowercase).
    pub fn header(&self) -> &HeaderName {
        &self.header
    }

    /// The header value for a field's value: a string as it is (unescaped),
    /// a number or a boolean as its JSON text. `None` for an empty string,
    /// `null`, objects, arrays, values longer than the capture limit and
    /// strings that cannot be a header value (control characters).
    pub(crate) fn header_value(value: &FieldValue) -> Option<HeaderValue> {
        let text = match value {
            FieldValue::String(s) => s.as_str(),
            FieldValue::Number(n) => n.as_str(),
            FieldValue::Bool(true) => "true",
            FieldValue::Bool(false) => "false",
            _ => return None,
        };
        if text.is_empty() || text.chars().any(char::is_control) {
            return None;
        }
        HeaderValue::from_bytes(text.as_bytes()).ok()
    }
}

impl FromStr for BodyFieldHeader {
    type Err = BodyFieldHeaderError;

    /// Parses `NAME=HEADER`. The split is at the last `=`, which no header
    /// name holds, so a field name may contain one.
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let (field, header) = s
            .rsplit_once('=')
            .ok_or_else(|| BodyFieldHeaderError::new(format!("{s:?} is not NAME=HEADER")))?;
        BodyFieldHeader::new(field, header)
    }
}

impl fmt::Display for BodyFieldHeader {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}={}", self.field, self.header)
    }
}

/// Why a [`BodyFieldHeader`] was refused.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct BodyFieldHeaderError {
    reason: String,
}

impl BodyFieldHeaderError {
    fn new(reason: impl Into<String>) -> BodyFieldHeaderError {
        BodyFieldHeaderError {
            reason: reason.into(),
        }
    }
}

impl fmt::Display for BodyFieldHeaderError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.reason)
    }
}

impl std::error::Error for BodyFieldHeaderError {}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_and_lowercases_the_header() {
        let b: BodyFieldHeader = "stream=X-LLM-Stream".parse().unwrap();
        assert_eq!((b.field(), b.header().as_str()), ("stream", "x-llm-stream"));
        assert_eq!(b.to_string(), "stream=x-llm-stream");
        let b: BodyFieldHeader = "a=b=x-ab".parse().unwrap();
        assert_eq!((b.field(), b.header().as_str()), ("a=b", "x-ab"));
    }

    #[test]
    fn refuses_what_the_rules_file_refuses() {
        for bad in [
            "stream",
            "=x-stream",
            "stream=",
            "stream=x stream",
            "stream=x-stream\r\n",
            "model=x-model",
            "stream=X-Gateway-Model-Name",
            "stream=x-gateway-inference-objective",
            "stream=content-length",
            "stream=Transfer-Encoding",
            "stream=connection",
            "stream=te",
            "stream=host",
            "stream=upgrade",
        ] {
            assert!(bad.parse::<BodyFieldHeader>().is_err(), "{bad}");
        }
        let long = format!("{}=x-long", "f".repeat(MAX_FIELD_NAME_LEN + 1));
        assert!(long.parse::<BodyFieldHeader>().is_err());
    }

    #[test]
    fn header_values_are_scalars_as_json_text() {
        let v = |f: FieldValue| BodyFieldHeader::header_value(&f).map(|h| h.as_bytes().to_vec());
        assert_eq!(v(FieldValue::String("gold".into())), Some(b"gold".to_vec()));
        assert_eq!(v(FieldValue::Number("1e3".into())), Some(b"1e3".to_vec()));
        assert_eq!(v(FieldValue::Bool(true)), Some(b"true".to_vec()));
        assert_eq!(v(FieldValue::Bool(false)), Some(b"false".to_vec()));
        assert_eq!(
            v(FieldValue::String("caf\u{e9}".into())),
            Some("caf\u{e9}".as_bytes().to_vec())
        );
        for none in [
            FieldValue::String(String::new()),
            FieldValue::String("a\r\nx-evil: 1".into()),
            FieldValue::String("a\tb".into()),
            FieldValue::LongString,
            FieldValue::LongNumber,
            FieldValue::Null,
            FieldValue::Object,
            FieldValue::Array,
        ] {
            assert_eq!(v(none.clone()), None, "{none:?}");
        }
    }
}
