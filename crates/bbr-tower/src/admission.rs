//! Criticality-aware admission per pool, for [`PoolRouter`](crate::PoolRouter).
//!
//! Each pool admits up to a number of requests in flight (from the call to
//! the end of the response body). When the pool is saturated, a request is
//! treated by the class its rule gives it:
//!
//! - **Sheddable** (or a negative `priority`): refused at once, `429` with
//!   `Retry-After` (`shed`);
//! - **Standard** (the default, `priority: 0`): waits in a bounded queue
//!   for a slot, up to a deadline; a full queue or the deadline passing is
//!   a `429` too;
//! - **Critical** (or a positive `priority`): admitted beyond the limit up
//!   to a hard cap, then queued ahead of the others.
//!
//! Waiting requests get freed slots in order of priority (Critical 1,
//! Standard 0, Sheddable −1, or the rule's integer), then of arrival. A
//! full queue makes room for a higher priority: its lowest, latest waiter
//! is refused instead.

use std::{
    cmp::Ordering,
    cmp::Reverse,
    collections::BTreeMap,
    fmt,
    future::Future,
    pin::Pin,
    sync::{
        Arc, Mutex,
        atomic::{AtomicU64, Ordering as Atomic},
    },
    task::{Context, Poll},
    time::Duration,
};

use bbr_core::{
    Error,
    rules::{Criticality, RouteMatch},
};
use tokio::sync::oneshot;

/// The limits of [`PoolRouter::admission`](crate::PoolRouter::admission),
/// the same for every pool.
///
/// ```
/// use std::time::Duration;
/// use bbr_tower::Admission;
///
/// // 64 requests in flight a pool; Critical ones up to 96; 256 Standard
/// // ones may wait 10 s for a slot.
/// let admission = Admission::new(64)
///     .critical_cap(96)
///     .queue(256)
///     .queue_timeout(Duration::from_secs(10));
/// assert_eq!(admission.limit(), 64);
/// ```
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Admission {
    limit: usize,
    critical_cap: usize,
    queue: usize,
    queue_timeout: Duration,
}

impl Admission {
    /// At most `limit` requests in flight a pool (at least 1); Critical
    /// requests up to one and a half times that, a queue of four times
    /// that, waiting at most 30 s.
    pub fn new(limit: usize) -> Admission {
        let limit = limit.max(1);
        Admission {
            limit,
            critical_cap: limit + limit.div_ceil(2),
            queue: limit.saturating_mul(4),
            queue_timeout: Duration::from_secs(30),
        }
    }

    /// Sets how many requests in flight Critical ones may bring the pool to
    /// (raised to the limit when below it).
    #[must_use]
    pub fn critical_cap(mut self, cap: usize) -> Self {
        self.critical_cap = cap;
        self
    }

    /// Sets how many requests may wait for a slot (0: none waits).
    #[must_use]
    pub fn queue(mut self, queue: usize) -> Self {
        self.queue = queue;
        self
    }

    /// Sets how long a request waits for a slot before it is refused.
    #[must_use]
    pub fn queue_timeout(mut self, timeout: Duration) -> Self {
        self.queue_timeout = timeout;
        self
    }

    /// Requests in flight a pool before classes are told apart.
    pub fn limit(&self) -> usize {
        self.limit
    }
}

/// The class a request is admitted as, from its rule.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Class {
    /// Criticality `Critical`, or a positive priority.
    Critical,
    /// Criticality `Standard`, priority 0, or no rule.
    Standard,
    /// Criticality `Sheddable`, or a negative priority.
    Sheddable,
}

impl Class {
    /// The class and the queue priority of a request routed by `route`.
    pub(crate) fn of(route: Option<&RouteMatch>) -> (Class, i32) {
        let priority = match route {
            Some(r) => match (r.priority(), r.criticality()) {
                (Some(p), _) => p,
                (None, Some(Criticality::Critical)) => 1,
                (None, Some(Criticality::Sheddable)) => -1,
                _ => 0,
            },
            None => 0,
        };
        let class = match priority.cmp(&0) {
            Ordering::Greater => Class::Critical,
            Ordering::Equal => Class::Standard,
            Ordering::Less => Class::Sheddable,
        };
        (class, priority)
    }

