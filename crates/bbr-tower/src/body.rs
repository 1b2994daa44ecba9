//! The request body handed to the inner service: the frames held while the
//! layer decided, then the rest of the stream, each chunk unchanged.

use std::{
    collections::VecDeque,
    fmt,
    pin::Pin,
    sync::{Arc, OnceLock},
    task::{Context, Poll},
    time::Duration,
};

use bbr_core::{
    Error, Verdict,
    rules::ContentLength,
    session::{Head, Session, Step},
};
use bytes::{Bytes, BytesMut};
use http::HeaderMap;
use http_body::{Body, Frame, SizeHint};
use pin_project_lite::pin_project;

use crate::{
    BoxError,
    budget::{HoldBudget, Reservation},
    config::Config,
};

/// Chunks smaller than this are copied together while they are held, from
/// the second such chunk in a row on.
///
/// Each held chunk costs a `Bytes` handle and a reference on the buffer it
/// came from; a client sending the body a byte per chunk could otherwise
/// make the layer hold many times `max_body` in bookkeeping. With runs of
/// small chunks coalesced, no two held chunks in a row are both small, so
/// the count of held chunks stays under `2 * held_len / 1 KiB + 1`. A body
/// that arrives in one chunk, however small, is never copied.
const COALESCE_BELOW: usize = 1 << 10;

pin_project! {
    /// The request body [`ModelRouting`](crate::ModelRouting) gives its inner
    /// service.
    ///
    /// It yields the chunks held before the decision (spliced when the rule
    /// rewrote the model), then the frames of the original body as they
    /// arrive. Chunks are refcounted [`Bytes`], not copied (but for runs of
    /// chunks under 1 KiB held before the decision, which are coalesced so
    /// that a body sent a few bytes per chunk cannot inflate what is held).
    /// With the strict policy each later chunk is scanned before it is
    /// yielded; a violation (a second `model`, invalid JSON) ends the body
    /// with an error instead of the chunk, so the upstream never receives the
    /// complete body of a request that is refused. The error is a
    /// [`bbr_core::Error`] inside the [`BoxError`].
    ///
    /// `RoutedBody<B>` is `Unpin` when `B` is (hyper's `Incoming` and axum's
    /// `Body` are); pin it (`std::pin::pin!`) to poll one that is not.
    pub struct RoutedBody<B> {
        #[pin]
        kind: Kind<B>,
    }
}

