//! The lease keeper: one task per process that renews the leases it holds, claims the shards the
//! placement gives it, hands shards over when the fleet grows, and starts and stops them through
//! the supervisor (docs/fleet.md "Ownership" and "Placement").

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use actix::prelude::*;
use redis::Script;

use crate::fleet::lease::{lease_key, Lease, Leases};
use crate::fleet::options::Placement;
use crate::fleet::{FleetError, FleetRedis, RedisSessionStore};
use crate::ownership::LeaseGuard;
use crate::supervisor::{Acquire, Release, ReleaseShard, ShutdownAll, Supervisor};

/// Keeps this process in the member list (scored by Redis's clock, so no process's clock matters)
/// and answers the live members. KEYS: members. ARGV: owner, ttl ms.
const HEARTBEAT: &str = r#"
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
redis.call('ZADD', KEYS[1], now + tonumber(ARGV[2]), ARGV[1])
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', now)
return redis.call('ZRANGE', KEYS[1], 0, -1)
"#;

/// Writes a shard's status for the fleet-wide view, stamped with Redis's clock.
/// KEYS: status. ARGV: owner, phase, latency ms (-1: none), seq (-1: none), ttl ms.
const STATUS: &str = r#"
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
redis.call('HSET', KEYS[1], 'owner', ARGV[1], 'phase', ARGV[2], 'latency_ms', ARGV[3], 'seq', ARGV[4], 'at_ms', now)
redis.call('PEXPIRE', KEYS[1], ARGV[5])
return now
"#;

/// What happened to a shard's ownership in this process.
#[derive(Debug, Clone, PartialEq, Eq, Message)]
#[rtype(result = "()")]
#[non_exhaustive]
pub struct FleetEvent {
    /// The shard.
    pub shard: u32,
    /// What happened.
    pub change: OwnershipChange,
    /// This process's name in the fleet.
    pub owner: String,
}

/// A change of a shard's ownership.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum OwnershipChange {
    /// This process claimed the shard's lease and starts it (resuming from the shared store if a
    /// session is there).
    Claimed,
    /// This process closed the shard resumably and released its lease (a hand-over or leaving).
    Released,
    /// The lease was lost (expired unrenewed, or taken): the shard was stopped without a frame.
    Lost,
}

impl OwnershipChange {
    /// `claimed`, `released` or `lost`.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Claimed => "claimed",
            Self::Released => "released",
            Self::Lost => "lost",
        }
    }
}

pub(crate) enum KeeperCommand {
    Leave {
        resumable: bool,
        done: tokio::sync::oneshot::Sender<()>,
    },
}

pub(crate) struct Keeper {
    pub redis: FleetRedis,
    pub leases: Leases,
    pub store: RedisSessionStore,
    pub supervisor: Addr<Supervisor>,
    pub placement: Placement,
    pub total: u32,
    pub events: Vec<Recipient<FleetEvent>>,
    pub held: BTreeMap<u32, (Lease, LeaseGuard)>,
    /// Whether Redis answered the last tick (a change is logged once, not every tick).
    pub redis_ok: bool,
}

