//! Decision time of the rule table as it grows: 10, 1 000 and 100 000 exact
//! rules, each table also holding 100 prefix and 100 regex rules.
//!
//! Exact lookups should stay flat as the table grows; prefix lookups grow
//! with the logarithm of the prefix count only; regexes are matched in one
//! pass of a `RegexSet`, whatever the table size. `floor` is a hand-written
//! `HashMap` from model to pool building the same headers: the cost of a
//! decision with no rule table at all, measured in the same run.

use std::{collections::HashMap, fmt::Write, hint::black_box, time::Duration};

use bbr_core::rules::RuleTable;
use criterion::{BenchmarkId, Criterion, criterion_group, criterion_main};
use http::{HeaderName, HeaderValue};

const PREFIXES: usize = 100;
const REGEXES: usize = 100;

/// A rules file (JSON: it parses faster than YAML at 100 000 rules).
fn config(exact: usize) -> String {
    let mut out = String::from(r#"{"rules":["#);
    let mut first = true;
    let mut rule = |out: &mut String, name: String, kind: &str, value: String, pool: usize| {
        if !first {
            out.push(',');
        }
        first = false;
        let _ = write!(
            out,
            r#"{{"name":"{name}","match":{{"model":{{"{kind}":"{value}"}}}},"pool":"pool-{pool}","criticality":"Critical","set_headers":{{"x-gateway-inference-objective":"{name}"}}}}"#,
            pool = pool % 16
        );
    };
    for i in 0..exact {
        rule(
            &mut out,
            format!("exact-{i}"),
            "exact",
            format!("model-{i}"),
            i,
        );
    }
    for i in 0..PREFIXES {
        rule(
            &mut out,
            format!("prefix-{i}"),
            "prefix",
            format!("family-{i}-"),
            i,
        );
    }
    for i in 0..REGEXES {
        rule(
            &mut out,
            format!("regex-{i}"),
            "regex",
            format!("org-{i}/[a-z]+-v[0-9]+(-instruct)?"),
            i,
        );
    }
    out.push_str(r#"],"default":{"action":"pass"}}"#);
    out
}

fn decide(c: &mut Criterion) {
    let mut group = c.benchmark_group("rules/decide");
    group
        .warm_up_time(Duration::from_millis(500))
        .measurement_time(Duration::from_secs(2))
        .sample_size(30);
    for exact in [10usize, 1_000, 100_000] {
        let table = RuleTable::from_json(&config(exact)).expect("a valid table");
        assert_eq!(table.len(), exact + PREFIXES + REGEXES);
        let cases = [
            ("exact", format!("model-{}", exact / 2)),
            ("prefix", "family-42-8b-chat".to_owned()),
            ("regex", "org-77/llama-v3-instruct".to_owned()),
            ("miss", "unknown-model-name".to_owned()),
        ];
        // The floor: a hand-written map from model to pool, building the
        // same three headers. `exact` over this is the table's overhead.
        let floor = floor_map(exact);
        let model = format!("model-{}", exact / 2);
        group.bench_with_input(BenchmarkId::new("floor", exact), &model, |b, model| {
            b.iter(|| floor_decide(&floor, black_box(model)))
        });
        for (kind, model) in &cases {
            // Make sure each case exercises the path it is named after.
            let decision = table.route(model, None).expect("no error");
            match *kind {
                "miss" => assert!(decision.is_none()),
                _ => assert!(
                    decision
                        .and_then(|d| d.rule().map(|r| r.starts_with(kind)))
                        .unwrap_or(false)
                ),
            }
            group.bench_with_input(BenchmarkId::new(*kind, exact), model, |b, model| {
                b.iter(|| table.route(black_box(model), None))
            });
        }
    }
    group.finish();
}

type Floor = HashMap<String, (HeaderValue, HeaderValue)>;

fn floor_map(exact: usize) -> Floor {
    (0..exact)
        .map(|i| {
            let pool = HeaderValue::from_str(&format!("pool-{}", i % 16)).expect("a value");
            let objective = HeaderValue::from_str(&format!("exact-{i}")).expect("a value");
            (format!("model-{i}"), (pool, objective))
        })
        .collect()
}

fn floor_decide(floor: &Floor, model: &str) -> Option<Vec<(HeaderName, HeaderValue)>> {
    let (pool, objective) = floor.get(model)?;
    Some(vec![
        (
            HeaderName::from_static("x-gateway-model-name"),
            HeaderValue::from_str(model).ok()?,
        ),
        (
            HeaderName::from_static("x-gateway-inference-pool"),
            pool.clone(),
        ),
        (
            HeaderName::from_static("x-gateway-inference-objective"),
            objective.clone(),
        ),
    ])
}

fn weighted(c: &mut Criterion) {
    let table = RuleTable::from_yaml(
        "rules:\n  - name: chatbot\n    match: { model: { exact: chatbot } }\n    pool: gemma3\n    targets:\n      - { model: google/gemma-3-27b-it, weight: 90 }\n      - { model: gemma-3-canary, weight: 10 }\n",
    )
    .expect("a valid table")
    .with_seed(1);
    let mut group = c.benchmark_group("rules/weighted");
    group
        .warm_up_time(Duration::from_millis(500))
        .measurement_time(Duration::from_secs(2))
        .sample_size(30);
    group.bench_function("random", |b| {
        b.iter(|| table.route(black_box("chatbot"), None))
    });
    group.bench_function("request_key", |b| {
        b.iter(|| table.route(black_box("chatbot"), Some(b"3f2a9c1e-request-id")))
    });
    group.finish();
}

fn compile(c: &mut Criterion) {
    let mut group = c.benchmark_group("rules/compile");
    group
        .warm_up_time(Duration::from_millis(500))
        .measurement_time(Duration::from_secs(3))
        .sample_size(10);
    for exact in [1_000usize, 100_000] {
        let text = config(exact);
        group.bench_with_input(BenchmarkId::from_parameter(exact), &text, |b, text| {
            b.iter(|| RuleTable::from_json(black_box(text)))
        });
    }
    group.finish();
}

criterion_group!(benches, decide, weighted, compile);
criterion_main!(benches);
