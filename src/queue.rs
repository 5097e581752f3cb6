//! Identify concurrency: one Identify per bucket (`shard_id % max_concurrency`) per window
//! (docs/protocol.md §5, "Identify concurrency"), and the daily session-start budget.

use std::collections::{BTreeMap, HashMap};
use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use tokio::sync::Notify;

/// The window in which each bucket may identify once: 5 s on Discord.
pub const IDENTIFY_WINDOW: Duration = Duration::from_secs(5);

/// How long Discord's session-start budget lasts once reset.
pub const SESSION_START_PERIOD: Duration = Duration::from_secs(24 * 60 * 60);

/// A request for an Identify permit: resolves to the [`Permit`] once the shard may identify.
///
/// Dropping it before it resolves withdraws the request (see [`IdentifyQueue::acquire`]).
pub type PermitRequest = Pin<Box<dyn Future<Output = Permit> + 'static>>;

/// A granted Identify permit.
///
/// The holder calls [`used`](Permit::used) once its Identify has gone out. A permit dropped without
/// that was never used (the connection died before Identify was sent): it runs the release hook the
/// queue gave it, which hands the session-start unit back. The bucket's window is spent either way,
/// since a queue cannot know what the gateway saw.
#[must_use = "a dropped permit counts as unused; call `used()` once the Identify is sent"]
pub struct Permit {
    release: Option<Box<dyn FnOnce() + Send + 'static>>,
}

impl Permit {
    /// A permit that calls `on_unused` if it is dropped without [`used`](Self::used). A shared queue
    /// (e.g. over Redis) cannot block in a drop: its hook should hand the work to a task.
    pub fn new(on_unused: impl FnOnce() + Send + 'static) -> Self {
        Self {
            release: Some(Box::new(on_unused)),
        }
    }

    /// A permit with nothing to give back when unused.
    pub fn without_release() -> Self {
        Self { release: None }
    }

    /// The Identify went out: the permit's session-start unit is spent.
    pub fn used(mut self) {
        self.release = None;
    }
}

impl Drop for Permit {
    fn drop(&mut self) {
        if let Some(release) = self.release.take() {
            release();
        }
    }
}

impl std::fmt::Debug for Permit {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Permit")
            .field("releasable", &self.release.is_some())
            .finish()
    }
}

/// Hands out Identify permits. The in-process [`LocalIdentifyQueue`] serves one process; a shared one
/// (e.g. Redis) lets many processes of one bot share Discord's limit.
///
/// What an implementation must keep to:
/// - A request dropped before it resolves is withdrawn: its place goes to the next waiter of its
///   bucket, and it is charged nothing (neither a window nor a session start).
/// - A granted permit has taken its bucket's window for good: whether or not the holder uses it,
///   the next Identify of that bucket waits the full window, because an Identify may have gone out.
/// - A permit dropped without [`Permit::used`] gives its session-start unit back (through the hook
///   passed to [`Permit::new`]); one that was used does not.
pub trait IdentifyQueue: Send + Sync + 'static {
    /// Asks for a permit for `shard` (of `total`); the returned future resolves when it may
    /// identify.
    fn acquire(&self, shard: u32, total: u32) -> PermitRequest;

    /// Identifies left in the current session-start budget period, if the queue keeps a budget
    /// (exported as `shardline_session_starts_remaining` with feature `metrics`). It is asked at
    /// each metrics scrape, so it answers from what it already holds, without IO.
    fn session_starts_remaining(&self) -> Option<u32> {
        None
    }
}

/// One process's identify queue: each bucket grants a permit at most once per window, to its
/// waiters in order of their earliest start (first come, first served; start-up in bucket order, see
/// [`plan`](Self::plan)), and never past the session-start budget.
///
/// ```
/// use std::time::Duration;
/// use shardline::queue::LocalIdentifyQueue;
/// let queue = LocalIdentifyQueue::new(16, Duration::from_secs(5));
/// assert_eq!(queue.max_concurrency(), 16);
/// ```
#[derive(Debug)]
pub struct LocalIdentifyQueue {
    core: Arc<Mutex<Core>>,
    buckets: u32,
}

/// The queue's bookkeeping, apart from clocks and wake-ups: every decision takes `now`.
#[derive(Debug)]
struct Core {
    window: Duration,
    buckets: Vec<Line>,
    budget: Option<Budget>,
    /// Earliest starts reserved by [`LocalIdentifyQueue::plan`] for shards that have not asked yet.
    planned: HashMap<u32, Instant>,
    next_ticket: u64,
}

