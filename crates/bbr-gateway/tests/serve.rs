//! The gateway's server loop: graceful drain of open token streams on
//! shutdown, over real loopback sockets.

mod support;

use std::time::Duration;

use bbr_gateway::simulated::SimulatedPool;
use futures_util::StreamExt;
use support::*;

#[tokio::test]
async fn shutdown_lets_an_open_token_stream_finish_and_refuses_new_connections() {
    bounded(async {
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let pools = vec![
            SimulatedPool::new("gemma3").token_delay(Duration::from_millis(100)),
            SimulatedPool::new("deepseek-r1"),
        ];
        let options = bbr_gateway::ServeOptions {
            drain_timeout: Duration::from_secs(20),
            ..Default::default()
        };
        let gw = TestGateway::start_with(
            bbr_gateway::layer(demo_rules()),
            pools,
            options,
            async move {
                let _ = stopped.await;
            },
        )
        .await;
        let body =
            r#"{"model":"chatbot","messages":[{"role":"user","content":"hi"}],"stream":true}"#;
        let response = http1()
            .post(gw.url("/v1/chat/completions"))
            .header("content-type", "application/json")
            .body(body)
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), 200);
        let mut stream = response.bytes_stream();
        let mut received = stream.next().await.unwrap().unwrap().to_vec();

        // Shut down while the stream is under way.
        stop.send(()).unwrap();
        while let Some(chunk) = stream.next().await {
            received.extend_from_slice(&chunk.unwrap());
        }
        let text = String::from_utf8(received).unwrap();
        assert!(text.trim_end().ends_with("data: [DONE]"), "{text}");

        // The listener is closed: a new connection is refused.
        let mut refused = false;
        for _ in 0..50 {
            if tokio::net::TcpStream::connect(gw.addr).await.is_err() {
                refused = true;
                break;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        assert!(refused, "still accepting after shutdown");
    })
    .await;
}
