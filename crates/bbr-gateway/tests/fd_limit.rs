//! Running out of file descriptors does not stop the gateway: with the
//! process's limit lowered (this test binary is its own process), idle
//! client connections take every descriptor, accepts fail, and once the
//! clients hang up the gateway serves again.

mod support;

use std::time::Duration;

use rustix::process::{Resource, Rlimit, getrlimit, setrlimit};
use support::*;

#[tokio::test]
async fn the_gateway_outlives_running_out_of_descriptors() {
    bounded(async {
        let old = getrlimit(Resource::Nofile);
        let limit = Rlimit {
            current: Some(256),
            maximum: old.maximum,
        };
        setrlimit(Resource::Nofile, limit).expect("lower the descriptor limit");
        let gw = TestGateway::demo().await;

        // Idle connections until connecting fails: each takes a descriptor
        // here and one in the gateway, so its accepts fail first.
        let mut idle = Vec::new();
        for _ in 0..1100 {
            match tokio::net::TcpStream::connect(gw.addr).await {
                Ok(stream) => idle.push(stream),
                Err(_) => break,
            }
        }
        assert!(idle.len() > 50, "only {} connections", idle.len());
        tokio::time::sleep(Duration::from_millis(300)).await;
        drop(idle);

        // The accept loop is still there: a request is served once the
        // descriptors are back.
        let mut status = None;
        for _ in 0..50 {
            tokio::time::sleep(Duration::from_millis(100)).await;
            let body = r#"{"model":"chatbot","messages":[]}"#;
            if let Ok(response) = http1()
                .post(gw.url("/v1/chat/completions"))
                .header("content-type", "application/json")
                .body(body)
                .send()
                .await
            {
                status = Some(response.status().as_u16());
                break;
            }
        }
        assert_eq!(status, Some(200));
        let _ = setrlimit(Resource::Nofile, old);
    })
    .await;
}