    /// `critical`, `standard` or `sheddable`.
    pub const fn as_str(self) -> &'static str {
        match self {
            Class::Critical => "critical",
            Class::Standard => "standard",
            Class::Sheddable => "sheddable",
        }
    }

    fn index(self) -> usize {
        self as usize
    }
}

/// What one pool's admission did, by class (see [`Class`]).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct AdmissionStats {
    /// Requests admitted, at once or after waiting: `[critical, standard,
    /// sheddable]`.
    pub admitted: [u64; 3],
    /// Requests that waited for a slot.
    pub queued: [u64; 3],
    /// Requests refused (shed, queue full, or the deadline passed).
    pub refused: [u64; 3],
}

/// One pool's gate: its requests in flight and those waiting.
pub(crate) struct Gate {
    #[cfg_attr(not(feature = "metrics"), allow(dead_code))]
    pool: Box<str>,
    admission: Admission,
    state: Mutex<GateState>,
    admitted: [AtomicU64; 3],
    queued: [AtomicU64; 3],
    refused: [AtomicU64; 3],
}

#[derive(Default)]
struct GateState {
    in_flight: usize,
    /// The requests waiting for a slot, each with the sender that hands
    /// it one; the last key is served first.
    waiters: BTreeMap<WaiterKey, oneshot::Sender<()>>,
    arrivals: u64,
}

/// A waiting request's place: the highest priority first, then the
/// earliest arrival.
type WaiterKey = (i32, Reverse<u64>);

/// What a request gets at the gate.
pub(crate) enum Admit {
    /// A slot, now.
    Now(Permit),
    /// A place in the queue.
    Wait(Waiting),
    /// Refused.
    Refused,
}

impl Gate {
    pub(crate) fn new(pool: &str, admission: Admission) -> Gate {
        Gate {
            pool: pool.into(),
            admission,
            state: Mutex::default(),
            admitted: Default::default(),
            queued: Default::default(),
            refused: Default::default(),
        }
    }

