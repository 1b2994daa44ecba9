//! The metrics the service records, through the [`metrics`](::metrics)
//! facade.
//!
//! The names, their help text and what each decision counts are shared
//! with the tower layer: they live in [`bbr_core::metrics`] and are
//! re-exported here. The first five names are the Go body-based-router's,
//! so that dashboards and alerts keep working after a swap. The binary
//! installs a Prometheus recorder and serves it on `/metrics`; a library
//! user installs any recorder (or none: recording is then a no-op).

pub use bbr_core::metrics::*;
