//! The `Supervisor` actor: builds the shard plan, starts one shard actor per shard across arbiters
//! in identify-bucket order, restarts a shard that stopped unexpectedly, answers status queries,
//! relays commands, and shuts everything down.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use actix::prelude::*;
use futures_util::future::join_all;

use crate::config::{Config, ShardPlan, DEFAULT_GATEWAY_URL};
use crate::error::{FatalError, StartError};
use crate::ownership::LeaseGuard;
use crate::protocol::{Command, CommandError};
use crate::queue::{IdentifyQueue, LocalIdentifyQueue, SESSION_START_PERIOD};
use crate::reshard::{ReshardError, ReshardReport};
use crate::rest::{self, GatewayBot};
use crate::shard::actor::ShardShared;
use crate::shard::backoff::ReconnectBackoff;
#[cfg(feature = "redis")]
use crate::shard::messages::Abandon;
use crate::shard::messages::{GetStatus, SendCommand, ShardNotice, ShardStatus, Shutdown};
use crate::shard::state::IdentifyParams;
use crate::shard::{Phase, ShardActor};

/// How often the supervisor checks that every shard actor is still alive (a panic in a shard ends
/// its actor without a goodbye).
const LIVENESS_CHECK: Duration = Duration::from_millis(500);

struct Slot {
    addr: Option<Addr<ShardActor>>,
    arbiter: usize,
    fatal: Option<FatalError>,
    stopped: bool,
    restarts: u32,
    backoff: ReconnectBackoff,
    restart_timer: Option<SpawnHandle>,
    /// In a fleet, the shard's lease as this process holds it; `None` while not held (the shard
    /// is not run here) or outside a fleet.
    guard: Option<LeaseGuard>,
    /// Whether the shard is run here: always outside a fleet, while its lease is held in one.
    held: bool,
    /// Told when the shard's actor has stopped (its connection is gone with it).
    on_stopped: Vec<tokio::sync::oneshot::Sender<()>>,
    /// Which of the shard's actors is the current one: a notice from an earlier one (replaced
    /// while it stopped) must not clear the slot of its successor.
    incarnation: u64,
}

/// The supervisor of every shard this process runs. Start it with [`Gateway::start`].
pub struct Supervisor {
    shared: Arc<ShardShared>,
    total: u32,
    slots: BTreeMap<u32, Slot>,
    arbiters: Vec<Arbiter>,
    shutting_down: bool,
    /// Set to `true` once a shutdown has closed every shard: a later `ShutdownAll` waits for it.
    shut_down: Option<tokio::sync::watch::Receiver<bool>>,
    ever_ready: std::collections::HashSet<u32>,
    started_at: std::time::Instant,
    /// Shards start only when a fleet's lease keeper hands them over ([`Acquire`]).
    dynamic: bool,
    /// In a fleet, this process's name (reported in every status).
    owner: Option<Arc<str>>,
    /// The config the gateway started with: `GET /gateway/bot` and the reshard options.
    config: Config,
    /// Which shard set `slots` holds: its shards' notices carry it (0: the set started with).
    generation: u64,
    /// A reshard's new set while it runs beside `slots` (docs/resharding.md).
    incoming: Option<resharding::Incoming>,
    /// The old set's slots after a cut, while its shards close.
    retiring: BTreeMap<u32, Slot>,
    /// A reshard is being checked (budget asked) or an automatic one is being asked for.
    reshard_pending: bool,
}

mod resharding;
pub(crate) use resharding::Reshard;

/// What the runtime resolved at start: the plan, the gateway URL and the identify limits.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct ResolvedPlan {
    /// The shard ids run in this process.
    pub ids: Vec<u32>,
    /// The bot's shard total.
    pub total: u32,
    /// The gateway URL identified on.
    pub gateway_url: String,
    /// Identify buckets.
    pub max_concurrency: u32,
    /// What `GET /gateway/bot` answered, if it was asked.
    pub gateway_bot: Option<GatewayBot>,
}

