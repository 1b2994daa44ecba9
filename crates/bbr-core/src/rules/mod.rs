//! The rule table: model → pool, criticality or priority, weighted model
//! rewrite, LoRA adapter → base model, and the headers a decision sets.
//!
//! A [`RuleTable`] is compiled once from a YAML or JSON file (schema in
//! `docs/rules.md`) and is then immutable; [`SharedRules`] swaps a new one
//! in atomically while requests keep reading the old one.
//!
//! Precedence, first hit wins: exact match (hash map) → longest prefix →
//! globs in file order → regular expressions in file order → `default`.
//! Exact and prefix lookups do not slow down as rules are added; globs and
//! regexes are each matched in one pass of a compiled set.
//!
//! ```
//! use bbr_core::rules::{Criticality, RuleTable};
//!
//! let table = RuleTable::from_yaml(r#"
//! rules:
//!   - name: chatbot
//!     match: { model: { exact: chatbot } }
//!     pool: gemma3
//!     criticality: Critical
//!   - name: llamas
//!     match: { model: { prefix: "llama-" } }
//!     pool: llama
//! default: { action: reject }
//! "#).unwrap();
//!
//! let decision = table.route("chatbot", None).unwrap().unwrap();
//! assert_eq!(decision.pool(), Some("gemma3"));
//! assert_eq!(decision.criticality(), Some(Criticality::Critical));
//! let headers: Vec<(&str, &str)> = decision
//!     .headers()
//!     .map(|(n, v)| (n.as_str(), v.to_str().unwrap()))
//!     .collect();
//! assert_eq!(headers, [("x-gateway-model-name", "chatbot"), ("x-gateway-inference-pool", "gemma3")]);
//!
//! assert_eq!(table.route("llama-3-8b", None).unwrap().unwrap().rule(), Some("llamas"));
//! let err = table.route("gpt-4", None).unwrap_err();
//! assert_eq!(err.kind(), bbr_core::ErrorKind::ModelNotFound);
//! ```

mod compile;
pub mod discovery;
mod error;
mod glob;
mod matcher;
mod pick;
mod rewrite;
mod schema;
mod shared;
#[cfg(test)]
mod tests;

use std::{fmt, path::Path, sync::Arc};

use http::{HeaderName, HeaderValue};

use crate::{Error, ErrorKind, Model};

use compile::{BaseModel, Class, Fallback, Route};
use matcher::Matcher;
use pick::{Rng, stable_hash};

/// A map keyed by model name, looked up once or twice a request: a fast
/// hash with a random seed (the keys come from the configuration; a lookup
/// of a client's model cannot change the table).
pub(crate) type ModelMap<V> = std::collections::HashMap<Box<str>, V, foldhash::fast::RandomState>;

pub use compile::{MAX_NESTING, RuleTableBuilder, is_reserved_header};
pub use error::ConfigError;
pub(crate) use rewrite::rewrite_body_with;
pub use rewrite::{ContentLength, RewrittenBody, rewrite_body};
pub use shared::SharedRules;

/// The header carrying the model as the client sent it.
pub const MODEL_NAME_HEADER: &str = "x-gateway-model-name";
/// The header carrying the base model of a LoRA adapter (or of a base model: itself).
pub const BASE_MODEL_HEADER: &str = "x-gateway-base-model-name";
/// The header carrying the pool a rule names.
pub const POOL_HEADER: &str = "x-gateway-inference-pool";
/// The endpoint picker's header naming the model to send upstream in place
/// of the client's. bbr never sets it; a table whose rules rewrite the model
/// (weighted `targets`) lists it among its
/// [`managed_headers`](RuleTable::managed_headers), so that a client cannot
/// undo bbr's rewrite.
pub const MODEL_REWRITE_HEADER: &str = "x-gateway-model-name-rewrite";

/// How a pool's scheduler treats a request under load (the InferenceModel
/// / InferenceObjective criticality).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Criticality {
    /// Served first, shed last.
    Critical,
    /// The default.
    Standard,
    /// Shed first when the pool is saturated.
    Sheddable,
}

