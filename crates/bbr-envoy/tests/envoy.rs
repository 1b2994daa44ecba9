//! End to end through a real Envoy 1.40 that loads `libbbr_envoy.so`:
//! client → Envoy (bbr as a dynamic module filter) → Envoy's router → the
//! simulated pool the model names. The same cases as the ext_proc server's.

mod support;

use std::{net::SocketAddr, path::Path, time::Duration};

use support::{
    envoy::{self, Envoy, Ports},
    http::{self, Reply},
    module_dir,
    upstream::{Pool, body_hash},
};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

const CHAT: &str = r#"{"model":"chatbot","messages":[{"role":"user","content":"What is the color of the sky?"}],"max_tokens":100,"temperature":0}"#;
const COMPLETION: &str = r#"{"model":"recommender","prompt":"Give me restaurant recommendations in Paris","max_tokens":100,"temperature":0}"#;

/// The two pools and Envoy with the module.
struct Scene {
    gemma3: Pool,
    deepseek: Pool,
    envoy: Envoy,
}

/// The demo's rules file.
fn demo_rules() -> String {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../../examples/config/gateway.yaml")
        .canonicalize()
        .unwrap()
        .display()
        .to_string()
}

/// Starts the pools and Envoy with `examples/envoy/module.yaml`, the demo's
/// rules, and `edit` applied to the configuration. `None` when Envoy cannot
/// be installed on this machine (the test is then skipped, saying so).
async fn scene_with(edit: impl FnOnce(String) -> String) -> Option<Scene> {
    if let Err(e) = envoy::try_binary() {
        eprintln!("SKIPPED: no Envoy to run against: {e}");
        return None;
    }
    let gemma3 = Pool::start("gemma3").await;
    let deepseek = Pool::start("deepseek-r1").await;
    let ports = Ports {
        bbr: 0,
        gemma3: gemma3.addr.port(),
        deepseek: deepseek.addr.port(),
    };
    let config = envoy::config("module.yaml", &ports).replace("${RULES_FILE}", &demo_rules());
    let dir = module_dir();
    let envoy = Envoy::start_with_env(
        &edit(config),
        &[("ENVOY_DYNAMIC_MODULES_SEARCH_PATH", dir.as_path())],
    )
    .await;
    Some(Scene {
        gemma3,
        deepseek,
        envoy,
    })
}

async fn scene() -> Option<Scene> {
    scene_with(|config| config).await
}

impl Scene {
    async fn post(
        &self,
        path: &str,
        headers: &[(&str, &str)],
        body: impl Into<bytes::Bytes>,
    ) -> Reply {
        http::post(self.envoy.addr(), path, headers, body).await
    }

    fn seen(&self) -> usize {
        self.gemma3.seen().len() + self.deepseek.seen().len()
    }
}

