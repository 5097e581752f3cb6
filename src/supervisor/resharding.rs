//! The supervisor's side of a live reshard (docs/resharding.md): it starts the new set beside the
//! running one, watches it become ready, makes the cut, closes the old set and rolls back if a new
//! shard fails for good. What each set's handlers get is decided in `crate::reshard::overlap`.

use std::collections::{BTreeMap, HashSet};
use std::future::Future;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use actix::prelude::*;
use futures_util::future::join_all;

use super::{Slot, Supervisor};
use crate::event::ShardEvent;
use crate::reshard::overlap::{Overlap, Readiness};
use crate::reshard::{NewSide, OldSide, ReshardError, ReshardReport, StagedSessions};
use crate::rest;
use crate::shard::actor::ShardShared;
use crate::shard::gate::GateSlot;
use crate::shard::messages::{GetStatus, ReleaseHeld, ShardNotice, ShardStatus, Shutdown};
use crate::shard::{Phase, ShardActor};

/// How often the new set's readiness is looked at.
const READINESS_POLL: Duration = Duration::from_millis(20);

/// Asks the supervisor to reshard to `new_total` shards ([`Gateway::reshard`](crate::Gateway::reshard)).
#[derive(Debug, Clone, Copy, Message)]
#[rtype(result = "Result<ReshardReport, ReshardError>")]
pub(crate) struct Reshard {
    pub new_total: u32,
}

/// A reshard's new set, from its start to the end of the dedup window after the cut.
pub(crate) struct Incoming {
    generation: u64,
    total: u32,
    old_total: u32,
    shared: Arc<ShardShared>,
    /// Its shards until the cut (then they become the supervisor's `slots`).
    slots: BTreeMap<u32, Slot>,
    overlap: Arc<Mutex<Overlap>>,
    staged: Arc<StagedSessions>,
    /// The set's shards report through this, tagged with `generation`.
    notices: Recipient<ShardNotice>,
    started: Instant,
    ready: HashSet<u32>,
    poll: Option<SpawnHandle>,
    cut_at: Option<Duration>,
    held_at_cut: usize,
    timed_out: Vec<u64>,
    reply: Option<tokio::sync::oneshot::Sender<Result<ReshardReport, ReshardError>>>,
}

/// Forwards a set's shard notices to the supervisor, tagged with the set's generation: the old
/// and the new set use the same shard ids.
struct SetNotices {
    generation: u64,
    supervisor: Addr<Supervisor>,
}

impl Actor for SetNotices {
    type Context = Context<Self>;
}

impl Handler<ShardNotice> for SetNotices {
    type Result = ();

    fn handle(&mut self, notice: ShardNotice, _: &mut Self::Context) {
        self.supervisor.do_send(TaggedNotice {
            generation: self.generation,
            notice,
        });
    }
}

#[derive(Message)]
#[rtype(result = "()")]
struct TaggedNotice {
    generation: u64,
    notice: ShardNotice,
}

impl Handler<TaggedNotice> for Supervisor {
    type Result = ();

    fn handle(&mut self, msg: TaggedNotice, ctx: &mut Self::Context) {
        self.on_notice(msg.generation, msg.notice, ctx);
    }
}

/// Why the supervisor reshards by itself.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Trigger {
    /// A shard was closed with 4011.
    ShardingRequired,
    /// The periodic check found the recommendation `margin` above the running total.
    Recommendation,
}

/// The recommendation was asked for (the answer may start a reshard).
#[derive(Message)]
#[rtype(result = "()")]
struct AutoReshardDone;

impl Handler<AutoReshardDone> for Supervisor {
    type Result = ();

    fn handle(&mut self, _: AutoReshardDone, _: &mut Self::Context) {
        self.reshard_pending = false;
    }
}

fn lock(overlap: &Mutex<Overlap>) -> std::sync::MutexGuard<'_, Overlap> {
    overlap.lock().unwrap_or_else(|p| p.into_inner())
}

impl Handler<Reshard> for Supervisor {
    type Result = ResponseActFuture<Self, Result<ReshardReport, ReshardError>>;

