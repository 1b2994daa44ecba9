//! Models learned from the pools themselves: what a server lists on
//! `GET /v1/models` (vLLM lists its base model and each loaded LoRA
//! adapter, an adapter with a `parent` naming its base model), merged into
//! the rule table's base models and model list.
//!
//! Precedence: the rules file's `base_models` and the base-model
//! ConfigMaps (given explicitly) win. A discovered adapter is mapped to its
//! `parent` only when no explicit source names it (as an adapter or a base
//! model) and no explicit base model would become an adapter; when two
//! pools give one adapter different parents, the pool first by name wins.
//! Entries whose names are not valid header values are skipped.

use std::collections::{BTreeMap, HashSet};

use serde::Deserialize;

use super::{ConfigError, schema::BaseModelSpec};

/// The most models one pool's list may hold; more is refused.
pub const MAX_SERVED_MODELS: usize = 4096;

/// A model a pool's server lists on `GET /v1/models`.
#[derive(Clone, Debug, PartialEq, Eq, Deserialize)]
pub struct ServedModel {
    /// The model name a request's `model` carries.
    pub id: String,
    /// For a LoRA adapter: the base model it was loaded on (vLLM's
    /// `parent`); `None` for a base model.
    #[serde(default)]
    pub parent: Option<String>,
}

#[derive(Deserialize)]
struct ModelList {
    data: Vec<ServedModel>,
}

/// Reads an OpenAI-style model list (`{"object": "list", "data": [{"id":
/// …, "parent": …}, …]}`), the answer of a pool's `GET /v1/models`.
/// Refused: anything but such an object, or more than
/// [`MAX_SERVED_MODELS`] entries. The caller bounds the body's size.
///
/// ```
/// use bbr_core::rules::discovery::parse_model_list;
///
/// let list = br#"{"object":"list","data":[
///   {"id":"meta-llama/Llama-3.1-8B","object":"model","owned_by":"vllm","parent":null},
///   {"id":"sql-lora","object":"model","owned_by":"vllm","parent":"meta-llama/Llama-3.1-8B"}]}"#;
/// let models = parse_model_list(list).unwrap();
/// assert_eq!(models[1].parent.as_deref(), Some("meta-llama/Llama-3.1-8B"));
/// ```
pub fn parse_model_list(body: &[u8]) -> Result<Vec<ServedModel>, ConfigError> {
    let list: ModelList = serde_json::from_slice(body)
        .map_err(|e| ConfigError::new(format!("not an OpenAI model list: {e}")))?;
    if list.data.len() > MAX_SERVED_MODELS {
        return Err(ConfigError::new(format!(
            "the model list holds {} models, more than {MAX_SERVED_MODELS}",
            list.data.len()
        )));
    }
    Ok(list.data)
}

/// A model the table lists because a pool serves it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct DiscoveredModel {
    pub(crate) id: Box<str>,
    pub(crate) pool: Box<str>,
    pub(crate) parent: Option<Box<str>>,
}