pin_project! {
    #[project = KindProj]
    #[project_ref = KindRef]
    enum Kind<B> {
        /// The body as it came: nothing was read before the decision.
        Passthrough { #[pin] body: B },
        /// The body was read up to the decision.
        Read { stream: Pin<Box<BodyReader<B>>> },
    }
}

pin_project! {
    /// A body being read by the layer, with what it holds: one allocation
    /// per request for the body, the session, the held chunks and the
    /// scan after the verdict.
    pub(crate) struct BodyReader<B> {
        #[pin]
        body: B,
        session: Session,
        config: Arc<Config>,
        held: Held,
        // What the held bytes take from the layer's budget, until they are
        // handed on (replayed) or dropped.
        reservation: Option<Reservation>,
        // The body-idle timeout while reading, armed at the first wait.
        #[pin]
        idle: Idle,
        trailers: Option<HeaderMap>,
        // The body has yielded its last frame (or must not be polled again).
        ended: bool,
        // Set while the strict policy checks the chunks after the decision.
        check: Option<Check>,
    }
}

/// The strict policy's check of the chunks after the verdict.
pub(crate) struct Check {
    /// Where a violation is reported to the response future, which then
    /// answers with the error contract if the inner service has not.
    violation: Arc<OnceLock<Error>>,
}

/// The chunks held before the decision, in order.
#[derive(Default)]
pub(crate) struct Held {
    first: Option<Bytes>,
    rest: VecDeque<Bytes>,
    /// A run of small chunks being coalesced (see [`COALESCE_BELOW`]).
    small: BytesMut,
    /// Bytes held, `small` included.
    len: u64,
}

impl Held {
    /// Holds `chunk` (not empty) after the ones held so far.
    pub(crate) fn push(&mut self, chunk: Bytes) {
        self.len += chunk.len() as u64;
        if chunk.len() >= COALESCE_BELOW {
            self.flush();
            self.push_chunk(chunk);
        } else if !self.small.is_empty() {
            self.small.extend_from_slice(&chunk);
        } else if let Some(last) = self.pop_last_if_small() {
            // A second small chunk in a row: start a run.
            self.small.reserve(last.len() + chunk.len());
            self.small.extend_from_slice(&last);
            self.small.extend_from_slice(&chunk);
        } else {
            self.push_chunk(chunk);
        }
    }

    /// Moves the coalesced run to the held chunks.
    pub(crate) fn flush(&mut self) {
        if !self.small.is_empty() {
            let run = self.small.split().freeze();
            self.push_chunk(run);
        }
    }

    fn push_chunk(&mut self, chunk: Bytes) {
        if self.first.is_none() && self.rest.is_empty() {
            self.first = Some(chunk);
        } else {
            self.rest.push_back(chunk);
        }
    }

    fn pop_last_if_small(&mut self) -> Option<Bytes> {
        let last = match self.rest.back() {
            Some(last) => last,
            None => self.first.as_ref()?,
        };
        if last.len() >= COALESCE_BELOW {
            return None;
        }
        self.rest.pop_back().or_else(|| self.first.take())
    }

    /// The next chunk to replay.
    fn pop(&mut self) -> Option<Bytes> {
        let chunk = self.first.take().or_else(|| self.rest.pop_front())?;
        self.len -= chunk.len() as u64;
        Some(chunk)
    }

    /// Every held chunk, in order, taken out (the run flushed first).
    pub(crate) fn take(&mut self) -> Vec<Bytes> {
        self.flush();
        self.len = 0;
        self.first
            .take()
            .into_iter()
            .chain(self.rest.drain(..))
            .collect()
    }

    /// Holds `chunks` (after a rewrite) in place of what was held.
    pub(crate) fn replace(&mut self, chunks: Vec<Bytes>) {
        *self = Held::default();
        for chunk in chunks.into_iter().filter(|c| !c.is_empty()) {
            self.len += chunk.len() as u64;
            self.push_chunk(chunk);
        }
    }

    pub(crate) fn len(&self) -> u64 {
        self.len
    }

    pub(crate) fn is_empty(&self) -> bool {
        self.len == 0
    }

    fn clear(&mut self) {
        *self = Held::default();
    }
}

impl<B> BodyReader<B> {
    /// A body about to be read by `session` (started), its held bytes
    /// counted in the layer's budget, cut off after the layer's idle time
    /// without data before the verdict.
    pub(crate) fn new(body: B, session: Session, config: Arc<Config>) -> BodyReader<B> {
        let budget: Option<&HoldBudget> = config.budget.as_ref();
        let reservation = budget.map(|b| Reservation::new(b.clone()));
        let idle = config.hold_idle_timeout;
        BodyReader {
            body,
            session,
            config,
            held: Held::default(),
            reservation,
            idle: Idle::new(idle),
            trailers: None,
            ended: false,
            check: None,
        }
    }
}

pin_project! {
    /// The body-idle timeout while a body is read up to its decision: the
    /// request is refused (`408 body_timeout`) when no data came for
    /// `after`. The timer is armed only when the body first has to wait,
    /// and re-armed at a wait that follows new data, so a body that
    /// arrives at once costs no timer.
    pub(crate) struct Idle {
        after: Option<Duration>,
        progress: bool,
        #[pin]
        sleep: Timer,
    }
}

/// The timer of [`Idle`]: tokio's, or none without the `tokio` feature.
#[cfg(feature = "tokio")]
type Timer = Option<tokio::time::Sleep>;
#[cfg(not(feature = "tokio"))]
type Timer = ();

impl Idle {
    fn new(after: Option<Duration>) -> Idle {
        Idle {
            after,
            progress: false,
            sleep: Timer::default(),
        }
    }

    /// Data arrived.
    fn progress(self: Pin<&mut Self>) {
        *self.project().progress = true;
    }

    /// The body must wait: whether it has waited too long (arming or
    /// re-arming the timer first).
    #[cfg(feature = "tokio")]
    fn expired(self: Pin<&mut Self>, cx: &mut Context<'_>) -> bool {
        use std::future::Future;
        let mut this = self.project();
        let Some(after) = *this.after else {
            return false;
        };
        let deadline = || tokio::time::Instant::now() + after;
        match this.sleep.as_mut().as_pin_mut() {
            None => this.sleep.set(Some(tokio::time::sleep_until(deadline()))),
            Some(sleep) if *this.progress => sleep.reset(deadline()),
            Some(_) => {}
        }
        *this.progress = false;
        this.sleep
            .as_pin_mut()
            .is_some_and(|sleep| sleep.poll(cx).is_ready())
    }

    #[cfg(not(feature = "tokio"))]
    fn expired(self: Pin<&mut Self>, _: &mut Context<'_>) -> bool {
        false
    }
}

/// What reading the body up to the verdict came to.
pub(crate) enum Read {
    /// The session's step: a verdict.
    Step(Step),
    /// The body could not be read.
    BodyError,
}

impl<B> BodyReader<B>
where
    B: Body<Data = Bytes>,
{
    /// Reads frames into the session, holding them, until its verdict.
    pub(crate) fn poll_read(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Read> {
        let mut this = self.project();
        let decider = &this.config.decider;
        loop {
            let frame = match this.body.as_mut().poll_frame(cx) {
                Poll::Pending => {
                    if this.idle.as_mut().expired(cx) {
                        let error = Error::body_timeout(this.held.len());
                        return Poll::Ready(Read::Step(this.session.fail(decider, error)));
                    }
                    return Poll::Pending;
                }
                Poll::Ready(None) => {
                    *this.ended = true;
                    return Poll::Ready(Read::Step(this.session.end(decider)));
                }
                Poll::Ready(Some(Err(_))) => {
                    *this.ended = true;
                    return Poll::Ready(Read::BodyError);
                }
                Poll::Ready(Some(Ok(frame))) => frame,
            };
            let chunk = match frame.into_data() {
                Ok(chunk) => chunk,
                Err(frame) => match frame.into_trailers() {
                    Ok(trailers) => {
                        *this.ended = true;
                        *this.trailers = Some(trailers);
                        return Poll::Ready(Read::Step(this.session.end(decider)));
                    }
                    Err(_) => continue,
                },
            };
            if chunk.is_empty() {
                continue;
            }
            this.idle.as_mut().progress();
            if let Some(reservation) = this.reservation.as_mut()
                && !reservation.take(chunk.len() as u64)
            {
                let step = this.session.fail(decider, Error::overloaded());
                return Poll::Ready(Read::Step(step));
            }
            let end = this.body.is_end_stream();
            let step = this.session.chunk(decider, &chunk, end);
            this.held.push(chunk);
            if !matches!(step, Step::Hold) {
                *this.ended = end;
                return Poll::Ready(Read::Step(step));
            }
        }
    }

    /// Starts the session on the request's head.
    pub(crate) fn start(self: Pin<&mut Self>, head: &Head<'_>) -> Step {
        let this = self.project();
        let (decider, extractor) = (&this.config.decider, &this.config.extractor);
        this.session.start(decider, extractor, head, true)
    }

    /// The layer's configuration, shared.
    pub(crate) fn config_arc(&self) -> &Arc<Config> {
        &self.config
    }

    /// The request's session.
    pub(crate) fn session(&self) -> &Session {
        &self.session
    }

    /// The layer's configuration.
    pub(crate) fn config(&self) -> &Config {
        &self.config
    }

    /// Settles the body after a verdict that forwards the request: the
    /// held chunks changed as the session says (a rule's other model), the
    /// held bytes kept in the budget until the inner service takes them,
    /// and the rest of the body checked while the session checks. Returns
    /// the bytes held, what becomes of `Content-Length`, and the cell a
    /// violation is reported to.
    pub(crate) fn settle(
        self: Pin<&mut Self>,
        verdict: &Verdict,
    ) -> (u64, Option<ContentLength>, Option<Arc<OnceLock<Error>>>) {
        let this = self.project();
        let mut content_length = None;
        if let Verdict::Route(routing) = verdict
            && routing.rewrite().is_some()
        {
            let chunks = this.held.take();
            match this.session.change_body(verdict, &chunks) {
                Some(change) => {
                    content_length = change.content_length;
                    this.held.replace(change.chunks);
                }
                None => this.held.replace(chunks),
            }
        }
        let held = this.held.len();
        if let Some(reservation) = this.reservation.as_mut() {
            reservation.keep(held);
        }
        let ended = *this.ended || this.body.is_end_stream();
        let violation = (!ended && this.session.is_checking()).then(|| {
            let violation = Arc::new(OnceLock::new());
            *this.check = Some(Check {
                violation: Arc::clone(&violation),
            });
            violation
        });
        (held, content_length, violation)
    }

    /// Ends the body with `error` (a violation found after the verdict).
    fn abort(self: Pin<&mut Self>, error: Error) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let this = self.project();
        *this.ended = true;
        this.held.clear();
        if let Some(reservation) = this.reservation.as_mut() {
            reservation.release();
        }
        *this.trailers = None;
        if let Some(check) = this.check.take() {
            let _ = check.violation.set(error.clone());
        }
        Poll::Ready(Some(Err(Box::new(error))))
    }

    /// Checks a chunk after the verdict (`None`: the body's end). `Err`
    /// when the body must be aborted.
    fn check(self: Pin<&mut Self>, chunk: Option<&Bytes>, end: bool) -> Result<(), Error> {
        let this = self.project();
        if this.check.is_none() {
            return Ok(());
        }
        let decider = &this.config.decider;
        let step = match chunk {
            Some(chunk) => this.session.chunk(decider, chunk, end),
            None => this.session.end(decider),
        };
        this.config.tally(this.session, &step);
        match step {
            // `abort` reports it through the check's cell.
            Step::Reject(error) => Err(error),
            _ => {
                if !this.session.is_checking() {
                    *this.check = None;
                }
                Ok(())
            }
        }
    }

    fn poll_replay(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>>
    where
        B::Error: Into<BoxError>,
    {
        let mut this = self.as_mut().project();
        if let Some(chunk) = this.held.pop() {
            if let Some(reservation) = this.reservation.as_mut() {
                reservation.give_back(chunk.len() as u64);
            }
            return Poll::Ready(Some(Ok(Frame::data(chunk))));
        }
        if *this.ended {
            return Poll::Ready(this.trailers.take().map(|t| Ok(Frame::trailers(t))));
        }
        let frame = match this.body.as_mut().poll_frame(cx) {
            Poll::Pending => return Poll::Pending,
            Poll::Ready(None) => {
                *this.ended = true;
                if let Err(e) = self.as_mut().check(None, true) {
                    return self.abort(e);
                }
                return Poll::Ready(
                    self.project()
                        .trailers
                        .take()
                        .map(|t| Ok(Frame::trailers(t))),
                );
            }
            Poll::Ready(Some(Err(e))) => {
                *this.ended = true;
                *this.check = None;
                return Poll::Ready(Some(Err(e.into())));
            }
            Poll::Ready(Some(Ok(frame))) => frame,
        };
        if this.check.is_none() {
            return Poll::Ready(Some(Ok(frame)));
        }
        if frame.is_trailers() {
            *this.ended = true;
            if let Err(e) = self.as_mut().check(None, true) {
                return self.abort(e);
            }
            return Poll::Ready(Some(Ok(frame)));
        }
        // The last chunk is checked for completeness before it is released,
        // so a truncated body never ends cleanly.
        let end = this.body.is_end_stream();
        if let Some(chunk) = frame.data_ref() {
            if let Err(e) = self.as_mut().check(Some(chunk), end) {
                return self.abort(e);
            }
        } else if end && let Err(e) = self.as_mut().check(None, true) {
            return self.abort(e);
        }
        if end {
            *self.as_mut().project().ended = true;
        }
        Poll::Ready(Some(Ok(frame)))
    }
}

impl<B> RoutedBody<B> {
    /// A body that forwards `body` as it is.
    pub(crate) fn passthrough(body: B) -> RoutedBody<B> {
        RoutedBody {
            kind: Kind::Passthrough { body },
        }
    }

    /// A body that replays what `stream` holds, then its trailers, then the
    /// rest of its body.
    pub(crate) fn replay(mut stream: Pin<Box<BodyReader<B>>>) -> RoutedBody<B> {
        stream.as_mut().project().held.flush();
        RoutedBody {
            kind: Kind::Read { stream },
        }
    }

    /// The bytes of held chunks not yet yielded.
    pub fn held_bytes(&self) -> u64 {
        match &self.kind {
            Kind::Passthrough { .. } => 0,
            Kind::Read { stream } => stream.held.len(),
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
        match self.project().kind.project() {
            KindProj::Passthrough { body } => match body.poll_frame(cx) {
                Poll::Pending => Poll::Pending,
                Poll::Ready(frame) => Poll::Ready(frame.map(|f| f.map_err(Into::into))),
            },
            KindProj::Read { stream } => stream.as_mut().poll_replay(cx),
        }
    }

    fn is_end_stream(&self) -> bool {
        match &self.kind {
            Kind::Passthrough { body } => body.is_end_stream(),
            Kind::Read { stream } => {
                stream.held.is_empty()
                    && stream.trailers.is_none()
                    && stream.check.is_none()
                    && (stream.ended || stream.body.is_end_stream())
            }
        }
    }

    fn size_hint(&self) -> SizeHint {
        match &self.kind {
            Kind::Passthrough { body } => body.size_hint(),
            Kind::Read { stream } => {
                let held = stream.held.len();
                let rest = if stream.ended {
                    SizeHint::with_exact(0)
                } else {
                    stream.body.size_hint()
                };
                let mut hint = SizeHint::new();
                hint.set_lower(rest.lower().saturating_add(held));
                if let Some(upper) = rest.upper() {
                    hint.set_upper(upper.saturating_add(held));
                }
                hint
            }
        }
    }
}

impl<B> fmt::Debug for RoutedBody<B> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut out = f.debug_struct("RoutedBody");
        match &self.kind {
            Kind::Passthrough { .. } => out.field("passthrough", &true),
            Kind::Read { stream } => out
                .field("held_chunks", &stream.held.count())
                .field("held_bytes", &stream.held.len())
                .field("trailers", &stream.trailers.is_some())
                .field("ended", &stream.ended)
                .field("checking", &stream.check.is_some()),
        }
        .finish()
    }
}

impl Held {
    fn count(&self) -> usize {
        self.first.is_some() as usize + self.rest.len() + !self.small.is_empty() as usize
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn held(chunks: &[usize]) -> Held {
        let mut held = Held::default();
        let mut next = 0u8;
        for &len in chunks {
            let chunk: Vec<u8> = (0..len)
                .map(|_| {
                    next = next.wrapping_add(1);
                    next
                })
                .collect();
            held.push(Bytes::from(chunk));
        }
        held
    }

    fn replayed(held: &mut Held) -> Vec<usize> {
        held.flush();
        std::iter::from_fn(|| held.pop()).map(|c| c.len()).collect()
    }

    #[test]
    fn one_small_chunk_is_held_as_it_came() {
        let body = Bytes::from_static(b"{\"model\":\"x\"}");
        let mut held = Held::default();
        held.push(body.clone());
        held.flush();
        let chunk = held.pop().unwrap();
        // The same buffer, not a copy.
        assert_eq!(chunk.as_ptr(), body.as_ptr());
        assert!(held.pop().is_none());
    }

    #[test]
    fn runs_of_small_chunks_are_coalesced_in_order() {
        let mut h = held(&[10, 20, 2000, 5, 3000, 1, 1, 1]);
        assert_eq!(h.len(), 5038);
        assert_eq!(replayed(&mut h), [30, 2000, 5, 3000, 3]);
        assert_eq!(h.len(), 0);

        // The bytes come back in order.
        let mut h = held(&[3, 4, 5000, 6, 7]);
        let all: Vec<u8> = h.take().concat();
        let want: Vec<u8> = (1..=(3 + 4 + 5000 + 6 + 7) as u32)
            .map(|i| i as u8)
            .collect();
        assert_eq!(all, want);
    }

    #[test]
    fn a_body_a_byte_per_chunk_holds_few_chunks() {
        let mut h = held(&[1; 10_000]);
        h.flush();
        assert_eq!(h.count(), 1);
        let mut h = held(&[1, 1500, 1, 1500, 1, 1, 1500]);
        assert_eq!(replayed(&mut h), [1, 1500, 1, 1500, 2, 1500]);
    }
}
