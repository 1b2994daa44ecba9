//! Running the gateway: the access log line, the health and readiness
//! endpoints through a drain, the Prometheus metrics, and the rules file
//! reloaded while it serves. The gateway runs as a process of its own.

mod support;

use std::time::Duration;

use futures_util::StreamExt;
use support::*;

const CHAT: &str =
    r#"{"model":"chatbot","messages":[{"role":"user","content":"What is the color of the sky?"}]}"#;

#[tokio::test]
async fn each_request_is_logged_on_one_line_without_colour() {
    bounded(async {
        let gw = GatewayProcess::start(&[]);
        let client = http1();
        let response = post_json(&client, gw.url("/v1/chat/completions"), CHAT).await;
        assert_eq!(response.status(), 200);
        let _ = response.bytes().await.unwrap();
        let line = gw
            .log_line(&["gateway::access", "path=/v1/chat/completions", "status=200"])
            .await;
        for field in [
            "method=POST",
            "model=chatbot",
            "rule=chatbot",
            "pool=gemma3",
            "error=-",
            "held_bytes=",
            "duration_ms=",
        ] {
            assert!(line.contains(field), "{field} missing in {line}");
        }

        let response = post_json(&client, gw.url("/v1/chat/completions"), "{\"model\":").await;
        assert_eq!(response.status(), 400);
        let line = gw.log_line(&["gateway::access", "status=400"]).await;
        assert!(line.contains("error=invalid_json"), "{line}");

        // stderr is a pipe here: no terminal escape codes.
        for line in gw.stderr() {
            assert!(!line.contains('\u{1b}'), "colour codes in {line:?}");
        }
    })
    .await;
}