pub(crate) async fn resolve(config: &Config) -> Result<ResolvedPlan, StartError> {
    let needs_rest = config.plan == ShardPlan::Recommended
        || config.gateway_url.is_none()
        || (config.max_concurrency.is_none() && config.identify_queue.is_none());
    let gateway_bot = if needs_rest {
        Some(rest::gateway_bot(config).await?)
    } else {
        None
    };
    let (ids, total) = match &config.plan {
        ShardPlan::Count(n) => ((0..*n).collect(), *n),
        ShardPlan::Range { ids, total } => (ids.clone().collect(), *total),
        ShardPlan::Recommended => {
            let n = gateway_bot.as_ref().map_or(1, |g| g.shards.max(1));
            ((0..n).collect(), n)
        }
    };
    let gateway_url = config
        .gateway_url
        .clone()
        .or_else(|| gateway_bot.as_ref().map(|g| g.url.clone()))
        .unwrap_or_else(|| DEFAULT_GATEWAY_URL.to_owned());
    let max_concurrency = config
        .max_concurrency
        .or_else(|| {
            gateway_bot
                .as_ref()
                .map(|g| g.session_start_limit.max_concurrency)
        })
        .unwrap_or(1)
        .max(1);
    Ok(ResolvedPlan {
        ids,
        total,
        gateway_url,
        max_concurrency,
        gateway_bot,
    })
}

/// The shards that will identify: those without a stored session (a resume costs no session start).
fn identifying(ids: &[u32], config: &Config) -> Vec<u32> {
    ids.iter()
        .copied()
        .filter(|&id| config.sessions.load(id).is_none())
        .collect()
}

impl Slot {
    fn new(arbiter: usize, backoff: &crate::config::Backoff) -> Self {
        Self {
            addr: None,
            arbiter,
            fatal: None,
            stopped: false,
            restarts: 0,
            backoff: ReconnectBackoff::new(backoff),
            restart_timer: None,
            guard: None,
            held: true,
            on_stopped: Vec::new(),
            incarnation: 0,
        }
    }

    /// Counts a restart and returns the delay before it: growing while the shard keeps dying.
    fn next_restart(&mut self) -> Duration {
        self.restarts += 1;
        self.backoff.next_delay()
    }

    /// The shard is READY or RESUMED: it works again, so its next restart is a first one, not the
    /// next step of a crash loop that has ended.
    fn on_ready(&mut self) {
        self.backoff.reset();
    }
}

impl Supervisor {
    fn start_shard(&mut self, id: u32, ctx: &mut Context<Self>) {
        let Some(slot) = self.slots.get_mut(&id) else {
            return;
        };
        slot.restart_timer = None;
        // A dead arbiter (its thread ended) cannot take new actors: replace it.
        if !self.arbiters[slot.arbiter].spawn(async {}) {
            tracing::warn!(
                arbiter = slot.arbiter,
                "arbiter thread is gone; starting a new one"
            );
            self.arbiters[slot.arbiter] = Arbiter::new();
        }
        let shared = self.shared.clone();
        let total = self.total;
        let me = ctx.address().recipient();
        let guard = slot.guard.clone();
        slot.incarnation += 1;
        let incarnation = slot.incarnation;
        let addr = ShardActor::start_in_arbiter(&self.arbiters[slot.arbiter].handle(), move |_| {
            ShardActor::new(id, total, shared, Some((me, incarnation)), guard)
        });
        slot.addr = Some(addr);
    }

    fn schedule_restart(&mut self, id: u32, ctx: &mut Context<Self>) {
        if self.shutting_down {
            return;
        }
        let Some(slot) = self.slots.get_mut(&id) else {
            return;
        };
        if slot.restart_timer.is_some() || slot.stopped || slot.fatal.is_some() || !slot.held {
            return;
        }
        slot.addr = None;
        let delay = slot.next_restart();
        tracing::warn!(
            shard.id = id,
            ?delay,
            restarts = slot.restarts,
            "shard stopped unexpectedly; restarting"
        );
        slot.restart_timer = Some(ctx.run_later(delay, move |act, ctx| act.start_shard(id, ctx)));
    }

    fn check_liveness(&mut self, ctx: &mut Context<Self>) {
        let dead: Vec<u32> = self
            .slots
            .iter()
            .filter(|(_, s)| s.addr.as_ref().is_some_and(|a| !a.connected()))
            .map(|(id, _)| *id)
            .collect();
        for id in dead {
            self.schedule_restart(id, ctx);
        }
        self.check_incoming_liveness(ctx);
    }
}

impl Actor for Supervisor {
    type Context = Context<Self>;

