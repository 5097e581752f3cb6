//! The identify queue shared by every process of a bot: one Identify per bucket
//! (`shard_id % max_concurrency`) per window, and one daily session-start budget, both kept in
//! Redis (docs/protocol.md §5, docs/fleet.md "Identify").
//!
//! A bucket's permit is a key set with `NX` and a TTL of one window: Redis's clock decides when the
//! next Identify of that bucket may go, whatever the processes' clocks say, and a permit taken by a
//! process that then died frees itself when its window ends.

use std::sync::atomic::{AtomicI64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use redis::Script;

use crate::fleet::connect::FleetRedis;
use crate::queue::{IdentifyQueue, Permit, PermitRequest};
use crate::rest::SessionStartLimit;

/// Takes a bucket's permit if its window has passed and the budget allows. Answers
/// `{status, wait ms, remaining (-1: no budget kept), rolled over (1/0)}`, status 1 when taken, 0
/// when to wait, 2 when no budget is known and one is required (the caller reads Discord's first).
///
/// When the count has expired (its TTL is Discord's `reset_after`) but the fleet knows the daily
/// total, the period has rolled over: Discord gives the whole budget again, so the count restarts
/// from the total (the caller then reads Discord's figure to correct it). Nothing is granted past a
/// known count.
///
/// KEYS: bucket, budget, budget total. ARGV: window ms, holder, budget period ms, budget required.
const TAKE: &str = r#"
local ttl = redis.call('PTTL', KEYS[1])
if ttl > 0 then return {0, ttl, -1, 0} end
local remaining = redis.call('GET', KEYS[2])
local rolled = 0
if not remaining then
  local total = redis.call('GET', KEYS[3])
  if total then
    redis.call('SET', KEYS[2], total, 'PX', ARGV[3])
    remaining = total
    rolled = 1
  elseif ARGV[4] == '1' then
    return {2, 0, -1, 0}
  end
end
if remaining and tonumber(remaining) <= 0 then
  local reset = redis.call('PTTL', KEYS[2])
  if reset < 0 then reset = tonumber(ARGV[3]) end
  return {0, reset, 0, rolled}
end
redis.call('SET', KEYS[1], ARGV[2], 'PX', ARGV[1])
local left = -1
if remaining then left = redis.call('DECR', KEYS[2]) end
return {1, 0, left, rolled}
"#;

/// Records the budget `GET /gateway/bot` reported. Within one period Discord's count is the truth
/// but another process may have spent some since it was read, so the lower of the two stands; a
/// reading that resets at another time than the stored count belongs to a later period (Discord
/// reset it since) and replaces it, whatever the numbers.
///
/// KEYS: budget, budget total. ARGV: remaining, reset ms, total, total's ttl ms, same-period
/// tolerance ms.
const SET_BUDGET: &str = r#"
local remaining = tonumber(ARGV[1])
local pttl = redis.call('PTTL', KEYS[1])
if pttl > 0 and math.abs(pttl - tonumber(ARGV[2])) <= tonumber(ARGV[5]) then
  local current = tonumber(redis.call('GET', KEYS[1]))
  if current and current < remaining then remaining = current end
end
redis.call('SET', KEYS[1], remaining, 'PX', ARGV[2])
redis.call('SET', KEYS[2], ARGV[3], 'PX', ARGV[4])
return remaining
"#;

/// Gives back the budget unit of a permit whose Identify was never sent.
const REFUND: &str = r#"
if redis.call('EXISTS', KEYS[1]) == 1 then return redis.call('INCR', KEYS[1]) end
return -1
"#;

/// Waits between polls of a busy bucket: never longer, so a permit freed early (a crashed holder's
/// key cannot be, but an operator's `DEL` can) is seen soon.
const MAX_POLL: Duration = Duration::from_millis(500);

/// Two readings of Discord's budget whose resets are this close belong to one period: they differ
/// by the time between the readings' requests, while periods are a day apart.
const SAME_PERIOD: Duration = Duration::from_secs(60);

/// Reads Discord's session-start budget (`GET /gateway/bot`) when the fleet's count has rolled
/// over or is unknown.
pub type BudgetSource = Arc<
    dyn Fn() -> std::pin::Pin<
            Box<dyn std::future::Future<Output = Result<SessionStartLimit, String>>>,
        > + Send
        + Sync,
>;

/// An [`IdentifyQueue`] in Redis, shared by every process of a bot.
///
/// The session-start budget is one count for the whole fleet, kept in Redis with Discord's reset
/// as its TTL ([`set_budget`](Self::set_budget)). When that count runs out of time (Discord reset
/// it), the next grant restarts it from the known daily total and, with a
/// [`budget_source`](Self::budget_source), reads Discord's figure to correct it. With a source and
/// no count known at all (a Redis restarted empty), no permit is granted until Discord's figure
/// is read. Without a source and without [`set_budget`](Self::set_budget), only the buckets are
/// kept (the queue does not know a budget to keep).
///
/// ```no_run
/// # async fn run() -> Result<(), Box<dyn std::error::Error>> {
/// use std::sync::Arc;
/// use std::time::Duration;
/// use shardline::fleet::{FleetRedis, RedisIdentifyQueue};
/// let redis = FleetRedis::connect("redis://127.0.0.1:6379", "shardline:mybot").await?;
/// let queue = RedisIdentifyQueue::new(redis, 16, Duration::from_secs(5), "process-a");
/// let config = shardline::Config::builder("token")
///     .identify_queue(Arc::new(queue))
///     .build()?;
/// # let _ = config; Ok(()) }
/// ```
#[derive(Clone)]
pub struct RedisIdentifyQueue {
    inner: Arc<Inner>,
}

impl std::fmt::Debug for RedisIdentifyQueue {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RedisIdentifyQueue")
            .field("redis", &self.inner.redis)
            .field("max_concurrency", &self.inner.max_concurrency)
            .field("window", &self.inner.window)
            .field("holder", &self.inner.holder)
            .field("budget_source", &self.inner.source.is_some())
            .finish()
    }
}