impl Criticality {
    /// `"Critical"`, `"Standard"` or `"Sheddable"`, as written in the configuration.
    pub const fn as_str(self) -> &'static str {
        match self {
            Criticality::Critical => "Critical",
            Criticality::Standard => "Standard",
            Criticality::Sheddable => "Sheddable",
        }
    }
}

impl fmt::Display for Criticality {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Where a request goes: the outcome of [`RuleTable::route`].
#[derive(Clone, Debug)]
pub struct RouteMatch {
    route: Arc<Route>,
    /// The rewrite target, when it differs from the original.
    target: Option<Arc<str>>,
    base: Option<Arc<BaseModel>>,
    /// The `x-gateway-model-name` value: the original model (kept once,
    /// not copied again).
    model_value: HeaderValue,
}

/// The header names every decision may set, built once.
static MODEL_HEADER_NAME: HeaderName = HeaderName::from_static(MODEL_NAME_HEADER);
static BASE_HEADER_NAME: HeaderName = HeaderName::from_static(BASE_MODEL_HEADER);
static POOL_HEADER_NAME: HeaderName = HeaderName::from_static(POOL_HEADER);

impl RouteMatch {
    /// The name of the rule that matched; `None` when the table's default
    /// (or the no-rules behaviour) decided.
    pub fn rule(&self) -> Option<&str> {
        self.route.name.as_deref()
    }

    /// The pool (InferencePool, backend) the request goes to, when named.
    pub fn pool(&self) -> Option<&str> {
        self.route.pool.as_ref().map(|(name, _)| &**name)
    }

    /// The criticality, unless the route gives a [`priority`](Self::priority)
    /// instead. Rules without either are [`Criticality::Standard`].
    pub fn criticality(&self) -> Option<Criticality> {
        match self.route.class {
            Some(Class::Criticality(c)) => Some(c),
            _ => None,
        }
    }

    /// The integer priority, when the route gives one instead of a criticality.
    pub fn priority(&self) -> Option<i32> {
        match self.route.class {
            Some(Class::Priority(p)) => Some(p),
            _ => None,
        }
    }

    /// The model to send upstream: the rewrite target, or the original.
    pub fn model(&self) -> &str {
        match &self.target {
            Some(target) => target,
            None => self.original_model(),
        }
    }

    /// The model as the client sent it.
    pub fn original_model(&self) -> &str {
        // Built from a `&str`: never fails.
        std::str::from_utf8(self.model_value.as_bytes()).unwrap_or_default()
    }

    /// Whether the body must be rewritten ([`model`](Self::model) differs
    /// from [`original_model`](Self::original_model)); see [`rewrite_body`].
    pub fn is_rewrite(&self) -> bool {
        self.target.is_some()
    }

    /// The base model of the model sent upstream: its base when it is a
    /// LoRA adapter, itself when it is a base model, `None` when unknown.
    pub fn base_model(&self) -> Option<&str> {
        self.base.as_deref().map(|base| &*base.name)
    }

    /// Every header to set, in order: `x-gateway-model-name` (the original
    /// model), `x-gateway-base-model-name` (when known),
    /// `x-gateway-inference-pool` (when a pool is named), then the rule's
    /// `set_headers`. Adapters remove [`RuleTable::managed_headers`] from
    /// the request before setting these.
    ///
    /// Nothing is allocated: the names are the table's, the values the
    /// route's and the body's.
    pub fn headers(&self) -> RouteHeaders<'_> {
        RouteHeaders {
            decision: self,
            next: Next::Model,
            set: self.route.set_headers.iter(),
        }
    }
}

/// The headers a [`RouteMatch`] sets, in order: see
/// [`RouteMatch::headers`].
#[derive(Clone, Debug)]
pub struct RouteHeaders<'a> {
    decision: &'a RouteMatch,
    next: Next,
    set: std::slice::Iter<'a, (HeaderName, HeaderValue)>,
}

/// The next of the three `x-gateway-*` headers [`RouteHeaders`] yields.
#[derive(Clone, Copy, Debug)]
enum Next {
    Model,
    Base,
    Pool,
    Set,
}

