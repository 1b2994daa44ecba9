use bytes::Bytes;

use super::*;
use crate::Policy;

/// The outcome of extracting `body` fed in the given chunks.
fn run(config: &ExtractorConfig, chunks: &[&[u8]]) -> Result<Option<String>, (ErrorKind, u64)> {
    let mut x = ModelExtractor::new(config.clone());
    for c in chunks {
        x.feed(&Bytes::copy_from_slice(c))
            .map_err(|e| (e.kind(), e.offset()))?;
    }
    x.finish()
        .map(|e| e.model().map(|m| m.as_str().to_owned()))
        .map_err(|e| (e.kind(), e.offset()))
}

/// Extracts `body` whole, then split in two and in three at every position
/// (and byte by byte); every split must give the whole-body result.
fn check_splits(config: &ExtractorConfig, body: &[u8]) -> Result<Option<String>, (ErrorKind, u64)> {
    let whole = run(config, &[body]);
    let bytes: Vec<&[u8]> = body.chunks(1).collect();
    assert_eq!(
        run(config, &bytes),
        whole,
        "byte by byte: {:?}",
        String::from_utf8_lossy(body)
    );
    for a in 0..=body.len() {
        let two = run(config, &[&body[..a], &body[a..]]);
        assert_eq!(
            two,
            whole,
            "split at {a}: {:?}",
            String::from_utf8_lossy(body)
        );
        if body.len() < 120 {
            for b in a..=body.len() {
                let three = run(config, &[&body[..a], &body[a..b], &body[b..]]);
                assert_eq!(
                    three,
                    whole,
                    "split at {a},{b}: {:?}",
                    String::from_utf8_lossy(body)
                );
            }
        }
    }
    whole
}

fn strict() -> ExtractorConfig {
    ExtractorConfig::new()
}

fn found(body: &str) -> String {
    check_splits(&strict(), body.as_bytes())
        .unwrap_or_else(|e| panic!("{body}: {e:?}"))
        .unwrap_or_else(|| panic!("{body}: no model"))
}

fn kind(body: &[u8]) -> ErrorKind {
    match check_splits(&strict(), body) {
        Ok(m) => panic!(
            "{:?}: expected an error, got {m:?}",
            String::from_utf8_lossy(body)
        ),
        Err((kind, _)) => kind,
    }
}

/// serde_json's verdict (the reference for validity).
fn serde_valid(body: &[u8]) -> bool {
    serde_json::from_slice::<serde_json::Value>(body).is_ok()
}

