//! A minimal OTLP trace receiver on 127.0.0.1, over gRPC or HTTP/protobuf,
//! keeping the spans it is sent.

use std::{
    net::SocketAddr,
    sync::{Arc, Mutex},
    time::{Duration, Instant},
};

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::{body::Incoming, service::service_fn};
use hyper_util::rt::{TokioExecutor, TokioIo};
use opentelemetry_proto::tonic::{
    collector::trace::v1::{
        ExportTraceServiceRequest, ExportTraceServiceResponse,
        trace_service_server::{TraceService, TraceServiceServer},
    },
    common::v1::{AnyValue, any_value::Value},
    trace::v1::Span,
};
use prost::Message;
use tokio::sync::Notify;
use tokio_stream::wrappers::TcpListenerStream;

/// One exported span and the `service.name` of its resource.
#[derive(Clone, Debug)]
pub struct Exported {
    pub service: String,
    pub span: Span,
}

/// What a receiver got, and a bell rung at each export.
#[derive(Clone, Default)]
pub struct Received {
    pub spans: Arc<Mutex<Vec<Exported>>>,
    pub rung: Arc<Notify>,
}

impl Received {
    pub fn add(&self, request: ExportTraceServiceRequest) {
        let mut spans = self.spans.lock().unwrap();
        for resource_spans in request.resource_spans {
            let service = resource_spans
                .resource
                .iter()
                .flat_map(|r| &r.attributes)
                .find(|kv| kv.key == "service.name")
                .and_then(|kv| text(kv.value.as_ref()))
                .unwrap_or_default();
            for span in resource_spans.scope_spans.into_iter().flat_map(|s| s.spans) {
                spans.push(Exported {
                    service: service.clone(),
                    span,
                });
            }
        }
        self.rung.notify_waiters();
    }

    /// Waits until `n` spans arrived, for at most `within`; returns them.
    pub async fn wait_for(&self, n: usize, within: Duration) -> Vec<Exported> {
        let deadline = Instant::now() + within;
        loop {
            let rung = self.rung.notified();
            let spans = self.spans.lock().unwrap().clone();
            if spans.len() >= n || Instant::now() >= deadline {
                return spans;
            }
            let _ = tokio::time::timeout(Duration::from_millis(100), rung).await;
        }
    }
}

pub fn text(value: Option<&AnyValue>) -> Option<String> {
    match value?.value.as_ref()? {
        Value::StringValue(s) => Some(s.clone()),
        Value::IntValue(i) => Some(i.to_string()),
        other => Some(format!("{other:?}")),
    }
}

pub fn attribute(span: &Span, key: &str) -> Option<String> {
    span.attributes
        .iter()
        .find(|kv| kv.key == key)
        .and_then(|kv| text(kv.value.as_ref()))
}

pub fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

#[tonic::async_trait]
impl TraceService for Received {
    async fn export(
        &self,
        request: tonic::Request<ExportTraceServiceRequest>,
    ) -> Result<tonic::Response<ExportTraceServiceResponse>, tonic::Status> {
        self.add(request.into_inner());
        Ok(tonic::Response::new(ExportTraceServiceResponse::default()))
    }
}

/// An OTLP/gRPC receiver on 127.0.0.1; returns its address.
pub async fn grpc_receiver(received: Received) -> SocketAddr {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(
        tonic::transport::Server::builder()
            .add_service(TraceServiceServer::new(received))
            .serve_with_incoming(TcpListenerStream::new(listener)),
    );
    addr
}

/// An OTLP/HTTP (protobuf) receiver on 127.0.0.1: `POST /v1/traces`.
pub async fn http_receiver(received: Received) -> SocketAddr {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        loop {
            let Ok((stream, _)) = listener.accept().await else {
                return;
            };
            let received = received.clone();
            tokio::spawn(async move {
                let service = service_fn(move |req: hyper::Request<Incoming>| {
                    let received = received.clone();
                    async move {
                        let path_ok =
                            req.method() == hyper::Method::POST && req.uri().path() == "/v1/traces";
                        let body = match req.into_body().collect().await {
                            Ok(body) => body.to_bytes(),
                            Err(_) => Bytes::new(),
                        };
                        let status = match ExportTraceServiceRequest::decode(body) {
                            Ok(request) if path_ok => {
                                received.add(request);
                                hyper::StatusCode::OK
                            }
                            _ => hyper::StatusCode::BAD_REQUEST,
                        };
                        let reply = ExportTraceServiceResponse::default().encode_to_vec();
                        let mut response = hyper::Response::new(Full::new(Bytes::from(reply)));
                        *response.status_mut() = status;
                        response.headers_mut().insert(
                            "content-type",
                            hyper::header::HeaderValue::from_static("application/x-protobuf"),
                        );
                        Ok::<_, std::convert::Infallible>(response)
                    }
                });
                let _ = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new())
                    .serve_connection(TokioIo::new(stream), service)
                    .await;
            });
        }
    });
    addr
}
