//! The routing decision, handed to the inner service as a request extension.

use std::sync::Arc;

use bbr_core::decision::PassReason;
use bbr_core::rules::RouteMatch;
use bbr_core::{Error, Extraction, FieldValue, Verdict};

/// Where the model of a request came from.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum ModelSource {
    /// The top-level `model` member of a JSON body, or the `model` field of a
    /// `multipart/form-data` body.
    Body,
    /// The URL path, through a [`PathTemplate`](bbr_core::PathTemplate).
    Path,
    /// Nowhere: the request carries no model (no body, a body without a
    /// `model`, or an error let through by a fail-open policy).
    None,
}

/// What [`ModelRouting`](crate::ModelRouting) decided about a request.
///
/// Every request that reaches the inner service carries one as a request
/// extension, whatever the outcome (routed, passed through without a model,
/// or let through by a fail-open [`FailurePolicy`](bbr_core::FailurePolicy)):
///
/// ```
/// use bbr_tower::Decision;
///
/// fn pool_of<B>(request: &http::Request<B>) -> Option<&str> {
///     request.extensions().get::<Decision>()?.pool()
/// }
/// ```
///
/// Cloning is cheap (a reference count): handlers and extractors may take
/// their own copy.
#[derive(Clone, Debug)]
pub struct Decision {
    data: Arc<DecisionData>,
}

/// The contents of a [`Decision`], while the layer builds it.
#[derive(Debug)]
pub(crate) struct DecisionData {
    /// The model when it came from the path; a body's model is read from
    /// the extraction (no copy).
    pub(crate) path_model: Option<Box<str>>,
    pub(crate) source: ModelSource,
    pub(crate) route: Option<RouteMatch>,
    pub(crate) extraction: Option<Extraction>,
    pub(crate) held_bytes: u64,
    pub(crate) failed_open: Option<Error>,
}

impl DecisionData {
    pub(crate) fn unrouted(source: ModelSource) -> DecisionData {
        DecisionData {
            path_model: None,
            source,
            route: None,
            extraction: None,
            held_bytes: 0,
            failed_open: None,
        }
    }
}

impl DecisionData {
    /// Records what the verdict carried: the route, or the error a
    /// fail-open policy let through.
    pub(crate) fn take_verdict(&mut self, verdict: Verdict) {
        match verdict {
            Verdict::Route(routing) => self.route = Some(routing.into_route()),
            Verdict::Pass(pass) => {
                if let PassReason::FailedOpen(error) = pass.into_reason() {
                    self.failed_open = Some(error);
                    self.source = ModelSource::None;
                }
            }
            // Rejected requests do not reach the inner service.
            _ => {}
        }
    }
}

impl From<DecisionData> for Decision {
    fn from(data: DecisionData) -> Decision {
        Decision {
            data: Arc::new(data),
        }
    }
}

impl Decision {
    /// The model as the client named it (before any rewrite), if any.
    pub fn model(&self) -> Option<&str> {
        match self.data.source {
            ModelSource::Path => self.data.path_model.as_deref(),
            _ => self.data.extraction.as_ref()?.model().map(|m| m.as_str()),
        }
    }

    /// Where the model came from.
    pub fn source(&self) -> ModelSource {
        self.data.source
    }

    /// The rule table's decision, when a rule (or a default pool) matched.
    /// `None` when the request is forwarded without routing headers.
    pub fn route(&self) -> Option<&RouteMatch> {
        self.data.route.as_ref()
    }

    /// The pool the request is routed to, if any.
    pub fn pool(&self) -> Option<&str> {
        self.data.route.as_ref().and_then(RouteMatch::pool)
    }

    /// The model sent upstream: the rewritten model when the rule rewrites
    /// it, the client's model otherwise.
    pub fn upstream_model(&self) -> Option<&str> {
        match &self.data.route {
            Some(route) => Some(route.model()),
            None => self.model(),
        }
    }

    /// What the extractor found in the body (the model and the extra fields
    /// requested with [`ExtractorConfig::with_field`](bbr_core::ExtractorConfig::with_field)).
    /// `None` when the body was not read (model from the path, no body, or
    /// an error let through).
    pub fn extraction(&self) -> Option<&Extraction> {
        self.data.extraction.as_ref()
    }

    /// The value of an extra top-level field of the body, such as `stream`.
    pub fn field(&self, name: &str) -> Option<&FieldValue> {
        self.data.extraction.as_ref()?.field(name)
    }

    /// How many body bytes the layer held before it could decide (and call
    /// the inner service). Bounded by the position of `model` in the body.
    pub fn held_bytes(&self) -> u64 {
        self.data.held_bytes
    }

    /// The error a fail-open [`FailurePolicy`](bbr_core::FailurePolicy) let
    /// through, if any. Such a request carries no routing headers.
    pub fn failed_open(&self) -> Option<&Error> {
        self.data.failed_open.as_ref()
    }
}