    fn started(&mut self, ctx: &mut Self::Context) {
        // Ascending ids are bucket order: 0..mc-1 first, then mc..2mc-1, … (docs/protocol.md §5).
        let ids: Vec<u32> = self.slots.keys().copied().collect();
        if !self.dynamic {
            for id in ids {
                self.start_shard(id, ctx);
            }
        }
        ctx.run_interval(LIVENESS_CHECK, |act, ctx| act.check_liveness(ctx));
        self.watch_recommendation(ctx);
    }

    fn stopped(&mut self, _: &mut Self::Context) {
        for arbiter in &self.arbiters {
            arbiter.stop();
        }
    }
}

impl Handler<ShardNotice> for Supervisor {
    type Result = ();

    fn handle(&mut self, msg: ShardNotice, ctx: &mut Self::Context) {
        // The shards of the set the gateway started with report untagged: generation 0.
        self.on_notice(0, msg, ctx);
    }
}

impl Supervisor {
    /// A notice from a shard of the set `generation`: the running set, a reshard's new set, or an
    /// old set closing after a cut.
    fn on_notice(&mut self, generation: u64, msg: ShardNotice, ctx: &mut Context<Self>) {
        if generation != self.generation {
            self.on_other_set_notice(generation, msg, ctx);
            return;
        }
        match msg {
            ShardNotice::Ready { id } => self.on_ready(id),
            ShardNotice::Stopped {
                id,
                incarnation,
                fatal,
                deliberate,
            } => {
                let Some(slot) = self.slots.get_mut(&id) else {
                    return;
                };
                if incarnation != slot.incarnation {
                    // An actor replaced while it stopped (a stale lease's, abandoned when the
                    // shard was acquired again): its successor runs on.
                    return;
                }
                for waiter in slot.on_stopped.drain(..) {
                    let _ = waiter.send(());
                }
                if let Some(fatal) = fatal {
                    tracing::error!(shard.id = id, error = %fatal, "shard stopped for good");
                    let sharding_required =
                        fatal == FatalError::Closed(crate::protocol::CloseCode::ShardingRequired);
                    slot.fatal = Some(fatal);
                    slot.addr = None;
                    self.old_shard_stopped_for_good(id);
                    if sharding_required {
                        self.auto_reshard(ctx);
                    }
                } else if deliberate || self.shutting_down {
                    slot.stopped = true;
                    slot.addr = None;
                } else {
                    self.schedule_restart(id, ctx);
                }
            }
        }
    }
}

/// How far start-up has come: shards READY (or RESUMED) at least once, out of all.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub struct Progress {
    /// Shards that have been ready at least once.
    pub ready: usize,
    /// Shards this process runs.
    pub total: usize,
    /// Time since the supervisor started.
    pub elapsed: Duration,
    /// Time until every shard is ready, at the rate so far; `None` before the first or after the last.
    pub eta: Option<Duration>,
}

impl Supervisor {
    fn progress(&self) -> Progress {
        let (ready, total) = (self.ever_ready.len(), self.slots.len());
        let elapsed = self.started_at.elapsed();
        let eta = (ready > 0 && ready < total)
            .then(|| elapsed.mul_f64((total - ready) as f64 / ready as f64));
        Progress {
            ready,
            total,
            elapsed,
            eta,
        }
    }

    fn on_ready(&mut self, id: u32) {
        if let Some(slot) = self.slots.get_mut(&id) {
            slot.on_ready();
        }
        if !self.ever_ready.insert(id) {
            return;
        }
        let p = self.progress();
        // A line per tenth of the way (and the last), so 10 000 shards log ten lines, not 10 000.
        let step = (p.total / 10).max(1);
        if p.ready % step == 0 || p.ready == p.total {
            tracing::info!(ready = p.ready, total = p.total, elapsed = ?p.elapsed, eta = ?p.eta, "start-up progress");
        }
    }
}

/// Asks for start-up [`Progress`].
#[derive(Debug, Clone, Copy, Message)]
#[rtype(result = "Progress")]
pub struct GetProgress;

impl Handler<GetProgress> for Supervisor {
    type Result = MessageResult<GetProgress>;

    fn handle(&mut self, _: GetProgress, _: &mut Self::Context) -> Self::Result {
        MessageResult(self.progress())
    }
}