/// One bucket's waiters and its last grant.
#[derive(Debug, Default)]
struct Line {
    /// When the last permit was granted: the window runs from the grant, not from the slot, so a
    /// holder that took its permit late pushes the next one back.
    last_grant: Option<Instant>,
    /// Waiting requests by (earliest start, arrival).
    waiting: BTreeMap<(Instant, u64), Waiter>,
}

#[derive(Debug)]
struct Waiter {
    #[allow(dead_code, reason = "shown by the queue's Debug: who is waiting")]
    shard: u32,
    /// Wakes the request to look at the line again.
    wake: Arc<Notify>,
}

impl Line {
    /// Wakes the first waiter, which is due a window after the last grant (or a cancelled request's
    /// place). The ones behind it sleep to a later estimate and are woken in turn as they come
    /// first: one wake-up per grant or withdrawal, however long the line.
    fn wake_first(&self) {
        if let Some(first) = self.waiting.values().next() {
            first.wake.notify_one();
        }
    }
}

/// The daily session-start budget (docs/protocol.md §5: exhausting it resets the bot's token).
#[derive(Debug, Clone, Copy)]
struct Budget {
    total: u32,
    remaining: u32,
    resets_at: Instant,
    period: Duration,
}

impl Budget {
    /// Catches up with resets that passed by `now`.
    fn refresh(&mut self, now: Instant) {
        while now >= self.resets_at {
            self.remaining = self.total;
            self.resets_at += self.period;
        }
    }
}

/// A waiting request's place.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Ticket {
    bucket: usize,
    key: (Instant, u64),
}

/// A grant, as much as its release needs.
#[derive(Debug, Clone, Copy)]
struct Grant {
    /// The end of the budget period the grant was charged to, if a budget is kept.
    charged_until: Option<Instant>,
}

/// What a waiting request is to do.
#[derive(Debug)]
enum Turn {
    Granted(Grant),
    /// Ask again at this instant (or when the line moves up); `budget` if the session-start budget
    /// is what holds it.
    Wait {
        until: Instant,
        budget: bool,
    },
}

impl Core {
    fn new(buckets: usize, window: Duration) -> Self {
        Self {
            window,
            buckets: (0..buckets).map(|_| Line::default()).collect(),
            budget: None,
            planned: HashMap::new(),
            next_ticket: 0,
        }
    }

    fn bucket_of(&self, shard: u32) -> usize {
        shard as usize % self.buckets.len()
    }

    /// Puts `shard` in its bucket's line, from its planned start if it has one; `wake` is notified
    /// when the request should look at the line again before the time [`poll`](Self::poll) gave it.
    fn enqueue(&mut self, shard: u32, now: Instant, wake: Arc<Notify>) -> Ticket {
        let bucket = self.bucket_of(shard);
        let not_before = self.planned.remove(&shard).map_or(now, |at| at.max(now));
        self.next_ticket += 1;
        let key = (not_before, self.next_ticket);
        self.buckets[bucket]
            .waiting
            .insert(key, Waiter { shard, wake });
        Ticket { bucket, key }
    }

    /// Whether `ticket` may identify at `now`, or until when it waits.
    fn poll(&mut self, ticket: Ticket, now: Instant) -> Turn {
        let window = self.window;
        let line = &self.buckets[ticket.bucket];
        // Where the line puts this request: each waiter ahead takes a window from the last grant.
        // A waiter ahead that has not come for its turn by the time this one's is due loses its place
        // (a request still waiting on a busy actor must not hold its bucket up).
        let mut slot = None;
        let mut free_from = line.last_grant.map(|at| at + window);
        for &key in line.waiting.keys() {
            let start = free_from.map_or(key.0, |free| free.max(key.0));
            if key == ticket.key {
                slot = Some(start);
                break;
            }
            free_from = Some(start + window);
        }
        let Some(slot) = slot else {
            // Not in the line (already granted or withdrawn): nothing to grant.
            return Turn::Wait {
                until: now + window,
                budget: false,
            };
        };
        let window_free = line.last_grant.is_none_or(|at| now >= at + window);
        if now < slot || !window_free {
            return Turn::Wait {
                until: slot.max(line.last_grant.map_or(now, |at| at + window)),
                budget: false,
            };
        }
        let mut charged_until = None;
        if let Some(budget) = self.budget.as_mut() {
            budget.refresh(now);
            if budget.remaining == 0 {
                return Turn::Wait {
                    until: budget.resets_at,
                    budget: true,
                };
            }
            budget.remaining -= 1;
            charged_until = Some(budget.resets_at);
        }
        let line = &mut self.buckets[ticket.bucket];
        line.waiting.remove(&ticket.key);
        line.last_grant = Some(now);
        line.wake_first();
        Turn::Granted(Grant { charged_until })
    }

