//! Hot reload of a file (the rule table): [`watch_file`] polls it and
//! hands each settled new text to a reload function, off the runtime's
//! threads. The ext_proc server and the demo gateway both reload their
//! rules with it (feature `watch`).

use std::{
    path::{Path, PathBuf},
    time::{Duration, SystemTime},
};

use tokio::task::JoinHandle;

/// Calls `reload` with `path` and the file's contents whenever the file
/// changes, checking every `interval` (for the rules file:
/// `move |p, text| rules.reload_text(p, text)`).
///
/// Polling the file's modification time and length (following symbolic
/// links) also sees the atomic symlink swap by which Kubernetes updates a
/// mounted ConfigMap. A file caught while it is being written is not
/// loaded: after a change the file is read again until two reads, a
/// quarter of `interval` apart (at least 50 ms), agree. Editors and tools
/// that write in place can still be caught between two writes; replace the
/// file atomically (write a new file, then rename it over the old one).
///
/// `reload` runs on a blocking thread, off the runtime that serves
/// requests. A reload that fails is logged (`tracing`) and, with the
/// `metrics` feature, counted in `bbr_rules_reload_failures_total`
/// (successes in `bbr_rules_reloads_total`); the caller keeps the previous
/// table.
///
/// ```no_run
/// use std::time::Duration;
/// use bbr_core::rules::SharedRules;
/// use bbr_tower::{ModelRoutingLayer, watch::watch_file};
///
/// # async fn run() -> Result<(), Box<dyn std::error::Error>> {
/// let path = std::path::PathBuf::from("rules.yaml");
/// let rules = SharedRules::new(bbr_core::rules::RuleTable::from_path(&path)?);
/// let layer = ModelRoutingLayer::new().shared_rules(rules.clone());
/// let watcher = watch_file(path, Duration::from_secs(2), move |p, text| rules.reload_text(p, text));
/// # drop((layer, watcher));
/// # Ok(())
/// # }
/// ```
pub fn watch_file<F, E>(path: PathBuf, interval: Duration, reload: F) -> JoinHandle<()>
where
    F: Fn(&Path, &str) -> Result<(), E> + Send + Sync + 'static,
    E: std::fmt::Display + Send + 'static,
{
    let reload = std::sync::Arc::new(reload);
    let settle = (interval / 4).max(Duration::from_millis(50));
    tokio::spawn(async move {
        let mut last = stamp(&path);
        let mut ticker = tokio::time::interval(interval);
        ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            ticker.tick().await;
            let now = stamp(&path);
            if now == last {
                continue;
            }
            let Some(text) = settled_text(&path, settle).await else {
                // Still changing, or gone: try again at the next tick.
                continue;
            };
            last = stamp(&path);
            let (reload, file) = (std::sync::Arc::clone(&reload), path.clone());
            let result = tokio::task::spawn_blocking(move || {
                reload(&file, &text).map_err(|e| e.to_string())
            })
            .await
            .unwrap_or_else(|e| Err(format!("the reload panicked: {e}")));
            match result {
                Ok(()) => {
                    #[cfg(feature = "metrics")]
                    bbr_core::metrics::record_rules_reload(true);
                    tracing::info!(path = %path.display(), "rules reloaded");
                }
                Err(e) => {
                    #[cfg(feature = "metrics")]
                    bbr_core::metrics::record_rules_reload(false);
                    tracing::error!(error = %e, "rules not reloaded; the previous table stays in force");
                }
            }
        }
    })
}

/// The file's contents once two reads `settle` apart agree (at most a few
/// tries); `None` while it keeps changing or cannot be read.
async fn settled_text(path: &Path, settle: Duration) -> Option<String> {
    let mut previous = tokio::fs::read_to_string(path).await.ok()?;
    for _ in 0..5 {
        tokio::time::sleep(settle).await;
        let text = tokio::fs::read_to_string(path).await.ok()?;
        if text == previous {
            return Some(text);
        }
        previous = text;
    }
    None
}

