//! [`ModelRoutingLayer`] and the [`ModelRouting`] service.

use std::{
    mem,
    sync::Arc,
    task::{Context, Poll},
    time::Duration,
};

use bbr_core::rules::{RuleTable, SharedRules};
use bbr_core::{BodyFieldHeader, Decider, ExtractorConfig, FailurePolicy, PathTemplate, Policy};
use bytes::Bytes;
use http::{Request, Response};
use http_body::Body;
use tower_layer::Layer;
use tower_service::Service;

use crate::{
    BoxError, HoldBudget, ResponseBody, ResponseFuture, RoutedBody,
    config::{Config, Rules},
};

/// Routes requests on the model named in their body: a tower [`Layer`]
/// producing [`ModelRouting`].
///
/// The defaults are the safe ones: strict policy, a 32 MiB limit on the
/// bytes read before the decision, every error refused, bodies without a
/// model passed through, and an empty rule table (which, like the Go
/// body-based router, copies the model into `X-Gateway-Model-Name`).
///
/// ```
/// use bbr_core::{ExtractorConfig, FailurePolicy, Policy, rules::RuleTable};
/// use bbr_tower::ModelRoutingLayer;
///
/// let rules = RuleTable::from_yaml(
///     "rules:\n  - name: chatbot\n    match: { model: { exact: chatbot } }\n    pool: gemma3\n",
/// )
/// .unwrap();
/// let layer = ModelRoutingLayer::new()
///     .rules(rules)
///     .extractor_config(ExtractorConfig::new().with_policy(Policy::Strict).with_max_body(8 << 20))
///     .failure_policy(FailurePolicy::new());
/// # let _ = layer;
/// ```
#[derive(Clone, Debug, Default)]
pub struct ModelRoutingLayer {
    config: Arc<Config>,
}

impl ModelRoutingLayer {
    /// A layer with the default configuration and an empty rule table.
    pub fn new() -> ModelRoutingLayer {
        ModelRoutingLayer::default()
    }

    /// Routes with `table`.
    #[must_use]
    pub fn rules(mut self, table: RuleTable) -> Self {
        Arc::make_mut(&mut self.config).rules = Rules::Fixed(Arc::new(table));
        self
    }

    /// Routes with the table `rules` holds at the time of each request, so
    /// that a reload takes effect on the next request.
    #[must_use]
    pub fn shared_rules(mut self, rules: SharedRules) -> Self {
        Arc::make_mut(&mut self.config).rules = Rules::Shared(rules);
        self
    }

    /// Sets the extractor's policy and limits.
    #[must_use]
    pub fn extractor_config(mut self, config: ExtractorConfig) -> Self {
        let this = Arc::make_mut(&mut self.config);
        this.extractor = this.decider.extractor_config(config);
        self
    }

    /// Sets the extraction policy (a shortcut into the extractor configuration).
    #[must_use]
    pub fn policy(mut self, policy: Policy) -> Self {
        let config = Arc::make_mut(&mut self.config);
        config.extractor = config.extractor.clone().with_policy(policy);
        self
    }

    /// Sets the most bytes read before a decision; past it the request is
    /// answered 413 (a shortcut into the extractor configuration).
    #[must_use]
    pub fn max_body(mut self, bytes: u64) -> Self {
        let config = Arc::make_mut(&mut self.config);
        config.extractor = config.extractor.clone().with_max_body(bytes);
        self
    }

    /// Sets which errors are refused and which are let through.
    #[must_use]
    pub fn failure_policy(mut self, policy: FailurePolicy) -> Self {
        let config = Arc::make_mut(&mut self.config);
        config.decider = config.decider.clone().with_failure_policy(policy);
        self
    }

    /// Copies a top-level body field into a request header, as the Go
    /// router's `body-field-to-header` plugin does; see
    /// [`Decider::with_body_field`] for what is copied and when.
    ///
    /// ```
    /// use bbr_tower::ModelRoutingLayer;
    ///
    /// let layer = ModelRoutingLayer::new().body_field("stream=x-llm-stream".parse().unwrap());
    /// # drop(layer);
    /// ```
    #[must_use]
    pub fn body_field(mut self, copy: BodyFieldHeader) -> Self {
        let config = Arc::make_mut(&mut self.config);
        config.extractor = config.extractor.clone().with_field(copy.field());
        config.decider = config.decider.clone().with_body_field(copy);
        self
    }

    /// Answers `GET /v1/models` itself, from the rule table in force (the
    /// OpenAI list format; see
    /// [`RuleTable::models_json`](bbr_core::rules::RuleTable::models_json)),
    /// instead of passing it to the inner service. Off by default.
    #[must_use]
    pub fn serve_models(mut self, serve: bool) -> Self {
        Arc::make_mut(&mut self.config).serve_models = serve;
        self
    }

