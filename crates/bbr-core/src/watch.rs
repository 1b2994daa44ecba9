//! Hot reload of a file (the rule table): [`FileWatch`] polls the file and
//! hands each settled new text to a reload function, on a thread of its own.
//!
//! Plain `std`, no runtime: the Envoy module runs it as it is, and the
//! servers on tokio run it too. The reload (compiling a rule table) is
//! blocking work; on a thread of its own it stays off the threads that
//! serve requests, without holding a slot of a runtime's blocking pool for
//! the life of the server. The new table is swapped in atomically
//! ([`SharedRules`](crate::rules::SharedRules)): requests never wait for a
//! reload.
//!
//! ```no_run
//! use std::time::Duration;
//! use bbr_core::{rules::{RuleTable, SharedRules}, watch::FileWatch};
//!
//! # fn main() -> Result<(), Box<dyn std::error::Error>> {
//! let path = std::path::PathBuf::from("rules.yaml");
//! let rules = SharedRules::new(RuleTable::from_path(&path)?);
//! let reloading = rules.clone();
//! let watch = FileWatch::start(path, Duration::from_secs(1), move |path, text| {
//!     let result = reloading.reload_text(path, text);
//!     if let Err(e) = &result {
//!         eprintln!("rules not reloaded; the previous table stays in force: {e}");
//!     }
//!     result
//! })?;
//! // … serve with `rules`; dropping `watch` stops the watch.
//! # drop((rules, watch));
//! # Ok(())
//! # }
//! ```

use std::{
    io,
    panic::{AssertUnwindSafe, catch_unwind},
    path::{Path, PathBuf},
    sync::mpsc,
    thread,
    time::{Duration, SystemTime},
};

/// The shortest poll interval: a shorter one is taken as this.
pub const MIN_INTERVAL: Duration = Duration::from_millis(10);

/// The shortest pause between the reads that must agree.
pub const MIN_SETTLE: Duration = Duration::from_millis(50);

/// How many times a changed file is read again, [`settle`](settle_for)
/// apart, before the change is left for the next poll.
const SETTLE_TRIES: usize = 5;

/// A watch of one file, polled on a thread of its own; dropping it stops
/// the watch and waits for the thread (at most the reload in progress).
///
/// Polling the file's modification time and length (following symbolic
/// links) also sees the atomic symlink swap by which Kubernetes updates a
/// mounted ConfigMap. A file caught while it is being written is not
/// loaded: after a change the file is read again until two reads, a
/// quarter of the interval apart (at least [`MIN_SETTLE`]), agree. Editors
/// and tools that write in place can still be caught between two writes
/// that lie further apart; replace the file atomically (write a new file,
/// then rename it over the old one).
#[derive(Debug)]
pub struct FileWatch {
    stop: Option<mpsc::Sender<()>>,
    thread: Option<thread::JoinHandle<()>>,
}

impl FileWatch {
    /// Calls `reload` with `path` and the file's contents whenever the file
    /// changes, checking every `interval` (at least [`MIN_INTERVAL`]). For
    /// the rules file: `move |p, text| rules.reload_text(p, text)`.
    ///
    /// `reload` runs on the watch's thread. What it returns is counted,
    /// with the `metrics` feature, in `bbr_rules_reloads_total` (`Ok`) or
    /// `bbr_rules_reload_failures_total` (`Err`, or a panic, after which
    /// the watch goes on); saying why a file was refused is the caller's
    /// (`reload` can log its own error).
    ///
    /// Fails when the thread cannot be started.
    pub fn start<F, E>(path: PathBuf, interval: Duration, mut reload: F) -> io::Result<FileWatch>
    where
        F: FnMut(&Path, &str) -> Result<(), E> + Send + 'static,
    {
        let interval = interval.max(MIN_INTERVAL);
        let settle = settle_for(interval);
        let (stop, stopped) = mpsc::channel::<()>();
        // Taken now, not on the thread: a change right after `start`
        // returns is a change.
        let mut last = stamp(&path);
        let thread = thread::Builder::new()
            .name("bbr-rules-watch".to_owned())
            .spawn(move || {
                let pause = |d| go_on(&stopped, d);
                while pause(interval) {
                    if stamp(&path) == last {
                        continue;
                    }
                    let Some((text, seen)) = settled_text(&path, || pause(settle)) else {
                        // Still changing, gone, or the watch stopped: the
                        // loop's pause tells which.
                        continue;
                    };
                    last = seen;
                    let result = catch_unwind(AssertUnwindSafe(|| reload(&path, &text)));
                    record(matches!(result, Ok(Ok(()))));
                }
            })?;
        Ok(FileWatch {
            stop: Some(stop),
            thread: Some(thread),
        })
    }
}

