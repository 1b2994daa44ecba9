//! The models a pool's servers serve, learned from the servers themselves.
//!
//! vLLM (and OpenAI-compatible servers like it) list on `GET /v1/models`
//! their base model and each LoRA adapter loaded, an adapter with a
//! `parent` naming its base model; adapters come and go at run time
//! (`/v1/load_lora_adapter`). [`ModelDiscovery`] polls every endpoint of
//! every pool with a period, a timeout and a bounded answer size, and hands
//! the pools' lists, whenever they change, to a callback that rebuilds the
//! rule table ([`RuleTableBuilder::discovered_models`]) and swaps it in at
//! once. An endpoint that stops answering keeps its last list for a grace
//! period, then drops out (a log line and the metrics say so).
//!
//! The pools are fixed ([`ModelDiscovery::new`]) or change while the poller
//! runs ([`ModelDiscovery::watching`]: a `tokio::sync::watch` channel fed,
//! say, with the endpoints of Kubernetes InferencePools): a new endpoint
//! is read at once, one that leaves its pool takes its list with it.
//!
//! ```no_run
//! use std::time::Duration;
//! use bbr_core::rules::{RuleTableBuilder, SharedRules, RuleTable};
//! use bbr_discovery::{ModelDiscovery, Options, Pool};
//!
//! # async fn run() {
//! let rules = SharedRules::new(RuleTable::empty());
//! let pools = vec![Pool::new("qwen-pool", ["http://10.0.0.11:8000".parse().unwrap()])];
//! let options = Options::default().period(Duration::from_secs(10));
//! let served = rules.clone();
//! ModelDiscovery::new(pools, options).spawn(move |lists| {
//!     let builder = lists
//!         .iter()
//!         .fold(RuleTableBuilder::new(), |b, (pool, models)| b.discovered_models(pool, models.clone()));
//!     match builder.build() {
//!         Ok(table) => served.replace(table),
//!         Err(e) => eprintln!("discovered models refused: {e}"),
//!     }
//! });
//! # }
//! ```
//!
//! Metrics (label `pool`): `bbr_discovery_polls_total` (label `outcome`:
//! `ok` or `error`), `bbr_discovery_endpoints_up` and
//! `bbr_discovered_models`.
//!
//! [`RuleTableBuilder::discovered_models`]: bbr_core::rules::RuleTableBuilder::discovered_models

use std::{
    collections::{BTreeMap, HashMap},
    fmt,
    time::Duration,
};

use bbr_core::rules::discovery::{ServedModel, parse_model_list};
use bytes::Bytes;
use http::{Request, Uri};
use http_body_util::{BodyExt, Empty, Limited};
use hyper_util::{
    client::legacy::{Client, connect::HttpConnector},
    rt::TokioExecutor,
};
use tokio::{sync::watch, time::Instant};

/// Polls of a pool endpoint's model list (labels `pool`, `outcome`).
pub const POLLS_TOTAL: &str = "bbr_discovery_polls_total";
/// Endpoints of a pool whose list is in force (answered within the grace
/// period; label `pool`).
pub const ENDPOINTS_UP: &str = "bbr_discovery_endpoints_up";
/// Models a pool serves, as discovered (label `pool`).
pub const DISCOVERED_MODELS: &str = "bbr_discovered_models";

/// Registers the help text of the metrics above with the installed
/// recorder.
pub fn describe() {
    metrics::describe_counter!(
        POLLS_TOTAL,
        "Polls of a pool endpoint's /v1/models, by pool and outcome."
    );
    metrics::describe_gauge!(
        ENDPOINTS_UP,
        "Endpoints of a pool whose model list is in force."
    );
    metrics::describe_gauge!(DISCOVERED_MODELS, "Models a pool serves, as discovered.");
}

/// A pool and the base URLs of its servers (`http://host:port`; the list
/// is read from `/v1/models` under each).
#[derive(Clone, Debug)]
pub struct Pool {
    name: String,
    endpoints: Vec<Uri>,
}

