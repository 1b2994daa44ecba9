//! The floor of any ext_proc server on bbr-extproc's gRPC stack
//! (`benches/load/envoy.sh`, mode `passthrough`).
//!
//! Served as bbr-extproc serves (tonic, the same TLS identity, `TCP_NODELAY`,
//! a multi-threaded tokio runtime, the messages of `bbr_extproc::wire`
//! decoded without copying the chunks), it reads no body: every message gets
//! the answer that changes nothing, except that one fixed header
//! (`--route-header`, `x-gateway-model-name: chatbot` by default) is set with
//! `clear_route_cache`, so that Envoy routes the request to a pool as it
//! would after a body-based decision:
//!
//! - request headers: answered at once (with the header in
//!   `FULL_DUPLEX_STREAMED`, where nothing is held);
//! - request body: in `FULL_DUPLEX_STREAMED` each chunk goes back unchanged
//!   as a `streamed_response`; in `BUFFERED` the body response carries the
//!   header;
//! - trailers and response events: answered at once.
//!
//! The body mode comes from `ProcessingRequest.protocol_config` (Envoy 1.33
//! and later), `BUFFERED` when Envoy does not say.

use std::{
    convert::Infallible,
    future::Future,
    net::SocketAddr,
    pin::Pin,
    process::ExitCode,
    task::{Context, Poll},
};

use bbr_extproc::{
    pb,
    wire::{
        BodyMutation, BodyResponse, Codec, CommonResponse, HeaderMutation, HeaderValue,
        HeaderValueOption, HeadersResponse, ProcessingRequest, ProcessingResponse,
        StreamedBodyResponse, TrailersResponse, body_mutation, processing_request::Request,
        processing_response::Response,
    },
};
use bytes::Bytes;
use clap::Parser;
use futures_util::Stream;
use tokio::net::TcpListener;
use tonic::{
    Status, Streaming,
    server::{Grpc, NamedService},
    transport::{Server, ServerTlsConfig, server::TcpIncoming},
};
use tower::Service;

#[derive(Debug, Parser)]
#[command(name = "passthrough-extproc")]
struct Args {
    /// Address to listen on.
    #[arg(long, default_value = "127.0.0.1")]
    address: std::net::IpAddr,
    /// Port of the ext_proc service (0: any free port).
    #[arg(long, default_value_t = 0)]
    grpc_port: u16,
    /// Serve TLS with a self-signed certificate, as bbr-extproc does by default.
    #[arg(long, default_value_t = true, num_args = 0..=1, default_missing_value = "true", action = clap::ArgAction::Set)]
    secure_serving: bool,
    /// The header set on every request, NAME=VALUE.
    #[arg(long, default_value = "x-gateway-model-name=chatbot")]
    route_header: String,
    /// Runtime worker threads (0: one per CPU).
    #[arg(long, default_value_t = 0)]
    worker_threads: usize,
}

/// Answers every message without reading the body.
#[derive(Debug, Clone)]
struct Passthrough {
    route: HeaderMutation,
}

const FULL_DUPLEX_STREAMED: i32 = pb::BodySendMode::FullDuplexStreamed as i32;

struct StreamState {
    inbound: Streaming<ProcessingRequest>,
    route: HeaderMutation,
    full_duplex: bool,
}

impl StreamState {
    fn routed(&self) -> CommonResponse {
        CommonResponse {
            header_mutation: Some(self.route.clone()),
            clear_route_cache: true,
            ..Default::default()
        }
    }

    fn answer(&mut self, msg: ProcessingRequest) -> Option<ProcessingResponse> {
        if let Some(config) = &msg.protocol_config {
            self.full_duplex = config.request_body_mode == FULL_DUPLEX_STREAMED;
        }
        let response = match msg.request? {
            Request::RequestHeaders(h) => {
                let response = if self.full_duplex || h.end_of_stream {
                    self.routed()
                } else {
                    CommonResponse::default()
                };
                Response::RequestHeaders(HeadersResponse {
                    response: Some(response),
                })
            }
            Request::RequestBody(body) if self.full_duplex => Response::RequestBody(BodyResponse {
                response: Some(CommonResponse {
                    body_mutation: Some(BodyMutation {
                        mutation: Some(body_mutation::Mutation::StreamedResponse(
                            StreamedBodyResponse {
                                body: body.body,
                                end_of_stream: body.end_of_stream,
                            },
                        )),
                    }),
                    ..Default::default()
                }),
            }),
            Request::RequestBody(_) => Response::RequestBody(BodyResponse {
                response: Some(self.routed()),
            }),
            Request::RequestTrailers(_) => Response::RequestTrailers(TrailersResponse::default()),
            Request::ResponseHeaders(_) => Response::ResponseHeaders(HeadersResponse::default()),
            Request::ResponseBody(_) => Response::ResponseBody(BodyResponse::default()),
            Request::ResponseTrailers(_) => Response::ResponseTrailers(TrailersResponse::default()),
        };
        Some(ProcessingResponse {
            response: Some(response),
            ..Default::default()
        })
    }
}

