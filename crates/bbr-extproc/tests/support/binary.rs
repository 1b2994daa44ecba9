//! The `bbr-extproc` binary, run as a child process on free ports.

use std::{
    io::{BufRead, BufReader},
    net::SocketAddr,
    process::{Child, Command, Stdio},
};

/// The flags that put every listener of the binary on a free loopback port.
pub const FREE_PORTS: [&str; 8] = [
    "--address",
    "127.0.0.1",
    "--grpc-port",
    "0",
    "--grpc-health-port",
    "0",
    "--metrics-port",
    "0",
];

/// A running `bbr-extproc`, killed when dropped.
pub struct ServerProcess(pub Child);

impl Drop for ServerProcess {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Starts the binary with `args` on free ports and reads them from its
/// first line of output: the process, then the gRPC, health and metrics
/// addresses.
pub fn start_binary(args: &[&str]) -> (ServerProcess, SocketAddr, SocketAddr, SocketAddr) {
    start_binary_with_env(args, &[])
}

/// [`start_binary`] with extra environment variables.
pub fn start_binary_with_env(
    args: &[&str],
    env: &[(&str, &str)],
) -> (ServerProcess, SocketAddr, SocketAddr, SocketAddr) {
    let mut child = Command::new(env!("CARGO_BIN_EXE_bbr-extproc"))
        .envs(env.iter().copied())
        .args(FREE_PORTS)
        .args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .expect("cannot start bbr-extproc");
    let mut line = String::new();
    BufReader::new(child.stdout.take().unwrap())
        .read_line(&mut line)
        .unwrap();
    let process = ServerProcess(child);
    let addr = |key: &str| -> SocketAddr {
        line.split_whitespace()
            .find_map(|w| w.strip_prefix(key))
            .and_then(|a| a.parse().ok())
            .unwrap_or_else(|| panic!("no {key} in {line:?}"))
    };
    let (grpc, health, metrics) = (addr("grpc="), addr("grpc-health="), addr("metrics="));
    (process, grpc, health, metrics)
}
