//! The lease keeper: one task per process that claims the shards the placement gives it, hands
//! shards over when the fleet grows, makes the running shards match the leases held, and starts
//! and stops them through the supervisor; beside it, the renewals of those leases, on a thread and
//! a Redis connection of their own (docs/fleet.md "Ownership" and "Placement").

use std::collections::{BTreeMap, BTreeSet, HashSet};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use actix::prelude::*;
use futures_util::future::join_all;
use redis::Script;

use crate::error::FleetError;
use crate::fleet::connect::FleetRedis;
use crate::fleet::lease::{lease_key, Lease, Leases};
use crate::fleet::options::Placement;
use crate::fleet::sessions::RedisSessionStore;
use crate::ownership::LeaseGuard;
use crate::supervisor::{
    Acquire, GetStatuses, Reconcile, Release, ReleaseShard, ShutdownAll, Supervisor,
};

/// Keeps this process in the member list (scored by Redis's clock, so no process's clock matters)
/// and the fleet's shard total alive, and answers the live members; an error if the fleet runs
/// another total now (every member of this one was gone long enough for another to start).
/// Answers the fleet's epoch first: a key without a TTL, set by whoever finds it missing, so a
/// Redis that lost its data (restarted empty, flushed) shows as a new epoch.
/// KEYS: members, total, epoch. ARGV: owner, ttl ms, total, a new epoch.
const HEARTBEAT: &str = r#"
local running = redis.call('GET', KEYS[2])
if running and running ~= ARGV[3] then
  return redis.error_reply('the fleet runs ' .. running .. ' shards in all now')
end
redis.call('SET', KEYS[2], ARGV[3], 'PX', ARGV[2])
local epoch = redis.call('GET', KEYS[3])
if not epoch then
  redis.call('SET', KEYS[3], ARGV[4])
  epoch = ARGV[4]
end
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
redis.call('ZADD', KEYS[1], now + tonumber(ARGV[2]), ARGV[1])
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', now)
local answer = redis.call('ZRANGE', KEYS[1], 0, -1)
table.insert(answer, 1, epoch)
return answer
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

/// The leases this process holds, shared by the keeper (which claims and gives them up) and the
/// renewals (which extend their guards, and report the ones lost).
pub(crate) type Held = Arc<Mutex<BTreeMap<u32, (Lease, LeaseGuard)>>>;

fn lock(held: &Held) -> std::sync::MutexGuard<'_, BTreeMap<u32, (Lease, LeaseGuard)>> {
    // Nothing panics while holding it; a poisoned map is still the truth.
    held.lock().unwrap_or_else(|e| e.into_inner())
}

pub(crate) struct Keeper {
    pub redis: FleetRedis,
    pub leases: Leases,
    pub store: RedisSessionStore,
    pub supervisor: Addr<Supervisor>,
    pub placement: Placement,
    pub total: u32,
    pub events: Vec<Recipient<FleetEvent>>,
    pub held: Held,
    /// Whether Redis answered the last tick (a change is logged once, not every tick).
    pub redis_ok: bool,
    /// A status write is under way (at most one at a time; it waits for the shards, the keeper
    /// never does).
    pub status_busy: Arc<AtomicBool>,
    /// The fleet's epoch as last seen in Redis (see [`HEARTBEAT`]).
    pub epoch: Option<String>,
    /// No claim before this instant: Redis lost its leases, and a lease it granted before may
    /// still be trusted by its holder until then.
    pub claims_from: Option<Instant>,
}