impl Drop for FileWatch {
    fn drop(&mut self) {
        // The thread wakes at once on the closed channel. It must be gone
        // before the code it runs may be unloaded (the Envoy module).
        drop(self.stop.take());
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

/// The pause between the reads of a changed file that must agree.
fn settle_for(interval: Duration) -> Duration {
    (interval / 4).max(MIN_SETTLE)
}

/// Waits `d` unless the watch is stopped (its [`FileWatch`] dropped);
/// whether to go on.
fn go_on(stopped: &mpsc::Receiver<()>, d: Duration) -> bool {
    matches!(
        stopped.recv_timeout(d),
        Err(mpsc::RecvTimeoutError::Timeout)
    )
}

#[cfg(feature = "metrics")]
fn record(ok: bool) {
    crate::metrics::record_rules_reload(ok);
}

#[cfg(not(feature = "metrics"))]
fn record(_ok: bool) {}

/// The file's contents once two reads with a `pause` between them agree
/// (at most [`SETTLE_TRIES`] pauses), with the file's stamp as it was
/// before the last read; `None` while it keeps changing, when it cannot be
/// read, or when `pause` says to stop.
fn settled_text(path: &Path, mut pause: impl FnMut() -> bool) -> Option<(String, Option<Stamp>)> {
    let mut previous = std::fs::read_to_string(path).ok()?;
    for _ in 0..SETTLE_TRIES {
        if !pause() {
            return None;
        }
        // Before the read: a change after it is a change at the next poll.
        let seen = stamp(path);
        let text = std::fs::read_to_string(path).ok()?;
        if text == previous {
            return Some((text, seen));
        }
        previous = text;
    }
    None
}

/// The modification time and length of a file: a change in either is a
/// change of the file.
type Stamp = (SystemTime, u64);

fn stamp(path: &Path) -> Option<Stamp> {
    let meta = std::fs::metadata(path).ok()?;
    Some((meta.modified().ok()?, meta.len()))
}

#[cfg(test)]
mod tests {
    use std::{
        io::Write,
        sync::{Arc, Mutex},
    };

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
    type Seen = Arc<Mutex<Vec<(String, thread::ThreadId)>>>;

    /// Watches `path` every `interval`, recording each reload.
    fn record(path: &Path, interval: Duration) -> (FileWatch, Seen) {
        let seen = Arc::new(Mutex::new(Vec::new()));
        let log = Arc::clone(&seen);
        let watch = FileWatch::start(path.to_owned(), interval, move |_, text: &str| {
            log.lock()
                .unwrap()
                .push((text.to_owned(), thread::current().id()));
            Ok::<(), String>(())
        })
        .unwrap();
        (watch, seen)
    }

    fn wait_for(seen: &Seen, n: usize) {
        for _ in 0..200 {
            if seen.lock().unwrap().len() >= n {
                return;
            }
            thread::sleep(Duration::from_millis(50));
        }
        panic!("no reload within 10 s");
    }

    #[test]
    fn a_change_is_reloaded_off_the_callers_thread() {
        let (_dir, path) = temp_file("thread");
        std::fs::write(&path, "a").unwrap();
        let (watch, seen) = record(&path, Duration::from_millis(20));
        std::fs::write(&path, "bb").unwrap();
        wait_for(&seen, 1);
        drop(watch);
        let (text, thread) = seen.lock().unwrap()[0].clone();
        assert_eq!(text, "bb");
        assert_ne!(
            thread,
            thread::current().id(),
            "reloaded on the caller's thread"
        );
    }

    #[test]
    fn an_unchanged_file_is_not_reloaded_and_dropping_ends_the_thread() {
        let (_dir, path) = temp_file("drop");
        std::fs::write(&path, "a").unwrap();
        let (watch, seen) = record(&path, Duration::from_millis(10));
        // Two changes: the watch saw the first before the second.
        std::fs::write(&path, "bb").unwrap();
        wait_for(&seen, 1);
        std::fs::write(&path, "ccc").unwrap();
        wait_for(&seen, 2);
        drop(watch);
        // The thread is joined, so the reload closure (which holds the
        // other reference) is gone.
        assert_eq!(Arc::strong_count(&seen), 1);
        let texts: Vec<_> = seen
            .lock()
            .unwrap()
            .iter()
            .map(|(t, _)| t.clone())
            .collect();
        assert_eq!(
            texts,
            ["bb", "ccc"],
            "each change once, nothing for the file as it was"
        );
    }

    #[test]
    fn a_failed_or_panicking_reload_does_not_end_the_watch() {
        let (_dir, path) = temp_file("fail");
        std::fs::write(&path, "a").unwrap();
        let (tx, rx) = mpsc::channel();
        let _watch = FileWatch::start(path.clone(), Duration::from_millis(10), move |_, text| {
            tx.send(text.to_owned()).unwrap();
            match text {
                "panic" => panic!("a reload that panics"),
                "bad" => Err("refused"),
                _ => Ok(()),
            }
        })
        .unwrap();
        let timeout = Duration::from_secs(10);
        for text in ["panic", "bad", "good"] {
            std::fs::write(&path, text).unwrap();
            assert_eq!(rx.recv_timeout(timeout).unwrap(), text);
        }
    }

    #[test]
    fn the_text_is_taken_once_two_reads_agree() {
        let (_dir, path) = temp_file("settle");
        std::fs::write(&path, "rules: [{pool: deeps").unwrap();
        // The writer finishes during the first pause.
        let mut pauses = 0;
        let settled = settled_text(&path, || {
            pauses += 1;
            if pauses == 1 {
                let mut file = std::fs::OpenOptions::new()
                    .append(true)
                    .open(&path)
                    .unwrap();
                file.write_all(b"eek-r1}]").unwrap();
            }
            true
        });
        let (text, seen) = settled.unwrap();
        assert_eq!(text, "rules: [{pool: deepseek-r1}]");
        assert_eq!(pauses, 2, "read three times: cut, whole, whole");
        assert_eq!(seen, stamp(&path));
    }

    #[test]
    fn a_file_that_keeps_changing_is_not_taken() {
        let (_dir, path) = temp_file("busy");
        std::fs::write(&path, "0").unwrap();
        let mut pauses = 0;
        let settled = settled_text(&path, || {
            pauses += 1;
            std::fs::write(&path, pauses.to_string()).unwrap();
            true
        });
        assert_eq!(settled, None);
        assert_eq!(pauses, SETTLE_TRIES);
    }

    #[test]
    fn a_stopped_watch_reads_no_further() {
        let (_dir, path) = temp_file("stop");
        std::fs::write(&path, "a").unwrap();
        let mut pauses = 0;
        let settled = settled_text(&path, || {
            pauses += 1;
            false
        });
        assert_eq!((settled, pauses), (None, 1));
    }

    #[test]
    fn a_file_caught_half_written_is_not_loaded() {
        let (_dir, path) = temp_file("half");
        std::fs::write(&path, "rules: []").unwrap();
        let (watch, seen) = record(&path, Duration::from_millis(400));
        // A writer that takes two writes, a few milliseconds apart; the
        // first alone names a cut pool.
        let whole = "rules: [{name: a, match: {model: {exact: a}}, pool: deepseek-r1}]";
        for _ in 0..3 {
            std::fs::write(&path, &whole[..whole.len() - 7]).unwrap();
            thread::sleep(Duration::from_millis(5));
            std::fs::write(&path, whole).unwrap();
            thread::sleep(Duration::from_millis(450));
            std::fs::write(&path, "rules: []").unwrap();
            thread::sleep(Duration::from_millis(450));
        }
        wait_for(&seen, 1);
        drop(watch);
        for (text, _) in seen.lock().unwrap().iter() {
            assert!(text == whole || text == "rules: []", "loaded {text:?}");
        }
    }

    #[test]
    fn the_reads_are_a_quarter_of_the_interval_apart_and_at_least_the_minimum() {
        assert_eq!(settle_for(MIN_INTERVAL), MIN_SETTLE);
        assert_eq!(
            settle_for(Duration::from_secs(2)),
            Duration::from_millis(500)
        );
    }
}
