//! The metrics both adapters record, through the [`metrics`]
//! facade (feature `metrics`): their names, their help text, and what is
//! counted for each decision.
//!
//! The first five names are the Go body-based-router's, so that dashboards
//! and alerts keep working after a swap. A server installs a recorder (a
//! Prometheus exporter, say) and calls [`describe`] and [`register`]; a
//! library user who installs none pays a no-op per event.
//!
//! What a request counts comes from its [`Session`](crate::session::Session)
//! as [`Tally`] values, and [`record`] (or [`DecisionMetrics::record`])
//! turns each into these names, so that every adapter counts the same
//! request the same way.

use std::sync::RwLock;

use ::metrics::{
    Counter, Histogram, Unit, counter, describe_counter, describe_histogram, histogram,
};

use crate::{Error, ErrorKind, session::Tally};

/// Request bodies read and decided on without an error, routed or not
/// (see [`Verdict::body_processed`](crate::Verdict::body_processed)): the Go router v1.5's meaning, which
/// its users' alerts read.
pub const SUCCESS_TOTAL: &str = "bbr_success_total";
/// Requests whose model was read from the body and turned into routing
/// headers.
pub const ROUTED_TOTAL: &str = "bbr_routed_total";
/// Requests whose body names no model.
pub const MODEL_NOT_IN_BODY_TOTAL: &str = "bbr_model_not_in_body_total";
/// Requests whose body has a `model` that could not be read as a model name.
pub const MODEL_NOT_PARSED_TOTAL: &str = "bbr_model_not_parsed_total";
/// Requests missing a requested body field (label `field`).
pub const BODY_FIELD_NOT_FOUND_TOTAL: &str = "bbr_body_field_not_found_total";
/// Requests whose requested body field is empty (label `field`).
pub const BODY_FIELD_EMPTY_TOTAL: &str = "bbr_body_field_empty_total";
/// Seconds from the request headers to the routing decision.
pub const DECISION_SECONDS: &str = "bbr_decision_duration_seconds";
/// Body bytes received (and held) before the routing decision.
pub const BYTES_BEFORE_DECISION: &str = "bbr_bytes_before_decision";
/// Requests answered with an error (label `reason`: the error kind).
pub const REJECTED_TOTAL: &str = "bbr_rejected_total";
/// Requests passed through without routing headers after an error, because
/// the failure policy says fail open for that kind (label `reason`).
pub const FAIL_OPEN_TOTAL: &str = "bbr_fail_open_total";
/// Routing decisions by rule and pool (labels `rule`, `pool`).
pub const ROUTE_MATCHES_TOTAL: &str = "bbr_route_matches_total";
/// Successful reloads of the rules file.
pub const RULES_RELOADS_TOTAL: &str = "bbr_rules_reloads_total";
/// Failed reloads of the rules file (the previous table stays in force).
pub const RULES_RELOAD_FAILURES_TOTAL: &str = "bbr_rules_reload_failures_total";

/// Admission decisions of a pool router with admission on (labels
/// `pool`, `class`: critical, standard or sheddable, `outcome`: admitted,
/// queued or refused).
pub const ADMISSION_TOTAL: &str = "bbr_admission_total";

/// Histogram buckets for [`DECISION_SECONDS`].
pub const DECISION_SECONDS_BUCKETS: &[f64] = &[
    0.000_01, 0.000_025, 0.000_05, 0.000_1, 0.000_25, 0.000_5, 0.001, 0.002_5, 0.005, 0.01, 0.025,
    0.05, 0.1, 0.25, 0.5, 1.0, 2.5,
];
/// Histogram buckets for [`BYTES_BEFORE_DECISION`].
pub const BYTES_BUCKETS: &[f64] = &[
    64.0,
    256.0,
    1024.0,
    4096.0,
    16_384.0,
    65_536.0,
    262_144.0,
    1_048_576.0,
    4_194_304.0,
    16_777_216.0,
    67_108_864.0,
];

/// Every histogram with its buckets, for an exporter that takes them by
/// name (Prometheus: `PrometheusBuilder::set_buckets_for_metric`).
pub const HISTOGRAM_BUCKETS: [(&str, &[f64]); 2] = [
    (DECISION_SECONDS, DECISION_SECONDS_BUCKETS),
    (BYTES_BEFORE_DECISION, BYTES_BUCKETS),
];

