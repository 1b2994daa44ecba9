//! `bbr-gateway`: routes OpenAI-style requests on the `model` in their body
//! to model pools — simulated ones by default, real OpenAI-compatible
//! servers with `--pool NAME=URL`.
//!
//! ```sh
//! cargo run --release -p bbr-gateway
//! curl -X POST -i localhost:8080/v1/chat/completions -H "Content-Type: application/json" \
//!   -d '{"model":"chatbot","messages":[{"role":"user","content":"What is the color of the sky?"}],"max_tokens":100,"temperature":0}'
//! ```
//!
//! Run with `--help` for the flags; `docs/gateway.md` describes them, the
//! endpoints, the log line, the metrics and the rules reload.

#![forbid(unsafe_code)]

use std::process::ExitCode;

use clap::Parser;

#[tokio::main]
async fn main() -> ExitCode {
    bbr_gateway::cli::run(bbr_gateway::cli::Flags::parse()).await
}