impl<'a> Iterator for RouteHeaders<'a> {
    type Item = (&'a HeaderName, &'a HeaderValue);

    fn next(&mut self) -> Option<Self::Item> {
        let decision = self.decision;
        loop {
            match self.next {
                Next::Model => {
                    self.next = Next::Base;
                    return Some((&MODEL_HEADER_NAME, &decision.model_value));
                }
                Next::Base => {
                    self.next = Next::Pool;
                    if let Some(base) = &decision.base {
                        return Some((&BASE_HEADER_NAME, &base.value));
                    }
                }
                Next::Pool => {
                    self.next = Next::Set;
                    if let Some((_, pool)) = &decision.route.pool {
                        return Some((&POOL_HEADER_NAME, pool));
                    }
                }
                Next::Set => return self.set.next().map(|(name, value)| (name, value)),
            }
        }
    }

    fn size_hint(&self) -> (usize, Option<usize>) {
        let decision = self.decision;
        let fixed = match self.next {
            Next::Model => {
                1 + decision.base.is_some() as usize + decision.route.pool.is_some() as usize
            }
            Next::Base => decision.base.is_some() as usize + decision.route.pool.is_some() as usize,
            Next::Pool => decision.route.pool.is_some() as usize,
            Next::Set => 0,
        };
        let len = fixed + self.set.len();
        (len, Some(len))
    }
}

impl ExactSizeIterator for RouteHeaders<'_> {}

impl std::iter::FusedIterator for RouteHeaders<'_> {}

/// A compiled, immutable rule table. `Send + Sync`; share it in an `Arc`
/// or a [`SharedRules`].
pub struct RuleTable {
    routes: Vec<Arc<Route>>,
    matcher: Matcher,
    base_models: ModelMap<Arc<BaseModel>>,
    fallback: Fallback,
    managed: Box<[HeaderName]>,
    /// The first bytes of `managed`.
    managed_first: crate::first_bytes::FirstBytes,
    rng: Rng,
    /// Some route picks among weighted targets.
    weighted: bool,
    /// The models the pools said they serve.
    discovered: Vec<discovery::DiscoveredModel>,
}

impl RuleTable {
    pub(crate) fn from_parts(
        routes: Vec<Arc<Route>>,
        matcher: Matcher,
        base_models: ModelMap<Arc<BaseModel>>,
        fallback: Fallback,
        managed: Box<[HeaderName]>,
        rng: Rng,
    ) -> RuleTable {
        let weighted = routes.iter().any(|r| r.targets.is_some())
            || matches!(&fallback, Fallback::Route(r) if r.targets.is_some());
        let managed_first = crate::first_bytes::FirstBytes::of(managed.iter().map(|m| m.as_str()));
        RuleTable {
            routes,
            matcher,
            base_models,
            fallback,
            managed,
            managed_first,
            rng,
            weighted,
            discovered: Vec::new(),
        }
    }

    pub(crate) fn with_discovered(mut self, discovered: Vec<discovery::DiscoveredModel>) -> Self {
        self.discovered = discovered;
        self
    }

    /// A table with no rules, behaving as the Go body-based router: every
    /// model is routed, with the model copied to `x-gateway-model-name`
    /// and no pool.
    ///
    /// ```
    /// use bbr_core::rules::RuleTable;
    ///
    /// let decision = RuleTable::empty().route("any-model", None).unwrap().unwrap();
    /// assert_eq!(decision.pool(), None);
    /// assert_eq!(decision.headers().next().unwrap().1, "any-model");
    /// ```
    pub fn empty() -> RuleTable {
        let mut managed =
            [MODEL_NAME_HEADER, BASE_MODEL_HEADER, POOL_HEADER].map(HeaderName::from_static);
        managed.sort_unstable_by(|a, b| a.as_str().cmp(b.as_str()));
        RuleTable::from_parts(
            Vec::new(),
            Matcher::default(),
            ModelMap::default(),
            Fallback::Route(Arc::new(Route::default())),
            managed.into(),
            Rng::from_entropy(),
        )
    }

