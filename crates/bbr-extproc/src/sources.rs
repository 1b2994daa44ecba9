//! The rule table's sources — the rules file and the base-model ConfigMaps
//! read from the Kubernetes API — merged into one [`SharedRules`].
//!
//! Each source changes on its own: the rules file when it is edited (or its
//! mounted ConfigMap swapped), a base-model ConfigMap when the API server
//! says so. Whichever changes, [`TableSources`] rebuilds the whole table
//! from the current state of every source and swaps it in at once, so a
//! reload of the file never drops the ConfigMaps' mappings, nor a ConfigMap
//! event the file's rules. A change that does not compile is refused and the
//! previous state of that source stays in force; the other sources keep
//! serving.

use std::{
    collections::BTreeMap,
    path::{Path, PathBuf},
    sync::{Arc, Mutex, MutexGuard},
};

use bbr_core::rules::{
    ConfigError, RuleTable, RuleTableBuilder, SharedRules, discovery::ServedModel,
};

/// The sources of the served rule table; cheap to clone (clones share the
/// sources and the table).
///
/// ```
/// use bbr_extproc::sources::TableSources;
///
/// let sources = TableSources::new(None).unwrap();
/// sources
///     .apply_base_models("ns/llama", "baseModel: llama-3\nadapters: \"- llama-sql\\n\"")
///     .unwrap();
/// assert_eq!(sources.rules().load().base_model("llama-sql"), Some("llama-3"));
/// sources.remove_base_models("ns/llama");
/// assert_eq!(sources.rules().load().base_model("llama-sql"), None);
/// ```
#[derive(Clone, Debug)]
pub struct TableSources {
    state: Arc<Mutex<State>>,
    rules: SharedRules,
}

#[derive(Debug)]
struct State {
    rules_path: Option<PathBuf>,
    /// The rules file's text in force: read once, then as the watcher hands
    /// it over (settled), never again on a ConfigMap event.
    rules_text: String,
    /// Accepted base-model ConfigMap data (YAML or JSON text), by
    /// `namespace/name`. Ordered, so that a rebuild is deterministic.
    base_models: BTreeMap<String, String>,
    /// The models each pool's servers list (`/v1/models`), by pool.
    discovered: BTreeMap<String, Vec<ServedModel>>,
}

impl State {
    fn builder(&self) -> RuleTableBuilder {
        let builder = match &self.rules_path {
            Some(path) => RuleTableBuilder::new().rules_file_text(path, self.rules_text.as_str()),
            None => RuleTableBuilder::new(),
        };
        let builder = self
            .base_models
            .values()
            .fold(builder, |b, text| b.base_models_yaml(text.as_str()));
        self.discovered.iter().fold(builder, |b, (pool, models)| {
            b.discovered_models(pool.as_str(), models.clone())
        })
    }

    fn build(&self) -> Result<RuleTable, ConfigError> {
        self.builder().build()
    }
}

impl TableSources {
    /// Loads the rules file at `rules_path` (none: the Go router's
    /// behaviour, every model routed on its own name) with no ConfigMaps yet.
    pub fn new(rules_path: Option<PathBuf>) -> Result<TableSources, ConfigError> {
        let rules_text = match &rules_path {
            Some(path) => RuleTableBuilder::read_rules_file(path)?,
            None => String::new(),
        };
        let state = State {
            rules_path,
            rules_text,
            base_models: BTreeMap::new(),
            discovered: BTreeMap::new(),
        };
        let table = state.build()?;
        Ok(TableSources {
            state: Arc::new(Mutex::new(state)),
            rules: SharedRules::new(table),
        })
    }

    /// The table requests read; every change of a source is swapped into it.
    pub fn rules(&self) -> SharedRules {
        self.rules.clone()
    }