/// Asks for the status of every shard, sorted by id; while a reshard's new set runs beside the
/// running one, its shards follow, sorted by id (each status carries its set's `total`).
#[derive(Debug, Clone, Copy, Message)]
#[rtype(result = "Vec<ShardStatus>")]
pub struct GetStatuses;

impl Handler<GetStatuses> for Supervisor {
    type Result = ResponseFuture<Vec<ShardStatus>>;

    fn handle(&mut self, _: GetStatuses, _: &mut Self::Context) -> Self::Result {
        let total = self.total;
        let queries: Vec<_> = self
            .slots
            .iter()
            .filter(|(_, slot)| slot.held || slot.fatal.is_some())
            .map(|(&id, slot)| {
                let addr = slot.addr.clone();
                let fallback = ShardStatus {
                    id,
                    total,
                    phase: if slot.fatal.is_some() || slot.stopped {
                        Phase::Stopped
                    } else {
                        Phase::Disconnected
                    },
                    latency: None,
                    seq: None,
                    session_id: None,
                    reconnects: 0,
                    fatal: slot.fatal.clone(),
                    pending: 0,
                    dropped: 0,
                    reading_paused_since: None,
                    stalled_handlers: 0,
                    owner: None,
                };
                let owner = self.owner.clone();
                async move {
                    let mut status = match addr {
                        Some(addr) => addr.send(GetStatus).await.unwrap_or(fallback),
                        None => fallback,
                    };
                    status.owner = owner;
                    status
                }
            })
            .collect::<Vec<_>>();
        // While a reshard's new set runs beside the old one, its shards follow (their `total` tells
        // them apart).
        let incoming = self.incoming_statuses();
        Box::pin(async move {
            let mut all = join_all(queries).await;
            all.extend(incoming.await);
            all
        })
    }
}

/// Sends a command to one shard.
#[derive(Debug, Clone, Message)]
#[rtype(result = "Result<(), CommandError>")]
pub struct SendTo {
    /// The shard id.
    pub shard: u32,
    /// The command.
    pub command: Command,
}

impl Handler<SendTo> for Supervisor {
    type Result = ResponseFuture<Result<(), CommandError>>;

    fn handle(&mut self, msg: SendTo, _: &mut Self::Context) -> Self::Result {
        let addr = self.slots.get(&msg.shard).map(|s| s.addr.clone());
        Box::pin(async move {
            match addr {
                None => Err(CommandError::UnknownShard(msg.shard)),
                Some(None) => Err(CommandError::ShardStopped),
                Some(Some(addr)) => addr
                    .send(SendCommand(msg.command))
                    .await
                    .unwrap_or(Err(CommandError::ShardStopped)),
            }
        })
    }
}

/// Sends a command to every shard; answers each shard's result.
#[derive(Debug, Clone, Message)]
#[rtype(result = "Vec<(u32, Result<(), CommandError>)>")]
pub struct SendToAll(pub Command);

impl Handler<SendToAll> for Supervisor {
    type Result = ResponseFuture<Vec<(u32, Result<(), CommandError>)>>;

    fn handle(&mut self, SendToAll(command): SendToAll, _: &mut Self::Context) -> Self::Result {
        let sends: Vec<_> = self
            .slots
            .iter()
            .map(|(&id, slot)| {
                let addr = slot.addr.clone();
                let command = command.clone();
                async move {
                    let result = match addr {
                        Some(addr) => addr
                            .send(SendCommand(command))
                            .await
                            .unwrap_or(Err(CommandError::ShardStopped)),
                        None => Err(CommandError::ShardStopped),
                    };
                    (id, result)
                }
            })
            .collect();
        Box::pin(join_all(sends))
    }
}

/// Shuts every shard down, then the supervisor and its arbiters. `resumable: true` keeps every
/// session resumable (close 4000, sessions stay in the store); `false` ends them (close 1000).
///
/// Only the first one acts: one sent while a shutdown is under way waits for that shutdown to end
/// (its `resumable` is ignored).
#[derive(Debug, Clone, Copy, Message)]
#[rtype(result = "()")]
pub struct ShutdownAll {
    /// Whether sessions stay resumable.
    pub resumable: bool,
}

impl Handler<ShutdownAll> for Supervisor {
    type Result = ResponseActFuture<Self, ()>;

