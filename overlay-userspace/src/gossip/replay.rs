//! Which authenticated datagrams are new: a window on the time they were sealed,
//! and the nonces seen inside it.
//!
//! A datagram sealed more than [`WINDOW`] before or after this node's clock, or
//! before this node's socket opened, is *stale*; one whose nonce was seen inside
//! the window is *replayed*. Both are dropped unanswered. Honest datagrams are
//! sealed an instant before they leave, so only a clock off by more than the
//! window (or a datagram queued that long) makes them stale: the window is wide
//! so that a loaded node or a few seconds of clock skew never lose one.

use std::collections::BTreeSet;

use super::wire::Nonce;

/// How far a datagram's seal time may lie from this node's clock, either way.
pub const WINDOW_MS: u64 = 60_000;
/// How many nonces are remembered. Only datagrams that authenticate are
/// remembered, so only key holders fill it: a node hears a few hundred a
/// second in a cluster of 60, and this holds minutes of that (about 4 MiB).
pub const CAPACITY: usize = 65_536;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Freshness {
    Fresh,
    /// Seen before, inside the window.
    Replayed,
    /// Sealed outside the window.
    Stale,
}

#[derive(Debug)]
pub struct ReplayGuard {
    window_ms: u64,
    capacity: usize,
    /// Nothing sealed before this is accepted: the socket's opening, raised as
    /// remembered nonces are evicted (see `check`).
    floor_ms: u64,
    /// Ordered by seal time, so what the window left behind goes from the front.
    seen: BTreeSet<(u64, Nonce)>,
}

impl ReplayGuard {
    /// A guard for a socket opened at `opened_ms`: what was sealed before
    /// cannot have been meant for it, and its nonces were never remembered.
    pub fn new(opened_ms: u64) -> ReplayGuard {
        ReplayGuard::with_limits(opened_ms, WINDOW_MS, CAPACITY)
    }

    pub fn with_limits(opened_ms: u64, window_ms: u64, capacity: usize) -> ReplayGuard {
        ReplayGuard {
            window_ms,
            capacity,
            floor_ms: opened_ms,
            seen: BTreeSet::new(),
        }
    }

    /// Whether a datagram sealed at `sealed_at_ms` with `nonce` is new at
    /// `now_ms`; a new one is remembered.
    pub fn check(&mut self, sealed_at_ms: u64, nonce: Nonce, now_ms: u64) -> Freshness {
        let low = now_ms.saturating_sub(self.window_ms).max(self.floor_ms);
        while self.seen.first().is_some_and(|(at, _)| *at < low) {
            self.seen.pop_first();
        }
        if sealed_at_ms < low || sealed_at_ms > now_ms.saturating_add(self.window_ms) {
            return Freshness::Stale;
        }
        if !self.seen.insert((sealed_at_ms, nonce)) {
            return Freshness::Replayed;
        }
        if self.seen.len() > self.capacity {
            // Full: the oldest nonce is forgotten and the window's low edge moves
            // past it, so a copy of it (or of anything older) is stale, never
            // accepted twice. Memory stays bounded; under an honest overload the
            // window narrows, and what falls out of it counts as stale.
            let (at, _) = self.seen.pop_first().expect("more than capacity");
            self.floor_ms = self.floor_ms.max(at + 1);
        }
        Freshness::Fresh
    }

    pub fn remembered(&self) -> usize {
        self.seen.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn nonce(n: u8) -> Nonce {
        [n; 24]
    }

    #[test]
    fn a_copy_is_replayed_and_an_old_or_early_datagram_is_stale() {
        let mut g = ReplayGuard::with_limits(1_000, 100, 16);
        assert_eq!(g.check(1_050, nonce(1), 1_060), Freshness::Fresh);
        assert_eq!(g.check(1_050, nonce(1), 1_070), Freshness::Replayed);
        // The same nonce with another time is another datagram only to the
        // cache; the seal makes both unforgeable, so this is a key holder's.
        assert_eq!(g.check(1_051, nonce(1), 1_070), Freshness::Fresh);
        // Sealed before the socket opened: never meant for it.
        assert_eq!(g.check(999, nonce(2), 1_010), Freshness::Stale);
        // Outside the window either way.
        assert_eq!(g.check(1_100, nonce(3), 1_201), Freshness::Stale);
        assert_eq!(g.check(1_302, nonce(4), 1_201), Freshness::Stale);
        // Once the window has moved past it, a copy is stale, and forgotten.
        assert_eq!(g.check(1_050, nonce(1), 1_151), Freshness::Stale);
        assert_eq!(g.remembered(), 0);
    }

    #[test]
    fn a_full_cache_narrows_the_window_and_never_accepts_a_copy() {
        let mut g = ReplayGuard::with_limits(0, 1_000_000, 4);
        for n in 0..10u8 {
            assert_eq!(g.check(u64::from(n), nonce(n), 20), Freshness::Fresh);
            assert!(g.remembered() <= 4);
        }
        // The six evicted ones are stale now, the four kept ones replays:
        // no copy of any is fresh.
        for n in 0..10u8 {
            let want = if n < 6 {
                Freshness::Stale
            } else {
                Freshness::Replayed
            };
            assert_eq!(g.check(u64::from(n), nonce(n), 20), want, "datagram {n}");
        }
    }
}