    /// Withdraws a request that was not granted; returns whether it was still waiting.
    fn cancel(&mut self, ticket: Ticket) -> bool {
        let line = &mut self.buckets[ticket.bucket];
        let was_waiting = line.waiting.remove(&ticket.key).is_some();
        if was_waiting {
            line.wake_first();
        }
        was_waiting
    }

    /// A granted permit went unused: its session start is given back if its period still runs.
    /// The bucket's window stays taken.
    fn release(&mut self, grant: Grant, now: Instant) {
        let (Some(budget), Some(charged_until)) = (self.budget.as_mut(), grant.charged_until)
        else {
            return;
        };
        budget.refresh(now);
        // A unit of a period that has since reset is gone with it; the new period's count is full.
        if budget.resets_at == charged_until {
            budget.remaining = (budget.remaining + 1).min(budget.total);
        }
    }

    fn remaining(&self, now: Instant) -> Option<u32> {
        self.budget.map(|mut b| {
            b.refresh(now);
            b.remaining
        })
    }
}

fn lock(core: &Mutex<Core>) -> MutexGuard<'_, Core> {
    // A poisoned lock only means another thread panicked mid-update; the bookkeeping is still whole
    // (every update is a single insert, remove or assignment).
    core.lock().unwrap_or_else(|p| p.into_inner())
}

impl LocalIdentifyQueue {
    /// A queue for `max_concurrency` buckets (at least 1), each granting once per `window`.
    pub fn new(max_concurrency: u32, window: Duration) -> Self {
        let buckets = max_concurrency.max(1) as usize;
        Self {
            core: Arc::new(Mutex::new(Core::new(buckets, window))),
            buckets: buckets as u32,
        }
    }

    /// Reserves the first Identify of every shard in `ids`, in ascending order, so that start-up goes
    /// in bucket order (0..mc-1 together, then mc..2mc-1, …; docs/protocol.md §5) however the connections
    /// race: a shard's first [`acquire`](IdentifyQueue::acquire) waits for its planned start.
    pub fn plan(&self, ids: &[u32]) {
        lock(&self.core).plan(ids, Instant::now());
    }

    /// Also keeps to a session-start budget: `remaining` of `total` Identifies until `reset_after`
    /// from now, then `total` per `period`. Past the budget, permits wait for the reset rather than
    /// exceed it. A session start is counted when its permit is granted, and given back if the
    /// permit goes unused.
    pub fn with_budget(
        self,
        total: u32,
        remaining: u32,
        reset_after: Duration,
        period: Duration,
    ) -> Self {
        lock(&self.core).budget = Some(Budget {
            total: total.max(1),
            remaining: remaining.min(total.max(1)),
            resets_at: Instant::now() + reset_after,
            period,
        });
        self
    }

    /// Identifies left in the current budget period, if a budget is kept.
    pub fn remaining(&self) -> Option<u32> {
        lock(&self.core).remaining(Instant::now())
    }

    /// The number of buckets.
    pub fn max_concurrency(&self) -> u32 {
        self.buckets
    }
}

impl Core {
    fn plan(&mut self, ids: &[u32], now: Instant) {
        let mut sorted = ids.to_vec();
        sorted.sort_unstable();
        let mut next: Vec<Instant> = self
            .buckets
            .iter()
            .map(|line| {
                line.last_grant
                    .map_or(now, |at| (at + self.window).max(now))
            })
            .collect();
        for id in sorted {
            let bucket = self.bucket_of(id);
            self.planned.insert(id, next[bucket]);
            next[bucket] += self.window;
        }
    }
}

/// A request's place in its line, withdrawn if the request is dropped before its grant.
struct Waiting {
    core: Arc<Mutex<Core>>,
    ticket: Option<Ticket>,
}

impl Drop for Waiting {
    fn drop(&mut self) {
        if let Some(ticket) = self.ticket.take() {
            lock(&self.core).cancel(ticket);
        }
    }
}

impl IdentifyQueue for LocalIdentifyQueue {
    fn session_starts_remaining(&self) -> Option<u32> {
        self.remaining()
    }