    fn handle(&mut self, msg: ShutdownAll, ctx: &mut Self::Context) -> Self::Result {
        if let Some(done) = &self.shut_down {
            tracing::debug!(
                resumable = msg.resumable,
                "shutdown already under way: waiting for it"
            );
            let mut done = done.clone();
            // An error means the first shutdown's future is gone, i.e. the supervisor stopped.
            let wait = async move {
                let _ = done.wait_for(|done| *done).await;
            };
            return Box::pin(wait.into_actor(self));
        }
        let (finished, done) = tokio::sync::watch::channel(false);
        self.shut_down = Some(done);
        self.shutting_down = true;
        let mut closing = Vec::new();
        for slot in self.slots.values_mut() {
            if let Some(timer) = slot.restart_timer.take() {
                ctx.cancel_future(timer);
            }
            if let Some(addr) = slot.addr.take() {
                closing.push(async move {
                    let _ = addr
                        .send(Shutdown {
                            resumable: msg.resumable,
                        })
                        .await;
                });
            }
            slot.stopped = true;
        }
        // A reshard's new set (or an old set still closing) ends with the rest.
        let others = join_all(
            self.close_other_sets(ctx)
                .into_iter()
                .map(|addr| async move {
                    let _ = addr.send(Shutdown { resumable: false }).await;
                }),
        );
        Box::pin(
            futures_util::future::join(join_all(closing), others)
                .into_actor(self)
                .map(move |_, _, ctx| {
                    let _ = finished.send(true);
                    ctx.stop();
                }),
        )
    }
}

/// Something a gateway belongs to beyond its own shards (a fleet, feature `redis`): it decides how
/// the shards leave. Defined here, implemented above (`fleet`), so the supervisor names no fleet
/// type.
// Implemented only by the fleet (feature `redis`).
#[cfg_attr(not(feature = "redis"), allow(dead_code))]
pub(crate) trait Membership: Send + Sync {
    /// Leaves: every shard handed over (`resumable`) or ended, then the supervisor stopped.
    fn leave(
        &self,
        resumable: bool,
    ) -> std::pin::Pin<Box<dyn std::future::Future<Output = ()> + '_>>;
    /// For the member's own accessor on [`Gateway`].
    fn as_any(&self) -> &dyn std::any::Any;
}

/// A running gateway runtime: the handle a bot keeps.
///
/// ```
/// # #[cfg(feature = "testkit")]
/// # actix_rt::System::new().block_on(async {
/// use shardline::testkit::{FakeConfig, FakeGateway};
/// use shardline::{Config, Gateway, Intents, ShardPlan};
///
/// let fake = FakeGateway::start(FakeConfig::default()).await.unwrap();
/// let config = Config::builder("fake-token")
///     .intents(Intents::GUILDS)
///     .shards(ShardPlan::Count(2))
///     .api_base(fake.api_base())
///     .build()
///     .unwrap();
/// let gateway = Gateway::start(config).await.unwrap();
/// fake.wait_for(std::time::Duration::from_secs(10), "2 shards ready", |f| f.ready_shards().len() == 2).await;
/// let status = gateway.status().await;
/// assert_eq!(status.len(), 2);
/// gateway.shutdown(false).await;
/// fake.stop().await;
/// # });
/// ```
#[derive(Clone)]
pub struct Gateway {
    supervisor: Addr<Supervisor>,
    plan: Arc<ResolvedPlan>,
    /// What this gateway belongs to beyond its own shards (a fleet), if anything.
    pub(crate) membership: Option<Arc<dyn Membership>>,
}

