//! Runs simulated OpenAI-compatible model pools on given loopback ports, for
//! gateways other than the demo's (the Envoy demo points its clusters here).
//!
//! ```sh
//! cargo run --release -p bbr-examples --example pools -- \
//!     --pool gemma3=127.0.0.1:8001 --pool deepseek-r1=127.0.0.1:8002
//! ```
//!
//! Each pool answers in OpenAI format with the request's model and the
//! header `x-inference-pool: <pool>`; `"stream": true` gets server-sent events.

use std::{net::SocketAddr, process::ExitCode, time::Duration};

use bbr_gateway::simulated::{SimulatedPool, parse_pool};
use clap::Parser;

/// Runs simulated model pools.
#[derive(Debug, Parser)]
#[command(name = "pools")]
struct Args {
    /// A pool to run, as NAME=ADDR (repeatable).
    #[arg(long = "pool", value_parser = parse_pool,
          default_values = ["gemma3=127.0.0.1:8001", "deepseek-r1=127.0.0.1:8002"])]
    pools: Vec<(String, SocketAddr)>,
    /// Pause between two streamed tokens, in milliseconds.
    #[arg(long, default_value_t = 20)]
    token_delay_ms: u64,
}

#[tokio::main]
async fn main() -> ExitCode {
    let args = Args::parse();
    let mut tasks = Vec::new();
    for (name, addr) in &args.pools {
        let pool = SimulatedPool::new(name).token_delay(Duration::from_millis(args.token_delay_ms));
        match pool.spawn(*addr).await {
            Ok((bound, task)) => {
                println!("pool {name} listening on http://{bound}");
                tasks.push(task);
            }
            Err(e) => {
                eprintln!("pools: cannot start pool {name} on {addr}: {e}");
                return ExitCode::FAILURE;
            }
        }
    }
    let _ = tokio::signal::ctrl_c().await;
    for task in tasks {
        task.abort();
    }
    ExitCode::SUCCESS
}
