//! The filter configuration: the JSON text Envoy hands over from the
//! `filter_config` of the `DynamicModuleFilter`, turned into the extractor
//! configuration, the [`Decider`] and the rule table every request of the
//! filter shares.
//!
//! The options are those of `bbr-extproc`'s flags, spelled in snake case;
//! the rule table has the schema of `--rules` (YAML or JSON).

use std::{path::PathBuf, time::Duration};

use bbr_core::{
    BodyFieldHeader, Decider, ErrorKind, ExtractorConfig, FailureAction, FailurePolicy, Policy,
    rules::{RuleTable, SharedRules},
    watch::FileWatch,
};
use serde::Deserialize;

/// How often a rules file is checked for changes unless told otherwise.
pub const DEFAULT_RULES_POLL: Duration = Duration::from_secs(1);

/// The filter configuration as written in Envoy's configuration (a JSON
/// object, every member optional). See `docs/envoy-module.md`.
#[derive(Debug, Default, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields, default)]
pub struct ModuleConfig {
    /// The rule table inline (YAML or JSON text, the schema of `--rules`).
    pub rules: Option<String>,
    /// A rules file (YAML, or JSON when it ends in `.json`), reloaded when
    /// it changes; a file that does not compile keeps the table in force.
    pub rules_file: Option<PathBuf>,
    /// How often `rules_file` is checked, in milliseconds (default 1000).
    pub rules_poll_ms: Option<u64>,
    /// `strict` (default) or `fast`.
    pub policy: Option<String>,
    /// Bytes scanned before a decision (default 32 MiB; 413 past it).
    pub max_body: Option<u64>,
    /// Decode compressed bodies to read their model (default true).
    pub decompress: Option<bool>,
    /// The decompression bomb cap (default 100).
    pub max_expansion_ratio: Option<u32>,
    /// Error codes that pass the request through unrouted, or `all`.
    pub fail_open: Vec<String>,
    /// Refuse a body that names no model (400 `invalid_model`).
    pub reject_missing_model: bool,
    /// Read a number in `model` as the model named by its text (default
    /// false: 400 `model_not_string`).
    pub numeric_model: bool,
    /// `NAME=HEADER`: copy the top-level body field `NAME` into `HEADER`.
    pub body_fields: Vec<String>,
    /// Header names removed from every request besides those bbr writes.
    pub strip_headers: Vec<String>,
    /// Header name prefixes removed from every request (default none).
    pub strip_header_prefixes: Option<Vec<String>>,
    /// The header whose value keys the choice among weighted targets
    /// (default `x-request-id`).
    pub request_key_header: Option<String>,
    /// Ask Envoy to pick the route again after the headers changed
    /// (default true; without it the routing headers change nothing).
    pub clear_route_cache: Option<bool>,
    /// Answer `GET /v1/models` with the rule table's model list.
    pub serve_models: bool,
}

/// Why a filter configuration is refused.
#[derive(Debug, PartialEq, Eq)]
pub struct ConfigError(pub String);

impl std::fmt::Display for ConfigError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for ConfigError {}

/// What every request of one filter configuration shares.
#[derive(Debug)]
pub struct Settings {
    pub(crate) extractor: ExtractorConfig,
    pub(crate) decider: Decider,
    pub(crate) rules: SharedRules,
    pub(crate) request_key_header: String,
    pub(crate) clear_route_cache: bool,
    pub(crate) serve_models: bool,
}