impl Pool {
    /// The pool `name`, served by `endpoints`.
    pub fn new(name: impl Into<String>, endpoints: impl IntoIterator<Item = Uri>) -> Pool {
        Pool {
            name: name.into(),
            endpoints: endpoints.into_iter().collect(),
        }
    }

    /// The pool's name.
    pub fn name(&self) -> &str {
        &self.name
    }
}

/// How often and how patiently the lists are read.
#[derive(Clone, Copy, Debug)]
pub struct Options {
    period: Duration,
    timeout: Duration,
    max_body: usize,
    grace: Duration,
}

impl Default for Options {
    /// Every 30 s, 5 s to answer, 1 MiB at most, a silent endpoint's list
    /// kept for 90 s.
    fn default() -> Self {
        Options {
            period: Duration::from_secs(30),
            timeout: Duration::from_secs(5),
            max_body: 1 << 20,
            grace: Duration::from_secs(90),
        }
    }
}

impl Options {
    /// The time between two polls of an endpoint (at least 10 ms).
    #[must_use]
    pub fn period(mut self, period: Duration) -> Self {
        self.period = period.max(Duration::from_millis(10));
        self
    }

    /// The time an endpoint has to answer, body included.
    #[must_use]
    pub fn timeout(mut self, timeout: Duration) -> Self {
        self.timeout = timeout;
        self
    }

    /// The largest model list read; a longer answer is a failed poll.
    #[must_use]
    pub fn max_body(mut self, bytes: usize) -> Self {
        self.max_body = bytes;
        self
    }

    /// How long a list stays in force after its endpoint last answered.
    #[must_use]
    pub fn grace(mut self, grace: Duration) -> Self {
        self.grace = grace;
        self
    }
}

/// What is known of one endpoint.
#[derive(Debug, Default)]
struct Endpoint {
    models: Vec<ServedModel>,
    /// When it last answered; `None`: never, or dropped out.
    answered: Option<Instant>,
}

/// Where the pools come from: fixed at start, or a channel whose value
/// changes (endpoints read from the Kubernetes API, say).
#[derive(Debug)]
enum Pools {
    Fixed(Vec<Pool>),
    Watched(watch::Receiver<Vec<Pool>>),
}

/// An endpoint of a pool, the key of what is known of it.
type EndpointKey = (String, Uri);

/// The poller: see the [crate docs](crate).
pub struct ModelDiscovery {
    pools: Pools,
    options: Options,
    client: Client<HttpConnector, Empty<Bytes>>,
}

impl fmt::Debug for ModelDiscovery {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ModelDiscovery")
            .field("pools", &self.pools)
            .field("options", &self.options)
            .finish_non_exhaustive()
    }
}

/// The model lists by pool, as handed to the callback: each pool's
/// answering endpoints' lists joined (a model once).
pub type Lists = BTreeMap<String, Vec<ServedModel>>;

impl ModelDiscovery {
    /// A poller of `pools`, fixed for its lifetime.
    pub fn new(pools: Vec<Pool>, options: Options) -> ModelDiscovery {
        ModelDiscovery::with(Pools::Fixed(pools), options)
    }

    /// A poller of the pools `pools` holds, which may change while it
    /// runs: a new endpoint is read at once (not at the next period), an
    /// endpoint no longer listed is forgotten at once (its list leaves
    /// with it: whoever publishes the pools knows it is gone, so there is
    /// no grace period), a pool no longer listed leaves the lists. When
    /// the sender is dropped the last pools stay.
    pub fn watching(pools: watch::Receiver<Vec<Pool>>, options: Options) -> ModelDiscovery {
        ModelDiscovery::with(Pools::Watched(pools), options)
    }

