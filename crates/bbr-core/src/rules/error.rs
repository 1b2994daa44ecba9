//! The error of loading a rule table.

use std::{
    fmt,
    path::{Path, PathBuf},
};

/// An invalid rule configuration: which file, which rule, and why.
///
/// ```
/// use bbr_core::rules::RuleTable;
///
/// let err = RuleTable::from_yaml(
///     "rules:\n  - name: a\n    match: { model: { regex: '(' } }\n    pool: p\n",
/// )
/// .unwrap_err();
/// assert_eq!(err.rule(), Some("a"));
/// assert!(err.to_string().contains("regex"));
/// ```
#[derive(Clone, PartialEq, Eq)]
pub struct ConfigError {
    file: Option<PathBuf>,
    place: Option<Place>,
    reason: String,
}

/// Where in the file the fault is.
#[derive(Clone, Debug, PartialEq, Eq)]
enum Place {
    /// A rule, by name (or `#N` when it has none).
    Rule(String),
    /// A section other than `rules` (`default`, `base_models`).
    Section(&'static str),
}

impl ConfigError {
    #[cold]
    pub(crate) fn new(reason: impl Into<String>) -> ConfigError {
        ConfigError {
            file: None,
            place: None,
            reason: reason.into(),
        }
    }

    #[cold]
    pub(crate) fn in_rule(rule: impl Into<String>, reason: impl Into<String>) -> ConfigError {
        ConfigError {
            file: None,
            place: Some(Place::Rule(rule.into())),
            reason: reason.into(),
        }
    }

    #[cold]
    pub(crate) fn in_section(section: &'static str, reason: impl Into<String>) -> ConfigError {
        ConfigError {
            file: None,
            place: Some(Place::Section(section)),
            reason: reason.into(),
        }
    }

    /// Names the file the configuration came from (kept if already set).
    pub(crate) fn in_file(mut self, file: &Path) -> ConfigError {
        if self.file.is_none() {
            self.file = Some(file.to_owned());
        }
        self
    }

    /// Names the rule (kept if already set).
    pub(crate) fn or_rule(mut self, rule: impl Into<String>) -> ConfigError {
        if self.place.is_none() {
            self.place = Some(Place::Rule(rule.into()));
        }
        self
    }

    /// Names the section (kept if a place is already set).
    pub(crate) fn or_section(mut self, section: &'static str) -> ConfigError {
        if self.place.is_none() {
            self.place = Some(Place::Section(section));
        }
        self
    }

    /// The file the configuration came from, when it came from a file.
    pub fn file(&self) -> Option<&Path> {
        self.file.as_deref()
    }

    /// The rule at fault: its `name`, or `#N` (its 1-based position in
    /// `rules`) when it has none. `None` when the fault is not in a rule.
    pub fn rule(&self) -> Option<&str> {
        match &self.place {
            Some(Place::Rule(rule)) => Some(rule),
            _ => None,
        }
    }

    /// The section at fault when it is not a rule: `"default"` or `"base_models"`.
    pub fn section(&self) -> Option<&str> {
        match &self.place {
            Some(Place::Section(section)) => Some(section),
            _ => None,
        }
    }

    /// Why the configuration was refused. Not a stable API.
    pub fn reason(&self) -> &str {
        &self.reason
    }
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.file {
            Some(file) => write!(f, "{}: ", file.display())?,
            None => f.write_str("rules: ")?,
        }
        match &self.place {
            Some(Place::Rule(rule)) if rule.starts_with('#') => write!(f, "rule {rule}: ")?,
            Some(Place::Rule(rule)) => write!(f, "rule {rule:?}: ")?,
            Some(Place::Section(section)) => write!(f, "{section}: ")?,
            None => {}
        }
        f.write_str(&self.reason)
    }
}

impl fmt::Debug for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ConfigError")
            .field("file", &self.file)
            .field("place", &self.place)
            .field("reason", &self.reason)
            .finish()
    }
}

impl std::error::Error for ConfigError {}
