//! Rewriting the model of a held JSON body to a decision's target.

use bytes::Bytes;

use super::RouteDecision;
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

impl RewrittenBody {
    /// The new `Content-Length` of a body whose old one was `old`, or `None`
    /// if the change does not fit (a `Content-Length` that lied about the body).
    pub fn content_length(&self, old: u64) -> Option<u64> {
        old.checked_add_signed(self.len_delta)
    }
}

/// Rewrites the `model` of a JSON body to `decision`'s upstream model.
///
/// `chunks` are the body chunks held so far, starting at byte 0 of the
/// body; `model` is what the extractor found in them (its span locates the
/// value token). The new value is JSON-escaped. Returns `None` when the
/// decision keeps the model ([`RouteDecision::is_rewrite`] is false) or when
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
/// let decision = table.decide(model.as_str(), None).unwrap().unwrap();
/// let out = rewrite_body(&chunks, &model, &decision).unwrap();
/// assert_eq!(out.chunks.concat(), br#"{"model":"gemma-3","n":1}"#);
/// assert_eq!(out.content_length(22), Some(25));
/// ```
pub fn rewrite_body(
    chunks: &[Bytes],
    model: &Model,
    decision: &RouteDecision,
) -> Option<RewrittenBody> {
    if !decision.is_rewrite() {
        return None;
    }
    let spliced = splice(chunks, model.span(), json_string(decision.model()))?;
    let len = spliced.chunks.iter().map(|c| c.len() as u64).sum();
    Some(RewrittenBody {
        chunks: spliced.chunks,
        len,
        len_delta: spliced.len_delta,
    })
}
