//! Whether this process may run a shard right now: a [`LeaseGuard`] the shard checks before it
//! writes anything to its connection, and that its owner (the fleet's lease keeper) extends or
//! revokes. Without a fleet, shards run unguarded.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// Whether a shard's lease is still this process's, readable from any thread without Redis: the
/// instant (on this process's monotonic clock) until which it surely is.
#[derive(Debug, Clone)]
pub struct LeaseGuard {
    /// Milliseconds since `origin` until which the lease holds; 0: not held.
    valid_until_ms: Arc<AtomicU64>,
    origin: Instant,
}

impl LeaseGuard {
    /// A guard that holds until `valid_until`.
    pub fn new(valid_until: Instant) -> Self {
        let origin = Instant::now();
        let guard = Self {
            valid_until_ms: Arc::new(AtomicU64::new(0)),
            origin,
        };
        guard.extend_to(valid_until);
        guard
    }

    /// Whether the lease surely holds at `now`.
    pub fn holds(&self, now: Instant) -> bool {
        let until = self.valid_until_ms.load(Ordering::Acquire);
        until > 0 && (now.saturating_duration_since(self.origin).as_millis() as u64) < until
    }

    /// How long from `now` the lease surely holds (zero when it does not).
    pub fn remaining(&self, now: Instant) -> Duration {
        let until = self.valid_until_ms.load(Ordering::Acquire);
        let now_ms = now.saturating_duration_since(self.origin).as_millis() as u64;
        Duration::from_millis(until.saturating_sub(now_ms))
    }

    /// Moves the end of validity to `until` (after a renewal).
    pub fn extend_to(&self, until: Instant) {
        let ms = until.saturating_duration_since(self.origin).as_millis() as u64;
        self.valid_until_ms.store(ms.max(1), Ordering::Release);
    }

    /// Ends validity now (the lease was lost or released).
    pub fn revoke(&self) {
        self.valid_until_ms.store(0, Ordering::Release);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_guard_holds_until_its_instant_and_not_after() {
        let start = Instant::now();
        let guard = LeaseGuard::new(start + Duration::from_secs(10));
        assert!(guard.holds(start));
        assert!(guard.holds(start + Duration::from_millis(9_990)));
        assert!(!guard.holds(start + Duration::from_secs(10)));
        assert!(!guard.holds(start + Duration::from_secs(3600)));
        guard.extend_to(start + Duration::from_secs(20));
        assert!(guard.holds(start + Duration::from_secs(15)));
        guard.revoke();
        assert!(!guard.holds(start));
        assert_eq!(guard.remaining(start), Duration::ZERO);
    }

    #[test]
    fn a_guard_made_for_the_past_never_holds() {
        let guard = LeaseGuard::new(Instant::now());
        assert!(!guard.holds(Instant::now() + Duration::from_millis(1)));
    }
}