    /// The rules file, if any.
    pub fn rules_path(&self) -> Option<PathBuf> {
        self.lock().rules_path.clone()
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        // A panic while holding the lock cannot leave the map half-written
        // (every change is one insert or remove): go on with it.
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Rebuilds with `text`, the rules file's new contents as the watcher
    /// read them (see [`FileWatch`](bbr_core::watch::FileWatch));
    /// `path` names it in errors. On error the table and the text in force
    /// stay.
    pub fn reload_rules_text(&self, path: &Path, text: &str) -> Result<(), ConfigError> {
        let mut state = self.lock();
        let previous = std::mem::replace(&mut state.rules_text, text.to_owned());
        let path = state.rules_path.replace(path.to_owned());
        match state.build() {
            Ok(table) => {
                self.rules.replace(table);
                Ok(())
            }
            Err(e) => {
                state.rules_text = previous;
                state.rules_path = path;
                Err(e)
            }
        }
    }

    /// Adds or replaces the base models of one ConfigMap (`key`, usually
    /// `namespace/name`; `data`, its data as YAML or JSON: `baseModel` and
    /// `adapters`). When the table with it does not compile (bad data, an
    /// adapter another ConfigMap already maps to a different base model …)
    /// the change is refused and that ConfigMap's previous data, if any,
    /// stays in force.
    pub fn apply_base_models(&self, key: &str, data: &str) -> Result<(), ConfigError> {
        let mut state = self.lock();
        let previous = state.base_models.insert(key.to_owned(), data.to_owned());
        match state.build() {
            Ok(table) => {
                self.rules.replace(table);
                Ok(())
            }
            Err(e) => {
                match previous {
                    Some(text) => state.base_models.insert(key.to_owned(), text),
                    None => state.base_models.remove(key),
                };
                Err(e)
            }
        }
    }

    /// Replaces the models discovered from the pools (every pool's list, as
    /// `bbr_discovery::ModelDiscovery` hands them over): adapters mapped to
    /// their parents below the rules file and the ConfigMaps, and listed on
    /// `/v1/models`. On error the previous lists stay in force.
    pub fn apply_discovered(
        &self,
        lists: &BTreeMap<String, Vec<ServedModel>>,
    ) -> Result<(), ConfigError> {
        let mut state = self.lock();
        let previous = std::mem::replace(&mut state.discovered, lists.clone());
        match state.build() {
            Ok(table) => {
                self.rules.replace(table);
                Ok(())
            }
            Err(e) => {
                state.discovered = previous;
                Err(e)
            }
        }
    }

    /// Removes the base models of one ConfigMap; `false` when it had none
    /// in force.
    pub fn remove_base_models(&self, key: &str) -> bool {
        let mut state = self.lock();
        let Some(previous) = state.base_models.remove(key) else {
            return false;
        };
        match state.build() {
            Ok(table) => {
                self.rules.replace(table);
                true
            }
            Err(e) => {
                // Removing mappings cannot make a table invalid unless the
                // rules file changed under us and no longer compiles: keep
                // the table in force, and the ConfigMap with it.
                tracing::error!(error = %e, configmap = key, "base models not removed");
                state.base_models.insert(key.to_owned(), previous);
                false
            }
        }
    }

    /// Replaces every ConfigMap's base models at once (after a full list
    /// from the API server, which also drops ConfigMaps deleted while the
    /// watch was down). Each is added in key order and refused alone when
    /// it does not fit, keeping its previously accepted data, if any; the
    /// refusals are returned by key.
    pub fn replace_base_models(
        &self,
        all: impl IntoIterator<Item = (String, String)>,
    ) -> Vec<(String, ConfigError)> {
        self.replace_base_models_where(|_| true, all)
    }

    /// [`replace_base_models`](Self::replace_base_models) for the keys
    /// `owned` says are this list's (one watch among several): the others
    /// stay as they are.
    pub fn replace_base_models_where(
        &self,
        owned: impl Fn(&str) -> bool,
        all: impl IntoIterator<Item = (String, String)>,
    ) -> Vec<(String, ConfigError)> {
        let mut state = self.lock();
        let old = std::mem::take(&mut state.base_models);
        state.base_models = old
            .iter()
            .filter(|(key, _)| !owned(key))
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect();
        let mut refused = Vec::new();
        let mut listed: BTreeMap<String, String> = all.into_iter().collect();
        for (key, text) in std::mem::take(&mut listed) {
            state.base_models.insert(key.clone(), text);
            if let Err(e) = state.build() {
                state.base_models.remove(&key);
                if let Some(previous) = old.get(&key) {
                    state.base_models.insert(key.clone(), previous.clone());
                    if state.build().is_err() {
                        state.base_models.remove(&key);
                    }
                }
                refused.push((key, e));
            }
        }
        match state.build() {
            Ok(table) => self.rules.replace(table),
            Err(e) => {
                tracing::error!(error = %e, "base models not replaced; the table in force stays");
                state.base_models = old;
            }
        }
        refused
    }

    /// The keys of the ConfigMaps whose base models are in force.
    pub fn base_model_keys(&self) -> Vec<String> {
        self.lock().base_models.keys().cloned().collect()
    }
}

#[cfg(test)]
mod tests {

    #[test]
    fn discovered_adapters_sit_below_the_configmaps() {
        use bbr_core::rules::discovery::ServedModel;
        let sources = TableSources::new(None).unwrap();
        sources
            .apply_base_models("ns/llama", "baseModel: llama-3\nadapters: \"- sql\\n\"")
            .unwrap();
        let served = |id: &str, parent: Option<&str>| ServedModel {
            id: id.to_owned(),
            parent: parent.map(str::to_owned),
        };
        let lists = BTreeMap::from([(
            "qwen-pool".to_owned(),
            vec![
                served("qwen", None),
                served("sql", Some("qwen")),
                served("chat", Some("qwen")),
            ],
        )]);
        sources.apply_discovered(&lists).unwrap();
        let table = sources.rules().load();
        // The ConfigMap's mapping stands; the rest comes from the pool.
        assert_eq!(table.base_model("sql"), Some("llama-3"));
        assert_eq!(table.base_model("chat"), Some("qwen"));
        // A ConfigMap event keeps the discovered lists.
        sources.remove_base_models("ns/llama");
        assert_eq!(sources.rules().load().base_model("chat"), Some("qwen"));
        assert_eq!(sources.rules().load().base_model("sql"), Some("qwen"));
        sources.apply_discovered(&BTreeMap::new()).unwrap();
        assert_eq!(sources.rules().load().base_model("chat"), None);
    }

