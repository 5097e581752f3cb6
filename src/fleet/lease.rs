//! Shard leases: a shard is run only by the process that holds its lease in Redis
//! (docs/fleet.md "Ownership").
//!
//! A lease is a key `prefix:lease:<shard>` whose value is `owner:token` and whose TTL is the lease
//! time. The token comes from a per-shard counter that only grows (the fencing token): whoever
//! claims a shard after another gets a larger one, and every write made on the shard's behalf
//! (its session) is checked against the lease's current value by Redis itself.
//!
//! The holder renews before the TTL runs out. It also keeps, on its own monotonic clock, the instant
//! until which the lease is surely still its own: the time the last successful renewal was *sent*
//! plus the lease time, less a margin for clock-rate drift. Past that instant it stops the shard
//! without sending anything on it, whether Redis was unreachable or the process was paused
//! (stopped by the OS, a debugger or a VM migration) and woke up late.

use std::sync::Arc;
use std::time::{Duration, Instant};

use redis::Script;

use crate::error::FleetError;
use crate::fleet::connect::FleetRedis;
pub use crate::ownership::LeaseGuard;

/// Claims a free lease: answers the new fencing token, or 0 when the shard is held.
/// KEYS: lease, fence counter. ARGV: owner, lease ms.
const CLAIM: &str = r#"
if redis.call('EXISTS', KEYS[1]) == 1 then return 0 end
local token = redis.call('INCR', KEYS[2])
redis.call('SET', KEYS[1], ARGV[1] .. ':' .. token, 'PX', ARGV[2])
return token
"#;

