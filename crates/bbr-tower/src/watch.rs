//! Hot reload of a file (the rule table) for servers on tokio:
//! [`watch_file`] runs [`bbr_core::watch::FileWatch`] (stable reads, the
//! reload on a thread of its own) and logs each reload through `tracing`
//! (feature `watch`).

use std::{
    path::{Path, PathBuf},
    time::Duration,
};

use bbr_core::watch::FileWatch;
use tokio::task::JoinHandle;

/// Calls `reload` with `path` and the file's contents whenever the file
/// changes, checking every `interval` (for the rules file:
/// `move |p, text| rules.reload_text(p, text)`); aborting the returned
/// task stops the watch.
///
/// A file caught while it is being written is not loaded: after a change
/// the file is read again until two reads, a quarter of `interval` apart
/// (at least 50 ms), agree (see [`FileWatch`] for the rest).
///
/// `reload` runs on the watch's own thread, off the runtime that serves
/// requests. A reload that fails is logged (`tracing`) and, with the
/// `metrics` feature, counted in `bbr_rules_reload_failures_total`
/// (successes in `bbr_rules_reloads_total`); the caller keeps the previous
/// table. When the thread cannot be started, that is logged and the task
/// returned ends at once.
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
    let logged = move |path: &Path, text: &str| {
        let result = reload(path, text);
        match &result {
            Ok(()) => tracing::info!(path = %path.display(), "rules reloaded"),
            Err(e) => tracing::error!(error = %e,
                "rules not reloaded; the previous table stays in force"),
        }
        result
    };
    match FileWatch::start(path, interval, logged) {
        // The task only holds the watch: aborting it drops the watch,
        // which stops and joins the thread.
        Ok(watch) => tokio::spawn(async move {
            let _watch = watch;
            std::future::pending::<()>().await;
        }),
        Err(e) => {
            tracing::error!(error = %e, "cannot start the rules watch; the rules are not reloaded");
            tokio::spawn(async {})
        }
    }
}

#[cfg(test)]
mod tests {
    use std::sync::{Arc, Mutex};

    use super::*;

    /// Each text reloaded, with the thread it was reloaded on.
    type Seen = Arc<Mutex<Vec<(String, std::thread::ThreadId)>>>;

    #[tokio::test(flavor = "current_thread")]
    async fn reloads_run_off_the_runtime_thread_and_abort_stops_the_watch() {
        let dir = tempfile::Builder::new()
            .prefix("bbr-watch-tower-")
            .tempdir()
            .unwrap();
        let path = dir.path().join("rules.yaml");
        std::fs::write(&path, "a").unwrap();
        let seen: Seen = Arc::default();
        let log = Arc::clone(&seen);
        let watcher = watch_file(
            path.clone(),
            Duration::from_millis(20),
            move |_, text: &str| {
                log.lock()
                    .unwrap()
                    .push((text.to_owned(), std::thread::current().id()));
                Ok::<(), String>(())
            },
        );
        std::fs::write(&path, "bb").unwrap();
        for _ in 0..200 {
            if !seen.lock().unwrap().is_empty() {
                break;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        watcher.abort();
        assert!(watcher.await.unwrap_err().is_cancelled());
        // The watch's thread is joined: the reload closure, which holds
        // the other reference, is gone.
        assert_eq!(Arc::strong_count(&seen), 1);
        let (text, thread) = seen.lock().unwrap()[0].clone();
        assert_eq!(text, "bb");
        assert_ne!(
            thread,
            std::thread::current().id(),
            "reloaded on the runtime thread"
        );
    }
}