    /// A builder, to combine a rules file with Go router ConfigMaps or to seed the weighted choice.
    pub fn builder() -> RuleTableBuilder {
        RuleTableBuilder::new()
    }

    /// Loads a rules file: JSON when its name ends in `.json`, YAML
    /// otherwise (`.yaml`, `.yml`, or a mounted ConfigMap key).
    ///
    /// ```
    /// use std::path::Path;
    /// use bbr_core::rules::RuleTable;
    ///
    /// let table = RuleTable::from_path(Path::new("../../examples/config/gateway.yaml")).unwrap();
    /// let decision = table.route("recommender", None).unwrap().unwrap();
    /// assert_eq!(decision.pool(), Some("deepseek-r1"));
    ///
    /// let err = RuleTable::from_path(Path::new("no-such-file.yaml")).unwrap_err();
    /// assert_eq!(err.file(), Some(Path::new("no-such-file.yaml")));
    /// ```
    pub fn from_path(path: &Path) -> Result<RuleTable, ConfigError> {
        RuleTableBuilder::new().rules_path(path).build()
    }

    /// Compiles a rules configuration written in YAML.
    pub fn from_yaml(text: &str) -> Result<RuleTable, ConfigError> {
        RuleTableBuilder::new().rules_yaml(text).build()
    }

    /// Compiles a rules configuration written in JSON.
    ///
    /// ```
    /// use bbr_core::rules::RuleTable;
    ///
    /// let table = RuleTable::from_json(r#"{
    ///   "rules": [{"name": "sql", "match": {"model": {"exact": "sql"}},
    ///              "targets": [{"model": "sql-lora", "weight": 1}]}],
    ///   "base_models": [{"base_model": "qwen", "adapters": ["sql-lora"]}],
    ///   "default": {"action": "pass"}
    /// }"#).unwrap();
    /// let decision = table.route("sql", Some(b"request-id-1")).unwrap().unwrap();
    /// assert!(decision.is_rewrite());
    /// assert_eq!((decision.model(), decision.base_model()), ("sql-lora", Some("qwen")));
    /// assert!(table.route("other", None).unwrap().is_none());
    /// ```
    pub fn from_json(text: &str) -> Result<RuleTable, ConfigError> {
        RuleTableBuilder::new().rules_json(text).build()
    }

    /// The same table with its random choice among weighted targets seeded
    /// (requests with a request key are not affected: they hash).
    #[must_use]
    pub fn with_seed(mut self, seed: u64) -> RuleTable {
        self.rng = Rng::seeded(seed);
        self
    }

    /// Decides where a request for `model` goes.
    ///
    /// `request_key` (for example the `x-request-id` header) makes the
    /// choice among weighted targets stable: the same key always gets the
    /// same target, on every replica. Without it the choice is random.
    ///
    /// - `Ok(Some(decision))`: route.
    /// - `Ok(None)`: no rule matched and the default is `pass`: forward the
    ///   request unchanged, with no routing headers.
    /// - `Err(e)`: [`ErrorKind::ModelNotFound`] when no rule matched and the
    ///   default rejects; [`ErrorKind::InvalidModel`] when `model` is empty
    ///   or holds a control character (it could not be sent in a header).
    pub fn route(
        &self,
        model: &str,
        request_key: Option<&[u8]>,
    ) -> Result<Option<RouteMatch>, Error> {
        crate::progress::check_model_name(model)?;
        let model_value =
            HeaderValue::from_str(model).map_err(|_| not_a_header_value(model.as_bytes()))?;
        self.decide_with(model, model_value, request_key)
    }

    /// [`route`](Self::route) for a model an extractor found: the
    /// `X-Gateway-Model-Name` value shares the model's bytes (a slice of
    /// the body) instead of copying them.
    pub fn route_model(
        &self,
        model: &Model,
        request_key: Option<&[u8]>,
    ) -> Result<Option<RouteMatch>, Error> {
        // The extractor that found the model checked it already, by the
        // same rules as `decide`. Checked again cheaply all the same: the
        // header value refuses C0 and DEL, and a non-ASCII model goes
        // through the one model check (C1 controls).
        let text = model.as_str();
        let model_value = HeaderValue::from_maybe_shared(model.as_bytes().clone())
            .map_err(|_| not_a_header_value(model.as_bytes()))?;
        if !text.is_ascii() {
            crate::progress::check_model_name(text)?;
        }
        self.decide_with(text, model_value, request_key)
    }

