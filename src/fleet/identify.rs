//! The identify queue shared by every process of a bot: one Identify per bucket
//! (`shard_id % max_concurrency`) per window, and one daily session-start budget, both kept in
//! Redis (docs/protocol.md §5, docs/fleet.md "Identify").
//!
//! A bucket's permit is a key set with `NX` and a TTL of one window: Redis's clock decides when the
//! next Identify of that bucket may go, whatever the processes' clocks say, and a permit taken by a
//! process that then died frees itself when its window ends.

use std::sync::Arc;
use std::time::Duration;

use redis::Script;

use crate::fleet::FleetRedis;
use crate::queue::{IdentifyQueue, Permit, PermitRequest};

/// Takes a bucket's permit if its window has passed and the budget allows; answers
/// `{1, 0}` when taken, else `{0, milliseconds to wait}`.
///
/// KEYS: bucket, budget. ARGV: window ms, holder, budget period ms.
const TAKE: &str = r#"
local ttl = redis.call('PTTL', KEYS[1])
if ttl > 0 then return {0, ttl} end
local remaining = redis.call('GET', KEYS[2])
if remaining and tonumber(remaining) <= 0 then
  local reset = redis.call('PTTL', KEYS[2])
  if reset < 0 then reset = tonumber(ARGV[3]) end
  return {0, reset}
end
redis.call('SET', KEYS[1], ARGV[2], 'PX', ARGV[1])
if remaining then redis.call('DECR', KEYS[2]) end
return {1, 0}
"#;

/// Records the budget `GET /gateway/bot` reported: Discord's count is the truth, but another
/// process may have spent some since it was read, so the lower of the two stands.
///
/// KEYS: budget. ARGV: remaining, reset ms.
const SET_BUDGET: &str = r#"
local current = redis.call('GET', KEYS[1])
local remaining = tonumber(ARGV[1])
if current and tonumber(current) < remaining then remaining = tonumber(current) end
redis.call('SET', KEYS[1], remaining, 'PX', ARGV[2])
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

/// An [`IdentifyQueue`] in Redis, shared by every process of a bot.
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
#[derive(Clone, Debug)]
pub struct RedisIdentifyQueue {
    inner: Arc<Inner>,
}

#[derive(Debug)]
struct Inner {
    redis: FleetRedis,
    max_concurrency: u32,
    window: Duration,
    holder: String,
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
            }),
        }
    }

    /// Keeps to the session-start budget `GET /gateway/bot` reported: `remaining` Identifies until
    /// `reset_after`. The fleet keeps one count; a lower count already there stands.
    ///
    /// # Errors
    /// When Redis cannot be reached.
    pub async fn set_budget(
        &self,
        remaining: u32,
        reset_after: Duration,
    ) -> Result<u32, crate::fleet::FleetError> {
        let key = self.budget_key();
        let left: u32 = Script::new(SET_BUDGET)
            .key(key)
            .arg(remaining)
            .arg(reset_after.as_millis().max(1) as u64)
            .invoke_async(&mut self.inner.redis.conn())
            .await?;
        Ok(left)
    }

    /// Session starts left in the fleet's budget, if one is kept.
    ///
    /// # Errors
    /// When Redis cannot be reached.
    pub async fn remaining(&self) -> Result<Option<i64>, crate::fleet::FleetError> {
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

    fn bucket_key(&self, shard: u32) -> String {
        let bucket = shard % self.inner.max_concurrency;
        self.inner
            .redis
            .key(format_args!("identify:bucket:{bucket}"))
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
            let window_ms = this.inner.window.as_millis().max(1) as u64;
            let period_ms = crate::queue::SESSION_START_PERIOD.as_millis() as u64;
            let mut failures = 0u32;
            loop {
                let answer: Result<(u8, i64), _> = Script::new(TAKE)
                    .key(&bucket)
                    .key(&budget)
                    .arg(window_ms)
                    .arg(&this.inner.holder)
                    .arg(period_ms)
                    .invoke_async(&mut this.inner.redis.conn())
                    .await;
                let wait = match answer {
                    Ok((1, _)) => {
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
                    Ok((_, wait_ms)) => {
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
}

impl RedisIdentifyQueue {
    /// Gives back the budget unit of a permit whose Identify was never sent (its connection died
    /// first). The bucket's window is not given back: the gateway may already count it.
    pub async fn refund(&self) -> Result<(), crate::fleet::FleetError> {
        let _: i64 = Script::new(REFUND)
            .key(self.budget_key())
            .invoke_async(&mut self.inner.redis.conn())
            .await?;
        Ok(())
    }
}
