//! The model list bbr-extproc answers (`--serve-models`) and the routing
//! headers it sets, over a real gRPC stream.

use std::time::{Duration, Instant};

use bbr_extproc::pb::{BodySendMode, external_processor_client::ExternalProcessorClient};
use tonic::transport::Channel;

use super::{JSON, Stream, WAIT, common, immediate, protocol, set_headers};

/// The model list bbr-extproc answers on `GET /v1/models`.
pub async fn listed(c: &mut ExternalProcessorClient<Channel>) -> serde_json::Value {
    let mode = protocol(BodySendMode::FullDuplexStreamed, BodySendMode::None);
    let mut s = Stream::open(c, Some(mode)).await;
    s.headers(&[(":method", "GET"), (":path", "/v1/models")], true)
        .await;
    let (status, list, _) = immediate(&s.recv().await);
    assert_eq!(status, 200);
    list
}

/// Waits (at most [`WAIT`]) until the model list satisfies `want`.
pub async fn until(
    c: &mut ExternalProcessorClient<Channel>,
    want: impl Fn(&serde_json::Value) -> bool,
) -> serde_json::Value {
    let start = Instant::now();
    loop {
        let list = listed(c).await;
        if want(&list) {
            return list;
        }
        assert!(start.elapsed() < WAIT, "not listed in time: {list}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// The headers a request for `model` is routed with.
pub async fn routing_headers(
    c: &mut ExternalProcessorClient<Channel>,
    model: &str,
) -> Vec<(String, String)> {
    let mode = protocol(BodySendMode::FullDuplexStreamed, BodySendMode::None);
    let mut s = Stream::open(c, Some(mode)).await;
    s.headers(&[JSON], false).await;
    let body = serde_json::json!({"model": model, "prompt": "x"}).to_string();
    s.body(body.as_bytes(), true).await;
    set_headers(&common(&s.recv().await))
}

/// The value of header `name` among `headers`.
pub fn header<'a>(headers: &'a [(String, String)], name: &str) -> Option<&'a str> {
    headers
        .iter()
        .find(|(k, _)| k == name)
        .map(|(_, v)| v.as_str())
}

/// The entry of model `id` in a model list.
pub fn entry<'a>(list: &'a serde_json::Value, id: &str) -> Option<&'a serde_json::Value> {
    list["data"].as_array()?.iter().find(|m| m["id"] == id)
}

/// Whether a model list has model `id`.
pub fn has(list: &serde_json::Value, id: &str) -> bool {
    entry(list, id).is_some()
}
