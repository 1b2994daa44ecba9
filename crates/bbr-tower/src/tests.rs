//! In-process tests of the layer's body handling and of the pool router.

use std::{
    convert::Infallible,
    future::{Ready, ready},
    sync::{Arc, Mutex},
    task::{Context, Poll},
};

use bbr_core::rules::RuleTable;
use bbr_core::{ErrorKind, FailureAction, FailurePolicy, Policy};
use bytes::Bytes;
use http::{HeaderMap, Request, Response};
use http_body::{Body, Frame};
use http_body_util::{BodyExt, Full, StreamBody};
use tower::{Service, ServiceExt, service_fn};

use crate::{Decision, ModelRoutingLayer, PoolRouter, RoutedBody};

type Chunks =
    StreamBody<futures_util::stream::Iter<std::vec::IntoIter<Result<Frame<Bytes>, Infallible>>>>;

fn chunks(parts: &[Bytes], trailers: Option<HeaderMap>) -> Chunks {
    let mut frames: Vec<Result<Frame<Bytes>, Infallible>> =
        parts.iter().cloned().map(|b| Ok(Frame::data(b))).collect();
    if let Some(t) = trailers {
        frames.push(Ok(Frame::trailers(t)));
    }
    StreamBody::new(futures_util::stream::iter(frames))
}

/// What the inner service saw of one request.
#[derive(Debug, Default)]
struct Seen {
    data: Vec<Bytes>,
    trailers: Option<HeaderMap>,
    error: Option<ErrorKind>,
    size_hint: (u64, Option<u64>),
    decision: Option<Decision>,
    headers: HeaderMap,
}

/// Runs one request through the layer; the inner service records the body.
async fn run<B>(layer: ModelRoutingLayer, request: Request<B>) -> (u16, Arc<Mutex<Seen>>)
where
    B: Body<Data = Bytes> + Send + 'static,
    B::Error: Into<crate::BoxError>,
{
    let seen = Arc::new(Mutex::new(Seen::default()));
    let record = seen.clone();
    let inner = service_fn(move |request: Request<RoutedBody<B>>| {
        let record = record.clone();
        async move {
            let (parts, body) = request.into_parts();
            let mut body = std::pin::pin!(body);
            {
                let mut s = record.lock().unwrap();
                let hint = body.size_hint();
                s.size_hint = (hint.lower(), hint.upper());
                s.decision = parts.extensions.get::<Decision>().cloned();
                s.headers = parts.headers.clone();
            }
            while let Some(frame) = body.frame().await {
                let mut s = record.lock().unwrap();
                match frame {
                    Ok(frame) => match frame.into_data() {
                        Ok(data) => s.data.push(data),
                        Err(frame) => s.trailers = frame.into_trailers().ok(),
                    },
                    Err(e) => {
                        s.error = e.downcast_ref::<bbr_core::Error>().map(|e| e.kind());
                        break;
                    }
                }
            }
            assert!(body.is_end_stream());
            Ok::<_, Infallible>(Response::new(Full::new(Bytes::from_static(b"ok"))))
        }
    });
    let service = tower::Layer::layer(&layer, inner);
    let response = service.oneshot(request).await.unwrap();
    (response.status().as_u16(), seen)
}

fn post<B>(body: B) -> Request<B> {
    Request::post("/v1/chat/completions")
        .header("content-type", "application/json")
        .body(body)
        .unwrap()
}

#[tokio::test]
async fn chunks_are_handed_on_without_copies() {
    let text = "z".repeat(5000);
    let whole = Bytes::from(format!(
        r#"{{"messages":[{{"role":"user","content":"{text}"}}],"model":"m","stream":true,"n":"{text}"}}"#
    ));
    // Held before the decision, then streamed after it.
    let cuts = [0, 1500, 3000, 5040, 7000, whole.len()];
    let parts: Vec<Bytes> = cuts.windows(2).map(|w| whole.slice(w[0]..w[1])).collect();
    let (status, seen) = run(ModelRoutingLayer::new(), post(chunks(&parts, None))).await;
    assert_eq!(status, 200);
    let seen = seen.lock().unwrap();
    assert_eq!(seen.data.len(), parts.len());
    for (sent, got) in parts.iter().zip(&seen.data) {
        assert_eq!(sent, got);
        assert_eq!(sent.as_ptr(), got.as_ptr(), "a chunk was copied");
    }
    assert_eq!(seen.decision.as_ref().unwrap().model(), Some("m"));
    assert_eq!(seen.headers["x-gateway-model-name"], "m");
}

