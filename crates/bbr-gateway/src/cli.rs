//! The `bbr-gateway` binary as a function: its flags ([`Flags`]) and
//! [`run`], which starts the pools (simulated ones unless `--pool NAME=URL`
//! names servers), the listeners and the rules reload, then serves until
//! SIGINT or SIGTERM and drains.
//!
//! ```no_run
//! use clap::Parser;
//!
//! # async fn start() -> std::process::ExitCode {
//! let flags = bbr_gateway::cli::Flags::parse_from(["bbr-gateway", "--listen", "127.0.0.1:8080"]);
//! bbr_gateway::cli::run(flags).await
//! # }
//! ```

use std::{io::IsTerminal, net::SocketAddr, path::PathBuf, process::ExitCode, time::Duration};

use bbr_core::rules::{RuleTable, SharedRules};
use bbr_core::{Decider, Policy};
use bbr_listen::limits;
use bbr_tower::{Admission, HoldBudget};
use clap::Parser;
use metrics_exporter_prometheus::{Matcher, PrometheusBuilder, PrometheusHandle};
use tokio::net::TcpListener;

use crate::{
    Admin, Endpoint, Front, Readiness, ServeOptions, Upstream, UpstreamOptions,
    log::{BatchWriter, LineFormat},
    simulated::SimulatedPool,
};

/// Routes OpenAI-style requests on the `model` in their body to model pools.
///
/// Without `--rules`, the demo's table built in; without `--pool NAME=URL`,
/// simulated pools in the same process.
#[derive(Clone, Debug, Parser)]
#[command(name = "bbr-gateway", version)]
pub struct Flags {
    /// Address to listen on.
    #[arg(long, default_value = "127.0.0.1:8080")]
    pub listen: SocketAddr,
    /// The rule table (YAML or JSON), reloaded when the file changes.
    /// Default: the demo's table, built into the binary (`chatbot` -> pool
    /// gemma3, `recommender` -> pool deepseek-r1, any other model refused).
    #[arg(long)]
    pub rules: Option<PathBuf>,
    /// How often the rules file is checked for changes, in milliseconds
    /// (0: never).
    #[arg(long, default_value_t = 1000)]
    pub rules_poll_ms: u64,
    /// A pool (repeatable): NAME for a simulated pool, NAME=URL for a real
    /// OpenAI-compatible server (http://host:port); several URLs for one
    /// name are balanced.
    #[arg(long = "pool", value_parser = parse_pool, default_values = ["gemma3", "deepseek-r1"])]
    pub pools: Vec<(String, Option<Endpoint>)>,
    /// How long a connection to a pool's server may take, in milliseconds.
    #[arg(long, default_value_t = 5000)]
    pub upstream_connect_timeout_ms: u64,
    /// How long a pool's server may take to begin its answer, in seconds.
    #[arg(long, default_value_t = 300)]
    pub upstream_response_header_timeout_secs: u64,
    /// Extraction policy: strict (scan the whole body) or fast.
    #[arg(long, default_value = "strict")]
    pub policy: Policy,
    /// Body bytes all requests may hold, together, while they wait for
    /// their routing decision, in MiB; past it a request gets 503.
    #[arg(long, default_value_t = 256)]
    pub hold_budget_mib: u64,
    /// How long a body may send nothing before its decision, in
    /// milliseconds; past it the request gets 408.
    #[arg(long, default_value_t = 30_000)]
    pub body_idle_timeout_ms: u64,
    /// Pause between two streamed tokens of a simulated pool, in milliseconds.
    #[arg(long, default_value_t = 20)]
    pub token_delay_ms: u64,
    /// The most client connections served at once. Default: what the
    /// descriptor limit (raised to its hard limit at start) leaves, two
    /// descriptors a connection (the client's and one to a pool).
    #[arg(long)]
    pub max_connections: Option<usize>,
    /// How long a client may take, from the moment its connection is
    /// accepted, to send a complete request head (or the HTTP/2 preface),
    /// in seconds; past it the connection is closed.
    #[arg(long, default_value_t = 10)]
    pub header_read_timeout_secs: u64,
    /// How long an HTTP/1.1 keep-alive connection may wait for its next
    /// request's complete head after an answer, in seconds (nginx's
    /// `keepalive_timeout`, 75 s, is the default).
    #[arg(long, default_value_t = 75)]
    pub idle_timeout_secs: u64,
    /// Remove every client header whose name starts with PREFIX, besides
    /// the headers the gateway itself sets (always removed). Repeatable.
    #[arg(long, value_name = "PREFIX")]
    pub strip_header_prefix: Vec<String>,
    /// On SIGINT or SIGTERM, how long open requests (token streams) may
    /// take to finish, in seconds.
    #[arg(long, default_value_t = 30)]
    pub drain_timeout_secs: u64,
    /// The most requests in flight a pool (0: no limit). At the limit,
    /// Sheddable requests get 429, Standard ones wait (see
    /// --pool-queue-timeout-ms), Critical ones go up to 1.5 times the limit.
    #[arg(long, default_value_t = 0)]
    pub pool_limit: usize,
    /// How long a Standard request waits for a slot in a saturated pool,
    /// in milliseconds, before it gets 429.
    #[arg(long, default_value_t = 30_000)]
    pub pool_queue_timeout_ms: u64,
    /// Serve /healthz, /readyz and /metrics on this address instead of the
    /// main one (it keeps answering, /readyz with 503, while draining).
    #[arg(long)]
    pub admin_listen: Option<SocketAddr>,
    /// Read what each pool's servers serve from their `/v1/models`: a LoRA
    /// adapter listed with a `parent` is routed as that base model unless
    /// the rules map it, and `/v1/models` lists the models found that the
    /// rules route.
    #[arg(long)]
    pub discover_models: bool,
    /// How often each pool server's `/v1/models` is read, in seconds.
    #[arg(long, default_value_t = 30)]
    pub discovery_period_secs: u64,
    /// How long the list of a server that stops answering stays in force,
    /// in seconds; then its models drop out.
    #[arg(long, default_value_t = 90)]
    pub discovery_grace_secs: u64,
}