    fn with(pools: Pools, options: Options) -> ModelDiscovery {
        let mut connector = HttpConnector::new();
        connector.set_connect_timeout(Some(options.timeout));
        connector.set_nodelay(true);
        let client = Client::builder(TokioExecutor::new())
            .pool_idle_timeout(options.period.saturating_mul(2))
            .pool_max_idle_per_host(1)
            .build(connector);
        ModelDiscovery {
            pools,
            options,
            client,
        }
    }

    /// Runs [`run`](Self::run) on the current tokio runtime.
    pub fn spawn<F>(self, apply: F) -> tokio::task::JoinHandle<()>
    where
        F: FnMut(&Lists) + Send + 'static,
    {
        tokio::spawn(self.run(apply))
    }

    /// Polls every endpoint each period, forever, and calls `apply` with
    /// every pool's list after the first round and whenever a list
    /// changes (an endpoint answered differently, dropped out, or left
    /// its pool).
    pub async fn run<F>(mut self, mut apply: F)
    where
        F: FnMut(&Lists),
    {
        let mut known: HashMap<EndpointKey, Endpoint> = HashMap::new();
        let mut last: Option<Lists> = None;
        let mut tick = tokio::time::interval(self.options.period);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            self.next_round(&mut tick).await;
            let pools = match &mut self.pools {
                Pools::Fixed(pools) => pools.clone(),
                Pools::Watched(rx) => rx.borrow_and_update().clone(),
            };
            known.retain(|(pool, uri), _| {
                pools
                    .iter()
                    .any(|p| p.name == *pool && p.endpoints.contains(uri))
            });
            self.round(&pools, &mut known).await;
            let lists = self.lists(&pools, &mut known);
            if let Some(previous) = &last {
                for gone in previous
                    .keys()
                    .filter(|p| !pools.iter().any(|q| q.name == **p))
                {
                    metrics::gauge!(ENDPOINTS_UP, "pool" => gone.clone()).set(0.0);
                    metrics::gauge!(DISCOVERED_MODELS, "pool" => gone.clone()).set(0.0);
                }
            }
            if last.as_ref() != Some(&lists) {
                apply(&lists);
                last = Some(lists);
            }
        }
    }

    /// Waits for the next period, or for the pools to change.
    async fn next_round(&mut self, tick: &mut tokio::time::Interval) {
        match &mut self.pools {
            Pools::Fixed(_) => {
                tick.tick().await;
            }
            Pools::Watched(rx) => {
                tokio::select! {
                    _ = tick.tick() => {}
                    changed = rx.changed() => {
                        if changed.is_err() {
                            // The sender is gone: the last pools stay, fixed.
                            let last = rx.borrow().clone();
                            self.pools = Pools::Fixed(last);
                        }
                    }
                }
            }
        }
    }

    /// Polls every endpoint once, at the same time.
    async fn round(&self, pools: &[Pool], known: &mut HashMap<EndpointKey, Endpoint>) {
        let mut polls = tokio::task::JoinSet::new();
        for pool in pools {
            for uri in &pool.endpoints {
                let (client, options) = (self.client.clone(), self.options);
                let key = (pool.name.clone(), uri.clone());
                let uri = models_uri(uri);
                polls.spawn(async move { (key, fetch(&client, uri, options).await) });
            }
        }
        while let Some(joined) = polls.join_next().await {
            let Ok(((pool, uri), result)) = joined else {
                continue;
            };
            match result {
                Ok(models) => {
                    metrics::counter!(POLLS_TOTAL, "pool" => pool.clone(), "outcome" => "ok")
                        .increment(1);
                    let first = known
                        .get(&(pool.clone(), uri.clone()))
                        .is_none_or(|e| e.answered.is_none());
                    if first {
                        tracing::info!(%pool, endpoint = %uri, models = models.len(), "model list read");
                    }
                    let endpoint = known.entry((pool, uri)).or_default();
                    endpoint.models = models;
                    endpoint.answered = Some(Instant::now());
                }
                Err(error) => {
                    metrics::counter!(POLLS_TOTAL, "pool" => pool.clone(), "outcome" => "error")
                        .increment(1);
                    tracing::debug!(%pool, endpoint = %uri, %error, "model list not read");
                }
            }
        }
    }

    /// Every pool's list from what its endpoints answered within the grace
    /// period; an endpoint past it drops out (logged once).
    fn lists(&self, pools: &[Pool], known: &mut HashMap<EndpointKey, Endpoint>) -> Lists {
        let now = Instant::now();
        let mut lists = Lists::new();
        for pool in pools {
            let mut models: Vec<ServedModel> = Vec::new();
            let mut up = 0;
            for uri in &pool.endpoints {
                let Some(endpoint) = known.get_mut(&(pool.name.clone(), uri.clone())) else {
                    continue;
                };
                let Some(answered) = endpoint.answered else {
                    continue;
                };
                if now.duration_since(answered) > self.options.grace {
                    tracing::warn!(
                        pool = %pool.name,
                        endpoint = %uri,
                        grace_secs = self.options.grace.as_secs_f64(),
                        "endpoint dropped out of model discovery: no answer within the grace period"
                    );
                    *endpoint = Endpoint::default();
                    continue;
                }
                up += 1;
                for model in &endpoint.models {
                    if !models.iter().any(|m| m.id == model.id) {
                        models.push(model.clone());
                    }
                }
            }
            metrics::gauge!(ENDPOINTS_UP, "pool" => pool.name.clone()).set(f64::from(up));
            metrics::gauge!(DISCOVERED_MODELS, "pool" => pool.name.clone())
                .set(models.len() as f64);
            if up > 0 {
                lists.insert(pool.name.clone(), models);
            }
        }
        lists
    }
}

