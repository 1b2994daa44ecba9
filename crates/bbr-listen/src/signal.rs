//! [`shutdown_signal`]: when a server stops accepting and drains.

use std::future::Future;

/// Completes on SIGTERM or SIGINT (ctrl-c).
///
/// The handlers are installed when this function is called, not when the
/// future is first polled, so that a signal arriving right after start-up
/// drains rather than meets the default action (immediate exit). Call it
/// inside a tokio runtime, before announcing readiness.
pub fn shutdown_signal() -> impl Future<Output = ()> + Send + 'static {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{SignalKind, signal};
        let term = signal(SignalKind::terminate());
        let int = signal(SignalKind::interrupt());
        async move {
            match (term, int) {
                (Ok(mut term), Ok(mut int)) => {
                    tokio::select! {
                        _ = term.recv() => {}
                        _ = int.recv() => {}
                    }
                }
                _ => {
                    let _ = tokio::signal::ctrl_c().await;
                }
            }
        }
    }
    #[cfg(not(unix))]
    {
        async {
            let _ = tokio::signal::ctrl_c().await;
        }
    }
}
