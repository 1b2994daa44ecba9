//! The gateway's own endpoints: `GET /healthz`, `GET /readyz` and
//! `GET /metrics`, and the readiness flag behind `/readyz`.

use std::{
    convert::Infallible,
    sync::{
        Arc,
        atomic::{AtomicBool, Ordering},
    },
    task::{Context, Poll},
};

use bytes::Bytes;
use http::{HeaderValue, Method, Request, Response, StatusCode, header};
use http_body_util::Full;
use hyper::body::Incoming;
use metrics_exporter_prometheus::PrometheusHandle;
use tower::Service;

/// Whether the gateway takes traffic: set once it listens with its rules
/// loaded, cleared when it starts draining. Cheap to clone: clones share
/// the flag.
#[derive(Clone, Debug, Default)]
pub struct Readiness {
    ready: Arc<AtomicBool>,
}

impl Readiness {
    /// Marks the gateway ready (`true`) or not.
    pub fn set(&self, ready: bool) {
        self.ready.store(ready, Ordering::Release);
    }

    /// Whether the gateway is ready.
    pub fn is_ready(&self) -> bool {
        self.ready.load(Ordering::Acquire)
    }
}

/// The gateway's own endpoints: `GET /healthz` (200 while the process
/// serves), `GET /readyz` (200 when [`Readiness`] says so, 503 otherwise)
/// and `GET /metrics` (the Prometheus text format, when a recorder is
/// given).
#[derive(Clone, Debug)]
pub struct Admin {
    readiness: Readiness,
    metrics: Option<PrometheusHandle>,
}

impl Admin {
    /// The endpoints for `readiness`, with `/metrics` rendered from
    /// `metrics` (404 without).
    pub fn new(readiness: Readiness, metrics: Option<PrometheusHandle>) -> Admin {
        Admin { readiness, metrics }
    }

    /// The answer when `request` is for one of the endpoints.
    pub fn answer<B>(&self, request: &Request<B>) -> Option<Response<Full<Bytes>>> {
        if request.method() != Method::GET && request.method() != Method::HEAD {
            return None;
        }
        let (status, body, content_type) = match request.uri().path() {
            "/healthz" => (StatusCode::OK, Bytes::from_static(b"ok\n"), "text/plain"),
            "/readyz" if self.readiness.is_ready() => {
                (StatusCode::OK, Bytes::from_static(b"ready\n"), "text/plain")
            }
            "/readyz" => (
                StatusCode::SERVICE_UNAVAILABLE,
                Bytes::from_static(b"not ready\n"),
                "text/plain",
            ),
            "/metrics" => {
                let handle = self.metrics.as_ref()?;
                (
                    StatusCode::OK,
                    Bytes::from(handle.render()),
                    "text/plain; version=0.0.4",
                )
            }
            _ => return None,
        };
        let mut response = Response::new(Full::new(body));
        *response.status_mut() = status;
        response
            .headers_mut()
            .insert(header::CONTENT_TYPE, HeaderValue::from_static(content_type));
        Some(response)
    }
}

impl Service<Request<Incoming>> for Admin {
    type Response = Response<Full<Bytes>>;
    type Error = Infallible;
    type Future = std::future::Ready<Result<Response<Full<Bytes>>, Infallible>>;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, request: Request<Incoming>) -> Self::Future {
        let response = self.answer(&request).unwrap_or_else(|| {
            let mut response = Response::new(Full::new(Bytes::from_static(b"not found\n")));
            *response.status_mut() = StatusCode::NOT_FOUND;
            response
        });
        std::future::ready(Ok(response))
    }
}
