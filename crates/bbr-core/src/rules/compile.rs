//! Loading, validating and compiling a rules configuration.

use std::{
    collections::{BTreeMap, HashMap, hash_map::Entry},
    path::{Path, PathBuf},
    sync::Arc,
};

use http::{HeaderName, HeaderValue};
use serde::Deserialize as _;

use super::{
    BASE_MODEL_HEADER, ConfigError, Criticality, MODEL_NAME_HEADER, MODEL_REWRITE_HEADER, ModelMap,
    POOL_HEADER, RuleTable,
    discovery::ServedModel,
    glob,
    matcher::{Matcher, PatternSet, PrefixIndex},
    pick::{Rng, Weights},
    schema::{
        AdapterList, BaseModelSpec, ConfigMapData, DefaultSpec, HeaderList, RuleSpec, RulesFile,
    },
};

/// Headers a rule may not set: bbr's own, and those that frame or address
/// the request (a rule setting them would corrupt it, not route it).
const FORBIDDEN_HEADERS: &[&str] = &[
    MODEL_NAME_HEADER,
    BASE_MODEL_HEADER,
    POOL_HEADER,
    "content-length",
    "content-type",
    "transfer-encoding",
    "connection",
    "keep-alive",
    "proxy-connection",
    "te",
    "trailer",
    "upgrade",
    "host",
];

/// Whether `name` frames or addresses the request (`content-length`,
/// `host`, hop-by-hop headers …) or is one of bbr's own routing headers:
/// neither a rule's `set_headers` nor any other configuration may set it.
pub fn is_reserved_header(name: &HeaderName) -> bool {
    FORBIDDEN_HEADERS.contains(&name.as_str())
}

/// The priority class a route gives its requests.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Class {
    Criticality(Criticality),
    Priority(i32),
}

/// A base model, with its header value made once.
#[derive(Debug)]
pub(crate) struct BaseModel {
    pub(crate) name: Arc<str>,
    pub(crate) value: HeaderValue,
}

/// A rewrite target.
#[derive(Debug)]
pub(crate) struct Target {
    pub(crate) model: Arc<str>,
    pub(crate) base: Option<Arc<BaseModel>>,
}

/// The weighted targets of a rule.
#[derive(Debug)]
pub(crate) struct Targets {
    pub(crate) targets: Box<[Target]>,
    pub(crate) weights: Weights,
}

/// What a rule (or a routing default) decides, compiled.
#[derive(Debug, Default)]
pub(crate) struct Route {
    pub(crate) name: Option<Box<str>>,
    pub(crate) pool: Option<(Box<str>, HeaderValue)>,
    pub(crate) class: Option<Class>,
    pub(crate) targets: Option<Targets>,
    pub(crate) set_headers: Box<[(HeaderName, HeaderValue)]>,
}

/// What happens to a model no rule matches.
#[derive(Debug)]
pub(crate) enum Fallback {
    /// Answer 404 `model_not_found`.
    Reject,
    /// Forward unchanged, no routing headers.
    Pass,
    /// Route with this route (the Go router's behaviour when it has no pool).
    Route(Arc<Route>),
}

/// Where a configuration comes from.
#[derive(Clone, Debug)]
enum Source {
    Path(PathBuf),
    /// A file's contents read already: the path names it in errors and
    /// picks the format.
    File(PathBuf, String),
    Yaml(String),
    Json(String),
}

/// Builds a [`RuleTable`] from a rules file and, optionally, the Go
/// router's base-model ConfigMaps, with an optional seed for the weighted
/// choice. Cheap to clone and reusable: [`SharedRules::reload_with`](super::SharedRules::reload_with)
/// rebuilds from the same sources.
///
/// Without a rules source the table routes every model as the Go router
/// does (model and base model copied to headers, no pool).
///
/// ```
/// use bbr_core::rules::RuleTable;
///
/// let table = RuleTable::builder()
///     .rules_yaml("rules: [{name: a, match: {model: {prefix: llama-}}, pool: llama}]")
///     .base_models_yaml("baseModel: llama-3\nadapters: |\n  - llama-sql\n")
///     .seed(7)
///     .build()
///     .unwrap();
/// assert_eq!(table.base_model("llama-sql"), Some("llama-3"));
/// ```
#[derive(Clone, Debug, Default)]
pub struct RuleTableBuilder {
    rules: Option<Source>,
    base_models: Vec<Source>,
    /// The models each pool serves, by pool name.
    discovered: BTreeMap<String, Vec<ServedModel>>,
    seed: Option<u64>,
}

