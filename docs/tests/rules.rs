//! The rule tables written in the README and in `docs/rules.md` load as
//! they are shown, and the README's copy of the demo's table is the table
//! the gateway builds in, as is `examples/config/gateway.yaml`.

use std::path::Path;

use bbr_core::rules::RuleTable;

fn read(path: &str) -> String {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("..").join(path);
    std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

/// The ```yaml blocks of a Markdown text that hold a rule table.
fn rule_tables(markdown: &str) -> Vec<String> {
    let mut tables = Vec::new();
    let mut block: Option<String> = None;
    for line in markdown.lines() {
        match &mut block {
            None if line == "```yaml" => block = Some(String::new()),
            Some(text) if line == "```" => {
                if text.starts_with("rules:") {
                    tables.push(std::mem::take(text));
                }
                block = None;
            }
            Some(text) => {
                text.push_str(line);
                text.push('\n');
            }
            None => {}
        }
    }
    tables
}

#[test]
fn the_readme_shows_the_demo_table() {
    let tables = rule_tables(&read("README.md"));
    assert_eq!(tables.len(), 1, "one rule table in the README");
    let without_comments: String = bbr_gateway::DEMO_RULES
        .lines()
        .filter(|l| !l.starts_with('#'))
        .map(|l| format!("{l}\n"))
        .collect();
    assert_eq!(tables[0], without_comments);
}

#[test]
fn the_documented_tables_load() {
    let tables = rule_tables(&read("docs/rules.md"));
    assert!(!tables.is_empty(), "docs/rules.md shows a rule table");
    for table in tables {
        if let Err(e) = RuleTable::from_yaml(&table) {
            panic!("{e}\n{table}");
        }
    }
}

/// The examples and the Envoy demo load `examples/config/gateway.yaml`; the
/// gateway builds in its own copy (a crate packs only its own files).
#[test]
fn the_examples_table_is_the_one_the_gateway_builds_in() {
    assert_eq!(
        read("examples/config/gateway.yaml"),
        bbr_gateway::DEMO_RULES,
        "examples/config/gateway.yaml and crates/bbr-gateway/config/demo.yaml differ"
    );
    bbr_gateway::demo_rules().expect("the built-in table loads");
}