/// Sends `parts` as the chunks of one chunked request body, each written
/// (and flushed) on its own after `pause`, and reads the whole answer.
async fn post_chunked(addr: SocketAddr, parts: &[&[u8]], pause: Duration) -> (u16, Vec<u8>) {
    let mut stream = tokio::net::TcpStream::connect(addr).await.unwrap();
    stream.set_nodelay(true).unwrap();
    let head = "POST /v1/chat/completions HTTP/1.1\r\nhost: localhost\r\ncontent-type: application/json\r\ntransfer-encoding: chunked\r\nconnection: close\r\n\r\n";
    stream.write_all(head.as_bytes()).await.unwrap();
    for part in parts {
        tokio::time::sleep(pause).await;
        let mut chunk = format!("{:x}\r\n", part.len()).into_bytes();
        chunk.extend_from_slice(part);
        chunk.extend_from_slice(b"\r\n");
        // The server may have answered and closed already: a refused write
        // is not the test's concern, the answer is.
        if stream.write_all(&chunk).await.is_err() {
            break;
        }
        let _ = stream.flush().await;
    }
    let _ = stream.write_all(b"0\r\n\r\n").await;
    let mut answer = Vec::new();
    tokio::time::timeout(support::WAIT, stream.read_to_end(&mut answer))
        .await
        .expect("an answer in time")
        .ok();
    let text = String::from_utf8_lossy(&answer);
    let status = text
        .split(' ')
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| panic!("not an HTTP answer: {text:?}"));
    let body = match text.find("\r\n\r\n") {
        Some(i) => answer[i + 4..].to_vec(),
        None => Vec::new(),
    };
    (status, body)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn routes_demo_requests_strips_spoofs_and_rejects_bad_bodies() {
    let Some(s) = scene().await else { return };

    // The demo's two requests reach the pool their model names, unchanged.
    let r = s.post("/v1/chat/completions", &[], CHAT).await;
    assert_eq!(r.status, 200, "{r:?}");
    assert_eq!(r.header("x-inference-pool"), Some("gemma3"));
    assert_eq!(r.json()["model"], "chatbot");
    let seen = s.gemma3.seen();
    let last = seen.last().unwrap();
    assert_eq!(last.headers.get("x-gateway-model-name").unwrap(), "chatbot");
    assert_eq!(
        last.headers.get("x-gateway-inference-pool").unwrap(),
        "gemma3"
    );
    assert_eq!(last.body_hash, body_hash(CHAT.as_bytes()));
    let r = s.post("/v1/completions", &[], COMPLETION).await;
    assert_eq!(r.status, 200, "{r:?}");
    assert_eq!(r.header("x-inference-pool"), Some("deepseek-r1"));
    let seen = s.deepseek.seen();
    assert_eq!(seen.len(), 1);
    assert_eq!(seen[0].path, "/v1/completions");
    assert_eq!(seen[0].body_hash, body_hash(COMPLETION.as_bytes()));

    // A client naming the other pool in the routing header is routed on its
    // body; the headers the endpoint picker reads from the client go on.
    let r = s
        .post(
            "/v1/chat/completions",
            &[
                ("X-Gateway-Model-Name", "recommender"),
                ("x-gateway-base-model-name", "evil"),
                ("x-gateway-inference-objective", "chatbot-objective"),
                ("x-gateway-inference-fairness-id", "tenant-a"),
            ],
            CHAT,
        )
        .await;
    assert_eq!(r.header("x-inference-pool"), Some("gemma3"), "{r:?}");
    assert_eq!(s.deepseek.seen().len(), 1);
    let seen = s.gemma3.seen();
    let last = seen.last().unwrap();
    let models: Vec<_> = last
        .headers
        .get_all("x-gateway-model-name")
        .iter()
        .collect();
    assert_eq!(models, ["chatbot"]);
    assert!(last.headers.get("x-gateway-base-model-name").is_none());
    assert_eq!(
        last.headers.get("x-gateway-inference-objective").unwrap(),
        "chatbot-objective"
    );
    assert_eq!(
        last.headers.get("x-gateway-inference-fairness-id").unwrap(),
        "tenant-a"
    );

    // A request without a body goes on at once: the fallback route answers.
    let r = http::get(s.envoy.addr(), "/v1/models").await.unwrap();
    assert_eq!(r.status, 404, "{r:?}");
    assert_eq!(&r.body[..], b"no route for this model\n");

    // Invalid bodies get the error contract's status and JSON, and never
    // reach a pool.
    let before = s.seen();
    for (headers, body, status, code) in [
        (
            &[][..],
            r#"{"model":123,"prompt":"x"}"#,
            400,
            "model_not_string",
        ),
        (
            &[],
            r#"{"model":"chatbot","prompt":"x",}"#,
            400,
            "invalid_json",
        ),
        (
            &[],
            r#"{"model":"chatbot","model":"recommender"}"#,
            400,
            "duplicate_model",
        ),
        (
            &[],
            r#"{"model":"chat\r\nbot","prompt":"x"}"#,
            400,
            "invalid_model",
        ),
        (
            &[],
            r#"{"model":"gpt-4","prompt":"x"}"#,
            404,
            "model_not_found",
        ),
        (
            &[("content-type", "text/plain")],
            "model=chatbot",
            415,
            "unsupported_content_type",
        ),
    ] {
        let r = s.post("/v1/completions", headers, body.to_owned()).await;
        assert_eq!(r.status, status, "{body}: {r:?}");
        assert_eq!(r.header("content-type"), Some("application/json"), "{r:?}");
        let json = r.json();
        assert_eq!(json["error"]["code"], code, "{json}");
        assert_eq!(json["error"]["type"], "invalid_request_error");
    }
    assert_eq!(s.seen(), before, "a rejected body reached a pool");

    // A body without a model, or with an empty one, passes unrouted:
    // Envoy's fallback route answers.
    for body in [r#"{"prompt":"x"}"#, r#"{"model":"","prompt":"x"}"#] {
        let r = s.post("/v1/completions", &[], body).await;
        assert_eq!(r.status, 404, "{body}");
        assert_eq!(&r.body[..], b"no route for this model\n");
    }

    // Counted in Envoy's stats under the ext_proc server's names.
    let stats = http::get(s.envoy.admin, "/stats/prometheus").await.unwrap();
    let text = String::from_utf8_lossy(&stats.body);
    for line in [
        "envoy_dynamicmodulescustom_bbr_success_total{} 5",
        "envoy_dynamicmodulescustom_bbr_routed_total{} 3",
        "envoy_dynamicmodulescustom_bbr_model_not_in_body_total{} 1",
        "envoy_dynamicmodulescustom_bbr_model_not_parsed_total{} 2",
        r#"envoy_dynamicmodulescustom_bbr_rejected_total{reason="duplicate_model"} 1"#,
        r#"envoy_dynamicmodulescustom_bbr_rejected_total{reason="unsupported_content_type"} 1"#,
        r#"envoy_dynamicmodulescustom_bbr_route_matches_total{rule="chatbot",pool="gemma3"} 2"#,
        r#"envoy_dynamicmodulescustom_bbr_route_matches_total{rule="recommender",pool="deepseek-r1"} 1"#,
    ] {
        assert!(
            text.lines().any(|l| l == line),
            "{line} missing from\n{text}"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn routes_a_10_mib_body_with_the_model_last() {
    let Some(s) = scene().await else { return };
    let body = format!(
        r#"{{"messages":[{{"role":"user","content":"{}"}}],"model":"recommender","max_tokens":1}}"#,
        "y".repeat(10 << 20)
    );
    let r = s.post("/v1/chat/completions", &[], body.clone()).await;
    assert_eq!(r.status, 200, "{:?}", r.body);
    assert_eq!(r.header("x-inference-pool"), Some("deepseek-r1"));
    let seen = s.deepseek.seen();
    assert_eq!(seen[0].body_len, body.len());
    assert_eq!(seen[0].body_hash, body_hash(body.as_bytes()));
}

/// Envoy reads at most a few bytes at a time from the client (a tiny
/// connection buffer) and the client sends one byte per chunk: the module
/// sees the body in many small pieces and decides the same.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_body_in_one_byte_chunks_decides_the_same() {
    let Some(s) = scene_with(|config| {
        config.replace(
            "      filter_chains:",
            "      per_connection_buffer_limit_bytes: 1\n      filter_chains:",
        )
    })
    .await
    else {
        return;
    };
    let body = br#"{"messages":[{"role":"user","content":"a \"model\": in the text"}],"model":"recommender","max_tokens":1}"#;
    let parts: Vec<&[u8]> = body.chunks(1).collect();
    let (status, answer) = post_chunked(s.envoy.addr(), &parts, Duration::from_millis(2)).await;
    assert_eq!(status, 200, "{}", String::from_utf8_lossy(&answer));
    let seen = s.deepseek.seen();
    assert_eq!(seen.len(), 1, "{seen:?}");
    assert_eq!(seen[0].body_hash, body_hash(body));
    assert_eq!(
        seen[0].headers.get("x-gateway-model-name").unwrap(),
        "recommender"
    );

    // The same body with a duplicate, one byte at a time: refused.
    let dup = br#"{"model":"recommender","messages":[],"model":"chatbot"}"#;
    let parts: Vec<&[u8]> = dup.chunks(1).collect();
    let (status, answer) = post_chunked(s.envoy.addr(), &parts, Duration::from_millis(2)).await;
    assert_eq!(status, 400, "{}", String::from_utf8_lossy(&answer));
    let json: serde_json::Value = serde_json::from_slice(&answer).unwrap();
    assert_eq!(json["error"]["code"], "duplicate_model");
    assert!(
        s.deepseek
            .seen()
            .iter()
            .all(|x| x.body_hash != body_hash(dup))
    );
}

/// A second `model` arriving after the routing went out ends the request
/// with the error contract's 400; the pool never gets the whole body.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_duplicate_model_after_the_decision_cuts_the_request() {
    let Some(s) = scene().await else { return };
    let first = br#"{"model":"chatbot","messages":[{"role":"user","content":"hi"}],"#;
    let second = br#""model":"recommender"}"#;
    let whole = [&first[..], &second[..]].concat();
    let (status, answer) =
        post_chunked(s.envoy.addr(), &[first, second], Duration::from_millis(300)).await;
    assert_eq!(status, 400, "{}", String::from_utf8_lossy(&answer));
    let json: serde_json::Value = serde_json::from_slice(&answer).unwrap();
    assert_eq!(json["error"]["code"], "duplicate_model");
    assert!(
        s.gemma3
            .seen()
            .iter()
            .chain(s.deepseek.seen().iter())
            .all(|x| x.body_hash != body_hash(&whole)),
        "a pool got the whole body"
    );
    assert!(s.deepseek.seen().is_empty());
}

/// Every body of the fuzz corpus, over and over (10 000 requests), through
/// Envoy: each is answered, and Envoy still serves its admin interface.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hostile_bodies_from_the_fuzz_corpus_leave_envoy_serving() {
    let Some(s) = scene().await else { return };
    let corpus = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../fuzz/corpus");
    let mut bodies = Vec::new();
    for target in std::fs::read_dir(&corpus).unwrap() {
        for file in std::fs::read_dir(target.unwrap().path()).unwrap() {
            bodies.push(bytes::Bytes::from(
                std::fs::read(file.unwrap().path()).unwrap(),
            ));
        }
    }
    assert!(bodies.len() > 100, "the corpus is missing");
    let addr = s.envoy.addr();
    let per_worker = 10_000 / 4;
    let workers: Vec<_> = (0..4)
        .map(|w| {
            let bodies = bodies.clone();
            tokio::spawn(async move {
                let mut statuses = std::collections::BTreeMap::<u16, usize>::new();
                for i in 0..per_worker {
                    let body = bodies[(w * per_worker + i) % bodies.len()].clone();
                    let r = http::post(addr, "/v1/chat/completions", &[], body).await;
                    *statuses.entry(r.status).or_default() += 1;
                }
                statuses
            })
        })
        .collect();
    let mut total = 0;
    for w in workers {
        for (status, n) in w.await.unwrap() {
            assert!(
                matches!(status, 200 | 400 | 404 | 413 | 415),
                "unexpected status {status}"
            );
            total += n;
        }
    }
    assert_eq!(total, 10_000);
    let info = http::get(s.envoy.admin, "/server_info").await.unwrap();
    assert_eq!(info.status, 200);
    assert!(String::from_utf8_lossy(&info.body).contains("\"state\": \"LIVE\""));
}

