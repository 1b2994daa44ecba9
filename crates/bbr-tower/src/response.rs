//! The answers the layer and the router give themselves, and the response
//! body that carries either such an answer or the inner service's body.

use std::{
    pin::Pin,
    task::{Context, Poll},
};

use bytes::Bytes;
use http::{HeaderValue, Response, StatusCode, header};
use http_body::{Body, Frame, SizeHint};
use pin_project_lite::pin_project;

pin_project! {
    /// The response body of [`ModelRouting`](crate::ModelRouting) and
    /// [`PoolRouter`](crate::PoolRouter): the inner service's body, or the
    /// JSON error body of a request answered without it.
    #[derive(Debug)]
    pub struct ResponseBody<B> {
        #[pin]
        kind: Kind<B>,
        // The pool's admission slot, given back when the body is dropped.
        slot: Slot,
    }
}

pin_project! {
    #[project = KindProj]
    #[derive(Debug)]
    enum Kind<B> {
        Inner { #[pin] body: B },
        Answer { body: Option<Bytes> },
    }
}

/// A pool's admission slot held by a response.
#[cfg(feature = "tokio")]
pub(crate) type Slot = Option<crate::admission::Permit>;
/// A pool's admission slot held by a response (none without tokio).
#[cfg(not(feature = "tokio"))]
#[derive(Debug, Default)]
pub(crate) struct Slot {}

impl<B> ResponseBody<B> {
    /// Wraps the inner service's body.
    pub fn inner(body: B) -> ResponseBody<B> {
        ResponseBody {
            kind: Kind::Inner { body },
            slot: Slot::default(),
        }
    }

    /// Wraps the inner service's body, holding `slot` until it is dropped.
    pub(crate) fn admitted(body: B, slot: Slot) -> ResponseBody<B> {
        ResponseBody {
            kind: Kind::Inner { body },
            slot,
        }
    }

    /// A body holding `bytes` in one frame.
    pub fn full(bytes: Bytes) -> ResponseBody<B> {
        ResponseBody {
            kind: Kind::Answer {
                body: (!bytes.is_empty()).then_some(bytes),
            },
            slot: Slot::default(),
        }
    }
}

impl<B> Body for ResponseBody<B>
where
    B: Body<Data = Bytes>,
{
    type Data = Bytes;
    type Error = B::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, B::Error>>> {
        match self.project().kind.project() {
            KindProj::Inner { body } => body.poll_frame(cx),
            KindProj::Answer { body } => Poll::Ready(body.take().map(|b| Ok(Frame::data(b)))),
        }
    }

    fn is_end_stream(&self) -> bool {
        match &self.kind {
            Kind::Inner { body } => body.is_end_stream(),
            Kind::Answer { body } => body.is_none(),
        }
    }

    fn size_hint(&self) -> SizeHint {
        match &self.kind {
            Kind::Inner { body } => body.size_hint(),
            Kind::Answer { body } => {
                SizeHint::with_exact(body.as_ref().map_or(0, |b| b.len() as u64))
            }
        }
    }
}

/// The answer to a request refused by the error contract: the error's
/// status, its OpenAI-style JSON body ([`bbr_core::Error::to_json`]) and
/// `Retry-After` where the kind has one.
///
/// The layer and the router answer with it; a service behind them (a proxy
/// to a pool that cannot reach its server, say) answers its own failures
/// with it too, so that every answer follows the one table. The response
/// carries `error` as an extension, for a log line or a metric further out.
///
/// ```
/// use bbr_core::{Error, ErrorKind};
/// use bbr_tower::error_response;
///
/// let response = error_response::<String>(&Error::upstream("connection refused"));
/// assert_eq!(response.status(), 502);
/// assert_eq!(response.extensions().get::<Error>().map(Error::kind), Some(ErrorKind::UpstreamError));
/// ```
pub fn error_response<B>(error: &bbr_core::Error) -> Response<ResponseBody<B>> {
    let status = StatusCode::from_u16(error.status()).unwrap_or(StatusCode::BAD_REQUEST);
    let body = error.to_json();
    let len = body.len();
    let mut response = Response::new(ResponseBody::full(Bytes::from(body)));
    *response.status_mut() = status;
    let headers = response.headers_mut();
    for (name, value) in error.response_headers() {
        headers.insert(name, value);
    }
    headers.insert(header::CONTENT_LENGTH, HeaderValue::from(len));
    response.extensions_mut().insert(error.clone());
    response
}

/// [`error_response`], counted in the rejections metric (feature
/// `metrics`): the layer's and the router's own refusals.
pub(crate) fn reject<B>(error: &bbr_core::Error) -> Response<ResponseBody<B>> {
    #[cfg(feature = "metrics")]
    bbr_core::metrics::record_rejected(error);
    error_response(error)
}

/// A `200 OK` JSON answer the layer gives itself (the model list).
pub(crate) fn json_ok<B>(body: Bytes) -> Response<ResponseBody<B>> {
    let len = body.len();
    let mut response = Response::new(ResponseBody::full(body));
    let headers = response.headers_mut();
    headers.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    headers.insert(header::CONTENT_LENGTH, HeaderValue::from(len));
    response
}

#[cfg(test)]
mod tests {
    use super::*;
    use http_body_util::BodyExt;

    #[tokio::test]
    async fn gateway_errors_are_answered_from_the_core_table() {
        let error = bbr_core::Error::pool_unavailable("x\r\n");
        let response: Response<ResponseBody<http_body_util::Empty<Bytes>>> = reject(&error);
        assert_eq!(response.status(), 503);
        assert_eq!(response.headers()[header::CONTENT_TYPE], "application/json");
        let body = response.into_body().collect().await.unwrap().to_bytes();
        assert_eq!(body, error.to_json().as_bytes());
        let value: serde_json::Value = serde_json::from_slice(&body).unwrap();
        assert_eq!(value["error"]["code"], "pool_unavailable");
        assert_eq!(value["error"]["type"], "server_error");
    }
}
