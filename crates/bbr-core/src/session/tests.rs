//! The session driven event by event: every split of a set of bodies,
//! under every policy, against the verdict on the whole body.

use super::*;
use crate::{BodyFieldHeader, FailureAction, FailurePolicy, Policy};

const RULES: &str = "rules:
  - name: chat
    match: { model: { exact: chatbot } }
    pool: gemma3
  - name: split
    match: { model: { exact: weighted } }
    pool: p
    targets: [{ model: gemma-3-27b, weight: 1 }]
default: { action: pass }
";

/// What became of a request, as its client and its upstream see it.
#[derive(Clone, Debug, PartialEq, Eq)]
enum Outcome {
    /// Answered with this error code; nothing (complete) went upstream.
    Answered(&'static str),
    /// Forwarded with these headers and this body.
    Forwarded {
        headers: Vec<(String, String)>,
        body: Vec<u8>,
        content_length: Option<ContentLength>,
    },
}

/// An adapter in miniature: holds chunks until the verdict, releases them
/// (changed as the session says), then releases or drops what follows.
fn drive(
    decider: &Decider,
    config: &ExtractorConfig,
    chunks: &[&[u8]],
    trailers: bool,
) -> (Outcome, Vec<&'static str>) {
    let events: Vec<[&[u8]; 1]> = chunks.iter().map(|c| [*c]).collect();
    let events: Vec<&[&[u8]]> = events.iter().map(|e| &e[..]).collect();
    drive_events(decider, config, &events, trailers, false)
}

/// [`drive`] with each chunk in parts: given to [`Session::lent_chunk`]
/// when `lent`, else joined and given to [`Session::chunk`].
fn drive_events(
    decider: &Decider,
    config: &ExtractorConfig,
    chunks: &[&[&[u8]]],
    trailers: bool,
    lent: bool,
) -> (Outcome, Vec<&'static str>) {
    let table = Arc::new(RuleTable::from_yaml(RULES).unwrap());
    let mut session = Session::new(table);
    let head = Head {
        content_type: Some("application/json"),
        content_length: Some(Some(100)),
        ..Head::default()
    };
    let mut steps = Vec::new();
    let mut held: Vec<Bytes> = Vec::new();
    let mut sent: Vec<u8> = Vec::new();
    let mut headers = Vec::new();
    let mut content_length = None;
    let first = session.start(decider, config, &head, !chunks.is_empty());
    let mut answered = None;
    let mut take = |step: Step,
                    session: &Session,
                    held: &mut Vec<Bytes>,
                    sent: &mut Vec<u8>,
                    chunk: Option<&Bytes>| {
        let name = match &step {
            Step::Read => "read",
            Step::Hold => "hold",
            Step::Verdict(_) => "verdict",
            Step::Release => "release",
            Step::ReleaseUnchecked(_) => "release-unchecked",
            Step::Reject(_) => "reject",
            Step::Drop => "drop",
        };
        steps.push(name);
        match step {
            Step::Read | Step::Hold => {}
            Step::Verdict(Verdict::Reject(e)) | Step::Reject(e) => {
                answered = Some(e.kind().as_str());
                held.clear();
            }
            Step::Verdict(verdict) => {
                headers = verdict
                    .headers()
                    .map(|(n, v)| (n.to_string(), v.to_str().unwrap().to_owned()))
                    .collect();
                match session.change_body(&verdict, held) {
                    Some(change) => {
                        content_length = change.content_length;
                        assert_eq!(change.len as usize, change.chunks.concat().len());
                        sent.extend(change.chunks.concat());
                    }
                    None => sent.extend(held.concat()),
                }
                held.clear();
            }
            Step::Release | Step::ReleaseUnchecked(_) => {
                if let Some(chunk) = chunk {
                    sent.extend_from_slice(chunk);
                }
            }
            Step::Drop => {}
        }
    };
    take(first, &session, &mut held, &mut sent, None);
    for (i, parts) in chunks.iter().enumerate() {
        let chunk = Bytes::from(parts.concat());
        let end = !trailers && i + 1 == chunks.len();
        if session.is_reading() {
            held.push(chunk.clone());
        }
        let step = match lent {
            true => session.lent_chunk(decider, parts, end),
            false => session.chunk(decider, &chunk, end),
        };
        take(step, &session, &mut held, &mut sent, Some(&chunk));
    }
    if trailers || chunks.is_empty() {
        let step = session.end(decider);
        take(step, &session, &mut held, &mut sent, None);
    }
    let outcome = match answered {
        Some(code) => Outcome::Answered(code),
        None => Outcome::Forwarded {
            headers,
            body: sent,
            content_length,
        },
    };
    (outcome, steps)
}

fn policies() -> Vec<(&'static str, Decider, ExtractorConfig)> {
    let strict = ExtractorConfig::new();
    let fast = ExtractorConfig::new().with_policy(Policy::Fast);
    let open = FailurePolicy::new()
        .on(ErrorKind::InvalidJson, FailureAction::PassThrough)
        .on(ErrorKind::DuplicateModel, FailureAction::PassThrough);
    let reject_missing = FailurePolicy::new().on_missing_model(FailureAction::Reject);
    let fields =
        Decider::new().with_body_field(BodyFieldHeader::new("stream", "x-stream").unwrap());
    let fields_config = fields.extractor_config(ExtractorConfig::new());
    vec![
        ("strict", Decider::new(), strict.clone()),
        ("fast", Decider::new(), fast.clone()),
        (
            "open",
            Decider::new().with_failure_policy(open.clone()),
            strict.clone(),
        ),
        ("open-fast", Decider::new().with_failure_policy(open), fast),
        (
            "reject-missing",
            Decider::new().with_failure_policy(reject_missing),
            strict,
        ),
        ("fields", fields, fields_config),
    ]
}

const BODIES: &[&str] = &[
    r#"{"model":"chatbot","messages":[{"role":"user","content":"hi"}]}"#,
    r#"{"messages":[],"model":"weighted","n":1}"#,
    r#"{"model":"unknown","stream":true}"#,
    r#"{"stream":false,"prompt":"x"}"#,
    r#"{"model":"chatbot","model":"weighted"}"#,
    r#"{"model":"chatbot",}"#,
    r#"{"model":"chatbot""#,
    r#"{"model":12}"#,
    r#"{"model":""}"#,
    r#"{"model":"weighted","stream":"","x":[1,2]}"#,
    r#"[1,2]"#,
];

/// Whether `split` may end otherwise than `whole`: an error the failure
/// policy lets through before a verdict refuses the request once a
/// verdict changed it.
fn allowed(whole: &Outcome, split: &Outcome) -> bool {
    whole == split
        || matches!(
            (whole, split),
            (
                Outcome::Forwarded { .. },
                Outcome::Answered("invalid_json" | "duplicate_model")
            )
        )
}

#[test]
fn every_split_ends_as_the_whole_body_does() {
    for (name, decider, config) in policies() {
        for body in BODIES {
            let bytes = body.as_bytes();
            let (whole, steps) = drive(&decider, &config, &[bytes], false);
            assert!(
                matches!(steps[..], ["read", "verdict"]),
                "{name} {body}: {steps:?}"
            );
            for a in 0..=bytes.len() {
                for b in a..=bytes.len() {
                    let parts = [&bytes[..a], &bytes[a..b], &bytes[b..]];
                    for trailers in [false, true] {
                        let (split, steps) = drive(&decider, &config, &parts, trailers);
                        assert!(
                            allowed(&whole, &split),
                            "{name} {body} split {a},{b} trailers {trailers}: {whole:?} / {split:?}"
                        );
                        // Hold … one verdict … then release, or an answer.
                        let verdict = steps.iter().position(|s| *s == "verdict");
                        let verdict = verdict.unwrap_or_else(|| panic!("{steps:?}"));
                        assert!(steps[1..verdict].iter().all(|s| *s == "hold"), "{steps:?}");
                        assert!(
                            steps[verdict + 1..].iter().all(|s| matches!(
                                *s,
                                "release" | "release-unchecked" | "reject" | "drop"
                            )),
                            "{steps:?}"
                        );
                    }
                }
            }
        }
    }
}

#[test]
fn a_chunk_lent_in_parts_steps_as_the_parts_joined() {
    for (name, decider, config) in policies() {
        for body in BODIES {
            let bytes = body.as_bytes();
            let whole = drive(&decider, &config, &[bytes], false);
            for a in 0..=bytes.len() {
                for b in a..=bytes.len() {
                    // One event in three parts, and two events split at `b`.
                    let parts: &[&[u8]] = &[&bytes[..a], &bytes[a..b], &bytes[b..]];
                    let lent = drive_events(&decider, &config, &[parts], false, true);
                    assert_eq!(lent, whole, "{name} {body} parts {a},{b}");
                    let events: &[&[&[u8]]] = &[&[&bytes[..a], &bytes[a..b]], &[&bytes[b..]]];
                    let joined = drive_events(&decider, &config, events, false, false);
                    let lent = drive_events(&decider, &config, events, false, true);
                    assert_eq!(lent, joined, "{name} {body} events {a},{b}");
                }
            }
        }
    }
}

#[test]
fn a_lent_chunk_is_not_kept() {
    let table = Arc::new(RuleTable::from_yaml(RULES).unwrap());
    let decider = Decider::new();
    let head = Head {
        content_type: Some("application/json"),
        ..Head::default()
    };
    let body = br#"{"model":"chatbot","messages":[]}"#.to_vec();
    let mut session = Session::new(table);
    session.start(&decider, &ExtractorConfig::new(), &head, true);
    let step = session.lent_chunk(&decider, &[&body[..20], &body[20..]], true);
    assert!(matches!(step, Step::Verdict(Verdict::Route(_))), "{step:?}");
    let len = body.len() as u64;
    drop(body);
    let extraction = session.extractor().and_then(BodyExtractor::extraction);
    let model = extraction.and_then(|x| x.model()).unwrap();
    assert!(
        !model.is_borrowed(),
        "a copy, not a slice of the lent bytes"
    );
    assert_eq!(model.as_str(), "chatbot");
    assert_eq!(session.held_bytes(), len);
}

#[test]
fn what_each_body_comes_to() {
    let (decider, config) = (Decider::new(), ExtractorConfig::new());
    let outcome = |body: &str| drive(&decider, &config, &[body.as_bytes()], false).0;
    let Outcome::Forwarded {
        headers,
        body,
        content_length,
    } = outcome(BODIES[1])
    else {
        panic!()
    };
    assert_eq!(
        headers[0],
        ("x-gateway-model-name".into(), "weighted".into())
    );
    assert_eq!(body, br#"{"messages":[],"model":"gemma-3-27b","n":1}"#);
    // The client said 100: the header follows the change.
    assert_eq!(content_length, Some(ContentLength::Set(103)));
    for (body, code) in [
        (BODIES[4], "duplicate_model"),
        (BODIES[5], "invalid_json"),
        (BODIES[6], "invalid_json"),
        (BODIES[7], "model_not_string"),
        (BODIES[10], "invalid_json"),
    ] {
        assert_eq!(outcome(body), Outcome::Answered(code), "{body}");
    }
    // No model, an empty one, or no rule: passed unrouted.
    for body in [BODIES[2], BODIES[3], BODIES[8]] {
        let Outcome::Forwarded { headers, .. } = outcome(body) else {
            panic!("{body}")
        };
        assert!(headers.is_empty(), "{body}: {headers:?}");
    }
}

#[test]
fn a_late_error_after_a_routing_verdict_is_refused_whatever_the_policy() {
    let open = FailurePolicy::new().on(ErrorKind::InvalidJson, FailureAction::PassThrough);
    let decider = Decider::new().with_failure_policy(open);
    let config = ExtractorConfig::new();
    let body = br#"{"model":"chatbot","x":}"#;
    // Whole: failed open, unrouted.
    let (whole, _) = drive(&decider, &config, &[body], false);
    assert!(matches!(whole, Outcome::Forwarded { ref headers, .. } if headers.is_empty()));
    // Routed first: refused.
    let (split, steps) = drive(&decider, &config, &[&body[..20], &body[20..]], false);
    assert_eq!(split, Outcome::Answered("invalid_json"));
    assert_eq!(steps, ["read", "verdict", "reject"]);
    // An unrouted pass changed nothing: the rest goes on unchecked.
    let body = br#"{"model":"nobody","x":}"#;
    let (split, steps) = drive(&decider, &config, &[&body[..19], &body[19..]], false);
    assert_eq!(steps, ["read", "verdict", "release-unchecked"]);
    let Outcome::Forwarded { body: sent, .. } = split else {
        panic!()
    };
    assert_eq!(sent, body);
}

#[test]
fn bodies_without_bytes_and_bodies_bbr_does_not_read() {
    let (decider, config) = (Decider::new(), ExtractorConfig::new());
    let table = Arc::new(RuleTable::from_yaml(RULES).unwrap());
    // No body.
    let mut s = Session::new(Arc::clone(&table));
    let step = s.start(&decider, &config, &Head::default(), false);
    assert!(matches!(step, Step::Verdict(Verdict::Pass(_))));
    assert!(matches!(
        s.chunk(&decider, &Bytes::new(), true),
        Step::Release
    ));
    // An empty body, in chunks or at the end.
    for end_with_chunk in [true, false] {
        let mut s = Session::new(Arc::clone(&table));
        assert!(matches!(
            s.start(&decider, &config, &Head::default(), true),
            Step::Read
        ));
        let step = match end_with_chunk {
            true => s.chunk(&decider, &Bytes::new(), true),
            false => {
                assert!(matches!(
                    s.chunk(&decider, &Bytes::new(), false),
                    Step::Hold
                ));
                s.end(&decider)
            }
        };
        let Step::Verdict(Verdict::Pass(pass)) = step else {
            panic!("{step:?}")
        };
        assert!(matches!(pass.reason(), PassReason::NoBody));
    }
    // A content type bbr does not read: refused at the head.
    let mut s = Session::new(Arc::clone(&table));
    let head = Head {
        content_type: Some("text/plain"),
        ..Head::default()
    };
    let step = s.start(&decider, &config, &head, true);
    assert_eq!(step.rejection().map(|e| e.status()), Some(415));
    assert!(s.is_done());
    assert!(matches!(
        s.chunk(&decider, &Bytes::from_static(b"x"), true),
        Step::Drop
    ));
    // The adapter's own refusal before the verdict (an idle body).
    let mut s = Session::new(table);
    s.start(&decider, &config, &Head::default(), true);
    s.chunk(&decider, &Bytes::from_static(b"{"), false);
    let step = s.fail(&decider, Error::body_timeout(1));
    assert_eq!(
        step.rejection().map(|e| e.kind()),
        Some(ErrorKind::BodyTimeout)
    );
}

#[test]
fn a_model_from_the_path_and_the_request_key() {
    let table = "rules:
  - name: w
    match: { model: { exact: m } }
    pool: p
    targets: [{ model: a, weight: 1 }, { model: b, weight: 1 }]
";
    let table = Arc::new(RuleTable::from_yaml(table).unwrap());
    let decider = Decider::new();
    let pick = |key: &[u8], body: bool| {
        let mut s = Session::new(Arc::clone(&table));
        let head = Head {
            request_key: Some(key),
            ..Head::default()
        };
        let step = match body {
            true => {
                s.start(&decider, &ExtractorConfig::new(), &head, true);
                s.chunk(&decider, &Bytes::from_static(br#"{"model":"m"}"#), true)
            }
            false => s.start_with_model(&decider, &head, "m"),
        };
        let Step::Verdict(Verdict::Route(routing)) = step else {
            panic!("{step:?}")
        };
        routing.route().model().to_owned()
    };
    // The same key picks the same target, from the body or the path.
    for key in [&b"req-1"[..], b"req-2", b"req-3", b"req-4"] {
        assert_eq!(pick(key, true), pick(key, true));
        assert_eq!(pick(key, true), pick(key, false));
    }
    let picked: std::collections::HashSet<String> = (0..64)
        .map(|i| pick(format!("req-{i}").as_bytes(), true))
        .collect();
    assert_eq!(picked.len(), 2, "{picked:?}");
}

#[test]
fn a_content_length_that_is_not_a_length_is_removed() {
    let table = Arc::new(RuleTable::from_yaml(RULES).unwrap());
    let decider = Decider::new();
    for (sent, expected) in [
        (None, None),
        (Some(None), Some(ContentLength::Remove)),
        (
            Some(parse_content_length(b" 41 ")),
            Some(ContentLength::Set(44)),
        ),
    ] {
        let mut s = Session::new(Arc::clone(&table));
        let head = Head {
            content_length: sent,
            ..Head::default()
        };
        s.start(&decider, &ExtractorConfig::new(), &head, true);
        let chunk = Bytes::from_static(br#"{"messages":[],"model":"weighted","n":1}"#);
        let step = s.chunk(&decider, &chunk, false);
        let Step::Verdict(verdict) = step else {
            panic!()
        };
        let change = s.change_body(&verdict, &[chunk]).unwrap();
        assert_eq!(change.content_length, expected);
    }
    // Not spliced when the adapter cannot splice: routed all the same.
    let mut s = Session::new(table).without_splicing();
    s.start(&decider, &ExtractorConfig::new(), &Head::default(), true);
    let chunk = Bytes::from_static(br#"{"model":"weighted"}"#);
    let Step::Verdict(verdict) = s.chunk(&decider, &chunk, true) else {
        panic!()
    };
    assert!(matches!(verdict, Verdict::Route(_)));
    assert!(s.change_body(&verdict, &[chunk]).is_none());
}

#[test]
fn each_step_counts_what_the_go_router_counts() {
    let counted = |decider: &Decider, body: &[&[u8]]| {
        let table = Arc::new(RuleTable::from_yaml(RULES).unwrap());
        let config = decider.extractor_config(ExtractorConfig::new());
        let mut s = Session::new(table);
        s.start(decider, &config, &Head::default(), true);
        let mut out = Vec::new();
        for (i, chunk) in body.iter().enumerate() {
            let step = s.chunk(decider, &Bytes::copy_from_slice(chunk), i + 1 == body.len());
            s.tally(decider, &step, |t| out.push(format!("{t:?}")));
        }
        out
    };
    let plain = Decider::new();
    assert_eq!(
        counted(&plain, &[br#"{"model":"chatbot"}"#]),
        [
            "Success",
            "Routed",
            r#"RouteMatch { rule: "chat", pool: "gemma3" }"#
        ]
    );
    assert_eq!(
        counted(&plain, &[br#"{"x":1}"#]),
        ["Success", "ModelNotInBody"]
    );
    assert_eq!(
        counted(&plain, &[br#"{"model":""}"#]),
        ["Success", "ModelEmpty"]
    );
    assert_eq!(
        counted(&plain, &[br#"{"model":1}"#]),
        ["ModelNotParsed", "Rejected(ModelNotString)"]
    );
    let strict = Decider::new()
        .with_failure_policy(FailurePolicy::new().on_missing_model(FailureAction::Reject));
    assert_eq!(
        counted(&strict, &[br#"{"model":""}"#]),
        ["ModelNotParsed", "ModelEmpty", "Rejected(InvalidModel)"]
    );
    assert_eq!(
        counted(&strict, &[br#"{"x":1}"#]),
        ["ModelNotInBody", "Rejected(InvalidModel)"]
    );
    // A late rejection after the route went out.
    assert_eq!(
        counted(&plain, &[br#"{"model":"chatbot","#, br#""model":"x"}"#]),
        [
            "Success",
            "Routed",
            r#"RouteMatch { rule: "chat", pool: "gemma3" }"#,
            "Rejected(DuplicateModel)"
        ]
    );
    // Body fields absent or empty.
    let fields = Decider::new()
        .with_body_field(BodyFieldHeader::new("stream", "x-stream").unwrap())
        .with_body_field(BodyFieldHeader::new("user", "x-user").unwrap());
    assert_eq!(
        counted(&fields, &[br#"{"model":"zz","user":""}"#]),
        [
            r#"FieldNotFound("stream")"#,
            r#"FieldEmpty("user")"#,
            "Success"
        ]
    );
}

#[test]
fn the_head_scan_reads_what_routing_needs() {
    let table = RuleTable::from_yaml(RULES).unwrap();
    let decider = Decider::new().with_stripped_headers(["x-internal"]);
    let mut scan = HeadScan::new("x-request-id");
    let headers: [(&str, &[u8]); 9] = [
        (":method", b"GET"),
        (":path", b"/v1/models?limit=1"),
        ("Content-Type", b"application/json"),
        ("content-encoding", b"gzip"),
        ("Content-Encoding", b"br"),
        ("content-length", b"12"),
        ("X-Request-Id", b"abc"),
        ("x-internal", b"1"),
        ("X-Gateway-Model-Name", b"spoof"),
    ];
    let seen: Vec<Seen> = headers
        .iter()
        .map(|(n, v)| scan.header(&decider, &table, n, *v))
        .collect();
    assert_eq!(seen[..7], [Seen::Read; 7]);
    assert_eq!(seen[7..], [Seen::Strip; 2]);
    assert_eq!(
        scan.header(&decider, &table, "accept", Bytes::from_static(b"*/*")),
        Seen::Other
    );
    assert!(scan.is_models_request());
    let head = scan.head();
    assert_eq!(head.content_type, Some("application/json"));
    assert_eq!(head.content_encoding, Some("gzip,br"));
    assert_eq!(head.content_length, Some(Some(12)));
    assert_eq!(head.request_key, Some(&b"abc"[..]));
    assert_eq!(scan.stripped(), ["x-internal", "x-gateway-model-name"]);
}