impl RuleTableBuilder {
    /// A builder with no sources.
    pub fn new() -> RuleTableBuilder {
        RuleTableBuilder::default()
    }

    /// Reads the rules from `path`: JSON when the name ends in `.json`,
    /// YAML otherwise. Replaces any earlier rules source.
    #[must_use]
    pub fn rules_path(mut self, path: impl Into<PathBuf>) -> Self {
        self.rules = Some(Source::Path(path.into()));
        self
    }

    /// Reads a rules file as [`rules_file_text`](Self::rules_file_text)
    /// takes it, with the error [`rules_path`](Self::rules_path) gives for a
    /// file that cannot be read.
    pub fn read_rules_file(path: &Path) -> Result<String, ConfigError> {
        read(path)
    }

    /// Takes the rules from `text`, the contents of the file at `path`
    /// read by the caller (a watcher that made sure the file was not caught
    /// half-written): JSON when the name ends in `.json`, YAML otherwise;
    /// errors name `path`. Replaces any earlier rules source.
    #[must_use]
    pub fn rules_file_text(mut self, path: impl Into<PathBuf>, text: impl Into<String>) -> Self {
        self.rules = Some(Source::File(path.into(), text.into()));
        self
    }

    /// Takes the rules from YAML text. Replaces any earlier rules source.
    #[must_use]
    pub fn rules_yaml(mut self, text: impl Into<String>) -> Self {
        self.rules = Some(Source::Yaml(text.into()));
        self
    }

    /// Takes the rules from JSON text. Replaces any earlier rules source.
    #[must_use]
    pub fn rules_json(mut self, text: impl Into<String>) -> Self {
        self.rules = Some(Source::Json(text.into()));
        self
    }

    /// Adds the base models of a Go router ConfigMap at `path`: either a
    /// directory where the ConfigMap is mounted (files `baseModel` and
    /// `adapters`), or a YAML file holding ConfigMap manifests (`data:`
    /// with `baseModel` and `adapters`, several separated by `---`) or
    /// bare data maps.
    #[must_use]
    pub fn base_models_path(mut self, path: impl Into<PathBuf>) -> Self {
        self.base_models.push(Source::Path(path.into()));
        self
    }

    /// Adds the base models of Go router ConfigMap data given as YAML text.
    #[must_use]
    pub fn base_models_yaml(mut self, text: impl Into<String>) -> Self {
        self.base_models.push(Source::Yaml(text.into()));
        self
    }

    /// Adds the models `pool`'s servers list on `GET /v1/models` (see
    /// [`discovery`](super::discovery)): each adapter with a `parent` maps
    /// to its base model unless an explicit source says otherwise, and the
    /// table's [model list](super::RuleTable::models_json) names them.
    /// Replaces what was given for `pool` before.
    ///
    /// ```
    /// use bbr_core::rules::{RuleTableBuilder, discovery::ServedModel};
    ///
    /// let served = vec![
    ///     ServedModel { id: "qwen".into(), parent: None },
    ///     ServedModel { id: "sql-lora".into(), parent: Some("qwen".into()) },
    /// ];
    /// let table = RuleTableBuilder::new().discovered_models("qwen-pool", served).build().unwrap();
    /// assert_eq!(table.base_model("sql-lora"), Some("qwen"));
    /// ```
    #[must_use]
    pub fn discovered_models(mut self, pool: impl Into<String>, models: Vec<ServedModel>) -> Self {
        self.discovered.insert(pool.into(), models);
        self
    }

    /// Seeds the random choice among weighted targets (requests without a
    /// request key), for reproducible tests.
    #[must_use]
    pub fn seed(mut self, seed: u64) -> Self {
        self.seed = Some(seed);
        self
    }

