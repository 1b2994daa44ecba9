//! Property tests of the JSON extractor: generated documents (escapes,
//! unicode, decoy and duplicate `model` keys, numbers, nesting, invalid
//! mutations) split into arbitrary chunks must give the one-shot result,
//! and the one-shot result must be what `serde_json` says (the semantics in `docs/core.md`).
//!
//! `PROPTEST_CASES=10000 cargo test -p bbr-core --test proptest_extract`
//! runs more cases than the default.

#[allow(dead_code, unreachable_pub)]
#[path = "../../../fuzz/src/oracle.rs"]
mod oracle;

use bbr_core::{ErrorKind, ExtractorConfig, FieldValue, Policy};
use oracle::{Expected, Outcome};
use proptest::{prelude::*, sample::Index};

/// A JSON document; strings hold their raw content (escapes as written).
#[derive(Clone, Debug)]
enum Json {
    Null,
    Bool(bool),
    Num(String),
    Str(Vec<u8>),
    Arr(Vec<Json>),
    Obj(Vec<(Vec<u8>, Json)>),
}

const WHITESPACE: [&str; 6] = ["", "", " ", "\n", "\t", "\r\n  "];

fn render(json: &Json, ws: &[u8], out: &mut Vec<u8>) {
    let mut k = out.len();
    let mut space = |out: &mut Vec<u8>| {
        k += 1;
        if !ws.is_empty() {
            let w = WHITESPACE[usize::from(ws[k % ws.len()]) % WHITESPACE.len()];
            out.extend_from_slice(w.as_bytes());
        }
    };
    match json {
        Json::Null => out.extend_from_slice(b"null"),
        Json::Bool(b) => out.extend_from_slice(if *b { b"true" } else { b"false" }),
        Json::Num(n) => out.extend_from_slice(n.as_bytes()),
        Json::Str(s) => {
            out.push(b'"');
            out.extend_from_slice(s);
            out.push(b'"');
        }
        Json::Arr(items) => {
            out.push(b'[');
            for (i, item) in items.iter().enumerate() {
                if i > 0 {
                    out.push(b',');
                }
                space(out);
                render(item, ws, out);
                space(out);
            }
            if items.is_empty() {
                space(out);
            }
            out.push(b']');
        }
        Json::Obj(members) => {
            out.push(b'{');
            for (i, (key, value)) in members.iter().enumerate() {
                if i > 0 {
                    out.push(b',');
                }
                space(out);
                out.push(b'"');
                out.extend_from_slice(key);
                out.push(b'"');
                space(out);
                out.push(b':');
                space(out);
                render(value, ws, out);
                space(out);
            }
            if members.is_empty() {
                space(out);
            }
            out.push(b'}');
        }
    }
}

fn document(json: &Json, ws: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    if let Some(&lead) = ws.first() {
        out.extend_from_slice(WHITESPACE[usize::from(lead) % WHITESPACE.len()].as_bytes());
    }
    render(json, ws, &mut out);
    if let Some(&trail) = ws.last() {
        out.extend_from_slice(WHITESPACE[usize::from(trail) % WHITESPACE.len()].as_bytes());
    }
    out
}

/// One piece of a string's raw content, always valid JSON.
fn string_piece() -> impl Strategy<Value = Vec<u8>> {
    prop_oneof![
        4 => "[a-zA-Z0-9 ._/-]{1,8}".prop_map(String::into_bytes),
        2 => any::<char>()
            .prop_filter("needs escaping", |c| *c > '\u{1f}' && *c != '"' && *c != '\\')
            .prop_map(|c| c.to_string().into_bytes()),
        2 => prop::sample::select(vec!["\\\"", "\\\\", "\\/", "\\b", "\\f", "\\n", "\\r", "\\t"])
            .prop_map(|e| e.as_bytes().to_vec()),
        2 => (any::<char>(), any::<bool>()).prop_map(|(c, upper)| unicode_escape(c, upper)),
        1 => Just(b"model".to_vec()),
        1 => long_run(),
    ]
}