impl Settings {
    /// The settings of `config`, with the rule table it names loaded, and
    /// the rules file to watch (if any) with its poll period.
    pub fn from_config(
        config: &ModuleConfig,
    ) -> Result<(Settings, Option<(PathBuf, Duration)>), ConfigError> {
        let err = |what: String| ConfigError(what);
        if config.rules.is_some() && config.rules_file.is_some() {
            return Err(err("give `rules` or `rules_file`, not both".to_owned()));
        }
        let table = match (&config.rules, &config.rules_file) {
            (Some(text), _) => {
                let result = if text.trim_start().starts_with('{') {
                    RuleTable::from_json(text)
                } else {
                    RuleTable::from_yaml(text)
                };
                result.map_err(|e| err(format!("rules: {e}")))?
            }
            (None, Some(path)) => RuleTable::from_path(path).map_err(|e| err(e.to_string()))?,
            (None, None) => RuleTable::empty(),
        };
        let policy: Policy = match &config.policy {
            Some(p) => p.parse().map_err(|e| err(format!("policy: {e}")))?,
            None => Policy::Strict,
        };
        let mut extractor = ExtractorConfig::new().with_policy(policy);
        if let Some(bytes) = config.max_body {
            extractor = extractor.with_max_body(bytes);
        }
        if let Some(on) = config.decompress {
            extractor = extractor.with_decompression(on);
        }
        if let Some(ratio) = config.max_expansion_ratio {
            extractor = extractor.with_max_expansion_ratio(ratio);
        }
        extractor = extractor.with_numeric_model(config.numeric_model);

        let mut failure = FailurePolicy::new();
        for code in &config.fail_open {
            let kinds = if code == "all" {
                &ErrorKind::ALL[..]
            } else {
                let kind = ErrorKind::ALL
                    .iter()
                    .find(|k| k.as_str() == code)
                    .ok_or_else(|| err(format!("fail_open: unknown error kind {code:?}")))?;
                std::slice::from_ref(kind)
            };
            for &kind in kinds {
                failure = failure.on(kind, FailureAction::PassThrough);
            }
        }
        if config.reject_missing_model {
            failure = failure.on_missing_model(FailureAction::Reject);
        }
        let mut decider = Decider::new().with_failure_policy(failure);
        if let Some(prefixes) = &config.strip_header_prefixes {
            decider = decider.with_reserved_prefixes(prefixes);
        }
        decider = decider.with_stripped_headers(&config.strip_headers);
        let mut headers = Vec::new();
        for field in &config.body_fields {
            let copy: BodyFieldHeader = field
                .parse()
                .map_err(|e| err(format!("body_fields: {field:?}: {e}")))?;
            if headers.contains(copy.header()) {
                return Err(err(format!(
                    "body_fields: two fields set the header {}",
                    copy.header()
                )));
            }
            headers.push(copy.header().clone());
            decider = decider.with_body_field(copy);
        }
        let extractor = decider.extractor_config(extractor);

        let settings = Settings {
            extractor,
            decider,
            rules: SharedRules::new(table),
            request_key_header: config
                .request_key_header
                .clone()
                .unwrap_or_else(|| "x-request-id".to_owned())
                .to_ascii_lowercase(),
            clear_route_cache: config.clear_route_cache.unwrap_or(true),
            serve_models: config.serve_models,
        };
        let poll = config
            .rules_poll_ms
            .map_or(DEFAULT_RULES_POLL, |ms| Duration::from_millis(ms.max(10)));
        let watch = config.rules_file.clone().map(|path| (path, poll));
        Ok((settings, watch))
    }

    /// The settings of the configuration text Envoy hands over (empty:
    /// every default, routing on the model as the Go router does).
    pub fn from_text(text: &[u8]) -> Result<(Settings, Option<(PathBuf, Duration)>), ConfigError> {
        let config: ModuleConfig = if text.iter().all(u8::is_ascii_whitespace) {
            ModuleConfig::default()
        } else {
            serde_json::from_slice(text).map_err(|e| ConfigError(format!("filter_config: {e}")))?
        };
        Settings::from_config(&config)
    }
}

/// Polls a rules file and swaps the table in when it changes, on a thread
/// of its own ([`FileWatch`]: a file caught half-written is not loaded);
/// stops (and the thread ends) when dropped.
#[derive(Debug)]
pub struct RulesWatch {
    /// Held only: dropping it stops the watch.
    _watch: FileWatch,
}

impl RulesWatch {
    /// Watches `path` every `poll`, reloading `rules` from it; `report` is
    /// told of each reload (`Ok`) or refused file (`Err`, the reason).
    pub fn start(
        path: PathBuf,
        poll: Duration,
        rules: SharedRules,
        report: impl Fn(Result<(), String>) + Send + 'static,
    ) -> std::io::Result<RulesWatch> {
        FileWatch::start(path, poll, move |path, text| {
            let result = rules.reload_text(path, text).map_err(|e| e.to_string());
            report(result.clone());
            result
        })
        .map(|watch| RulesWatch { _watch: watch })
    }
}

#[cfg(test)]
mod tests {
    use std::sync::mpsc;

    use super::*;

    #[test]
    fn an_empty_configuration_routes_as_the_go_router() {
        let (settings, watch) = Settings::from_text(b"  ").unwrap();
        assert!(watch.is_none());
        assert!(settings.rules.load().is_empty());
        assert!(settings.clear_route_cache);
        assert_eq!(settings.request_key_header, "x-request-id");
        assert_eq!(settings.extractor.policy(), Policy::Strict);
    }

