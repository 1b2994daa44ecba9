//! The resumable extractor: fed `Bytes` chunks split anywhere, it finds the
//! top-level `model` (and any other requested top-level fields) while
//! validating the body, in one pass and without copying the body.

use std::ops::Range;

use bytes::Bytes;

/// The model named by a body.
///
/// Zero copy: when the value lies within one chunk and has no escapes, the
/// model is a refcounted slice of that chunk ([`Model::is_borrowed`]);
/// otherwise it is a small owned buffer holding the unescaped value.
#[derive(Clone, PartialEq, Eq)]
pub struct Model {
    text: Bytes,
    span: Range<u64>,
    borrowed: bool,
}

impl Model {
    pub(crate) fn new(text: Bytes, span: Range<u64>, borrowed: bool) -> Model {
        debug_assert!(std::str::from_utf8(&text).is_ok());
        Model {
            text,
            span,
            borrowed,
        }
    }

    /// The model name (unescaped).
    pub fn as_str(&self) -> &str {
        // Validated when the model was extracted; never fails.
        crate::scan::utf8(&self.text).unwrap_or_default()
    }

    /// The model name as bytes: a slice of the body chunk when borrowed.
    pub fn as_bytes(&self) -> &Bytes {
        &self.text
    }

    /// The byte span of the value token in the body, quotes included
    /// (for multipart bodies: the span of the part's content).
    pub fn span(&self) -> Range<u64> {
        self.span.clone()
    }

    /// Whether the model is a slice of a body chunk (no copy was made).
    pub fn is_borrowed(&self) -> bool {
        self.borrowed
    }
}

impl std::fmt::Debug for Model {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Model")
            .field("model", &self.as_str())
            .field("span", &self.span)
            .field("borrowed", &self.borrowed)
            .finish()
    }
}

impl std::fmt::Display for Model {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// The value of an extra top-level field requested with
/// [`ExtractorConfig::with_field`](crate::ExtractorConfig::with_field). Scalars are captured (strings unescaped, up to
/// the model length limit); objects and arrays are reported by kind only.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum FieldValue {
    /// A string (unescaped). Longer strings are cut at the model length limit
    /// and reported as [`FieldValue::LongString`].
    String(String),
    /// A string longer than the capture limit.
    LongString,
    /// A number, as written in the body.
    Number(String),
    /// A number longer than the capture limit (the model length limit).
    LongNumber,
    /// `true` or `false`.
    Bool(bool),
    /// `null`.
    Null,
    /// An object (not captured).
    Object,
    /// An array (not captured).
    Array,
}

/// What the extractor decided about a body.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Extraction {
    pub(crate) model: Option<Model>,
    pub(crate) fields: Vec<(Box<str>, FieldValue)>,
    pub(crate) decided_at: u64,
}

impl Extraction {
    /// The model, or `None` when the body has no top-level `model` member.
    pub fn model(&self) -> Option<&Model> {
        self.model.as_ref()
    }

    /// The extra fields found, in body order.
    pub fn fields(&self) -> &[(Box<str>, FieldValue)] {
        &self.fields
    }

    /// The value of the extra field `name`, if the body had it.
    pub fn field(&self, name: &str) -> Option<&FieldValue> {
        self.fields
            .iter()
            .find(|(n, _)| &**n == name)
            .map(|(_, v)| v)
    }

    /// How many bytes of the body had been scanned when the decision was
    /// made: the bytes an adapter had to hold.
    pub fn decided_at(&self) -> u64 {
        self.decided_at
    }
}

/// Where the extractor stands after a chunk.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Status {
    /// Not found yet: hold the chunk and feed the next one.
    Pending,
    /// The model (and every requested field) is found, or the body read
    /// far enough to say it has none
    /// ([`ModelExtractor::extraction`](crate::ModelExtractor::extraction)).
    /// The chunk was scanned (strict policy) and may be released.
    Found,
}
