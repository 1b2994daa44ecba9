//! Tests of the rule table: precedence, validation, weights, base models,
//! rewrite and reload.

use std::{
    collections::HashMap,
    path::{Path, PathBuf},
    sync::{
        Arc,
        atomic::{AtomicBool, Ordering},
    },
};

use bytes::Bytes;

use super::*;
use crate::Model;

fn table(yaml: &str) -> RuleTable {
    match RuleTable::from_yaml(yaml) {
        Ok(table) => table,
        Err(e) => panic!("{e}"),
    }
}

fn decide(table: &RuleTable, model: &str) -> RouteMatch {
    table
        .route(model, None)
        .expect("a decision")
        .expect("a route")
}

fn rule_of(table: &RuleTable, model: &str) -> Option<String> {
    match table.route(model, None) {
        Ok(Some(d)) => d.rule().map(str::to_owned),
        Ok(None) => Some("<pass>".to_owned()),
        Err(e) => Some(format!("<{}>", e.kind())),
    }
}

fn headers(decision: &RouteMatch) -> Vec<(String, String)> {
    // The iterator knows its length at every step.
    let mut iter = decision.headers();
    let mut left = iter.len();
    while iter.next().is_some() {
        left -= 1;
        assert_eq!(iter.len(), left);
    }
    assert_eq!(left, 0);
    decision
        .headers()
        .map(|(n, v)| (n.as_str().to_owned(), v.to_str().unwrap().to_owned()))
        .collect()
}

fn error(yaml: &str) -> ConfigError {
    match RuleTable::from_yaml(yaml) {
        Ok(table) => panic!("accepted: {table:?}"),
        Err(e) => e,
    }
}

/// Asserts that `yaml` is refused, blaming `rule`, with `needle` in the reason.
#[track_caller]
fn refused(yaml: &str, rule: Option<&str>, needle: &str) {
    let err = error(yaml);
    assert_eq!(err.rule(), rule, "{err}");
    assert!(
        err.reason().contains(needle),
        "{needle:?} not in {:?}",
        err.reason()
    );
}

const PRECEDENCE: &str = r#"
rules:
  - name: regex-any-llama
    match: { model: { regex: ".*llama.*" } }
    pool: r1
  - name: glob-llama
    match: { model: { glob: "llama-*" } }
    pool: g1
  - name: glob-llama-3
    match: { model: { glob: "llama-3*" } }
    pool: g2
  - name: prefix-llama
    match: { model: { prefix: "llama-3" } }
    pool: p1
  - name: prefix-llama-long
    match: { model: { prefix: "llama-3.1-" } }
    pool: p2
  - name: exact
    match: { model: { exact: "llama-3.1-8b" } }
    pool: e1
  - name: regex-second
    match: { model: { regex: "my-.*" } }
    pool: r2
  - name: regex-third
    match: { model: { regex: "my-model" } }
    pool: r3
  - name: regex-partial
    match: { model: { regex: "abc" } }
    pool: r4
default: { action: reject }
"#;

#[test]
fn exact_beats_every_other_kind() {
    let t = table(PRECEDENCE);
    assert_eq!(rule_of(&t, "llama-3.1-8b").as_deref(), Some("exact"));
}

#[test]
fn longest_prefix_wins_and_beats_globs() {
    let t = table(PRECEDENCE);
    assert_eq!(
        rule_of(&t, "llama-3.1-70b").as_deref(),
        Some("prefix-llama-long")
    );
    assert_eq!(rule_of(&t, "llama-3-8b").as_deref(), Some("prefix-llama"));
    assert_eq!(rule_of(&t, "llama-3").as_deref(), Some("prefix-llama"));
}

#[test]
fn globs_beat_regexes_and_go_in_file_order() {
    let t = table(PRECEDENCE);
    // A model no prefix takes falls to the globs, ahead of the regexes.
    assert_eq!(rule_of(&t, "llama-2").as_deref(), Some("glob-llama"));
    // `glob-llama` comes first in the file, so it wins over `glob-llama-3`
    // even though the latter is more specific.
    let t2 = table(
        r#"
rules:
  - { name: first, match: { model: { glob: "gpt-*" } }, pool: a }
  - { name: second, match: { model: { glob: "gpt-4*" } }, pool: b }
"#,
    );
    assert_eq!(rule_of(&t2, "gpt-4o").as_deref(), Some("first"));
    assert_eq!(rule_of(&t2, "gpt-3").as_deref(), Some("first"));
}

#[test]
fn regexes_go_in_file_order_and_match_the_whole_model() {
    let t = table(PRECEDENCE);
    assert_eq!(
        rule_of(&t, "tiny-llama").as_deref(),
        Some("regex-any-llama")
    );
    assert_eq!(rule_of(&t, "my-model").as_deref(), Some("regex-second"));
    // `abc` must match the whole model, not a part of it.
    assert_eq!(rule_of(&t, "abc").as_deref(), Some("regex-partial"));
    assert_eq!(rule_of(&t, "xabcx").as_deref(), Some("<model_not_found>"));
}

