//! Compressed request bodies through the demo gateway over loopback sockets:
//! routed on the model inside, forwarded to the pool byte for byte; bombs,
//! other charsets and unknown codings refused with the error contract.

mod support;

use std::io::Write;

use bbr_tower::ModelSource;
use support::*;

/// Request headers, then the body.
type Case = (&'static [(&'static str, &'static str)], Vec<u8>);

const CHAT: &[u8] = br#"{"messages":[{"role":"user","content":"What is the color of the sky?"}],"model":"chatbot","max_tokens":100}"#;

fn encode(encoding: &str, body: &[u8]) -> Vec<u8> {
    match encoding {
        "gzip" => {
            let mut e = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
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

async fn post(
    gw: &TestGateway,
    headers: &[(&str, &str)],
    body: Vec<u8>,
) -> (u16, reqwest::header::HeaderMap, String) {
    let mut request = http1().post(gw.url("/v1/chat/completions"));
    for (name, value) in headers {
        request = request.header(*name, *value);
    }
    let response = request.body(body).send().await.unwrap();
    let status = response.status().as_u16();
    let headers = response.headers().clone();
    (status, headers, response.text().await.unwrap())
}

#[tokio::test]
async fn gzip_br_and_zstd_bodies_route_and_reach_the_pool_unchanged() {
    bounded(async {
        let gw = TestGateway::demo().await;
        for encoding in ["gzip", "br", "zstd"] {
            let compressed = encode(encoding, CHAT);
            let sent = [
                ("content-type", "application/json"),
                ("content-encoding", encoding),
            ];
            let (_, headers, _) = post(&gw, &sent, compressed.clone()).await;
            // Routed on the decoded model (the simulated pool itself reads
            // only plain JSON, so its answer is not the point here).
            assert_eq!(headers["x-inference-pool"], "gemma3", "{encoding}");
            let received = gw.pool("gemma3").received();
            let last = received.last().unwrap();
            assert!(last.complete);
            assert_eq!(last.sha256, sha256(&compressed), "{encoding}");
            assert_eq!(last.headers["content-encoding"], encoding);
            assert_eq!(last.model_header(), Some("chatbot"));
        }
        let decisions = gw.decisions.all();
        assert_eq!(decisions.len(), 3);
        assert!(decisions.iter().all(|d| d.source() == ModelSource::Body));
    })
    .await;
}

#[tokio::test]
async fn a_decompression_bomb_is_413_and_never_reaches_a_pool() {
    bounded(async {
        let gw = TestGateway::demo().await;
        // The first 10 KB of the gzip stream of 10 GiB of spaces after `{`,
        // made a MiB at a time.
        let mut encoder = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::best());
        encoder.write_all(b"{").unwrap();
        let spaces = vec![b' '; 1 << 20];
        let mut written = 0u64;
        while encoder.get_ref().len() < 10_000 && written < 10 << 30 {
            encoder.write_all(&spaces).unwrap();
            written += spaces.len() as u64;
        }
        let mut bomb = encoder.finish().unwrap();
        bomb.truncate(10_000);
        let sent = [
            ("content-type", "application/json"),
            ("content-encoding", "gzip"),
        ];
        let (status, _, body) = post(&gw, &sent, bomb).await;
        assert_eq!(status, 413);
        let error: serde_json::Value = serde_json::from_str(&body).unwrap();
        assert_eq!(error["error"]["code"], "too_large");
        let message = error["error"]["message"].as_str().unwrap();
        assert!(message.contains("decompression bomb"), "{message}");
        assert_eq!(gw.received_total(), 0);
    })
    .await;
}

#[tokio::test]
async fn other_charsets_and_unknown_codings_are_415() {
    bounded(async {
        let gw = TestGateway::demo().await;
        let gz = encode("gzip", CHAT);
        let cases: [Case; 3] = [
            (
                &[("content-type", "application/json; charset=utf-16")],
                CHAT.to_vec(),
            ),
            (
                &[
                    ("content-type", "application/json"),
                    ("content-encoding", "compress"),
                ],
                gz.clone(),
            ),
            (
                &[
                    ("content-type", "application/json"),
                    ("content-encoding", "gzip, br"),
                ],
                gz,
            ),
        ];
        for (sent, body) in cases {
            let (status, _, answer) = post(&gw, sent, body).await;
            assert_eq!(status, 415, "{sent:?}");
            let error: serde_json::Value = serde_json::from_str(&answer).unwrap();
            assert_eq!(error["error"]["code"], "unsupported_content_type");
        }
        assert_eq!(gw.received_total(), 0);
    })
    .await;
}