    /// Reads, validates and compiles the configuration.
    pub fn build(&self) -> Result<RuleTable, ConfigError> {
        let parse_file = |path: &Path, text: &str| {
            let parsed = if is_json(path) {
                parse_rules_json(text)
            } else {
                parse_rules_yaml(text)
            };
            parsed.map_err(|e| e.in_file(path))
        };
        let (file, path) = match &self.rules {
            None => (None, None),
            Some(Source::Path(path)) => (Some(parse_file(path, &read(path)?)?), Some(path)),
            Some(Source::File(path, text)) => (Some(parse_file(path, text)?), Some(path)),
            Some(Source::Yaml(text)) => (Some(parse_rules_yaml(text)?), None),
            Some(Source::Json(text)) => (Some(parse_rules_json(text)?), None),
        };
        let has_rules_file = file.is_some();
        let mut file = file.unwrap_or_default();
        for source in &self.base_models {
            match source {
                Source::Path(path) => {
                    let specs = read_configmap_path(path).map_err(|e| e.in_file(path))?;
                    file.base_models.extend(specs);
                }
                Source::Yaml(text) | Source::Json(text) => {
                    file.base_models.extend(parse_configmaps(text)?);
                }
                Source::File(path, text) => {
                    file.base_models
                        .extend(parse_configmaps(text).map_err(|e| e.in_file(path))?);
                }
            }
        }
        let (specs, discovered) = super::discovery::merge(&file.base_models, &self.discovered);
        file.base_models.extend(specs);
        let rng = match self.seed {
            Some(seed) => Rng::seeded(seed),
            None => Rng::from_entropy(),
        };
        let table = compile(file, has_rules_file, rng).map_err(|e| match path {
            Some(path) => e.in_file(path),
            None => e,
        })?;
        Ok(table.with_discovered(discovered))
    }
}

fn is_json(path: &Path) -> bool {
    path.extension()
        .is_some_and(|ext| ext.eq_ignore_ascii_case("json"))
}

fn read(path: &Path) -> Result<String, ConfigError> {
    std::fs::read_to_string(path)
        .map_err(|e| ConfigError::new(format!("cannot read the file: {e}")).in_file(path))
}

/// The deepest nesting of collections a rules file may have. Real files
/// nest four or five levels; YAML parsers take time quadratic in the depth,
/// so a deeper file is refused before it is parsed.
pub const MAX_NESTING: usize = 32;

pub(crate) fn parse_rules_yaml(text: &str) -> Result<RulesFile, ConfigError> {
    check_nesting(text)?;
    match serde_yaml_ng::from_str::<Option<RulesFile>>(text) {
        Ok(Some(file)) => Ok(file),
        Ok(None) => Err(ConfigError::new(
            "the configuration is empty (write `default: {action: reject}` to reject every model)",
        )),
        Err(err) if err.to_string().contains("unknown field `<<`") => Err(ConfigError::new(
            "YAML merge keys (`<<: *anchor`) are not supported: write the fields out \
             (anchors and aliases alone work)",
        )),
        Err(err) => {
            let err = ConfigError::new(err.to_string());
            let Ok(value) = serde_yaml_ng::from_str::<serde_yaml_ng::Value>(text) else {
                return Err(err);
            };
            let fails = |part: &serde_yaml_ng::Value, check: fn(&str) -> bool| {
                serde_yaml_ng::to_string(part).map_or(true, |t| !check(&t))
            };
            let rules = value
                .get("rules")
                .and_then(|r| r.as_sequence())
                .map(|rules| {
                    rules
                        .iter()
                        .map(|rule| {
                            let name = rule.get("name").and_then(|n| n.as_str());
                            (
                                name.map(str::to_owned),
                                fails(rule, |t| serde_yaml_ng::from_str::<RuleSpec>(t).is_ok()),
                            )
                        })
                        .collect()
                })
                .unwrap_or_default();
            let default = value
                .get("default")
                .is_some_and(|d| fails(d, |t| serde_yaml_ng::from_str::<DefaultSpec>(t).is_ok()));
            let bases = value.get("base_models").is_some_and(|b| {
                fails(b, |t| {
                    serde_yaml_ng::from_str::<Vec<BaseModelSpec>>(t).is_ok()
                })
            });
            Err(blame(err, rules, default, bases))
        }
    }
}

