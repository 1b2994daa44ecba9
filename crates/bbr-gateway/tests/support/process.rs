//! The `bbr-gateway` binary as a process of its own: started with flags on
//! loopback ports, its output collected, its memory read from
//! `/proc`, killed when dropped.

use std::{
    io::{BufRead, BufReader},
    net::SocketAddr,
    path::PathBuf,
    process::{Child, Command, Stdio},
    sync::{Arc, Mutex},
    time::Duration,
};

/// The `bbr-gateway` binary of this build (cargo builds a crate's
/// binaries before its integration tests).
pub fn gateway_binary() -> PathBuf {
    PathBuf::from(env!("CARGO_BIN_EXE_bbr-gateway"))
}

/// A running gateway process.
pub struct GatewayProcess {
    child: Child,
    /// Where it listens.
    pub addr: SocketAddr,
    /// Where its admin endpoints listen, with `--admin-listen`.
    pub admin: Option<SocketAddr>,
    stdout: Arc<Mutex<Vec<String>>>,
    stderr: Arc<Mutex<Vec<String>>>,
}

impl GatewayProcess {
    /// Starts the gateway with `--listen 127.0.0.1:0` and `args`, and waits
    /// (bounded) until it says where it listens.
    pub fn start(args: &[&str]) -> GatewayProcess {
        GatewayProcess::start_with_descriptors(None, args)
    }

    /// [`start`](Self::start), under a descriptor limit (soft and hard)
    /// of `nofile` when given (`prlimit`, as a container runtime would).
    pub fn start_with_descriptors(nofile: Option<u64>, args: &[&str]) -> GatewayProcess {
        GatewayProcess::spawn(nofile, None, args)
    }

    /// [`start`](Self::start), in the working directory `dir`.
    pub fn start_in(dir: &std::path::Path, args: &[&str]) -> GatewayProcess {
        GatewayProcess::spawn(None, Some(dir), args)
    }

    fn spawn(nofile: Option<u64>, dir: Option<&std::path::Path>, args: &[&str]) -> GatewayProcess {
        let mut command = match nofile {
            Some(n) => {
                let mut c = Command::new("prlimit");
                c.arg(format!("--nofile={n}:{n}")).arg(gateway_binary());
                c
            }
            None => Command::new(gateway_binary()),
        };
        if let Some(dir) = dir {
            command.current_dir(dir);
        }
        let mut child = command
            .args(["--listen", "127.0.0.1:0"])
            .args(args)
            .env("RUST_LOG", "info")
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("the gateway starts");
        let stdout = collect(child.stdout.take().expect("piped stdout"));
        let stderr = collect(child.stderr.take().expect("piped stderr"));
        let mut process = GatewayProcess {
            child,
            addr: SocketAddr::from(([127, 0, 0, 1], 0)),
            admin: None,
            stdout,
            stderr,
        };
        for _ in 0..600 {
            if let Some(addr) = process.announced("gateway listening on http://") {
                process.addr = addr;
                process.admin = process.announced("gateway admin endpoints on http://");
                return process;
            }
            if let Ok(Some(status)) = process.child.try_wait() {
                panic!(
                    "the gateway exited ({status}): {}",
                    process.stderr().join("\n")
                );
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        panic!("the gateway did not start: {}", process.stderr().join("\n"));
    }

    fn announced(&self, prefix: &str) -> Option<SocketAddr> {
        self.stdout.lock().unwrap().iter().find_map(|line| {
            let rest = line.strip_prefix(prefix)?;
            rest.split_whitespace().next()?.parse().ok()
        })
    }

    pub fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.addr)
    }

    pub fn admin_url(&self, path: &str) -> String {
        format!("http://{}{path}", self.admin.expect("--admin-listen"))
    }

    /// The lines it wrote on stdout so far.
    pub fn stdout(&self) -> Vec<String> {
        self.stdout.lock().unwrap().clone()
    }

    /// The process id.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// What it wrote on stderr so far (its log), line by line.
    pub fn stderr(&self) -> Vec<String> {
        self.stderr.lock().unwrap().clone()
    }

    /// Waits (bounded) for a log line holding every one of `parts`.
    pub async fn log_line(&self, parts: &[&str]) -> String {
        for _ in 0..200 {
            let found = self
                .stderr()
                .into_iter()
                .find(|line| parts.iter().all(|p| line.contains(p)));
            if let Some(line) = found {
                return line;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        panic!(
            "no log line with {parts:?} in:\n{}",
            self.stderr().join("\n")
        );
    }

    /// A field of `/proc/<pid>/status` in KiB (`VmHWM`: the peak resident
    /// set; `VmRSS`: the resident set now).
    pub fn memory_kib(&self, field: &str) -> u64 {
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.pid()))
            .expect("/proc/<pid>/status");
        status
            .lines()
            .find_map(|line| {
                let rest = line.strip_prefix(field)?.strip_prefix(':')?;
                rest.trim().trim_end_matches("kB").trim().parse().ok()
            })
            .unwrap_or_else(|| panic!("no {field} in /proc/<pid>/status"))
    }

    /// Sends SIGTERM (a graceful drain).
    pub fn terminate(&self) {
        let pid = rustix::process::Pid::from_raw(self.pid() as i32).expect("a pid");
        rustix::process::kill_process(pid, rustix::process::Signal::TERM).expect("SIGTERM");
    }

    /// Waits (bounded) for the process to exit.
    pub async fn exited(&mut self) -> std::process::ExitStatus {
        for _ in 0..600 {
            if let Some(status) = self.child.try_wait().expect("wait") {
                return status;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        panic!("the gateway did not exit");
    }
}

impl Drop for GatewayProcess {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn collect(stream: impl std::io::Read + Send + 'static) -> Arc<Mutex<Vec<String>>> {
    let lines = Arc::new(Mutex::new(Vec::new()));
    let sink = Arc::clone(&lines);
    std::thread::spawn(move || {
        for line in BufReader::new(stream).lines() {
            let Ok(line) = line else { break };
            sink.lock().unwrap().push(line);
        }
    });
    lines
}
