//! A real Envoy for the end-to-end tests, from `$BBR_ENVOY` or installed by
//! `scripts/install-envoy.sh`, on loopback ports it picks itself, killed on drop.

use std::{
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    sync::OnceLock,
    time::{Duration, Instant},
};

use super::http::{self, Reply};

fn workspace_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..")
}

/// The Envoy binary: `$BBR_ENVOY`, or the one the install script provides.
/// Panics with a clear message when neither works: these tests never pass
/// without a real Envoy.
pub fn binary() -> PathBuf {
    try_binary().unwrap_or_else(|e| panic!("{e}"))
}

/// The Envoy binary, or why there is none (the install script failed).
pub fn try_binary() -> Result<PathBuf, String> {
    static BIN: OnceLock<Result<PathBuf, String>> = OnceLock::new();
    BIN.get_or_init(|| {
        if let Some(path) = std::env::var_os("BBR_ENVOY").filter(|p| !p.is_empty()) {
            let path = PathBuf::from(path);
            assert!(path.is_file(), "BBR_ENVOY={} is not a file", path.display());
            return Ok(path);
        }
        let script = workspace_root().join("scripts/install-envoy.sh");
        let out = Command::new(&script)
            .stderr(Stdio::inherit())
            .output()
            .map_err(|e| {
                format!(
                    "cannot run {}: {e}; set BBR_ENVOY to an envoy binary",
                    script.display()
                )
            })?;
        if !out.status.success() {
            return Err(format!(
                "{} failed ({}); set BBR_ENVOY to an envoy binary",
                script.display(),
                out.status
            ));
        }
        let path = PathBuf::from(String::from_utf8_lossy(&out.stdout).trim());
        assert!(
            path.is_file(),
            "install-envoy.sh printed {path:?}, not an envoy binary"
        );
        Ok(path)
    })
    .clone()
}

/// The ports an Envoy configuration template needs.
pub struct Ports {
    pub bbr: u16,
    pub gemma3: u16,
    pub deepseek: u16,
}

/// A running Envoy. Its log goes to a file, shown only when the test fails:
/// Envoy's warnings about its own configuration are noise in a passing run.
pub struct Envoy {
    child: Child,
    dir: PathBuf,
    pub port: u16,
    /// The admin interface.
    pub admin: std::net::SocketAddr,
}

impl Envoy {
    /// Envoy's log so far.
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.join("envoy.log")).unwrap_or_default()
    }
}

impl Drop for Envoy {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        if std::thread::panicking() {
            eprintln!("--- envoy log ---\n{}--- end of envoy log ---", self.log());
        }
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// Fills a template of `examples/envoy/` with the ports (listener and admin on 0).
pub fn config(template: &str, ports: &Ports) -> String {
    let text = std::fs::read_to_string(workspace_root().join("examples/envoy").join(template))
        .unwrap_or_else(|e| panic!("cannot read template {template}: {e}"));
    text.replace("${ADMIN_PORT}", "0")
        .replace("${LISTEN_PORT}", "0")
        .replace("${BBR_PORT}", &ports.bbr.to_string())
        .replace("${GEMMA3_PORT}", &ports.gemma3.to_string())
        .replace("${DEEPSEEK_PORT}", &ports.deepseek.to_string())
}

impl Envoy {
    /// Starts Envoy with `config` and waits until it is ready.
    pub async fn start(config: &str) -> Envoy {
        Envoy::start_with_env(config, &[]).await
    }

    /// [`start`](Envoy::start) with environment variables set for Envoy
    /// (such as `ENVOY_DYNAMIC_MODULES_SEARCH_PATH`).
    pub async fn start_with_env(config: &str, env: &[(&str, &Path)]) -> Envoy {
        static SEQ: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
        let n = SEQ.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let dir = std::env::temp_dir().join(format!("bbr-envoy-{}-{n}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let config_path = dir.join("envoy.yaml");
        std::fs::write(&config_path, config).unwrap();
        let admin_path = dir.join("admin-address");
        let log = std::fs::File::create(dir.join("envoy.log")).unwrap();
        let child = Command::new(binary())
            .arg("-c")
            .arg(&config_path)
            .arg("--admin-address-path")
            .arg(&admin_path)
            .args([
                "--concurrency",
                "1",
                "--disable-hot-restart",
                "-l",
                "warning",
            ])
            .envs(env.iter().copied())
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .expect("cannot start envoy");
        let mut envoy = Envoy {
            child,
            dir,
            port: 0,
            admin: std::net::SocketAddr::from(([127, 0, 0, 1], 0)),
        };
        let deadline = Instant::now() + Duration::from_secs(60);
        let admin = loop {
            if let Some(status) = envoy.child.try_wait().unwrap() {
                panic!("envoy exited at startup: {status}");
            }
            if let Ok(text) = std::fs::read_to_string(&admin_path)
                && let Ok(addr) = text.trim().parse::<std::net::SocketAddr>()
            {
                break addr;
            }
            assert!(Instant::now() < deadline, "envoy did not start in time");
            tokio::time::sleep(Duration::from_millis(50)).await;
        };
        loop {
            if let Ok(Reply {
                status: 200, body, ..
            }) = http::get(admin, "/listeners?format=json").await
            {
                let v: serde_json::Value = serde_json::from_slice(&body).unwrap_or_default();
                let port =
                    v["listener_statuses"][0]["local_address"]["socket_address"]["port_value"]
                        .as_u64()
                        .unwrap_or(0);
                if port != 0
                    && let Ok(Reply { status: 200, .. }) = http::get(admin, "/ready").await
                {
                    envoy.port = port as u16;
                    envoy.admin = admin;
                    return envoy;
                }
            }
            assert!(
                Instant::now() < deadline,
                "envoy did not become ready in time"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    pub fn addr(&self) -> std::net::SocketAddr {
        std::net::SocketAddr::from(([127, 0, 0, 1], self.port))
    }
}