pub(crate) fn parse_rules_json(text: &str) -> Result<RulesFile, ConfigError> {
    check_nesting(text)?;
    match serde_json::from_str::<RulesFile>(text) {
        Ok(file) => Ok(file),
        Err(err) => {
            let err = ConfigError::new(err.to_string());
            let Ok(value) = serde_json::from_str::<serde_json::Value>(text) else {
                return Err(err);
            };
            let rules = value
                .get("rules")
                .and_then(|r| r.as_array())
                .map(|rules| {
                    rules
                        .iter()
                        .map(|rule| {
                            let name = rule.get("name").and_then(|n| n.as_str());
                            (
                                name.map(str::to_owned),
                                RuleSpec::deserialize(rule).is_err(),
                            )
                        })
                        .collect()
                })
                .unwrap_or_default();
            let default = value
                .get("default")
                .is_some_and(|d| DefaultSpec::deserialize(d).is_err());
            let bases = value
                .get("base_models")
                .is_some_and(|b| Vec::<BaseModelSpec>::deserialize(b).is_err());
            Err(blame(err, rules, default, bases))
        }
    }
}

/// Names the part of the file a parse error lies in: the parser reports a
/// line and a column, a reader wants the rule. Each rule (then `default`,
/// then `base_models`) was re-parsed alone, on the error path only; the
/// first that fails is blamed.
fn blame(
    err: ConfigError,
    rules: Vec<(Option<String>, bool)>,
    default_fails: bool,
    bases_fail: bool,
) -> ConfigError {
    if let Some((i, (name, _))) = rules
        .into_iter()
        .enumerate()
        .find(|(_, (_, failed))| *failed)
    {
        return err.or_rule(rule_label(i, name.as_deref()));
    }
    if default_fails {
        return err.or_section("default");
    }
    if bases_fail {
        return err.or_section("base_models");
    }
    err
}

fn rule_label(index: usize, name: Option<&str>) -> String {
    match name {
        Some(name) if !name.trim().is_empty() => name.to_owned(),
        _ => format!("#{}", index + 1),
    }
}

/// Reads a Go router ConfigMap: a mounted directory or a YAML file.
fn read_configmap_path(path: &Path) -> Result<Vec<BaseModelSpec>, ConfigError> {
    if path.is_dir() {
        let base_model = read(&path.join("baseModel"))?.trim().to_owned();
        let adapters_path = path.join("adapters");
        let adapters = if adapters_path.exists() {
            parse_adapter_text(&read(&adapters_path)?).map_err(|e| e.in_file(&adapters_path))?
        } else {
            Vec::new()
        };
        return Ok(vec![BaseModelSpec {
            base_model,
            adapters,
        }]);
    }
    parse_configmaps(&read(path)?)
}

/// Parses YAML documents, each a ConfigMap manifest or its bare `data`.
pub(crate) fn parse_configmaps(text: &str) -> Result<Vec<BaseModelSpec>, ConfigError> {
    let mut out = Vec::new();
    for document in serde_yaml_ng::Deserializer::from_str(text) {
        let value = serde_yaml_ng::Value::deserialize(document)
            .map_err(|e| ConfigError::in_section("base_models", e.to_string()))?;
        if value.is_null() {
            continue;
        }
        let data = value.get("data").cloned().unwrap_or(value);
        let data: ConfigMapData = serde_yaml_ng::from_value(data).map_err(|e| {
            ConfigError::in_section(
                "base_models",
                format!("not a base-model ConfigMap (`baseModel`, `adapters`): {e}"),
            )
        })?;
        let adapters = match data.adapters {
            None => Vec::new(),
            Some(AdapterList::List(list)) => list,
            Some(AdapterList::Text(text)) => parse_adapter_text(&text)?,
        };
        out.push(BaseModelSpec {
            base_model: data.base_model.trim().to_owned(),
            adapters,
        });
    }
    Ok(out)
}

fn parse_adapter_text(text: &str) -> Result<Vec<String>, ConfigError> {
    let list: Option<Vec<String>> = serde_yaml_ng::from_str(text).map_err(|e| {
        ConfigError::in_section("base_models", format!("`adapters` is not a YAML list: {e}"))
    })?;
    Ok(list.unwrap_or_default())
}