    /// Counts an outcome (`admitted`, `queued`, `refused`) of `class`.
    fn count(&self, class: Class, outcome: &'static str) {
        let counters = match outcome {
            "admitted" => &self.admitted,
            "queued" => &self.queued,
            _ => &self.refused,
        };
        counters[class.index()].fetch_add(1, Atomic::Relaxed);
        #[cfg(feature = "metrics")]
        bbr_core::metrics::record_admission(&self.pool, class.as_str(), outcome);
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, GateState> {
        // The state stays consistent at every unlock: a panic elsewhere
        // does not stop admission.
        self.state
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    pub(crate) fn admit(self: &Arc<Self>, class: Class, priority: i32) -> Admit {
        let a = &self.admission;
        let mut state = self.lock();
        let room = state.in_flight < a.limit && state.waiters.is_empty();
        // Over the limit, a Critical request goes in at once only when no
        // Critical one is already waiting (it would jump the queue).
        let critical_waiting = state
            .waiters
            .last_key_value()
            .is_some_and(|((best, _), _)| *best > 0);
        let critical_room = class == Class::Critical
            && state.in_flight < a.critical_cap.max(a.limit)
            && !critical_waiting;
        if room || critical_room {
            state.in_flight += 1;
            drop(state);
            self.count(class, "admitted");
            return Admit::Now(Permit {
                gate: Arc::clone(self),
            });
        }
        let full = state.waiters.len() >= a.queue;
        // A full queue makes room for a higher priority: its lowest waiter
        // is refused (its sender dropped) in favour of this request.
        let evicts = full
            && state
                .waiters
                .first_key_value()
                .is_some_and(|((lowest, _), _)| *lowest < priority);
        if class == Class::Sheddable || (full && !evicts) {
            drop(state);
            self.count(class, "refused");
            return Admit::Refused;
        }
        if evicts {
            state.waiters.pop_first();
        }
        let (slot, granted) = oneshot::channel();
        state.arrivals += 1;
        let key = (priority, Reverse(state.arrivals));
        state.waiters.insert(key, slot);
        drop(state);
        self.count(class, "queued");
        Admit::Wait(Waiting {
            gate: Arc::clone(self),
            class,
            key,
            granted: Some(granted),
            deadline: Box::pin(tokio::time::sleep(a.queue_timeout)),
        })
    }

    /// A slot is given back: the best waiter still waiting takes it, if
    /// the pool may then hold it (a Critical waiter up to the hard cap, any
    /// other up to the limit).
    fn release(&self) {
        let a = &self.admission;
        let mut state = self.lock();
        let in_flight = state.in_flight;
        while let Some(entry) = state.waiters.last_entry() {
            let cap = if entry.key().0 > 0 {
                a.critical_cap.max(a.limit)
            } else {
                a.limit
            };
            if in_flight > cap {
                break;
            }
            if entry.remove().send(()).is_ok() {
                return;
            }
        }
        state.in_flight -= 1;
    }

    pub(crate) fn stats(&self) -> AdmissionStats {
        let read = |a: &[AtomicU64; 3]| a.each_ref().map(|n| n.load(Atomic::Relaxed));
        AdmissionStats {
            admitted: read(&self.admitted),
            queued: read(&self.queued),
            refused: read(&self.refused),
        }
    }

    /// Requests in flight now.
    #[cfg(test)]
    fn in_flight(&self) -> usize {
        self.lock().in_flight
    }
}

/// A slot in a pool: given back when dropped (with the response body).
pub(crate) struct Permit {
    gate: Arc<Gate>,
}

impl Drop for Permit {
    fn drop(&mut self) {
        self.gate.release();
    }
}

impl fmt::Debug for Permit {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Permit")
    }
}

/// A request waiting in a pool's queue: a [`Permit`] when a slot is handed
/// over, `None` at the deadline.
pub(crate) struct Waiting {
    gate: Arc<Gate>,
    class: Class,
    key: WaiterKey,
    granted: Option<oneshot::Receiver<()>>,
    deadline: Pin<Box<tokio::time::Sleep>>,
}

impl Future for Waiting {
    type Output = Option<Permit>;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Permit>> {
        let this = &mut *self;
        let Some(granted) = this.granted.as_mut() else {
            return Poll::Ready(None);
        };
        if let Poll::Ready(result) = Pin::new(granted).poll(cx) {
            this.granted = None;
            // The sender goes without a slot only if the gate does.
            return Poll::Ready(match result {
                Ok(()) => {
                    this.gate.count(this.class, "admitted");
                    Some(Permit {
                        gate: Arc::clone(&this.gate),
                    })
                }
                Err(_) => {
                    this.gate.count(this.class, "refused");
                    None
                }
            });
        }
        if this.deadline.as_mut().poll(cx).is_ready() {
            this.give_up();
            return Poll::Ready(None);
        }
        Poll::Pending
    }
}

impl Waiting {
    /// Leaves the queue; a slot handed over meanwhile goes back.
    fn give_up(&mut self) {
        if self.leave() {
            self.gate.count(self.class, "refused");
        }
    }

