//! Extracts the model of one generated body a number of times, for
//! counting instructions where wall-clock time means nothing (an emulated
//! CPU: `benches/arm64-instructions.sh` runs it under qemu-user).
//!
//! The body puts `model` last, after the content the scan must skip:
//!
//! - `text`: one long message of plain ASCII text: the string search alone;
//! - `chat`: the same with a newline escape in every 120 bytes, where the
//!   search stops and starts again;
//! - `nested`: many small objects inside the messages: the 64-byte block
//!   classification.
//!
//! Usage: `scan_instructions text|chat|nested SIZE REPEATS`. The difference
//! between two runs that differ only in REPEATS is the cost of the extra
//! extractions.

use std::process::ExitCode;

use bbr_core::{ExtractorConfig, ModelExtractor, Policy};
use bytes::Bytes;

const MODEL: &str = "meta-llama/Llama-3.1-8B-Instruct";

/// A body of about `size` bytes of the given shape.
fn body(shape: &str, size: usize) -> Option<Vec<u8>> {
    let mut body = br#"{"messages":["#.to_vec();
    match shape {
        "text" | "chat" => {
            body.extend_from_slice(br#"{"role":"user","content":""#);
            let line: &[u8] = if shape == "chat" {
                // One escape (a newline) in about 120 bytes.
                br#"The quick brown fox jumps over the lazy dog; pack my box with five dozen liquor jugs. How vexingly quick daft zebras jump!\n"#
            } else {
                b"The quick brown fox jumps over the lazy dog; pack my box with five dozen liquor jugs. "
            };
            while body.len() < size {
                body.extend_from_slice(line);
            }
            body.extend_from_slice(br#""}"#);
        }
        "nested" => {
            let item =
                br#"{"role":"tool","name":"get_weather","args":{"city":"Oslo","days":[1,2,3]}},"#;
            while body.len() < size {
                body.extend_from_slice(item);
            }
            body.pop();
        }
        _ => return None,
    }
    body.extend_from_slice(format!(r#"],"model":"{MODEL}"}}"#).as_bytes());
    Some(body)
}

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let (Some(shape), Some(Ok(size)), Some(Ok(repeats))) = (
        args.first(),
        args.get(1).map(|s| s.parse::<usize>()),
        args.get(2).map(|s| s.parse::<usize>()),
    ) else {
        eprintln!("usage: scan_instructions text|chat|nested SIZE REPEATS");
        return ExitCode::from(2);
    };
    let Some(body) = body(shape, size) else {
        eprintln!("unknown shape {shape}: text, chat or nested");
        return ExitCode::from(2);
    };
    let body = Bytes::from(body);
    let config = ExtractorConfig::new()
        .with_max_body(u64::MAX)
        .with_policy(Policy::Fast);
    for _ in 0..repeats {
        let mut extractor = ModelExtractor::new(config.clone());
        extractor.feed(&body).expect("a valid body");
        let extraction = extractor.finish().expect("a valid body");
        assert_eq!(extraction.model().map(|m| m.as_str()), Some(MODEL));
    }
    println!("{}", body.len());
    ExitCode::SUCCESS
}