    fn acquire(&self, shard: u32, _total: u32) -> PermitRequest {
        let wake = Arc::new(Notify::new());
        let ticket = lock(&self.core).enqueue(shard, Instant::now(), wake.clone());
        let mut waiting = Waiting {
            core: self.core.clone(),
            ticket: Some(ticket),
        };
        Box::pin(async move {
            let mut warned = false;
            loop {
                let now = Instant::now();
                let turn = lock(&waiting.core).poll(ticket, now);
                match turn {
                    Turn::Granted(grant) => {
                        waiting.ticket = None;
                        let core = waiting.core.clone();
                        return Permit::new(move || lock(&core).release(grant, Instant::now()));
                    }
                    Turn::Wait { until, budget } => {
                        if budget && !warned {
                            warned = true;
                            tracing::warn!(shard.id = shard, wait = ?until.saturating_duration_since(now), "session-start budget used up: identify waits for the reset");
                        }
                        // `notify_one` keeps a wake-up given before this wait starts.
                        tokio::select! {
                            () = actix_rt::time::sleep_until(until.into()) => {}
                            () = wake.notified() => {}
                        }
                    }
                }
            }
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use futures_util::FutureExt;

    const W: Duration = Duration::from_secs(5);

    fn secs(n: u64) -> Duration {
        Duration::from_secs(n)
    }

    /// `Some(wait)` if the ticket must wait that long from `t0`, `None` if granted.
    fn poll_at(core: &mut Core, ticket: Ticket, t0: Instant, at: Duration) -> Option<Duration> {
        match core.poll(ticket, t0 + at) {
            Turn::Granted(_) => None,
            Turn::Wait { until, .. } => Some(until - t0),
        }
    }

    #[test]
    fn buckets_are_independent_and_spaced_by_the_window() {
        let mut core = Core::new(2, W);
        let t0 = Instant::now();
        let tickets: Vec<_> = (0..6)
            .map(|shard| core.enqueue(shard, t0, Arc::default()))
            .collect();
        let waits: Vec<_> = tickets
            .iter()
            .map(|&t| poll_at(&mut core, t, t0, secs(0)))
            .collect();
        // shards 0,2,4 share bucket 0; 1,3,5 bucket 1.
        assert_eq!(
            waits,
            [
                None,
                None,
                Some(secs(5)),
                Some(secs(5)),
                Some(secs(10)),
                Some(secs(10))
            ]
        );
        assert_eq!(poll_at(&mut core, tickets[2], t0, secs(5)), None);
        assert_eq!(poll_at(&mut core, tickets[4], t0, secs(9)), Some(secs(10)));
        // After a quiet period the bucket grants at once again.
        let later = core.enqueue(4, t0 + secs(60), Arc::default());
        assert_eq!(poll_at(&mut core, later, t0, secs(60)), None);
    }

    #[test]
    fn start_up_is_planned_in_bucket_order_whoever_asks_first() {
        let mut core = Core::new(3, W);
        let t0 = Instant::now();
        core.plan(&[5, 4, 3, 2, 1, 0], t0);
        // The later half of the plan asks first.
        let tickets: Vec<_> = [5, 4, 3, 2, 1, 0]
            .iter()
            .map(|&shard| (shard, core.enqueue(shard, t0, Arc::default())))
            .collect();
        for &(shard, ticket) in &tickets {
            let expected = if shard < 3 { None } else { Some(secs(5)) };
            assert_eq!(
                poll_at(&mut core, ticket, t0, secs(0)),
                expected,
                "shard {shard}"
            );
        }
    }

    #[test]
    fn a_withdrawn_request_frees_its_place_and_is_charged_nothing() {
        let mut core = Core::new(1, W);
        core.budget = Some(Budget {
            total: 10,
            remaining: 10,
            resets_at: Instant::now() + secs(3600),
            period: secs(86_400),
        });
        let t0 = Instant::now();
        let wakes: [Arc<Notify>; 3] = Default::default();
        let [a, b, c] =
            [0, 1, 2].map(|shard| core.enqueue(shard, t0, wakes[shard as usize].clone()));
        let woken = |i: usize| wakes[i].notified().now_or_never().is_some();
        assert_eq!(poll_at(&mut core, a, t0, secs(0)), None);
        assert!(woken(1), "the grant wakes the next in line");
        assert_eq!(poll_at(&mut core, b, t0, secs(0)), Some(secs(5)));
        assert_eq!(poll_at(&mut core, c, t0, secs(0)), Some(secs(10)));
        assert!(!woken(2));
        assert!(core.cancel(b));
        assert!(woken(2), "the withdrawal wakes the one that moves up");
        assert!(!core.cancel(b), "withdrawn once");
        // C moves up into B's place.
        assert_eq!(poll_at(&mut core, c, t0, secs(1)), Some(secs(5)));
        assert_eq!(poll_at(&mut core, c, t0, secs(5)), None);
        assert_eq!(core.remaining(t0 + secs(5)), Some(8), "A and C only");
    }

    #[test]
    fn an_unused_permit_gives_its_start_back_but_not_its_window() {
        let mut core = Core::new(1, W);
        let t0 = Instant::now();
        core.budget = Some(Budget {
            total: 10,
            remaining: 10,
            resets_at: t0 + secs(100),
            period: secs(1000),
        });
        let a = core.enqueue(0, t0, Arc::default());
        let Turn::Granted(grant) = core.poll(a, t0) else {
            panic!("granted at once")
        };
        assert_eq!(core.remaining(t0), Some(9));
        core.release(grant, t0 + secs(1));
        assert_eq!(core.remaining(t0 + secs(1)), Some(10));
        // The Identify might have gone out: the next one still waits the whole window.
        let b = core.enqueue(1, t0 + secs(1), Arc::default());
        assert_eq!(poll_at(&mut core, b, t0, secs(1)), Some(secs(5)));
        let Turn::Granted(grant) = core.poll(b, t0 + secs(5)) else {
            panic!("granted after the window")
        };
        // Released after the budget reset: the new period's count stays full, not total + 1.
        core.release(grant, t0 + secs(101));
        assert_eq!(core.remaining(t0 + secs(101)), Some(10));
    }

    #[test]
    fn waits_for_the_budget_reset_rather_than_exceed_it() {
        let mut core = Core::new(4, W);
        let t0 = Instant::now();
        core.budget = Some(Budget {
            total: 3,
            remaining: 2,
            resets_at: t0 + secs(100),
            period: secs(1000),
        });
        let tickets: Vec<_> = (0..6)
            .map(|shard| core.enqueue(shard, t0, Arc::default()))
            .collect();
        let waits: Vec<_> = tickets
            .iter()
            .map(|&t| core.poll(t, t0))
            .map(|turn| match turn {
                Turn::Granted(_) => None,
                Turn::Wait { until, budget } => Some((until - t0, budget)),
            })
            .collect();
        assert_eq!(waits[..2], [None, None]);
        // Budget gone after two: the rest wait for the reset (then 3 per period).
        for wait in &waits[2..4] {
            assert_eq!(*wait, Some((secs(100), true)));
        }
        assert_eq!(core.remaining(t0), Some(0));
        let at_reset: Vec<_> = tickets[2..]
            .iter()
            .map(|&t| poll_at(&mut core, t, t0, secs(100)))
            .collect();
        assert_eq!(at_reset, [None, None, None, Some(secs(1100))]);
        assert_eq!(core.remaining(t0 + secs(100)), Some(0));
    }

    #[actix_rt::test]
    async fn a_late_grant_pushes_the_next_one_back() {
        let queue = LocalIdentifyQueue::new(1, Duration::from_millis(100));
        let first = queue.acquire(0, 2);
        let second = queue.acquire(1, 2);
        // The first holder only takes its permit 60 ms late.
        actix_rt::time::sleep(Duration::from_millis(60)).await;
        first.await.used();
        let granted = Instant::now();
        second.await.used();
        assert!(
            granted.elapsed() >= Duration::from_millis(95),
            "{:?}",
            granted.elapsed()
        );
    }

    #[actix_rt::test]
    async fn dropping_a_request_withdraws_it_and_the_next_waiter_takes_its_place() {
        let queue = LocalIdentifyQueue::new(1, Duration::from_millis(50)).with_budget(
            10,
            10,
            Duration::from_secs(3600),
            SESSION_START_PERIOD,
        );
        queue.acquire(0, 3).await.used();
        let dropped = queue.acquire(1, 3);
        let next = queue.acquire(2, 3);
        let waiting = |q: &LocalIdentifyQueue| -> Vec<u32> {
            lock(&q.core).buckets[0]
                .waiting
                .values()
                .map(|w| w.shard)
                .collect()
        };
        assert_eq!(waiting(&queue), [1, 2]);
        drop(dropped);
        assert_eq!(waiting(&queue), [2]);
        next.await.used();
        assert_eq!(
            queue.remaining(),
            Some(8),
            "the withdrawn request cost nothing"
        );
        // A permit dropped unused gives its start back.
        drop(queue.acquire(3, 4).await);
        assert_eq!(queue.remaining(), Some(8));
    }
}