impl Keeper {
    /// Runs until told to leave (or until every handle is gone, which leaves resumably).
    pub async fn run(mut self, mut commands: tokio::sync::mpsc::Receiver<KeeperCommand>) {
        // Three renewals fit in the part of a lease a holder trusts (docs/fleet.md "Ownership").
        let mut ticks = tokio::time::interval(self.leases.lease_time() / 4);
        ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                _ = ticks.tick() => self.tick().await,
                command = commands.recv() => {
                    let (resumable, done) = match command {
                        Some(KeeperCommand::Leave { resumable, done }) => (resumable, Some(done)),
                        None => (true, None),
                    };
                    self.leave(resumable).await;
                    if let Some(done) = done {
                        let _ = done.send(());
                    }
                    return;
                }
            }
        }
    }

    async fn tick(&mut self) {
        self.renew().await;
        let members = match self.heartbeat().await {
            Ok(members) => members,
            // Without Redis nothing can be claimed; held shards run on until their guards end.
            Err(_) => return,
        };
        match &self.placement {
            Placement::Pinned(ids) => {
                let wanted: Vec<u32> = ids
                    .clone()
                    .filter(|id| !self.held.contains_key(id))
                    .collect();
                self.claim_some(&wanted, wanted.len()).await;
            }
            Placement::Balanced => self.balance(&members).await,
        }
        self.publish_status().await;
    }

    /// Renews every held lease; stops the shards whose lease is gone or can no longer be trusted.
    async fn renew(&mut self) {
        let now = Instant::now();
        let mut lost: Vec<u32> = self
            .held
            .iter()
            .filter(|(_, (_, guard))| !guard.holds(now))
            .map(|(id, _)| *id)
            .collect();
        let leases: Vec<Lease> = self
            .held
            .iter()
            .filter(|(id, _)| !lost.contains(id))
            .map(|(_, (lease, _))| lease.clone())
            .collect();
        match self.leases.renew_all(&leases).await {
            Ok(renewed) => {
                self.note_redis(Ok(()));
                for (lease, until) in leases.iter().zip(renewed) {
                    match (until, self.held.get(&lease.shard)) {
                        (Some(until), Some((_, guard))) => guard.extend_to(until),
                        (None, _) => lost.push(lease.shard),
                        _ => {}
                    }
                }
            }
            Err(e) => self.note_redis(Err(&e)),
        }
        for id in lost {
            self.lose(id).await;
        }
    }

    fn note_redis(&mut self, result: Result<(), &FleetError>) {
        match result {
            Ok(()) if !self.redis_ok => {
                self.redis_ok = true;
                tracing::info!(owner = self.leases.owner(), "fleet: Redis reachable again");
            }
            Err(e) if self.redis_ok => {
                self.redis_ok = false;
                tracing::warn!(owner = self.leases.owner(), error = %e, "fleet: Redis unreachable; shards run on until their leases can no longer be trusted");
            }
            _ => {}
        }
    }

    async fn lose(&mut self, id: u32) {
        let Some((_, guard)) = self.held.remove(&id) else {
            return;
        };
        guard.revoke();
        tracing::warn!(
            shard.id = id,
            owner = self.leases.owner(),
            "fleet: lease lost; shard stopped without a frame"
        );
        let _ = self
            .supervisor
            .send(ReleaseShard {
                id,
                how: Release::Abandon,
            })
            .await;
        self.store.forget_local(id);
        self.emit(id, OwnershipChange::Lost);
    }

    async fn heartbeat(&mut self) -> Result<Vec<String>, FleetError> {
        let members: Result<Vec<String>, _> = Script::new(HEARTBEAT)
            .key(self.redis.key(format_args!("members")))
            .arg(self.leases.owner())
            .arg(self.leases.lease_time().as_millis() as u64)
            .invoke_async(&mut self.redis.conn())
            .await;
        let members = members.map_err(FleetError::from);
        self.note_redis(members.as_ref().map(|_| ()));
        members
    }

    /// Balanced placement: each of the `n` live members runs `total / n` shards, the first
    /// `total % n` (in name order) one more. Under that share, claim free shards; over it, once no
    /// shard is free (so some member is under its share), hand the excess over.
    async fn balance(&mut self, members: &[String]) {
        let me = self.leases.owner().to_owned();
        let n = members.len().max(1) as u32;
        let index = members
            .iter()
            .position(|m| *m == me)
            .unwrap_or(members.len()) as u32;
        let target = self.total / n + u32::from(index < self.total % n);
        let held = self.held.len() as u32;
        let free = match self.free_shards().await {
            Ok(free) => free,
            Err(_) => return,
        };
        if held < target {
            // Start where this member's share would begin, so joiners do not all race for shard 0.
            let start = (u64::from(index) * u64::from(self.total) / u64::from(n)) as u32;
            let mut order: Vec<u32> = free.clone();
            order.sort_by_key(|id| {
                (id + self.total - start % self.total.max(1)) % self.total.max(1)
            });
            self.claim_some(&order, (target - held) as usize).await;
        } else if held > target && free.is_empty() {
            let excess: Vec<u32> = self
                .held
                .keys()
                .rev()
                .take((held - target) as usize)
                .copied()
                .collect();
            for id in excess {
                self.hand_over(id).await;
            }
        }
    }

    /// The shards no process holds.
    async fn free_shards(&mut self) -> Result<Vec<u32>, FleetError> {
        if self.total == 0 {
            return Ok(Vec::new());
        }
        let keys: Vec<String> = (0..self.total)
            .map(|id| lease_key(&self.redis, id))
            .collect();
        let holders: Vec<Option<String>> = redis::cmd("MGET")
            .arg(&keys)
            .query_async(&mut self.redis.conn())
            .await
            .map_err(FleetError::from)?;
        Ok(holders
            .iter()
            .enumerate()
            .filter(|(_, h)| h.is_none())
            .map(|(id, _)| id as u32)
            .collect())
    }

    /// Claims up to `count` of `ids` (skipping held ones) and starts them.
    async fn claim_some(&mut self, ids: &[u32], count: usize) {
        let mut claimed = 0;
        for &id in ids {
            if claimed == count {
                break;
            }
            if self.held.contains_key(&id) {
                continue;
            }
            let (lease, until) = match self.leases.claim(id).await {
                Ok(Some(claim)) => claim,
                Ok(None) => continue,
                Err(e) => {
                    self.note_redis(Err(&e));
                    return;
                }
            };
            // The session is read only now that no other process may write it.
            self.store.set_fence(id, Some(lease.value.clone()));
            if let Err(e) = self.store.load_from_redis(&[id]).await {
                tracing::warn!(shard.id = id, error = %e, "fleet: cannot read the shard's session; giving the lease back");
                self.store.forget_local(id);
                let _ = self.leases.release(&lease).await;
                return;
            }
            let guard = LeaseGuard::new(until);
            tracing::info!(
                shard.id = id,
                owner = self.leases.owner(),
                token = lease.token,
                "fleet: claimed"
            );
            self.held.insert(id, (lease, guard.clone()));
            let _ = self.supervisor.send(Acquire { id, guard }).await;
            self.emit(id, OwnershipChange::Claimed);
            claimed += 1;
        }
    }

    /// Closes the shard resumably, writes its session, and releases its lease for the next owner.
    async fn hand_over(&mut self, id: u32) {
        let Some((lease, guard)) = self.held.remove(&id) else {
            return;
        };
        let _ = self
            .supervisor
            .send(ReleaseShard {
                id,
                how: Release::HandOver,
            })
            .await;
        if let Err(e) = self.store.flush().await {
            // The lease then runs out by itself; the next owner resumes from the last flush.
            tracing::warn!(shard.id = id, error = %e, "fleet: could not write the session before handing over");
        }
        guard.revoke();
        let _ = self.leases.release(&lease).await;
        self.store.forget_local(id);
        tracing::info!(
            shard.id = id,
            owner = self.leases.owner(),
            "fleet: handed over"
        );
        self.emit(id, OwnershipChange::Released);
    }

    async fn leave(&mut self, resumable: bool) {
        let ids: Vec<u32> = self.held.keys().copied().collect();
        if resumable {
            for id in ids {
                self.hand_over(id).await;
            }
        } else {
            // Sessions end (close 1000) and are removed from the store.
            let _ = self.supervisor.send(ShutdownAll { resumable: false }).await;
            let _ = self.store.flush().await;
            for (id, (lease, guard)) in std::mem::take(&mut self.held) {
                guard.revoke();
                let _ = self.leases.release(&lease).await;
                self.store.forget_local(id);
                self.emit(id, OwnershipChange::Released);
            }
        }
        let _: Result<i64, _> = redis::cmd("ZREM")
            .arg(self.redis.key(format_args!("members")))
            .arg(self.leases.owner())
            .query_async(&mut self.redis.conn())
            .await;
        let _ = self.supervisor.send(ShutdownAll { resumable: true }).await;
    }

    /// Writes each held shard's status for the fleet-wide view.
    async fn publish_status(&mut self) {
        if self.held.is_empty() {
            return;
        }
        let Ok(statuses) = self.supervisor.send(crate::supervisor::GetStatuses).await else {
            return;
        };
        let script = Script::new(STATUS);
        let mut pipe = redis::pipe();
        pipe.load_script(&script).ignore();
        let ttl = (self.leases.lease_time() * 3).as_millis() as u64;
        for status in statuses.iter().filter(|s| self.held.contains_key(&s.id)) {
            let mut call = script.prepare_invoke();
            call.key(self.redis.key(format_args!("status:{}", status.id)))
                .arg(self.leases.owner())
                .arg(format!("{:?}", status.phase))
                .arg(status.latency.map_or(-1, |l| l.as_millis() as i64))
                .arg(status.seq.map_or(-1, |s| s as i64))
                .arg(ttl);
            pipe.invoke_script(&call).ignore();
        }
        let _: Result<(), _> = pipe.query_async(&mut self.redis.conn()).await;
    }

    fn emit(&self, shard: u32, change: OwnershipChange) {
        for recipient in &self.events {
            recipient.do_send(FleetEvent {
                shard,
                change,
                owner: self.leases.owner().to_owned(),
            });
        }
    }
}