    fn decide_with(
        &self,
        model: &str,
        model_value: HeaderValue,
        request_key: Option<&[u8]>,
    ) -> Result<Option<RouteMatch>, Error> {
        let (route, by_base) = match self.matcher.find(model) {
            Some((rule, _)) => match self.routes.get(rule as usize) {
                Some(route) => (route, false),
                None => return Err(not_found(model)),
            },
            None => match self.base_route(model) {
                Some(route) => (route, true),
                None => match &self.fallback {
                    Fallback::Reject => return Err(not_found(model)),
                    Fallback::Pass => return Ok(None),
                    Fallback::Route(route) => (route, false),
                },
            },
        };
        let (target, base) = match &route.targets {
            // An adapter routed by its base model's rule keeps its name:
            // the rule's targets rewrite the base model, not its adapters.
            _ if by_base => (None, self.base_of(model)),
            Some(targets) => {
                let draw = match request_key {
                    Some(key) => stable_hash(key),
                    None => self.rng.next_u64(),
                };
                let chosen = targets
                    .targets
                    .get(targets.weights.pick(draw))
                    .ok_or_else(|| not_found(model))?;
                if *chosen.model == *model {
                    (None, self.base_of(model))
                } else {
                    (Some(Arc::clone(&chosen.model)), chosen.base.clone())
                }
            }
            None => (None, self.base_of(model)),
        };
        Ok(Some(RouteMatch {
            route: Arc::clone(route),
            target,
            base,
            model_value,
        }))
    }

    /// The base model entry of `model`.
    fn base_of(&self, model: &str) -> Option<Arc<BaseModel>> {
        self.base_models.get(model).cloned()
    }

    /// The rule of `model`'s base model, for an adapter no rule matches.
    fn base_route(&self, model: &str) -> Option<&Arc<Route>> {
        let base = self.base_models.get(model)?;
        if *base.name == *model {
            return None;
        }
        let (rule, _) = self.matcher.find(&base.name)?;
        self.routes.get(rule as usize)
    }

    /// Every header name a decision of this table can set, sorted: the
    /// three `x-gateway-*` headers, every `set_headers` name, and
    /// [`MODEL_REWRITE_HEADER`] when a rule rewrites the model. Adapters
    /// remove these from every incoming request, also when no model is
    /// found, so that a client cannot spoof them.
    pub fn managed_headers(&self) -> &[HeaderName] {
        &self.managed
    }

    #[inline]
    pub(crate) fn managed_first_bytes(&self) -> crate::first_bytes::FirstBytes {
        self.managed_first
    }

    /// Whether a decision of this table can use a request key: some rule
    /// picks among weighted targets. When not, adapters need not look the
    /// key up.
    ///
    /// ```
    /// use bbr_core::rules::RuleTable;
    ///
    /// assert!(!RuleTable::empty().uses_request_key());
    /// let table = RuleTable::from_yaml(
    ///     "rules: [{name: ab, match: {model: {exact: m}}, targets: [{model: a, weight: 1}, {model: b, weight: 1}]}]",
    /// ).unwrap();
    /// assert!(table.uses_request_key());
    /// ```
    pub fn uses_request_key(&self) -> bool {
        self.weighted
    }

    /// The base model of `model`: its base when it is a known LoRA
    /// adapter, itself when it is a known base model, `None` otherwise.
    pub fn base_model(&self, model: &str) -> Option<&str> {
        self.base_models.get(model).map(|b| &*b.name)
    }

    /// The models a client can name by their exact name, sorted, each with
    /// the pool its rule names (`None` when the rule names none). Prefix,
    /// glob and regex rules match names no list can give, and are left
    /// out; so is the default.
    pub fn exact_models(&self) -> Vec<(&str, Option<&str>)> {
        let mut models: Vec<(&str, Option<&str>)> = self
            .matcher
            .exact
            .iter()
            .map(|(model, &rule)| {
                let pool = self.routes.get(rule as usize).and_then(|r| r.pool.as_ref());
                (&**model, pool.map(|(name, _)| &**name))
            })
            .collect();
        models.sort_unstable();
        models
    }