    fn handle(&mut self, Reshard { new_total }: Reshard, _: &mut Self::Context) -> Self::Result {
        if let Err(e) = self.may_reshard(new_total) {
            return Box::pin(actix::fut::ready(Err(e)));
        }
        self.reshard_pending = true;
        let queue = self.shared.queue.clone();
        let config = self.config.clone();
        // The queue's own count when it keeps the budget; otherwise Discord's answer now.
        let remaining = async move {
            match queue.session_starts_remaining() {
                Some(remaining) => Ok(remaining),
                None => rest::gateway_bot(&config)
                    .await
                    .map(|bot| bot.session_start_limit.remaining)
                    .map_err(ReshardError::Rest),
            }
        };
        Box::pin(remaining.into_actor(self).then(move |remaining, act, ctx| {
            act.reshard_pending = false;
            let started = remaining.and_then(|remaining| {
                act.may_reshard(new_total)?;
                if new_total > remaining {
                    tracing::warn!(
                        new_total,
                        remaining,
                        "reshard refused: the session-start budget cannot cover the new set"
                    );
                    return Err(ReshardError::Budget {
                        needed: new_total,
                        remaining,
                    });
                }
                Ok(act.begin_reshard(new_total, ctx))
            });
            async move {
                match started {
                    Ok(done) => done.await.unwrap_or(Err(ReshardError::ShuttingDown)),
                    Err(e) => Err(e),
                }
            }
            .into_actor(act)
        }))
    }
}

impl Supervisor {
    fn may_reshard(&self, new_total: u32) -> Result<(), ReshardError> {
        if new_total == 0 {
            Err(ReshardError::ZeroShards)
        } else if self.shutting_down {
            Err(ReshardError::ShuttingDown)
        } else if self.dynamic {
            Err(ReshardError::InFleet)
        } else if self.slots.len() != self.total as usize {
            Err(ReshardError::PartOfTheBot)
        } else if self.incoming.is_some() || self.reshard_pending || !self.retiring.is_empty() {
            Err(ReshardError::AlreadyUnderWay)
        } else if new_total == self.total {
            Err(ReshardError::SameTotal(new_total))
        } else {
            Ok(())
        }
    }

    /// Starts the new set beside the running one; the receiver answers when the reshard ends.
    fn begin_reshard(
        &mut self,
        new_total: u32,
        ctx: &mut Context<Self>,
    ) -> tokio::sync::oneshot::Receiver<Result<ReshardReport, ReshardError>> {
        let (reply, done) = tokio::sync::oneshot::channel();
        let options = self.config.reshard;
        let generation = self.generation + 1;
        let overlap = Arc::new(Mutex::new(Overlap::new(
            self.total,
            new_total,
            options.dedup_window,
            options.guild_timeout,
            options.catch_up_timeout,
        )));
        for (&id, slot) in &self.slots {
            if slot.fatal.is_some() || slot.stopped {
                // Nothing to read: the cut does not wait for it to catch up.
                lock(&overlap).old_shard_gone(id);
            }
        }
        let staged = Arc::new(StagedSessions::new(self.config.sessions.clone()));
        let mut shared = (*self.shared).clone();
        shared.sessions = staged.clone();
        shared.gate = Arc::new(GateSlot::default());
        shared.gate.set(Some(Arc::new(NewSide(overlap.clone()))));
        // The old set's deliveries are recorded from before the first new shard connects, so that
        // every event both sets receive is matched.
        self.shared
            .gate
            .set(Some(Arc::new(OldSide(overlap.clone()))));
        let notices = SetNotices {
            generation,
            supervisor: ctx.address(),
        }
        .start()
        .recipient();
        let arbiters = self.arbiters.len().max(1);
        let slots = (0..new_total)
            .map(|id| (id, Slot::new(id as usize % arbiters, &self.config.backoff)))
            .collect();
        tracing::info!(
            old_total = self.total,
            new_total,
            "reshard: starting the new set beside the running one"
        );
        self.incoming = Some(Incoming {
            generation,
            total: new_total,
            old_total: self.total,
            shared: Arc::new(shared),
            slots,
            overlap,
            staged,
            notices,
            started: Instant::now(),
            ready: HashSet::new(),
            poll: None,
            cut_at: None,
            held_at_cut: 0,
            timed_out: Vec::new(),
            reply: Some(reply),
        });
        // Ascending ids: bucket order, through the same identify queue as the running set.
        for id in 0..new_total {
            self.start_incoming(id);
        }
        let poll = ctx.run_interval(READINESS_POLL, |act, ctx| act.poll_reshard(ctx));
        if let Some(incoming) = &mut self.incoming {
            incoming.poll = Some(poll);
        }
        done
    }