/// One shard as the whole fleet sees it, read from Redis by any process
/// ([`fleet_view`](crate::fleet::fleet_view)).
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct FleetShard {
    /// The shard.
    pub shard: u32,
    /// The process holding its lease, and the lease's fencing token.
    pub owner: Option<(String, u64)>,
    /// Its phase as its owner last reported it (`Ready`, `Resuming`, ...).
    pub phase: Option<String>,
    /// Its last heartbeat latency, as last reported.
    pub latency: Option<Duration>,
    /// Its last sequence, as last reported.
    pub seq: Option<u64>,
    /// How long ago (by Redis's clock) its owner last reported.
    pub reported_ago: Option<Duration>,
}

/// Reads every shard's owner and last reported status from Redis.
///
/// # Errors
/// When Redis cannot be reached.
pub async fn fleet_view(redis: &FleetRedis, total: u32) -> Result<Vec<FleetShard>, FleetError> {
    let mut pipe = redis::pipe();
    pipe.cmd("TIME");
    for id in 0..total {
        pipe.cmd("GET").arg(lease_key(redis, id));
        pipe.cmd("HGETALL")
            .arg(redis.key(format_args!("status:{id}")));
    }
    let mut values: Vec<redis::Value> = pipe.query_async(&mut redis.conn()).await?;
    let time: (u64, u64) = redis::from_redis_value(values.remove(0))?;
    let now_ms = time.0 * 1000 + time.1 / 1000;
    let mut shards = Vec::with_capacity(total as usize);
    let mut values = values.into_iter();
    for shard in 0..total {
        let lease: Option<String> =
            redis::from_redis_value(values.next().unwrap_or(redis::Value::Nil))?;
        let status: std::collections::HashMap<String, String> =
            redis::from_redis_value(values.next().unwrap_or(redis::Value::Nil))?;
        let owner = lease.and_then(|v| {
            let (owner, token) = v.rsplit_once(':')?;
            Some((owner.to_owned(), token.parse().ok()?))
        });
        let number = |key: &str| {
            status
                .get(key)
                .and_then(|v| v.parse::<i64>().ok())
                .filter(|v| *v >= 0)
        };
        shards.push(FleetShard {
            shard,
            owner,
            phase: status.get("phase").cloned(),
            latency: number("latency_ms").map(|ms| Duration::from_millis(ms as u64)),
            seq: number("seq").map(|s| s as u64),
            reported_ago: number("at_ms")
                .map(|at| Duration::from_millis(now_ms.saturating_sub(at as u64))),
        });
    }
    Ok(shards)
}