/// Why `text` cannot be a model name or a header value, if it cannot.
fn check_name(what: &str, text: &str) -> Result<HeaderValue, String> {
    if text.is_empty() {
        return Err(format!("{what} is empty"));
    }
    if text.chars().any(char::is_control) {
        return Err(format!("{what} {text:?} holds a control character"));
    }
    HeaderValue::from_str(text).map_err(|_| format!("{what} {text:?} is not a valid header value"))
}

fn parse_class(
    criticality: Option<&str>,
    priority: Option<i32>,
    default: Option<Class>,
) -> Result<Option<Class>, String> {
    match (criticality, priority) {
        (Some(_), Some(_)) => Err("set `criticality` or `priority`, not both".to_owned()),
        (None, Some(p)) => Ok(Some(Class::Priority(p))),
        (Some(c), None) => match c {
            "Critical" => Ok(Some(Class::Criticality(Criticality::Critical))),
            "Standard" => Ok(Some(Class::Criticality(Criticality::Standard))),
            "Sheddable" => Ok(Some(Class::Criticality(Criticality::Sheddable))),
            other => Err(format!(
                "unknown criticality {other:?} (expected Critical, Standard or Sheddable)"
            )),
        },
        (None, None) => Ok(default),
    }
}

fn compile_headers(list: HeaderList) -> Result<Box<[(HeaderName, HeaderValue)]>, String> {
    let mut out: Vec<(HeaderName, HeaderValue)> = Vec::with_capacity(list.0.len());
    for (name, value) in list.0 {
        let header = HeaderName::from_bytes(name.as_bytes())
            .map_err(|_| format!("set_headers: {name:?} is not a valid header name"))?;
        if is_reserved_header(&header) {
            return Err(format!(
                "set_headers may not set {:?}: bbr sets it, or it frames the request",
                header.as_str()
            ));
        }
        if out.iter().any(|(n, _)| *n == header) {
            return Err(format!("set_headers names {:?} twice", header.as_str()));
        }
        let value = HeaderValue::from_str(&value)
            .ok()
            .filter(|_| !value.chars().any(char::is_control))
            .ok_or_else(|| {
                format!(
                    "set_headers: the value of {:?} is not a valid header value",
                    header.as_str()
                )
            })?;
        out.push((header, value));
    }
    Ok(out.into())
}

/// A pattern match of a rule, for the glob and regex sets.
struct Pattern {
    source: String,
    regex: String,
    rule: u32,
}

