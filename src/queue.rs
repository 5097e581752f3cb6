//! Identify concurrency: one Identify per bucket (`shard_id % max_concurrency`) per window
//! (docs/protocol.md §5, "Identify concurrency").

use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// The window in which each bucket may identify once: 5 s on Discord.
pub const IDENTIFY_WINDOW: Duration = Duration::from_secs(5);

/// A future that resolves when the shard may send Identify.
pub type Permit = Pin<Box<dyn Future<Output = ()> + 'static>>;

/// Hands out Identify permits. The in-process [`LocalIdentifyQueue`] serves one process; a shared one
/// (e.g. Redis) lets many processes of one bot share Discord's limit.
pub trait IdentifyQueue: Send + Sync + 'static {
    /// Resolves when `shard` (of `total`) may identify. Dropping the future before it resolves may
    /// still use the slot it reserved.
    fn acquire(&self, shard: u32, total: u32) -> Permit;
}

/// One process's identify queue: each bucket grants a permit at most once per window, first come,
/// first served.
///
/// ```
/// use std::time::Duration;
/// use shardline::queue::LocalIdentifyQueue;
/// let queue = LocalIdentifyQueue::new(16, Duration::from_secs(5));
/// assert_eq!(queue.max_concurrency(), 16);
/// ```
#[derive(Debug)]
pub struct LocalIdentifyQueue {
    window: Duration,
    /// For each bucket, the earliest instant its next permit may be reserved for.
    next_free: Vec<Mutex<Option<Instant>>>,
    /// For each bucket, when its last permit was actually granted. A permit whose holder woke late
    /// pushes the next one back, so Identifies go out a full window apart, not just their slots.
    granted: Arc<[Mutex<Option<Instant>>]>,
    budget: Mutex<Option<Budget>>,
    /// First identifies reserved at start-up, in shard order.
    planned: Mutex<std::collections::HashMap<u32, Instant>>,
}

/// The daily session-start budget (docs/protocol.md §5: exhausting it resets the bot's token).
#[derive(Debug, Clone, Copy)]
struct Budget {
    total: u32,
    remaining: u32,
    /// `remaining` counts Identifies from this instant on (a refill is no use before its reset).
    valid_from: Instant,
    resets_at: Instant,
    period: Duration,
}

/// How long Discord's session-start budget lasts once reset.
pub const SESSION_START_PERIOD: Duration = Duration::from_secs(24 * 60 * 60);

impl LocalIdentifyQueue {
    /// A queue for `max_concurrency` buckets (at least 1), each granting once per `window`.
    pub fn new(max_concurrency: u32, window: Duration) -> Self {
        let buckets = max_concurrency.max(1) as usize;
        Self {
            window,
            next_free: (0..buckets).map(|_| Mutex::new(None)).collect(),
            granted: (0..buckets).map(|_| Mutex::new(None)).collect(),
            budget: Mutex::new(None),
            planned: Mutex::new(std::collections::HashMap::new()),
        }
    }

    /// Reserves the first Identify of every shard in `ids`, in ascending order, so that start-up goes
    /// in bucket order (0..mc-1 together, then mc..2mc-1, …; docs/protocol.md §5) however the connections
    /// race. A shard's first [`acquire`](IdentifyQueue::acquire) then waits for its planned slot.
    pub fn plan(&self, ids: &[u32]) {
        let now = Instant::now();
        let mut sorted = ids.to_vec();
        sorted.sort_unstable();
        let mut planned = self.planned.lock().unwrap_or_else(|p| p.into_inner());
        for id in sorted {
            let at = self.reserve(id, now);
            planned.insert(id, at);
        }
    }

    /// Also keeps to a session-start budget: `remaining` of `total` Identifies until `reset_after`
    /// from now, then `total` per `period`. Past the budget, permits wait for the reset rather than
    /// exceed it.
    pub fn with_budget(
        self,
        total: u32,
        remaining: u32,
        reset_after: Duration,
        period: Duration,
    ) -> Self {
        *self.budget.lock().unwrap_or_else(|p| p.into_inner()) = Some(Budget {
            total: total.max(1),
            remaining,
            valid_from: Instant::now(),
            resets_at: Instant::now() + reset_after,
            period,
        });
        self
    }

    /// Identifies left in the current budget period, if a budget is kept.
    pub fn remaining(&self) -> Option<u32> {
        let budget = self.budget.lock().unwrap_or_else(|p| p.into_inner());
        let now = Instant::now();
        budget.map(|b| match () {
            _ if now >= b.resets_at => b.total,
            // Every Identify of this period is spoken for; the count is for a later one.
            _ if now < b.valid_from => 0,
            _ => b.remaining,
        })
    }

    /// The number of buckets.
    pub fn max_concurrency(&self) -> u32 {
        self.next_free.len() as u32
    }

