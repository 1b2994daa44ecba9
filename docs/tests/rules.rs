//! The rule tables written in the README and in `docs/rules.md` load as
//! they are shown, and the README's copy of the demo's table is the file
//! the demo loads.

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
    let file = read("examples/config/gateway.yaml");
    let without_comments: String = file
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