impl Gateway {
    /// Resolves the plan (asking `GET /gateway/bot` if the config leaves anything to it), then starts
    /// the supervisor and every shard. Must run inside an actix system.
    pub async fn start(config: Config) -> Result<Self, StartError> {
        let plan = resolve(&config).await?;
        if config.identify_queue.is_none() {
            if let ShardPlan::Range { ids, total } = &config.plan {
                // docs/protocol.md §5: the buckets are the bot's, not the process's.
                tracing::warn!(
                    ids = ?ids,
                    total,
                    "running part of the bot's shards with the in-process identify queue: its identify limit is not shared with the processes running the others, so together they can identify faster than Discord allows; give every process one shared IdentifyQueue"
                );
            }
            if plan.gateway_bot.is_none() {
                tracing::warn!(
                    "max_concurrency and gateway_url are set, so GET /gateway/bot is not asked: the session-start budget is unknown and not kept (exhausting it resets the bot's token, docs/protocol.md §5)"
                );
            }
        }
        let queue: Arc<dyn IdentifyQueue> = match (&config.identify_queue, &plan.gateway_bot) {
            (Some(queue), _) => queue.clone(),
            (None, Some(bot)) => {
                let limit = bot.session_start_limit;
                let needed = identifying(&plan.ids, &config).len() as u32;
                if needed > limit.total {
                    return Err(StartError::IdentifyBudget {
                        needed,
                        total: limit.total,
                        remaining: limit.remaining,
                    });
                }
                if needed > limit.remaining {
                    tracing::warn!(needed, remaining = limit.remaining, reset_after_ms = limit.reset_after, "session-start budget too low for every shard now: the rest identify after the reset");
                }
                let queue = LocalIdentifyQueue::new(plan.max_concurrency, config.identify_window)
                    .with_budget(
                        limit.total,
                        limit.remaining,
                        Duration::from_millis(limit.reset_after),
                        SESSION_START_PERIOD,
                    );
                queue.plan(&identifying(&plan.ids, &config));
                Arc::new(queue)
            }
            (None, None) => {
                let queue = LocalIdentifyQueue::new(plan.max_concurrency, config.identify_window);
                queue.plan(&identifying(&plan.ids, &config));
                Arc::new(queue)
            }
        };
        config.metrics.watch_queue(&queue);
        let params = IdentifyParams {
            token: config.token.clone(),
            intents: config.intents.bits(),
            properties: config.properties.clone(),
            large_threshold: config.large_threshold,
            presence: config.presence.clone(),
            gateway_url: plan.gateway_url.clone(),
            allowed_resume_domains: config.resume_domains_for(&plan.gateway_url),
        };
        let shared = Arc::new(ShardShared {
            params: Arc::new(params),
            compression: config.compression,
            slow_handlers: config.slow_handlers,
            limits: config.limits,
            timeouts: config.timeouts,
            backoff: config.backoff,
            command_limit: config.command_limit,
            router: config.router.clone(),
            sessions: config.sessions.clone(),
            queue,
            events: config.events.clone(),
            handshakes: Arc::new(tokio::sync::Semaphore::new(
                config.limits.concurrent_handshakes,
            )),
            tls: config.tls.clone(),
            metrics: config.metrics.clone(),
            gate: Default::default(),
        });
        let arbiter_count = config.arbiters.min(plan.ids.len()).max(1);
        let arbiters: Vec<Arbiter> = (0..arbiter_count).map(|_| Arbiter::new()).collect();
        let slots = plan
            .ids
            .iter()
            .enumerate()
            .map(|(i, &id)| {
                let mut slot = Slot::new(i % arbiter_count, &config.backoff);
                slot.held = !config.dynamic_shards;
                (id, slot)
            })
            .collect();
        tracing::info!(
            shards = plan.ids.len(),
            total = plan.total,
            max_concurrency = plan.max_concurrency,
            arbiters = arbiter_count,
            "starting shards"
        );
        let supervisor = Supervisor {
            config: config.clone(),
            generation: 0,
            incoming: None,
            retiring: BTreeMap::new(),
            reshard_pending: false,
            shared,
            total: plan.total,
            slots,
            arbiters,
            shutting_down: false,
            shut_down: None,
            ever_ready: Default::default(),
            started_at: std::time::Instant::now(),
            dynamic: config.dynamic_shards,
            owner: config.fleet_owner.as_deref().map(Arc::from),
        }
        .start();
        Ok(Self {
            supervisor,
            plan: Arc::new(plan),
            membership: None,
        })
    }

    /// What the runtime resolved at start.
    pub fn plan(&self) -> &ResolvedPlan {
        &self.plan
    }

    /// The supervisor actor, for sending it messages directly.
    pub fn supervisor(&self) -> &Addr<Supervisor> {
        &self.supervisor
    }

    /// The status of every shard, sorted by id (empty once shut down). While a reshard's new set
    /// runs beside the running one, its shards follow, sorted by id: `ShardStatus::total` tells
    /// the sets apart.
    pub async fn status(&self) -> Vec<ShardStatus> {
        self.supervisor.send(GetStatuses).await.unwrap_or_default()
    }