/// What the served table is built from: the rules (a file's text, or the
/// demo's) and the models the pools said they serve. Either changes on its
/// own; the table is rebuilt from both and swapped in at once.
#[derive(Clone)]
struct TableSources {
    state: std::sync::Arc<std::sync::Mutex<(RulesText, bbr_discovery::Lists)>>,
    rules: SharedRules,
}

/// The rules' text, and the file it came from (none: the demo's).
type RulesText = (Option<PathBuf>, String);

impl TableSources {
    fn rebuild(
        &self,
        change: impl FnOnce(&mut (RulesText, bbr_discovery::Lists)),
    ) -> Result<(), bbr_core::rules::ConfigError> {
        let mut state = self.state.lock().unwrap_or_else(|e| e.into_inner());
        let mut next = (state.0.clone(), state.1.clone());
        change(&mut next);
        let ((path, text), lists) = &next;
        let builder = match path {
            Some(path) => {
                bbr_core::rules::RuleTableBuilder::new().rules_file_text(path, text.as_str())
            }
            None => bbr_core::rules::RuleTableBuilder::new().rules_yaml(text.as_str()),
        };
        let builder = lists.iter().fold(builder, |b, (pool, models)| {
            b.discovered_models(pool.as_str(), models.clone())
        });
        self.rules.replace(builder.build()?);
        *state = next;
        Ok(())
    }
}

/// A `--pool`: `NAME` (simulated) or `NAME=URL`.
fn parse_pool(text: &str) -> Result<(String, Option<Endpoint>), String> {
    let (name, url) = match text.split_once('=') {
        Some((name, url)) => (name, Some(Endpoint::parse(url)?)),
        None => (text, None),
    };
    if name.is_empty() {
        return Err(format!("empty pool name in {text:?}"));
    }
    Ok((name.to_owned(), url))
}