#[tokio::test]
async fn tiny_chunks_are_coalesced_while_held() {
    let body = format!(r#"{{"messages":["{}"],"model":"m"}}"#, "q".repeat(20_000));
    let whole = Bytes::from(body.clone());
    let parts: Vec<Bytes> = (0..whole.len()).map(|i| whole.slice(i..i + 1)).collect();
    let (status, seen) = run(ModelRoutingLayer::new(), post(chunks(&parts, None))).await;
    assert_eq!(status, 200);
    let seen = seen.lock().unwrap();
    assert_eq!(seen.data.concat(), body.as_bytes());
    assert!(
        seen.data.len() < 100,
        "{} chunks held for {} bytes",
        seen.data.len(),
        body.len()
    );
    assert_eq!(seen.decision.as_ref().unwrap().model(), Some("m"));
}

#[tokio::test]
async fn size_hint_and_end_of_stream_follow_the_body() {
    let body = r#"{"model":"m","messages":[]}"#;
    let (_, seen) = run(ModelRoutingLayer::new(), post(Full::new(Bytes::from(body)))).await;
    let seen = seen.lock().unwrap();
    let len = body.len() as u64;
    assert_eq!(seen.size_hint, (len, Some(len)));
    assert_eq!(seen.data.concat(), body.as_bytes());
}

#[tokio::test]
async fn trailers_are_kept() {
    let mut trailers = HeaderMap::new();
    trailers.insert("x-checksum", "abc".parse().unwrap());
    for split in [5, 15] {
        let body = Bytes::from_static(br#"{"model":"m","n":1}"#);
        let parts = [body.slice(..split), body.slice(split..)];
        let (status, seen) = run(
            ModelRoutingLayer::new(),
            post(chunks(&parts, Some(trailers.clone()))),
        )
        .await;
        assert_eq!(status, 200);
        let seen = seen.lock().unwrap();
        assert_eq!(seen.data.concat(), &body[..]);
        assert_eq!(seen.trailers.as_ref(), Some(&trailers));
    }
}

#[tokio::test]
async fn a_violation_after_the_decision_ends_the_body_with_the_error() {
    let parts = [
        Bytes::from_static(br#"{"model":"a","messages":["#),
        Bytes::from_static(br#""x"],"#),
        Bytes::from_static(br#""model":"b"}"#),
    ];
    let (status, seen) = run(ModelRoutingLayer::new(), post(chunks(&parts, None))).await;
    assert_eq!(status, 400, "the error contract answers the client");
    {
        let seen = seen.lock().unwrap();
        assert_eq!(seen.error, Some(ErrorKind::DuplicateModel));
        assert_eq!(
            seen.data,
            parts[..2],
            "the offending chunk was not released"
        );
    }

    // The fast policy does not look past the decision.
    let (status, seen) = run(
        ModelRoutingLayer::new().policy(Policy::Fast),
        post(chunks(&parts, None)),
    )
    .await;
    assert_eq!(status, 200);
    assert_eq!(seen.lock().unwrap().data, parts);
}

#[tokio::test]
async fn large_chunks_are_scanned_whole() {
    let text = "y".repeat(100_000);
    let body = format!(r#"{{"messages":["{text}"],"model":"m"}}"#);
    let (status, seen) = run(
        ModelRoutingLayer::new(),
        post(Full::new(Bytes::from(body.clone()))),
    )
    .await;
    assert_eq!(status, 200);
    {
        let seen = seen.lock().unwrap();
        assert_eq!(seen.decision.as_ref().unwrap().model(), Some("m"));
        assert_eq!(seen.data.concat(), body.as_bytes());
    }
    // A duplicate far from the first model, in the same chunk, is found
    // before the inner service is called.
    let body = format!(r#"{{"model":"m","messages":["{text}"],"model":"n"}}"#);
    let (status, seen) = run(ModelRoutingLayer::new(), post(Full::new(Bytes::from(body)))).await;
    assert_eq!(status, 400);
    assert!(seen.lock().unwrap().decision.is_none());
}

#[tokio::test]
async fn a_truncated_body_never_ends_cleanly() {
    let parts = [
        Bytes::from_static(br#"{"model":"a","#),
        Bytes::from_static(br#""messages":["#),
    ];
    let (_, seen) = run(ModelRoutingLayer::new(), post(chunks(&parts, None))).await;
    let seen = seen.lock().unwrap();
    assert_eq!(seen.error, Some(ErrorKind::InvalidJson));
}

#[tokio::test]
async fn a_missing_model_passes_or_is_refused_as_configured() {
    let body = r#"{"messages":[]}"#;
    let (status, seen) = run(ModelRoutingLayer::new(), post(Full::new(Bytes::from(body)))).await;
    assert_eq!(status, 200);
    {
        let seen = seen.lock().unwrap();
        assert!(seen.decision.as_ref().unwrap().model().is_none());
        assert!(!seen.headers.contains_key("x-gateway-model-name"));
    }

    let policy = FailurePolicy::new().on_missing_model(FailureAction::Reject);
    let (status, seen) = run(
        ModelRoutingLayer::new().failure_policy(policy),
        post(Full::new(Bytes::from(body))),
    )
    .await;
    assert_eq!(status, 400);
    assert!(
        seen.lock().unwrap().decision.is_none(),
        "the inner service was not called"
    );
}

#[tokio::test]
async fn a_request_without_a_body_is_passed_on() {
    let request = Request::get("/v1/models")
        .header("x-gateway-model-name", "spoofed")
        .body(Full::new(Bytes::new()))
        .unwrap();
    let (status, seen) = run(ModelRoutingLayer::new(), request).await;
    assert_eq!(status, 200);
    let seen = seen.lock().unwrap();
    assert!(!seen.headers.contains_key("x-gateway-model-name"));
    assert_eq!(
        seen.decision.as_ref().unwrap().source(),
        crate::ModelSource::None
    );
}

#[tokio::test]
async fn the_limit_applies_before_the_decision_only() {
    let body = format!(r#"{{"model":"m","messages":["{}"]}}"#, "x".repeat(1000));
    let (status, _) = run(
        ModelRoutingLayer::new().max_body(100),
        post(Full::new(Bytes::from(body.clone()))),
    )
    .await;
    assert_eq!(
        status, 200,
        "one chunk holding the model decides within the limit"
    );
    let late = format!(r#"{{"messages":["{}"],"model":"m"}}"#, "x".repeat(1000));
    let parts: Vec<Bytes> = late
        .as_bytes()
        .chunks(50)
        .map(Bytes::copy_from_slice)
        .collect();
    let (status, _) = run(
        ModelRoutingLayer::new().max_body(100),
        post(chunks(&parts, None)),
    )
    .await;
    assert_eq!(status, 413);
    let _ = RuleTable::empty();
}

/// A service that is never ready.
#[derive(Clone)]
struct Saturated;

impl<B> Service<Request<B>> for Saturated {
    type Response = Response<Full<Bytes>>;
    type Error = Infallible;
    type Future = Ready<Result<Response<Full<Bytes>>, Infallible>>;

    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        Poll::Pending
    }

    fn call(&mut self, _: Request<B>) -> Self::Future {
        unreachable!("called without being ready")
    }
}

#[derive(Clone)]
enum Pool {
    Saturated(Saturated),
    Ready(&'static str),
}

impl<B> Service<Request<B>> for Pool {
    type Response = Response<Full<Bytes>>;
    type Error = Infallible;
    type Future = Ready<Result<Response<Full<Bytes>>, Infallible>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        match self {
            Pool::Saturated(s) => Service::<Request<B>>::poll_ready(s, cx),
            Pool::Ready(_) => Poll::Ready(Ok(())),
        }
    }

    fn call(&mut self, request: Request<B>) -> Self::Future {
        match self {
            Pool::Saturated(s) => s.call(request),
            Pool::Ready(name) => ready(Ok(Response::new(Full::new(Bytes::from_static(
                name.as_bytes(),
            ))))),
        }
    }
}

#[tokio::test]
async fn a_saturated_pool_does_not_hold_back_the_others() {
    let rules = RuleTable::from_yaml(
        "rules:\n  - name: a\n    match: { model: { exact: a } }\n    pool: busy\n  - name: b\n    match: { model: { exact: b } }\n    pool: free\n",
    )
    .unwrap();
    let router = PoolRouter::new()
        .pool("busy", Pool::Saturated(Saturated))
        .pool("free", Pool::Ready("free"));
    let mut service = tower::Layer::layer(&ModelRoutingLayer::new().rules(rules), router);

    let busy = ServiceExt::<Request<Full<Bytes>>>::ready(&mut service)
        .await
        .unwrap()
        .call(post(Full::new(Bytes::from_static(br#"{"model":"a"}"#))));
    let free = ServiceExt::<Request<Full<Bytes>>>::ready(&mut service)
        .await
        .unwrap()
        .call(post(Full::new(Bytes::from_static(br#"{"model":"b"}"#))));
    let response = free.await.unwrap();
    assert_eq!(
        response.into_body().collect().await.unwrap().to_bytes(),
        "free"
    );
    // The busy pool's request is still waiting for its pool to be ready.
    let waiting = tokio::time::timeout(std::time::Duration::from_millis(50), busy).await;
    assert!(waiting.is_err());
}

#[tokio::test]
async fn unknown_pools_and_unrouted_requests_are_answered() {
    let rules = RuleTable::from_yaml(
        "rules:\n  - name: a\n    match: { model: { exact: a } }\n    pool: elsewhere\n",
    )
    .unwrap();
    let router = PoolRouter::new().pool("free", Pool::Ready("free"));
    let service = tower::Layer::layer(&ModelRoutingLayer::new().rules(rules), router);
    let response = service
        .clone()
        .oneshot(post(Full::new(Bytes::from_static(br#"{"model":"a"}"#))))
        .await
        .unwrap();
    assert_eq!(response.status(), 503);
    let response = service
        .oneshot(post(Full::new(Bytes::from_static(br#"{"messages":[]}"#))))
        .await
        .unwrap();
    assert_eq!(response.status(), 404);

    let router = PoolRouter::new().fallback(Pool::Ready("fallback"));
    let response = tower::Layer::layer(&ModelRoutingLayer::new(), router)
        .oneshot(post(Full::new(Bytes::from_static(br#"{"messages":[]}"#))))
        .await
        .unwrap();
    assert_eq!(
        response.into_body().collect().await.unwrap().to_bytes(),
        "fallback"
    );
}

#[tokio::test]
async fn shared_rules_take_effect_on_the_next_request() {
    let table = |pool: &str| {
        RuleTable::from_yaml(&format!(
            "rules:\n  - name: m\n    match: {{ model: {{ exact: m }} }}\n    pool: {pool}\n"
        ))
        .unwrap()
    };
    let shared = bbr_core::rules::SharedRules::new(table("first"));
    let layer = ModelRoutingLayer::new().shared_rules(shared.clone());
    let body = || post(Full::new(Bytes::from_static(br#"{"model":"m"}"#)));
    let (_, seen) = run(layer.clone(), body()).await;
    let pool = seen
        .lock()
        .unwrap()
        .decision
        .as_ref()
        .and_then(|d| d.pool().map(str::to_owned));
    assert_eq!(pool.as_deref(), Some("first"));
    shared.replace(table("second"));
    let (_, seen) = run(layer, body()).await;
    let pool = seen
        .lock()
        .unwrap()
        .decision
        .as_ref()
        .and_then(|d| d.pool().map(str::to_owned));
    assert_eq!(pool.as_deref(), Some("second"));
}

#[tokio::test]
async fn multipart_bodies_are_routed_on_their_model_field() {
    let body = "--XyZ\r\nContent-Disposition: form-data; name=\"file\"; filename=\"a.wav\"\r\nContent-Type: audio/wav\r\n\r\nRIFF....\r\n--XyZ\r\nContent-Disposition: form-data; name=\"model\"\r\n\r\nwhisper-1\r\n--XyZ--\r\n";
    let whole = Bytes::from_static(body.as_bytes());
    let parts: Vec<Bytes> = (0..whole.len())
        .step_by(7)
        .map(|i| whole.slice(i..(i + 7).min(whole.len())))
        .collect();
    let request = Request::post("/v1/audio/transcriptions")
        .header("content-type", "multipart/form-data; boundary=XyZ")
        .body(chunks(&parts, None))
        .unwrap();
    let (status, seen) = run(ModelRoutingLayer::new(), request).await;
    assert_eq!(status, 200);
    let seen = seen.lock().unwrap();
    assert_eq!(seen.decision.as_ref().unwrap().model(), Some("whisper-1"));
    assert_eq!(seen.headers["x-gateway-model-name"], "whisper-1");
    assert_eq!(seen.data.concat(), body.as_bytes());
}

#[tokio::test]
async fn unsupported_content_types_are_refused_or_passed_as_configured() {
    let request = || {
        Request::post("/v1/chat/completions")
            .header("content-type", "text/plain")
            .body(Full::new(Bytes::from_static(br#"{"model":"m"}"#)))
            .unwrap()
    };
    let (status, _) = run(ModelRoutingLayer::new(), request()).await;
    assert_eq!(status, 415);
    let policy = FailurePolicy::new().on(
        ErrorKind::UnsupportedContentType,
        FailureAction::PassThrough,
    );
    let (status, seen) = run(ModelRoutingLayer::new().failure_policy(policy), request()).await;
    assert_eq!(status, 200);
    let seen = seen.lock().unwrap();
    let decision = seen.decision.as_ref().unwrap();
    assert_eq!(
        decision.failed_open().map(|e| e.kind()),
        Some(ErrorKind::UnsupportedContentType)
    );
    assert!(!seen.headers.contains_key("x-gateway-model-name"));
    assert_eq!(seen.data.concat(), br#"{"model":"m"}"#);
}

#[tokio::test]
async fn the_request_id_keeps_the_weighted_choice_stable() {
    let rules = RuleTable::from_yaml(
        "rules: [{name: ab, match: {model: {exact: m}}, \
         targets: [{model: a, weight: 1}, {model: b, weight: 1}]}]",
    )
    .unwrap();
    let layer = ModelRoutingLayer::new().rules(rules);
    let body = r#"{"model":"m","messages":[]}"#;
    let upstream = |id: Option<String>| {
        let layer = layer.clone();
        async move {
            let mut request = post(Full::new(Bytes::from(body)));
            if let Some(id) = id {
                request
                    .headers_mut()
                    .insert("x-request-id", id.parse().unwrap());
            }
            let (_, seen) = run(layer, request).await;
            let seen = seen.lock().unwrap();
            seen.decision
                .as_ref()
                .unwrap()
                .upstream_model()
                .unwrap()
                .to_owned()
        }
    };
    // The same id, the same target, every time.
    let first = upstream(Some("req-42".into())).await;
    for _ in 0..20 {
        assert_eq!(upstream(Some("req-42".into())).await, first);
    }
    // Across ids (and without one) both targets are chosen.
    let mut seen = std::collections::HashSet::new();
    for n in 0..64 {
        seen.insert(upstream(Some(format!("req-{n}"))).await);
        seen.insert(upstream(None).await);
    }
    assert_eq!(seen.len(), 2, "{seen:?}");
}

#[tokio::test]
async fn an_empty_body_passes_unrouted_in_every_framing() {
    // Empty with a known length, and empty in a chunked body (one empty
    // frame then the end): no model to route on, never invalid JSON.
    let closed = FailurePolicy::new().on_missing_model(FailureAction::Reject);
    for layer in [
        ModelRoutingLayer::new(),
        ModelRoutingLayer::new().failure_policy(closed),
    ] {
        let (status, seen) = run(layer.clone(), post(Full::new(Bytes::new()))).await;
        assert_eq!(status, 200);
        let decision = seen.lock().unwrap().decision.clone().unwrap();
        assert!(decision.route().is_none() && decision.failed_open().is_none());
        let (status, seen) = run(layer, post(chunks(&[Bytes::new()], None))).await;
        assert_eq!(status, 200);
        assert!(
            seen.lock()
                .unwrap()
                .decision
                .clone()
                .unwrap()
                .pool()
                .is_none()
        );
    }
}

#[tokio::test]
async fn the_headers_bbr_writes_are_stripped_and_the_clients_own_kept() {
    for body in [&br#"{"model":"a"}"#[..], br#"{"messages":[]}"#, b""] {
        let request = Request::post("/v1/chat/completions")
            .header("content-type", "application/json")
            .header("X-Gateway-Model-Name", "spoofed")
            .header("x-gateway-base-model-name", "spoofed")
            // Read by the endpoint picker from the client: they reach the pool.
            .header("x-gateway-inference-objective", "chatbot-objective")
            .header("x-gateway-inference-fairness-id", "tenant-a")
            .header("x-other", "kept")
            .body(Full::new(Bytes::from_static(body)))
            .unwrap();
        let (status, seen) = run(ModelRoutingLayer::new(), request).await;
        assert_eq!(status, 200);
        let headers = seen.lock().unwrap().headers.clone();
        assert_ne!(
            headers.get("x-gateway-model-name").map(|v| v.as_bytes()),
            Some(&b"spoofed"[..])
        );
        assert!(headers.get("x-gateway-base-model-name").is_none());
        assert_eq!(
            headers["x-gateway-inference-objective"],
            "chatbot-objective"
        );
        assert_eq!(headers["x-gateway-inference-fairness-id"], "tenant-a");
        assert_eq!(headers["x-other"], "kept");
    }
    // More names and prefixes on request.
    let request = Request::post("/v1/chat/completions")
        .header("content-type", "application/json")
        .header("x-gateway-destination-endpoint", "10.0.0.1:8000")
        .header("x-internal-user", "u")
        .header("x-gateway-inference-objective", "o")
        .body(Full::new(Bytes::from_static(br#"{"model":"a"}"#)))
        .unwrap();
    let decider = bbr_core::Decider::new()
        .with_stripped_headers(["x-gateway-destination-endpoint"])
        .with_reserved_prefixes(["x-internal-"]);
    let (_, seen) = run(ModelRoutingLayer::new().decider(decider), request).await;
    let headers = seen.lock().unwrap().headers.clone();
    assert!(headers.get("x-gateway-destination-endpoint").is_none());
    assert!(headers.get("x-internal-user").is_none());
    assert_eq!(headers["x-gateway-inference-objective"], "o");
}

#[tokio::test]
async fn a_fail_open_kind_found_after_routing_still_ends_the_body() {
    // The request went out with routing headers: letting the rest through
    // would forward a body routed on a model it then contradicts.
    let parts = [
        Bytes::from_static(br#"{"model":"a","messages":["#),
        Bytes::from_static(br#""x"]}}"#),
    ];
    let open = FailurePolicy::new().on(ErrorKind::InvalidJson, FailureAction::PassThrough);
    let layer = ModelRoutingLayer::new().failure_policy(open);
    let (status, seen) = run(layer, post(chunks(&parts, None))).await;
    assert_eq!(status, 400);
    let seen = seen.lock().unwrap();
    assert_eq!(seen.error, Some(ErrorKind::InvalidJson));
    assert_eq!(seen.data, parts[..1]);
}

#[tokio::test]
async fn body_fields_are_copied_into_headers() {
    let layer = ModelRoutingLayer::new().body_field("stream=x-llm-stream".parse().unwrap());
    let request = Request::post("/v1/chat/completions")
        .header("content-type", "application/json")
        .header("x-llm-stream", "spoofed")
        .body(Full::new(Bytes::from_static(
            br#"{"model":"a","stream":true}"#,
        )))
        .unwrap();
    let (status, seen) = run(layer.clone(), request).await;
    assert_eq!(status, 200);
    assert_eq!(seen.lock().unwrap().headers["x-llm-stream"], "true");
    let (_, seen) = run(
        layer,
        post(Full::new(Bytes::from_static(br#"{"model":"a"}"#))),
    )
    .await;
    assert!(seen.lock().unwrap().headers.get("x-llm-stream").is_none());
}

#[tokio::test]
#[should_panic(expected = "polled after completion")]
async fn polling_a_completed_response_future_panics_instead_of_inventing_an_answer() {
    use std::future::Future;
    let inner = service_fn(|_: Request<RoutedBody<Full<Bytes>>>| async {
        Ok::<_, Infallible>(Response::new(Full::new(Bytes::new())))
    });
    let mut service = tower::Layer::layer(&ModelRoutingLayer::new(), inner);
    // Refused at once (not JSON): the future answers by itself.
    let request = Request::post("/v1/chat/completions")
        .header("content-type", "text/plain")
        .body(Full::new(Bytes::from_static(b"x")))
        .unwrap();
    let mut future = std::pin::pin!(service.call(request));
    let waker = std::task::Waker::noop();
    let mut cx = Context::from_waker(waker);
    let Poll::Ready(Ok(response)) = future.as_mut().poll(&mut cx) else {
        panic!("not answered at once")
    };
    assert_eq!(response.status(), 415);
    let _ = future.as_mut().poll(&mut cx);
}

#[tokio::test]
#[should_panic(expected = "polled after completion")]
async fn polling_a_completed_router_future_panics() {
    use std::future::Future;
    let mut router: PoolRouter<Pool> = PoolRouter::new();
    let mut future = std::pin::pin!(router.call(post(Full::new(Bytes::new()))));
    let mut cx = Context::from_waker(std::task::Waker::noop());
    let Poll::Ready(Ok(response)) = future.as_mut().poll(&mut cx) else {
        panic!("not answered at once")
    };
    assert_eq!(response.status(), 404);
    let _ = future.as_mut().poll(&mut cx);
}

/// A body whose chunks the test sends one by one, then ends.
type Sender = tokio::sync::mpsc::UnboundedSender<Result<Frame<Bytes>, Infallible>>;
type ChannelBody =
    StreamBody<tokio_stream::wrappers::UnboundedReceiverStream<Result<Frame<Bytes>, Infallible>>>;

fn channel_body() -> (Sender, ChannelBody) {
    let (tx, rx) = tokio::sync::mpsc::unbounded_channel();
    let stream = tokio_stream::wrappers::UnboundedReceiverStream::new(rx);
    (tx, StreamBody::new(stream))
}

#[tokio::test]
async fn the_hold_budget_bounds_what_all_requests_hold_together() {
    let budget = crate::HoldBudget::new(1000);
    let layer = ModelRoutingLayer::new().hold_budget(budget.clone());
    let inner = service_fn(|request: Request<RoutedBody<_>>| async move {
        let _ = request.into_body().collect().await;
        Ok::<_, Infallible>(Response::new(Full::new(Bytes::from_static(b"ok"))))
    });
    let service = tower::Layer::layer(&layer, inner);

    // A first request holds 600 bytes of prompt, no model yet.
    let (first_tx, first_body) = channel_body();
    let prompt = format!(r#"{{"messages":["{}"],"#, "x".repeat(583));
    assert_eq!(prompt.len(), 600);
    first_tx.send(Ok(Frame::data(Bytes::from(prompt)))).unwrap();
    let first = tokio::spawn(service.clone().oneshot(post(first_body)));
    for _ in 0..100 {
        if budget.in_use() > 0 {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(10)).await;
    }
    assert_eq!(budget.in_use(), 600);

    // A second one that would hold 600 more is refused: 503, Retry-After.
    let second = format!(r#"{{"messages":["{}"],"model":"a"}}"#, "y".repeat(600));
    let (tx, body) = channel_body();
    tx.send(Ok(Frame::data(Bytes::from(second)))).unwrap();
    drop(tx);
    let response = service.clone().oneshot(post(body)).await.unwrap();
    assert_eq!(response.status(), 503);
    assert_eq!(response.headers()["retry-after"], "1");
    let body = response.into_body().collect().await.unwrap().to_bytes();
    let value: serde_json::Value = serde_json::from_slice(&body).unwrap();
    assert_eq!(value["error"]["code"], "overloaded");
    assert_eq!(budget.refused(), 1);

    // Once the first is decided and its body read, its bytes leave the budget.
    first_tx
        .send(Ok(Frame::data(Bytes::from_static(br#""model":"a"}"#))))
        .unwrap();
    drop(first_tx);
    assert_eq!(first.await.unwrap().unwrap().status(), 200);
    assert_eq!(budget.in_use(), 0);

    // A request dropped while holding gives its bytes back too.
    let (tx, body) = channel_body();
    tx.send(Ok(Frame::data(Bytes::from_static(br#"{"messages":[1,"#))))
        .unwrap();
    let pending = tokio::spawn(service.clone().oneshot(post(body)));
    tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    assert!(budget.in_use() > 0);
    pending.abort();
    let _ = pending.await;
    assert_eq!(budget.in_use(), 0);
    drop(tx);
}

#[tokio::test]
async fn held_chunks_count_in_the_budget_until_the_inner_service_takes_them() {
    let budget = crate::HoldBudget::new(1000);
    let layer = ModelRoutingLayer::new().hold_budget(budget.clone());
    let (go, wait) = tokio::sync::oneshot::channel::<()>();
    let wait = std::sync::Arc::new(tokio::sync::Mutex::new(Some(wait)));
    let inner = service_fn(move |request: Request<RoutedBody<_>>| {
        let wait = std::sync::Arc::clone(&wait);
        async move {
            // A slow upstream: the body is read only once told to.
            if let Some(wait) = wait.lock().await.take() {
                let _ = wait.await;
            }
            let _ = request.into_body().collect().await;
            Ok::<_, Infallible>(Response::new(Full::new(Bytes::from_static(b"ok"))))
        }
    });
    let service = tower::Layer::layer(&layer, inner);
    let body = format!(r#"{{"messages":["{}"],"model":"a"}}"#, "x".repeat(500));
    let (tx, request_body) = channel_body();
    tx.send(Ok(Frame::data(Bytes::from(body.clone())))).unwrap();
    drop(tx);
    let call = tokio::spawn(service.oneshot(post(request_body)));
    for _ in 0..100 {
        if budget.in_use() > 0 {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(10)).await;
    }
    // Decided, but not yet taken by the inner service: still counted.
    tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    assert_eq!(budget.in_use(), body.len() as u64);
    go.send(()).unwrap();
    assert_eq!(call.await.unwrap().unwrap().status(), 200);
    assert_eq!(budget.in_use(), 0);
}

#[tokio::test(start_paused = true)]
async fn a_body_that_stops_before_the_model_is_cut_off() {
    let layer = ModelRoutingLayer::new().hold_idle_timeout(Some(std::time::Duration::from_secs(5)));
    let (tx, body) = channel_body();
    tx.send(Ok(Frame::data(Bytes::from_static(br#"{"messages":["#))))
        .unwrap();
    // Data keeps the request alive: 3 s apart, under the timeout …
    let feeder = tokio::spawn({
        let tx = tx.clone();
        async move {
            for _ in 0..3 {
                tokio::time::sleep(std::time::Duration::from_secs(3)).await;
                let _ = tx.send(Ok(Frame::data(Bytes::from_static(b"1,"))));
            }
        }
    });
    let started = tokio::time::Instant::now();
    let (status, seen) = run(layer, post(body)).await;
    // … then nothing: cut off 5 s after the last chunk, never forwarded.
    assert_eq!(status, 408);
    assert!(started.elapsed() >= std::time::Duration::from_secs(14));
    assert!(seen.lock().unwrap().decision.is_none());
    feeder.await.unwrap();
    drop(tx);
}

#[tokio::test]
async fn the_model_list_is_served_from_the_table_when_asked() {
    let rules = RuleTable::from_yaml(
        "rules:\n  - {name: c, match: {model: {exact: chatbot}}, pool: gemma3}\n  - {name: r, match: {model: {exact: recommender}}, pool: deepseek-r1}\ndefault: {action: reject}\n",
    )
    .unwrap();
    let get = || {
        Request::get("/v1/models")
            .body(Full::new(Bytes::new()))
            .unwrap()
    };
    let layer = ModelRoutingLayer::new().rules(rules).serve_models(true);
    let (status, seen) = run(layer.clone(), get()).await;
    assert_eq!(status, 200);
    assert!(
        seen.lock().unwrap().decision.is_none(),
        "answered by the layer"
    );
    let inner = service_fn(|_: Request<RoutedBody<Full<Bytes>>>| async {
        Ok::<_, Infallible>(Response::new(Full::new(Bytes::new())))
    });
    let response = tower::Layer::layer(&layer, inner)
        .oneshot(get())
        .await
        .unwrap();
    assert_eq!(response.headers()["content-type"], "application/json");
    let body = response.into_body().collect().await.unwrap().to_bytes();
    let list: serde_json::Value = serde_json::from_slice(&body).unwrap();
    let ids: Vec<&str> = list["data"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m["id"].as_str().unwrap())
        .collect();
    assert_eq!(ids, ["chatbot", "recommender"]);
    assert_eq!(list["data"][1]["owned_by"], "deepseek-r1");

    // Off by default: the inner service answers.
    let (status, seen) = run(ModelRoutingLayer::new(), get()).await;
    assert_eq!(status, 200);
    assert!(seen.lock().unwrap().decision.is_some());
}

mod compressed {
    //! Compressed bodies: decoded for the scan, forwarded as they came.

    use std::{
        io::Write,
        sync::atomic::{AtomicU64, Ordering},
    };

    use super::*;

    const BODY: &[u8] = br#"{"messages":[{"role":"user","content":"What is the color of the sky?"}],"model":"chat","max_tokens":100}"#;
    const RULES: &str = "rules: [{name: c, match: {model: {exact: chat}}, pool: gemma3, targets: [{model: gemma-3, weight: 1}]}]";

    fn encode(encoding: &str, body: &[u8]) -> Vec<u8> {
        match encoding {
            "gzip" => {
                let mut e = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
                e.write_all(body).unwrap();
                e.finish().unwrap()
            }
            "br" => {
                let mut e = brotli::CompressorWriter::new(Vec::new(), 4096, 5, 22);
                e.write_all(body).unwrap();
                e.into_inner()
            }
            "zstd" => zstd::stream::encode_all(body, 3).unwrap(),
            other => panic!("{other}"),
        }
    }

    fn post_encoded<B>(encoding: &str, length: Option<usize>, body: B) -> Request<B> {
        let mut request = Request::post("/v1/chat/completions")
            .header("content-type", "application/json")
            .header("content-encoding", encoding);
        if let Some(length) = length {
            request = request.header("content-length", length);
        }
        request.body(body).unwrap()
    }

    #[tokio::test]
    async fn compressed_bodies_route_and_reach_the_service_unchanged() {
        for encoding in ["gzip", "br", "zstd"] {
            let compressed = Bytes::from(encode(encoding, BODY));
            let parts: Vec<Bytes> = compressed.chunks(7).map(Bytes::copy_from_slice).collect();
            let layer = ModelRoutingLayer::new().rules(RuleTable::from_yaml(RULES).unwrap());
            let request = post_encoded(encoding, Some(compressed.len()), chunks(&parts, None));
            let (status, seen) = run(layer, request).await;
            assert_eq!(status, 200, "{encoding}");
            let seen = seen.lock().unwrap();
            // Routed on the model inside, but not rewritten: the bytes, the
            // encoding and the length are the client's.
            assert_eq!(seen.data.concat(), compressed, "{encoding}");
            assert_eq!(seen.error, None);
            assert_eq!(seen.headers["x-gateway-model-name"], "chat");
            assert_eq!(seen.headers["x-gateway-inference-pool"], "gemma3");
            assert_eq!(seen.headers["content-encoding"], encoding);
            assert_eq!(
                seen.headers["content-length"],
                compressed.len().to_string().as_str()
            );
            assert_eq!(seen.decision.as_ref().unwrap().model(), Some("chat"));
        }

        // Large chunks are handed on as they are, not copied.
        let text: String = (0..40_000u32)
            .map(|i| format!("{} ", i.wrapping_mul(2_654_435_761)))
            .collect();
        let body = format!(r#"{{"model":"chat","messages":["{text}"]}}"#);
        let compressed = Bytes::from(encode("gzip", body.as_bytes()));
        let parts: Vec<Bytes> = [0, 1500, 3000, compressed.len()]
            .windows(2)
            .map(|w| compressed.slice(w[0]..w[1]))
            .collect();
        let request = post_encoded("gzip", None, chunks(&parts, None));
        let (status, seen) = run(ModelRoutingLayer::new(), request).await;
        assert_eq!(status, 200);
        let seen = seen.lock().unwrap();
        assert_eq!(seen.data.len(), parts.len());
        for (sent, got) in parts.iter().zip(&seen.data) {
            assert_eq!(sent.as_ptr(), got.as_ptr(), "a chunk was copied");
        }
    }

    /// A gzip body of `head` then `total` bytes of `fill`, compressed a MiB
    /// at a time as it is read, sent 64 bytes first then 16 KiB a frame;
    /// `pulled` counts the compressed bytes read.
    fn bomb_body(
        head: &'static [u8],
        fill: u8,
        total: u64,
        pulled: Arc<AtomicU64>,
    ) -> impl Body<Data = Bytes, Error = Infallible> + Send + 'static {
        let mut encoder = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::best());
        encoder.write_all(head).unwrap();
        let block = vec![fill; 1 << 20];
        let mut written = 0u64;
        let mut frame_len = 64;
        let frames = std::iter::from_fn(move || {
            while encoder.get_ref().len() < frame_len && written < total {
                encoder.write_all(&block).unwrap();
                written += block.len() as u64;
            }
            let out = encoder.get_mut();
            let out: Vec<u8> = out.drain(..frame_len.min(out.len())).collect();
            frame_len = 16 << 10;
            // Never finished: the whole stream is never wanted.
            (!out.is_empty()).then(|| {
                pulled.fetch_add(out.len() as u64, Ordering::Relaxed);
                Ok(Frame::data(Bytes::from(out)))
            })
        });
        StreamBody::new(futures_util::stream::iter(frames))
    }

    #[tokio::test]
    async fn a_bomb_before_the_decision_is_413_and_never_reaches_the_service() {
        let pulled = Arc::new(AtomicU64::new(0));
        // 10 GiB of spaces after `{`: the model never comes.
        let body = bomb_body(b"{", b' ', 10 << 30, pulled.clone());
        let (status, seen) = run(ModelRoutingLayer::new(), post_encoded("gzip", None, body)).await;
        assert_eq!(status, 413);
        assert!(
            seen.lock().unwrap().decision.is_none(),
            "the service was called"
        );
        // Refused within the second frame, at the expansion cap (the body
        // limit would have read on).
        let pulled = pulled.load(Ordering::Relaxed);
        assert!(pulled <= 64 + (16 << 10), "{pulled} compressed bytes read");
    }

    #[tokio::test]
    async fn a_bomb_after_the_decision_ends_the_body_with_413() {
        let pulled = Arc::new(AtomicU64::new(0));
        let body = bomb_body(
            br#"{"model":"chat","pad":""#,
            b'a',
            10 << 30,
            pulled.clone(),
        );
        let (status, seen) = run(ModelRoutingLayer::new(), post_encoded("gzip", None, body)).await;
        assert_eq!(status, 413);
        let seen = seen.lock().unwrap();
        assert_eq!(seen.decision.as_ref().unwrap().model(), Some("chat"));
        assert_eq!(seen.error, Some(ErrorKind::TooLarge));
        assert!(pulled.load(Ordering::Relaxed) < 200 << 10);
    }

    #[tokio::test]
    async fn charsets_and_encodings_bbr_does_not_read_are_415() {
        let gz = Bytes::from(encode("gzip", BODY));
        let requests = [
            Request::post("/")
                .header("content-type", "application/json; charset=utf-16")
                .body(Full::new(Bytes::from_static(BODY)))
                .unwrap(),
            post_encoded("compress", None, Full::new(gz.clone())),
            // Two lines make a list of two codings.
            Request::post("/")
                .header("content-encoding", "gzip")
                .header("content-encoding", "br")
                .body(Full::new(gz.clone()))
                .unwrap(),
        ];
        for request in requests {
            let (status, seen) = run(ModelRoutingLayer::new(), request).await;
            assert_eq!(status, 415);
            assert!(seen.lock().unwrap().decision.is_none());
        }
        // Decompression off: refused, unless the failure policy lets it pass.
        let off = bbr_core::ExtractorConfig::new().with_decompression(false);
        let layer = ModelRoutingLayer::new().extractor_config(off.clone());
        let (status, _) = run(layer, post_encoded("gzip", None, Full::new(gz.clone()))).await;
        assert_eq!(status, 415);
        let open = FailurePolicy::new().on(
            ErrorKind::UnsupportedContentType,
            FailureAction::PassThrough,
        );
        let layer = ModelRoutingLayer::new()
            .extractor_config(off)
            .failure_policy(open);
        let (status, seen) = run(layer, post_encoded("gzip", None, Full::new(gz.clone()))).await;
        assert_eq!(status, 200);
        let seen = seen.lock().unwrap();
        assert_eq!(seen.data.concat(), gz);
        assert!(!seen.headers.contains_key("x-gateway-model-name"));
    }

    #[tokio::test]
    async fn a_corrupt_stream_is_400_invalid_encoding() {
        let mut gz = encode("gzip", BODY);
        gz.truncate(gz.len() - 4);
        let (status, seen) = run(
            ModelRoutingLayer::new(),
            post_encoded("gzip", None, Full::new(Bytes::from(gz))),
        )
        .await;
        assert_eq!(status, 400);
        assert!(seen.lock().unwrap().decision.is_none());
    }
}