    /// Start-up progress: how many shards have been ready, and an estimate for the rest.
    pub async fn progress(&self) -> Option<Progress> {
        self.supervisor.send(GetProgress).await.ok()
    }

    /// Sends a command to one shard.
    pub async fn send(&self, shard: u32, command: Command) -> Result<(), CommandError> {
        self.supervisor
            .send(SendTo { shard, command })
            .await
            .unwrap_or(Err(CommandError::ShardStopped))
    }

    /// Sends a command to every shard (e.g. a presence for the whole bot).
    pub async fn send_all(&self, command: Command) -> Vec<(u32, Result<(), CommandError>)> {
        self.supervisor
            .send(SendToAll(command))
            .await
            .unwrap_or_default()
    }

    /// Grows (or shrinks) the bot to `new_total` shards without downtime: a new set identifies
    /// beside the running one (same identify buckets and budget), its events held, until every
    /// new shard is READY with its guilds; then one cut switches delivery to it, and the old set's
    /// sessions are closed with 1000. Each event reaches each handler once across the cut; see
    /// docs/resharding.md for exactly what a handler sees. Answers once the old set is closed.
    ///
    /// Refused up front, with nothing started, when the session-start budget left cannot cover
    /// `new_total` identifies, when a reshard is under way, or in a fleet.
    pub async fn reshard(&self, new_total: u32) -> Result<ReshardReport, ReshardError> {
        if self.membership.is_some() {
            return Err(ReshardError::InFleet);
        }
        self.supervisor
            .send(Reshard { new_total })
            .await
            .unwrap_or(Err(ReshardError::ShuttingDown))
    }

    /// Whether this gateway is a member of a fleet (feature `redis`,
    /// [`start_fleet`](Self::start_fleet)).
    pub fn fleet_member(&self) -> bool {
        self.membership.is_some()
    }

    /// Shuts every shard down and waits until their connections are closed. A call while a
    /// shutdown is under way (from any clone of this handle) waits for that one to end; the first
    /// call's `resumable` is what the shards close with.
    pub async fn shutdown(&self, resumable: bool) {
        if let Some(membership) = &self.membership {
            // A fleet hands every shard over (or ends it), releases the leases, then stops the
            // supervisor.
            membership.leave(resumable).await;
            return;
        }
        let _ = self.supervisor.send(ShutdownAll { resumable }).await;
    }
}

#[cfg(feature = "redis")]
/// A fleet's lease keeper hands this process a shard: start it, guarded by its lease.
#[derive(Debug, Clone, Message)]
#[rtype(result = "()")]
pub(crate) struct Acquire {
    pub id: u32,
    pub guard: LeaseGuard,
}

#[cfg(feature = "redis")]
/// How a shard leaves this process.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Release {
    /// Handed over: closed resumably (4000), its session flushed for the next owner.
    HandOver,
    /// The lease is gone: the connection is dropped without a frame.
    Abandon,
}

#[cfg(feature = "redis")]
/// Stops a shard this process no longer runs; answers once its actor has stopped.
#[derive(Debug, Clone, Message)]
#[rtype(result = "()")]
pub(crate) struct ReleaseShard {
    pub id: u32,
    pub how: Release,
}

#[cfg(feature = "redis")]
/// The leases the fleet's keeper holds now: the supervisor makes the shards it runs match them.
/// A held shard that is not running (it stopped itself when its guard ran out while a renewal was
/// still on its way, which then succeeded) is started again; a running shard whose lease is not
/// held is abandoned. Answered from the supervisor's own state, without asking any shard.
#[derive(Debug, Clone, Message)]
#[rtype(result = "Reconciled")]
pub(crate) struct Reconcile {
    pub held: Vec<(u32, LeaseGuard)>,
}

#[cfg(feature = "redis")]
/// What a [`Reconcile`] changed.
#[derive(Debug, Clone, Default, MessageResponse)]
pub(crate) struct Reconciled {
    /// Held shards found not running and started again.
    pub restarted: Vec<u32>,
    /// Running shards whose lease was not held, abandoned.
    pub abandoned: Vec<u32>,
}

#[cfg(feature = "redis")]
impl Handler<Reconcile> for Supervisor {
    type Result = Reconciled;

