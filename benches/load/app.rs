//! The axum app of the tower-layer load benchmark (`benches/load/tower.sh`).
//!
//! One chat-completions route whose handler reads the whole body, as a real
//! handler (or proxy) does, served three ways:
//!
//! - `bare`: no routing at all (the floor);
//! - `layer`: behind `bbr_tower::ModelRoutingLayer` with the demo rules;
//! - `handwritten`: behind the usual hand-written middleware, which collects
//!   the whole body, parses it into a `serde_json::Value`, reads `model`,
//!   sets `X-Gateway-Model-Name` and rebuilds the request.
//!
//! `tower-load gateway` serves the demo gateway (the `bbr_gateway` library) in
//! front of simulated pools, the same three ways: `bare` forwards every
//! request to the first pool without routing; `layer` is the demo itself
//! (the layer, then one upstream per pool); `handwritten` collects the body,
//! parses a `serde_json::Value`, decides with the same rule table and
//! forwards the collected body to the pool.
//!
//! `tower-load body SIZE` prints a request body of about SIZE bytes in the
//! shape the OpenAI Python SDK sends (`messages` before `model`).

use std::{
    collections::HashMap,
    convert::Infallible,
    net::SocketAddr,
    path::{Path, PathBuf},
    process::ExitCode,
    sync::Arc,
};

use axum::{
    Json, Router,
    body::{Body, Bytes},
    extract::Request,
    http::{HeaderValue, StatusCode},
    middleware::{self, Next},
    response::{IntoResponse, Response},
    routing::post,
};
use bbr_core::rules::RuleTable;
use bbr_gateway::simulated::parse_pool;
use bbr_tower::{Decision, ModelRoutingLayer};
use clap::{Parser, Subcommand, ValueEnum};
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use serde_json::Value;
use tokio::net::TcpListener;
use tower::Service;

#[derive(Debug, Parser)]
#[command(name = "tower-load")]
struct Args {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Serves the app; prints `listening on ADDR` once ready.
    Serve {
        #[command(flatten)]
        app: AppArgs,
    },
    /// Serves the demo gateway in front of running pools; prints
    /// `listening on ADDR` once ready.
    Gateway {
        #[command(flatten)]
        app: AppArgs,
        /// A pool, as NAME=ADDR (repeatable; the first takes every request
        /// in `bare` mode).
        #[arg(long = "pool", value_parser = parse_pool, required = true)]
        pools: Vec<(String, SocketAddr)>,
    },
    /// Prints a request body of about SIZE bytes, `messages` before `model`.
    Body {
        /// Body size in bytes.
        size: usize,
        /// `long`: one long user message; `chat`: a conversation of many
        /// turns of a few hundred bytes each.
        #[arg(long, value_enum, default_value = "long")]
        shape: Shape,
        /// The model to name.
        #[arg(long, default_value = "chatbot")]
        model: String,
    },
}

/// What both served apps take.
#[derive(Debug, clap::Args)]
struct AppArgs {
    /// How requests are routed.
    #[arg(long, value_enum)]
    mode: Mode,
    /// Address to listen on (port 0: any free port).
    #[arg(long, default_value = "127.0.0.1:0")]
    listen: SocketAddr,
    /// The rule table.
    #[arg(long, default_value = concat!(env!("CARGO_MANIFEST_DIR"), "/../examples/config/gateway.yaml"))]
    rules: PathBuf,
    /// Runtime worker threads.
    #[arg(long, default_value_t = 1)]
    threads: usize,
}

#[derive(Clone, Copy, Debug, ValueEnum)]
enum Shape {
    Long,
    Chat,
}

#[derive(Clone, Copy, Debug, ValueEnum)]
enum Mode {
    Bare,
    Layer,
    Handwritten,
    /// A layer of the same shape that routes nothing (app only): what any
    /// body-wrapping layer costs in an axum app.
    Plumbing,
}

fn main() -> ExitCode {
    match Args::parse().command {
        Command::Body { size, shape, model } => {
            match shape {
                Shape::Long => print!("{}", body(size, &model)),
                Shape::Chat => print!("{}", chat_body(size, &model)),
            }
            ExitCode::SUCCESS
        }
        Command::Serve { app } => run(&app.rules, app.threads, |rules| {
            serve(app.mode, app.listen, rules)
        }),
        Command::Gateway { app, pools } => run(&app.rules, app.threads, |rules| {
            gateway(app.mode, app.listen, rules, pools)
        }),
    }
}

/// Loads the rules and runs `app` on a runtime of `threads` workers.
fn run<F, Fut>(rules: &Path, threads: usize, app: F) -> ExitCode
where
    F: FnOnce(RuleTable) -> Fut,
    Fut: Future<Output = std::io::Result<()>>,
{
    let rules = match RuleTable::from_path(rules) {
        Ok(rules) => rules,
        Err(e) => {
            eprintln!("tower-load: {e}");
            return ExitCode::from(2);
        }
    };
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(threads.max(1))
        .enable_all()
        .build();
    match runtime.map(|rt| rt.block_on(app(rules))) {
        Ok(Ok(())) => ExitCode::SUCCESS,
        Ok(Err(e)) | Err(e) => {
            eprintln!("tower-load: {e}");
            ExitCode::FAILURE
        }
    }
}

