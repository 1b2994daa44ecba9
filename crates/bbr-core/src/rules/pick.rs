//! Weighted choice of a rewrite target: a stable hash of the request key
//! when there is one, a small lock-free PRNG otherwise.
//!
//! No `rand` dependency: the stable hash must never change between
//! versions or processes (replicas behind a load balancer must agree on
//! the target of a request id), which rules out `std`'s randomly keyed
//! hashers, and a splitmix64 stream is plenty for a traffic split.

use std::{
    collections::hash_map::RandomState,
    hash::BuildHasher,
    sync::atomic::{AtomicU64, Ordering},
    time::{SystemTime, UNIX_EPOCH},
};

const GOLDEN_GAMMA: u64 = 0x9e37_79b9_7f4a_7c15;

/// The splitmix64 / murmur3 finaliser: spreads every input bit over the output.
fn mix(mut z: u64) -> u64 {
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

/// A stable 64-bit hash of `key`: FNV-1a, then [`mix`] so that keys that
/// differ only in their last bytes (`req-1`, `req-2`) spread evenly.
/// Fixed forever: changing it moves traffic.
pub(crate) fn stable_hash(key: &[u8]) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for &b in key {
        h ^= u64::from(b);
        h = h.wrapping_mul(0x0000_0100_0000_01b3);
    }
    mix(h)
}

/// A splitmix64 stream shared by every thread: one atomic add per draw.
#[derive(Debug)]
pub(crate) struct Rng {
    state: AtomicU64,
}

impl Rng {
    pub(crate) fn seeded(seed: u64) -> Rng {
        Rng {
            state: AtomicU64::new(seed),
        }
    }

    /// A seed that differs between processes and tables.
    pub(crate) fn from_entropy() -> Rng {
        let nanos = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos() as u64);
        Rng::seeded(RandomState::new().hash_one(nanos))
    }

    pub(crate) fn next_u64(&self) -> u64 {
        mix(self
            .state
            .fetch_add(GOLDEN_GAMMA, Ordering::Relaxed)
            .wrapping_add(GOLDEN_GAMMA))
    }
}

/// Cumulative weights of a rule's targets.
#[derive(Debug)]
pub(crate) struct Weights {
    /// `cumulative[i]` = sum of the weights of targets `0..=i`.
    cumulative: Box<[u64]>,
}

impl Weights {
    pub(crate) fn new(weights: impl IntoIterator<Item = u32>) -> Weights {
        let mut sum = 0u64;
        let cumulative = weights
            .into_iter()
            .map(|w| {
                sum += u64::from(w);
                sum
            })
            .collect();
        Weights { cumulative }
    }

    /// The target index for a uniformly distributed 64-bit `draw`.
    pub(crate) fn pick(&self, draw: u64) -> usize {
        let total = self.cumulative.last().copied().unwrap_or(0);
        // Multiply-shift maps the draw onto 0..total without the bias of `%`.
        let point = ((u128::from(draw) * u128::from(total)) >> 64) as u64;
        self.cumulative
            .partition_point(|&c| c <= point)
            .min(self.cumulative.len().saturating_sub(1))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stable_hash_is_fixed() {
        // Pinned values: a change here moves live traffic between targets.
        assert_eq!(stable_hash(b"req-1"), 0xa2881c3268a7392);
        assert_ne!(stable_hash(b"req-1"), stable_hash(b"req-2"));
    }

    #[test]
    fn pick_covers_every_weight_boundary() {
        let w = Weights::new([1, 3]);
        assert_eq!(w.pick(0), 0);
        assert_eq!(w.pick(u64::MAX / 4 - 1), 0);
        assert_eq!(w.pick(u64::MAX / 4 + 1), 1);
        assert_eq!(w.pick(u64::MAX), 1);
    }

    #[test]
    fn seeded_streams_repeat() {
        let a = Rng::seeded(7);
        let b = Rng::seeded(7);
        for _ in 0..10 {
            assert_eq!(a.next_u64(), b.next_u64());
        }
        assert_ne!(Rng::seeded(7).next_u64(), Rng::seeded(8).next_u64());
    }
}
