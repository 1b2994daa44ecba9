//! [`HoldBudget`]: the body bytes all requests of a layer may hold, together,
//! while they wait for their routing decision.

use std::{
    fmt,
    sync::{
        Arc,
        atomic::{AtomicU64, Ordering},
    },
};

/// The default budget: 256 MiB held before decisions, across all requests.
pub const DEFAULT_HOLD_BUDGET: u64 = 256 << 20;

/// A budget of body bytes held before routing decisions, shared by every
/// request of a [`ModelRoutingLayer`](crate::ModelRoutingLayer) (and its
/// clones).
///
/// Each request holds its body only up to `model`, and at most the
/// extractor's body limit; the budget bounds what all of them hold at once,
/// so that many clients sending long prompts before `model` cannot take the
/// process's memory. A chunk that would go past the budget has its request
/// answered `503 overloaded` with `Retry-After: 1` (counted in
/// [`refused`](HoldBudget::refused)). Bytes count from the moment a chunk
/// is held until the inner service takes it from the request body after
/// the decision (or until the request ends): chunks held for a slow
/// upstream still count.
///
/// ```
/// use bbr_tower::{HoldBudget, ModelRoutingLayer};
///
/// let budget = HoldBudget::new(64 << 20);
/// let layer = ModelRoutingLayer::new().hold_budget(budget.clone());
/// // Later, for a metrics endpoint:
/// assert_eq!((budget.in_use(), budget.refused()), (0, 0));
/// # drop(layer);
/// ```
#[derive(Clone)]
pub struct HoldBudget {
    inner: Arc<Inner>,
}

struct Inner {
    limit: u64,
    in_use: AtomicU64,
    refused: AtomicU64,
}

impl HoldBudget {
    /// A budget of `limit` bytes.
    pub fn new(limit: u64) -> HoldBudget {
        HoldBudget {
            inner: Arc::new(Inner {
                limit,
                in_use: AtomicU64::new(0),
                refused: AtomicU64::new(0),
            }),
        }
    }

    /// The most bytes held before decisions at once.
    pub fn limit(&self) -> u64 {
        self.inner.limit
    }

    /// The bytes held before decisions now.
    pub fn in_use(&self) -> u64 {
        self.inner.in_use.load(Ordering::Relaxed)
    }

    /// How many requests were refused because the budget was spent.
    pub fn refused(&self) -> u64 {
        self.inner.refused.load(Ordering::Relaxed)
    }

    /// Takes `bytes` from the budget; `false` (and counted) when they do
    /// not fit.
    fn take(&self, bytes: u64) -> bool {
        let fits = self
            .inner
            .in_use
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |used| {
                used.checked_add(bytes).filter(|&n| n <= self.inner.limit)
            })
            .is_ok();
        if !fits {
            self.inner.refused.fetch_add(1, Ordering::Relaxed);
        }
        fits
    }

    fn give_back(&self, bytes: u64) {
        self.inner.in_use.fetch_sub(bytes, Ordering::AcqRel);
    }
}

impl Default for HoldBudget {
    fn default() -> Self {
        HoldBudget::new(DEFAULT_HOLD_BUDGET)
    }
}

impl fmt::Debug for HoldBudget {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("HoldBudget")
            .field("limit", &self.limit())
            .field("in_use", &self.in_use())
            .field("refused", &self.refused())
            .finish()
    }
}

/// What one request has taken from the budget; given back at the decision,
/// or when the request is dropped.
pub(crate) struct Reservation {
    budget: HoldBudget,
    bytes: u64,
}

impl Reservation {
    pub(crate) fn new(budget: HoldBudget) -> Reservation {
        Reservation { budget, bytes: 0 }
    }

    /// Takes `bytes` more; `false` when the budget is spent.
    pub(crate) fn take(&mut self, bytes: u64) -> bool {
        let ok = self.budget.take(bytes);
        if ok {
            self.bytes += bytes;
        }
        ok
    }

    /// Gives back `bytes` of what was taken (at most all of it): a held
    /// chunk handed on.
    pub(crate) fn give_back(&mut self, bytes: u64) {
        let bytes = bytes.min(self.bytes);
        if bytes > 0 {
            self.budget.give_back(bytes);
            self.bytes -= bytes;
        }
    }

    /// Keeps at most `bytes` taken, giving back the rest (what is still
    /// held after the decision, a rewrite having changed its length).
    pub(crate) fn keep(&mut self, bytes: u64) {
        self.give_back(self.bytes.saturating_sub(bytes));
    }

    /// Gives everything back.
    pub(crate) fn release(&mut self) {
        if self.bytes > 0 {
            self.budget.give_back(self.bytes);
            self.bytes = 0;
        }
    }
}

impl Drop for Reservation {
    fn drop(&mut self) {
        self.release();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reservations_take_and_give_back() {
        let budget = HoldBudget::new(100);
        let mut a = Reservation::new(budget.clone());
        let mut b = Reservation::new(budget.clone());
        assert!(a.take(60));
        assert!(!b.take(41), "past the limit");
        assert_eq!(budget.refused(), 1);
        assert!(b.take(40));
        assert_eq!(budget.in_use(), 100);
        a.release();
        assert_eq!(budget.in_use(), 40);
        drop(b);
        assert_eq!(budget.in_use(), 0);
        assert!(!Reservation::new(budget.clone()).take(u64::MAX));

        let mut c = Reservation::new(budget.clone());
        assert!(c.take(50));
        c.keep(30);
        assert_eq!(budget.in_use(), 30);
        c.keep(80);
        assert_eq!(budget.in_use(), 30, "keeping more takes nothing");
        c.give_back(20);
        assert_eq!(budget.in_use(), 10);
        c.give_back(1000);
        assert_eq!(budget.in_use(), 0);
    }
}