    #[test]
    fn options_mirror_the_ext_proc_flags() {
        let text = br#"{
            "rules": "rules: [{name: c, match: {model: {exact: chatbot}}, pool: gemma3}]\ndefault: {action: reject}",
            "policy": "fast", "max_body": 1024, "fail_open": ["model_not_found"],
            "reject_missing_model": true, "body_fields": ["stream=x-llm-stream"], "numeric_model": true,
            "strip_header_prefixes": ["x-internal-"], "strip_headers": ["X-Gateway-Destination-Endpoint"],
            "request_key_header": "X-Trace"
        }"#;
        let (s, _) = Settings::from_text(text).unwrap();
        assert_eq!(s.rules.load().len(), 1);
        assert_eq!(s.extractor.policy(), Policy::Fast);
        assert_eq!(s.extractor.max_body(), 1024);
        assert_eq!(s.extractor.fields().len(), 1, "the body field is extracted");
        assert!(s.extractor.numeric_model());
        let failure = s.decider.failure_policy();
        assert_eq!(
            failure.action(ErrorKind::ModelNotFound),
            FailureAction::PassThrough
        );
        assert_eq!(
            failure.action(ErrorKind::InvalidJson),
            FailureAction::Reject
        );
        assert_eq!(failure.missing_model(), FailureAction::Reject);
        assert_eq!(s.request_key_header, "x-trace");
        let table = s.rules.load();
        assert!(s.decider.strips(&table, "x-internal-user"));
        assert!(s.decider.strips(&table, "x-llm-stream"));
        assert!(s.decider.strips(&table, "x-gateway-destination-endpoint"));
        assert!(!s.decider.strips(&table, "x-gateway-inference-objective"));
    }

    #[test]
    fn bad_configurations_are_refused_with_the_reason() {
        for (text, needle) in [
            (&br#"{"policy":"lax"}"#[..], "policy"),
            (br#"{"fail_open":["nope"]}"#, "nope"),
            (br#"{"rules":"rules: [ {name: broken"}"#, "rules"),
            (br#"{"rules":"{}","rules_file":"/x"}"#, "not both"),
            (
                br#"{"rules_file":"/nonexistent/bbr-rules.yaml"}"#,
                "bbr-rules",
            ),
            (br#"{"unknown_option":1}"#, "unknown_option"),
            (br#"{"body_fields":["a=x-h","b=x-h"]}"#, "x-h"),
            (b"not json", "filter_config"),
        ] {
            let e = Settings::from_text(text).unwrap_err();
            assert!(
                e.0.contains(needle),
                "{}: {e}",
                String::from_utf8_lossy(text)
            );
        }
    }

    #[test]
    fn a_rules_file_is_reloaded_and_a_bad_one_keeps_the_table() {
        let dir = std::env::temp_dir().join(format!("bbr-envoy-rules-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("rules.yaml");
        std::fs::write(
            &path,
            "rules: [{name: a, match: {model: {exact: a}}, pool: p}]\n",
        )
        .unwrap();
        let text = format!(r#"{{"rules_file":{:?},"rules_poll_ms":10}}"#, path);
        let (settings, watch) = Settings::from_text(text.as_bytes()).unwrap();
        let (watched, poll) = watch.unwrap();
        assert_eq!(watched, path);
        let (tx, rx) = mpsc::channel();
        let _watch = RulesWatch::start(watched, poll, settings.rules.clone(), move |r| {
            let _ = tx.send(r);
        })
        .unwrap();
        assert_eq!(settings.rules.load().len(), 1);

        std::fs::write(&path, "rules: [ {name: broken\n").unwrap();
        let refused = rx.recv_timeout(Duration::from_secs(20)).unwrap();
        assert!(refused.is_err(), "{refused:?}");
        assert_eq!(settings.rules.load().len(), 1, "the old table stays");

        std::fs::write(
            &path,
            "rules:\n  - {name: a, match: {model: {exact: a}}, pool: p}\n  - {name: b, match: {model: {exact: b}}, pool: q}\n",
        )
        .unwrap();
        let reloaded = rx.recv_timeout(Duration::from_secs(20)).unwrap();
        assert_eq!(reloaded, Ok(()));
        assert_eq!(settings.rules.load().len(), 2);
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn a_rules_file_caught_half_written_is_not_loaded() {
        use std::io::Write;

        let dir = std::env::temp_dir().join(format!("bbr-envoy-half-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("rules.yaml");
        // Written in one go, between two tries: three rules.
        let other = "rules: [{name: x, match: {model: {exact: x}}, pool: x}, {name: y, match: {model: {exact: y}}, pool: y}, {name: z, match: {model: {exact: z}}, pool: z}]\n";
        std::fs::write(&path, other).unwrap();
        // Cut after the first rule, the file is valid and names one rule.
        let whole = "rules:\n  - {name: a, match: {model: {exact: a}}, pool: p}\n  - {name: b, match: {model: {exact: b}}, pool: q}\n";
        let cut = whole.find("  - {name: b").unwrap();
        let rules = SharedRules::new(RuleTable::from_path(&path).unwrap());
        let (tx, rx) = mpsc::channel();
        let table = rules.clone();
        // Polled every 10 ms, the file left cut for 10 ms is seen by a poll
        // in nearly every round (a watch without stable reads loads it);
        // the two reads that must agree lie 50 ms apart.
        let watch = RulesWatch::start(path.clone(), Duration::from_millis(10), rules, move |r| {
            let _ = tx.send(r.map(|()| table.load().len()));
        })
        .unwrap();
        let timeout = Duration::from_secs(20);
        for _ in 0..4 {
            std::fs::write(&path, &whole[..cut]).unwrap();
            std::thread::sleep(Duration::from_millis(10));
            let mut file = std::fs::OpenOptions::new()
                .append(true)
                .open(&path)
                .unwrap();
            file.write_all(&whole.as_bytes()[cut..]).unwrap();
            drop(file);
            let loaded = rx.recv_timeout(timeout).unwrap();
            assert_eq!(loaded, Ok(2), "rules loaded from the file cut in two");
            std::fs::write(&path, other).unwrap();
            assert_eq!(rx.recv_timeout(timeout).unwrap(), Ok(3));
        }
        drop(watch);
        let _ = std::fs::remove_dir_all(&dir);
    }
}