/// Runs the gateway with `args` until SIGINT or SIGTERM, then drains: what
/// the `bbr-gateway` binary does. It installs the global `tracing`
/// subscriber (the log lines of [`LineFormat`] on stderr, batched) and the
/// global metrics recorder, so it runs once per process; it prints where it
/// listens on stdout. The exit code is 2 for bad flags or rules, 1 when
/// something cannot start.
pub async fn run(args: Flags) -> ExitCode {
    // Log lines (one per request) are formatted on the request's thread and
    // written in batches by a thread of their own (every 100 ms or 64 KiB):
    // no `write` and no wake-up per request. Nothing is dropped when the
    // output falls behind (the request threads wait instead); `_log` writes
    // what is left on exit.
    let (writer, _log) = match BatchWriter::new(std::io::stderr()) {
        Ok(batched) => batched,
        Err(e) => {
            eprintln!("gateway: cannot start the log thread: {e}");
            return ExitCode::FAILURE;
        }
    };
    tracing_subscriber::fmt()
        .with_ansi(std::io::stderr().is_terminal())
        .event_format(LineFormat)
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        )
        .with_writer(writer)
        .init();
    let metrics = match install_metrics() {
        Ok(handle) => handle,
        Err(e) => {
            eprintln!("gateway: cannot install the metrics recorder: {e}");
            return ExitCode::FAILURE;
        }
    };
    let (rules, rules_file) = match load_rules(args.rules.as_deref()) {
        Ok((rules, file)) => (SharedRules::new(rules), file),
        Err(e) => {
            eprintln!("gateway: {e}");
            return ExitCode::from(2);
        }
    };
    let rules_text = match &rules_file {
        Some(path) => match std::fs::read_to_string(path) {
            Ok(text) => text,
            Err(e) => {
                eprintln!("gateway: {}: {e}", path.display());
                return ExitCode::from(2);
            }
        },
        None => crate::DEMO_RULES.to_owned(),
    };
    let sources = TableSources {
        state: std::sync::Arc::new(std::sync::Mutex::new((
            (rules_file.clone(), rules_text),
            bbr_discovery::Lists::new(),
        ))),
        rules: rules.clone(),
    };
    let rules_source = match &rules_file {
        Some(path) => path.display().to_string(),
        None => "the demo table built in".to_owned(),
    };

    // The descriptor limit, raised to its hard limit, decides how many
    // connections each listener may hold.
    let descriptors = limits::raise_descriptor_limit();
    let admin_connections = ADMIN_CONNECTIONS;
    let reserved = crate::RESERVED_DESCRIPTORS + admin_connections as u64;
    let max_connections = args
        .max_connections
        .unwrap_or_else(|| limits::connection_budget(descriptors.soft, reserved, 2));
    println!(
        "gateway: descriptor limit {} (was {}, hard {}): up to {max_connections} client connections",
        descriptors.soft,
        descriptors.was,
        descriptors
            .hard
            .map_or_else(|| "unlimited".to_owned(), |h| h.to_string()),
    );

    // Each pool name with its servers, in the order given; none given: a
    // simulated pool.
    let mut by_name: Vec<(&str, Vec<Endpoint>)> = Vec::new();
    for (name, endpoint) in &args.pools {
        let at = match by_name.iter().position(|(n, _)| n == name) {
            Some(at) => at,
            None => {
                by_name.push((name, Vec::new()));
                by_name.len() - 1
            }
        };
        if let Some(endpoint) = endpoint {
            by_name[at].1.push(endpoint.clone());
        }
    }
    if let Some((name, _)) = args.pools.iter().find(|(name, endpoint)| {
        endpoint.is_none()
            && by_name
                .iter()
                .any(|(n, servers)| n == name && !servers.is_empty())
    }) {
        eprintln!("gateway: --pool {name} (simulated) and --pool {name}=URL both given");
        return ExitCode::from(2);
    }
    let options = UpstreamOptions {
        connect_timeout: Duration::from_millis(args.upstream_connect_timeout_ms),
        response_header_timeout: Duration::from_secs(args.upstream_response_header_timeout_secs),
    };
    let mut pools = Vec::new();
    let mut discovered = Vec::new();
    for (name, mut servers) in by_name {
        if servers.is_empty() {
            let pool =
                SimulatedPool::new(name).token_delay(Duration::from_millis(args.token_delay_ms));
            match pool.spawn(SocketAddr::from(([127, 0, 0, 1], 0))).await {
                Ok((addr, _task)) => {
                    println!("pool {name:<12} simulated at http://{addr}");
                    servers.push(Endpoint::from(addr));
                }
                Err(e) => {
                    eprintln!("gateway: cannot start pool {name}: {e}");
                    return ExitCode::FAILURE;
                }
            }
        } else {
            let list: Vec<String> = servers.iter().map(ToString::to_string).collect();
            println!("pool {name:<12} at {}", list.join(", "));
        }
        discovered.push(bbr_discovery::Pool::new(
            name,
            servers.iter().filter_map(|s| s.to_string().parse().ok()),
        ));
        match Upstream::balanced(servers, &options) {
            Some(upstream) => pools.push((name.to_owned(), upstream)),
            None => unreachable!("a pool without a server gets a simulated one"),
        }
    }

    let listener = match TcpListener::bind(args.listen).await {
        Ok(listener) => listener,
        Err(e) => {
            eprintln!("gateway: cannot listen on {}: {e}", args.listen);
            return ExitCode::FAILURE;
        }
    };
    let readiness = Readiness::default();
    let admin = Admin::new(readiness.clone(), Some(metrics));
    let header_read_timeout = Duration::from_secs(args.header_read_timeout_secs);
    let idle_timeout = Duration::from_secs(args.idle_timeout_secs);
    let admin = match args.admin_listen {
        Some(addr) => match TcpListener::bind(addr).await {
            Ok(listener) => {
                let bound = listener.local_addr().unwrap_or(addr);
                println!("gateway admin endpoints on http://{bound}");
                // Outlives the drain: /readyz answers 503 meanwhile. Its
                // own connection limit: a flood of the main listener
                // leaves it answering.
                let options = ServeOptions {
                    name: "admin",
                    header_read_timeout,
                    idle_timeout,
                    max_connections: admin_connections,
                    ..ServeOptions::default()
                };
                tokio::spawn(crate::serve_with(
                    listener,
                    admin,
                    options,
                    std::future::pending(),
                ));
                None
            }
            Err(e) => {
                eprintln!("gateway: cannot listen on {addr}: {e}");
                return ExitCode::FAILURE;
            }
        },
        None => Some(admin),
    };

    let watcher = rules_file.filter(|_| args.rules_poll_ms > 0).map(|path| {
        let sources = sources.clone();
        bbr_tower::watch::watch_file(
            path,
            Duration::from_millis(args.rules_poll_ms),
            move |path, text| {
                sources.rebuild(|(rules, _)| *rules = (Some(path.to_owned()), text.to_owned()))
            },
        )
    });
    let _discovery = args.discover_models.then(|| {
        bbr_discovery::describe();
        let options = bbr_discovery::Options::default()
            .period(Duration::from_secs(args.discovery_period_secs.max(1)))
            .grace(Duration::from_secs(args.discovery_grace_secs));
        let sources = sources.clone();
        bbr_discovery::ModelDiscovery::new(discovered, options).spawn(move |lists| {
            let models: usize = lists.values().map(Vec::len).sum();
            match sources.rebuild(|(_, known)| *known = lists.clone()) {
                Ok(()) => tracing::info!(pools = lists.len(), models, "discovered models in force"),
                Err(e) => {
                    tracing::warn!(error = %e, "discovered models refused; the previous lists stay")
                }
            }
        })
    });
    let idle = Duration::from_millis(args.body_idle_timeout_ms);
    let layer = bbr_tower::ModelRoutingLayer::new()
        .shared_rules(rules)
        .serve_models(true)
        .policy(args.policy)
        .decider(Decider::new().with_reserved_prefixes(&args.strip_header_prefix))
        .hold_budget(HoldBudget::new(args.hold_budget_mib << 20))
        .hold_idle_timeout((!idle.is_zero()).then_some(idle));
    let admission = (args.pool_limit > 0).then(|| {
        Admission::new(args.pool_limit)
            .queue_timeout(Duration::from_millis(args.pool_queue_timeout_ms))
    });
    let service = Front::new(crate::gateway_with(layer, pools, admission), admin);
    let bound = listener.local_addr().unwrap_or(args.listen);
    println!("gateway listening on http://{bound} (rules: {rules_source})");
    println!(
        "try: curl -X POST -i {bound}/v1/chat/completions -H 'Content-Type: application/json' -d '{{\"model\":\"chatbot\",\"messages\":[{{\"role\":\"user\",\"content\":\"What is the color of the sky?\"}}]}}'"
    );
    let options = ServeOptions {
        name: "http",
        header_read_timeout,
        idle_timeout,
        max_connections,
        drain_timeout: Duration::from_secs(args.drain_timeout_secs),
    };
    readiness.set(true);
    let signal = bbr_listen::shutdown_signal();
    let draining = readiness.clone();
    let shutdown = async move {
        signal.await;
        draining.set(false);
        println!("gateway: draining open requests");
    };
    crate::serve_with(listener, service, options, shutdown).await;
    if let Some(watcher) = watcher {
        watcher.abort();
    }
    println!("gateway: stopped");
    ExitCode::SUCCESS
}