    /// `GET /v1/models` answered from the table: the OpenAI list format,
    /// one entry per [exact model](Self::exact_models), `owned_by` its pool
    /// (or `bbr`), then each model the pools said they serve
    /// ([`RuleTableBuilder::discovered_models`]) that the table routes
    /// (once, `owned_by` the pool it routes to, else the pool that serves
    /// it; an adapter with its `parent`).
    ///
    /// ```
    /// use bbr_core::rules::RuleTable;
    ///
    /// let table = RuleTable::from_yaml(
    ///     "rules: [{name: c, match: {model: {exact: chatbot}}, pool: gemma3}]\ndefault: {action: reject}",
    /// ).unwrap();
    /// let list: serde_json::Value = serde_json::from_str(&table.models_json()).unwrap();
    /// assert_eq!(list["object"], "list");
    /// assert_eq!(list["data"][0]["id"], "chatbot");
    /// assert_eq!(list["data"][0]["owned_by"], "gemma3");
    /// ```
    pub fn models_json(&self) -> String {
        fn entry(out: &mut String, id: &str, owner: &str, parent: Option<&str>) {
            if !out.ends_with('[') {
                out.push(',');
            }
            out.push_str("{\"id\":");
            crate::error::push_json_string(out, id);
            out.push_str(",\"object\":\"model\",\"created\":0,\"owned_by\":");
            crate::error::push_json_string(out, owner);
            if let Some(parent) = parent {
                out.push_str(",\"parent\":");
                crate::error::push_json_string(out, parent);
            }
            out.push('}');
        }
        let mut out = String::from("{\"object\":\"list\",\"data\":[");
        let exact = self.exact_models();
        let mut listed: std::collections::HashSet<&str> = exact.iter().map(|(m, _)| *m).collect();
        for (model, pool) in &exact {
            entry(&mut out, model, pool.unwrap_or("bbr"), None);
        }
        for model in &self.discovered {
            if !listed.insert(&model.id) {
                continue;
            }
            if let Ok(Some(route)) = self.route(&model.id, None) {
                let owner = route.pool().unwrap_or(&model.pool);
                entry(&mut out, &model.id, owner, model.parent.as_deref());
            }
        }
        out.push_str("]}");
        out
    }

    /// The number of rules (not counting the default).
    pub fn len(&self) -> usize {
        self.routes.len()
    }

    /// Whether the table has no rules.
    pub fn is_empty(&self) -> bool {
        self.routes.is_empty()
    }
}

impl Default for RuleTable {
    fn default() -> Self {
        RuleTable::empty()
    }
}

impl fmt::Debug for RuleTable {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let default = match &self.fallback {
            Fallback::Reject => "reject",
            Fallback::Pass => "pass",
            Fallback::Route(_) => "route",
        };
        f.debug_struct("RuleTable")
            .field("rules", &self.routes.len())
            .field("exact", &self.matcher.exact.len())
            .field("prefix", &self.matcher.prefix.len())
            .field("glob", &self.matcher.glob.as_ref().map_or(0, |g| g.len()))
            .field("regex", &self.matcher.regex.as_ref().map_or(0, |r| r.len()))
            .field("base_models", &self.base_models.len())
            .field("default", &default)
            .finish()
    }
}

/// A checked model that `http` still refuses as a header value (it cannot
/// happen: the check is stricter than `http`'s).
#[cold]
fn not_a_header_value(model: &[u8]) -> Error {
    Error::with_excerpt(
        ErrorKind::InvalidModel,
        0,
        "`model` cannot be a header value",
        model,
    )
}

#[cold]
fn not_found(model: &str) -> Error {
    Error::with_excerpt(
        ErrorKind::ModelNotFound,
        0,
        "no rule matches the model",
        model.as_bytes(),
    )
}
