//! What a layer is configured with, shared by every request it serves:
//! read by the layer (which builds it), the response future and the body.

use std::{fmt, sync::Arc, time::Duration};

use bbr_core::rules::{RuleTable, SharedRules};
use bbr_core::{Decider, ExtractorConfig, PathTemplate};

use crate::HoldBudget;

/// The default body-idle timeout while a body is held: 30 s with the
/// `tokio` feature (the timer needs tokio), none without it.
pub const DEFAULT_HOLD_IDLE_TIMEOUT: Duration = Duration::from_secs(30);

fn default_hold_idle_timeout() -> Option<Duration> {
    cfg!(feature = "tokio").then_some(DEFAULT_HOLD_IDLE_TIMEOUT)
}

/// The rule table a layer consults: fixed, or shared and reloadable.
#[derive(Clone)]
pub(crate) enum Rules {
    Fixed(Arc<RuleTable>),
    Shared(SharedRules),
}

impl Rules {
    pub(crate) fn load(&self) -> Arc<RuleTable> {
        match self {
            Rules::Fixed(table) => Arc::clone(table),
            Rules::Shared(shared) => shared.load(),
        }
    }
}

/// What a layer is configured with, shared by every request it serves.
#[derive(Clone)]
pub(crate) struct Config {
    pub(crate) extractor: ExtractorConfig,
    pub(crate) decider: Decider,
    pub(crate) rules: Rules,
    pub(crate) paths: Vec<PathTemplate>,
    pub(crate) budget: Option<HoldBudget>,
    pub(crate) hold_idle_timeout: Option<Duration>,
    pub(crate) serve_models: bool,
    /// The decision metrics' handles, looked up in the recorder at the
    /// first request (by then the application has installed it).
    #[cfg(feature = "metrics")]
    pub(crate) metrics: Arc<std::sync::OnceLock<bbr_core::metrics::DecisionMetrics>>,
}

impl Config {
    /// Counts what `step` of `session` counts (feature `metrics`).
    #[inline]
    pub(crate) fn tally(
        &self,
        session: &bbr_core::session::Session,
        step: &bbr_core::session::Step,
    ) {
        #[cfg(feature = "metrics")]
        {
            let metrics = self.metrics();
            session.tally(&self.decider, step, |t| metrics.record(t));
        }
        #[cfg(not(feature = "metrics"))]
        let _ = (session, step);
    }

    /// The decision metrics' handles (see [`Config::metrics`](Config)).
    #[cfg(feature = "metrics")]
    pub(crate) fn metrics(&self) -> &bbr_core::metrics::DecisionMetrics {
        self.metrics
            .get_or_init(bbr_core::metrics::DecisionMetrics::register)
    }
}

impl fmt::Debug for Config {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Config")
            .field("extractor", &self.extractor)
            .field("decider", &self.decider)
            .field(
                "rules",
                &match self.rules {
                    Rules::Fixed(_) => "fixed",
                    Rules::Shared(_) => "shared",
                },
            )
            .field("paths", &self.paths)
            .field("budget", &self.budget)
            .field("hold_idle_timeout", &self.hold_idle_timeout)
            .field("serve_models", &self.serve_models)
            .finish()
    }
}

impl Default for Config {
    fn default() -> Self {
        Config {
            extractor: ExtractorConfig::default(),
            decider: Decider::default(),
            rules: Rules::Fixed(Arc::new(RuleTable::empty())),
            paths: Vec::new(),
            budget: Some(HoldBudget::default()),
            hold_idle_timeout: default_hold_idle_timeout(),
            serve_models: false,
            #[cfg(feature = "metrics")]
            metrics: Arc::default(),
        }
    }
}