/// A long run (up to about 1 KiB) of letters, escapes and backslash pairs,
/// crossing the scanner's 64-byte blocks at every kind of byte.
fn long_run() -> impl Strategy<Value = Vec<u8>> {
    let piece = prop_oneof![
        4 => "[a-zA-Z0-9]{1,64}",
        1 => Just("\\\\".to_owned()),
        1 => Just("\\\"".to_owned()),
        1 => "\\\\u00[2-7][0-9a-f]",
        1 => Just("é😀".to_owned()),
    ];
    prop::collection::vec(piece, 1..40).prop_map(|pieces| pieces.concat().into_bytes())
}

/// `c` as a `\u` escape: one for the BMP, a surrogate pair above it.
fn unicode_escape(c: char, upper: bool) -> Vec<u8> {
    let mut units = [0u16; 2];
    let text: String = c
        .encode_utf16(&mut units)
        .iter()
        .map(|u| format!("\\u{u:04x}"))
        .collect();
    if upper {
        text.to_uppercase().replace("\\U", "\\u").into_bytes()
    } else {
        text.into_bytes()
    }
}

fn string_content() -> impl Strategy<Value = Vec<u8>> {
    prop::collection::vec(string_piece(), 0..6).prop_map(|pieces| pieces.concat())
}

/// Numbers in range for `serde_json` (bbr checks only their grammar).
fn number() -> impl Strategy<Value = String> {
    prop_oneof![
        "-?(0|[1-9][0-9]{0,15})(\\.[0-9]{1,8})?([eE][+-]?[0-9]{1,2})?",
        Just("0".to_owned()),
        Just("-0".to_owned()),
        Just("1E+2".to_owned()),
    ]
}

fn key() -> impl Strategy<Value = Vec<u8>> {
    prop_oneof![
        3 => prop::sample::select(vec![
            "messages", "tools", "stream", "max_tokens", "temperature", "prompt", "Model",
            "MODEL", "models", "mode", "model ", " model", "model\\u0000", "m\\u006fdel\\n",
        ])
        .prop_map(|k| k.as_bytes().to_vec()),
        2 => string_content(),
    ]
}

/// The spellings of the key `model`: all unescape to `model`.
fn model_key() -> impl Strategy<Value = Vec<u8>> {
    prop::sample::select(vec![
        "model",
        "model",
        "model",
        "mod\\u0065l",
        "\\u006dodel",
        "\\u006D\\u006F\\u0064\\u0065\\u006C",
        "mode\\u006c",
    ])
    .prop_map(|k| k.as_bytes().to_vec())
}

/// Values of `model`: mostly valid names, also every invalid kind.
fn model_value() -> impl Strategy<Value = Json> {
    prop_oneof![
        6 => "[a-zA-Z0-9._/:-]{1,40}".prop_map(|m| Json::Str(m.into_bytes())),
        2 => string_content().prop_map(Json::Str),
        1 => prop::sample::select(vec![
            "",
            "chat\\u0062ot",
            "a\\/b",
            "a\\r\\nX-Evil: 1",
            "a\\u007fb",
            "a\u{7f}b",
            "\\u0000",
            "tab\\there",
            "\\ud83d\\ude00",
            "\u{1F600}",
            "caf\u{e9}",
        ])
        .prop_map(|m| Json::Str(m.as_bytes().to_vec())),
        1 => prop::sample::select(vec![255usize, 256, 257, 300])
            .prop_map(|n| Json::Str(vec![b'm'; n])),
        1 => (prop::sample::select(vec!["a", "\\u0061", "é", "\\u00e9", "😀", "\\ud83d\\ude00"]), 60usize..260)
            .prop_map(|(unit, n)| Json::Str(unit.repeat(n).into_bytes())),
        1 => prop_oneof![
            number().prop_map(Json::Num),
            any::<bool>().prop_map(Json::Bool),
            Just(Json::Null),
            Just(Json::Arr(vec![])),
            Just(Json::Obj(vec![(b"model".to_vec(), Json::Str(b"x".to_vec()))])),
        ],
    ]
}