    /// Shares `budget` of body bytes held before decisions with every
    /// request of this layer (default: a budget of its own of
    /// [`DEFAULT_HOLD_BUDGET`](crate::DEFAULT_HOLD_BUDGET), 256 MiB). Pass
    /// the same budget to several layers to bound them together.
    #[must_use]
    pub fn hold_budget(mut self, budget: HoldBudget) -> Self {
        Arc::make_mut(&mut self.config).budget = Some(budget);
        self
    }

    /// Holds without a shared budget: each request is bounded by the body
    /// limit only.
    #[must_use]
    pub fn no_hold_budget(mut self) -> Self {
        Arc::make_mut(&mut self.config).budget = None;
        self
    }

    /// Refuses a request whose body sends no data for `timeout` before its
    /// decision (`408 body_timeout`); `None` waits as long as the client
    /// does. Default: [`DEFAULT_HOLD_IDLE_TIMEOUT`](crate::DEFAULT_HOLD_IDLE_TIMEOUT) (30 s). The timer is
    /// tokio's (feature `tokio`, on by default; without it there is no
    /// timeout). After the decision the body streams to the inner service:
    /// bound it there (hyper's and tower-http's timeouts).
    #[must_use]
    pub fn hold_idle_timeout(mut self, timeout: Option<Duration>) -> Self {
        Arc::make_mut(&mut self.config).hold_idle_timeout = timeout;
        self
    }

    /// Sets the whole decision step at once — failure policy, body fields
    /// and the client headers removed besides those bbr writes (default:
    /// none) — replacing what [`failure_policy`] and [`body_field`] set.
    ///
    /// [`failure_policy`]: ModelRoutingLayer::failure_policy
    /// [`body_field`]: ModelRoutingLayer::body_field
    ///
    /// ```
    /// use bbr_core::Decider;
    /// use bbr_tower::ModelRoutingLayer;
    ///
    /// let decider = Decider::new()
    ///     .with_stripped_headers(["x-gateway-destination-endpoint"])
    ///     .with_reserved_prefixes(["x-internal-"]);
    /// let layer = ModelRoutingLayer::new().decider(decider);
    /// # drop(layer);
    /// ```
    #[must_use]
    pub fn decider(mut self, decider: Decider) -> Self {
        let config = Arc::make_mut(&mut self.config);
        config.extractor = decider.extractor_config(config.extractor.clone());
        config.decider = decider;
        self
    }

    /// Takes the model from the URL path when the path fits `template`
    /// (Gemini-style `/v1beta/models/{model}:generateContent`). Such
    /// requests are routed at once, without reading the body. Templates are
    /// tried in the order they were added.
    #[must_use]
    pub fn path_template(mut self, template: PathTemplate) -> Self {
        Arc::make_mut(&mut self.config).paths.push(template);
        self
    }
}

impl<S> Layer<S> for ModelRoutingLayer {
    type Service = ModelRouting<S>;

    fn layer(&self, inner: S) -> ModelRouting<S> {
        ModelRouting {
            inner,
            config: Arc::clone(&self.config),
        }
    }
}

/// Reads the model from the request body while it streams in, matches the
/// rule table, and calls the inner service as soon as it has decided: with
/// the routing headers set (the client's copies removed first), a
/// [`Decision`](crate::Decision) request extension, and a [`RoutedBody`]
/// that replays the held chunks and then streams the rest.
///
/// Requests refused before the decision are answered here, with the error
/// contract's status and OpenAI-style JSON body; the inner service is not
/// called. See [`ModelRoutingLayer`] for the configuration.
#[derive(Clone, Debug)]
pub struct ModelRouting<S> {
    inner: S,
    config: Arc<Config>,
}

impl<S> ModelRouting<S> {
    /// Wraps `inner` with the default configuration.
    pub fn new(inner: S) -> ModelRouting<S> {
        ModelRoutingLayer::new().layer(inner)
    }

    /// A [`ModelRoutingLayer`] to configure.
    pub fn layer() -> ModelRoutingLayer {
        ModelRoutingLayer::new()
    }

    /// The inner service.
    pub fn get_ref(&self) -> &S {
        &self.inner
    }

    /// The inner service, mutably.
    pub fn get_mut(&mut self) -> &mut S {
        &mut self.inner
    }

    /// Consumes `self`, returning the inner service.
    pub fn into_inner(self) -> S {
        self.inner
    }
}

impl<S, B, ResBody> Service<Request<B>> for ModelRouting<S>
where
    S: Service<Request<RoutedBody<B>>, Response = Response<ResBody>> + Clone,
    B: Body<Data = Bytes>,
    B::Error: Into<BoxError>,
    ResBody: Body<Data = Bytes>,
{
    type Response = Response<ResponseBody<ResBody>>;
    type Error = S::Error;
    type Future = ResponseFuture<S, B>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), S::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, request: Request<B>) -> ResponseFuture<S, B> {
        // The ready service goes with the request; a clone stays for the next.
        let clone = self.inner.clone();
        let inner = mem::replace(&mut self.inner, clone);
        ResponseFuture::new(inner, Arc::clone(&self.config), request)
    }
}
