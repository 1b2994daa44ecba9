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

use ::metrics::{Histogram, Unit, describe_gauge, describe_histogram, gauge, histogram};

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