    /// Takes this request's place out of the queue (and gives back a slot
    /// handed over meanwhile); whether it was still waiting.
    fn leave(&mut self) -> bool {
        let Some(mut granted) = self.granted.take() else {
            return false;
        };
        self.gate.lock().waiters.remove(&self.key);
        granted.close();
        if granted.try_recv().is_ok() {
            self.gate.release();
        }
        true
    }
}

impl Drop for Waiting {
    fn drop(&mut self) {
        // A client gone while waiting: not counted as refused, but its
        // place is freed and a slot handed over must not leak.
        self.leave();
    }
}

/// What a request routed to a gated pool waits on before its pool's
/// service is called.
pub(crate) enum Entry {
    /// Admitted (the slot is taken once).
    Admitted(Option<Permit>),
    /// Waiting for a slot; refused with [`Error::shed`] at the deadline.
    Waiting { waiting: Waiting, pool: Box<str> },
}

impl Default for Entry {
    /// No gate: admitted without a slot.
    fn default() -> Entry {
        Entry::Admitted(None)
    }
}

impl Entry {
    /// The entry of a request of `class` (queue `priority`) to `pool`, or
    /// the error that refuses it at once.
    pub(crate) fn new(
        gate: &Arc<Gate>,
        pool: &str,
        route: Option<&RouteMatch>,
    ) -> Result<Entry, Error> {
        let (class, priority) = Class::of(route);
        match gate.admit(class, priority) {
            Admit::Now(permit) => Ok(Entry::Admitted(Some(permit))),
            Admit::Wait(waiting) => Ok(Entry::Waiting {
                waiting,
                pool: pool.into(),
            }),
            Admit::Refused => Err(Error::shed(pool, class.as_str())),
        }
    }

