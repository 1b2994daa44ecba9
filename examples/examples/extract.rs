//! `extract`: reads one request body and prints what bbr decides about it,
//! as exactly one line of JSON.
//!
//! ```text
//! cargo run -q --release -p bbr-examples --example extract -- [OPTIONS] [FILE]
//! {"outcome":"found","model":"chatbot"}
//! {"outcome":"not_found"}
//! {"outcome":"error","kind":"invalid_json","status":400,"offset":17,"message":"..."}
//! ```
//!
//! With `--rules FILE`, a found outcome carries the decision:
//! `"decision":{"rule":…,"pool":…,"criticality":…,"model":…,"base_model":…,"headers":{…}}`
//! (keys with no value left out; `priority` in place of `criticality` when
//! the rule gives one). A model that no rule matches, with a default that
//! rejects, is the error `model_not_found` (404); with `default: {action: pass}`
//! the outcome is found with no decision.
//!
//! Exit status: 0 for any decision (errors included), 2 for usage errors
//! (bad options, unreadable FILE, invalid rules file).

use std::{
    io::Read,
    path::{Path, PathBuf},
    process::ExitCode,
};

use bbr_core::{
    BodyExtractor, Error, ExtractorConfig, PathTemplate, Policy,
    rules::{RouteMatch, RuleTable},
};
use bytes::Bytes;
use clap::Parser;

/// Paths that name the model themselves (Gemini-style APIs).
const PATH_TEMPLATES: &[&str] = &[
    "/v1beta/models/{model}:generateContent",
    "/v1beta/models/{model}:streamGenerateContent",
    "/v1/models/{model}:generateContent",
    "/v1/models/{model}:streamGenerateContent",
];

/// Reads one request body from FILE (or stdin) and prints, on one line of
/// JSON, the model bbr extracts from it and, with `--rules`, the routing decision.
#[derive(Debug, Parser)]
#[command(name = "extract")]
struct Args {
    /// Feed the body in chunks of N bytes (default: one chunk).
    #[arg(long, value_name = "N", value_parser = clap::value_parser!(u64).range(1..))]
    chunk: Option<u64>,
    /// `strict` (scan the whole body) or `fast` (stop at the model).
    #[arg(long, value_name = "POLICY", default_value = "strict")]
    policy: Policy,
    /// The most bytes scanned before a decision.
    #[arg(long, value_name = "N")]
    max_body: Option<u64>,
    /// The request's content type.
    #[arg(long, value_name = "T", default_value = "application/json")]
    content_type: String,
    /// The request path, for APIs that name the model in it
    /// (`/v1beta/models/{model}:generateContent`).
    #[arg(long, value_name = "P")]
    path: Option<String>,
    /// A rules file (YAML or JSON) to match the model against.
    #[arg(long, value_name = "FILE")]
    rules: Option<PathBuf>,
    /// The body; stdin when absent.
    file: Option<PathBuf>,
}

fn main() -> ExitCode {
    let args = Args::parse();
    let rules = match &args.rules {
        None => None,
        Some(path) => match RuleTable::from_path(path) {
            Ok(table) => Some(table),
            Err(err) => return usage(&err.to_string()),
        },
    };
    let body = match read_body(args.file.as_deref()) {
        Ok(body) => body,
        Err(err) => return usage(&err),
    };
    println!("{}", outcome(&args, rules.as_ref(), body));
    ExitCode::SUCCESS
}

fn usage(message: &str) -> ExitCode {
    eprintln!("extract: {message}");
    ExitCode::from(2)
}

fn read_body(file: Option<&Path>) -> Result<Bytes, String> {
    match file {
        Some(path) => std::fs::read(path)
            .map(Bytes::from)
            .map_err(|e| format!("cannot read {}: {e}", path.display())),
        None => {
            let mut body = Vec::new();
            std::io::stdin()
                .read_to_end(&mut body)
                .map_err(|e| format!("cannot read stdin: {e}"))?;
            Ok(Bytes::from(body))
        }
    }
}