fn value() -> impl Strategy<Value = Json> {
    let leaf = prop_oneof![
        Just(Json::Null),
        any::<bool>().prop_map(Json::Bool),
        number().prop_map(Json::Num),
        string_content().prop_map(Json::Str),
    ];
    leaf.prop_recursive(4, 48, 5, |inner| {
        prop_oneof![
            prop::collection::vec(inner.clone(), 0..5).prop_map(Json::Arr),
            prop::collection::vec((prop_oneof![key(), model_key()], inner), 0..5)
                .prop_map(Json::Obj),
        ]
    })
}

/// A chat `messages` array whose objects carry decoy `model` keys.
fn messages() -> impl Strategy<Value = Json> {
    let message = (string_content(), prop::option::of(model_value()), value()).prop_map(
        |(content, decoy, extra)| {
            let mut members = vec![
                (b"role".to_vec(), Json::Str(b"user".to_vec())),
                (b"content".to_vec(), Json::Str(content)),
            ];
            if let Some(decoy) = decoy {
                members.push((b"model".to_vec(), decoy));
            }
            members.push((b"metadata".to_vec(), extra));
            Json::Obj(members)
        },
    );
    prop::collection::vec(message, 0..4).prop_map(Json::Arr)
}

fn member() -> impl Strategy<Value = (Vec<u8>, Json)> {
    prop_oneof![
        3 => (model_key(), model_value()),
        2 => messages().prop_map(|m| (b"messages".to_vec(), m)),
        4 => (key(), value()),
    ]
}

/// A top-level object (with, now and then, no `model` or several).
fn top_level() -> impl Strategy<Value = Json> {
    prop::collection::vec(member(), 0..6).prop_map(Json::Obj)
}

/// A document: mostly objects, sometimes another top-level value.
fn valid_document() -> impl Strategy<Value = Vec<u8>> {
    let json = prop_oneof![9 => top_level(), 1 => value()];
    (json, prop::collection::vec(any::<u8>(), 0..8)).prop_map(|(json, ws)| document(&json, &ws))
}

/// Ways to break a document (the oracle decides whether it still parses).
#[derive(Clone, Debug)]
enum Mutation {
    Truncate(Index),
    Flip(Index, u8),
    Delete(Index),
    Insert(Index, Vec<u8>),
    Bom,
    Trailing(Vec<u8>),
}

fn mutation() -> impl Strategy<Value = Mutation> {
    let inserted = prop_oneof![
        // Structural and literal bytes.
        prop::sample::select(vec![
            "{", "}", "[", "]", ",", ":", "\"", "\\", "0", "-", ".", "e", "n", "t"
        ])
        .prop_map(|s| s.as_bytes().to_vec()),
        // Raw control characters (refused inside strings).
        (0u8..0x20).prop_map(|b| vec![b]),
        // Invalid UTF-8: stray continuation, overlong, truncated, surrogate, too high.
        prop::sample::select(vec![
            &b"\x80"[..],
            b"\xff",
            b"\xc0\xaf",
            b"\xe2\x82",
            b"\xed\xa0\x80",
            b"\xf4\x90\x80\x80",
            b"\xf0\x9f\x98",
        ])
        .prop_map(<[u8]>::to_vec),
        // Lone surrogates and bad escapes.
        prop::sample::select(vec![
            "\\ud800",
            "\\udc00",
            "\\ud83d\\u0041",
            "\\ud83dx",
            "\\x",
            "\\u12",
            "\\U0041"
        ])
        .prop_map(|s| s.as_bytes().to_vec()),
        // A second model.
        Just(b",\"model\":\"other\"".to_vec()),
    ];
    prop_oneof![
        2 => any::<Index>().prop_map(Mutation::Truncate),
        2 => (any::<Index>(), any::<u8>()).prop_map(|(i, b)| Mutation::Flip(i, b)),
        1 => any::<Index>().prop_map(Mutation::Delete),
        4 => (any::<Index>(), inserted).prop_map(|(i, s)| Mutation::Insert(i, s)),
        1 => Just(Mutation::Bom),
        1 => prop::sample::select(vec!["x", "}", ",", "{}", "\u{0}", " 1", "\n\"\""])
            .prop_map(|s| Mutation::Trailing(s.as_bytes().to_vec())),
    ]
}

