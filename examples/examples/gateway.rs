//! A gateway of one's own from the `bbr-gateway` library: the demo's rule
//! table, two simulated pools, the health endpoints and one access log
//! line per request, served until ctrl-c. The `bbr-gateway` binary does
//! the same with flags, metrics, real pools and a rules reload.
//!
//! ```sh
//! cargo run -p bbr-examples --example gateway   # listens on 127.0.0.1:3001
//! curl -X POST -i localhost:3001/v1/chat/completions -H 'Content-Type: application/json' \
//!   -d '{"model":"chatbot","messages":[{"role":"user","content":"Hello"}]}'
//! ```

use std::{error::Error, io::IsTerminal, net::SocketAddr};

use bbr_core::{Policy, rules::RuleTable};
use bbr_gateway::{Admin, Front, Readiness, ServeOptions, Upstream, simulated::SimulatedPool};
use tokio::net::TcpListener;

#[tokio::main]
async fn main() -> Result<(), Box<dyn Error>> {
    // The access log (target `gateway::access`) in the gateway's format,
    // on stderr, coloured on a terminal only.
    tracing_subscriber::fmt()
        .with_ansi(std::io::stderr().is_terminal())
        .event_format(bbr_gateway::log::LineFormat)
        .with_writer(std::io::stderr)
        .init();
    let rules = RuleTable::from_yaml(bbr_gateway::DEMO_RULES)?;

    // One upstream per pool the rules name; here a simulated server each
    // (`Upstream::balanced` takes several real ones).
    let mut pools = Vec::new();
    let mut servers = Vec::new();
    for name in ["gemma3", "deepseek-r1"] {
        let (addr, task) = SimulatedPool::new(name)
            .spawn(SocketAddr::from(([127, 0, 0, 1], 0)))
            .await?;
        println!("pool {name} at http://{addr}");
        pools.push((name.to_owned(), Upstream::new(addr)));
        servers.push(task);
    }

    let layer = bbr_gateway::layer(rules).policy(Policy::Fast);
    let readiness = Readiness::default();
    let admin = Admin::new(readiness.clone(), None);
    let service = Front::new(bbr_gateway::gateway(layer, pools), Some(admin));

    let listener = TcpListener::bind("127.0.0.1:3001").await?;
    println!("gateway listening on http://{}", listener.local_addr()?);
    readiness.set(true);
    let shutdown = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    bbr_gateway::serve_with(listener, service, ServeOptions::default(), shutdown).await;
    for task in servers {
        task.abort();
    }
    Ok(())
}