#[test]
fn no_match_falls_to_the_default() {
    let t = table(PRECEDENCE);
    let err = t.route("gpt-4", None).unwrap_err();
    assert_eq!(err.kind(), ErrorKind::ModelNotFound);
    assert_eq!(err.status(), 404);
    assert!(err.to_json().contains("model_not_found"));

    let pass =
        table("rules: [{name: a, match: {model: {exact: a}}, pool: p}]\ndefault: {action: pass}");
    assert!(pass.route("b", None).unwrap().is_none());
    assert_eq!(decide(&pass, "a").pool(), Some("p"));

    let pool = table(
        "rules: [{name: a, match: {model: {exact: a}}, pool: p}]\n\
         default: {pool: fallback, set_headers: {x-default: 'yes'}}",
    );
    let d = decide(&pool, "b");
    assert_eq!(d.rule(), None);
    assert_eq!(d.pool(), Some("fallback"));
    assert_eq!(d.criticality(), Some(Criticality::Standard));
    assert_eq!(
        headers(&d),
        [
            ("x-gateway-model-name".into(), "b".into()),
            ("x-gateway-inference-pool".into(), "fallback".into()),
            ("x-default".into(), "yes".into()),
        ]
    );

    let sheddable = table("default: {action: route, pool: spare, criticality: Sheddable}");
    assert_eq!(
        decide(&sheddable, "x").criticality(),
        Some(Criticality::Sheddable)
    );
    let route = table("default: {action: route}");
    let d = decide(&route, "x");
    assert_eq!((d.pool(), d.criticality()), (None, None));
}

#[test]
fn a_rules_file_without_default_rejects() {
    let t = table("rules: [{name: a, match: {model: {exact: a}}, pool: p}]");
    assert_eq!(
        t.route("b", None).unwrap_err().kind(),
        ErrorKind::ModelNotFound
    );
}

#[test]
fn empty_table_behaves_as_the_go_router() {
    let t = RuleTable::empty();
    assert!(t.is_empty());
    let d = decide(&t, "sql-lora");
    assert_eq!((d.rule(), d.pool(), d.criticality()), (None, None, None));
    assert!(!d.is_rewrite());
    assert_eq!(
        headers(&d),
        [("x-gateway-model-name".into(), "sql-lora".into())]
    );

    let with_bases = RuleTable::builder()
        .base_models_yaml("baseModel: qwen\nadapters: |\n  - sql-lora\n  - foo\n")
        .build()
        .unwrap();
    let d = decide(&with_bases, "sql-lora");
    assert_eq!(
        headers(&d),
        [
            ("x-gateway-model-name".into(), "sql-lora".into()),
            ("x-gateway-base-model-name".into(), "qwen".into()),
        ]
    );
}

#[test]
fn an_adapter_no_rule_matches_goes_where_its_base_model_goes() {
    let t = table(
        r#"
rules:
  - name: qwen
    match: { model: { exact: qwen } }
    pool: qwen-pool
    criticality: Critical
    targets: [{ model: qwen, weight: 1 }, { model: qwen-canary, weight: 1 }]
  - name: loras
    match: { model: { glob: "*-by-glob" } }
    pool: lora-pool
  - name: own
    match: { model: { exact: own-lora } }
    pool: own-pool
base_models:
  - base_model: qwen
    adapters: [sql-lora, own-lora, x-by-glob]
  - base_model: llama
    adapters: [llama-lora]
default: { action: reject }
"#,
    );
    // No rule matches the adapter: its base model's rule routes it, under
    // its own name (the rule's targets rewrite the base model only).
    for _ in 0..8 {
        let d = decide(&t, "sql-lora");
        assert_eq!((d.rule(), d.pool()), (Some("qwen"), Some("qwen-pool")));
        assert_eq!(d.criticality(), Some(Criticality::Critical));
        assert_eq!((d.model(), d.is_rewrite()), ("sql-lora", false));
        assert_eq!(d.base_model(), Some("qwen"));
    }
    // A rule that matches the adapter's own name wins, exact or not.
    assert_eq!(decide(&t, "own-lora").pool(), Some("own-pool"));
    assert_eq!(decide(&t, "x-by-glob").pool(), Some("lora-pool"));
    // A base model no rule routes: the default applies to its adapters.
    assert!(t.route("llama-lora", None).is_err());
    // The same for an adapter discovered on a pool.
    let discovered = RuleTableBuilder::new()
        .rules_yaml(
            "rules: [{name: qwen, match: {model: {exact: qwen}}, pool: qwen-pool}]
default: {action: reject}
",
        )
        .discovered_models(
            "qwen-pool",
            crate::rules::discovery::parse_model_list(
                br#"{"object":"list","data":[{"id":"qwen"},{"id":"chat-lora","parent":"qwen"}]}"#,
            )
            .unwrap(),
        )
        .build()
        .unwrap();
    let d = discovered.route("chat-lora", None).unwrap().unwrap();
    assert_eq!(
        (d.pool(), d.base_model()),
        (Some("qwen-pool"), Some("qwen"))
    );
    let listed: serde_json::Value = serde_json::from_str(&discovered.models_json()).unwrap();
    assert!(
        listed["data"]
            .as_array()
            .unwrap()
            .iter()
            .any(|m| m["id"] == "chat-lora")
    );
}

#[test]
fn a_decision_carries_everything() {
    let t = table(
        r#"
rules:
  - name: chatbot
    match: { model: { exact: chatbot } }
    pool: gemma3
    criticality: Critical
    set_headers: { x-gateway-inference-objective: chatbot, X-Tier: 1 }
  - name: batch
    match: { model: { prefix: batch- } }
    pool: batch
    priority: -5
base_models:
  - base_model: chatbot
    adapters: []
"#,
    );
    let d = decide(&t, "chatbot");
    assert_eq!(d.rule(), Some("chatbot"));
    assert_eq!(d.pool(), Some("gemma3"));
    assert_eq!(d.criticality(), Some(Criticality::Critical));
    assert_eq!(d.priority(), None);
    assert_eq!(d.model(), "chatbot");
    assert_eq!(d.original_model(), "chatbot");
    assert_eq!(d.base_model(), Some("chatbot"));
    assert_eq!(
        headers(&d),
        [
            ("x-gateway-model-name".into(), "chatbot".into()),
            ("x-gateway-base-model-name".into(), "chatbot".into()),
            ("x-gateway-inference-pool".into(), "gemma3".into()),
            ("x-gateway-inference-objective".into(), "chatbot".into()),
            ("x-tier".into(), "1".into()),
        ]
    );
    let b = decide(&t, "batch-job");
    assert_eq!((b.criticality(), b.priority()), (None, Some(-5)));
    let names: Vec<&str> = t.managed_headers().iter().map(|h| h.as_str()).collect();
    assert_eq!(
        names,
        [
            "x-gateway-base-model-name",
            "x-gateway-inference-objective",
            "x-gateway-inference-pool",
            "x-gateway-model-name",
            "x-tier",
        ]
    );
    assert_eq!(t.len(), 2);
}