/// The answers of one `Process` stream, produced as it is polled (as
/// bbr-extproc does: no task or channel per request).
struct ProcessStream(StreamState);

impl Stream for ProcessStream {
    type Item = Result<ProcessingResponse, Status>;

    fn poll_next(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        let state = &mut self.get_mut().0;
        loop {
            match std::task::ready!(Pin::new(&mut state.inbound).poll_next(cx)) {
                Some(Ok(msg)) => {
                    if let Some(r) = state.answer(msg) {
                        return Poll::Ready(Some(Ok(r)));
                    }
                }
                Some(Err(_)) | None => return Poll::Ready(None),
            }
        }
    }
}

/// The `Process` method.
struct Process(HeaderMutation);

impl Service<tonic::Request<Streaming<ProcessingRequest>>> for Process {
    type Response = tonic::Response<ProcessStream>;
    type Error = Status;
    type Future = std::future::Ready<Result<Self::Response, Status>>;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), Status>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, request: tonic::Request<Streaming<ProcessingRequest>>) -> Self::Future {
        std::future::ready(Ok(tonic::Response::new(ProcessStream(StreamState {
            inbound: request.into_inner(),
            route: self.0.clone(),
            full_duplex: false,
        }))))
    }
}

impl NamedService for Passthrough {
    const NAME: &'static str = bbr_extproc::SERVICE_NAME;
}

impl<B> Service<http::Request<B>> for Passthrough
where
    B: http_body::Body + Send + 'static,
    B::Error: Into<BoxError> + Send + 'static,
{
    type Response = http::Response<tonic::body::Body>;
    type Error = Infallible;
    type Future = Pin<Box<dyn Future<Output = Result<Self::Response, Infallible>> + Send>>;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, request: http::Request<B>) -> Self::Future {
        if request.uri().path() != "/envoy.service.ext_proc.v3.ExternalProcessor/Process" {
            let status = Status::unimplemented(request.uri().path().to_owned());
            return Box::pin(std::future::ready(Ok(status.into_http())));
        }
        let process = Process(self.route.clone());
        Box::pin(async move {
            // Room for a BUFFERED body as large as bbr-extproc's default
            // limit (32 MiB), as bbr-extproc allows.
            let mut grpc = Grpc::new(Codec::<ProcessingResponse, ProcessingRequest>::default())
                .max_decoding_message_size(33 << 20)
                .max_encoding_message_size(33 << 20);
            Ok(grpc.streaming(process, request).await)
        })
    }
}

type BoxError = Box<dyn std::error::Error + Send + Sync>;

async fn run(args: Args) -> Result<(), BoxError> {
    let (name, value) = args
        .route_header
        .split_once('=')
        .ok_or("--route-header takes NAME=VALUE")?;
    let route = HeaderMutation {
        set_headers: vec![HeaderValueOption {
            header: Some(HeaderValue {
                key: Bytes::from(name.to_ascii_lowercase()),
                raw_value: Bytes::copy_from_slice(value.as_bytes()),
                ..Default::default()
            }),
            ..Default::default()
        }],
        ..Default::default()
    };
    let listener = TcpListener::bind(SocketAddr::new(args.address, args.grpc_port)).await?;
    let addr = listener.local_addr()?;
    let mut server = Server::builder();
    if args.secure_serving {
        let identity = bbr_extproc::serve::self_signed_identity()?;
        server = server.tls_config(ServerTlsConfig::new().identity(identity))?;
    }
    println!(
        "passthrough-extproc listening grpc={addr} tls={}",
        args.secure_serving
    );
    server
        .add_service(Passthrough { route })
        .serve_with_incoming_shutdown(
            TcpIncoming::from(listener).with_nodelay(Some(true)),
            async {
                let _ = tokio::signal::ctrl_c().await;
            },
        )
        .await?;
    Ok(())
}

fn main() -> ExitCode {
    let args = Args::parse();
    let mut builder = tokio::runtime::Builder::new_multi_thread();
    if args.worker_threads > 0 {
        builder.worker_threads(args.worker_threads);
    }
    let result = builder
        .enable_all()
        .build()
        .map_err(BoxError::from)
        .and_then(|rt| rt.block_on(run(args)));
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("passthrough-extproc: {e}");
            ExitCode::FAILURE
        }
    }
}