/// The base-model specs the discovered adapters add to `explicit`, and the
/// models discovered (for the model list).
pub(crate) fn merge(
    explicit: &[BaseModelSpec],
    pools: &BTreeMap<String, Vec<ServedModel>>,
) -> (Vec<BaseModelSpec>, Vec<DiscoveredModel>) {
    let valid = |name: &str| {
        !name.is_empty()
            && !name.chars().any(char::is_control)
            && http::HeaderValue::from_str(name).is_ok()
    };
    let explicit_names: HashSet<&str> = explicit
        .iter()
        .flat_map(|s| std::iter::once(&s.base_model).chain(&s.adapters))
        .map(String::as_str)
        .collect();
    let explicit_adapters: HashSet<&str> = explicit
        .iter()
        .flat_map(|s| &s.adapters)
        .map(String::as_str)
        .collect();
    // A name some pool serves as a base model cannot be an adapter.
    let discovered_bases: HashSet<&str> = pools
        .values()
        .flatten()
        .filter(|m| m.parent.is_none())
        .map(|m| m.id.as_str())
        .collect();
    let mut parents: BTreeMap<&str, &str> = BTreeMap::new();
    let mut listed = Vec::new();
    let mut seen: HashSet<(&str, &str)> = HashSet::new();
    for (pool, models) in pools {
        for model in models {
            if !valid(&model.id) || !seen.insert((pool.as_str(), model.id.as_str())) {
                continue;
            }
            let parent = model
                .parent
                .as_deref()
                .filter(|p| valid(p) && *p != model.id);
            if let Some(parent) = parent {
                let id = model.id.as_str();
                let mappable = !explicit_names.contains(id)
                    && !discovered_bases.contains(id)
                    && !explicit_adapters.contains(parent);
                if mappable {
                    // The pool first by name keeps its parent.
                    parents.entry(id).or_insert(parent);
                }
            }
            listed.push(DiscoveredModel {
                id: model.id.as_str().into(),
                pool: pool.as_str().into(),
                parent: parent.map(Into::into),
            });
        }
    }
    // An adapter's parent that is itself a discovered adapter is refused
    // by the compiler: drop such chains.
    let adapters: HashSet<&str> = parents.keys().copied().collect();
    let mut specs: BTreeMap<&str, Vec<String>> = BTreeMap::new();
    for (adapter, parent) in &parents {
        if adapters.contains(parent) {
            continue;
        }
        specs.entry(parent).or_default().push((*adapter).to_owned());
    }
    let specs = specs
        .into_iter()
        .map(|(base, adapters)| BaseModelSpec {
            base_model: base.to_owned(),
            adapters,
        })
        .collect();
    (specs, listed)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::rules::{RuleTable, RuleTableBuilder};

    fn served(list: &[(&str, Option<&str>)]) -> Vec<ServedModel> {
        list.iter()
            .map(|(id, parent)| ServedModel {
                id: (*id).to_owned(),
                parent: parent.map(str::to_owned),
            })
            .collect()
    }

    fn listed(table: &RuleTable) -> Vec<(String, String, Option<String>)> {
        let list: serde_json::Value = serde_json::from_str(&table.models_json()).unwrap();
        list["data"]
            .as_array()
            .unwrap()
            .iter()
            .map(|m| {
                (
                    m["id"].as_str().unwrap().to_owned(),
                    m["owned_by"].as_str().unwrap().to_owned(),
                    m["parent"].as_str().map(str::to_owned),
                )
            })
            .collect()
    }

    #[test]
    fn adapters_map_to_their_parents_and_are_listed() {
        let table = RuleTableBuilder::new()
            .discovered_models(
                "qwen-pool",
                served(&[("qwen", None), ("sql-lora", Some("qwen"))]),
            )
            .build()
            .unwrap();
        assert_eq!(table.base_model("sql-lora"), Some("qwen"));
        let route = table.route("sql-lora", None).unwrap().unwrap();
        assert_eq!(route.base_model(), Some("qwen"));
        assert_eq!(
            listed(&table),
            [
                ("qwen".into(), "qwen-pool".into(), None),
                ("sql-lora".into(), "qwen-pool".into(), Some("qwen".into())),
            ]
        );
    }

    #[test]
    fn explicit_sources_win_and_conflicts_are_skipped() {
        let table = RuleTableBuilder::new()
            .base_models_yaml("baseModel: llama\nadapters: |\n  - sql-lora\n")
            .discovered_models(
                "a-pool",
                served(&[
                    // Explicitly under llama: stays there.
                    ("sql-lora", Some("qwen")),
                    // An explicit base model is never made an adapter.
                    ("llama", Some("qwen")),
                    // Its own parent, a chain, bad names: no mapping.
                    ("self", Some("self")),
                    ("chain", Some("mid")),
                    ("mid", Some("qwen")),
                    ("bad\nname", Some("qwen")),
                    ("ok", Some("bad\u{7f}")),
                ]),
            )
            .discovered_models(
                "b-pool",
                served(&[("mid", Some("other")), ("x", Some("qwen"))]),
            )
            .discovered_models("0-pool", served(&[("x", Some("gemma"))]))
            .build()
            .unwrap();
        assert_eq!(table.base_model("sql-lora"), Some("llama"));
        // Still a base model (of itself), not an adapter of qwen.
        assert_eq!(table.base_model("llama"), Some("llama"));
        assert_eq!(table.base_model("self"), None);
        // `mid` maps to qwen (a-pool before b-pool); `chain` would make
        // `mid` both adapter and base: dropped.
        assert_eq!(table.base_model("mid"), Some("qwen"));
        assert_eq!(table.base_model("chain"), None);
        assert_eq!(table.base_model("ok"), None);
        // Two pools disagree: the first by name wins.
        assert_eq!(table.base_model("x"), Some("gemma"));
        let ids: Vec<String> = listed(&table).into_iter().map(|(id, _, _)| id).collect();
        assert!(!ids.iter().any(|id| id.contains('\n')), "{ids:?}");
        assert_eq!(ids.iter().filter(|id| *id == "x").count(), 1, "{ids:?}");
    }

    #[test]
    fn the_list_holds_only_what_the_table_routes() {
        let table = RuleTableBuilder::new()
            .rules_yaml(
                "rules: [{name: q, match: {model: {exact: qwen}}, pool: qwen-pool}]\n\
                 default: {action: reject}",
            )
            .discovered_models(
                "p",
                served(&[("qwen", None), ("other", None), ("sql", Some("qwen"))]),
            )
            .build()
            .unwrap();
        let listed = listed(&table);
        let ids: Vec<&str> = listed.iter().map(|(id, _, _)| id.as_str()).collect();
        assert!(!ids.contains(&"other"), "{listed:?}");
        assert_eq!(ids[0], "qwen");
        // The adapter routes as its base model does, if the table says so.
        let routed = table
            .route("sql", None)
            .map(|r| r.is_some())
            .unwrap_or(false);
        assert_eq!(ids.contains(&"sql"), routed, "{listed:?}");
    }

    #[test]
    fn model_lists_are_read_or_refused() {
        assert!(parse_model_list(b"{\"data\":[]}").unwrap().is_empty());
        for bad in [
            &b"[]"[..],
            b"{\"object\":\"list\"}",
            b"not json",
            b"{\"data\":[{\"x\":1}]}",
        ] {
            assert!(
                parse_model_list(bad).is_err(),
                "{}",
                String::from_utf8_lossy(bad)
            );
        }
        let many = format!(
            "{{\"data\":[{}]}}",
            vec![r#"{"id":"m"}"#; MAX_SERVED_MODELS + 1].join(",")
        );
        assert!(parse_model_list(many.as_bytes()).is_err());
    }
}
