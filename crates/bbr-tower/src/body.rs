//! The request body handed to the inner service: the frames held while the
//! layer decided, then the rest of the stream, each chunk unchanged.

use std::{
    collections::VecDeque,
    fmt,
    pin::Pin,
    sync::{Arc, OnceLock},
    task::{Context, Poll},
};

use bbr_core::{BodyExtractor, Error, FailureAction, FailurePolicy};
use bytes::Bytes;
use http::HeaderMap;
use http_body::{Body, Frame, SizeHint};

use crate::BoxError;

/// The request body [`ModelRouting`](crate::ModelRouting) gives its inner
/// service.
///
/// It yields the chunks held before the decision (spliced when the rule
/// rewrote the model), then the frames of the original body as they arrive.
/// Chunks are refcounted [`Bytes`], not copied (but for chunks under 1 KiB
/// held before the decision, which are coalesced so that a body sent a few
/// bytes per chunk cannot inflate what is held). With the strict policy each
/// later chunk is scanned before it is yielded; a violation (a second `model`,
/// invalid JSON) ends the body with an error instead of the chunk, so the
/// upstream never receives the complete body of a request that is refused.
/// The error is a [`bbr_core::Error`] inside the [`BoxError`].
pub struct RoutedBody<B> {
    held: VecDeque<Bytes>,
    held_len: u64,
    trailers: Option<HeaderMap>,
    inner: Option<Pin<Box<B>>>,
    scan: Option<Box<Scan>>,
}

/// The strict policy's scan of the chunks after the decision.
pub(crate) struct Scan {
    pub(crate) extractor: BodyExtractor,
    pub(crate) failure: FailurePolicy,
    /// Where a violation is reported to the response future, which then
    /// answers with the error contract if the inner service has not.
    pub(crate) violation: Arc<OnceLock<Error>>,
}

impl<B> RoutedBody<B> {
    /// A body that forwards `inner` as it is.
    pub(crate) fn passthrough(inner: Pin<Box<B>>) -> RoutedBody<B> {
        RoutedBody {
            held: VecDeque::new(),
            held_len: 0,
            trailers: None,
            inner: Some(inner),
            scan: None,
        }
    }

    /// A body that replays `held`, then `trailers`, then the rest of `inner`.
    pub(crate) fn replay(
        held: Vec<Bytes>,
        trailers: Option<HeaderMap>,
        inner: Option<Pin<Box<B>>>,
        scan: Option<Box<Scan>>,
    ) -> RoutedBody<B> {
        let held_len = held.iter().map(|c| c.len() as u64).sum();
        RoutedBody {
            held: held.into(),
            held_len,
            trailers,
            inner,
            scan,
        }
    }

    /// The bytes of held chunks not yet yielded.
    pub fn held_bytes(&self) -> u64 {
        self.held_len
    }

    /// Ends the body with `error` (a violation found after the decision).
    fn abort(&mut self, error: Error) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        self.inner = None;
        self.held.clear();
        self.held_len = 0;
        self.trailers = None;
        if let Some(scan) = self.scan.take() {
            let _ = scan.violation.set(error.clone());
        }
        Poll::Ready(Some(Err(Box::new(error))))
    }

    /// Runs the scan's end-of-body check. `Err` when the body must be aborted.
    fn finish_scan(&mut self) -> Result<(), Error> {
        let Some(scan) = self.scan.as_mut() else {
            return Ok(());
        };
        let result = scan.extractor.finish().map(|_| ());
        match result {
            Err(e) if scan.failure.action(e.kind()) == FailureAction::Reject => Err(e),
            _ => {
                self.scan = None;
                Ok(())
            }
        }
    }
}

impl<B> Body for RoutedBody<B>
where
    B: Body<Data = Bytes>,
    B::Error: Into<BoxError>,
{
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let this = self.get_mut();
        if let Some(chunk) = this.held.pop_front() {
            this.held_len -= chunk.len() as u64;
            return Poll::Ready(Some(Ok(Frame::data(chunk))));
        }
        let Some(inner) = this.inner.as_mut() else {
            return Poll::Ready(this.trailers.take().map(|t| Ok(Frame::trailers(t))));
        };
        match inner.as_mut().poll_frame(cx) {
            Poll::Pending => Poll::Pending,
            Poll::Ready(None) => {
                this.inner = None;
                if let Err(e) = this.finish_scan() {
                    return this.abort(e);
                }
                Poll::Ready(this.trailers.take().map(|t| Ok(Frame::trailers(t))))
            }
            Poll::Ready(Some(Err(e))) => {
                this.inner = None;
                this.scan = None;
                Poll::Ready(Some(Err(e.into())))
            }
            Poll::Ready(Some(Ok(frame))) => {
                if frame.is_trailers() {
                    this.inner = None;
                    if let Err(e) = this.finish_scan() {
                        return this.abort(e);
                    }
                    return Poll::Ready(Some(Ok(frame)));
                }
                if let (Some(scan), Some(chunk)) = (this.scan.as_mut(), frame.data_ref()) {
                    match scan.extractor.feed(chunk) {
                        Ok(_) => {
                            if !scan.extractor.needs_scanning() {
                                this.scan = None;
                            }
                        }
                        Err(e) if scan.failure.action(e.kind()) == FailureAction::Reject => {
                            return this.abort(e);
                        }
                        // Fail open: stop checking, release the rest as it is.
                        Err(_) => this.scan = None,
                    }
                    // The last chunk is checked for completeness before it is
                    // released, so a truncated body never ends cleanly.
                    if this.scan.is_some() && this.inner.as_ref().is_some_and(|b| b.is_end_stream())
                    {
                        this.inner = None;
                        if let Err(e) = this.finish_scan() {
                            return this.abort(e);
                        }
                    }
                }
                Poll::Ready(Some(Ok(frame)))
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        self.held.is_empty()
            && self.trailers.is_none()
            && self.inner.as_ref().is_none_or(|b| b.is_end_stream())
            && self.scan.is_none()
    }

    fn size_hint(&self) -> SizeHint {
        let rest = self
            .inner
            .as_ref()
            .map_or_else(|| SizeHint::with_exact(0), |b| b.size_hint());
        let mut hint = SizeHint::new();
        hint.set_lower(rest.lower().saturating_add(self.held_len));
        if let Some(upper) = rest.upper() {
            hint.set_upper(upper.saturating_add(self.held_len));
        }
        hint
    }
}

impl<B> fmt::Debug for RoutedBody<B> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RoutedBody")
            .field("held_chunks", &self.held.len())
            .field("held_bytes", &self.held_len)
            .field("trailers", &self.trailers.is_some())
            .field("streaming", &self.inner.is_some())
            .field("scanning", &self.scan.is_some())
            .finish()
    }
}
