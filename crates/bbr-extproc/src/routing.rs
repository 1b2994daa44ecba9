//! The one place the service meets the rule table: what to strip from a
//! request and which headers a model turns into.

use bbr_core::Error;
use http::{HeaderName, HeaderValue};

/// `X-Gateway-Model-Name`: the model as the client sent it.
pub(crate) const MODEL_NAME_HEADER: HeaderName = HeaderName::from_static("x-gateway-model-name");
/// `X-Gateway-Base-Model-Name`: the base model of a LoRA adapter.
pub(crate) const BASE_MODEL_HEADER: HeaderName =
    HeaderName::from_static("x-gateway-base-model-name");
/// `x-gateway-inference-pool`: the pool a rule names.
pub(crate) const POOL_HEADER: HeaderName = HeaderName::from_static("x-gateway-inference-pool");

/// A routing decision, reduced to what the protocol needs.
#[derive(Debug)]
pub(crate) struct Decision {
    pub(crate) rule: String,
    pub(crate) pool: Option<String>,
    pub(crate) headers: Vec<(HeaderName, HeaderValue)>,
    /// The model to send upstream when a rule rewrites it.
    pub(crate) rewrite: Option<String>,
}

/// The routing table in force.
#[derive(Debug, Default)]
pub(crate) struct Routes {}

impl Routes {
    /// Headers a decision may set; removed from every request.
    pub(crate) fn managed_headers(&self) -> Vec<HeaderName> {
        vec![MODEL_NAME_HEADER, BASE_MODEL_HEADER, POOL_HEADER]
    }

    /// The decision for `model`; `Ok(None)` passes the request unrouted.
    pub(crate) fn decide(
        &self,
        model: &str,
        _key: Option<&[u8]>,
    ) -> Result<Option<Decision>, Error> {
        // The Go router's behaviour: the model becomes the header.
        let Ok(value) = HeaderValue::from_str(model) else {
            return Ok(None);
        };
        Ok(Some(Decision {
            rule: String::new(),
            pool: None,
            headers: vec![(MODEL_NAME_HEADER, value)],
            rewrite: None,
        }))
    }
}