    /// The slot, once admitted.
    pub(crate) fn poll_admit(
        &mut self,
        cx: &mut Context<'_>,
    ) -> Poll<Result<Option<Permit>, Error>> {
        match self {
            Entry::Admitted(permit) => Poll::Ready(Ok(permit.take())),
            Entry::Waiting { waiting, pool } => {
                let class = waiting.class;
                Poll::Ready(match std::task::ready!(Pin::new(waiting).poll(cx)) {
                    Some(permit) => Ok(Some(permit)),
                    None => Err(Error::shed(pool, class.as_str())),
                })
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn gate(admission: Admission) -> Arc<Gate> {
        Arc::new(Gate::new("pool", admission))
    }

    fn now(admit: Admit) -> Permit {
        match admit {
            Admit::Now(p) => p,
            Admit::Wait(_) => panic!("queued"),
            Admit::Refused => panic!("refused"),
        }
    }

    fn waiting(admit: Admit) -> Waiting {
        match admit {
            Admit::Wait(w) => w,
            Admit::Now(_) => panic!("admitted"),
            Admit::Refused => panic!("refused"),
        }
    }

    #[tokio::test]
    async fn a_saturated_pool_sheds_sheddable_queues_standard_and_admits_critical() {
        let g = gate(Admission::new(2).critical_cap(3).queue(1));
        let a = now(g.admit(Class::Standard, 0));
        let _b = now(g.admit(Class::Sheddable, -1));
        // Saturated: Sheddable refused, Critical over the limit up to 3.
        assert!(matches!(g.admit(Class::Sheddable, -1), Admit::Refused));
        let c = now(g.admit(Class::Critical, 1));
        assert_eq!(g.in_flight(), 3);
        // Standard waits; the queue holds one.
        let mut w = waiting(g.admit(Class::Standard, 0));
        assert!(matches!(g.admit(Class::Standard, 0), Admit::Refused));
        // Above the cap even Critical waits: with the queue full, it would
        // take the Standard waiter's place (see the eviction test).
        assert!(futures_util::poll!(Pin::new(&mut w)).is_pending());
        // Back to the limit: no slot for the waiter yet; one more gives one.
        drop(c);
        assert!(futures_util::poll!(Pin::new(&mut w)).is_pending());
        drop(a);
        let permit = w.await.expect("a slot");
        assert_eq!(g.in_flight(), 2);
        drop(permit);
        assert_eq!(g.in_flight(), 1);
        let s = g.stats();
        assert_eq!(s.admitted, [1, 2, 1]);
        assert_eq!(s.queued, [0, 1, 0]);
        assert_eq!(s.refused, [0, 1, 1]);
    }

    #[tokio::test]
    async fn freed_slots_go_by_priority_then_arrival() {
        let g = gate(Admission::new(1).critical_cap(1).queue(8));
        let first = now(g.admit(Class::Standard, 0));
        let low = waiting(g.admit(Class::Standard, 0));
        let high = waiting(g.admit(Class::Critical, 5));
        let later_low = waiting(g.admit(Class::Standard, 0));
        drop(first);
        let high = high.await.expect("the highest priority first");
        drop(high);
        let low = low.await.expect("then the earliest");
        drop(low);
        assert!(later_low.await.is_some());
        assert_eq!(g.in_flight(), 0);
    }

    #[tokio::test(start_paused = true)]
    async fn a_waiter_past_its_deadline_is_refused_and_frees_its_place() {
        let g = gate(
            Admission::new(1)
                .queue(1)
                .queue_timeout(Duration::from_millis(100)),
        );
        let held = now(g.admit(Class::Standard, 0));
        let w = waiting(g.admit(Class::Standard, 0));
        assert!(w.await.is_none());
        // Its place in the queue is free again.
        let again = waiting(g.admit(Class::Standard, 0));
        drop(again);
        // And the slot is not lost.
        drop(held);
        assert_eq!(g.in_flight(), 0);
        drop(now(g.admit(Class::Standard, 0)));
        assert_eq!(g.stats().refused, [0, 1, 0]);
    }

    #[tokio::test]
    async fn a_critical_waiter_takes_a_slot_freed_above_the_limit() {
        let g = gate(Admission::new(1).critical_cap(3).queue(4));
        let _standard = now(g.admit(Class::Standard, 0));
        let c1 = now(g.admit(Class::Critical, 1));
        let _c2 = now(g.admit(Class::Critical, 1));
        let c3 = waiting(g.admit(Class::Critical, 1));
        let s = waiting(g.admit(Class::Standard, 0));
        // Three in flight, over the limit of one but within the cap: the
        // slot goes to the Critical waiter, not back to the pool.
        drop(c1);
        let _c3 = c3.await.expect("a slot within the cap");
        assert_eq!(g.in_flight(), 3);
        drop(s);
    }

    #[tokio::test]
    async fn a_full_queue_makes_room_for_a_higher_priority() {
        let g = gate(Admission::new(1).critical_cap(1).queue(2));
        let held = now(g.admit(Class::Standard, 0));
        let early = waiting(g.admit(Class::Standard, 0));
        let late = waiting(g.admit(Class::Standard, 0));
        // Full: another Standard request is refused…
        assert!(matches!(g.admit(Class::Standard, 0), Admit::Refused));
        // …a Critical one takes the place of the latest Standard one.
        let critical = waiting(g.admit(Class::Critical, 1));
        assert!(late.await.is_none(), "the evicted waiter is refused");
        drop(held);
        let critical = critical.await.expect("the critical request first");
        drop(critical);
        assert!(early.await.is_some());
        assert_eq!(g.stats().refused, [0, 2, 0]);
    }

    #[tokio::test]
    async fn a_waiter_dropped_after_its_slot_was_handed_over_gives_it_back() {
        let g = gate(Admission::new(1).queue(1));
        let held = now(g.admit(Class::Standard, 0));
        let w = waiting(g.admit(Class::Standard, 0));
        drop(held); // hands the slot to `w`
        assert_eq!(g.in_flight(), 1);
        drop(w); // the client left before taking it
        assert_eq!(g.in_flight(), 0);
    }

    #[test]
    fn classes_come_from_criticality_or_priority() {
        use bbr_core::rules::RuleTable;
        let table = RuleTable::from_yaml(
            "rules:\n\
             - { name: c, match: { model: { exact: c } }, criticality: Critical }\n\
             - { name: s, match: { model: { exact: s } }, criticality: Sheddable }\n\
             - { name: p, match: { model: { exact: p } }, priority: 7 }\n\
             - { name: n, match: { model: { exact: n } }, priority: -3 }\n\
             - { name: d, match: { model: { exact: d } } }\n",
        )
        .unwrap();
        let class = |m: &str| Class::of(table.route(m, None).unwrap().as_ref());
        assert_eq!(class("c"), (Class::Critical, 1));
        assert_eq!(class("s"), (Class::Sheddable, -1));
        assert_eq!(class("p"), (Class::Critical, 7));
        assert_eq!(class("n"), (Class::Sheddable, -3));
        assert_eq!(class("d"), (Class::Standard, 0));
        assert_eq!(Class::of(None), (Class::Standard, 0));
    }
}