struct Inner {
    redis: FleetRedis,
    max_concurrency: u32,
    window: Duration,
    holder: String,
    source: Option<BudgetSource>,
    /// The count as last seen in Redis, for metrics (-1: none seen).
    last_remaining: AtomicI64,
}

impl RedisIdentifyQueue {
    /// A queue of `max_concurrency` buckets, each granting once per `window` (5 s on Discord),
    /// fleet-wide. `holder` names this process in the permit keys (for operators reading Redis).
    pub fn new(redis: FleetRedis, max_concurrency: u32, window: Duration, holder: &str) -> Self {
        Self {
            inner: Arc::new(Inner {
                redis,
                max_concurrency: max_concurrency.max(1),
                window,
                holder: holder.to_owned(),
                source: None,
                last_remaining: AtomicI64::new(-1),
            }),
        }
    }

    /// Reads Discord's budget from `source` whenever the fleet's count rolls over or is unknown
    /// (see the type's documentation). [`Gateway::start_fleet`](crate::Gateway::start_fleet) gives
    /// its queue `GET /gateway/bot`.
    pub fn budget_source(mut self, source: BudgetSource) -> Self {
        if let Some(inner) = Arc::get_mut(&mut self.inner) {
            inner.source = Some(source);
        }
        self
    }

    /// Keeps to the session-start budget `GET /gateway/bot` reported: `remaining` Identifies until
    /// `reset_after`, `total` per period after that. The fleet keeps one count; within a period a
    /// lower count already there stands.
    ///
    /// # Errors
    /// When Redis cannot be reached.
    pub async fn set_budget(
        &self,
        remaining: u32,
        total: u32,
        reset_after: Duration,
    ) -> Result<u32, crate::error::FleetError> {
        let left: u32 = Script::new(SET_BUDGET)
            .key(self.budget_key())
            .key(self.total_key())
            .arg(remaining)
            .arg(reset_after.as_millis().max(1) as u64)
            .arg(total)
            .arg((crate::queue::SESSION_START_PERIOD * 2).as_millis() as u64)
            .arg(SAME_PERIOD.as_millis() as u64)
            .invoke_async(&mut self.inner.redis.conn())
            .await?;
        self.inner
            .last_remaining
            .store(i64::from(left), Ordering::Relaxed);
        Ok(left)
    }

    /// Session starts left in the fleet's budget, if one is kept.
    ///
    /// # Errors
    /// When Redis cannot be reached.
    pub async fn remaining(&self) -> Result<Option<i64>, crate::error::FleetError> {
        let left: Option<i64> = redis::cmd("GET")
            .arg(self.budget_key())
            .query_async(&mut self.inner.redis.conn())
            .await?;
        Ok(left)
    }

    /// The number of buckets.
    pub fn max_concurrency(&self) -> u32 {
        self.inner.max_concurrency
    }

    fn budget_key(&self) -> String {
        self.inner.redis.key(format_args!("identify:budget"))
    }

    fn total_key(&self) -> String {
        self.inner.redis.key(format_args!("identify:budget:total"))
    }

    fn bucket_key(&self, shard: u32) -> String {
        let bucket = shard % self.inner.max_concurrency;
        self.inner
            .redis
            .key(format_args!("identify:bucket:{bucket}"))
    }

