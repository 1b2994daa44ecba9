//! What a server around the processor needs besides gRPC: TLS identities,
//! the Prometheus endpoint, hot reload of the rules file and shutdown signals.
//! The `bbr-extproc` binary is built from these pieces.

use std::{
    convert::Infallible,
    future::Future,
    io,
    path::{Path, PathBuf},
    pin::Pin,
    sync::Arc,
    time::Duration,
};

use bbr_core::watch::FileWatch;
use bbr_listen::{Listener, http::HttpOptions};
use bytes::Bytes;
use http_body_util::Full;
use hyper::{Request, Response, StatusCode, body::Incoming};
use metrics_exporter_prometheus::PrometheusHandle;
use tonic::transport::Identity;

use crate::sources::TableSources;

/// A TLS identity with a freshly generated self-signed certificate for
/// `localhost` (what `--secure-serving` uses when no certificate is given;
/// Envoy does not verify an ext_proc server's certificate unless told to).
pub fn self_signed_identity() -> Result<Identity, rcgen::Error> {
    let names = vec!["localhost".to_owned(), "bbr-extproc".to_owned()];
    let certified = rcgen::generate_simple_self_signed(names)?;
    Ok(Identity::from_pem(
        certified.cert.pem(),
        certified.signing_key.serialize_pem(),
    ))
}

/// A TLS identity read from `dir/tls.crt` and `dir/tls.key` (the layout of a
/// Kubernetes TLS secret mounted as a volume).
pub fn identity_from_dir(dir: &Path) -> io::Result<Identity> {
    let cert = std::fs::read(dir.join("tls.crt"))?;
    let key = std::fs::read(dir.join("tls.key"))?;
    Ok(Identity::from_pem(cert, key))
}

/// Serves `GET /metrics` (the Prometheus text format) on `listener` until
/// `shutdown` completes. Other paths answer 404.
pub async fn serve_metrics(
    listener: Listener,
    handle: PrometheusHandle,
    shutdown: impl Future<Output = ()>,
) {
    serve_metrics_gated(listener, handle, None, shutdown).await;
}

/// Decides whether a `/metrics` request may be answered (see
/// [`serve_metrics_gated`]).
pub trait MetricsGate: Send + Sync + 'static {
    /// `Ok` to answer with the metrics, or the status to answer with
    /// instead (401 adds `WWW-Authenticate: Bearer`).
    fn admit<'a>(
        &'a self,
        headers: &'a http::HeaderMap,
    ) -> Pin<Box<dyn Future<Output = Result<(), StatusCode>> + Send + 'a>>;
}

/// [`serve_metrics`], with each `/metrics` request first put to `gate`
/// (the Kubernetes token check of `--metrics-endpoint-auth`, for one).
pub async fn serve_metrics_gated(
    listener: Listener,
    handle: PrometheusHandle,
    gate: Option<Arc<dyn MetricsGate>>,
    shutdown: impl Future<Output = ()>,
) {
    let service = tower::service_fn(move |req: Request<Incoming>| {
        let handle = handle.clone();
        let gate = gate.clone();
        async move {
            if let Some(gate) = gate.filter(|_| req.uri().path() == "/metrics")
                && let Err(status) = gate.admit(req.headers()).await
            {
                return Ok::<_, Infallible>(refusal(status));
            }
            Ok::<_, Infallible>(metrics_response(&req, &handle))
        }
    });
    let options = HttpOptions {
        // Scrapes are short; what is open at shutdown is not waited for.
        drain_timeout: Duration::ZERO,
        ..HttpOptions::default()
    };
    bbr_listen::http::serve(listener, service, options, shutdown).await;
}

/// The answer to a `/metrics` request the gate refused.
fn refusal(status: StatusCode) -> Response<Full<Bytes>> {
    let text = format!("{}\n", status.canonical_reason().unwrap_or("refused"));
    let mut response = Response::new(Full::new(Bytes::from(text)));
    *response.status_mut() = status;
    if status == StatusCode::UNAUTHORIZED {
        response.headers_mut().insert(
            http::header::WWW_AUTHENTICATE,
            http::HeaderValue::from_static("Bearer"),
        );
    }
    response
}

fn metrics_response<B>(req: &Request<B>, handle: &PrometheusHandle) -> Response<Full<Bytes>> {
    let mut response = if req.uri().path() == "/metrics" {
        let mut r = Response::new(Full::new(Bytes::from(handle.render())));
        r.headers_mut().insert(
            http::header::CONTENT_TYPE,
            http::HeaderValue::from_static("text/plain; version=0.0.4"),
        );
        r
    } else {
        Response::new(Full::new(Bytes::from_static(b"not found\n")))
    };
    if req.uri().path() != "/metrics" {
        *response.status_mut() = StatusCode::NOT_FOUND;
    }
    response
}

/// Reloads the rules file at `path` into `sources` whenever it changes,
/// checking every `interval`, until the returned watch is dropped.
///
/// The watch is [`FileWatch`]'s: a file caught half-written is not loaded
/// (two reads must agree), and the new table is compiled on the watch's
/// own thread, off the runtime, then swapped in for the next request. Each
/// reload is logged, and counted in `bbr_rules_reloads_total` or
/// `bbr_rules_reload_failures_total`; a file that does not compile leaves
/// the table in force.
pub fn watch_rules(
    path: PathBuf,
    interval: Duration,
    sources: TableSources,
) -> io::Result<FileWatch> {
    FileWatch::start(path, interval, move |path, text| {
        let result = sources.reload_rules_text(path, text);
        match &result {
            Ok(()) => tracing::info!(path = %path.display(), "rules reloaded"),
            Err(e) => tracing::error!(error = %e,
                "rules not reloaded; the previous table stays in force"),
        }
        result
    })
}

/// Completes on SIGTERM or SIGINT (ctrl-c); the handlers are installed at
/// the call (see [`bbr_listen::shutdown_signal`]).
pub use bbr_listen::shutdown_signal;

/// How many bytes of an ext_proc connection are read from its socket at a
/// time ([`bbr_listen::ReadAhead`]), under TLS or not. h2 reads a 16 KiB
/// DATA frame in two reads of 8 KiB and rustls a record in reads of
/// 4 KiB, so a large body cost a system call every 4 to 8 KiB; reading
/// 64 KiB ahead took about 10 % off the server's CPU a request for
/// `BUFFERED` bodies of 100 KiB and 1 MiB on 2 CPUs beside Envoy
/// (BENCHMARKS.md). gRPC-Go reads through a 32 KiB buffer for the same
/// reason.
pub const READ_AHEAD: usize = 64 * 1024;
