//! The ext_proc protocol, driven by a tonic client as Envoy drives it, in
//! every body mode and through the edge cases of the Go router's tests.

mod support;

use bbr_core::{ErrorKind, ExtractorConfig, FailureAction, FailurePolicy, Policy};
use bbr_extproc::{
    BodyFieldHeader, BodyRoutingProcessor,
    pb::{
        BodySendMode, HttpBody, HttpHeaders, HttpTrailers, processing_request::Request,
        processing_response::Response,
    },
};
use support::*;

type Client =
    bbr_extproc::pb::external_processor_client::ExternalProcessorClient<tonic::transport::Channel>;

const MODEL: &str = "x-gateway-model-name";

fn full_duplex() -> Option<bbr_extproc::pb::ProtocolConfiguration> {
    Some(protocol(
        BodySendMode::FullDuplexStreamed,
        BodySendMode::None,
    ))
}

fn buffered() -> Option<bbr_extproc::pb::ProtocolConfiguration> {
    Some(protocol(BodySendMode::Buffered, BodySendMode::None))
}

async fn client() -> Client {
    serve(BodyRoutingProcessor::builder().build()).await
}

/// Sends `body` whole in FULL_DUPLEX_STREAMED mode and expects it refused
/// with status 400 and error `code`.
async fn refused_in_one_chunk(c: &mut Client, body: &[u8], code: &str) {
    let mut s = Stream::open(c, full_duplex()).await;
    s.headers(&[JSON], false).await;
    s.body(body, true).await;
    let (status, reply, _) = immediate(&s.recv().await);
    assert_eq!(status, 400);
    assert_eq!(reply["error"]["code"], code);
}

#[tokio::test]
async fn buffered_routes_in_the_body_response_and_strips_spoofed_headers() {
    let mut c = client().await;
    let mut s = Stream::open(&mut c, buffered()).await;
    s.headers(
        &[
            JSON,
            ("X-Gateway-Model-Name", "evil"),
            ("x-gateway-inference-pool", "p"),
            // The client's own, read by the endpoint picker: kept.
            ("x-gateway-inference-objective", "chatbot-objective"),
            ("X-Gateway-Inference-Fairness-Id", "tenant-a"),
        ],
        false,
    )
    .await;
    // BUFFERED waits for the headers answer before it sends the body.
    let h = s.recv().await;
    assert!(matches!(h, Response::RequestHeaders(_)), "{h:?}");
    let hc = common(&h);
    let mut removed = removed_headers(&hc);
    removed.sort();
    assert_eq!(
        removed,
        ["x-gateway-inference-pool", "x-gateway-model-name"]
    );
    assert!(hc.clear_route_cache);

    s.body(
        br#"{"model":"chatbot","messages":[{"role":"user","content":"hi"}]}"#,
        true,
    )
    .await;
    let b = s.recv().await;
    assert!(matches!(b, Response::RequestBody(_)), "{b:?}");
    let bc = common(&b);
    assert_eq!(set_headers(&bc), [(MODEL.to_owned(), "chatbot".to_owned())]);
    assert!(bc.clear_route_cache, "routing needs clear_route_cache");
    assert!(bc.body_mutation.is_none(), "no rewrite, no body mutation");
}

#[tokio::test]
async fn full_duplex_holds_headers_until_a_model_split_across_chunks() {
    let mut c = client().await;
    let mut s = Stream::open(&mut c, full_duplex()).await;
    s.headers(&[JSON], false).await;
    let one = br#"{"max_tokens":100,"model":"sql-lo"#;
    let two = br#"ra-sheddable","prompt":"test","temperature":0}"#;
    s.body(one, false).await;
    s.body(two, true).await;
    // The headers answer carries a model only known after chunk two: it was held.
    let h = s.recv().await;
    assert!(matches!(h, Response::RequestHeaders(_)), "{h:?}");
    let hc = common(&h);
    assert_eq!(
        set_headers(&hc),
        [(MODEL.to_owned(), "sql-lora-sheddable".to_owned())]
    );
    assert!(hc.clear_route_cache);
    assert_eq!(streamed(&s.recv().await), (one.to_vec(), false));
    assert_eq!(streamed(&s.recv().await), (two.to_vec(), true));
}