/// Claims free leases from a list, in its order, up to a count: answers the claimed ones as a flat
/// list of (position in the list, fencing token). KEYS: lease and fence counter of each shard, in
/// pairs. ARGV: owner, lease ms, count.
const CLAIM_MANY: &str = r#"
local claimed = {}
local want = tonumber(ARGV[3])
for i = 1, #KEYS, 2 do
  if #claimed >= 2 * want then break end
  if redis.call('EXISTS', KEYS[i]) == 0 then
    local token = redis.call('INCR', KEYS[i + 1])
    redis.call('SET', KEYS[i], ARGV[1] .. ':' .. token, 'PX', ARGV[2])
    claimed[#claimed + 1] = (i - 1) / 2
    claimed[#claimed + 1] = token
  end
end
return claimed
"#;

/// Shards claimed per script call: one call holds Redis for as long as it runs.
const CLAIM_CHUNK: usize = 512;

/// Renews a lease still held with this value: 1 when renewed, 0 when lost.
/// KEYS: lease. ARGV: value, lease ms.
const RENEW: &str = r#"
if redis.call('GET', KEYS[1]) == ARGV[1] then
  redis.call('PEXPIRE', KEYS[1], ARGV[2])
  return 1
end
return 0
"#;

/// Releases a lease still held with this value: 1 when released, 0 when it was not ours.
const RELEASE: &str = r#"
if redis.call('GET', KEYS[1]) == ARGV[1] then
  redis.call('DEL', KEYS[1])
  return 1
end
return 0
"#;

/// The part of a lease time kept back from the holder's view of its validity: covers the rate
/// difference between Redis's clock and this process's (both monotonic in practice, but a few
/// percent apart at worst on a VM) and the time a stop takes to act.
pub const SAFETY_FRACTION: u32 = 5;

pub(crate) fn lease_key(redis: &FleetRedis, shard: u32) -> String {
    redis.shard_key("lease", shard)
}

fn fence_key(redis: &FleetRedis, shard: u32) -> String {
    redis.shard_key("fence", shard)
}

/// A lease this process holds on one shard.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Lease {
    /// The shard.
    pub shard: u32,
    /// The fencing token: larger for every later holder of the shard.
    pub token: u64,
    /// The value of the lease key, `owner:token`.
    pub value: String,
}

/// The leases of one owner (one process): claim, renew, release.
#[derive(Debug, Clone)]
pub struct Leases {
    redis: FleetRedis,
    owner: Arc<str>,
    lease_time: Duration,
}

impl Leases {
    /// Leases held by `owner` (unique per process), each valid for `lease_time` unless renewed.
    ///
    /// # Errors
    /// [`FleetError::Config`] when `owner` is empty or holds a `:`, or the lease time is under 100 ms.
    pub fn new(redis: FleetRedis, owner: &str, lease_time: Duration) -> Result<Self, FleetError> {
        if owner.is_empty() || owner.contains(':') {
            return Err(FleetError::Config(
                "owner",
                format!("{owner:?} must be non-empty and hold no ':'"),
            ));
        }
        if lease_time < Duration::from_millis(100) {
            return Err(FleetError::Config(
                "lease time",
                format!("{lease_time:?} is under 100 ms"),
            ));
        }
        Ok(Self {
            redis,
            owner: owner.into(),
            lease_time,
        })
    }

    /// This owner's name.
    pub fn owner(&self) -> &str {
        &self.owner
    }

    /// The lease time.
    pub fn lease_time(&self) -> Duration {
        self.lease_time
    }

    /// How long after a renewal was sent the holder still counts on it.
    pub fn trusted_for(&self) -> Duration {
        self.lease_time - self.lease_time / SAFETY_FRACTION
    }

    /// Claims `shard` if no one holds it. Answers the lease, and the instant (this process's
    /// clock) until which it surely holds.
    ///
    /// # Errors
    /// When Redis cannot be reached.
    pub async fn claim(&self, shard: u32) -> Result<Option<(Lease, Instant)>, FleetError> {
        let sent = Instant::now();
        let token: u64 = Script::new(CLAIM)
            .key(lease_key(&self.redis, shard))
            .key(fence_key(&self.redis, shard))
            .arg(&*self.owner)
            .arg(self.lease_time.as_millis() as u64)
            .invoke_async(&mut self.redis.conn())
            .await?;
        Ok((token > 0).then(|| {
            (
                Lease {
                    shard,
                    token,
                    value: format!("{}:{token}", self.owner),
                },
                sent + self.trusted_for(),
            )
        }))
    }

    /// Claims up to `count` of `shards` that no one holds, in their order, in one round trip per
    /// few hundred shards (a process taking thousands of shards must hold the first before their
    /// lease runs out). Answers each lease claimed with the instant until which it surely holds.
    ///
    /// # Errors
    /// When Redis cannot be reached; the leases claimed before the error are answered with it
    /// lost, and run out by themselves.
    pub async fn claim_many(
        &self,
        shards: &[u32],
        count: usize,
    ) -> Result<Vec<(Lease, Instant)>, FleetError> {
        let mut claimed = Vec::new();
        let script = Script::new(CLAIM_MANY);
        for chunk in shards.chunks(CLAIM_CHUNK) {
            if claimed.len() >= count {
                break;
            }
            let sent = Instant::now();
            let mut call = script.prepare_invoke();
            for &shard in chunk {
                call.key(lease_key(&self.redis, shard))
                    .key(fence_key(&self.redis, shard));
            }
            call.arg(&*self.owner)
                .arg(self.lease_time.as_millis() as u64)
                .arg(count - claimed.len());
            let answer: Vec<u64> = call.invoke_async(&mut self.redis.conn()).await?;
            let until = sent + self.trusted_for();
            for pair in answer.chunks_exact(2) {
                let Some(&shard) = chunk.get(pair[0] as usize) else {
                    continue;
                };
                let token = pair[1];
                claimed.push((
                    Lease {
                        shard,
                        token,
                        value: format!("{}:{token}", self.owner),
                    },
                    until,
                ));
            }
        }
        Ok(claimed)
    }

    /// Renews `lease`. Answers the instant until which it surely holds, or `None` when it was lost
    /// (another process holds the shard now).
    ///
    /// # Errors
    /// When Redis cannot be reached: the lease may or may not still hold.
    pub async fn renew(&self, lease: &Lease) -> Result<Option<Instant>, FleetError> {
        let sent = Instant::now();
        let renewed: u8 = Script::new(RENEW)
            .key(lease_key(&self.redis, lease.shard))
            .arg(&lease.value)
            .arg(self.lease_time.as_millis() as u64)
            .invoke_async(&mut self.redis.conn())
            .await?;
        Ok((renewed == 1).then(|| sent + self.trusted_for()))
    }

    /// Renews many leases in one round trip; answers, per lease in order, as [`renew`](Self::renew).
    ///
    /// # Errors
    /// When Redis cannot be reached.
    pub async fn renew_all(&self, leases: &[Lease]) -> Result<Vec<Option<Instant>>, FleetError> {
        if leases.is_empty() {
            return Ok(Vec::new());
        }
        let sent = Instant::now();
        let script = Script::new(RENEW);
        let mut pipe = redis::pipe();
        // Loaded in the same round trip: a restarted Redis has forgotten every script.
        pipe.load_script(&script).ignore();
        for lease in leases {
            let mut call = script.prepare_invoke();
            call.key(lease_key(&self.redis, lease.shard))
                .arg(&lease.value)
                .arg(self.lease_time.as_millis() as u64);
            pipe.invoke_script(&call);
        }
        let renewed: Vec<u8> = pipe.query_async(&mut self.redis.conn()).await?;
        let until = sent + self.trusted_for();
        Ok(renewed
            .into_iter()
            .map(|r| (r == 1).then_some(until))
            .collect())
    }

    /// Releases `lease` (after its shard was closed), so another process can claim it at once.
    ///
    /// # Errors
    /// When Redis cannot be reached (the lease then ends with its TTL).
    pub async fn release(&self, lease: &Lease) -> Result<bool, FleetError> {
        let released: u8 = Script::new(RELEASE)
            .key(lease_key(&self.redis, lease.shard))
            .arg(&lease.value)
            .invoke_async(&mut self.redis.conn())
            .await?;
        Ok(released == 1)
    }

    /// Releases many leases in one round trip; answers how many were still held.
    ///
    /// # Errors
    /// When Redis cannot be reached (the leases then end with their TTL).
    pub async fn release_all(&self, leases: &[Lease]) -> Result<usize, FleetError> {
        if leases.is_empty() {
            return Ok(0);
        }
        let script = Script::new(RELEASE);
        let mut pipe = redis::pipe();
        pipe.load_script(&script).ignore();
        for lease in leases {
            let mut call = script.prepare_invoke();
            call.key(lease_key(&self.redis, lease.shard))
                .arg(&lease.value);
            pipe.invoke_script(&call);
        }
        let released: Vec<u8> = pipe.query_async(&mut self.redis.conn()).await?;
        Ok(released.into_iter().filter(|r| *r == 1).count())
    }

    /// The Redis node these leases are renewed on.
    pub(crate) fn node(&self) -> String {
        self.redis.node()
    }

    /// The same leases over another connection (e.g. one of the renewals' own).
    pub(crate) fn on(&self, redis: FleetRedis) -> Self {
        Self {
            redis,
            owner: self.owner.clone(),
            lease_time: self.lease_time,
        }
    }

    /// Who holds `shard` now (`owner:token`), if anyone.
    ///
    /// # Errors
    /// When Redis cannot be reached.
    pub async fn holder(&self, shard: u32) -> Result<Option<String>, FleetError> {
        let value: Option<String> = redis::cmd("GET")
            .arg(lease_key(&self.redis, shard))
            .query_async(&mut self.redis.conn())
            .await?;
        Ok(value)
    }
}