    fn start_incoming(&mut self, id: u32) {
        let Some(incoming) = &mut self.incoming else {
            return;
        };
        let Some(slot) = incoming.slots.get_mut(&id) else {
            return;
        };
        slot.restart_timer = None;
        if !self.arbiters[slot.arbiter].spawn(async {}) {
            self.arbiters[slot.arbiter] = Arbiter::new();
        }
        let shared = incoming.shared.clone();
        let total = incoming.total;
        let notices = incoming.notices.clone();
        slot.incarnation += 1;
        let incarnation = slot.incarnation;
        let addr = ShardActor::start_in_arbiter(&self.arbiters[slot.arbiter].handle(), move |_| {
            ShardActor::new(id, total, shared, Some((notices, incarnation)), None)
        });
        slot.addr = Some(addr);
    }

    fn poll_reshard(&mut self, ctx: &mut Context<Self>) {
        let Some(incoming) = &self.incoming else {
            return;
        };
        if incoming.cut_at.is_some() {
            return;
        }
        let readiness = lock(&incoming.overlap).readiness(Instant::now());
        if let Readiness::Ready { timed_out, lagging } = readiness {
            if lagging > 0 {
                tracing::warn!(
                    lagging,
                    "reshard: cut without old shards showing they caught up (events they had not read from before the new sessions began may be lost)"
                );
            }
            self.cut(timed_out, ctx);
        }
    }

    /// The cut: the new set delivers from here on, the old set is closed.
    fn cut(&mut self, timed_out: Vec<u64>, ctx: &mut Context<Self>) {
        let Some(incoming) = &mut self.incoming else {
            return;
        };
        let stats = lock(&incoming.overlap).cut();
        if let Some(poll) = incoming.poll.take() {
            ctx.cancel_future(poll);
        }
        let to_cut = incoming.started.elapsed();
        incoming.cut_at = Some(to_cut);
        incoming.held_at_cut = stats.held;
        incoming.timed_out = timed_out.clone();
        if !timed_out.is_empty() {
            tracing::warn!(guilds = ?timed_out, "reshard: cut without guilds that did not arrive in time");
        }
        let old_total = self.total;
        let new_slots = std::mem::take(&mut incoming.slots);
        let old_slots = std::mem::replace(&mut self.slots, new_slots);
        self.retiring = old_slots;
        let old_shared = std::mem::replace(&mut self.shared, incoming.shared.clone());
        self.total = incoming.total;
        self.generation = incoming.generation;
        self.ever_ready = incoming.ready.clone();
        tracing::info!(
            old_total,
            new_total = self.total,
            held = stats.held,
            duplicates = stats.duplicates,
            ?to_cut,
            "reshard: cut"
        );
        // Each new shard delivers what was held for it before anything it reads next.
        for slot in self.slots.values() {
            if let Some(addr) = &slot.addr {
                addr.do_send(ReleaseHeld);
            }
        }
        let event = ShardEvent::Resharded {
            old_total,
            new_total: self.total,
            timed_out_guilds: timed_out,
        };
        for recipient in &self.config.events {
            recipient.do_send(event.clone());
        }
        // The old sessions end (1000, not resumable) and leave the session store.
        let closing: Vec<_> = self
            .retiring
            .values_mut()
            .filter_map(|slot| {
                if let Some(timer) = slot.restart_timer.take() {
                    ctx.cancel_future(timer);
                }
                slot.stopped = true;
                slot.addr.take()
            })
            .map(|addr| async move {
                let _ = addr.send(Shutdown { resumable: false }).await;
            })
            .collect();
        ctx.spawn(
            join_all(closing)
                .into_actor(self)
                .map(move |_, act, ctx| act.old_set_closed(old_shared, ctx)),
        );
    }

    fn old_set_closed(&mut self, old_shared: Arc<ShardShared>, ctx: &mut Context<Self>) {
        old_shared.gate.set(None);
        self.retiring.clear();
        let Some(incoming) = &mut self.incoming else {
            return;
        };
        // Only now: the old set's sessions (same shard ids) are gone from the store.
        incoming.staged.promote();
        let report = ReshardReport {
            old_total: incoming.old_total,
            new_total: incoming.total,
            took: incoming.started.elapsed(),
            to_cut: incoming.cut_at.unwrap_or_default(),
            held_at_cut: incoming.held_at_cut,
            duplicates: lock(&incoming.overlap).duplicates(),
            timed_out_guilds: incoming.timed_out.clone(),
        };
        tracing::info!(took = ?report.took, "reshard: old set closed");
        if let Some(reply) = incoming.reply.take() {
            let _ = reply.send(Ok(report));
        }
        // Copies of what the old set delivered may still come from a lagging new shard: the gate
        // keeps matching them for the dedup window, then steps aside.
        let window = self.config.reshard.dedup_window;
        ctx.run_later(window, |act, ctx| act.finish_reshard(ctx));
    }