/// The connections the admin listener (`--admin-listen`) may hold.
const ADMIN_CONNECTIONS: usize = 64;

/// The rule table, and the file it came from (to watch): `--rules`, else
/// the demo table built in (no file: nothing to watch).
fn load_rules(
    given: Option<&std::path::Path>,
) -> Result<(RuleTable, Option<PathBuf>), bbr_core::rules::ConfigError> {
    match given {
        Some(path) => Ok((RuleTable::from_path(path)?, Some(path.to_owned()))),
        None => Ok((crate::demo_rules()?, None)),
    }
}

/// The Prometheus recorder behind `/metrics`, with the metrics of the
/// ext_proc server (same names, same buckets) registered at zero.
fn install_metrics() -> Result<PrometheusHandle, Box<dyn std::error::Error>> {
    use bbr_core::metrics;
    let mut builder = PrometheusBuilder::new();
    for (name, buckets) in metrics::HISTOGRAM_BUCKETS {
        builder = builder.set_buckets_for_metric(Matcher::Full(name.to_owned()), buckets)?;
    }
    let handle = builder.install_recorder()?;
    metrics::describe();
    metrics::register();
    bbr_listen::describe();
    let upkeep = handle.clone();
    tokio::spawn(async move {
        let mut ticker = tokio::time::interval(Duration::from_secs(5));
        loop {
            ticker.tick().await;
            upkeep.run_upkeep();
        }
    });
    Ok(handle)
}