fn mutate(mut body: Vec<u8>, mutations: &[Mutation]) -> Vec<u8> {
    for m in mutations {
        let len = body.len();
        match m {
            Mutation::Truncate(i) => body.truncate(i.index(len + 1)),
            Mutation::Flip(i, b) if len > 0 => body[i.index(len)] ^= b | 1,
            Mutation::Delete(i) if len > 0 => {
                body.remove(i.index(len));
            }
            Mutation::Insert(i, bytes) => {
                let at = i.index(len + 1);
                body.splice(at..at, bytes.iter().copied());
            }
            Mutation::Bom => body.splice(0..0, *b"\xef\xbb\xbf").for_each(drop),
            Mutation::Trailing(bytes) => body.extend_from_slice(bytes),
            _ => {}
        }
    }
    body
}

fn mutated_document() -> impl Strategy<Value = Vec<u8>> {
    (valid_document(), prop::collection::vec(mutation(), 1..3))
        .prop_map(|(body, mutations)| mutate(body, &mutations))
}

fn cuts() -> impl Strategy<Value = Vec<Index>> {
    prop::collection::vec(any::<Index>(), 0..8)
}

fn positions(cuts: &[Index], len: usize) -> Vec<usize> {
    cuts.iter().map(|c| c.index(len + 1)).collect()
}

/// Cases for the properties that do a lot of work per case.
fn heavy_config() -> ProptestConfig {
    let cases = std::env::var("PROPTEST_CASES")
        .ok()
        .and_then(|c| c.parse().ok())
        .unwrap_or(48);
    ProptestConfig::with_cases(cases)
}

proptest! {
    #[test]
    fn valid_documents_agree_with_serde_json(
        body in valid_document(),
        cuts in cuts(),
        flags in 0u8..4,
    ) {
        oracle::check_strict(&body, &positions(&cuts, body.len()), &oracle::config(flags));
    }

    #[test]
    fn mutated_documents_agree_with_serde_json(
        body in mutated_document(),
        cuts in cuts(),
        flags in 0u8..4,
    ) {
        oracle::check_strict(&body, &positions(&cuts, body.len()), &oracle::config(flags));
    }

    #[test]
    fn fast_policy_agrees_with_strict(
        body in prop_oneof![valid_document(), mutated_document()],
        cuts in cuts(),
    ) {
        oracle::check_fast_vs_strict(&body, &positions(&cuts, body.len()));
    }
}

proptest! {
    /// A body limit changes nothing for a body decided within it, and
    /// otherwise gives `TooLarge` or the error the body has (an error's
    /// offset is where its token starts, which may be before the limit
    /// while the byte that proves it lies past it); whatever the split.
    #[test]
    fn body_limit_is_split_independent(
        body in valid_document(),
        limit in any::<Index>(),
        cuts in cuts(),
        policy in prop_oneof![Just(Policy::Strict), Just(Policy::Fast)],
    ) {
        let max_body = limit.index(body.len() + 1) as u64;
        let unlimited = oracle::run_json(&body, &[], &ExtractorConfig::new().with_policy(policy));
        let config = ExtractorConfig::new().with_policy(policy).with_max_body(max_body);
        let whole = oracle::run_json(&body, &[], &config);
        let split = oracle::run_json(&body, &positions(&cuts, body.len()), &config);
        prop_assert_eq!(&whole.outcome, &split.outcome);
        match (&unlimited.outcome, unlimited.decided_at) {
            (_, Some(at)) if at <= max_body => prop_assert_eq!(&whole.outcome, &unlimited.outcome),
            _ => prop_assert!(
                matches!(whole.outcome, Outcome::Error { kind: ErrorKind::TooLarge, .. })
                    || whole.outcome == unlimited.outcome,
                "limit {}: {:?}, unlimited {:?}",
                max_body,
                whole.outcome,
                unlimited.outcome
            ),
        }
    }
}

