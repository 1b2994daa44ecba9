//! The metrics the service records, through the [`metrics`]
//! facade.
//!
//! The names, their help text and what each decision counts are shared
//! with the tower layer: they live in [`bbr_core::metrics`] and are
//! re-exported here. The first five names are the Go body-based-router's,
//! so that dashboards and alerts keep working after a swap. The binary
//! installs a Prometheus recorder and serves it on `/metrics`; a library
//! user installs any recorder (or none: recording is then a no-op).

pub use bbr_core::metrics::*;

use ::metrics::{
    Counter, Histogram, Unit, counter, describe_gauge, describe_histogram, gauge, histogram,
};
use bbr_core::Verdict;
use std::sync::RwLock;

/// Build information, always 1 (labels `commit`, `build_ref`, `version`):
/// the Go router's `bbr_info`.
pub const INFO: &str = "bbr_info";
/// The Go router's per-plugin processing latency (labels `extension_point`,
/// `plugin_type`, `plugin_name`). bbr does in one decision step what the
/// Go router's plugins do one after another; each plugin instance the
/// processor stands for (see
/// [`ProcessorBuilder::plugins`](crate::ProcessorBuilder::plugins)) records
/// the time of that step, so dashboards built on the Go router's histogram
/// keep their series.
pub const PLUGIN_DURATION_SECONDS: &str = "bbr_plugin_duration_seconds";
/// The Go router's buckets for [`PLUGIN_DURATION_SECONDS`].
pub const PLUGIN_DURATION_BUCKETS: &[f64] = &[
    0.0001, 0.0002, 0.0005, 0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1,
];

/// Describes the metrics only the ext_proc server records (the others:
/// [`describe`]).
pub fn describe_server() {
    describe_gauge!(
        INFO,
        "General information of the current build of bbr-extproc."
    );
    describe_histogram!(
        PLUGIN_DURATION_SECONDS,
        Unit::Seconds,
        "Plugin processing latency distribution in seconds for each extension point, plugin type and plugin name."
    );
}

/// Sets [`INFO`] for this build.
pub fn record_info(version: &str, commit: &str, build_ref: &str) {
    gauge!(INFO, "commit" => commit.to_owned(), "build_ref" => build_ref.to_owned(),
        "version" => version.to_owned())
    .set(1.0);
}

/// The histograms of the plugin instances `(type, name)`, registered with
/// the recorder installed now.
pub(crate) fn plugin_histograms(plugins: &[(String, String)]) -> Vec<Histogram> {
    plugins
        .iter()
        .map(|(kind, name)| {
            histogram!(PLUGIN_DURATION_SECONDS, "extension_point" => "request",
                "plugin_type" => kind.clone(), "plugin_name" => name.clone())
        })
        .collect()
}

/// The decision histograms ([`DECISION_SECONDS`],
/// [`BYTES_BEFORE_DECISION`]) and the route counter ([`SUCCESS_TOTAL`]),
/// looked up once in the recorder installed when the processor is built,
/// so that a request records into them without a registry lookup; and the
/// [`ROUTE_MATCHES_TOTAL`] counters of the rules and pools seen so far.
#[derive(Debug)]
pub(crate) struct DecisionMetrics {
    seconds: Histogram,
    bytes: Histogram,
    success: Counter,
    /// `(rule, pool, counter)`, looked up in the recorder on first use.
    routes: RwLock<Vec<(String, String, Counter)>>,
}

/// How many `(rule, pool)` counters are kept at most: rule tables are
/// small, but reloads can rename rules; past this, the recorder is asked
/// each time.
const ROUTE_COUNTERS: usize = 256;

impl DecisionMetrics {
    /// The handles of the recorder installed now.
    pub(crate) fn register() -> DecisionMetrics {
        DecisionMetrics {
            seconds: histogram!(DECISION_SECONDS),
            bytes: histogram!(BYTES_BEFORE_DECISION),
            success: counter!(SUCCESS_TOTAL),
            routes: RwLock::default(),
        }
    }

    /// Handles that record nothing.
    #[cfg(test)]
    pub(crate) fn noop() -> DecisionMetrics {
        DecisionMetrics {
            seconds: Histogram::noop(),
            bytes: Histogram::noop(),
            success: Counter::noop(),
            routes: RwLock::default(),
        }
    }

    /// Records a decision: `seconds` from the request's headers to it, and
    /// the body `bytes` held until then.
    pub(crate) fn decided(&self, seconds: f64, bytes: u64) {
        self.seconds.record(seconds);
        self.bytes.record(bytes as f64);
    }

    /// Records a verdict as [`record_verdict`] does.
    pub(crate) fn verdict(&self, verdict: &Verdict) {
        match verdict {
            Verdict::Route(routing) => {
                let route = routing.route();
                self.success.increment(1);
                self.route_matches(route.rule().unwrap_or(""), route.pool().unwrap_or(""));
            }
            other => record_verdict(other),
        }
    }

    /// Counts a decision by `rule` and `pool` in [`ROUTE_MATCHES_TOTAL`].
    fn route_matches(&self, rule: &str, pool: &str) {
        let is = |(r, p, _): &&(String, String, Counter)| r == rule && p == pool;
        if let Ok(routes) = self.routes.read()
            && let Some((_, _, counter)) = routes.iter().find(is)
        {
            return counter.increment(1);
        }
        let counter = counter!(ROUTE_MATCHES_TOTAL, "rule" => rule.to_owned(),
            "pool" => pool.to_owned());
        counter.increment(1);
        if let Ok(mut routes) = self.routes.write()
            && routes.len() < ROUTE_COUNTERS
            && !routes.iter().any(|route| is(&route))
        {
            routes.push((rule.to_owned(), pool.to_owned(), counter));
        }
    }
}