fn body(size: usize, model: &str) -> String {
    let fixed = r#"{"messages":[{"role":"system","content":"You are a helpful assistant."},{"role":"user","content":""}],"model":"","max_tokens":100,"temperature":0}"#.len() + model.len();
    let words = "Tell me about the history of Paris and its restaurants. ";
    let text: String = words
        .chars()
        .cycle()
        .take(size.saturating_sub(fixed))
        .collect();
    format!(
        r#"{{"messages":[{{"role":"system","content":"You are a helpful assistant."}},{{"role":"user","content":"{text}"}}],"model":"{model}","max_tokens":100,"temperature":0}}"#
    )
}

/// A conversation of about `size` bytes: a system prompt, then user and
/// assistant turns of 100 to 700 bytes of text, `model` after `messages`.
fn chat_body(size: usize, model: &str) -> String {
    const WORDS: [&str; 12] = [
        "the",
        "history",
        "of",
        "Paris",
        "and",
        "its",
        "restaurants",
        "is",
        "long,",
        "rich",
        "with",
        "stories.",
    ];
    let tail = format!(r#"],"model":"{model}","max_tokens":100,"temperature":0}}"#);
    let mut out =
        String::from(r#"{"messages":[{"role":"system","content":"You are a helpful assistant."}"#);
    let mut state = 0x2545_f491u32;
    let mut turn = 0;
    while out.len() + tail.len() < size {
        state ^= state << 13;
        state ^= state >> 17;
        state ^= state << 5;
        let room = size.saturating_sub(out.len() + tail.len() + 40).max(1);
        let len = (100 + state as usize % 600).min(room);
        let role = if turn % 2 == 0 { "user" } else { "assistant" };
        let mut text = String::with_capacity(len + 12);
        let mut word = state as usize;
        while text.len() < len {
            if !text.is_empty() {
                text.push(' ');
            }
            text.push_str(WORDS[word % WORDS.len()]);
            word = word.wrapping_mul(31).wrapping_add(7);
        }
        out.push_str(&format!(r#",{{"role":"{role}","content":"{text}"}}"#));
        turn += 1;
    }
    out.push_str(&tail);
    out
}

async fn serve(mode: Mode, listen: SocketAddr, rules: RuleTable) -> std::io::Result<()> {
    let routes = Router::new().route("/v1/chat/completions", post(complete));
    let app = match mode {
        Mode::Bare => routes,
        Mode::Layer => routes.layer(ModelRoutingLayer::new().rules(rules)),
        Mode::Handwritten => routes.layer(middleware::from_fn(handwritten)),
        Mode::Plumbing => routes.layer(PlumbingLayer),
    };
    let listener = TcpListener::bind(listen).await?;
    println!("listening on {}", listener.local_addr()?);
    axum::serve(listener, app).await
}

/// The demo gateway, served `mode`'s way.
async fn gateway(
    mode: Mode,
    listen: SocketAddr,
    rules: RuleTable,
    pools: Vec<(String, SocketAddr)>,
) -> std::io::Result<()> {
    use bbr_gateway::{self as demo, Upstream};
    let listener = TcpListener::bind(listen).await?;
    println!("listening on {}", listener.local_addr()?);
    match mode {
        Mode::Bare | Mode::Plumbing => {
            let upstream: Upstream<Incoming> = Upstream::new(pools[0].1);
            demo::serve(listener, upstream).await
        }
        Mode::Layer => {
            let upstreams = pools
                .iter()
                .map(|(name, addr)| (name.clone(), Upstream::new(*addr)));
            demo::serve(listener, demo::gateway(demo::layer(rules), upstreams)).await
        }
        Mode::Handwritten => {
            let upstreams: HashMap<String, Upstream<Full<Bytes>>> = pools
                .iter()
                .map(|(name, addr)| (name.clone(), Upstream::new(*addr)))
                .collect();
            let state = Arc::new((rules, upstreams));
            let service = tower::service_fn(move |request: Request<Incoming>| {
                let state = Arc::clone(&state);
                async move { Ok::<_, Infallible>(handwritten_proxy(&state.0, &state.1, request).await) }
            });
            demo::serve(listener, service).await
        }
    }
}

/// The usual hand-written routing proxy: collect, parse, decide, forward.
async fn handwritten_proxy(
    rules: &RuleTable,
    upstreams: &HashMap<String, bbr_gateway::Upstream<Full<Bytes>>>,
    request: Request<Incoming>,
) -> http::Response<bbr_gateway::UpstreamBody> {
    let refuse = |status: StatusCode| {
        let mut response = http::Response::new(bbr_tower::ResponseBody::full(Bytes::new()));
        *response.status_mut() = status;
        response
    };
    let (mut parts, body) = request.into_parts();
    let Ok(collected) = body.collect().await else {
        return refuse(StatusCode::BAD_REQUEST);
    };
    let bytes = collected.to_bytes();
    let Ok(value) = serde_json::from_slice::<Value>(&bytes) else {
        return refuse(StatusCode::BAD_REQUEST);
    };
    parts.headers.remove("x-gateway-model-name");
    let Some(model) = value.get("model").and_then(Value::as_str) else {
        return refuse(StatusCode::BAD_REQUEST);
    };
    let Ok(Some(route)) = rules.route(model, None) else {
        return refuse(StatusCode::NOT_FOUND);
    };
    for (name, value) in route.headers() {
        parts.headers.insert(name.clone(), value.clone());
    }
    let Some(upstream) = route.pool().and_then(|pool| upstreams.get(pool)) else {
        return refuse(StatusCode::NOT_FOUND);
    };
    let mut upstream = upstream.clone();
    match upstream
        .call(Request::from_parts(parts, Full::new(bytes)))
        .await
    {
        Ok(response) => response,
        Err(never) => match never {},
    }
}

/// The handler: reads the whole body and answers with what it was routed by.
///
/// It does the same work in every mode (the routing fields are `null`
/// without routing) and borrows what it echoes, so that the modes differ by
/// the routing alone.
async fn complete(decision: Option<Decision>, request: Request) -> Response {
    #[derive(serde::Serialize)]
    struct Reply<'a> {
        object: &'static str,
        model: Option<&'a str>,
        pool: Option<&'a str>,
        bytes: usize,
    }
    let (parts, body) = request.into_parts();
    match body.collect().await {
        Ok(body) => Json(Reply {
            object: "chat.completion",
            model: parts
                .headers
                .get("x-gateway-model-name")
                .and_then(|v| v.to_str().ok()),
            pool: decision.as_ref().and_then(Decision::pool),
            bytes: body.to_bytes().len(),
        })
        .into_response(),
        Err(_) => StatusCode::BAD_REQUEST.into_response(),
    }
}

/// The usual hand-written middleware: collect, parse, route, rebuild.
async fn handwritten(request: Request, next: Next) -> Response {
    let (mut parts, body) = request.into_parts();
    let bytes: Bytes = match body.collect().await {
        Ok(collected) => collected.to_bytes(),
        Err(_) => return StatusCode::BAD_REQUEST.into_response(),
    };
    let value: Value = match serde_json::from_slice(&bytes) {
        Ok(value) => value,
        Err(_) => return StatusCode::BAD_REQUEST.into_response(),
    };
    parts.headers.remove("x-gateway-model-name");
    if let Some(model) = value.get("model").and_then(Value::as_str) {
        match HeaderValue::from_str(model) {
            Ok(v) => {
                parts.headers.insert("x-gateway-model-name", v);
            }
            Err(_) => return StatusCode::BAD_REQUEST.into_response(),
        }
    }
    next.run(Request::from_parts(parts, Body::from(bytes)))
        .await
}

/// A layer of the same shape as `ModelRoutingLayer` that routes nothing: it
/// takes a clone of the inner service per request (as a layer that waits
/// for the body must), adds a request extension, and hands on the request
/// body and the response body each in a type of its own (which axum boxes
/// again). What is left between it and the bare app is the cost of any
/// body-wrapping layer in an axum app; what is left between it and the
/// routing layer is the routing.
#[derive(Clone, Copy, Debug)]
struct PlumbingLayer;

#[derive(Clone, Debug)]
struct Plumbing<S> {
    inner: S,
}

/// The extension the plumbing layer adds.
#[derive(Clone, Copy, Debug)]
struct Passed;

/// A body of its own type: the identity on frames.
type Wrapped<B> = http_body_util::combinators::MapFrame<
    B,
    fn(http_body::Frame<Bytes>) -> http_body::Frame<Bytes>,
>;

impl<S> tower::Layer<S> for PlumbingLayer {
    type Service = Plumbing<S>;

    fn layer(&self, inner: S) -> Plumbing<S> {
        Plumbing { inner }
    }
}

impl<S, B, R> Service<http::Request<B>> for Plumbing<S>
where
    S: Service<http::Request<Wrapped<B>>, Response = http::Response<R>> + Clone,
    B: http_body::Body<Data = Bytes>,
    R: http_body::Body<Data = Bytes>,
{
    type Response = http::Response<Wrapped<R>>;
    type Error = S::Error;
    type Future =
        futures_util::future::MapOk<S::Future, fn(http::Response<R>) -> http::Response<Wrapped<R>>>;

    fn poll_ready(
        &mut self,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Result<(), S::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, mut request: http::Request<B>) -> Self::Future {
        use futures_util::TryFutureExt;
        let clone = self.inner.clone();
        let mut inner = std::mem::replace(&mut self.inner, clone);
        request.extensions_mut().insert(Passed);
        let wrap: fn(http::Response<R>) -> http::Response<Wrapped<R>> =
            |response| response.map(|body| body.map_frame(identity as fn(_) -> _));
        inner
            .call(request.map(|body| body.map_frame(identity as fn(_) -> _)))
            .map_ok(wrap)
    }
}

fn identity(frame: http_body::Frame<Bytes>) -> http_body::Frame<Bytes> {
    frame
}