#[tokio::test]
async fn streaming_flag_is_the_default_when_envoy_does_not_say() {
    let mut c = serve(BodyRoutingProcessor::builder().streaming(true).build()).await;
    let mut s = Stream::open(&mut c, None).await;
    s.headers(&[JSON], false).await;
    s.body(br#"{"model":"chatbot"}"#, true).await;
    let h = s.recv().await;
    assert!(matches!(h, Response::RequestHeaders(_)), "{h:?}");
    assert_eq!(
        streamed(&s.recv().await),
        (br#"{"model":"chatbot"}"#.to_vec(), true)
    );

    // protocol_config wins over the flag.
    let mut s = Stream::open(&mut c, buffered()).await;
    s.headers(&[JSON], false).await;
    assert!(matches!(s.recv().await, Response::RequestHeaders(_)));
    s.body(br#"{"model":"chatbot"}"#, true).await;
    let b = s.recv().await;
    assert_eq!(
        set_headers(&common(&b)),
        [(MODEL.to_owned(), "chatbot".to_owned())]
    );
}

#[tokio::test]
async fn no_model_passes_without_routing_headers() {
    let mut c = client().await;
    let mut s = Stream::open(&mut c, full_duplex()).await;
    s.headers(&[JSON, ("x-gateway-model-name", "spoof")], false)
        .await;
    s.body(br#"{"prompt":"test","messages":{"model":"nested"}}"#, true)
        .await;
    let hc = common(&s.recv().await);
    assert!(set_headers(&hc).is_empty(), "{hc:?}");
    assert_eq!(removed_headers(&hc), ["x-gateway-model-name"]);
    let (body, eos) = streamed(&s.recv().await);
    assert_eq!(body, br#"{"prompt":"test","messages":{"model":"nested"}}"#);
    assert!(eos);
}

#[tokio::test]
async fn non_string_model_is_rejected_with_the_error_contract() {
    for mode in [full_duplex(), buffered()] {
        let mut c = client().await;
        let mut s = Stream::open(&mut c, mode).await;
        s.headers(&[JSON], false).await;
        if mode == buffered() {
            assert!(matches!(s.recv().await, Response::RequestHeaders(_)));
        }
        s.body(br#"{"model":123,"prompt":"test"}"#, true).await;
        let (status, body, headers) = immediate(&s.recv().await);
        assert_eq!(status, 400);
        assert_eq!(body["error"]["code"], "model_not_string");
        assert_eq!(body["error"]["type"], "invalid_request_error");
        assert_eq!(body["error"]["param"], "model");
        assert!(headers.contains(&("content-type".to_owned(), "application/json".to_owned())));
    }
}

#[tokio::test]
async fn large_prompt_before_the_model_is_held_then_released_unchanged() {
    let mut c = client().await;
    let mut s = Stream::open(&mut c, full_duplex()).await;
    s.headers(&[JSON], false).await;
    let body = format!(
        r#"{{"prompt":"{}","max_tokens":100,"model":"recommender"}}"#,
        "a".repeat(70_000)
    );
    let chunks: Vec<&[u8]> = body.as_bytes().chunks(16 * 1024).collect();
    for (i, chunk) in chunks.iter().enumerate() {
        s.body(chunk, i + 1 == chunks.len()).await;
    }
    let hc = common(&s.recv().await);
    assert_eq!(
        set_headers(&hc),
        [(MODEL.to_owned(), "recommender".to_owned())]
    );
    let mut echoed = Vec::new();
    for i in 0..chunks.len() {
        let (chunk, eos) = streamed(&s.recv().await);
        assert_eq!(eos, i + 1 == chunks.len());
        echoed.extend_from_slice(&chunk);
    }
    assert_eq!(echoed, body.as_bytes());
}

#[tokio::test]
async fn large_buffered_body_fits_in_one_message() {
    let mut c = client().await;
    let mut s = Stream::open(&mut c, buffered()).await;
    s.headers(&[JSON], false).await;
    s.recv().await;
    let body = format!(
        r#"{{"prompt":"{}","model":"chatbot"}}"#,
        "b".repeat(10 << 20)
    );
    s.body(body.as_bytes(), true).await;
    let bc = common(&s.recv().await);
    assert_eq!(set_headers(&bc), [(MODEL.to_owned(), "chatbot".to_owned())]);
}

#[tokio::test]
async fn duplicate_model_after_the_headers_went_out_ends_with_an_immediate_response() {
    let mut c = client().await;
    let mut s = Stream::open(&mut c, full_duplex()).await;
    s.headers(&[JSON], false).await;
    s.body(br#"{"model":"chatbot","prompt":"x","#, false).await;
    let hc = common(&s.recv().await);
    assert_eq!(set_headers(&hc), [(MODEL.to_owned(), "chatbot".to_owned())]);
    assert_eq!(
        streamed(&s.recv().await).0,
        br#"{"model":"chatbot","prompt":"x","#
    );
    s.body(br#""model":"recommender"}"#, true).await;
    let (status, body, _) = immediate(&s.recv().await);
    assert_eq!(status, 400);
    assert_eq!(body["error"]["code"], "duplicate_model");
}

#[tokio::test]
async fn duplicate_model_in_one_chunk_is_rejected_before_routing() {
    let mut c = client().await;
    refused_in_one_chunk(&mut c, br#"{"model":"a","model":"b"}"#, "duplicate_model").await;
}

#[tokio::test]
async fn fast_policy_stops_scanning_after_the_model() {
    let fast = BodyRoutingProcessor::builder()
        .extractor(ExtractorConfig::new().with_policy(Policy::Fast))
        .build();
    let mut c = serve(fast).await;
    let mut s = Stream::open(&mut c, full_duplex()).await;
    s.headers(&[JSON], false).await;
    s.body(br#"{"model":"a","#, false).await;
    common(&s.recv().await);
    streamed(&s.recv().await);
    s.body(br#""model":"b" not json"#, true).await;
    assert_eq!(
        streamed(&s.recv().await),
        (br#""model":"b" not json"#.to_vec(), true)
    );
}

#[tokio::test]
async fn invalid_json_after_the_decision_is_rejected() {
    let mut c = client().await;
    let mut s = Stream::open(&mut c, full_duplex()).await;
    s.headers(&[JSON], false).await;
    s.body(br#"{"model":"chatbot","#, false).await;
    common(&s.recv().await);
    streamed(&s.recv().await);
    s.body(br#""max_tokens": }"#, true).await;
    let (status, body, _) = immediate(&s.recv().await);
    assert_eq!(status, 400);
    assert_eq!(body["error"]["code"], "invalid_json");
}

#[tokio::test]
async fn truncated_body_is_rejected_at_the_end() {
    let mut c = client().await;
    let mut s = Stream::open(&mut c, full_duplex()).await;
    s.headers(&[JSON], false).await;
    s.body(br#"{"model":"chatbot""#, false).await;
    common(&s.recv().await);
    streamed(&s.recv().await);
    // The last chunk is not released: the body is incomplete.
    s.body(b"", true).await;
    let (status, body, _) = immediate(&s.recv().await);
    assert_eq!(status, 400);
    assert_eq!(body["error"]["code"], "invalid_json");
}

#[tokio::test]
async fn trailers_end_the_body_and_come_last() {
    let mut c = client().await;
    // Decided before the trailers.
    let mut s = Stream::open(&mut c, full_duplex()).await;
    s.headers(&[JSON], false).await;
    s.body(br#"{"model":"chatbot"}"#, false).await;
    common(&s.recv().await);
    assert_eq!(
        streamed(&s.recv().await),
        (br#"{"model":"chatbot"}"#.to_vec(), false)
    );
    s.trailers().await;
    assert!(matches!(s.recv().await, Response::RequestTrailers(_)));

    // Undecided until the trailers say the body is complete.
    let mut s = Stream::open(&mut c, full_duplex()).await;
    s.headers(&[JSON], false).await;
    s.body(br#"{"prompt":"x"}"#, false).await;
    s.trailers().await;
    let hc = common(&s.recv().await);
    assert!(set_headers(&hc).is_empty());
    assert_eq!(
        streamed(&s.recv().await),
        (br#"{"prompt":"x"}"#.to_vec(), false)
    );
    assert!(matches!(s.recv().await, Response::RequestTrailers(_)));

    // A body cut short before its trailers is refused.
    let mut s = Stream::open(&mut c, full_duplex()).await;
    s.headers(&[JSON], false).await;
    s.body(br#"{"prompt":"x""#, false).await;
    s.trailers().await;
    let (status, _, _) = immediate(&s.recv().await);
    assert_eq!(status, 400);
}

#[tokio::test]
async fn header_only_requests_are_answered_at_once() {
    for mode in [full_duplex(), buffered(), None] {
        let mut c = client().await;
        let mut s = Stream::open(&mut c, mode).await;
        s.headers(
            &[(":method", "GET"), ("x-gateway-base-model-name", "spoof")],
            true,
        )
        .await;
        let h = s.recv().await;
        assert!(matches!(h, Response::RequestHeaders(_)), "{h:?}");
        let hc = common(&h);
        assert_eq!(removed_headers(&hc), ["x-gateway-base-model-name"]);
        assert!(set_headers(&hc).is_empty());
    }
}

#[tokio::test]
async fn response_events_are_answered_at_once() {
    let mut c = client().await;
    let mut s = Stream::open(
        &mut c,
        Some(protocol(
            BodySendMode::FullDuplexStreamed,
            BodySendMode::FullDuplexStreamed,
        )),
    )
    .await;
    s.send(Request::ResponseHeaders(HttpHeaders::default()))
        .await;
    assert!(matches!(s.recv().await, Response::ResponseHeaders(_)));
    s.send(Request::ResponseBody(HttpBody {
        body: b"data: {\"x\":1}\n\n".to_vec(),
        ..Default::default()
    }))
    .await;
    let r = s.recv().await;
    assert!(matches!(r, Response::ResponseBody(_)));
    assert_eq!(streamed(&r), (b"data: {\"x\":1}\n\n".to_vec(), false));
    s.send(Request::ResponseBody(HttpBody {
        body: b"data: [DONE]\n\n".to_vec(),
        end_of_stream: true,
        ..Default::default()
    }))
    .await;
    assert_eq!(
        streamed(&s.recv().await),
        (b"data: [DONE]\n\n".to_vec(), true)
    );
    s.send(Request::ResponseTrailers(HttpTrailers::default()))
        .await;
    assert!(matches!(s.recv().await, Response::ResponseTrailers(_)));

    // Without a streamed response mode, body events get a plain answer.
    let mut s = Stream::open(&mut c, buffered()).await;
    s.send(Request::ResponseBody(HttpBody {
        body: b"{}".to_vec(),
        end_of_stream: true,
        ..Default::default()
    }))
    .await;
    let r = s.recv().await;
    assert!(matches!(r, Response::ResponseBody(_)));
    assert!(common(&r).body_mutation.is_none());
}

#[tokio::test]
async fn unsupported_content_type_is_415() {
    let mut c = client().await;
    let mut s = Stream::open(&mut c, full_duplex()).await;
    s.headers(&[("content-type", "text/plain")], false).await;
    let (status, body, _) = immediate(&s.recv().await);
    assert_eq!(status, 415);
    assert_eq!(body["error"]["code"], "unsupported_content_type");
}

#[tokio::test]
async fn too_large_before_the_decision_is_413() {
    let small = BodyRoutingProcessor::builder()
        .extractor(ExtractorConfig::new().with_max_body(1024))
        .build();
    let mut c = serve(small).await;
    let mut s = Stream::open(&mut c, full_duplex()).await;
    s.headers(&[JSON], false).await;
    let body = format!(r#"{{"prompt":"{}","model":"m"}}"#, "x".repeat(4096));
    s.body(body.as_bytes(), true).await;
    let (status, body, _) = immediate(&s.recv().await);
    assert_eq!(status, 413);
    assert_eq!(body["error"]["code"], "too_large");
}

#[tokio::test]
async fn streamed_mode_answers_headers_at_once_and_every_chunk_in_order() {
    let mut c = client().await;
    let mut s = Stream::open(
        &mut c,
        Some(protocol(BodySendMode::Streamed, BodySendMode::None)),
    )
    .await;
    s.headers(&[JSON], false).await;
    assert!(matches!(s.recv().await, Response::RequestHeaders(_)));
    s.body(br#"{"prompt":"x","#, false).await;
    s.body(br#""model":"chatbot"}"#, true).await;
    let first = common(&s.recv().await);
    assert_eq!(
        set_headers(&first),
        [(MODEL.to_owned(), "chatbot".to_owned())]
    );
    let second = s.recv().await;
    assert!(matches!(second, Response::RequestBody(_)));
}

#[tokio::test]
async fn observability_mode_gets_no_answers() {
    let mut c = client().await;
    let mut s = Stream::open(&mut c, full_duplex()).await;
    let mut headers = bbr_extproc::pb::ProcessingRequest {
        request: Some(Request::RequestHeaders(http_headers(&[JSON], false))),
        observability_mode: true,
        ..Default::default()
    };
    headers.protocol_config = full_duplex();
    s.send_raw(headers).await;
    s.send_raw(bbr_extproc::pb::ProcessingRequest {
        request: Some(Request::RequestBody(HttpBody {
            body: br#"{"model":"a"}"#.to_vec(),
            end_of_stream: true,
            ..Default::default()
        })),
        observability_mode: true,
        ..Default::default()
    })
    .await;
    s.close();
    assert!(s.ends().await, "no response expected in observability mode");
}

const RULES: &str = r#"
rules:
  - name: chatbot
    match: { model: { exact: chatbot } }
    pool: gemma3
    criticality: Critical
    set_headers: { x-gateway-inference-objective: chatbot }
  - name: canary
    match: { model: { exact: canary } }
    pool: gemma3
    targets:
      - { model: google/gemma-3-27b-it, weight: 1 }
  - name: recommender
    match: { model: { exact: recommender } }
    pool: deepseek-r1
base_models:
  - base_model: qwen
    adapters: [sql-lora-sheddable]
default: { action: reject }
"#;

fn with_rules() -> BodyRoutingProcessor {
    let table = bbr_core::rules::RuleTable::from_yaml(RULES).unwrap();
    BodyRoutingProcessor::builder()
        .rules(bbr_core::rules::SharedRules::new(table))
        .build()
}

#[tokio::test]
async fn rules_set_pool_and_rule_headers_and_strip_every_managed_header() {
    let mut c = serve(with_rules()).await;
    let mut s = Stream::open(&mut c, full_duplex()).await;
    s.headers(
        &[
            JSON,
            ("x-gateway-inference-objective", "spoof"),
            ("x-other", "kept"),
        ],
        false,
    )
    .await;
    s.body(br#"{"model":"chatbot"}"#, true).await;
    let hc = common(&s.recv().await);
    let mut set = set_headers(&hc);
    set.sort();
    assert_eq!(
        set,
        [
            (
                "x-gateway-inference-objective".to_owned(),
                "chatbot".to_owned()
            ),
            ("x-gateway-inference-pool".to_owned(), "gemma3".to_owned()),
            (MODEL.to_owned(), "chatbot".to_owned()),
        ]
    );
    // Overwritten by the decision rather than removed; nothing else touched.
    assert!(removed_headers(&hc).is_empty(), "{hc:?}");
}

#[tokio::test]
async fn unknown_model_is_404_model_not_found() {
    let mut c = serve(with_rules()).await;
    let mut s = Stream::open(&mut c, full_duplex()).await;
    s.headers(&[JSON], false).await;
    s.body(br#"{"model":"gpt-4","prompt":"x"}"#, true).await;
    let (status, body, _) = immediate(&s.recv().await);
    assert_eq!(status, 404);
    assert_eq!(body["error"]["code"], "model_not_found");
}

#[tokio::test]
async fn rewrite_splices_the_body_in_both_modes() {
    let body: &[u8] = br#"{"prompt":"x","model":"canary","n":1}"#;
    let expected: &[u8] = br#"{"prompt":"x","model":"google/gemma-3-27b-it","n":1}"#;
    let length = body.len().to_string();
    let new_length = expected.len().to_string();

    // BUFFERED: one body mutation with the whole new body.
    let mut c = serve(with_rules()).await;
    let mut s = Stream::open(&mut c, buffered()).await;
    s.headers(&[JSON, ("content-length", &length)], false).await;
    s.recv().await;
    s.body(body, true).await;
    let bc = common(&s.recv().await);
    let set = set_headers(&bc);
    assert!(
        set.contains(&(MODEL.to_owned(), "canary".to_owned())),
        "{set:?}"
    );
    assert!(
        set.contains(&("content-length".to_owned(), new_length.clone())),
        "{set:?}"
    );
    match bc.body_mutation.and_then(|m| m.mutation) {
        Some(bbr_extproc::pb::body_mutation::Mutation::Body(b)) => assert_eq!(b, expected),
        other => panic!("{other:?}"),
    }

    // FULL_DUPLEX_STREAMED: the held chunks, spliced, as streamed responses.
    let mut s = Stream::open(&mut c, full_duplex()).await;
    s.headers(&[JSON, ("content-length", &length)], false).await;
    s.body(&body[..20], false).await;
    s.body(&body[20..], true).await;
    let hc = common(&s.recv().await);
    assert!(set_headers(&hc).contains(&("content-length".to_owned(), new_length)));
    let mut echoed = Vec::new();
    loop {
        let (chunk, eos) = streamed(&s.recv().await);
        echoed.extend_from_slice(&chunk);
        if eos {
            break;
        }
    }
    assert_eq!(echoed, expected);
}

#[tokio::test]
async fn lora_adapter_gets_its_base_model_header() {
    let table = bbr_core::rules::RuleTable::from_yaml(
        "{base_models: [{base_model: qwen, adapters: [sql-lora-sheddable]}], default: {action: route}}",
    )
    .unwrap();
    let processor = BodyRoutingProcessor::builder()
        .rules(bbr_core::rules::SharedRules::new(table))
        .build();
    let mut c = serve(processor).await;
    let mut s = Stream::open(&mut c, full_duplex()).await;
    s.headers(&[JSON], false).await;
    s.body(br#"{"model":"sql-lora-sheddable","prompt":"test"}"#, true)
        .await;
    let hc = common(&s.recv().await);
    assert_eq!(
        set_headers(&hc),
        [
            (MODEL.to_owned(), "sql-lora-sheddable".to_owned()),
            ("x-gateway-base-model-name".to_owned(), "qwen".to_owned()),
        ]
    );
}

#[tokio::test]
async fn replaced_rules_apply_to_the_next_request() {
    let processor = with_rules();
    let rules = processor.rules().clone();
    let mut c = serve(processor).await;
    rules.replace(
        bbr_core::rules::RuleTable::from_yaml(
            "rules: [{name: chatbot, match: {model: {exact: chatbot}}, pool: other}]",
        )
        .unwrap(),
    );
    let mut s = Stream::open(&mut c, full_duplex()).await;
    s.headers(&[JSON], false).await;
    s.body(br#"{"model":"chatbot"}"#, true).await;
    let hc = common(&s.recv().await);
    assert!(
        set_headers(&hc).contains(&("x-gateway-inference-pool".to_owned(), "other".to_owned()))
    );
}

fn fail_open(kinds: &[ErrorKind]) -> BodyRoutingProcessor {
    let policy = kinds.iter().fold(FailurePolicy::new(), |p, &k| {
        p.on(k, FailureAction::PassThrough)
    });
    BodyRoutingProcessor::builder()
        .failure_policy(policy)
        .build()
}

#[tokio::test]
async fn fail_open_invalid_json_passes_the_request_through_unrouted() {
    let mut c = serve(fail_open(&[ErrorKind::InvalidJson])).await;
    let body: &[u8] = br#"{"prompt": oops, "model":"chatbot"}"#;

    let mut s = Stream::open(&mut c, full_duplex()).await;
    s.headers(&[JSON, ("x-gateway-model-name", "spoof")], false)
        .await;
    s.body(&body[..10], false).await;
    s.body(&body[10..], true).await;
    let hc = common(&s.recv().await);
    assert!(set_headers(&hc).is_empty(), "{hc:?}");
    assert_eq!(removed_headers(&hc), ["x-gateway-model-name"]);
    assert_eq!(streamed(&s.recv().await), (body[..10].to_vec(), false));
    assert_eq!(streamed(&s.recv().await), (body[10..].to_vec(), true));

    let mut s = Stream::open(&mut c, buffered()).await;
    s.headers(&[JSON], false).await;
    assert!(matches!(s.recv().await, Response::RequestHeaders(_)));
    s.body(body, true).await;
    let b = s.recv().await;
    assert!(matches!(b, Response::RequestBody(_)), "{b:?}");
    let bc = common(&b);
    assert!(set_headers(&bc).is_empty(), "{bc:?}");
    assert!(bc.body_mutation.is_none());
}

#[tokio::test]
async fn kinds_not_listed_as_fail_open_are_still_rejected() {
    let mut c = serve(fail_open(&[ErrorKind::InvalidJson])).await;
    refused_in_one_chunk(
        &mut c,
        br#"{"model":123,"prompt":"test"}"#,
        "model_not_string",
    )
    .await;

    refused_in_one_chunk(&mut c, br#"{"model":"a","model":"b"}"#, "duplicate_model").await;
}

#[tokio::test]
async fn fail_open_cannot_undo_a_routing_that_went_out() {
    // The headers (with the routing) are out when the broken JSON arrives:
    // the request cannot pass unchanged any more, so it is refused.
    let mut c = serve(fail_open(&ErrorKind::ALL)).await;
    let mut s = Stream::open(&mut c, full_duplex()).await;
    s.headers(&[JSON], false).await;
    s.body(br#"{"model":"chatbot","#, false).await;
    let hc = common(&s.recv().await);
    assert_eq!(set_headers(&hc), [(MODEL.to_owned(), "chatbot".to_owned())]);
    streamed(&s.recv().await);
    s.body(br#""model":"recommender"}"#, true).await;
    let (status, body, _) = immediate(&s.recv().await);
    assert_eq!(status, 400);
    assert_eq!(body["error"]["code"], "duplicate_model");

    // With nothing set, passing on is still passing the request unchanged.
    let mut s = Stream::open(&mut c, full_duplex()).await;
    s.headers(&[JSON], false).await;
    s.body(br#"{"prompt":"x"}"#, false).await;
    let hc = common(&s.recv().await);
    assert!(set_headers(&hc).is_empty(), "{hc:?}");
    streamed(&s.recv().await);
    s.body(b" trailing", true).await;
    assert_eq!(streamed(&s.recv().await), (b" trailing".to_vec(), true));
}

#[tokio::test]
async fn reject_missing_model_answers_400() {
    let processor = BodyRoutingProcessor::builder()
        .failure_policy(FailurePolicy::new().on_missing_model(FailureAction::Reject))
        .build();
    let mut c = serve(processor).await;
    for mode in [full_duplex(), buffered()] {
        let mut s = Stream::open(&mut c, mode).await;
        s.headers(&[JSON], false).await;
        if mode == buffered() {
            assert!(matches!(s.recv().await, Response::RequestHeaders(_)));
        }
        s.body(br#"{"prompt":"x","messages":{"model":"nested"}}"#, true)
            .await;
        let (status, body, _) = immediate(&s.recv().await);
        assert_eq!(status, 400);
        assert_eq!(body["error"]["code"], "invalid_model");
    }
    // A body with a model is routed as before.
    let mut s = Stream::open(&mut c, full_duplex()).await;
    s.headers(&[JSON], false).await;
    s.body(br#"{"model":"chatbot"}"#, true).await;
    let hc = common(&s.recv().await);
    assert_eq!(set_headers(&hc), [(MODEL.to_owned(), "chatbot".to_owned())]);
}

fn with_body_fields() -> BodyRoutingProcessor {
    BodyRoutingProcessor::builder()
        .body_field("stream=x-llm-stream".parse::<BodyFieldHeader>().unwrap())
        .body_field("max_tokens=x-llm-max-tokens".parse().unwrap())
        .body_field("user=x-llm-user".parse().unwrap())
        .build()
}

#[tokio::test]
async fn body_fields_are_copied_into_headers_and_spoofs_stripped() {
    let mut c = serve(with_body_fields()).await;
    let mut s = Stream::open(&mut c, full_duplex()).await;
    s.headers(
        &[JSON, ("X-LLM-Stream", "spoof"), ("x-llm-user", "spoof")],
        false,
    )
    .await;
    let body: &[u8] =
        br#"{"model":"chatbot","stream":true,"max_tokens":1.5e2,"user":"caf\u00e9","n":1}"#;
    s.body(&body[..30], false).await;
    s.body(&body[30..], true).await;
    let hc = common(&s.recv().await);
    assert_eq!(
        set_headers(&hc),
        [
            (MODEL.to_owned(), "chatbot".to_owned()),
            ("x-llm-stream".to_owned(), "true".to_owned()),
            ("x-llm-max-tokens".to_owned(), "1.5e2".to_owned()),
            ("x-llm-user".to_owned(), "caf\u{e9}".to_owned()),
        ]
    );
    assert!(removed_headers(&hc).is_empty(), "overwritten: {hc:?}");
    assert!(hc.clear_route_cache);
    let mut echoed = streamed(&s.recv().await).0;
    echoed.extend(streamed(&s.recv().await).0);
    assert_eq!(echoed, body);

    // Absent, empty or not a scalar: nothing set, the client's copy removed.
    // No model either: the fields are still copied, the request passes.
    let mut s = Stream::open(&mut c, buffered()).await;
    s.headers(
        &[JSON, ("x-llm-stream", "spoof"), ("x-llm-user", "spoof")],
        false,
    )
    .await;
    assert!(matches!(s.recv().await, Response::RequestHeaders(_)));
    s.body(
        br#"{"prompt":"x","stream":null,"user":"","max_tokens":7}"#,
        true,
    )
    .await;
    let hc = common(&s.recv().await);
    assert_eq!(
        set_headers(&hc),
        [("x-llm-max-tokens".to_owned(), "7".to_owned())]
    );
    let mut removed = removed_headers(&hc);
    removed.sort();
    assert_eq!(removed, ["x-llm-stream", "x-llm-user"]);

    // A header-only request has its spoofed copies removed too.
    let mut s = Stream::open(&mut c, full_duplex()).await;
    s.headers(&[("x-llm-user", "spoof")], true).await;
    assert_eq!(removed_headers(&common(&s.recv().await)), ["x-llm-user"]);
}

#[tokio::test]
async fn body_fields_in_error_requests_are_not_copied() {
    let mut c = serve(with_body_fields()).await;
    let mut s = Stream::open(&mut c, full_duplex()).await;
    s.headers(&[JSON], false).await;
    s.body(br#"{"stream":true,"model":123}"#, true).await;
    let (status, _, _) = immediate(&s.recv().await);
    assert_eq!(status, 400);
}

#[tokio::test]
async fn body_field_metrics_count_absent_and_empty_fields() {
    let recorder = metrics_exporter_prometheus::PrometheusBuilder::new().build_recorder();
    let handle = recorder.handle();
    // The test runtime is single-threaded: the service records on this thread.
    let _guard = metrics::set_default_local_recorder(&recorder);

    let processor = BodyRoutingProcessor::builder()
        .body_field("user=x-llm-user".parse().unwrap())
        .build();
    let mut c = serve(processor).await;
    for body in [
        r#"{"model":"a"}"#,
        r#"{"model":"a","user":""}"#,
        r#"{"model":"a","user":"bob"}"#,
        r#"{"model":"a","user":null}"#,
        r#"{"model":"a","user":""}"#,
        r#"{"prompt":"x","user":"bob"}"#,
    ] {
        let mut s = Stream::open(&mut c, full_duplex()).await;
        s.headers(&[JSON], false).await;
        s.body(body.as_bytes(), true).await;
        common(&s.recv().await);
        streamed(&s.recv().await);
    }
    let text = handle.render();
    for line in [
        "bbr_body_field_not_found_total{field=\"user\"} 1",
        "bbr_body_field_empty_total{field=\"user\"} 2",
        "bbr_body_field_not_found_total{field=\"model\"} 1",
        "bbr_model_not_in_body_total 1",
        // The body without a model counts too, as the Go router counts it.
        "bbr_success_total 6",
        "bbr_routed_total 5",
    ] {
        assert!(
            text.lines().any(|l| l == line),
            "{line} missing from\n{text}"
        );
    }
}
