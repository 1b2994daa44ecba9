//! The `bbr-extproc` binary, run as a child process on free ports.
//!
//! The binary is the one cargo built for these tests, or the program that
//! `BBR_EXTPROC_BIN` names: a release artefact, or a script that runs one
//! for another architecture under emulation (`exec qemu-aarch64 BINARY
//! "$@"`: the child is then the emulator, and killing it stops the
//! server).

use std::{
    io::{BufRead, BufReader},
    net::SocketAddr,
    path::PathBuf,
    process::{Child, Command, Stdio},
    sync::atomic::{AtomicU32, Ordering},
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

/// The program the tests run as `bbr-extproc`: `BBR_EXTPROC_BIN` when set
/// and not empty, else the binary cargo built.
pub fn path() -> PathBuf {
    std::env::var_os("BBR_EXTPROC_BIN")
        .filter(|p| !p.is_empty())
        .map_or_else(|| env!("CARGO_BIN_EXE_bbr-extproc").into(), PathBuf::from)
}

/// A running `bbr-extproc`, killed when dropped. Its log (stderr) goes to
/// a file, shown only when the test fails: some tests provoke the errors it
/// logs.
pub struct ServerProcess(pub Child, PathBuf);

impl ServerProcess {
    /// What it logged so far.
    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.1).unwrap_or_default()
    }
}

impl Drop for ServerProcess {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
        if std::thread::panicking() {
            let log = std::fs::read_to_string(&self.1).unwrap_or_default();
            eprintln!("--- bbr-extproc log ---\n{log}--- end of bbr-extproc log ---");
        }
        let _ = std::fs::remove_file(&self.1);
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
    start(None, args, env)
}

/// [`start_binary`] under a descriptor limit (soft and hard) of `nofile`,
/// set with `prlimit` as a container runtime would.
pub fn start_binary_with_descriptors(
    nofile: u64,
    args: &[&str],
) -> (ServerProcess, SocketAddr, SocketAddr, SocketAddr) {
    start(Some(nofile), args, &[])
}

fn start(
    nofile: Option<u64>,
    args: &[&str],
    env: &[(&str, &str)],
) -> (ServerProcess, SocketAddr, SocketAddr, SocketAddr) {
    static SEQ: AtomicU32 = AtomicU32::new(0);
    let log_path = std::env::temp_dir().join(format!(
        "bbr-extproc-{}-{}.log",
        std::process::id(),
        SEQ.fetch_add(1, Ordering::Relaxed)
    ));
    let log = std::fs::File::create(&log_path).expect("cannot create the log file");
    let binary = path();
    let mut command = match nofile {
        Some(n) => {
            let mut c = Command::new("prlimit");
            c.arg(format!("--nofile={n}:{n}")).arg(binary);
            c
        }
        None => Command::new(binary),
    };
    let mut child = command
        .envs(env.iter().copied())
        .args(FREE_PORTS)
        .args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(log)
        .spawn()
        .expect("cannot start bbr-extproc");
    let mut line = String::new();
    BufReader::new(child.stdout.take().unwrap())
        .read_line(&mut line)
        .unwrap();
    let process = ServerProcess(child, log_path);
    let addr = |key: &str| -> SocketAddr {
        line.split_whitespace()
            .find_map(|w| w.strip_prefix(key))
            .and_then(|a| a.parse().ok())
            .unwrap_or_else(|| panic!("no {key} in {line:?}"))
    };
    let (grpc, health, metrics) = (addr("grpc="), addr("grpc-health="), addr("metrics="));
    (process, grpc, health, metrics)
}