    fn handle(&mut self, Reconcile { held }: Reconcile, ctx: &mut Self::Context) -> Reconciled {
        let mut done = Reconciled::default();
        if self.shutting_down {
            return done;
        }
        let held: BTreeMap<u32, LeaseGuard> = held.into_iter().collect();
        let now = std::time::Instant::now();
        let ids: Vec<u32> = self.slots.keys().copied().collect();
        for id in ids {
            let Some(slot) = self.slots.get_mut(&id) else {
                continue;
            };
            // An actor that stopped but whose notice has not come yet still counts as running: its
            // notice would clear the slot of a replacement started now. The next tick sees it.
            let running = slot.addr.is_some() || slot.restart_timer.is_some();
            match held.get(&id) {
                Some(guard) if !running && slot.fatal.is_none() && guard.holds(now) => {
                    slot.guard = Some(guard.clone());
                    slot.held = true;
                    slot.stopped = false;
                    self.start_shard(id, ctx);
                    done.restarted.push(id);
                }
                Some(_) => {}
                None if slot.held || running => {
                    slot.held = false;
                    if let Some(timer) = slot.restart_timer.take() {
                        ctx.cancel_future(timer);
                    }
                    if let Some(guard) = slot.guard.take() {
                        guard.revoke();
                    }
                    if let Some(addr) = slot.addr.take() {
                        addr.do_send(Abandon);
                    }
                    done.abandoned.push(id);
                }
                None => {}
            }
        }
        done
    }
}

#[cfg(feature = "redis")]
impl Handler<Acquire> for Supervisor {
    type Result = ();

    fn handle(&mut self, Acquire { id, guard }: Acquire, ctx: &mut Self::Context) {
        if self.shutting_down {
            return;
        }
        let Some(slot) = self.slots.get_mut(&id) else {
            tracing::warn!(
                shard.id = id,
                "lease handed over for a shard outside the plan"
            );
            return;
        };
        if let Some(old) = slot.addr.take() {
            // A stale actor of an earlier lease: it must not outlive the guard it was given.
            old.do_send(Abandon);
        }
        if let Some(timer) = slot.restart_timer.take() {
            ctx.cancel_future(timer);
        }
        slot.guard = Some(guard);
        slot.held = true;
        slot.stopped = false;
        slot.fatal = None;
        slot.backoff.reset();
        self.start_shard(id, ctx);
    }
}

#[cfg(feature = "redis")]
impl Handler<ReleaseShard> for Supervisor {
    type Result = ResponseFuture<()>;

    fn handle(
        &mut self,
        ReleaseShard { id, how }: ReleaseShard,
        ctx: &mut Self::Context,
    ) -> Self::Result {
        let Some(slot) = self.slots.get_mut(&id) else {
            return Box::pin(async {});
        };
        slot.held = false;
        if let Some(timer) = slot.restart_timer.take() {
            ctx.cancel_future(timer);
        }
        if let Some(guard) = slot.guard.take() {
            if how == Release::Abandon {
                guard.revoke();
            }
        }
        let Some(addr) = slot.addr.take().filter(|a| a.connected()) else {
            return Box::pin(async {});
        };
        // Answered once the actor has stopped, not merely when it took the message: the next
        // owner must not connect while this connection is still being torn down.
        let (stopped, on_stopped) = tokio::sync::oneshot::channel();
        slot.on_stopped.push(stopped);
        Box::pin(async move {
            match how {
                Release::HandOver => {
                    let _ = addr.send(Shutdown { resumable: true }).await;
                }
                Release::Abandon => {
                    let _ = addr.send(Abandon).await;
                }
            }
            let _ = on_stopped.await;
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_restart_delay_grows_while_a_shard_keeps_dying_and_starts_over_once_it_is_ready() {
        let backoff = crate::config::Backoff {
            initial: Duration::from_millis(100),
            max: Duration::from_secs(10),
            multiplier: 2.0,
            randomization: 0.0,
        };
        let mut slot = Slot::new(0, &backoff);
        let ms = |d: Duration| d.as_millis();
        assert_eq!(ms(slot.next_restart()), 100);
        assert_eq!(ms(slot.next_restart()), 200);
        slot.on_ready();
        assert_eq!(ms(slot.next_restart()), 100);
        assert_eq!(slot.restarts, 3);
    }
}