fn stamp(path: &Path) -> Option<(SystemTime, u64)> {
    let meta = std::fs::metadata(path).ok()?;
    Some((meta.modified().ok()?, meta.len()))
}

#[cfg(test)]
mod tests {
    use std::sync::{Arc, Mutex};

    use super::*;

    /// A `rules.yaml` path in a directory of its own, removed with the
    /// returned guard (also when the test fails).
    fn temp_file(name: &str) -> (tempfile::TempDir, PathBuf) {
        let dir = tempfile::Builder::new()
            .prefix(&format!("bbr-watch-{name}-"))
            .tempdir()
            .unwrap();
        let path = dir.path().join("rules.yaml");
        (dir, path)
    }

    /// Each text reloaded, with the thread it was reloaded on.
    type Seen = Arc<Mutex<Vec<(String, std::thread::ThreadId)>>>;

    /// Watches `path`, recording each reload.
    fn record(path: &Path) -> (JoinHandle<()>, Seen) {
        let seen = Arc::new(Mutex::new(Vec::new()));
        let log = Arc::clone(&seen);
        let watcher = watch_file(
            path.to_owned(),
            Duration::from_millis(400),
            move |_, text: &str| {
                log.lock()
                    .unwrap()
                    .push((text.to_owned(), std::thread::current().id()));
                Ok::<(), String>(())
            },
        );
        (watcher, seen)
    }

    async fn wait_for(seen: &Seen, n: usize) {
        for _ in 0..100 {
            if seen.lock().unwrap().len() >= n {
                return;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        panic!("no reload within 5 s");
    }

    #[tokio::test(flavor = "current_thread")]
    async fn reloads_run_off_the_runtime_thread() {
        let (_dir, path) = temp_file("thread");
        std::fs::write(&path, "a").unwrap();
        let (watcher, seen) = record(&path);
        tokio::time::sleep(Duration::from_millis(100)).await;
        std::fs::write(&path, "bb").unwrap();
        wait_for(&seen, 1).await;
        watcher.abort();
        let (text, thread) = seen.lock().unwrap()[0].clone();
        assert_eq!(text, "bb");
        assert_ne!(
            thread,
            std::thread::current().id(),
            "reloaded on the runtime thread"
        );
    }

    #[tokio::test]
    async fn the_text_is_taken_once_two_reads_agree() {
        let (_dir, path) = temp_file("settle");
        std::fs::write(&path, "rules: [{pool: deeps").unwrap();
        let writer = {
            let path = path.clone();
            tokio::spawn(async move {
                tokio::time::sleep(Duration::from_millis(20)).await;
                std::fs::write(&path, "rules: [{pool: deepseek-r1}]").unwrap();
            })
        };
        let text = settled_text(&path, Duration::from_millis(300)).await;
        writer.await.unwrap();
        assert_eq!(text.as_deref(), Some("rules: [{pool: deepseek-r1}]"));
    }

    #[tokio::test]
    async fn a_file_caught_half_written_is_not_loaded() {
        let (_dir, path) = temp_file("half");
        std::fs::write(&path, "rules: []").unwrap();
        let (watcher, seen) = record(&path);
        tokio::time::sleep(Duration::from_millis(100)).await;
        // A writer that takes two writes, a few milliseconds apart; the
        // first alone is valid YAML that names a cut pool.
        let whole = "rules: [{name: a, match: {model: {exact: a}}, pool: deepseek-r1}]";
        for _ in 0..3 {
            std::fs::write(&path, &whole[..whole.len() - 7]).unwrap();
            tokio::time::sleep(Duration::from_millis(5)).await;
            std::fs::write(&path, whole).unwrap();
            tokio::time::sleep(Duration::from_millis(450)).await;
            std::fs::write(&path, "rules: []").unwrap();
            tokio::time::sleep(Duration::from_millis(450)).await;
        }
        wait_for(&seen, 1).await;
        watcher.abort();
        let seen = seen.lock().unwrap();
        for (text, _) in seen.iter() {
            assert!(text == whole || text == "rules: []", "loaded {text:?}");
        }
    }
}
