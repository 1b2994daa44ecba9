//! Shared helpers of the integration tests.
#![allow(dead_code, unreachable_pub, missing_docs)]

// The `bbr-extproc` binary, built with the `server` feature.
#[cfg(feature = "server")]
pub mod binary;
pub mod envoy;
pub mod http;
pub mod models;
pub mod otlp;
pub mod upstream;

use std::time::Duration;

use bbr_extproc::{
    BodyRoutingProcessor,
    pb::{
        self, HeaderMap, HeaderValue, HttpBody, HttpHeaders, HttpTrailers, ProcessingRequest,
        ProcessingResponse, ProtocolConfiguration,
        external_processor_client::ExternalProcessorClient, processing_request::Request,
        processing_response::Response,
    },
};
use tokio::sync::mpsc;
use tokio_stream::wrappers::{ReceiverStream, TcpListenerStream};
use tonic::{Streaming, transport::Channel};

/// Upper bound on any single wait, so that a broken test fails instead of hanging.
pub const WAIT: Duration = Duration::from_secs(20);

/// Serves `processor` on 127.0.0.1:0 and returns a connected client.
pub async fn serve(processor: BodyRoutingProcessor) -> ExternalProcessorClient<Channel> {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(
        tonic::transport::Server::builder()
            .add_service(processor.into_server())
            .serve_with_incoming(TcpListenerStream::new(listener)),
    );
    ExternalProcessorClient::connect(format!("http://{addr}"))
        .await
        .unwrap()
        .max_decoding_message_size(64 << 20)
}

/// One `Process` stream driven message by message, as Envoy would.
pub struct Stream {
    tx: Option<mpsc::Sender<ProcessingRequest>>,
    rx: Streaming<ProcessingResponse>,
    first: bool,
    protocol: Option<ProtocolConfiguration>,
}

impl Stream {
    pub async fn open(
        client: &mut ExternalProcessorClient<Channel>,
        protocol: Option<ProtocolConfiguration>,
    ) -> Stream {
        let (tx, rx) = mpsc::channel(64);
        let responses = client
            .process(ReceiverStream::new(rx))
            .await
            .unwrap()
            .into_inner();
        Stream {
            tx: Some(tx),
            rx: responses,
            first: true,
            protocol,
        }
    }

    pub async fn send(&mut self, request: Request) {
        let mut msg = ProcessingRequest {
            request: Some(request),
            ..Default::default()
        };
        if std::mem::take(&mut self.first) {
            msg.protocol_config = self.protocol;
        }
        self.send_raw(msg).await;
    }

    pub async fn send_raw(&mut self, msg: ProcessingRequest) {
        self.tx.as_ref().unwrap().send(msg).await.unwrap();
    }

    pub async fn headers(&mut self, headers: &[(&str, &str)], end_of_stream: bool) {
        self.send(Request::RequestHeaders(http_headers(
            headers,
            end_of_stream,
        )))
        .await;
    }

    pub async fn body(&mut self, chunk: &[u8], end_of_stream: bool) {
        self.send(Request::RequestBody(HttpBody {
            body: chunk.to_vec(),
            end_of_stream,
            ..Default::default()
        }))
        .await;
    }

    pub async fn trailers(&mut self) {
        self.send(Request::RequestTrailers(HttpTrailers::default()))
            .await;
    }

    /// Ends the request stream (Envoy closing its side).
    pub fn close(&mut self) {
        self.tx = None;
    }

    /// The next response; panics on timeout or end of stream.
    pub async fn recv(&mut self) -> Response {
        let msg = tokio::time::timeout(WAIT, self.rx.message())
            .await
            .expect("no response in time")
            .expect("stream error")
            .expect("stream ended");
        msg.response.expect("empty response")
    }

    /// Whether the response stream ends (after [`close`](Self::close)) with
    /// no further message.
    pub async fn ends(&mut self) -> bool {
        matches!(
            tokio::time::timeout(WAIT, self.rx.message()).await,
            Ok(Ok(None))
        )
    }
}

pub fn http_headers(headers: &[(&str, &str)], end_of_stream: bool) -> HttpHeaders {
    HttpHeaders {
        headers: Some(HeaderMap {
            headers: headers
                .iter()
                .map(|(k, v)| HeaderValue {
                    key: (*k).to_owned(),
                    value: String::new(),
                    raw_value: v.as_bytes().to_vec(),
                })
                .collect(),
        }),
        end_of_stream,
        ..Default::default()
    }
}

pub fn protocol(request: pb::BodySendMode, response: pb::BodySendMode) -> ProtocolConfiguration {
    ProtocolConfiguration {
        request_body_mode: request as i32,
        response_body_mode: response as i32,
        send_body_without_waiting_for_header_response: false,
    }
}

pub const JSON: (&str, &str) = ("content-type", "application/json");

/// The common response of a headers, body response.
pub fn common(r: &Response) -> pb::CommonResponse {
    match r {
        Response::RequestHeaders(h) | Response::ResponseHeaders(h) => {
            h.response.clone().unwrap_or_default()
        }
        Response::RequestBody(b) | Response::ResponseBody(b) => {
            b.response.clone().unwrap_or_default()
        }
        other => panic!("not a headers or body response: {other:?}"),
    }
}

/// Headers set by a common response, as (name, value) strings.
pub fn set_headers(c: &pb::CommonResponse) -> Vec<(String, String)> {
    c.header_mutation
        .iter()
        .flat_map(|m| m.set_headers.iter())
        .filter_map(|o| o.header.as_ref())
        .map(|h| {
            let v = if h.raw_value.is_empty() {
                h.value.clone()
            } else {
                String::from_utf8_lossy(&h.raw_value).into_owned()
            };
            (h.key.clone(), v)
        })
        .collect()
}

pub fn removed_headers(c: &pb::CommonResponse) -> Vec<String> {
    c.header_mutation
        .iter()
        .flat_map(|m| m.remove_headers.iter().cloned())
        .collect()
}

/// The streamed body chunk of a FULL_DUPLEX_STREAMED body response.
pub fn streamed(r: &Response) -> (Vec<u8>, bool) {
    let c = common(r);
    match c.body_mutation.and_then(|m| m.mutation) {
        Some(pb::body_mutation::Mutation::StreamedResponse(s)) => (s.body, s.end_of_stream),
        other => panic!("not a streamed body response: {other:?}"),
    }
}

/// The status and parsed JSON body of an immediate response.
pub fn immediate(r: &Response) -> (i32, serde_json::Value, Vec<(String, String)>) {
    match r {
        Response::ImmediateResponse(i) => {
            let status = i.status.map(|s| s.code).unwrap_or_default();
            let body = serde_json::from_slice(&i.body).expect("error body is JSON");
            let headers = i
                .headers
                .iter()
                .flat_map(|m| m.set_headers.iter())
                .filter_map(|o| o.header.as_ref())
                .map(|h| {
                    (
                        h.key.clone(),
                        String::from_utf8_lossy(&h.raw_value).into_owned(),
                    )
                })
                .collect();
            (status, body, headers)
        }
        other => panic!("not an immediate response: {other:?}"),
    }
}