fn compile(file: RulesFile, has_rules_file: bool, rng: Rng) -> Result<RuleTable, ConfigError> {
    let base_models = compile_base_models(file.base_models)?;
    let lookup_base = |model: &str| base_models.get(model).cloned();

    let mut routes = Vec::with_capacity(file.rules.len());
    let mut names: HashMap<String, usize> = HashMap::with_capacity(file.rules.len());
    let mut exact: ModelMap<u32> = ModelMap::default();
    let mut prefixes: HashMap<Box<str>, u32> = HashMap::new();
    let mut globs: Vec<Pattern> = Vec::new();
    let mut regexes: Vec<Pattern> = Vec::new();
    let mut managed: Vec<HeaderName> = vec![
        HeaderName::from_static(MODEL_NAME_HEADER),
        HeaderName::from_static(BASE_MODEL_HEADER),
        HeaderName::from_static(POOL_HEADER),
    ];

    for (index, spec) in file.rules.into_iter().enumerate() {
        let label = rule_label(index, Some(&spec.name));
        let fail = |reason: String| ConfigError::in_rule(label.clone(), reason);
        if spec.name.trim().is_empty() {
            return Err(fail("`name` is empty".to_owned()));
        }
        if let Some(first) = names.insert(spec.name.clone(), index) {
            return Err(fail(format!(
                "duplicate rule name (rules #{} and #{})",
                first + 1,
                index + 1
            )));
        }
        let id = index as u32;
        let RuleSpec {
            name,
            matcher,
            pool,
            criticality,
            priority,
            targets,
            set_headers,
        } = spec;
        let parts = RuleParts {
            name,
            pool,
            criticality,
            priority,
            targets: targets.map(|t| t.into_iter().map(|t| (t.model, t.weight)).collect()),
            set_headers,
        };
        let route = compile_rule(parts, &lookup_base).map_err(&fail)?;
        managed.extend(route.set_headers.iter().map(|(n, _)| n.clone()));
        if route.targets.is_some() {
            // bbr decides the model sent upstream: the endpoint picker's
            // rewrite header, sent by a client, would undo it.
            managed.push(HeaderName::from_static(MODEL_REWRITE_HEADER));
        }
        let name_of = |rule: u32| routes_name(&routes, rule);

        let model = matcher.model.unwrap_or_default();
        let kinds = [
            ("exact", model.exact),
            ("prefix", model.prefix),
            ("glob", model.glob),
            ("regex", model.regex),
        ];
        let mut given = kinds.into_iter().filter_map(|(k, v)| v.map(|v| (k, v)));
        let Some((kind, value)) = given.next() else {
            return Err(fail(
                "empty match: `match.model` needs one of exact, prefix, glob, regex".to_owned(),
            ));
        };
        if let Some((other, _)) = given.next() {
            return Err(fail(format!(
                "`match.model` sets both {kind} and {other}; a rule matches one way"
            )));
        }
        if value.is_empty() {
            return Err(fail(format!(
                "empty match: `{kind}` is empty (use `glob: \"*\"` to match every model)"
            )));
        }
        match kind {
            "exact" => match exact.entry(value.as_str().into()) {
                Entry::Occupied(e) => {
                    return Err(fail(format!(
                        "conflicting exact match: {value:?} is already matched by rule {:?}",
                        name_of(*e.get())
                    )));
                }
                Entry::Vacant(e) => {
                    e.insert(id);
                }
            },
            "prefix" => match prefixes.entry(value.as_str().into()) {
                Entry::Occupied(e) => {
                    return Err(fail(format!(
                        "conflicting prefix match: {value:?} is already matched by rule {:?}",
                        name_of(*e.get())
                    )));
                }
                Entry::Vacant(e) => {
                    e.insert(id);
                }
            },
            "glob" => {
                let regex =
                    glob::to_regex(&value).map_err(|e| fail(format!("bad glob {value:?}: {e}")))?;
                if let Some(p) = globs.iter().find(|p| p.source == value) {
                    return Err(fail(format!(
                        "glob {value:?} is already matched by rule {:?}; this rule could never match",
                        name_of(p.rule)
                    )));
                }
                globs.push(Pattern {
                    source: value,
                    regex,
                    rule: id,
                });
            }
            _ => {
                let regex = format!("^(?:{value})$");
                if let Err(e) = regex::Regex::new(&regex) {
                    return Err(fail(format!("bad regex {value:?}: {e}")));
                }
                if let Some(p) = regexes.iter().find(|p| p.source == value) {
                    return Err(fail(format!(
                        "regex {value:?} is already matched by rule {:?}; this rule could never match",
                        name_of(p.rule)
                    )));
                }
                regexes.push(Pattern {
                    source: value,
                    regex,
                    rule: id,
                });
            }
        }
        routes.push(Arc::new(route));
    }

    if has_rules_file && routes.is_empty() && file.default.is_none() {
        // `rules:` or `rules: []` alone, or a file caught half-written: a
        // table that would refuse every request is refused itself.
        return Err(ConfigError::new(
            "the file has no rules and no `default`: it would refuse every request \
             (write `default: {action: reject}` if that is what you want)",
        ));
    }
    let fallback = match file.default {
        None if has_rules_file => Fallback::Reject,
        None => Fallback::Route(Arc::new(Route::default())),
        Some(spec) => {
            let fallback = compile_default(spec)
                .map_err(|reason| ConfigError::in_section("default", reason))?;
            if let Fallback::Route(route) = &fallback {
                managed.extend(route.set_headers.iter().map(|(n, _)| n.clone()));
            }
            fallback
        }
    };

    managed.sort_unstable_by(|a, b| a.as_str().cmp(b.as_str()));
    managed.dedup();

    let pattern_set =
        |patterns: Vec<Pattern>, what: &str| -> Result<Option<PatternSet>, ConfigError> {
            if patterns.is_empty() {
                return Ok(None);
            }
            PatternSet::new(patterns.into_iter().map(|p| (p.regex, p.rule)).collect())
                .map(Some)
                .map_err(|e| {
                    ConfigError::new(format!("the {what} patterns do not compile together: {e}"))
                })
        };
    let matcher = Matcher {
        exact,
        prefix: PrefixIndex::new(prefixes.into_iter().collect()),
        glob: pattern_set(globs, "glob")?,
        regex: pattern_set(regexes, "regex")?,
    };
    Ok(RuleTable::from_parts(
        routes,
        matcher,
        base_models,
        fallback,
        managed.into(),
        rng,
    ))
}