    fn finish_reshard(&mut self, ctx: &mut Context<Self>) {
        let Some(incoming) = &self.incoming else {
            return;
        };
        if !lock(&incoming.overlap).all_released() {
            // A shard has not taken its release yet (it was restarting): ask again shortly.
            for slot in self.slots.values() {
                if let Some(addr) = &slot.addr {
                    addr.do_send(ReleaseHeld);
                }
            }
            ctx.run_later(READINESS_POLL, |act, ctx| act.finish_reshard(ctx));
            return;
        }
        self.shared.gate.set(None);
        self.incoming = None;
        tracing::debug!("reshard: finished, the gate is off");
    }

    /// A new shard failed for good before the cut: the new set is closed, the old set never
    /// stopped delivering.
    fn roll_back(&mut self, error: ReshardError, ctx: &mut Context<Self>) {
        let Some(mut incoming) = self.incoming.take() else {
            return;
        };
        tracing::error!(%error, "reshard: rolled back");
        if let Some(poll) = incoming.poll.take() {
            ctx.cancel_future(poll);
        }
        self.shared.gate.set(None);
        let mut closing = Vec::new();
        for slot in incoming.slots.values_mut() {
            if let Some(timer) = slot.restart_timer.take() {
                ctx.cancel_future(timer);
            }
            if let Some(addr) = slot.addr.take() {
                closing.push(async move {
                    let _ = addr.send(Shutdown { resumable: false }).await;
                });
            }
        }
        // Answered once the new set's sessions are closed: a caller that looks finds them gone.
        let reply = incoming.reply.take();
        actix::spawn(async move {
            join_all(closing).await;
            if let Some(reply) = reply {
                let _ = reply.send(Err(error));
            }
        });
    }

    /// A running shard stopped for good during a reshard: the cut does not wait for it.
    pub(super) fn old_shard_stopped_for_good(&mut self, id: u32) {
        if let Some(incoming) = &self.incoming {
            lock(&incoming.overlap).old_shard_gone(id);
        }
    }

    /// A new shard whose actor ended without a notice (a panic) is restarted, as a running one is.
    pub(super) fn check_incoming_liveness(&mut self, ctx: &mut Context<Self>) {
        let Some(incoming) = &mut self.incoming else {
            return;
        };
        let dead: Vec<u32> = incoming
            .slots
            .iter()
            .filter(|(_, s)| {
                s.restart_timer.is_none() && s.addr.as_ref().is_some_and(|a| !a.connected())
            })
            .map(|(id, _)| *id)
            .collect();
        for id in dead {
            let Some(slot) = incoming.slots.get_mut(&id) else {
                continue;
            };
            slot.addr = None;
            let delay = slot.next_restart();
            tracing::warn!(shard.id = id, ?delay, "new set's shard is gone; restarting");
            slot.restart_timer = Some(ctx.run_later(delay, move |act, _| act.start_incoming(id)));
        }
    }

    /// A notice from a set other than the running one.
    pub(super) fn on_other_set_notice(
        &mut self,
        generation: u64,
        msg: ShardNotice,
        ctx: &mut Context<Self>,
    ) {
        let incoming_generation = self.incoming.as_ref().map(|i| i.generation);
        if incoming_generation != Some(generation) {
            // An old set closing after the cut (or a rolled-back new set).
            if let ShardNotice::Stopped { id, .. } = msg {
                if let Some(slot) = self.retiring.get_mut(&id) {
                    for waiter in slot.on_stopped.drain(..) {
                        let _ = waiter.send(());
                    }
                }
            }
            return;
        }
        match msg {
            ShardNotice::Ready { id } => {
                if let Some(incoming) = &mut self.incoming {
                    incoming.ready.insert(id);
                    if let Some(slot) = incoming.slots.get_mut(&id) {
                        slot.on_ready();
                    }
                }
            }
            ShardNotice::Stopped {
                id,
                incarnation,
                fatal,
                deliberate,
            } => {
                let current = self
                    .incoming
                    .as_ref()
                    .and_then(|i| i.slots.get(&id))
                    .is_some_and(|slot| slot.incarnation == incarnation);
                if !current {
                    // An earlier actor of this new shard: its successor runs on.
                    return;
                }
                if let Some(error) = fatal {
                    self.roll_back(ReshardError::NewShardFailed { shard: id, error }, ctx);
                    return;
                }
                let shutting_down = self.shutting_down;
                let Some(slot) = self.incoming.as_mut().and_then(|i| i.slots.get_mut(&id)) else {
                    return;
                };
                slot.addr = None;
                if deliberate || shutting_down {
                    slot.stopped = true;
                    return;
                }
                if slot.restart_timer.is_some() {
                    // Already restarting (its actor was found gone before this notice came).
                    return;
                }
                let delay = slot.next_restart();
                tracing::warn!(shard.id = id, ?delay, "new set's shard stopped; restarting");
                slot.restart_timer =
                    Some(ctx.run_later(delay, move |act, _| act.start_incoming(id)));
            }
        }
    }