/// `base` with the path `/v1/models` (under any path it has).
fn models_uri(base: &Uri) -> Uri {
    let path = base.path().trim_end_matches('/');
    let mut parts = base.clone().into_parts();
    parts.path_and_query = format!("{path}/v1/models").parse().ok();
    Uri::from_parts(parts).unwrap_or_else(|_| base.clone())
}

/// Why a poll failed.
#[derive(Debug)]
enum PollError {
    Timeout,
    Http(String),
    Status(http::StatusCode),
    List(String),
}

impl fmt::Display for PollError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            PollError::Timeout => f.write_str("no answer within the timeout"),
            PollError::Http(e) => write!(f, "request failed: {e}"),
            PollError::Status(s) => write!(f, "answered {s}"),
            PollError::List(e) => write!(f, "{e}"),
        }
    }
}

async fn fetch(
    client: &Client<HttpConnector, Empty<Bytes>>,
    uri: Uri,
    options: Options,
) -> Result<Vec<ServedModel>, PollError> {
    let request = Request::get(uri)
        .header(http::header::ACCEPT, "application/json")
        .body(Empty::new())
        .map_err(|e| PollError::Http(e.to_string()))?;
    let read = async {
        let response = client
            .request(request)
            .await
            .map_err(|e| PollError::Http(e.to_string()))?;
        if !response.status().is_success() {
            return Err(PollError::Status(response.status()));
        }
        let body = Limited::new(response.into_body(), options.max_body)
            .collect()
            .await
            .map_err(|e| PollError::Http(e.to_string()))?
            .to_bytes();
        parse_model_list(&body).map_err(|e| PollError::List(e.to_string()))
    };
    tokio::time::timeout(options.timeout, read)
        .await
        .map_err(|_| PollError::Timeout)?
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_list_is_read_under_the_base_path() {
        let uri = |s: &str| models_uri(&s.parse().unwrap()).to_string();
        assert_eq!(
            uri("http://10.0.0.1:8000"),
            "http://10.0.0.1:8000/v1/models"
        );
        assert_eq!(uri("http://h:1/"), "http://h:1/v1/models");
        assert_eq!(uri("http://h:1/pool-a/"), "http://h:1/pool-a/v1/models");
    }
}
