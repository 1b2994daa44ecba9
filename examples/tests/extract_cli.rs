//! The `extract` example's command-line contract (`docs/core.md`): one JSON line
//! on stdout, exit 0 for any decision, 2 for usage errors.

use std::{
    io::Write,
    path::PathBuf,
    process::{Command, Output, Stdio},
};

use serde_json::Value;

#[allow(unreachable_pub)]
#[path = "support/example.rs"]
mod example;

/// The `extract` example's binary.
fn binary() -> PathBuf {
    example::example_binary("extract")
}

fn seed_rules() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("config/gateway.yaml")
}

fn run(args: &[&str], body: &[u8]) -> Output {
    let mut child = Command::new(binary())
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("the example runs");
    // A usage error exits before reading stdin: a broken pipe is expected
    // then, and a body that did not arrive shows in the output checks.
    let _ = child.stdin.take().expect("stdin").write_all(body);
    child.wait_with_output().expect("the example ends")
}

/// Runs and parses the single JSON line, asserting exit status 0.
#[track_caller]
fn json(args: &[&str], body: &[u8]) -> Value {
    let out = run(args, body);
    let stdout = String::from_utf8(out.stdout).expect("UTF-8 output");
    assert_eq!(
        out.status.code(),
        Some(0),
        "stdout {stdout:?}, stderr {:?}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(stdout.ends_with('\n'), "{stdout:?}");
    assert_eq!(stdout.lines().count(), 1, "{stdout:?}");
    serde_json::from_str(&stdout).expect("one JSON object")
}

const CHAT: &[u8] = br#"{"messages":[{"role":"user","content":"What is the color of the sky?"}],"model":"chatbot","max_tokens":100}"#;

#[test]
fn found_in_one_chunk_and_in_one_byte_chunks() {
    for args in [
        &[][..],
        &["--chunk", "1"],
        &["--chunk", "7", "--policy", "fast"],
    ] {
        let v = json(args, CHAT);
        assert_eq!(v["outcome"], "found", "{args:?}");
        assert_eq!(v["model"], "chatbot", "{args:?}");
        assert!(v.get("decision").is_none());
    }
}

#[test]
fn not_found_and_errors() {
    assert_eq!(json(&[], br#"{"messages":[]}"#)["outcome"], "not_found");

    let v = json(&["--chunk", "3"], br#"{"model":"chatbot",}"#);
    assert_eq!(v["outcome"], "error");
    assert_eq!(v["kind"], "invalid_json");
    assert_eq!(v["status"], 400);
    assert!(v["offset"].as_u64().is_some());
    assert!(v["message"].is_string());

    let v = json(&[], br#"{"model":"a","model":"b"}"#);
    assert_eq!(v["kind"], "duplicate_model");
    let v = json(&[], br#"{"model":7}"#);
    assert_eq!(v["kind"], "model_not_string");
    let v = json(&["--max-body", "16"], CHAT);
    assert_eq!(
        (v["kind"].as_str(), v["status"].as_u64()),
        (Some("too_large"), Some(413))
    );
    let v = json(&["--content-type", "text/plain"], CHAT);
    assert_eq!(v["kind"], "unsupported_content_type");
    assert_eq!(v["status"], 415);
}

#[test]
fn the_path_names_the_model() {
    let v = json(
        &["--path", "/v1beta/models/gemini-2.5-pro:generateContent"],
        br#"{"contents":[{"parts":[{"text":"hi"}]}]}"#,
    );
    assert_eq!(v["outcome"], "found");
    assert_eq!(v["model"], "gemini-2.5-pro");
}

#[test]
fn rules_add_the_decision() {
    let rules = seed_rules();
    let rules = rules.to_str().expect("a UTF-8 path");
    let v = json(&["--rules", rules], CHAT);
    assert_eq!(v["outcome"], "found");
    let d = &v["decision"];
    assert_eq!(d["rule"], "chatbot");
    assert_eq!(d["pool"], "gemma3");
    assert_eq!(d["criticality"], "Critical");
    assert_eq!(d["model"], "chatbot");
    assert!(d.get("base_model").is_none());
    assert_eq!(d["headers"]["x-gateway-model-name"], "chatbot");
    assert_eq!(d["headers"]["x-gateway-inference-pool"], "gemma3");

    let v = json(
        &["--rules", rules],
        br#"{"model":"recommender","prompt":"Give me restaurant recommendations in Paris"}"#,
    );
    assert_eq!(v["decision"]["pool"], "deepseek-r1");
    assert_eq!(v["decision"]["criticality"], "Standard");

    let v = json(&["--rules", rules], br#"{"model":"gpt-4"}"#);
    assert_eq!(v["kind"], "model_not_found");
    assert_eq!(v["status"], 404);
}

#[test]
fn usage_errors_exit_2() {
    let dir = std::env::temp_dir().join(format!("bbr-extract-cli-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("a scratch directory");
    let bad_rules = dir.join("bad.yaml");
    std::fs::write(
        &bad_rules,
        "rules: [{name: a, match: {model: {regex: '('}}}]",
    )
    .expect("a rules file");
    let missing = dir.join("missing.json");
    let cases: [&[&str]; 5] = [
        &["--chunk", "0"],
        &["--policy", "lenient"],
        &["--no-such-flag"],
        &[missing.to_str().expect("UTF-8")],
        &["--rules", bad_rules.to_str().expect("UTF-8")],
    ];
    for args in cases {
        let out = run(args, CHAT);
        assert_eq!(out.status.code(), Some(2), "{args:?}");
        assert!(out.stdout.is_empty(), "{args:?}");
        assert!(!out.stderr.is_empty(), "{args:?}");
    }
    let _ = std::fs::remove_dir_all(&dir);
}