fn routes_name(routes: &[Arc<Route>], rule: u32) -> &str {
    routes
        .get(rule as usize)
        .and_then(|r| r.name.as_deref())
        .unwrap_or("?")
}

/// A rule without its `match`, for [`compile_rule`].
struct RuleParts {
    name: String,
    pool: Option<String>,
    criticality: Option<String>,
    priority: Option<i32>,
    targets: Option<Vec<(String, Option<u32>)>>,
    set_headers: HeaderList,
}

fn compile_pool(pool: Option<String>) -> Result<Option<(Box<str>, HeaderValue)>, String> {
    pool.map(|pool| {
        let value = check_name("`pool`", &pool)?;
        Ok((pool.into_boxed_str(), value))
    })
    .transpose()
}

fn compile_rule(
    parts: RuleParts,
    lookup_base: &impl Fn(&str) -> Option<Arc<BaseModel>>,
) -> Result<Route, String> {
    let class = parse_class(
        parts.criticality.as_deref(),
        parts.priority,
        Some(Class::Criticality(Criticality::Standard)),
    )?;
    let pool = compile_pool(parts.pool)?;
    let targets = match parts.targets {
        None => None,
        Some(list) if list.is_empty() => {
            return Err("`targets` is empty (leave it out to keep the model)".to_owned());
        }
        Some(list) => {
            let mut targets: Vec<Target> = Vec::with_capacity(list.len());
            let mut weights = Vec::with_capacity(list.len());
            for (model, weight) in list {
                check_name("target `model`", &model)?;
                let weight = match weight {
                    None => return Err(format!("target {model:?} has no `weight`")),
                    Some(0) => return Err(format!("target {model:?} has weight 0")),
                    Some(w) => w,
                };
                if targets.iter().any(|t| *t.model == *model) {
                    return Err(format!("target {model:?} is listed twice"));
                }
                targets.push(Target {
                    base: lookup_base(&model),
                    model: model.into(),
                });
                weights.push(weight);
            }
            Some(Targets {
                targets: targets.into(),
                weights: Weights::new(weights),
            })
        }
    };
    Ok(Route {
        name: Some(parts.name.into_boxed_str()),
        pool,
        class,
        targets,
        set_headers: compile_headers(parts.set_headers)?,
    })
}

fn compile_default(spec: DefaultSpec) -> Result<Fallback, String> {
    let routing_keys = spec.pool.is_some()
        || spec.criticality.is_some()
        || spec.priority.is_some()
        || !spec.set_headers.0.is_empty();
    match spec.action.as_deref() {
        Some(action @ ("reject" | "pass")) => {
            if routing_keys {
                return Err(format!(
                    "`action: {action}` takes no pool, criticality, priority or set_headers"
                ));
            }
            Ok(if action == "reject" {
                Fallback::Reject
            } else {
                Fallback::Pass
            })
        }
        Some("route") | None => {
            if spec.action.is_none() && spec.pool.is_none() {
                return Err("`default` needs `action` (reject, pass, route) or a `pool`".to_owned());
            }
            let class = parse_class(
                spec.criticality.as_deref(),
                spec.priority,
                spec.pool
                    .as_ref()
                    .map(|_| Class::Criticality(Criticality::Standard)),
            )?;
            Ok(Fallback::Route(Arc::new(Route {
                name: None,
                pool: compile_pool(spec.pool)?,
                class,
                targets: None,
                set_headers: compile_headers(spec.set_headers)?,
            })))
        }
        Some(other) => Err(format!(
            "unknown action {other:?} (expected reject, pass or route)"
        )),
    }
}