/// Registers the help text of every metric with the installed recorder.
pub fn describe() {
    describe_counter!(
        SUCCESS_TOTAL,
        "Request bodies read and decided on without an error, routed or not."
    );
    describe_counter!(
        ROUTED_TOTAL,
        "Requests whose model was read from the body and set as routing headers."
    );
    describe_counter!(
        MODEL_NOT_IN_BODY_TOTAL,
        "Requests whose body names no model."
    );
    describe_counter!(
        MODEL_NOT_PARSED_TOTAL,
        "Requests whose body model could not be read as a model name."
    );
    describe_counter!(
        BODY_FIELD_NOT_FOUND_TOTAL,
        "Requests missing a requested body field."
    );
    describe_counter!(
        BODY_FIELD_EMPTY_TOTAL,
        "Requests whose requested body field is empty."
    );
    describe_histogram!(
        DECISION_SECONDS,
        Unit::Seconds,
        "Time from the request headers to the routing decision."
    );
    describe_histogram!(
        BYTES_BEFORE_DECISION,
        Unit::Bytes,
        "Body bytes held before the routing decision."
    );
    describe_counter!(
        REJECTED_TOTAL,
        "Requests answered with an error, by reason."
    );
    describe_counter!(
        FAIL_OPEN_TOTAL,
        "Requests passed through without routing after an error, by reason."
    );
    describe_counter!(
        ADMISSION_TOTAL,
        "Admission decisions of saturated pools, by pool, class and outcome."
    );
    describe_counter!(ROUTE_MATCHES_TOTAL, "Routing decisions by rule and pool.");
    describe_counter!(RULES_RELOADS_TOTAL, "Successful reloads of the rules file.");
    describe_counter!(
        RULES_RELOAD_FAILURES_TOTAL,
        "Failed reloads of the rules file; the previous table stays in force."
    );
}

/// Registers every counter at zero, so that `/metrics` lists each metric
/// from start-up, before the first event (dashboards and alerts on a
/// fresh replica see a 0, not a missing series). Counters labelled by
/// error kind get one series per kind; `field` gets `model`. Histograms
/// appear with their first sample.
pub fn register() {
    for name in [
        SUCCESS_TOTAL,
        ROUTED_TOTAL,
        MODEL_NOT_IN_BODY_TOTAL,
        MODEL_NOT_PARSED_TOTAL,
        RULES_RELOADS_TOTAL,
        RULES_RELOAD_FAILURES_TOTAL,
    ] {
        counter!(name).absolute(0);
    }
    for name in [BODY_FIELD_NOT_FOUND_TOTAL, BODY_FIELD_EMPTY_TOTAL] {
        counter!(name, "field" => "model").absolute(0);
    }
    for kind in ErrorKind::ALL {
        counter!(REJECTED_TOTAL, "reason" => kind.as_str()).absolute(0);
        counter!(FAIL_OPEN_TOTAL, "reason" => kind.as_str()).absolute(0);
    }
}

/// [`register`] plus the counters of the body fields copied into headers.
pub fn register_fields<'a>(fields: impl IntoIterator<Item = &'a str>) {
    register();
    for field in fields {
        counter!(BODY_FIELD_NOT_FOUND_TOTAL, "field" => field.to_owned()).absolute(0);
        counter!(BODY_FIELD_EMPTY_TOTAL, "field" => field.to_owned()).absolute(0);
    }
}

/// Records a decision: `seconds` from the request's headers to it, and
/// the body `bytes` held until then.
pub fn record_decided(seconds: f64, bytes: u64) {
    histogram!(DECISION_SECONDS).record(seconds);
    histogram!(BYTES_BEFORE_DECISION).record(bytes as f64);
}

/// Records one [`Tally`] (what a [`Session`](crate::session::Session)
/// step counts) under the names above, looking each metric up in the
/// installed recorder; [`DecisionMetrics::record`] keeps the hot ones.
pub fn record(tally: Tally<'_>) {
    match tally {
        Tally::Success => counter!(SUCCESS_TOTAL).increment(1),
        Tally::Routed => counter!(ROUTED_TOTAL).increment(1),
        Tally::RouteMatch { rule, pool } => counter!(
            ROUTE_MATCHES_TOTAL,
            "rule" => rule.to_owned(),
            "pool" => pool.to_owned()
        )
        .increment(1),
        Tally::ModelNotInBody => {
            counter!(MODEL_NOT_IN_BODY_TOTAL).increment(1);
            counter!(BODY_FIELD_NOT_FOUND_TOTAL, "field" => "model").increment(1);
        }
        Tally::ModelNotParsed => counter!(MODEL_NOT_PARSED_TOTAL).increment(1),
        Tally::ModelEmpty => {
            counter!(BODY_FIELD_EMPTY_TOTAL, "field" => "model").increment(1);
        }
        Tally::FieldNotFound(field) => {
            counter!(BODY_FIELD_NOT_FOUND_TOTAL, "field" => field.to_owned()).increment(1);
        }
        Tally::FieldEmpty(field) => {
            counter!(BODY_FIELD_EMPTY_TOTAL, "field" => field.to_owned()).increment(1);
        }
        Tally::Rejected(kind) => record_rejected_kind(kind),
        Tally::FailOpen(kind) => {
            counter!(FAIL_OPEN_TOTAL, "reason" => kind.as_str()).increment(1);
        }
    }
}

