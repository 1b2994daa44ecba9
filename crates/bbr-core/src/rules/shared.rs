//! Atomic reload: readers never wait, a bad configuration never replaces a good one.

use std::{path::Path, sync::Arc};

use arc_swap::ArcSwap;

use super::{ConfigError, RuleTable, RuleTableBuilder};

/// A rule table that can be replaced while requests read it.
///
/// Cloning shares the same table. [`load`](Self::load) is lock-free; a
/// request keeps the table it loaded until it drops it, so a reload never
/// changes the rules in the middle of a request.
///
/// ```
/// use bbr_core::rules::{RuleTable, SharedRules};
///
/// let shared = SharedRules::new(RuleTable::from_yaml(
///     "rules: [{name: a, match: {model: {exact: a}}, pool: one}]",
/// ).unwrap());
/// let reader = shared.clone();
/// shared.replace(RuleTable::from_yaml(
///     "rules: [{name: a, match: {model: {exact: a}}, pool: two}]",
/// ).unwrap());
/// let decision = reader.load().route("a", None).unwrap().unwrap();
/// assert_eq!(decision.pool(), Some("two"));
/// ```
#[derive(Clone, Debug)]
pub struct SharedRules {
    current: Arc<ArcSwap<RuleTable>>,
}

impl SharedRules {
    /// Shares `table`.
    pub fn new(table: RuleTable) -> SharedRules {
        SharedRules {
            current: Arc::new(ArcSwap::from_pointee(table)),
        }
    }

    /// The current table.
    pub fn load(&self) -> Arc<RuleTable> {
        self.current.load_full()
    }

    /// Replaces the table for every later [`load`](Self::load).
    pub fn replace(&self, table: RuleTable) {
        self.current.store(Arc::new(table));
    }

    /// Loads the rules file at `path` and swaps it in. On error the current
    /// table stays in place and the error says why the file was refused.
    pub fn reload_from(&self, path: &Path) -> Result<(), ConfigError> {
        self.replace(RuleTable::from_path(path)?);
        Ok(())
    }

    /// Compiles `text`, the contents of the rules file at `path` as the
    /// caller read it, and swaps it in. On error the current table stays in
    /// place. See [`RuleTableBuilder::rules_file_text`].
    pub fn reload_text(&self, path: &Path, text: &str) -> Result<(), ConfigError> {
        self.replace(
            RuleTableBuilder::new()
                .rules_file_text(path, text)
                .build()?,
        );
        Ok(())
    }

    /// Rebuilds from `builder`'s sources (a rules file and ConfigMaps) and
    /// swaps the result in; on error the current table stays in place.
    pub fn reload_with(&self, builder: &RuleTableBuilder) -> Result<(), ConfigError> {
        self.replace(builder.build()?);
        Ok(())
    }
}

impl Default for SharedRules {
    fn default() -> Self {
        SharedRules::new(RuleTable::empty())
    }
}