proptest! {
    #![proptest_config(heavy_config())]

    /// Every two-chunk split and the one-byte-chunk split give the one-shot result.
    #[test]
    fn every_boundary_gives_the_one_shot_result(
        body in prop_oneof![valid_document(), mutated_document()],
        policy in prop_oneof![Just(Policy::Strict), Just(Policy::Fast)],
    ) {
        let config = ExtractorConfig::new().with_policy(policy);
        let whole = oracle::run_json(&body, &[], &config);
        for cut in 0..=body.len() {
            let split = oracle::run_json(&body, &[cut], &config);
            prop_assert_eq!(&whole.outcome, &split.outcome, "split at {}", cut);
        }
        let bytewise: Vec<usize> = (1..body.len()).collect();
        let split = oracle::run_json(&body, &bytewise, &config);
        prop_assert_eq!(&whole.outcome, &split.outcome, "one byte per chunk");
    }
}

/// How the levels below the top-level object are opened.
#[derive(Clone, Copy, Debug)]
enum Nesting {
    Arrays,
    Objects,
    Alternating,
}

/// `{"model":"m","deep":[[…0…]]}` nested `depth` levels deep in all,
/// counting the top-level object; the model before or after the nesting.
fn nested(depth: usize, nesting: Nesting, model_first: bool) -> Vec<u8> {
    let (mut open, mut close) = (String::new(), String::new());
    for level in 0..depth - 1 {
        let array = match nesting {
            Nesting::Arrays => true,
            Nesting::Objects => false,
            Nesting::Alternating => level % 2 == 0,
        };
        open.push_str(if array { "[" } else { "{\"a\":" });
        close.insert(0, if array { ']' } else { '}' });
    }
    let deep = format!("{open}0{close}");
    let body = if model_first {
        format!("{{\"model\":\"m\",\"deep\":{deep}}}")
    } else {
        format!("{{\"deep\":{deep},\"model\":\"m\"}}")
    };
    body.into_bytes()
}

#[test]
fn depth_boundary_matches_serde_json() {
    for nesting in [Nesting::Arrays, Nesting::Objects, Nesting::Alternating] {
        for model_first in [true, false] {
            for depth in [2, 126, 127, 128, 129, 200] {
                let body = nested(depth, nesting, model_first);
                assert_eq!(depth_of(&body), depth);
                let serde_accepts = serde_json::from_slice::<serde_json::Value>(&body).is_ok();
                // The reference itself: 127 levels accepted, 128 refused.
                assert_eq!(serde_accepts, depth <= 127, "serde_json at depth {depth}");
                let config = ExtractorConfig::new();
                let run = oracle::run_json(&body, &[], &config);
                let context = format!("depth {depth}, {nesting:?}, model first: {model_first}");
                if serde_accepts {
                    assert!(
                        matches!(&run.outcome, Outcome::Found { model, .. } if model == "m"),
                        "{context}: {:?}",
                        run.outcome
                    );
                } else {
                    assert!(
                        matches!(
                            run.outcome,
                            Outcome::Error {
                                kind: ErrorKind::InvalidJson,
                                ..
                            }
                        ),
                        "{context}: {:?}",
                        run.outcome
                    );
                }
                let cuts: Vec<usize> = (0..body.len()).step_by(7).collect();
                oracle::check_strict(&body, &cuts, &config);
                oracle::check_fast_vs_strict(&body, &cuts);
            }
        }
    }
}