/// Records a request answered with `error` (an answer that did not come
/// from a session step: a pool that cannot be reached, a body that could
/// not be read).
pub fn record_rejected(error: &Error) {
    record_rejected_kind(error.kind());
}

fn record_rejected_kind(kind: ErrorKind) {
    counter!(REJECTED_TOTAL, "reason" => kind.as_str()).increment(1);
}

/// Records what a pool's admission did with a request of `class`
/// (`critical`, `standard`, `sheddable`): `admitted`, `queued` or
/// `refused`.
pub fn record_admission(pool: &str, class: &'static str, outcome: &'static str) {
    counter!(ADMISSION_TOTAL, "pool" => pool.to_owned(), "class" => class, "outcome" => outcome)
        .increment(1);
}

/// Records a reload of the rules file: `ok`, or failed (the previous table
/// stays in force).
pub fn record_rules_reload(ok: bool) {
    if ok {
        counter!(RULES_RELOADS_TOTAL).increment(1);
    } else {
        counter!(RULES_RELOAD_FAILURES_TOTAL).increment(1);
    }
}

/// The decision histograms ([`DECISION_SECONDS`],
/// [`BYTES_BEFORE_DECISION`]) and the route counter ([`SUCCESS_TOTAL`]),
/// looked up once in the recorder installed when they are made, so that a
/// request records into them without a registry lookup; and the
/// [`ROUTE_MATCHES_TOTAL`] counters of the rules and pools seen so far.
///
/// It records what [`record_decided`] and [`record`] do, a few
/// hundred instructions cheaper a request. A handle keeps recording into
/// the recorder that was installed when it was made: make it after
/// installing one.
///
/// ```
/// use bbr_core::metrics::DecisionMetrics;
///
/// // After `metrics::set_global_recorder(…)` (none here: a no-op).
/// let metrics = DecisionMetrics::register();
/// metrics.decided(0.000_2, 1024);
/// ```
#[derive(Debug)]
pub struct DecisionMetrics {
    seconds: Histogram,
    bytes: Histogram,
    success: Counter,
    routed: Counter,
    /// `(rule, pool, counter)`, looked up in the recorder on first use.
    routes: RwLock<Vec<(String, String, Counter)>>,
}

/// How many `(rule, pool)` counters are kept at most: rule tables are
/// small, but reloads can rename rules; past this, the recorder is asked
/// each time.
const ROUTE_COUNTERS: usize = 256;

impl DecisionMetrics {
    /// The handles of the recorder installed now (none: a no-op).
    pub fn register() -> DecisionMetrics {
        DecisionMetrics {
            seconds: histogram!(DECISION_SECONDS),
            bytes: histogram!(BYTES_BEFORE_DECISION),
            success: counter!(SUCCESS_TOTAL),
            routed: counter!(ROUTED_TOTAL),
            routes: RwLock::default(),
        }
    }

    /// Handles that record nothing.
    pub fn noop() -> DecisionMetrics {
        DecisionMetrics {
            seconds: Histogram::noop(),
            bytes: Histogram::noop(),
            success: Counter::noop(),
            routed: Counter::noop(),
            routes: RwLock::default(),
        }
    }

    /// Records a decision: `seconds` from the request's headers to it, and
    /// the body `bytes` held until then.
    pub fn decided(&self, seconds: f64, bytes: u64) {
        self.seconds.record(seconds);
        self.bytes.record(bytes as f64);
    }

    /// Records `tally` as [`record`] does, into the handles kept here for
    /// the counts every routed request makes.
    pub fn record(&self, tally: Tally<'_>) {
        match tally {
            Tally::Success => self.success.increment(1),
            Tally::Routed => self.routed.increment(1),
            Tally::RouteMatch { rule, pool } => self.route_matches(rule, pool),
            other => record(other),
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