/// Adapter → base model and base model → itself.
fn compile_base_models(specs: Vec<BaseModelSpec>) -> Result<ModelMap<Arc<BaseModel>>, ConfigError> {
    let fail = |reason: String| ConfigError::in_section("base_models", reason);
    let mut bases: ModelMap<Arc<BaseModel>> = ModelMap::default();
    for spec in &specs {
        let value = check_name("`base_model`", &spec.base_model).map_err(fail)?;
        bases
            .entry(spec.base_model.as_str().into())
            .or_insert_with(|| {
                Arc::new(BaseModel {
                    name: spec.base_model.as_str().into(),
                    value,
                })
            });
    }
    let mut map = bases.clone();
    for spec in &specs {
        let base = bases
            .get(spec.base_model.as_str())
            .cloned()
            .ok_or_else(|| fail("internal: base model lost".to_owned()))?;
        for adapter in &spec.adapters {
            check_name("adapter", adapter).map_err(fail)?;
            if *adapter == spec.base_model {
                continue;
            }
            if bases.contains_key(adapter.as_str()) {
                return Err(fail(format!(
                    "adapter {adapter:?} of {:?} is itself a base model",
                    spec.base_model
                )));
            }
            match map.entry(adapter.as_str().into()) {
                Entry::Occupied(e) if e.get().name != base.name => {
                    return Err(fail(format!(
                        "adapter {adapter:?} is listed under two base models, {:?} and {:?}",
                        e.get().name,
                        spec.base_model
                    )));
                }
                Entry::Occupied(_) => {}
                Entry::Vacant(e) => {
                    e.insert(Arc::clone(&base));
                }
            }
        }
    }
    Ok(map)
}

/// Refuses a text that nests collections deeper than [`MAX_NESTING`],
/// before any parser sees it: one pass, linear in the text.
///
/// The depth counted is an upper bound of what a YAML (or JSON) parser
/// would build: flow collections (`[`, `{` outside quotes and comments),
/// plus block collections (each deeper indentation, and each `- ` or `? `
/// that opens a nested one on the same line). Block scalars (`|`, `>`) are
/// skipped.
pub(crate) fn check_nesting(text: &str) -> Result<(), ConfigError> {
    let mut flow = 0usize;
    let mut indents: Vec<usize> = Vec::new();
    let mut scalar_indent: Option<usize> = None;
    for line in text.lines() {
        let indent = line.len() - line.trim_start_matches(' ').len();
        let content = line[indent..].trim_end();
        if let Some(parent) = scalar_indent {
            if content.is_empty() || indent > parent {
                continue;
            }
            scalar_indent = None;
        }
        if content.is_empty() || content.starts_with('#') {
            continue;
        }
        let mut depth = flow;
        if flow == 0 {
            while indents.last().is_some_and(|&top| top >= indent) {
                indents.pop();
            }
            indents.push(indent);
            depth = indents.len();
            // `- - - x` and `? - x` open one collection per indicator.
            let mut rest = content;
            while let Some(after) = rest.strip_prefix("- ").or_else(|| rest.strip_prefix("? ")) {
                depth += 1;
                rest = after.trim_start_matches(' ');
            }
        }
        let (flow_after, deepest) = scan_flow(content, flow);
        flow = flow_after;
        if depth.max(deepest + indents.len()) > MAX_NESTING {
            return Err(ConfigError::new(format!(
                "the file nests collections more than {MAX_NESTING} levels deep"
            )));
        }
        let bare = content.split(" #").next().unwrap_or(content);
        if flow == 0
            && bare
                .trim_end()
                .trim_end_matches(|c: char| c.is_ascii_digit() || c == '-' || c == '+')
                .ends_with(['|', '>'])
        {
            scalar_indent = Some(indent);
        }
    }
    Ok(())
}

/// Follows flow brackets through one line: the depth after it, and the
/// deepest reached. Quoted strings and comments are skipped.
fn scan_flow(line: &str, mut depth: usize) -> (usize, usize) {
    let mut deepest = depth;
    let mut quote: Option<char> = None;
    let mut prev = ' ';
    for c in line.chars() {
        match quote {
            Some(q) => {
                if c == q && (q == '\'' || prev != '\\') {
                    quote = None;
                }
            }
            None => match c {
                '"' | '\'' if prev == ' ' || "[{,:".contains(prev) => quote = Some(c),
                '#' if prev == ' ' => break,
                '[' | '{' => {
                    depth += 1;
                    deepest = deepest.max(depth);
                }
                ']' | '}' => depth = depth.saturating_sub(1),
                _ => {}
            },
        }
        prev = c;
    }
    (depth, deepest)
}