/// A weighted target rewrites the model in the body the pool receives,
/// with a Content-Length that matches; the header keeps the client's model.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rewritten_model_reaches_the_pool() {
    let dir = std::env::temp_dir().join(format!("bbr-envoy-rewrite-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let rules = dir.join("rules.yaml");
    std::fs::write(
        &rules,
        "rules:\n  - name: chatbot\n    match: { model: { exact: chatbot } }\n    pool: gemma3\n    targets: [{ model: google/gemma-3-27b-it, weight: 1 }]\n",
    )
    .unwrap();
    let Some(s) = scene_with(|config| config.replace(&demo_rules(), rules.to_str().unwrap())).await
    else {
        return;
    };
    let sent = format!(
        r#"{{"messages":[{{"role":"user","content":"{}"}}],"model":"chatbot","max_tokens":1}}"#,
        "z".repeat(200_000)
    );
    let expected = sent.replace(r#""model":"chatbot""#, r#""model":"google/gemma-3-27b-it""#);
    let r = s.post("/v1/chat/completions", &[], sent).await;
    assert_eq!(r.status, 200, "{r:?}");
    assert_eq!(r.json()["model"], "google/gemma-3-27b-it");
    let seen = s.gemma3.seen();
    assert_eq!(seen[0].body_len, expected.len());
    assert_eq!(seen[0].body_hash, body_hash(expected.as_bytes()));
    assert_eq!(
        seen[0]
            .headers
            .get("content-length")
            .unwrap()
            .to_str()
            .unwrap(),
        expected.len().to_string()
    );
    assert_eq!(
        seen[0].headers.get("x-gateway-model-name").unwrap(),
        "chatbot"
    );
    let _ = std::fs::remove_dir_all(&dir);
}

/// A filter configuration the module refuses makes Envoy refuse the
/// listener, with bbr's reason in Envoy's log.
#[test]
fn a_bad_filter_config_is_refused_by_envoy_with_the_reason() {
    let Ok(bin) = envoy::try_binary() else {
        eprintln!("SKIPPED: no Envoy to run against");
        return;
    };
    let ports = Ports {
        bbr: 0,
        gemma3: 1,
        deepseek: 1,
    };
    let config = envoy::config("module.yaml", &ports)
        .replace(r#"{"rules_file": "${RULES_FILE}"}"#, r#"{"policy": "lax"}"#);
    assert!(config.contains("lax"), "the template changed");
    let dir = std::env::temp_dir().join(format!("bbr-envoy-refused-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join("envoy.yaml");
    std::fs::write(&path, config).unwrap();
    let out = std::process::Command::new(bin)
        .args(["--mode", "validate", "-l", "error", "-c"])
        .arg(&path)
        .env("ENVOY_DYNAMIC_MODULES_SEARCH_PATH", module_dir())
        .stdin(std::process::Stdio::null())
        .output()
        .unwrap();
    let log = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "{log}");
    assert!(
        log.contains(r#"bbr: configuration refused: filter "bbr": policy: unknown policy "lax""#),
        "{log}"
    );
    let _ = std::fs::remove_dir_all(&dir);
}

/// The control: with `clear_route_cache` off Envoy keeps the route it chose
/// on the client's headers, and the same request is not routed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn routing_fails_without_clearing_the_route_cache() {
    let Some(s) = scene_with(|config| {
        let rules = format!(r#""rules_file": "{}""#, demo_rules());
        let edited = config.replace(&rules, &format!(r#"{rules}, "clear_route_cache": false"#));
        assert_ne!(edited, config, "the template changed");
        edited
    })
    .await
    else {
        return;
    };
    let r = s.post("/v1/chat/completions", &[], CHAT).await;
    assert_eq!(r.status, 404, "{r:?}");
    assert_eq!(&r.body[..], b"no route for this model\n");
    assert_eq!(s.seen(), 0);
}

/// The decision latency and the bytes read before the decision, in
/// Envoy's histograms with the ext_proc server's buckets
/// (`examples/envoy/module.yaml`): one sample per request decided on its
/// body, none for a request without one.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn decisions_are_recorded_in_envoys_histograms() {
    // Histograms reach the admin endpoint when Envoy flushes its stats:
    // here, at each admin request.
    let Some(s) = scene_with(|config| format!("stats_flush_on_admin: true\n{config}")).await else {
        return;
    };
    let r = s.post("/v1/chat/completions", &[], CHAT).await;
    assert_eq!(r.status, 200, "{r:?}");
    let late = format!(
        r#"{{"messages":[{{"role":"user","content":"{}"}}],"model":"chatbot"}}"#,
        "x".repeat(100_000)
    );
    let r = s.post("/v1/chat/completions", &[], late).await;
    assert_eq!(r.status, 200, "{r:?}");
    let r = http::get(s.envoy.addr(), "/v1/models").await.unwrap();
    assert_eq!(r.status, 404, "{r:?}");

    let bytes = "envoy_dynamicmodulescustom_bbr_bytes_before_decision";
    let micros = "envoy_dynamicmodulescustom_bbr_decision_duration_microseconds";
    let want = [
        format!("{bytes}_count{{}} 2"),
        format!("{micros}_count{{}} 2"),
        // The model first in one body (18 bytes), after 100 000 in the other.
        format!(r#"{bytes}_bucket{{le="64"}} 1"#),
        format!(r#"{bytes}_bucket{{le="65536"}} 1"#),
        format!(r#"{bytes}_bucket{{le="262144"}} 2"#),
        format!(r#"{micros}_bucket{{le="+Inf"}} 2"#),
    ];
    // Envoy merges its workers' histograms after the flush an admin
    // request starts: the next one shows them.
    let mut text = String::new();
    for _ in 0..100 {
        let stats = http::get(s.envoy.admin, "/stats/prometheus").await.unwrap();
        text = String::from_utf8_lossy(&stats.body).into_owned();
        if text.lines().any(|l| l == want[0]) {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    for line in &want {
        assert!(
            text.lines().any(|l| l == line),
            "{line} missing from\n{text}"
        );
    }
}