/// The deepest nesting in `body` (outside strings; the bodies above have none).
fn depth_of(body: &[u8]) -> usize {
    let (mut depth, mut max) = (0usize, 0usize);
    for b in body {
        match b {
            b'[' | b'{' => {
                depth += 1;
                max = max.max(depth);
            }
            b']' | b'}' => depth -= 1,
            _ => {}
        }
    }
    max
}

#[test]
fn a_lower_depth_limit_is_enforced() {
    let config = ExtractorConfig::new().with_max_depth(4);
    for (depth, ok) in [(3, true), (4, true), (5, false)] {
        let body = nested(depth, Nesting::Arrays, true);
        let run = oracle::run_json(&body, &[], &config);
        assert_eq!(
            matches!(run.outcome, Outcome::Found { .. }),
            ok,
            "depth {depth}: {:?}",
            run.outcome
        );
    }
}

/// Numbers are checked for grammar, not range: the one documented
/// difference from `serde_json`.
#[test]
fn numbers_out_of_range_are_valid() {
    for body in [
        &br#"{"x":1e400,"model":"m"}"#[..],
        br#"{"model":"m","x":-1E+999}"#,
        br#"{"x":[123456789012345678901234567890e999],"model":"m"}"#,
    ] {
        assert_eq!(
            oracle::expected(body, &ExtractorConfig::new()),
            Expected::Unknown
        );
        let run = oracle::run_json(body, &[], &ExtractorConfig::new());
        assert!(
            matches!(&run.outcome, Outcome::Found { model, .. } if model == "m"),
            "{}: {:?}",
            String::from_utf8_lossy(body),
            run.outcome
        );
    }
}

#[test]
fn number_grammar_matches_serde_json() {
    let numbers = [
        "0",
        "-0",
        "1",
        "-1",
        "10",
        "1.5",
        "-0.0",
        "1e5",
        "1E5",
        "1e+5",
        "1e-5",
        "0.1e1",
        "01",
        "-01",
        "1.",
        ".5",
        "-",
        "+1",
        "1e",
        "1e+",
        "1.e5",
        "0x10",
        "NaN",
        "Infinity",
        "-Infinity",
        "1..2",
        "1ee5",
        "--1",
        "1-",
        "00",
        "0.0.0",
        "\u{0661}",
    ];
    for n in numbers {
        for body in [
            format!("{{\"x\":{n},\"model\":\"m\"}}"),
            format!("{{\"x\":[{n}],\"model\":\"m\"}}"),
            format!("{{\"model\":\"m\",\"x\":{n}}}"),
        ] {
            oracle::check_strict(body.as_bytes(), &[6, 7, 8], &ExtractorConfig::new());
        }
    }
}