#[tokio::test]
async fn readiness_is_withdrawn_while_draining() {
    bounded(async {
        let mut gw =
            GatewayProcess::start(&["--admin-listen", "127.0.0.1:0", "--token-delay-ms", "150"]);
        let client = http1();
        let get = |path: &str| client.get(gw.admin_url(path)).send();
        assert_eq!(get("/healthz").await.unwrap().status(), 200);
        assert_eq!(get("/readyz").await.unwrap().status(), 200);
        // The endpoints live on the admin listener only.
        let main = client.get(gw.url("/readyz")).send().await.unwrap();
        assert_ne!(main.status(), 200);

        // A token stream under way, then SIGTERM.
        let body =
            r#"{"model":"chatbot","messages":[{"role":"user","content":"hi"}],"stream":true}"#;
        let response = post_json(&client, gw.url("/v1/chat/completions"), body).await;
        assert_eq!(response.status(), 200);
        let mut stream = response.bytes_stream();
        let mut received = stream.next().await.unwrap().unwrap().to_vec();
        gw.terminate();
        let mut draining = None;
        for _ in 0..100 {
            let status = get("/readyz").await.unwrap().status();
            if status == 503 {
                draining = Some(status);
                break;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        assert_eq!(draining.map(|s| s.as_u16()), Some(503));
        assert_eq!(get("/healthz").await.unwrap().status(), 200);
        // The open stream still finishes, then the process exits.
        while let Some(chunk) = stream.next().await {
            received.extend_from_slice(&chunk.unwrap());
        }
        let text = String::from_utf8(received).unwrap();
        assert!(text.trim_end().ends_with("data: [DONE]"), "{text}");
        assert!(gw.exited().await.success());
    })
    .await;
}

/// The value of the sample `series` (name and labels as rendered) in a
/// Prometheus text page.
fn sample(page: &str, series: &str) -> Option<f64> {
    page.lines().find_map(|line| {
        let value = line.strip_prefix(series)?.strip_prefix(' ')?;
        value.trim().parse().ok()
    })
}

#[tokio::test]
async fn metrics_carry_the_ext_proc_servers_names() {
    bounded(async {
        let gw = GatewayProcess::start(&[]);
        let client = http1();
        let page = client.get(gw.url("/metrics")).send().await.unwrap();
        assert_eq!(page.status(), 200);
        let page = page.text().await.unwrap();
        // Registered at zero before the first request.
        assert_eq!(sample(&page, "bbr_success_total"), Some(0.0), "{page}");
        assert_eq!(sample(&page, "bbr_model_not_in_body_total"), Some(0.0));

        for _ in 0..2 {
            let response = post_json(&client, gw.url("/v1/chat/completions"), CHAT).await;
            assert_eq!(response.status(), 200);
        }
        let response = post_json(&client, gw.url("/v1/chat/completions"), "[1]").await;
        assert_eq!(response.status(), 400);
        let response = post_json(
            &client,
            gw.url("/v1/chat/completions"),
            r#"{"messages":[]}"#,
        )
        .await;
        // No model, so no pool, and the demo has no fallback.
        assert_eq!(error_code(response).await, (404, "no_route".to_owned()));

        let page = client.get(gw.url("/metrics")).send().await.unwrap();
        let page = page.text().await.unwrap();
        // Every body read without an error, routed or not (the Go
        // router's meaning); the two routed ones in bbr_routed_total.
        assert_eq!(sample(&page, "bbr_success_total"), Some(3.0), "{page}");
        assert_eq!(sample(&page, "bbr_routed_total"), Some(2.0), "{page}");
        assert_eq!(
            sample(
                &page,
                r#"bbr_route_matches_total{rule="chatbot",pool="gemma3"}"#
            ),
            Some(2.0),
            "{page}"
        );
        assert_eq!(
            sample(&page, r#"bbr_rejected_total{reason="invalid_json"}"#),
            Some(1.0),
            "{page}"
        );
        assert_eq!(sample(&page, "bbr_model_not_in_body_total"), Some(1.0));
        assert_eq!(
            sample(&page, r#"bbr_rejected_total{reason="no_route"}"#),
            Some(1.0),
            "{page}"
        );
        assert_eq!(
            sample(&page, "bbr_decision_duration_seconds_count"),
            Some(3.0),
            "{page}"
        );
        assert!(page.contains("bbr_bytes_before_decision_bucket"), "{page}");
    })
    .await;
}

/// Without `--rules` the gateway routes with the table built into it,
/// wherever it starts: a rules file under its working directory, even at
/// the path of the examples' copy, is not read.
#[tokio::test]
async fn without_rules_the_built_in_table_routes_wherever_it_starts() {
    bounded(async {
        let dir = std::env::temp_dir().join(format!("bbr-gateway-cwd-{}", std::process::id()));
        std::fs::create_dir_all(dir.join("examples/config")).unwrap();
        // A table that would send `chatbot` to the other pool.
        let elsewhere = bbr_gateway::DEMO_RULES.replace("pool: gemma3", "pool: deepseek-r1");
        std::fs::write(dir.join("examples/config/gateway.yaml"), elsewhere).unwrap();
        let gw = GatewayProcess::start_in(&dir, &[]);
        let said = gw.stdout().join("\n");
        assert!(said.contains("(rules: the demo table built in)"), "{said}");
        let response = post_json(&http1(), gw.url("/v1/chat/completions"), CHAT).await;
        assert_eq!(response.status(), 200);
        assert_eq!(response.headers()["x-inference-pool"], "gemma3");
        drop(gw);
        std::fs::remove_dir_all(&dir).unwrap();
    })
    .await;
}

#[tokio::test]
async fn a_changed_rules_file_takes_effect_and_a_broken_one_is_refused() {
    bounded(async {
        let dir = std::env::temp_dir().join(format!("bbr-gateway-reload-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let rules = dir.join("rules.yaml");
        let demo = bbr_gateway::DEMO_RULES;
        // Files are replaced whole (a new file renamed over the old one).
        let replace = |text: &str| {
            let next = dir.join("rules.yaml.next");
            std::fs::write(&next, text).unwrap();
            std::fs::rename(&next, &rules).unwrap();
        };
        replace(demo);
        let gw = GatewayProcess::start(&[
            "--rules",
            rules.to_str().unwrap(),
            "--rules-poll-ms",
            "100",
        ]);
        let client = http1();
        let assistant = CHAT.replace("chatbot", "assistant");
        let routed = || async {
            let response =
                post_json(&client, gw.url("/v1/chat/completions"), assistant.clone()).await;
            let status = response.status().as_u16();
            let pool = response
                .headers()
                .get("x-inference-pool")
                .map(|v| v.to_str().unwrap().to_owned());
            (status, pool)
        };
        assert_eq!(routed().await, (404, None));

        let with_assistant = demo.replace(
            "default:",
            "  - name: assistant\n    match: { model: { exact: assistant } }\n    pool: deepseek-r1\ndefault:",
        );
        replace(&with_assistant);
        let mut now = routed().await;
        for _ in 0..200 {
            if now.0 == 200 {
                break;
            }
            tokio::time::sleep(Duration::from_millis(25)).await;
            now = routed().await;
        }
        assert_eq!(now, (200, Some("deepseek-r1".to_owned())));

        // A broken file: refused, logged, counted; the table in force stays.
        replace("rules: [{name: x, pool: gemma3, match: {model: {nope: 1}}}]\n");
        gw.log_line(&["rules not reloaded"]).await;
        assert_eq!(routed().await, (200, Some("deepseek-r1".to_owned())));
        let page = client.get(gw.url("/metrics")).send().await.unwrap();
        let page = page.text().await.unwrap();
        assert_eq!(sample(&page, "bbr_rules_reloads_total"), Some(1.0), "{page}");
        assert_eq!(
            sample(&page, "bbr_rules_reload_failures_total"),
            Some(1.0),
            "{page}"
        );
        let _ = std::fs::remove_dir_all(&dir);
    })
    .await;
}

/// A pool server of the test's own that says when a request reached it,
/// then reads its body to the end (or the error).
async fn signalling_server() -> (std::net::SocketAddr, tokio::sync::mpsc::Receiver<()>) {
    use http_body_util::BodyExt;
    let listener = tokio::net::TcpListener::bind(loopback()).await.unwrap();
    let addr = listener.local_addr().unwrap();
    let (tx, rx) = tokio::sync::mpsc::channel(4);
    tokio::spawn(async move {
        while let Ok((stream, _)) = listener.accept().await {
            let tx = tx.clone();
            tokio::spawn(async move {
                let service = hyper::service::service_fn(
                    move |request: http::Request<hyper::body::Incoming>| {
                        let tx = tx.clone();
                        async move {
                            let _ = tx.send(()).await;
                            let _ = request.into_body().collect().await;
                            Ok::<_, std::convert::Infallible>(http::Response::new(
                                http_body_util::Full::new(bytes::Bytes::from_static(b"{}")),
                            ))
                        }
                    },
                );
                let _ = hyper_util::server::conn::auto::Builder::new(
                    hyper_util::rt::TokioExecutor::new(),
                )
                .serve_connection(hyper_util::rt::TokioIo::new(stream), service)
                .await;
            });
        }
    });
    (addr, rx)
}

#[tokio::test]
async fn a_client_hanging_up_mid_body_is_logged_not_answered() {
    use tokio::io::AsyncWriteExt;
    bounded(async {
        let (pool, mut reached) = signalling_server().await;
        let gw = GatewayProcess::start(&["--pool", &format!("gemma3=http://{pool}")]);
        let mut stream = tokio::net::TcpStream::connect(gw.addr).await.unwrap();
        let head = "POST /v1/chat/completions HTTP/1.1\r\nhost: gateway\r\ncontent-type: application/json\r\ncontent-length: 10000000\r\n\r\n";
        stream.write_all(head.as_bytes()).await.unwrap();
        // The model first: the request is routed and its body forwarded.
        stream
            .write_all(br#"{"model":"chatbot","messages":[{"role":"user","content":""#)
            .await
            .unwrap();
        stream.write_all(&vec![b'a'; 64 << 10]).await.unwrap();
        reached.recv().await.expect("the request reached the pool");
        drop(stream);
        gw.log_line(&["the client hung up while its body was forwarded"])
            .await;
        let line = gw.log_line(&["gateway::access", "model=chatbot"]).await;
        assert!(line.contains("error=body_read_error"), "{line}");
        for line in gw.stderr() {
            assert!(!line.contains("status=502"), "{line}");
        }
    })
    .await;
}

/// `--pool-limit 1`: while a streamed answer holds the pool's one slot, a
/// Standard request (the demo's `recommender`) waits for
/// `--pool-queue-timeout-ms` and gets 429 `shed`, while a Critical one (the
/// demo's `chatbot`, another pool) is not held back.
#[tokio::test]
async fn a_saturated_pool_sheds_what_waited_too_long() {
    bounded(async {
        let gw = GatewayProcess::start(&[
            "--pool-limit",
            "1",
            "--pool-queue-timeout-ms",
            "200",
            "--token-delay-ms",
            "300",
        ]);
        let client = http1();
        let streamed = r#"{"model":"recommender","prompt":"x","stream":true}"#;
        let holding = post_json(&client, gw.url("/v1/completions"), streamed).await;
        assert_eq!(holding.status(), 200);
        let mut tokens = holding.bytes_stream();
        // The first event: the slot is held while the rest streams.
        assert!(tokens.next().await.is_some());

        let waited = post_json(
            &client,
            gw.url("/v1/completions"),
            r#"{"model":"recommender","prompt":"y"}"#,
        )
        .await;
        assert_eq!(waited.headers()["retry-after"], "1");
        assert_eq!(error_code(waited).await, (429, "shed".to_owned()));

        let other_pool = post_json(&client, gw.url("/v1/chat/completions"), CHAT).await;
        assert_eq!(other_pool.status(), 200);
        while tokens.next().await.is_some() {}
        // The slot came back with the end of the stream.
        let after = post_json(
            &client,
            gw.url("/v1/completions"),
            r#"{"model":"recommender","prompt":"z"}"#,
        )
        .await;
        assert_eq!(after.status(), 200);
    })
    .await;
}