    /// After a 4011: reshard to what `GET /gateway/bot` recommends, if the config asks for it.
    pub(super) fn auto_reshard(&mut self, ctx: &mut Context<Self>) {
        if self.config.reshard.on_sharding_required {
            self.reshard_to_recommended(Trigger::ShardingRequired, ctx);
        }
    }

    /// With `ReshardOptions::check_every`: asks `GET /gateway/bot` at that interval.
    pub(super) fn watch_recommendation(&mut self, ctx: &mut Context<Self>) {
        let Some(every) = self.config.reshard.check_every else {
            return;
        };
        if self.dynamic {
            return;
        }
        ctx.run_interval(every, |act, ctx| {
            act.reshard_to_recommended(Trigger::Recommendation, ctx)
        });
    }

    fn reshard_to_recommended(&mut self, trigger: Trigger, ctx: &mut Context<Self>) {
        if self.may_reshard(self.total + 1).is_err() {
            return;
        }
        self.reshard_pending = true;
        let config = self.config.clone();
        let current = self.total;
        let needed = match trigger {
            Trigger::ShardingRequired => current + 1,
            Trigger::Recommendation => current + self.config.reshard.margin.max(1),
        };
        let me = ctx.address();
        actix::spawn(async move {
            let bot = rest::gateway_bot(&config).await;
            me.do_send(AutoReshardDone);
            let recommended = match bot {
                Ok(bot) => bot.shards,
                Err(e) => {
                    tracing::error!(error = %e, ?trigger, "GET /gateway/bot failed: no automatic reshard");
                    return;
                }
            };
            if recommended < needed {
                if trigger == Trigger::ShardingRequired {
                    tracing::error!(
                        current,
                        recommended,
                        "4011 (sharding required), but GET /gateway/bot recommends no more shards than run now"
                    );
                }
                return;
            }
            tracing::warn!(current, recommended, ?trigger, "resharding by itself");
            match me
                .send(Reshard {
                    new_total: recommended,
                })
                .await
            {
                Ok(Ok(report)) => tracing::info!(?report, "automatic reshard done"),
                Ok(Err(e)) => tracing::error!(error = %e, "automatic reshard failed"),
                Err(_) => {}
            }
        });
    }

    /// The new set's statuses while it runs beside the old one.
    pub(super) fn incoming_statuses(&self) -> impl Future<Output = Vec<ShardStatus>> {
        let queries: Vec<_> = self
            .incoming
            .iter()
            .flat_map(|incoming| {
                let total = incoming.total;
                incoming.slots.iter().map(move |(&id, slot)| {
                    let addr = slot.addr.clone();
                    async move {
                        let fallback = ShardStatus {
                            id,
                            total,
                            phase: Phase::Disconnected,
                            latency: None,
                            seq: None,
                            session_id: None,
                            reconnects: 0,
                            fatal: None,
                            pending: 0,
                            dropped: 0,
                            reading_paused_since: None,
                            stalled_handlers: 0,
                            owner: None,
                        };
                        match addr {
                            Some(addr) => addr.send(GetStatus).await.unwrap_or(fallback),
                            None => fallback,
                        }
                    }
                })
            })
            .collect();
        join_all(queries)
    }

    /// Stops a reshard for a shutdown: the shards of the new set (and of an old set still
    /// closing), to be closed with the rest.
    pub(super) fn close_other_sets(&mut self, ctx: &mut Context<Self>) -> Vec<Addr<ShardActor>> {
        let mut addrs = Vec::new();
        if let Some(mut incoming) = self.incoming.take() {
            if let Some(poll) = incoming.poll.take() {
                ctx.cancel_future(poll);
            }
            for slot in incoming.slots.values_mut() {
                if let Some(timer) = slot.restart_timer.take() {
                    ctx.cancel_future(timer);
                }
                addrs.extend(slot.addr.take());
            }
            if let Some(reply) = incoming.reply.take() {
                let _ = reply.send(Err(ReshardError::ShuttingDown));
            }
        }
        for slot in self.retiring.values_mut() {
            addrs.extend(slot.addr.take());
        }
        addrs
    }
}