#[test]
fn found_a_top_level_string() {
    assert_eq!(found(r#"{"model":"chatbot"}"#), "chatbot");
    assert_eq!(
        found(r#"{"messages":[{"role":"user","content":"hi"}],"model":"chatbot","stream":true}"#),
        "chatbot"
    );
    assert_eq!(found(" \t\r\n{ \"model\" : \"a\" } \n"), "a");
}

#[test]
fn go_router_split_body() {
    let config = strict();
    let whole =
        br#"{"max_tokens":100,"model":"sql-lora-sheddable","prompt":"test","temperature":0}"#;
    let first = br#"{"max_tokens":100,"model":"sql-lo"#;
    let second = br#"ra-sheddable","prompt":"test","temperature":0}"#;
    assert_eq!(
        run(&config, &[first, second]),
        Ok(Some("sql-lora-sheddable".into()))
    );
    assert_eq!(
        check_splits(&config, whole),
        Ok(Some("sql-lora-sheddable".into()))
    );
}

#[test]
fn go_router_large_prompt() {
    let prompt = "x".repeat(70_000);
    let body = format!(r#"{{"model":"foo","prompt":"{prompt}","max_tokens":100}}"#);
    assert_eq!(run(&strict(), &[body.as_bytes()]), Ok(Some("foo".into())));
    let chunks: Vec<&[u8]> = body.as_bytes().chunks(16_384).collect();
    assert_eq!(run(&strict(), &chunks), Ok(Some("foo".into())));
}

#[test]
fn keys_compare_after_unescaping() {
    assert_eq!(found(r#"{"mod\u0065l":"x"}"#), "x");
    assert_eq!(found(r#"{"\u006d\u006F\u0064\u0065\u006c":"x"}"#), "x");
    assert_eq!(check_splits(&strict(), br#"{"Model":"x"}"#), Ok(None));
    assert_eq!(check_splits(&strict(), br#"{"model ":"x"}"#), Ok(None));
    assert_eq!(check_splits(&strict(), br#"{"models":"x"}"#), Ok(None));
    assert_eq!(check_splits(&strict(), br#"{"mode":"x"}"#), Ok(None));
}

#[test]
fn the_value_is_unescaped() {
    assert_eq!(found(r#"{"model":"a\/b"}"#), "a/b");
    assert_eq!(found(r#"{"model":"caf\u00e9"}"#), "café");
    assert_eq!(found(r#"{"model":"\ud83d\ude00"}"#), "😀");
    assert_eq!(found("{\"model\":\"日本語モデル\"}"), "日本語モデル");
}

#[test]
fn nested_decoys_are_ignored() {
    let body = r#"{"messages":[{"model":"decoy","content":{"model":"x"}}],"tools":[{"function":{"model":"y"}}],"model":"real"}"#;
    assert_eq!(found(body), "real");
    assert_eq!(
        check_splits(&strict(), br#"{"messages":[{"model":"decoy"}]}"#),
        Ok(None)
    );
    // A string value that spells a key is not a key.
    assert_eq!(
        check_splits(&strict(), br#"{"a":"model","b":["model",":"]}"#),
        Ok(None)
    );
}

#[test]
fn not_found() {
    assert_eq!(check_splits(&strict(), b"{}"), Ok(None));
    assert_eq!(
        check_splits(&strict(), br#"{"prompt":"hi","n":[1,2,{"a":null}]}"#),
        Ok(None)
    );
}

#[test]
fn model_not_string() {
    for body in [
        r#"{"model":1}"#,
        r#"{"model":-1.5e3}"#,
        r#"{"model":true}"#,
        r#"{"model":false}"#,
        r#"{"model":null}"#,
        r#"{"model":{"name":"x"}}"#,
        r#"{"model":["x"]}"#,
    ] {
        assert_eq!(kind(body.as_bytes()), ErrorKind::ModelNotString, "{body}");
    }
}

#[test]
fn invalid_model() {
    let long = format!(r#"{{"model":"{}"}}"#, "m".repeat(257));
    let max = format!(r#"{{"model":"{}"}}"#, "m".repeat(256));
    assert_eq!(kind(long.as_bytes()), ErrorKind::InvalidModel);
    assert_eq!(found(&max).len(), 256);
    for body in [
        r#"{"model":""}"#,
        r#"{"model":"a\r\nX-Evil: 1"}"#,
        r#"{"model":"a\u0000"}"#,
        r#"{"model":"a\u001f"}"#,
        r#"{"model":"a\u007f"}"#,
        "{\"model\":\"a\x7f\"}",
        r#"{"model":"\t"}"#,
    ] {
        assert_eq!(kind(body.as_bytes()), ErrorKind::InvalidModel, "{body}");
    }
    // The limit counts unescaped bytes.
    let escaped = format!(r#"{{"model":"{}"}}"#, r"\u0061".repeat(256));
    assert_eq!(found(&escaped).len(), 256);
    let limit = ExtractorConfig::new().with_max_model_len(3);
    assert_eq!(
        check_splits(&limit, br#"{"model":"abc"}"#),
        Ok(Some("abc".into()))
    );
    assert_eq!(
        check_splits(&limit, br#"{"model":"abcd"}"#).unwrap_err().0,
        ErrorKind::InvalidModel
    );
}

#[test]
fn duplicate_model() {
    assert_eq!(
        kind(br#"{"model":"a","model":"b"}"#),
        ErrorKind::DuplicateModel
    );
    assert_eq!(
        kind(br#"{"model":"a","x":1,"mod\u0065l":"b"}"#),
        ErrorKind::DuplicateModel
    );
    // Fast policy decides at the first one and does not look further.
    let fast = ExtractorConfig::new().with_policy(Policy::Fast);
    assert_eq!(
        check_splits(&fast, br#"{"model":"a","model":"b"}"#),
        Ok(Some("a".into()))
    );
}

#[test]
fn invalid_json() {
    for body in [
        &b""[..],
        b"   ",
        b"{",
        b"{\"model\"",
        b"{\"model\":\"a\"",
        b"{\"model\":\"a\",}",
        b"{,}",
        b"{\"a\" 1}",
        b"{\"a\":}",
        b"{\"a\":01}",
        b"{\"a\":1.}",
        b"{\"a\":.5}",
        b"{\"a\":1e}",
        b"{\"a\":-}",
        b"{\"a\":+1}",
        b"{\"a\":tru}",
        b"{\"a\":nul}",
        b"{\"a\":True}",
        b"{\"a\":[1,]}",
        b"{\"a\":[1 2]}",
        b"{\"a\":{]}",
        b"{\"a\":\"\\x\"}",
        b"{\"a\":\"\\u12G4\"}",
        b"{\"a\":\"\\ud800\"}",
        b"{\"a\":\"\\ud800\\u0041\"}",
        b"{\"a\":\"\\udc00\"}",
        b"{\"a\":\"raw\ncontrol\"}",
        b"{\"a\":\"\xff\"}",
        b"{\"a\":\"\xc3\"}",
        b"{\"a\":\"\xe2\x82\"}",
        b"{\"a\":\"\xed\xa0\x80\"}",
        b"{\"a\":\"\xc0\xaf\"}",
        b"{\"model\":\"a\"} x",
        b"{\"model\":\"a\"}{}",
        b"\xef\xbb\xbf{\"model\":\"a\"}",
        b"{'model':'a'}",
        b"{model:\"a\"}",
    ] {
        assert!(
            !serde_valid(body),
            "the oracle accepts {:?}",
            String::from_utf8_lossy(body)
        );
        assert_eq!(
            kind(body),
            ErrorKind::InvalidJson,
            "{:?}",
            String::from_utf8_lossy(body)
        );
    }
}

#[test]
fn the_top_level_must_be_an_object() {
    for body in [
        &b"[{\"model\":\"a\"}]"[..],
        b"\"model\"",
        b"1",
        b"null",
        b" true ",
    ] {
        assert!(serde_valid(body));
        assert_eq!(
            kind(body),
            ErrorKind::InvalidJson,
            "{:?}",
            String::from_utf8_lossy(body)
        );
    }
}

#[test]
fn valid_json_the_oracle_accepts() {
    for body in [
        &br#"{"a":[],"b":{},"c":[[]],"d":[{}],"e":""}"#[..],
        br#"{"n":[0,-0,1,-1,0.5,-0.5e-7,1E+2,12345678901234567890123,1e308]}"#,
        br#"{"s":"\"\\\/\b\f\n\r\t\u0000\uffff\ud800\udc00"}"#,
        b"{\"s\":\"\xc3\xa9\xe2\x82\xac\xf0\x9f\x98\x80\x7f\"}",
        b"{\"a\" : [ true , false , null ] }",
    ] {
        assert!(serde_valid(body), "{:?}", String::from_utf8_lossy(body));
        assert_eq!(
            check_splits(&strict(), body),
            Ok(None),
            "{:?}",
            String::from_utf8_lossy(body)
        );
    }
    // Number range is not checked (a documented difference).
    assert_eq!(check_splits(&strict(), br#"{"a":1e400}"#), Ok(None));
}

#[test]
fn error_offsets_point_at_the_problem() {
    assert_eq!(
        check_splits(&strict(), b"{\"a\":1,}"),
        Err((ErrorKind::InvalidJson, 7))
    );
    assert_eq!(
        check_splits(&strict(), b"{\"a\":\"\xff\"}"),
        Err((ErrorKind::InvalidJson, 6))
    );
    assert_eq!(
        check_splits(&strict(), b"{\"model\":\"a\"} x"),
        Err((ErrorKind::InvalidJson, 14))
    );
    assert_eq!(
        check_splits(&strict(), b"{\"model\":7}"),
        Err((ErrorKind::ModelNotString, 9))
    );
    assert_eq!(
        check_splits(&strict(), b"{\"model\":\"a\""),
        Err((ErrorKind::InvalidJson, 12))
    );
}

fn nested(depth: usize) -> Vec<u8> {
    // depth levels counting the top-level object.
    let mut body = b"{\"a\":".to_vec();
    body.extend(std::iter::repeat_n(b'[', depth - 1));
    body.extend(std::iter::repeat_n(b']', depth - 1));
    body.push(b'}');
    body
}

#[test]
fn depth_limit_matches_serde_json() {
    for depth in [1usize, 2, 126, 127, 128, 129, 500] {
        let body = if depth == 1 {
            b"{}".to_vec()
        } else {
            nested(depth)
        };
        let ours = run(&strict(), &[&body]).is_ok();
        assert_eq!(ours, serde_valid(&body), "depth {depth}");
    }
    assert!(run(&strict(), &[&nested(127)]).is_ok());
    assert!(run(&strict(), &[&nested(128)]).is_err());
    // No recursion: a huge nesting is refused, not a stack overflow.
    let deep = vec![b'['; 1 << 20];
    let mut body = b"{\"a\":".to_vec();
    body.extend(deep);
    assert_eq!(
        run(&strict(), &[&body]).unwrap_err().0,
        ErrorKind::InvalidJson
    );
    let lower = ExtractorConfig::new().with_max_depth(3);
    assert!(run(&lower, &[br#"{"a":[[1]]}"#]).is_ok());
    assert!(run(&lower, &[br#"{"a":[[[1]]]}"#]).is_err());
}

#[test]
fn strict_validates_after_the_model_and_fast_does_not() {
    let fast = ExtractorConfig::new().with_policy(Policy::Fast);
    let body = br#"{"model":"a","x":[1,,]}"#;
    assert_eq!(kind(body), ErrorKind::InvalidJson);
    assert_eq!(check_splits(&fast, body), Ok(Some("a".into())));
    let mut x = ModelExtractor::new(fast);
    assert_eq!(
        x.feed(&Bytes::from_static(br#"{"model":"a","#)).unwrap(),
        Status::Found
    );
    assert!(!x.needs_scanning());
    // Fast stops right after the model.
    assert_eq!(x.bytes_scanned(), 12);
}

#[test]
fn too_large_before_the_decision() {
    let body = br#"{"prompt":"xxxxxxxxxxxxxxxxxxxx","model":"a"}"#;
    let tight = ExtractorConfig::new().with_max_body(20);
    assert_eq!(check_splits(&tight, body), Err((ErrorKind::TooLarge, 20)));
    // The limit applies before the decision only.
    let body = br#"{"model":"a","prompt":"xxxxxxxxxxxxxxxxxxxxxxxxxxxxx"}"#;
    assert_eq!(check_splits(&tight, body), Ok(Some("a".into())));
    // An error inside the limit wins.
    assert_eq!(
        check_splits(&tight, br#"{"prompt":1,,"model":"xxxxxxxxxxxxxxxxxxxxxx"}"#)
            .unwrap_err()
            .0,
        ErrorKind::InvalidJson
    );
}

#[test]
fn the_model_is_borrowed_when_it_lies_in_one_chunk() {
    let chunk = Bytes::from_static(br#"{"messages":[],"model":"chatbot"}"#);
    let mut x = ModelExtractor::new(strict());
    x.feed(&chunk).unwrap();
    let extraction = x.finish().unwrap();
    let model = extraction.model().unwrap();
    assert!(model.is_borrowed());
    assert_eq!(model.span(), 23..32);
    assert_eq!(&chunk[23..32], b"\"chatbot\"");
    let base = chunk.as_ptr() as usize;
    let ptr = model.as_bytes().as_ptr() as usize;
    assert!(ptr > base && ptr < base + chunk.len());

    // Split inside the value: owned, same span.
    let mut x = ModelExtractor::new(strict());
    x.feed(&chunk.slice(..26)).unwrap();
    x.feed(&chunk.slice(26..)).unwrap();
    let model = x.finish().unwrap().model().unwrap().clone();
    assert!(!model.is_borrowed());
    assert_eq!(model.as_str(), "chatbot");
    assert_eq!(model.span(), 23..32);

    // Escaped: owned.
    let body = Bytes::from_static(br#"{"model":"chat\u0062ot"}"#);
    let e = ModelExtractor::extract(strict(), &body).unwrap();
    assert!(!e.model().unwrap().is_borrowed());
    assert_eq!(e.model().unwrap().as_str(), "chatbot");
    assert_eq!(e.model().unwrap().span(), 9..23);
}

#[test]
fn a_lent_chunk_gives_the_same_model_copied() {
    let body = br#"{"messages":[],"model":"chatbot"}"#;
    let mut x = ModelExtractor::new(strict());
    assert_eq!(x.feed_lent(&body[..10]).unwrap(), Status::Pending);
    assert_eq!(x.feed_lent(&body[10..]).unwrap(), Status::Found);
    let model = x.finish().unwrap().model().unwrap();
    assert!(!model.is_borrowed());
    assert_eq!(model.as_str(), "chatbot");
    assert_eq!(model.span(), 23..32);
    let base = body.as_ptr() as usize;
    let ptr = model.as_bytes().as_ptr() as usize;
    assert!(
        ptr < base || ptr >= base + body.len(),
        "not in the lent bytes"
    );
}

#[test]
fn extra_fields_in_the_same_pass() {
    let config = ExtractorConfig::new()
        .with_field("stream")
        .with_field("n")
        .with_field("user")
        .with_field("tools")
        .with_field("max_tokens");
    let body =
        br#"{"model":"a","stream":true,"n":2.5e1,"user":"u\"1","tools":[],"max_tokens":null}"#;
    let mut x = ModelExtractor::new(config.clone());
    x.feed(&Bytes::from_static(body)).unwrap();
    let e = x.finish().unwrap();
    assert_eq!(e.field("stream"), Some(&FieldValue::Bool(true)));
    assert_eq!(e.field("n"), Some(&FieldValue::Number("2.5e1".into())));
    assert_eq!(e.field("user"), Some(&FieldValue::String("u\"1".into())));
    assert_eq!(e.field("tools"), Some(&FieldValue::Array));
    assert_eq!(e.field("max_tokens"), Some(&FieldValue::Null));
    assert_eq!(e.fields().len(), 5);
    // Every split gives the same fields.
    for a in 0..=body.len() {
        let mut x = ModelExtractor::new(config.clone());
        x.feed(&Bytes::copy_from_slice(&body[..a])).unwrap();
        x.feed(&Bytes::copy_from_slice(&body[a..])).unwrap();
        assert_eq!(x.finish().unwrap().fields(), e.fields(), "split at {a}");
    }
}

#[test]
fn the_decision_waits_for_requested_fields() {
    let config = ExtractorConfig::new().with_field("stream");
    let mut x = ModelExtractor::new(config.clone());
    assert_eq!(
        x.feed(&Bytes::from_static(br#"{"model":"a","#)).unwrap(),
        Status::Pending
    );
    assert_eq!(
        x.feed(&Bytes::from_static(br#""stream":false}"#)).unwrap(),
        Status::Found
    );
    assert_eq!(
        x.extraction().unwrap().field("stream"),
        Some(&FieldValue::Bool(false))
    );
    // Absent field: decided when the object closes.
    let mut x = ModelExtractor::new(config);
    assert_eq!(
        x.feed(&Bytes::from_static(br#"{"model":"a","x":1"#))
            .unwrap(),
        Status::Pending
    );
    assert_eq!(x.feed(&Bytes::from_static(b"}")).unwrap(), Status::Found);
    assert_eq!(x.extraction().unwrap().field("stream"), None);
    assert_eq!(x.extraction().unwrap().model().unwrap().as_str(), "a");
}

#[test]
fn long_field_strings_are_not_captured() {
    let config = ExtractorConfig::new().with_field("prompt");
    let body = format!(r#"{{"prompt":"{}","model":"a"}}"#, "p".repeat(10_000));
    let e = ModelExtractor::extract(config, &Bytes::from(body)).unwrap();
    assert_eq!(e.field("prompt"), Some(&FieldValue::LongString));
}

#[test]
fn errors_are_sticky() {
    let mut x = ModelExtractor::new(strict());
    let err = x.feed(&Bytes::from_static(b"{,")).unwrap_err();
    assert_eq!(x.feed(&Bytes::from_static(b"}")).unwrap_err(), err);
    assert_eq!(x.finish().unwrap_err(), err);
    assert!(!x.needs_scanning());
}

#[test]
fn decided_at_is_where_the_model_ends() {
    let body = Bytes::from_static(br#"{"messages":[1,2,3],"model":"m","x":1}"#);
    let e = ModelExtractor::extract(strict(), &body).unwrap();
    assert_eq!(e.decided_at(), 31);
    let e = ModelExtractor::extract(strict(), &Bytes::from_static(br#"{"a":1} "#)).unwrap();
    assert_eq!(e.decided_at(), 7);
}

#[test]
fn non_ascii_text_in_long_strings() {
    let text = "Ünïcödé τεχτ 日本語 😀 ".repeat(500);
    let body = format!(r#"{{"messages":[{{"content":"{text}"}}],"model":"m"}}"#);
    assert!(serde_valid(body.as_bytes()));
    for size in [1usize, 2, 3, 5, 7, 64, 1000] {
        let chunks: Vec<&[u8]> = body.as_bytes().chunks(size).collect();
        assert_eq!(
            run(&strict(), &chunks),
            Ok(Some("m".into())),
            "chunks of {size}"
        );
    }
    // A bad byte deep inside non-ASCII text is found at every chunking.
    let mut bad = body.clone().into_bytes();
    let at = bad.len() / 2;
    let at = (at..).find(|&i| bad[i] >= 0xc0).unwrap();
    bad[at + 1] = b'A';
    let whole = run(&strict(), &[&bad]);
    assert_eq!(whole, Err((ErrorKind::InvalidJson, at as u64)));
    for size in [1usize, 2, 3, 5, 7, 64, 1000] {
        let chunks: Vec<&[u8]> = bad.chunks(size).collect();
        assert_eq!(run(&strict(), &chunks), whole, "chunks of {size}");
    }
}

/// A small deterministic generator for the block-path tests.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }
    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }
}

/// A nested JSON value: long enough that whole blocks of it lie at depth 2
/// and deeper, with the tokens the block path handles and the ones it hands
/// back (escapes, non-ASCII text, numbers across blocks, deep nesting).
fn nested_value(rng: &mut Rng, depth: u32, out: &mut String) {
    let pick = if depth > 6 {
        rng.below(4)
    } else {
        rng.below(7)
    };
    match pick {
        0 => {
            out.push('"');
            let len = rng.below(90);
            for _ in 0..len {
                match rng.below(40) {
                    0 => out.push_str("\\n"),
                    1 => out.push_str("\\\""),
                    2 => out.push_str("\\\\"),
                    3 => out.push_str("\\u00e9"),
                    4 => out.push_str("\\ud83d\\ude00"),
                    5 => out.push('é'),
                    6 => out.push_str("日本"),
                    _ => out.push((b'a' + rng.below(26) as u8) as char),
                }
            }
            out.push('"');
        }
        1 => out.push_str(
            ["0", "-12.5e3", "1234567890123", "true", "false", "null"][rng.below(6) as usize],
        ),
        2 => out.push_str(["\"model\"", "\"\"", "\"x\""][rng.below(3) as usize]),
        3 => out.push_str(["{}", "[]", "[[]]"][rng.below(3) as usize]),
        4 | 5 => {
            out.push('{');
            for k in 0..rng.below(5) {
                if k > 0 {
                    out.push(',');
                }
                if rng.below(4) == 0 {
                    out.push_str("\n  ");
                }
                out.push_str(
                    ["\"role\"", "\"content\"", "\"model\"", "\"mod\\u0065l\""]
                        [rng.below(4) as usize],
                );
                out.push_str(if rng.below(3) == 0 { " : " } else { ":" });
                nested_value(rng, depth + 1, out);
            }
            out.push('}');
        }
        _ => {
            out.push('[');
            for k in 0..rng.below(6) {
                if k > 0 {
                    out.push_str(if rng.below(3) == 0 { ", " } else { "," });
                }
                nested_value(rng, depth + 1, out);
            }
            out.push(']');
        }
    }
}

fn nested_body(rng: &mut Rng) -> Vec<u8> {
    let mut body = String::from("{\"messages\":[");
    for k in 0..1 + rng.below(12) {
        if k > 0 {
            body.push(',');
        }
        nested_value(rng, 2, &mut body);
    }
    body.push_str("],\"model\":\"m\"}");
    body.into_bytes()
}

#[test]
fn the_block_path_agrees_with_the_byte_path() {
    let mut rng = Rng(0x2545_f491_4f6c_dd1d);
    let config = strict();
    let mut mutated_errors = 0;
    for case in 0..3000 {
        let mut body = nested_body(&mut rng);
        if case % 2 == 1 {
            // Damage one byte; most damage makes the body invalid.
            let at = rng.below(body.len() as u64) as usize;
            body[at] = b"\"\\{}[]:,x0 \x01\xff\xc3t-"[rng.below(15) as usize];
        }
        // One chunk: the block path runs. One byte at a time: it never does.
        let whole = run(&config, &[&body]);
        let bytes: Vec<&[u8]> = body.chunks(1).collect();
        assert_eq!(
            run(&config, &bytes),
            whole,
            "{:?}",
            String::from_utf8_lossy(&body)
        );
        let chunks: Vec<&[u8]> = body.chunks(100).collect();
        assert_eq!(
            run(&config, &chunks),
            whole,
            "{:?}",
            String::from_utf8_lossy(&body)
        );
        // Validity as serde_json sees it (duplicate top-level model aside).
        if let Err((kind, _)) = whole {
            if kind == ErrorKind::InvalidJson {
                assert!(!serde_valid(&body), "{:?}", String::from_utf8_lossy(&body));
            }
            mutated_errors += 1;
        } else {
            assert!(serde_valid(&body), "{:?}", String::from_utf8_lossy(&body));
        }
    }
    // The generator does produce errors (so the comparison above is not vacuous).
    assert!(mutated_errors > 300, "{mutated_errors}");
}

/// A chat body whose message texts are often longer than a block: plain
/// ASCII, or with one escape or non-ASCII character somewhere inside.
fn long_strings_body(rng: &mut Rng) -> Vec<u8> {
    let mut body = String::from("{\"messages\":[");
    for k in 0..1 + rng.below(8) {
        if k > 0 {
            body.push(',');
        }
        body.push_str("{\"role\":\"user\",\"content\":\"");
        let len = rng.below(700) as usize;
        let special = (rng.below(4) == 0).then(|| rng.below(len as u64 + 1) as usize);
        for i in 0..len {
            if special == Some(i) {
                body.push_str(["\\n", "é", "\\u00e9", "\\\"", "日"][rng.below(5) as usize]);
            }
            body.push(if rng.below(6) == 0 {
                ' '
            } else {
                (b'a' + rng.below(26) as u8) as char
            });
        }
        body.push('"');
        if rng.below(3) == 0 {
            body.push_str(",\"n\":[1,[true],{\"k\":null}]");
        }
        body.push('}');
    }
    body.push_str("],\"model\":\"m\"}");
    body.into_bytes()
}

#[test]
fn long_strings_skipped_in_the_block_path_agree_with_the_byte_path() {
    let mut rng = Rng(0x9e37_79b9_7f4a_7c15);
    let config = strict();
    let mut errors = 0;
    for case in 0..2000 {
        let mut body = long_strings_body(&mut rng);
        if case % 3 == 2 {
            let at = rng.below(body.len() as u64) as usize;
            body[at] = b"\"\\{}[]:,x \x01\xff"[rng.below(12) as usize];
        }
        let whole = run(&config, &[&body]);
        for size in [1, 100, 333] {
            let chunks: Vec<&[u8]> = body.chunks(size).collect();
            assert_eq!(
                run(&config, &chunks),
                whole,
                "chunks of {size}: {:?}",
                String::from_utf8_lossy(&body)
            );
        }
        match whole {
            Ok(_) => assert!(serde_valid(&body), "{:?}", String::from_utf8_lossy(&body)),
            Err((kind, _)) => {
                if kind == ErrorKind::InvalidJson {
                    assert!(!serde_valid(&body), "{:?}", String::from_utf8_lossy(&body));
                }
                errors += 1;
            }
        }
    }
    assert!(errors > 200, "{errors}");
}

#[test]
fn the_block_path_covers_most_of_a_plain_body() {
    // A plain chat body: every block but the edges goes through the block
    // path, and the result is the same as byte by byte.
    let mut body = String::from("{\"messages\":[");
    for i in 0..200 {
        if i > 0 {
            body.push(',');
        }
        body.push_str(&format!(
            "{{\"role\":\"user\",\"content\":\"message {i}\",\"n\":[{i},true,null]}}"
        ));
    }
    body.push_str("],\"model\":\"chatbot\"}");
    let whole = run(&strict(), &[body.as_bytes()]);
    assert_eq!(whole, Ok(Some("chatbot".into())));
    let bytes: Vec<&[u8]> = body.as_bytes().chunks(1).collect();
    assert_eq!(run(&strict(), &bytes), whole);
}

#[test]
fn the_block_path_hands_over_at_every_offset() {
    // Each snippet sits at every offset across a block boundary, inside
    // nested content, with non-ASCII text after it so that the block path
    // hands over to the byte-level machine right there.
    let snippets: [&[u8]; 16] = [
        b"[1,2]",
        b"[1:2]",
        b"[1,,2]",
        b"[1,]",
        b"{\"a\":1}",
        b"{\"a\",1}",
        b"{\"a\":1,}",
        b"{\"a\"::1}",
        b"{\"a\" : 1 , \"b\" : [ ] }",
        b"[\"x\" , {\"k\" :\"v\"}]",
        b"{,\"a\":1}",
        b"[:1]",
        b"{\"a\":1 \"b\":2}",
        b"[tru]",
        b"[\"a\\\"b\",\"\\u00e9\"]",
        b"[1e5,-0.5,null]",
    ];
    for snippet in snippets {
        for pad in 0..70 {
            let mut body = b"{\"messages\":[\"".to_vec();
            body.extend(std::iter::repeat_n(b'p', pad));
            body.extend_from_slice(b"\",");
            body.extend_from_slice(snippet);
            body.extend_from_slice(",\"é日本\",".as_bytes());
            body.extend_from_slice(snippet);
            body.extend_from_slice(b"],\"model\":\"m\"}");
            let whole = run(&strict(), &[&body]);
            let bytes: Vec<&[u8]> = body.chunks(1).collect();
            assert_eq!(
                run(&strict(), &bytes),
                whole,
                "{:?}",
                String::from_utf8_lossy(&body)
            );
            assert_eq!(
                whole.is_ok(),
                serde_valid(&body),
                "{:?}",
                String::from_utf8_lossy(&body)
            );
        }
    }
}

#[test]
fn long_numbers_in_fields_are_not_cut() {
    let config = ExtractorConfig::new()
        .with_field("stream")
        .with_max_model_len(8);
    let body = Bytes::from_static(br#"{"stream":777777777778,"model":"m"}"#);
    let e = ModelExtractor::extract(config.clone(), &body).unwrap();
    assert_eq!(e.field("stream"), Some(&FieldValue::LongNumber));
    let body = Bytes::from_static(br#"{"stream":7777777,"model":"m"}"#);
    let e = ModelExtractor::extract(config, &body).unwrap();
    assert_eq!(
        e.field("stream"),
        Some(&FieldValue::Number("7777777".into()))
    );
}

/// With `with_numeric_model`, a number in `model` names the model by its
/// JSON text, as the Go router v1.5 reads it; by default it is refused.
#[test]
fn numeric_models_are_read_as_their_text_when_asked() {
    let numeric = strict().with_numeric_model(true);
    for (body, model) in [
        (r#"{"model":1,"prompt":"x"}"#, "1"),
        (r#"{"prompt":"x","model": -12.5e3 }"#, "-12.5e3"),
        (r#"{"model":0}"#, "0"),
    ] {
        assert_eq!(
            check_splits(&numeric, body.as_bytes()),
            Ok(Some(model.to_owned())),
            "{body}"
        );
        assert_eq!(
            run(&strict(), &[body.as_bytes()]).unwrap_err().0,
            ErrorKind::ModelNotString,
            "{body}"
        );
    }
    // The span is the number's token, so that a rewrite replaces it.
    let mut x = ModelExtractor::new(numeric.clone());
    x.feed(&Bytes::from_static(br#"{"model": 42 ,"n":1}"#))
        .unwrap();
    assert_eq!(x.finish().unwrap().model().unwrap().span(), 10..12);
    // Still refused: other non-strings, a second model, too long a number,
    // a bad number.
    for (body, kind) in [
        (&br#"{"model":true}"#[..], ErrorKind::ModelNotString),
        (br#"{"model":1,"model":"a"}"#, ErrorKind::DuplicateModel),
        (br#"{"model":01}"#, ErrorKind::InvalidJson),
    ] {
        assert_eq!(run(&numeric, &[body]).unwrap_err().0, kind);
    }
    let long = format!(r#"{{"model":{}}}"#, "9".repeat(300));
    assert_eq!(
        run(&numeric, &[long.as_bytes()]).unwrap_err().0,
        ErrorKind::InvalidModel
    );
}
