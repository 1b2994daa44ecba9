//! Rewriting the model of a held JSON body to a decision's target.

use bytes::Bytes;

use super::RouteMatch;
use crate::{
    Model,
    rewrite::{json_string, splice},
};

/// A body whose model was rewritten: the chunks to send in place of the
/// ones held, and the length change.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RewrittenBody {
    /// The chunks to send in place of the ones given, in order. Untouched
    /// bytes are refcounted slices of the originals.
    pub chunks: Vec<Bytes>,
    /// The total length of [`chunks`](Self::chunks).
    pub len: u64,
    /// New length minus old length, in bytes.
    pub len_delta: i64,
}

/// What becomes of a request's `Content-Length` header after a rewrite: see
/// [`RewrittenBody::content_length`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ContentLength {
    /// Set the header to this length.
    Set(u64),
    /// Remove the header: the body is then framed by its end (chunked in
    /// HTTP/1.1, `END_STREAM` in HTTP/2).
    Remove,
}

impl RewrittenBody {
    /// The one `Content-Length` rule after a rewrite, for every adapter: a
    /// request that carries the header (`old`, its raw value) gets the old
    /// length plus the change; one whose value is not a length, or whose
    /// change does not fit (a header that lied about the body), loses it.
    /// A request without the header keeps none.
    ///
    /// ```
    /// use bbr_core::rules::{ContentLength, RewrittenBody};
    ///
    /// let body = RewrittenBody { chunks: vec![], len: 0, len_delta: -2 };
    /// assert_eq!(body.content_length(b"22"), ContentLength::Set(20));
    /// assert_eq!(body.content_length(b"1"), ContentLength::Remove);
    /// assert_eq!(body.content_length(b"x"), ContentLength::Remove);
    /// ```
    pub fn content_length(&self, old: &[u8]) -> ContentLength {
        std::str::from_utf8(old)
            .ok()
            .and_then(|v| v.trim().parse::<u64>().ok())
            .and_then(|old| old.checked_add_signed(self.len_delta))
            .map_or(ContentLength::Remove, ContentLength::Set)
    }
}

/// Rewrites the `model` of a JSON body to `decision`'s upstream model.
///
/// `chunks` are the body chunks held so far, starting at byte 0 of the
/// body; `model` is what the extractor found in them (its span locates the
/// value token). The new value is JSON-escaped. Returns `None` when the
/// decision keeps the model ([`RouteMatch::is_rewrite`] is false) or when
/// the model's span does not lie within `chunks`.
///
/// JSON bodies only: for a `multipart/form-data` body the span is the
/// part's raw content, which this function does not write.
///
/// ```
/// use bytes::Bytes;
/// use bbr_core::{BodyExtractor, ExtractorConfig, rules::{RuleTable, rewrite_body}};
///
/// let table = RuleTable::from_yaml(
///     "rules: [{name: a, match: {model: {exact: chat}}, targets: [{model: gemma-3, weight: 1}]}]",
/// ).unwrap();
/// let chunks = [Bytes::from_static(br#"{"model":"chat","n":1}"#)];
/// let mut extractor = BodyExtractor::new(Some("application/json"), ExtractorConfig::new()).unwrap();
/// extractor.feed(&chunks[0]).unwrap();
/// let model = extractor.finish().unwrap().model().unwrap().clone();
/// let decision = table.route(model.as_str(), None).unwrap().unwrap();
/// let out = rewrite_body(&chunks, &model, &decision).unwrap();
/// assert_eq!(out.chunks.concat(), br#"{"model":"gemma-3","n":1}"#);
/// assert_eq!(out.content_length(b"22"), bbr_core::rules::ContentLength::Set(25));
/// ```
pub fn rewrite_body(
    chunks: &[Bytes],
    model: &Model,
    decision: &RouteMatch,
) -> Option<RewrittenBody> {
    if !decision.is_rewrite() {
        return None;
    }
    rewrite_body_with(chunks, model.span(), json_string(decision.model()))
}

/// Replaces the value token at `span` with `token` (a JSON string).
pub(crate) fn rewrite_body_with(
    chunks: &[Bytes],
    span: std::ops::Range<u64>,
    token: Bytes,
) -> Option<RewrittenBody> {
    let spliced = splice(chunks, span, token)?;
    let len = spliced.chunks.iter().map(|c| c.len() as u64).sum();
    Some(RewrittenBody {
        chunks: spliced.chunks,
        len,
        len_delta: spliced.len_delta,
    })
}