impl Keeper {
    /// Runs until told to leave (or until every handle is gone, which leaves resumably).
    pub async fn run(mut self, mut commands: tokio::sync::mpsc::Receiver<KeeperCommand>) {
        let (lost, mut losses) = tokio::sync::mpsc::unbounded_channel();
        // The renewals run on a thread and a Redis connection of their own: a thread blocked by a
        // handler, a shard actor slow to answer, a claim of thousands of shards or a large stream
        // batch on the shared connection cannot make this process's leases run out.
        let renewals = Arbiter::new();
        renewals.spawn(
            Renewer {
                redis: self.redis.clone(),
                leases: self.leases.clone(),
                held: self.held.clone(),
                lost,
            }
            .run(),
        );
        // Three renewals fit in the part of a lease a holder trusts (docs/fleet.md "Ownership").
        let mut ticks = tokio::time::interval(self.leases.lease_time() / 4);
        ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                _ = ticks.tick() => self.tick(&mut losses).await,
                Some(lease) = losses.recv() => self.lose(lease),
                command = commands.recv() => {
                    let (resumable, done) = match command {
                        Some(KeeperCommand::Leave { resumable, done }) => (resumable, Some(done)),
                        None => (true, None),
                    };
                    self.leave(resumable).await;
                    renewals.stop();
                    if let Some(done) = done {
                        let _ = done.send(());
                    }
                    return;
                }
            }
        }
    }

    async fn tick(&mut self, losses: &mut tokio::sync::mpsc::UnboundedReceiver<Lease>) {
        // Losses first: a lease the renewals gave up stays in the held map until it is handled
        // here, so this tick's placement counts it as gone only once its shard's stop has gone to
        // the supervisor, ahead of any new claim of the shard.
        while let Ok(lease) = losses.try_recv() {
            self.lose(lease);
        }
        let members = match self.heartbeat().await {
            Ok(members) => members,
            // Without Redis nothing can be claimed; held shards run on until their guards end.
            Err(_) => return,
        };
        self.reconcile().await;
        if self.claims_from.is_some_and(|from| Instant::now() < from) {
            self.publish_status();
            return;
        }
        match &self.placement {
            Placement::Pinned(ids) => {
                let wanted: Vec<u32> = {
                    let held = lock(&self.held);
                    ids.clone().filter(|id| !held.contains_key(id)).collect()
                };
                let count = wanted.len();
                self.claim_some(&wanted, count).await;
            }
            Placement::Balanced => self.balance(&members).await,
        }
        self.publish_status();
    }

    /// Makes the shards the supervisor runs match the leases held: a lease renewed after its
    /// shard had already stopped itself (its guard ran out while the renewal was on its way) gets
    /// its shard started again, and a shard running without a lease is stopped.
    async fn reconcile(&mut self) {
        let held: Vec<(u32, LeaseGuard)> = lock(&self.held)
            .iter()
            .map(|(id, (_, guard))| (*id, guard.clone()))
            .collect();
        let Ok(done) = self.supervisor.send(Reconcile { held }).await else {
            return;
        };
        for id in &done.restarted {
            tracing::warn!(
                shard.id = id,
                owner = self.leases.owner(),
                "fleet: the lease is held but the shard had stopped; started again"
            );
        }
        for id in &done.abandoned {
            tracing::warn!(
                shard.id = id,
                owner = self.leases.owner(),
                "fleet: a shard ran without a lease; stopped"
            );
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

    /// The renewals found `lease` lost (not renewed in time, or taken): its guard is revoked
    /// already, so the shard stops by itself without a frame; the supervisor is told without
    /// waiting for it.
    fn lose(&mut self, lease: Lease) {
        let id = lease.shard;
        {
            // Only the keeper adds to or takes from the held map, so the shard cannot have been
            // claimed again between the report and now; a report of a lease handed over
            // meanwhile is stale.
            let mut held = lock(&self.held);
            if held.get(&id).is_none_or(|(l, _)| l.token != lease.token) {
                return;
            }
            held.remove(&id);
        }
        tracing::warn!(
            shard.id = id,
            owner = self.leases.owner(),
            "fleet: lease lost; shard stopped without a frame"
        );
        self.store.forget_local(id);
        self.emit(id, OwnershipChange::Lost);
        // Sent now, waited for elsewhere: the supervisor takes it before any later claim of the
        // same shard (one sender's messages arrive in order), so it cannot stop the shard that
        // claim starts; and the keeper does not wait for a shard whose thread may be blocked.
        let release = self.supervisor.send(ReleaseShard {
            id,
            how: Release::Abandon,
        });
        actix_rt::spawn(async move {
            let _ = release.await;
        });
    }

    async fn heartbeat(&mut self) -> Result<Vec<String>, FleetError> {
        let script = Script::new(HEARTBEAT);
        let mut call = script.prepare_invoke();
        let fresh = format!("{:016x}", rand::random::<u64>());
        call.key(self.redis.key(format_args!("members")))
            .key(self.redis.key(format_args!("total")))
            .key(self.redis.key(format_args!("epoch")))
            .arg(self.leases.owner())
            .arg(self.leases.lease_time().as_millis() as u64)
            .arg(self.total)
            .arg(&fresh);
        let mut conn = self.redis.conn();
        // Bounded like the renewals: while Redis stalls, the keeper goes on handling lost leases.
        let wait = self.leases.lease_time() / 3;
        let members: Result<Vec<String>, FleetError> =
            match tokio::time::timeout(wait, call.invoke_async(&mut conn)).await {
                Ok(answer) => answer.map_err(FleetError::from),
                Err(_) => Err(FleetError::Command(format!("no answer within {wait:?}"))),
            };
        self.note_redis(members.as_ref().map(|_| ()));
        let mut members = members?;
        if members.is_empty() {
            return Err(FleetError::Command(
                "no epoch in the heartbeat's answer".into(),
            ));
        }
        let epoch = members.remove(0);
        self.see_epoch(epoch, &fresh);
        // Positions come from names, which every member sorts alike; an order by heartbeat would
        // put each member last right after its own heartbeat, and no one would take the
        // remainder of an uneven split.
        members.sort_unstable();
        Ok(members)
    }

    /// A Redis that lost its data (restarted empty, say) has lost every lease, while their holders
    /// still trust them for up to a lease time (they stop once their renewals fail, or their
    /// instants pass): claiming at once would start a second connection of a running shard. So
    /// after a new epoch (created by this process, or found changed) nothing is claimed for one
    /// lease time, by which every lease granted before it has run out on its holder's clock. A
    /// process joining a fleet whose epoch it finds in place claims at once.
    fn see_epoch(&mut self, epoch: String, fresh: &str) {
        let known = self.epoch.as_deref();
        if known == Some(epoch.as_str()) {
            return;
        }
        if known.is_some() || epoch == fresh {
            let wait = self.leases.lease_time();
            tracing::warn!(
                owner = self.leases.owner(),
                ?wait,
                "fleet: Redis holds none of the fleet's state (new, or restarted empty): claiming nothing until every earlier lease has run out"
            );
            self.claims_from = Some(Instant::now() + wait);
        }
        self.epoch = Some(epoch);
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
        let target = share(self.total, n, index);
        let held = lock(&self.held).len() as u32;
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
            let excess: Vec<u32> = lock(&self.held)
                .keys()
                .rev()
                .take((held - target) as usize)
                .copied()
                .collect();
            self.hand_over(&excess).await;
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
        let mut holders: Vec<Option<String>> = Vec::with_capacity(keys.len());
        // MGET in slices: one command of 10 000 keys would hold Redis up for everyone else.
        for slice in keys.chunks(1024) {
            let part: Vec<Option<String>> = redis::cmd("MGET")
                .arg(slice)
                .query_async(&mut self.redis.conn())
                .await
                .map_err(FleetError::from)?;
            holders.extend(part);
        }
        Ok(holders
            .iter()
            .enumerate()
            .filter(|(_, h)| h.is_none())
            .map(|(id, _)| id as u32)
            .collect())
    }

    /// Claims up to `count` of `ids` (skipping held ones), in batches, and starts them.
    async fn claim_some(&mut self, ids: &[u32], count: usize) {
        if count == 0 || ids.is_empty() {
            return;
        }
        let claimed = match self.leases.claim_many(ids, count).await {
            Ok(claimed) => claimed,
            Err(e) => {
                self.note_redis(Err(&e));
                return;
            }
        };
        if claimed.is_empty() {
            return;
        }
        let shards: Vec<u32> = claimed.iter().map(|(lease, _)| lease.shard).collect();
        // The sessions are read only now that no other process may write them.
        for (lease, _) in &claimed {
            self.store.set_fence(lease.shard, Some(lease.value.clone()));
        }
        if let Err(e) = self.store.load_from_redis(&shards).await {
            tracing::warn!(shards = shards.len(), error = %e, "fleet: cannot read the claimed shards' sessions; giving the leases back");
            let leases: Vec<Lease> = claimed.into_iter().map(|(lease, _)| lease).collect();
            for lease in &leases {
                self.store.forget_local(lease.shard);
            }
            let _ = self.leases.release_all(&leases).await;
            return;
        }
        for (lease, until) in claimed {
            let id = lease.shard;
            let guard = LeaseGuard::new(until);
            tracing::info!(
                shard.id = id,
                owner = self.leases.owner(),
                token = lease.token,
                "fleet: claimed"
            );
            lock(&self.held).insert(id, (lease, guard.clone()));
            // Told before the shard starts, so that what keeps per-shard state (the event stream's
            // publisher: the shard's session) forgets an earlier ownership before the first event.
            self.emit(id, OwnershipChange::Claimed);
            let _ = self.supervisor.send(Acquire { id, guard }).await;
        }
    }

    /// Closes the shards resumably, all at once (their leases renewed meanwhile), writes their
    /// sessions, and releases their leases for the next owners.
    async fn hand_over(&mut self, ids: &[u32]) {
        if ids.is_empty() {
            return;
        }
        let stops = ids.iter().map(|&id| {
            self.supervisor.send(ReleaseShard {
                id,
                how: Release::HandOver,
            })
        });
        join_all(stops).await;
        if let Err(e) = self.store.flush().await {
            // The leases then run out by themselves; the next owners resume from the last flush.
            tracing::warn!(shards = ids.len(), error = %e, "fleet: could not write the sessions before handing over");
        }
        let leases: Vec<Lease> = {
            let mut held = lock(&self.held);
            ids.iter()
                .filter_map(|id| held.remove(id))
                .map(|(lease, guard)| {
                    guard.revoke();
                    lease
                })
                .collect()
        };
        if let Err(e) = self.leases.release_all(&leases).await {
            tracing::warn!(shards = leases.len(), error = %e, "fleet: could not release the leases handed over; they run out by themselves");
        }
        for lease in &leases {
            self.store.forget_local(lease.shard);
            tracing::info!(
                shard.id = lease.shard,
                owner = self.leases.owner(),
                "fleet: handed over"
            );
            self.emit(lease.shard, OwnershipChange::Released);
        }
    }

    async fn leave(&mut self, resumable: bool) {
        // Said first: the others raise their shares now, and take each shard as soon as its
        // lease is released, not once the last one is.
        let _: Result<i64, _> = redis::cmd("ZREM")
            .arg(self.redis.key(format_args!("members")))
            .arg(self.leases.owner())
            .query_async(&mut self.redis.conn())
            .await;
        let ids: Vec<u32> = lock(&self.held).keys().copied().collect();
        if resumable {
            self.hand_over(&ids).await;
        } else {
            // Sessions end (close 1000) and are removed from the store.
            let _ = self.supervisor.send(ShutdownAll { resumable: false }).await;
            let _ = self.store.flush().await;
            let held = std::mem::take(&mut *lock(&self.held));
            let leases: Vec<Lease> = held
                .into_values()
                .map(|(lease, guard)| {
                    guard.revoke();
                    lease
                })
                .collect();
            let _ = self.leases.release_all(&leases).await;
            for lease in &leases {
                self.store.forget_local(lease.shard);
                self.emit(lease.shard, OwnershipChange::Released);
            }
        }
        let _ = self.supervisor.send(ShutdownAll { resumable: true }).await;
    }

    /// Writes each held shard's status for the fleet-wide view, in a task of its own: it asks every
    /// shard, and a shard on a blocked thread must not hold up the keeper.
    fn publish_status(&mut self) {
        let held: BTreeSet<u32> = lock(&self.held).keys().copied().collect();
        if held.is_empty() || self.status_busy.swap(true, Ordering::AcqRel) {
            return;
        }
        let busy = self.status_busy.clone();
        let supervisor = self.supervisor.clone();
        let redis = self.redis.clone();
        let owner = self.leases.owner().to_owned();
        let lease_time = self.leases.lease_time();
        actix_rt::spawn(async move {
            let asked = tokio::time::timeout(lease_time, supervisor.send(GetStatuses)).await;
            if let Ok(Ok(statuses)) = asked {
                let script = Script::new(STATUS);
                let mut pipe = redis::pipe();
                pipe.load_script(&script).ignore();
                let ttl = (lease_time * 3).as_millis() as u64;
                for status in statuses.iter().filter(|s| held.contains(&s.id)) {
                    let mut call = script.prepare_invoke();
                    call.key(redis.shard_key("status", status.id))
                        .arg(&owner)
                        .arg(format!("{:?}", status.phase))
                        .arg(status.latency.map_or(-1, |l| l.as_millis() as i64))
                        .arg(status.seq.map_or(-1, |s| s as i64))
                        .arg(ttl);
                    pipe.invoke_script(&call).ignore();
                }
                let _: Result<(), _> = pipe.query_async(&mut redis.conn()).await;
            }
            busy.store(false, Ordering::Release);
        });
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

/// The number of shards the member at `index` (in name order) of `members` runs: an even split,
/// the first `total % members` one more.
fn share(total: u32, members: u32, index: u32) -> u32 {
    let members = members.max(1);
    total / members + u32::from(index < total % members)
}

/// Renews the held leases every quarter of a lease time, on a thread and a connection of its own,
/// and reports the ones lost: not renewed before their guard ran out (Redis unreachable, or the
/// process paused), or held by another process now.
struct Renewer {
    redis: FleetRedis,
    leases: Leases,
    held: Held,
    lost: tokio::sync::mpsc::UnboundedSender<Lease>,
}

impl Renewer {
    /// A connection of the renewals' own, on the node the shared connection uses now.
    async fn connect(&self) -> Leases {
        loop {
            match self.redis.isolated().await {
                Ok(redis) => return self.leases.on(redis),
                Err(e) => {
                    tracing::warn!(error = %e, "fleet: cannot open the lease renewals' connection; retrying");
                    tokio::time::sleep(self.leases.lease_time() / 4).await;
                }
            }
        }
    }

    async fn run(self) {
        let mut leases = self.connect().await;
        let mut ticks = tokio::time::interval(self.leases.lease_time() / 4);
        ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut failing = false;
        let mut reported = HashSet::new();
        loop {
            ticks.tick().await;
            if self.lost.is_closed() {
                return;
            }
            // Behind Sentinel the shared connection follows a new primary; this one follows it.
            if leases.node() != self.redis.node() {
                leases = self.connect().await;
            }
            let now = Instant::now();
            let (expired, due): (Vec<Lease>, Vec<Lease>) = {
                let held = lock(&self.held);
                // Reports the keeper has dealt with (the lease left the map) are forgotten.
                reported.retain(|(shard, token)| {
                    held.get(shard)
                        .is_some_and(|(lease, _)| lease.token == *token)
                });
                let (expired, due): (Vec<_>, Vec<_>) = held
                    .values()
                    .filter(|(lease, _)| !reported.contains(&(lease.shard, lease.token)))
                    .partition(|(_, guard)| !guard.holds(now));
                (
                    expired.into_iter().map(|(l, _)| l.clone()).collect(),
                    due.into_iter().map(|(l, _)| l.clone()).collect(),
                )
            };
            for lease in expired {
                self.report_lost(lease, &mut reported);
            }
            if due.is_empty() {
                continue;
            }
            // Bounded: a renewal stuck in a stalled Redis must not keep this loop from noticing the
            // guards that ran out meanwhile. One that lands later extended a lease nobody counts
            // on; the next renewal that gets through is what counts.
            let wait = self.leases.lease_time() / 3;
            let answer = match tokio::time::timeout(wait, leases.renew_all(&due)).await {
                Ok(answer) => answer,
                Err(_) => Err(FleetError::Command(format!(
                    "no answer to the renewals within {wait:?}"
                ))),
            };
            match answer {
                Ok(renewed) => {
                    if failing {
                        failing = false;
                        tracing::info!(
                            owner = leases.owner(),
                            "fleet: lease renewals get through again"
                        );
                    }
                    for (lease, until) in due.into_iter().zip(renewed) {
                        match until {
                            Some(until) => {
                                // Extended under the lock, and only if it is still the same
                                // lease: one handed over meanwhile stays revoked.
                                let held = lock(&self.held);
                                if let Some((current, guard)) = held.get(&lease.shard) {
                                    if current.token == lease.token
                                        && !reported.contains(&(lease.shard, lease.token))
                                    {
                                        guard.extend_to(until);
                                    }
                                }
                            }
                            None => self.report_lost(lease, &mut reported),
                        }
                    }
                }
                Err(e) => {
                    if !failing {
                        failing = true;
                        tracing::warn!(owner = leases.owner(), error = %e, "fleet: lease renewals fail; shards run on until their leases can no longer be trusted");
                    }
                }
            }
        }
    }

    /// Revokes the lease's guard (its shard stops by itself) and tells the keeper, once per
    /// lease; the keeper takes it out of the held map, so the held map never misses a lease the
    /// keeper has not yet stopped.
    fn report_lost(&self, lease: Lease, reported: &mut HashSet<(u32, u64)>) {
        if !reported.insert((lease.shard, lease.token)) {
            return;
        }
        if let Some((current, guard)) = lock(&self.held).get(&lease.shard) {
            if current.token == lease.token {
                guard.revoke();
            }
        }
        let _ = self.lost.send(lease);
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn an_uneven_split_gives_the_remainder_to_the_first_members_by_name() {
        for (total, members) in [(8u32, 3u32), (3, 2), (7, 3), (13, 5), (1, 4), (0, 2)] {
            let shares: Vec<u32> = (0..members)
                .map(|i| super::share(total, members, i))
                .collect();
            assert_eq!(
                shares.iter().sum::<u32>(),
                total,
                "{total} over {members}: {shares:?}"
            );
            assert!(
                shares.windows(2).all(|w| w[0] >= w[1] && w[0] - w[1] <= 1),
                "{shares:?}"
            );
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
        pipe.cmd("HGETALL").arg(redis.shard_key("status", id));
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