#[test]
fn models_that_cannot_be_headers_are_refused() {
    let t = RuleTable::empty();
    assert_eq!(
        t.route("", None).unwrap_err().kind(),
        ErrorKind::InvalidModel
    );
    let err = t.route("a\r\nx-evil: 1", None).unwrap_err();
    assert_eq!(err.kind(), ErrorKind::InvalidModel);
    assert!(!err.message().contains('\n'));
}

#[test]
fn route_model_shares_the_body_bytes_and_agrees_with_route() {
    let t = table(PRECEDENCE);
    let body = Bytes::from_static(br#"{"model":"llama-3-8b","x":1}"#);
    let model = Model::new(body.slice(10..20), 9..21, true);
    let by_model = t.route_model(&model, None).unwrap().unwrap();
    let by_str = decide(&t, "llama-3-8b");
    assert_eq!(headers(&by_model), headers(&by_str));
    assert_eq!(by_model.rule(), by_str.rule());
    // The model header is the body's own bytes, not a copy.
    let value = by_model.headers().next().unwrap().1;
    assert_eq!(value.as_bytes().as_ptr(), body[10..].as_ptr());
    // What cannot be a header is refused alike.
    let text = "a\u{85}b";
    let bad = Model::new(Bytes::from(text), 0..1, false);
    assert_eq!(
        t.route_model(&bad, None).unwrap_err().kind(),
        ErrorKind::InvalidModel
    );
}

// ---- validation ----------------------------------------------------------

#[test]
fn duplicate_and_empty_rule_names() {
    refused(
        "rules:\n  - {name: a, match: {model: {exact: x}}}\n  - {name: a, match: {model: {exact: y}}}",
        Some("a"),
        "duplicate rule name",
    );
    refused(
        "rules:\n  - {name: '', match: {model: {exact: x}}}",
        Some("#1"),
        "empty",
    );
    refused(
        "rules:\n  - {match: {model: {exact: x}}}",
        Some("#1"),
        "name",
    );
}

#[test]
fn empty_or_ambiguous_matches() {
    refused("rules: [{name: a, match: {}}]", Some("a"), "empty match");
    refused(
        "rules: [{name: a, match: {model: {}}}]",
        Some("a"),
        "empty match",
    );
    refused(
        "rules: [{name: a, match: {model: {exact: ''}}}]",
        Some("a"),
        "empty match",
    );
    refused(
        "rules: [{name: a, match: {model: {prefix: ''}}}]",
        Some("a"),
        "empty match",
    );
    refused(
        "rules: [{name: a, match: {model: {exact: x, prefix: y}}}]",
        Some("a"),
        "both exact and prefix",
    );
    refused("rules: [{name: a}]", Some("a"), "match");
}

#[test]
fn bad_patterns() {
    refused(
        "rules: [{name: r, match: {model: {regex: '(unclosed'}}}]",
        Some("r"),
        "bad regex",
    );
    refused(
        "rules: [{name: g, match: {model: {glob: 'llama-[0-9'}}}]",
        Some("g"),
        "bad glob",
    );
}

#[test]
fn conflicting_matches() {
    refused(
        "rules:\n  - {name: a, match: {model: {exact: x}}, pool: p}\n  - {name: b, match: {model: {exact: x}}, pool: q}",
        Some("b"),
        "conflicting exact match",
    );
    refused(
        "rules:\n  - {name: a, match: {model: {prefix: x}}}\n  - {name: b, match: {model: {prefix: x}}}",
        Some("b"),
        "conflicting prefix match",
    );
    refused(
        "rules:\n  - {name: a, match: {model: {glob: 'x*'}}}\n  - {name: b, match: {model: {glob: 'x*'}}}",
        Some("b"),
        "never match",
    );
    refused(
        "rules:\n  - {name: a, match: {model: {regex: 'x.*'}}}\n  - {name: b, match: {model: {regex: 'x.*'}}}",
        Some("b"),
        "never match",
    );
}

#[test]
fn bad_weights_and_targets() {
    refused(
        "rules: [{name: a, match: {model: {exact: x}}, targets: [{model: y}]}]",
        Some("a"),
        "no `weight`",
    );
    refused(
        "rules: [{name: a, match: {model: {exact: x}}, targets: [{model: y, weight: 0}]}]",
        Some("a"),
        "weight 0",
    );
    refused(
        "rules: [{name: a, match: {model: {exact: x}}, targets: [{model: y, weight: -1}]}]",
        Some("a"),
        "",
    );
    refused(
        "rules: [{name: a, match: {model: {exact: x}}, targets: []}]",
        Some("a"),
        "`targets` is empty",
    );
    refused(
        "rules: [{name: a, match: {model: {exact: x}}, targets: [{model: y, weight: 1}, {model: y, weight: 2}]}]",
        Some("a"),
        "listed twice",
    );
    refused(
        "rules: [{name: a, match: {model: {exact: x}}, targets: [{model: '', weight: 1}]}]",
        Some("a"),
        "empty",
    );
}

#[test]
fn bad_criticality_and_priority() {
    refused(
        "rules: [{name: a, match: {model: {exact: x}}, criticality: Urgent}]",
        Some("a"),
        "unknown criticality",
    );
    refused(
        "rules: [{name: a, match: {model: {exact: x}}, criticality: Critical, priority: 3}]",
        Some("a"),
        "not both",
    );
    refused(
        "rules: [{name: a, match: {model: {exact: x}}, priority: high}]",
        Some("a"),
        "",
    );
}

#[test]
fn unknown_fields_are_refused() {
    refused(
        "rules: [{name: a, match: {model: {exact: x}}, pol: p}]",
        Some("a"),
        "unknown field `pol`",
    );
    refused(
        "rules: [{name: a, match: {model: {exact: x}, header: {}}}]",
        Some("a"),
        "unknown field `header`",
    );
    refused(
        "rules: [{name: a, match: {model: {fuzzy: x}}}]",
        Some("a"),
        "unknown field `fuzzy`",
    );
    refused("rule: []", None, "unknown field `rule`");
    let err = error("rules: []\ndefault: {action: reject, pools: x}");
    assert_eq!(err.section(), Some("default"), "{err}");
    assert!(err.reason().contains("unknown field `pools`"), "{err}");
    let err =
        RuleTable::from_json(r#"{"base_models":[{"base_model":"q","adapter":[]}]}"#).unwrap_err();
    assert_eq!(err.section(), Some("base_models"), "{err}");
}

#[test]
fn bad_set_headers() {
    refused(
        "rules: [{name: a, match: {model: {exact: x}}, set_headers: {'bad name': v}}]",
        Some("a"),
        "not a valid header name",
    );
    refused(
        "rules: [{name: a, match: {model: {exact: x}}, set_headers: {x-a: \"v\\r\\nx-b: 1\"}}]",
        Some("a"),
        "not a valid header value",
    );
    refused(
        "rules: [{name: a, match: {model: {exact: x}}, set_headers: {X-Gateway-Model-Name: spoof}}]",
        Some("a"),
        "may not set",
    );
    refused(
        "rules: [{name: a, match: {model: {exact: x}}, set_headers: {x-gateway-inference-pool: p}}]",
        Some("a"),
        "may not set",
    );
    refused(
        "rules: [{name: a, match: {model: {exact: x}}, set_headers: {content-length: '1'}}]",
        Some("a"),
        "may not set",
    );
    refused(
        "rules: [{name: a, match: {model: {exact: x}}, set_headers: {x-a: '1', X-A: '2'}}]",
        Some("a"),
        "twice",
    );
}

#[test]
fn bad_pools() {
    refused(
        "rules: [{name: a, match: {model: {exact: x}}, pool: ''}]",
        Some("a"),
        "`pool` is empty",
    );
    refused(
        "rules: [{name: a, match: {model: {exact: x}}, pool: \"p\\n\"}]",
        Some("a"),
        "control character",
    );
}

#[test]
fn bad_defaults() {
    let err = error("default: {action: reject, pool: p}");
    assert_eq!(err.section(), Some("default"));
    assert!(err.reason().contains("takes no pool"), "{err}");
    let err = error("default: {action: drop}");
    assert!(err.reason().contains("unknown action"), "{err}");
    let err = error("default: {}");
    assert!(err.reason().contains("needs `action`"), "{err}");
    let err = error("default: {pool: p, criticality: Low}");
    assert!(err.reason().contains("unknown criticality"), "{err}");
}

#[test]
fn bad_base_models() {
    let err = error(
        "base_models:\n  - {base_model: qwen, adapters: [a, b]}\n  - {base_model: llama, adapters: [b]}",
    );
    assert_eq!(err.section(), Some("base_models"));
    assert!(err.reason().contains("two base models"), "{err}");
    let err = error(
        "base_models:\n  - {base_model: qwen, adapters: [llama]}\n  - {base_model: llama, adapters: []}",
    );
    assert!(err.reason().contains("is itself a base model"), "{err}");
    let err = error("base_models: [{base_model: '', adapters: [a]}]");
    assert!(err.reason().contains("empty"), "{err}");
    let err = error("base_models: [{base_model: q, adapters: ['']}]");
    assert!(err.reason().contains("empty"), "{err}");
    let err = error("base_models: [{base_model: q, adapter: [a]}]");
    assert!(err.reason().contains("unknown field `adapter`"), "{err}");
}

#[test]
fn syntax_errors_are_reported() {
    let err = error("rules: [ {name: a");
    assert!(!err.reason().is_empty());
    let err = RuleTable::from_json(
        r#"{"rules":[{"name":"a","match":{"model":{"exact":"x"}},"criticality":"Urgent"}]}"#,
    )
    .unwrap_err();
    assert_eq!(err.rule(), Some("a"));
    let err = RuleTable::from_json(
        r#"{"rules":[{"name":"ok","match":{"model":{"exact":"x"}}},{"name":"b","match":{"model":{"exact":"y"}},"weight":1}]}"#,
    )
    .unwrap_err();
    assert_eq!(err.rule(), Some("b"), "{err}");
    assert!(err.reason().contains("unknown field `weight`"), "{err}");
}

// ---- files ---------------------------------------------------------------

/// A scratch directory removed on drop.
struct Scratch(PathBuf);

impl Scratch {
    fn new(name: &str) -> Scratch {
        let dir = std::env::temp_dir().join(format!(
            "bbr-rules-{name}-{}-{:?}",
            std::process::id(),
            std::thread::current().id()
        ));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        Scratch(dir)
    }

    fn write(&self, name: &str, text: &str) -> PathBuf {
        let path = self.0.join(name);
        std::fs::write(&path, text).unwrap();
        path
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

fn demo_config() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../examples/config/gateway.yaml")
}

#[test]
fn the_seed_config_loads_and_routes() {
    let t = RuleTable::from_path(&demo_config()).unwrap();
    let chat = decide(&t, "chatbot");
    assert_eq!(chat.pool(), Some("gemma3"));
    assert_eq!(chat.criticality(), Some(Criticality::Critical));
    let rec = decide(&t, "recommender");
    assert_eq!(rec.pool(), Some("deepseek-r1"));
    assert_eq!(rec.criticality(), Some(Criticality::Standard));
    assert_eq!(
        t.route("gpt-4", None).unwrap_err().kind(),
        ErrorKind::ModelNotFound
    );
}

#[test]
fn files_are_named_in_errors_and_json_files_load() {
    let dir = Scratch::new("files");
    let bad = dir.write(
        "bad.yaml",
        "rules: [{name: a, match: {model: {regex: '('}}}]",
    );
    let err = RuleTable::from_path(&bad).unwrap_err();
    assert_eq!(err.file(), Some(bad.as_path()));
    assert_eq!(err.rule(), Some("a"));
    assert!(err.to_string().starts_with(&bad.display().to_string()));

    let missing = dir.0.join("missing.yaml");
    let err = RuleTable::from_path(&missing).unwrap_err();
    assert_eq!(err.file(), Some(missing.as_path()));

    let json = dir.write(
        "rules.json",
        r#"{"rules":[{"name":"a","match":{"model":{"exact":"x"}},"pool":"p"}],"default":{"action":"pass"}}"#,
    );
    let t = RuleTable::from_path(&json).unwrap();
    assert_eq!(decide(&t, "x").pool(), Some("p"));
    assert!(t.route("y", None).unwrap().is_none());
}

#[test]
fn go_router_configmaps_load_from_files() {
    let dir = Scratch::new("configmaps");
    let manifests = dir.write(
        "configmaps.yaml",
        "apiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: qwen\n  labels: {inference.networking.k8s.io/bbr-managed: 'true'}\n\
         data:\n  baseModel: qwen\n  adapters: |\n    - sql-lora-sheddable\n    - foo\n\
         ---\nkind: ConfigMap\ndata:\n  baseModel: llama\n",
    );
    let bare = dir.write("bare.yaml", "baseModel: gemma\nadapters: [gemma-lora]\n");
    let mounted = dir.0.join("mounted");
    std::fs::create_dir(&mounted).unwrap();
    std::fs::write(mounted.join("baseModel"), "phi\n").unwrap();
    std::fs::write(mounted.join("adapters"), "- phi-lora\n").unwrap();

    let t = RuleTable::builder()
        .base_models_path(&manifests)
        .base_models_path(&bare)
        .base_models_path(&mounted)
        .build()
        .unwrap();
    assert_eq!(t.base_model("sql-lora-sheddable"), Some("qwen"));
    assert_eq!(t.base_model("foo"), Some("qwen"));
    assert_eq!(t.base_model("qwen"), Some("qwen"));
    assert_eq!(t.base_model("llama"), Some("llama"));
    assert_eq!(t.base_model("gemma-lora"), Some("gemma"));
    assert_eq!(t.base_model("phi-lora"), Some("phi"));
    assert_eq!(t.base_model("unknown"), None);

    let broken = dir.write("broken.yaml", "data:\n  adapters: [a]\n");
    let err = RuleTable::builder()
        .base_models_path(&broken)
        .build()
        .unwrap_err();
    assert_eq!(err.file(), Some(broken.as_path()));
    assert!(err.reason().contains("baseModel"), "{err}");
}

// ---- base models -----------------------------------------------------------

const BASES: &str = r#"
rules:
  - name: sql
    match: { model: { exact: sql } }
    pool: qwen-pool
    targets: [{ model: sql-lora-sheddable, weight: 1 }]
  - name: any
    match: { model: { glob: "*" } }
base_models:
  - base_model: qwen
    adapters: [sql-lora-sheddable, foo]
"#;

#[test]
fn base_model_lookups() {
    let t = table(BASES);
    assert_eq!(t.base_model("foo"), Some("qwen"));
    assert_eq!(t.base_model("qwen"), Some("qwen"));
    assert_eq!(t.base_model("bar"), None);
    assert_eq!(decide(&t, "foo").base_model(), Some("qwen"));
    assert_eq!(decide(&t, "qwen").base_model(), Some("qwen"));
    assert_eq!(decide(&t, "bar").base_model(), None);
    // The base model is that of the model sent upstream.
    let d = decide(&t, "sql");
    assert_eq!(d.model(), "sql-lora-sheddable");
    assert_eq!(d.base_model(), Some("qwen"));
    assert_eq!(
        headers(&d)[..2],
        [
            ("x-gateway-model-name".into(), "sql".into()),
            ("x-gateway-base-model-name".into(), "qwen".into()),
        ]
    );
}

// ---- weights -------------------------------------------------------------

const WEIGHTED: &str = r#"
rules:
  - name: chatbot
    match: { model: { exact: chatbot } }
    pool: gemma3
    targets:
      - { model: google/gemma-3-27b-it, weight: 90 }
      - { model: gemma-3-canary, weight: 10 }
  - name: three
    match: { model: { exact: three } }
    targets:
      - { model: a, weight: 1 }
      - { model: b, weight: 2 }
      - { model: three, weight: 1 }
"#;

fn shares(
    t: &RuleTable,
    model: &str,
    n: usize,
    key: impl Fn(usize) -> Option<String>,
) -> HashMap<String, f64> {
    let mut counts: HashMap<String, usize> = HashMap::new();
    for i in 0..n {
        let k = key(i);
        let d = t
            .route(model, k.as_deref().map(str::as_bytes))
            .unwrap()
            .unwrap();
        *counts.entry(d.model().to_owned()).or_default() += 1;
    }
    counts
        .into_iter()
        .map(|(m, c)| (m, c as f64 / n as f64))
        .collect()
}

#[track_caller]
fn near(actual: Option<&f64>, expected: f64) {
    let actual = actual.copied().unwrap_or(0.0);
    assert!(
        (actual - expected).abs() < 0.02,
        "share {actual} is not near {expected}"
    );
}

#[test]
fn random_choice_follows_the_weights() {
    let t = table(WEIGHTED).with_seed(42);
    let s = shares(&t, "chatbot", 20_000, |_| None);
    near(s.get("google/gemma-3-27b-it"), 0.9);
    near(s.get("gemma-3-canary"), 0.1);
    let s = shares(&t, "three", 20_000, |_| None);
    near(s.get("a"), 0.25);
    near(s.get("b"), 0.5);
    near(s.get("three"), 0.25);
}

#[test]
fn seeded_tables_repeat_their_choices() {
    let pick = |seed| {
        let t = table(WEIGHTED).with_seed(seed);
        (0..64)
            .map(|_| decide(&t, "three").model().to_owned())
            .collect::<Vec<_>>()
    };
    assert_eq!(pick(7), pick(7));
    assert_ne!(pick(7), pick(8));
    let built = RuleTable::builder()
        .rules_yaml(WEIGHTED)
        .seed(7)
        .build()
        .unwrap();
    let via_builder: Vec<_> = (0..64)
        .map(|_| decide(&built, "three").model().to_owned())
        .collect();
    assert_eq!(via_builder, pick(7));
}

#[test]
fn request_keys_hash_stably_and_follow_the_weights() {
    let a = table(WEIGHTED).with_seed(1);
    let b = table(WEIGHTED).with_seed(2);
    for i in 0..200 {
        let key = format!("req-{i}");
        let first = a.route("chatbot", Some(key.as_bytes())).unwrap().unwrap();
        let again = a.route("chatbot", Some(key.as_bytes())).unwrap().unwrap();
        let other = b.route("chatbot", Some(key.as_bytes())).unwrap().unwrap();
        assert_eq!(first.model(), again.model(), "{key}");
        assert_eq!(first.model(), other.model(), "{key}");
    }
    let s = shares(&a, "chatbot", 20_000, |i| Some(format!("{i:08x}-request")));
    near(s.get("google/gemma-3-27b-it"), 0.9);
    near(s.get("gemma-3-canary"), 0.1);
}

#[test]
fn the_hash_is_pinned() {
    // The choice for a key must not change between versions: replicas of
    // different versions behind one gateway must agree.
    let t = table(WEIGHTED);
    let picks: Vec<String> = ["a", "b", "c", "d", "e", "f", "g", "h"]
        .iter()
        .map(|k| {
            t.route("three", Some(k.as_bytes()))
                .unwrap()
                .unwrap()
                .model()
                .to_owned()
        })
        .collect();
    assert_eq!(picks, PINNED_PICKS);
}

const PINNED_PICKS: [&str; 8] = ["a", "a", "b", "b", "b", "three", "b", "three"];

#[test]
fn a_target_equal_to_the_model_is_no_rewrite() {
    let t = table(WEIGHTED);
    let d = (0..1000)
        .map(|i| decide_key(&t, "three", &i.to_string()))
        .find(|d| d.model() == "three")
        .expect("the `three` target is picked sometimes");
    assert!(!d.is_rewrite());
    let d = (0..1000)
        .map(|i| decide_key(&t, "three", &i.to_string()))
        .find(|d| d.model() == "a")
        .expect("the `a` target is picked sometimes");
    assert!(d.is_rewrite());
    assert_eq!(d.original_model(), "three");
    // The header carries the model as the client sent it.
    assert_eq!(headers(&d)[0].1, "three");
}

fn decide_key(t: &RuleTable, model: &str, key: &str) -> RouteMatch {
    t.route(model, Some(key.as_bytes())).unwrap().unwrap()
}

// ---- rewrite ---------------------------------------------------------------

fn model_at(body: &[u8], value: &str) -> Model {
    let token = format!("\"{value}\"");
    let start = body
        .windows(token.len())
        .position(|w| w == token.as_bytes())
        .unwrap() as u64;
    Model::new(
        Bytes::copy_from_slice(value.as_bytes()),
        start..start + token.len() as u64,
        false,
    )
}

#[test]
fn rewrite_parses_back_at_every_split() {
    let t = table(
        r#"
rules:
  - name: quoted
    match: { model: { exact: chat } }
    targets: [{ model: 'org/gemma "3" \ it', weight: 1 }]
"#,
    );
    let body =
        br#"{"messages":[{"role":"user","content":"hi \"chat\""}],"model":"chat","stream":true}"#;
    let model = model_at(body, "chat");
    let decision = decide(&t, "chat");
    assert!(decision.is_rewrite());
    for split in 0..=body.len() {
        let whole = Bytes::from_static(body);
        let chunks = [whole.slice(..split), whole.slice(split..)];
        let out = rewrite_body(&chunks, &model, &decision).unwrap();
        let joined = out.chunks.concat();
        assert_eq!(out.len, joined.len() as u64);
        assert_eq!(
            out.content_length(body.len().to_string().as_bytes()),
            super::ContentLength::Set(joined.len() as u64)
        );
        let value: serde_json::Value = serde_json::from_slice(&joined).unwrap();
        assert_eq!(value["model"], "org/gemma \"3\" \\ it");
        assert_eq!(value["stream"], true);
        assert_eq!(value["messages"][0]["content"], "hi \"chat\"");
    }
}

#[test]
fn no_rewrite_without_a_target() {
    let t = table("rules: [{name: a, match: {model: {exact: chat}}, pool: p}]");
    let body = Bytes::from_static(br#"{"model":"chat"}"#);
    let model = model_at(&body, "chat");
    assert!(rewrite_body(&[body], &model, &decide(&t, "chat")).is_none());
}

#[test]
fn a_span_outside_the_chunks_is_refused() {
    let t = table(
        "rules: [{name: a, match: {model: {exact: chat}}, targets: [{model: b, weight: 1}]}]",
    );
    let body = Bytes::from_static(br#"{"model":"chat"}"#);
    let model = Model::new(Bytes::from_static(b"chat"), 9..99, false);
    assert!(rewrite_body(&[body], &model, &decide(&t, "chat")).is_none());
}

// ---- reload ----------------------------------------------------------------

fn versioned(version: u32) -> String {
    format!(
        "rules: [{{name: a, match: {{model: {{exact: a}}}}, pool: pool-{version}, set_headers: {{x-version: '{version}'}}}}]"
    )
}

#[test]
fn reload_under_concurrent_readers() {
    let shared = SharedRules::new(table(&versioned(0)));
    let stop = Arc::new(AtomicBool::new(false));
    let readers: Vec<_> = (0..4)
        .map(|_| {
            let shared = shared.clone();
            let stop = Arc::clone(&stop);
            std::thread::spawn(move || {
                let mut seen = std::collections::BTreeSet::new();
                while !stop.load(Ordering::Relaxed) || seen.is_empty() {
                    let rules = shared.load();
                    let d = rules.route("a", None).unwrap().unwrap();
                    // Every decision comes from one whole table, never a mix.
                    let pool = d.pool().unwrap().to_owned();
                    let version = headers(&d)[2].1.clone();
                    assert_eq!(pool, format!("pool-{version}"));
                    seen.insert(version.parse::<u32>().unwrap());
                }
                seen
            })
        })
        .collect();
    for version in 1..=200 {
        shared.replace(table(&versioned(version)));
        if version == 100 {
            // A bad configuration in the middle changes nothing.
            assert!(
                shared
                    .reload_with(&RuleTable::builder().rules_yaml("rules: [{name: a}]"))
                    .is_err()
            );
            assert_eq!(
                shared.load().route("a", None).unwrap().unwrap().pool(),
                Some("pool-100")
            );
        }
    }
    stop.store(true, Ordering::Relaxed);
    for reader in readers {
        let seen = reader.join().unwrap();
        assert!(seen.iter().all(|v| *v <= 200));
    }
    assert_eq!(
        shared.load().route("a", None).unwrap().unwrap().pool(),
        Some("pool-200")
    );
}

#[test]
fn a_bad_file_keeps_the_old_table() {
    let dir = Scratch::new("reload");
    let path = dir.write("rules.yaml", &versioned(1));
    let shared = SharedRules::new(RuleTable::from_path(&path).unwrap());
    std::fs::write(
        &path,
        "rules: [{name: a, match: {model: {exact: a}}, criticality: Urgent}]",
    )
    .unwrap();
    let err = shared.reload_from(&path).unwrap_err();
    assert_eq!(err.file(), Some(path.as_path()));
    assert_eq!(decide(&shared.load(), "a").pool(), Some("pool-1"));
    std::fs::write(&path, versioned(2)).unwrap();
    shared.reload_from(&path).unwrap();
    assert_eq!(decide(&shared.load(), "a").pool(), Some("pool-2"));
}

#[test]
fn tables_are_send_and_sync() {
    fn assert_send_sync<T: Send + Sync>() {}
    assert_send_sync::<RuleTable>();
    assert_send_sync::<SharedRules>();
    assert_send_sync::<RouteMatch>();
}

#[test]
fn yaml_scalars_are_text_and_empty_files_are_refused() {
    let t = table("rules: [{name: a, match: {model: {exact: 123}}, pool: 7}]");
    assert_eq!(decide(&t, "123").pool(), Some("7"));
    // A file truncated while it is rewritten must not become a table that
    // rejects everything.
    for empty in ["", "\n", "---\n", "# only a comment\n"] {
        let err = error(empty);
        assert!(err.reason().contains("empty"), "{empty:?}: {err}");
    }
    assert!(RuleTable::from_json("").is_err());
}

/// The YAML blocks of `docs/rules.md`, in order.
fn doc_blocks() -> Vec<String> {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../docs/rules.md");
    let text = std::fs::read_to_string(path).unwrap();
    text.split("```yaml\n")
        .skip(1)
        .filter_map(|rest| rest.split_once("```").map(|(block, _)| block.to_owned()))
        .collect()
}

#[test]
fn the_documented_examples_compile_and_route() {
    let blocks = doc_blocks();
    assert_eq!(blocks.len(), 2, "the schema and the ConfigMap examples");
    let t = RuleTable::builder()
        .rules_yaml(blocks[0].as_str())
        .base_models_yaml(blocks[1].as_str())
        .seed(3)
        .build()
        .unwrap();
    let d = t.route("chatbot", Some(b"req-42")).unwrap().unwrap();
    assert_eq!(d.pool(), Some("gemma3"));
    assert!(["google/gemma-3-27b-it", "gemma-3-canary"].contains(&d.model()));
    assert_eq!(decide(&t, "recommender").pool(), Some("deepseek-r1"));
    assert_eq!(t.base_model("sql-lora-sheddable"), Some("qwen"));
    assert_eq!(
        t.route("unknown", None).unwrap_err().kind(),
        ErrorKind::ModelNotFound
    );
}

#[test]
fn a_model_is_refused_exactly_when_it_holds_a_control_character() {
    let t = RuleTable::empty();
    let mut texts: Vec<String> = (0u8..=127).map(|b| format!("m{}x", b as char)).collect();
    texts.extend(
        [
            "m\u{85}x",
            "m\u{9f}x",
            "m\u{a0}x",
            "m\u{200b}x",
            "modèle",
            "",
        ]
        .map(String::from),
    );
    for text in texts {
        let refused = text.is_empty() || text.chars().any(char::is_control);
        match t.route(&text, None) {
            Ok(_) => assert!(!refused, "{text:?} accepted"),
            Err(e) => {
                assert!(refused, "{text:?} refused: {e}");
                assert_eq!(e.kind(), ErrorKind::InvalidModel);
            }
        }
    }
}

// ---- hardened loading ----------------------------------------------------

#[test]
fn deep_nesting_is_refused_before_parsing() {
    let deep_flow = format!("rules: {}{}", "[".repeat(40_000), "]".repeat(40_000));
    let deep_block: String = (0..5_000)
        .map(|i| format!("{}- \n", " ".repeat(i)))
        .collect();
    let dashes = format!("rules:\n  {}x\n", "- ".repeat(40_000));
    let deep_json = format!("{{\"rules\": {}{}}}", "[".repeat(200), "]".repeat(200));
    for text in [&deep_flow, &deep_block, &dashes] {
        let err = RuleTable::from_yaml(text).unwrap_err();
        assert!(err.to_string().contains("levels deep"), "{err}");
    }
    let err = RuleTable::from_json(&deep_json).unwrap_err();
    assert!(err.to_string().contains("levels deep"), "{err}");
    // Real files, flow or block style, quoted brackets and block scalars
    // included, are not affected.
    let fine = r#"
rules:
  - name: "weird [[[[ name"
    match: { model: { regex: "^a[[:alpha:]]{1,3}$" } }  # [[[[ in a comment
    pool: p
    set_headers:
      x-note: >-
        [[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[
        {{{{{{{{{{{{{{{{{{{{{{{{{{{{{{{{{{{{{{{{{{{{{{{{{{
default: { action: reject }
"#;
    RuleTable::from_yaml(fine).unwrap();
}

#[test]
fn a_file_with_no_rules_and_no_default_is_refused() {
    for text in [
        "rules:\n",
        "rules: []\n",
        "base_models: []\n",
        "rules:\n  # - name: a\n",
    ] {
        let err = RuleTable::from_yaml(text).unwrap_err();
        assert!(
            err.to_string().contains("no rules and no `default`"),
            "{text:?}: {err}"
        );
    }
    // With an explicit default it is a choice, and accepted.
    RuleTable::from_yaml("rules: []\ndefault: {action: reject}\n").unwrap();
    RuleTable::from_yaml("default: {action: pass}\n").unwrap();
}

#[test]
fn merge_keys_get_a_clear_error() {
    let text = "rules:\n  - &base {name: a, match: {model: {exact: a}}, pool: p}\n  - <<: *base\n    name: b\n";
    let err = RuleTable::from_yaml(text).unwrap_err();
    assert!(err.to_string().contains("merge keys"), "{err}");
}

#[test]
fn a_file_read_by_the_caller_is_named_in_errors() {
    let err = RuleTableBuilder::new()
        .rules_file_text("/etc/bbr/rules.yaml", "rules: [{name: a}]")
        .build()
        .unwrap_err();
    assert_eq!(
        err.file(),
        Some(std::path::Path::new("/etc/bbr/rules.yaml"))
    );
    let shared = SharedRules::default();
    shared
        .reload_text(
            std::path::Path::new("r.json"),
            r#"{"rules":[{"name":"a","match":{"model":{"exact":"a"}},"pool":"p"}]}"#,
        )
        .unwrap();
    assert_eq!(
        shared.load().route("a", None).unwrap().unwrap().pool(),
        Some("p")
    );
}

#[test]
fn the_model_list_names_the_exact_models_with_their_pools() {
    let t = table(PRECEDENCE);
    let list: serde_json::Value = serde_json::from_str(&t.models_json()).unwrap();
    let ids: Vec<&str> = list["data"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m["id"].as_str().unwrap())
        .collect();
    let exact: Vec<&str> = t.exact_models().into_iter().map(|(m, _)| m).collect();
    assert_eq!(ids, exact);
    assert!(!ids.is_empty());
    let mut sorted = ids.clone();
    sorted.sort_unstable();
    assert_eq!(ids, sorted);
    for entry in list["data"].as_array().unwrap() {
        assert_eq!(entry["object"], "model");
        assert!(entry["owned_by"].is_string());
    }
    // Quotes and controls in a model name stay valid JSON.
    let odd =
        RuleTable::from_yaml(r#"rules: [{name: q, match: {model: {exact: "a\"b\\c"}}}]"#).unwrap();
    let list: serde_json::Value = serde_json::from_str(&odd.models_json()).unwrap();
    assert_eq!(list["data"][0]["id"], "a\"b\\c");
    assert_eq!(list["data"][0]["owned_by"], "bbr");
    let empty: serde_json::Value = serde_json::from_str(&RuleTable::empty().models_json()).unwrap();
    assert_eq!(empty["data"].as_array().unwrap().len(), 0);
}