    use super::*;

    fn cm(base: &str, adapters: &[&str]) -> String {
        let list: String = adapters.iter().map(|a| format!("- {a}\\n")).collect();
        format!("{{\"baseModel\": \"{base}\", \"adapters\": \"{list}\"}}")
    }

    fn base(sources: &TableSources, model: &str) -> Option<String> {
        sources.rules().load().base_model(model).map(str::to_owned)
    }

    #[test]
    fn configmaps_add_change_and_remove_mappings() {
        let s = TableSources::new(None).unwrap();
        s.apply_base_models("a/one", &cm("llama-3", &["sql", "chat"]))
            .unwrap();
        assert_eq!(base(&s, "sql").as_deref(), Some("llama-3"));
        assert_eq!(base(&s, "llama-3").as_deref(), Some("llama-3"));
        s.apply_base_models("a/one", &cm("llama-3", &["chat"]))
            .unwrap();
        assert_eq!(base(&s, "sql"), None);
        assert_eq!(base(&s, "chat").as_deref(), Some("llama-3"));
        assert!(s.remove_base_models("a/one"));
        assert_eq!(base(&s, "chat"), None);
        assert!(!s.remove_base_models("a/one"));
    }

    #[test]
    fn a_bad_configmap_is_refused_and_the_rest_keeps_serving() {
        let s = TableSources::new(None).unwrap();
        s.apply_base_models("a/one", &cm("llama-3", &["sql"]))
            .unwrap();
        // Not a base-model ConfigMap.
        assert!(s.apply_base_models("a/two", "{\"adapters\": 3}").is_err());
        // An adapter already mapped to another base model.
        assert!(s.apply_base_models("a/two", &cm("qwen", &["sql"])).is_err());
        assert_eq!(base(&s, "sql").as_deref(), Some("llama-3"));
        assert_eq!(s.base_model_keys(), ["a/one"]);
        // A bad update keeps the ConfigMap's previous data.
        assert!(s.apply_base_models("a/one", "baseModel: \"\"").is_err());
        assert_eq!(base(&s, "sql").as_deref(), Some("llama-3"));
    }

    #[test]
    fn a_full_list_replaces_everything_and_refuses_one_at_a_time() {
        let s = TableSources::new(None).unwrap();
        s.apply_base_models("a/gone", &cm("old", &["x"])).unwrap();
        s.apply_base_models("a/kept", &cm("llama-3", &["sql"]))
            .unwrap();
        let refused = s.replace_base_models([
            ("a/kept".to_owned(), "baseModel: [1]".to_owned()),
            ("a/new".to_owned(), cm("qwen", &["coder"])),
        ]);
        assert_eq!(refused.len(), 1);
        assert_eq!(refused[0].0, "a/kept");
        assert_eq!(base(&s, "x"), None, "deleted while the watch was down");
        assert_eq!(
            base(&s, "sql").as_deref(),
            Some("llama-3"),
            "kept as it was"
        );
        assert_eq!(base(&s, "coder").as_deref(), Some("qwen"));
    }

    #[test]
    fn a_rules_file_reload_keeps_the_configmaps() {
        let dir = std::env::temp_dir().join(format!("bbr-sources-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("rules.yaml");
        std::fs::write(
            &path,
            "rules: [{name: a, match: {model: {exact: sql}}, pool: one}]",
        )
        .unwrap();
        let s = TableSources::new(Some(path.clone())).unwrap();
        s.apply_base_models("a/one", &cm("llama-3", &["sql"]))
            .unwrap();
        std::fs::write(
            &path,
            "rules: [{name: a, match: {model: {exact: sql}}, pool: two}]",
        )
        .unwrap();
        s.reload_rules_text(&path, &std::fs::read_to_string(&path).unwrap())
            .unwrap();
        let table = s.rules().load();
        let decision = table.route("sql", None).unwrap().unwrap();
        assert_eq!(decision.pool(), Some("two"));
        assert_eq!(decision.base_model(), Some("llama-3"));
        // A broken file is refused; the table in force stays.
        std::fs::write(&path, "rules: [{").unwrap();
        assert!(
            s.reload_rules_text(&path, &std::fs::read_to_string(&path).unwrap())
                .is_err()
        );
        assert_eq!(s.rules().load().base_model("sql"), Some("llama-3"));
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