#[test]
fn model_key_spellings_after_unescaping() {
    for (body, want) in [
        (r#"{"mod\u0065l":"a"}"#, Some("a")),
        (r#"{"\u006d\u006f\u0064\u0065\u006c":"a"}"#, Some("a")),
        (r#"{"Model":"a"}"#, None),
        (r#"{"model\u0000":"a"}"#, None),
        (
            r#"{"messages":[{"model":"decoy"}],"tools":{"model":"decoy"}}"#,
            None,
        ),
    ] {
        let run = oracle::run_json(body.as_bytes(), &[], &ExtractorConfig::new());
        let got = match &run.outcome {
            Outcome::Found { model, .. } => Some(model.as_str()),
            Outcome::NotFound => None,
            other => panic!("{body}: {other:?}"),
        };
        assert_eq!(got, want, "{body}");
        oracle::check_strict(body.as_bytes(), &[3, 9, 10], &ExtractorConfig::new());
    }
    // An escaped duplicate is still a duplicate.
    let body = br#"{"model":"a","mod\u0065l":"b"}"#;
    let run = oracle::run_json(body, &[], &ExtractorConfig::new());
    assert!(
        matches!(
            run.outcome,
            Outcome::Error {
                kind: ErrorKind::DuplicateModel,
                ..
            }
        ),
        "{:?}",
        run.outcome
    );
}

#[test]
fn invalid_bodies_are_refused_at_any_split() {
    let bodies: [&[u8]; 12] = [
        b"\xef\xbb\xbf{\"model\":\"m\"}",
        b"{\"model\":\"m\"}x",
        b"{\"model\":\"m\"}{}",
        b"{\"model\":\"m\"",
        b"{\"model\":\"m\",}",
        b"{\"model\":\"m\" \"a\":1}",
        b"{\"model\":\"m\",\"a\":\"\xff\"}",
        b"{\"model\":\"m\",\"a\":\"\xed\xa0\x80\"}",
        b"{\"model\":\"m\",\"a\":\"\\ud800\"}",
        b"{\"model\":\"m\",\"a\":\"\x01\"}",
        b"{\"model\":\"m\",\"a\":tru}",
        b"[{\"model\":\"m\"}]",
    ];
    for body in bodies {
        assert_eq!(
            oracle::expected(body, &ExtractorConfig::new()),
            if body.starts_with(b"[{") {
                Expected::Error(ErrorKind::InvalidJson)
            } else {
                Expected::AnyError
            },
            "{}",
            String::from_utf8_lossy(body)
        );
        for cut in 0..=body.len() {
            oracle::check_strict(body, &[cut], &ExtractorConfig::new());
            oracle::check_fast_vs_strict(body, &[cut]);
        }
    }
}

/// Regression: with an extra field requested, the decision must be taken
/// at the same byte whatever the split (found by
/// `valid_documents_agree_with_serde_json`). It was taken at the end of the
/// field's whole value in one chunk, but at the end of the first value
/// nested in it when the body was split inside the field.
#[test]
fn decision_point_with_an_extra_field_is_split_independent() {
    let long = "x".repeat(100);
    let config = ExtractorConfig::new().with_field("stream");
    for body in [
        format!(r#"{{"model":"m","stream":[1,"{long}"]}}"#),
        format!(r#"{{"model":"m","stream":{{"a":true,"b":"{long}"}}}}"#),
    ] {
        let whole = oracle::run_json(body.as_bytes(), &[], &config);
        for cut in 0..=body.len() {
            let split = oracle::run_json(body.as_bytes(), &[cut], &config);
            assert_eq!(split.decided_at, whole.decided_at, "{body}: split at {cut}");
        }
    }
}

/// Regression: a number in an extra field is reported as written, or as
/// too long for the capture limit, never cut at the limit (found by the
/// `extract_differential` fuzz target: `{"stream":777…7}` with the limit at
/// 8 gave `Number("77777777")`).
#[test]
fn long_numbers_in_extra_fields_are_not_cut() {
    let digits = "1234567890".repeat(30);
    for (limit, number) in [
        (8, "12345678"),
        (8, "123456789"),
        (8, "-1.2345678e9"),
        (256, digits.as_str()),
    ] {
        let config = ExtractorConfig::new()
            .with_max_model_len(limit)
            .with_field("n");
        let body = format!(r#"{{"model":"m","n":{number}}}"#);
        let run = oracle::run_json(body.as_bytes(), &[], &config);
        let got = run
            .fields
            .iter()
            .find(|(name, _)| name == "n")
            .map(|(_, v)| v);
        let ok = match got {
            Some(FieldValue::Number(text)) => text == number,
            Some(FieldValue::LongNumber) => number.len() > limit,
            _ => false,
        };
        assert!(ok, "limit {limit}: {number} reported as {got:?}");
    }
}