    /// Reads Discord's budget and records it.
    async fn refresh(&self) -> Result<(), String> {
        let source = self
            .inner
            .source
            .as_ref()
            .ok_or_else(|| "no budget source".to_owned())?;
        let limit = source().await?;
        let left = self
            .set_budget(
                limit.remaining,
                limit.total,
                Duration::from_millis(limit.reset_after.max(1)),
            )
            .await
            .map_err(|e| e.to_string())?;
        tracing::info!(
            remaining = left,
            total = limit.total,
            reset_after_ms = limit.reset_after,
            "identify queue: session-start budget read from Discord"
        );
        Ok(())
    }
}

impl IdentifyQueue for RedisIdentifyQueue {
    /// Polls the bucket until Redis grants its permit. Dropping the request before then withdraws
    /// it: nothing was reserved. A granted permit dropped unused gives its budget unit back.
    fn acquire(&self, shard: u32, _total: u32) -> PermitRequest {
        let this = self.clone();
        Box::pin(async move {
            let bucket = this.bucket_key(shard);
            let budget = this.budget_key();
            let total = this.total_key();
            let window_ms = this.inner.window.as_millis().max(1) as u64;
            let period_ms = crate::queue::SESSION_START_PERIOD.as_millis() as u64;
            let required = if this.inner.source.is_some() {
                "1"
            } else {
                "0"
            };
            let mut failures = 0u32;
            loop {
                let answer: Result<(u8, i64, i64, u8), _> = Script::new(TAKE)
                    .key(&bucket)
                    .key(&budget)
                    .key(&total)
                    .arg(window_ms)
                    .arg(&this.inner.holder)
                    .arg(period_ms)
                    .arg(required)
                    .invoke_async(&mut this.inner.redis.conn())
                    .await;
                if let Ok((_, _, remaining, _)) = answer {
                    if remaining >= 0 {
                        this.inner
                            .last_remaining
                            .store(remaining, Ordering::Relaxed);
                    }
                }
                let wait = match answer {
                    Ok((1, _, _, rolled)) => {
                        if rolled == 1 {
                            // Restarted from the daily total; Discord's own figure corrects it.
                            let queue = this.clone();
                            actix_rt::spawn(async move {
                                if let Err(e) = queue.refresh().await {
                                    tracing::warn!(error = %e, "identify queue: could not read the new session-start budget; counting from the daily total");
                                }
                            });
                        }
                        let queue = this.clone();
                        return Permit::new(move || {
                            // A drop cannot wait for Redis: the refund goes to a task, if a
                            // runtime is there to run it.
                            if let Ok(runtime) = tokio::runtime::Handle::try_current() {
                                runtime.spawn(async move {
                                    if let Err(e) = queue.refund().await {
                                        tracing::warn!(error = %e, "identify queue: could not give an unused permit's budget unit back");
                                    }
                                });
                            }
                        });
                    }
                    Ok((2, _, _, _)) => match this.refresh().await {
                        // Known now: ask again at once.
                        Ok(()) => Duration::ZERO,
                        Err(e) => {
                            failures += 1;
                            let wait = Duration::from_millis(100 << failures.min(5));
                            tracing::warn!(shard.id = shard, error = %e, ?wait, "identify queue: no session-start budget known and Discord's cannot be read; not identifying until it can");
                            wait
                        }
                    },
                    Ok((_, wait_ms, _, _)) => {
                        failures = 0;
                        Duration::from_millis(wait_ms.max(1) as u64).min(MAX_POLL)
                    }
                    Err(e) => {
                        // No permit without Redis: identifying unchecked could break the bucket
                        // rule for the whole fleet. Retry with backoff.
                        failures += 1;
                        let wait = Duration::from_millis(100 << failures.min(5));
                        tracing::warn!(shard.id = shard, error = %e, ?wait, "identify queue: Redis unreachable; retrying");
                        wait
                    }
                };
                tokio::time::sleep(wait).await;
            }
        })
    }

    fn session_starts_remaining(&self) -> Option<u32> {
        u32::try_from(self.inner.last_remaining.load(Ordering::Relaxed)).ok()
    }
}

impl RedisIdentifyQueue {
    /// Gives back the budget unit of a permit whose Identify was never sent (its connection died
    /// first). The bucket's window is not given back: the gateway may already count it.
    pub async fn refund(&self) -> Result<(), crate::error::FleetError> {
        let _: i64 = Script::new(REFUND)
            .key(self.budget_key())
            .invoke_async(&mut self.inner.redis.conn())
            .await?;
        Ok(())
    }
}
