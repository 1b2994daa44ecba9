//! The multi-model gateway demo: routes OpenAI-style requests on the
//! `model` in their body to two simulated model pools.
//!
//! ```sh
//! cargo run --release -p bbr-examples --example gateway
//! curl -X POST -i localhost:8080/v1/chat/completions -H "Content-Type: application/json" \
//!   -d '{"model":"chatbot","messages":[{"role":"user","content":"What is the color of the sky?"}],"max_tokens":100,"temperature":0}'
//! ```
//!
//! Options: `--listen ADDR` (default `127.0.0.1:8080`), `--rules FILE`
//! (default `examples/config/gateway.yaml`), `--pool NAME` (repeatable;
//! default `gemma3` and `deepseek-r1`), `--policy strict|fast`,
//! `--token-delay-ms N` (pause between streamed tokens, default 20),
//! `--max-connections N` (4096), `--header-read-timeout-secs N` (10),
//! `--drain-timeout-secs N` (30: on SIGINT or SIGTERM, open streams may
//! finish for that long).

use std::{net::SocketAddr, path::PathBuf, process::ExitCode, time::Duration};

use bbr_core::Policy;
use bbr_core::rules::RuleTable;
use bbr_examples::{gateway, pool::SimulatedPool};
use clap::Parser;
use tokio::net::TcpListener;

/// Routes OpenAI-style requests on the `model` in their body to simulated pools.
#[derive(Debug, Parser)]
#[command(name = "gateway")]
struct Args {
    /// Address to listen on.
    #[arg(long, default_value = "127.0.0.1:8080")]
    listen: SocketAddr,
    /// The rule table (YAML or JSON).
    #[arg(long, default_value = concat!(env!("CARGO_MANIFEST_DIR"), "/config/gateway.yaml"))]
    rules: PathBuf,
    /// A simulated pool to run (repeatable).
    #[arg(long = "pool", default_values = ["gemma3", "deepseek-r1"])]
    pools: Vec<String>,
    /// Extraction policy: strict (scan the whole body) or fast.
    #[arg(long, default_value = "strict")]
    policy: Policy,
    /// Pause between two streamed tokens, in milliseconds.
    #[arg(long, default_value_t = 20)]
    token_delay_ms: u64,
    /// The most client connections served at once.
    #[arg(long, default_value_t = 4096)]
    max_connections: usize,
    /// How long a client may take to send a request's headers, in seconds.
    #[arg(long, default_value_t = 10)]
    header_read_timeout_secs: u64,
    /// On SIGINT or SIGTERM, how long open requests (token streams) may
    /// take to finish, in seconds.
    #[arg(long, default_value_t = 30)]
    drain_timeout_secs: u64,
}

#[tokio::main]
async fn main() -> ExitCode {
    let args = Args::parse();
    let rules = match RuleTable::from_path(&args.rules) {
        Ok(rules) => rules,
        Err(e) => {
            eprintln!("gateway: {e}");
            return ExitCode::from(2);
        }
    };

    let mut pools = Vec::new();
    for name in &args.pools {
        let pool = SimulatedPool::new(name).token_delay(Duration::from_millis(args.token_delay_ms));
        match pool.spawn(SocketAddr::from(([127, 0, 0, 1], 0))).await {
            Ok((addr, _task)) => {
                println!("pool {name:<12} simulated at http://{addr}");
                pools.push((name.clone(), addr));
            }
            Err(e) => {
                eprintln!("gateway: cannot start pool {name}: {e}");
                return ExitCode::FAILURE;
            }
        }
    }

    let listener = match TcpListener::bind(args.listen).await {
        Ok(listener) => listener,
        Err(e) => {
            eprintln!("gateway: cannot listen on {}: {e}", args.listen);
            return ExitCode::FAILURE;
        }
    };
    let layer = gateway::layer(rules).policy(args.policy);
    let service = gateway::gateway(layer, &pools);
    println!(
        "gateway listening on http://{} (rules: {})",
        args.listen,
        args.rules.display()
    );
    println!(
        "try: curl -X POST -i {}/v1/chat/completions -H 'Content-Type: application/json' -d '{{\"model\":\"chatbot\",\"messages\":[{{\"role\":\"user\",\"content\":\"What is the color of the sky?\"}}]}}'",
        args.listen
    );
    let options = gateway::ServeOptions {
        header_read_timeout: Duration::from_secs(args.header_read_timeout_secs),
        max_connections: args.max_connections,
        drain_timeout: Duration::from_secs(args.drain_timeout_secs),
    };
    gateway::serve_with(listener, service, options, shutdown_signal()).await;
    println!("gateway: stopped");
    ExitCode::SUCCESS
}

/// SIGINT (ctrl-c) or SIGTERM: stop accepting, let open requests finish.
async fn shutdown_signal() {
    let mut term = match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
        Ok(term) => term,
        Err(e) => {
            eprintln!("gateway: no SIGTERM handler ({e}); ctrl-c only");
            let _ = tokio::signal::ctrl_c().await;
            println!("gateway: draining open requests");
            return;
        }
    };
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        _ = term.recv() => {}
    }
    println!("gateway: draining open requests");
}