/// The JSON line for `body`.
fn outcome(args: &Args, rules: Option<&RuleTable>, body: Bytes) -> String {
    let mut config = ExtractorConfig::new().with_policy(args.policy);
    if let Some(max) = args.max_body {
        config = config.with_max_body(max);
    }
    let model = match extract(args, config, body) {
        Ok(model) => model,
        Err(err) => return error_json(&err),
    };
    let Some(model) = model else {
        return r#"{"outcome":"not_found"}"#.to_owned();
    };
    let mut out = Object::new();
    out.string("outcome", "found");
    out.string("model", &model);
    if let Some(table) = rules {
        match table.route(&model, None) {
            Ok(Some(decision)) => out.raw("decision", &decision_json(&decision)),
            Ok(None) => {}
            Err(err) => return error_json(&err),
        }
    }
    out.finish()
}

/// Feeds the body in chunks and returns the model (from the path when the
/// path names one, else from the body).
fn extract(args: &Args, config: ExtractorConfig, body: Bytes) -> Result<Option<String>, Error> {
    let mut extractor = BodyExtractor::new(Some(&args.content_type), config)?;
    let size = args
        .chunk
        .map_or(body.len(), |n| usize::try_from(n).unwrap_or(usize::MAX))
        .max(1);
    let mut at = 0;
    while at < body.len() {
        let decided = extractor.extraction().is_some();
        if decided && !extractor.needs_scanning() {
            break;
        }
        let end = body.len().min(at.saturating_add(size));
        extractor.feed(&body.slice(at..end))?;
        at = end;
    }
    let extraction = extractor.finish()?;
    let from_path = args.path.as_deref().and_then(|path| {
        PATH_TEMPLATES.iter().find_map(|t| {
            PathTemplate::parse(t)
                .ok()
                .and_then(|t| t.model(path).map(str::to_owned))
        })
    });
    Ok(from_path.or_else(|| extraction.model().map(|m| m.as_str().to_owned())))
}

fn decision_json(decision: &RouteMatch) -> String {
    let mut out = Object::new();
    if let Some(rule) = decision.rule() {
        out.string("rule", rule);
    }
    if let Some(pool) = decision.pool() {
        out.string("pool", pool);
    }
    if let Some(criticality) = decision.criticality() {
        out.string("criticality", criticality.as_str());
    }
    if let Some(priority) = decision.priority() {
        out.raw("priority", &priority.to_string());
    }
    out.string("model", decision.model());
    if let Some(base) = decision.base_model() {
        out.string("base_model", base);
    }
    let mut headers = Object::new();
    for (name, value) in decision.headers() {
        headers.string(name.as_str(), &String::from_utf8_lossy(value.as_bytes()));
    }
    out.raw("headers", &headers.finish());
    out.finish()
}

fn error_json(err: &Error) -> String {
    let mut out = Object::new();
    out.string("outcome", "error");
    out.string("kind", err.kind().as_str());
    out.raw("status", &err.status().to_string());
    out.raw("offset", &err.offset().to_string());
    out.string("message", err.message());
    out.finish()
}

/// A JSON object written in insertion order.
struct Object(String);

impl Object {
    fn new() -> Object {
        Object(String::from("{"))
    }

    fn key(&mut self, key: &str) {
        if self.0.len() > 1 {
            self.0.push(',');
        }
        self.0.push_str(&quote(key));
        self.0.push(':');
    }

    fn string(&mut self, key: &str, value: &str) {
        self.key(key);
        self.0.push_str(&quote(value));
    }

    fn raw(&mut self, key: &str, json: &str) {
        self.key(key);
        self.0.push_str(json);
    }

    fn finish(mut self) -> String {
        self.0.push('}');
        self.0
    }
}

fn quote(s: &str) -> String {
    serde_json::to_string(s).unwrap_or_else(|_| String::from("\"\""))
}