    /// Reserves the bucket's next slot and returns when it starts.
    fn reserve(&self, shard: u32, now: Instant) -> Instant {
        let bucket = shard as usize % self.next_free.len();
        // A poisoned lock only means another thread panicked mid-update; the instant is still valid.
        let mut next = self.next_free[bucket]
            .lock()
            .unwrap_or_else(|p| p.into_inner());
        let mut at = next.map_or(now, |n| n.max(now));
        let mut budget = self.budget.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(b) = budget.as_mut() {
            at = at.max(b.valid_from);
            // Catch up with resets that passed while nothing identified.
            while at >= b.resets_at {
                b.remaining = b.total;
                b.valid_from = b.resets_at;
                b.resets_at += b.period;
            }
            if b.remaining == 0 {
                tracing::warn!(shard.id = shard, wait = ?b.resets_at.saturating_duration_since(now), "session-start budget used up: identify waits for the reset");
                at = b.resets_at;
                b.remaining = b.total;
                b.valid_from = b.resets_at;
                b.resets_at += b.period;
            }
            b.remaining -= 1;
        }
        *next = Some(at + self.window);
        at
    }
}

impl IdentifyQueue for LocalIdentifyQueue {
    fn acquire(&self, shard: u32, _total: u32) -> Permit {
        let planned = self
            .planned
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .remove(&shard);
        let mut at = planned.unwrap_or_else(|| self.reserve(shard, Instant::now()));
        let granted = self.granted.clone();
        let bucket = shard as usize % granted.len();
        let window = self.window;
        Box::pin(async move {
            loop {
                actix_rt::time::sleep_until(at.into()).await;
                let mut last = granted[bucket].lock().unwrap_or_else(|p| p.into_inner());
                let now = Instant::now();
                match *last {
                    Some(previous) if now < previous + window => at = previous + window,
                    _ => {
                        *last = Some(now);
                        return;
                    }
                }
            }
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn buckets_are_independent_and_spaced_by_the_window() {
        let queue = LocalIdentifyQueue::new(2, Duration::from_secs(5));
        let t0 = Instant::now();
        let slots: Vec<_> = (0..6).map(|shard| queue.reserve(shard, t0)).collect();
        let secs = |i: usize| (slots[i] - t0).as_secs();
        // shards 0,2,4 share bucket 0; 1,3,5 bucket 1.
        assert_eq!([secs(0), secs(2), secs(4)], [0, 5, 10]);
        assert_eq!([secs(1), secs(3), secs(5)], [0, 5, 10]);
        // After a quiet period the bucket grants at once again.
        let later = t0 + Duration::from_secs(60);
        assert_eq!(queue.reserve(0, later), later);
    }

    #[test]
    fn start_up_is_planned_in_bucket_order_whoever_asks_first() {
        let queue = LocalIdentifyQueue::new(3, Duration::from_secs(5));
        let t0 = Instant::now();
        queue.plan(&[5, 4, 3, 2, 1, 0]);
        let slot = |shard| queue.planned.lock().unwrap()[&shard] - t0;
        for shard in 0..3 {
            assert!(slot(shard) < Duration::from_millis(100));
            assert!(slot(shard + 3) >= Duration::from_millis(4900));
        }
        // A later request for a bucket waits behind the plan.
        assert!(queue.reserve(0, t0) - t0 >= Duration::from_millis(9900));
    }

    #[actix_rt::test]
    async fn a_late_grant_pushes_the_next_one_back() {
        let queue = LocalIdentifyQueue::new(1, Duration::from_millis(100));
        let first = queue.acquire(0, 2);
        let second = queue.acquire(1, 2);
        // The first holder only takes its permit 60 ms late.
        actix_rt::time::sleep(Duration::from_millis(60)).await;
        first.await;
        let granted = Instant::now();
        second.await;
        assert!(
            granted.elapsed() >= Duration::from_millis(95),
            "{:?}",
            granted.elapsed()
        );
    }

    #[test]
    fn waits_for_the_budget_reset_rather_than_exceed_it() {
        let queue = LocalIdentifyQueue::new(4, Duration::from_secs(5)).with_budget(
            3,
            2,
            Duration::from_secs(100),
            Duration::from_secs(1000),
        );
        let t0 = Instant::now();
        let slots: Vec<_> = (0..5).map(|shard| queue.reserve(shard, t0)).collect();
        assert!(
            slots[0] <= t0 + Duration::from_millis(1) && slots[1] <= t0 + Duration::from_millis(1)
        );
        // Budget gone after two: the next three wait for the reset (then 3 per period).
        for slot in &slots[2..] {
            let wait = *slot - t0;
            assert!(
                wait >= Duration::from_secs(99) && wait <= Duration::from_secs(101),
                "{wait:?}"
            );
        }
        let sixth = queue.reserve(5, t0) - t0;
        assert!(sixth >= Duration::from_secs(1099), "{sixth:?}");
        assert_eq!(queue.remaining(), Some(0));
    }
}
