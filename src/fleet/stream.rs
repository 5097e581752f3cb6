//! The fleet's event stream: bot logic that scales apart from the gateway connections
//! (docs/fleet.md "Event stream").
//!
//! The processes that run shards publish the dispatches of chosen events to a Redis stream with a
//! [`StreamPublisher`]; worker processes read them with a [`StreamConsumer`], which hands each one to
//! handler actors as the same [`Dispatch`] a shard hands over, routed by the same rules.
//!
//! **Guarantee: at least once.** Every published event is handled by some worker at least once, as
//! long as it is still in the stream (its length is bounded) when it is read or claimed. An event is
//! handled more than once when a worker died (or was too slow, see
//! [`claim_idle`](StreamConsumerBuilder::claim_idle)) after reading it and before acknowledging it,
//! or when a gateway process died after publishing it and before the session store recorded its
//! sequence (the next owner resumes earlier and the gateway replays it). The key `(shard, session,
//! seq)` ([`Dispatch::shard`], [`Dispatch::session`], [`Dispatch::seq`]) names an event uniquely, so
//! a handler that must act once remembers the keys it has acted on.

use std::borrow::Cow;
use std::collections::{HashMap, HashSet};
use std::fmt;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use actix::prelude::*;
use bytes::Bytes;
use redis::aio::ConnectionManager;
use redis::streams::{StreamAutoClaimReply, StreamId, StreamReadReply};
use redis::Value;

use crate::error::FleetError;
use crate::fast_hash::FastHash;
use crate::fleet::connect::FleetRedis;
use crate::fleet::sessions::RedisSessionStore;
use crate::router::{Dispatch, DispatchBatch, Router};
use crate::session::SessionStore;

/// `XGROUP DELCONSUMER` of every consumer of group ARGV[1] in stream KEYS[1], other than ARGV[3],
/// with nothing pending and idle for at least ARGV[2] ms. One script, so that no consumer can read
/// an entry between the check and the removal (removing a consumer drops what it holds).
static REMOVE_DEAD_CONSUMERS: std::sync::LazyLock<redis::Script> = std::sync::LazyLock::new(|| {
    redis::Script::new(
        r"
local removed = {}
for _, c in ipairs(redis.call('XINFO', 'CONSUMERS', KEYS[1], ARGV[1])) do
  local info = {}
  for i = 1, #c, 2 do info[c[i]] = c[i + 1] end
  if info['name'] ~= ARGV[3] and info['pending'] == 0 and info['idle'] >= tonumber(ARGV[2]) then
    redis.call('XGROUP', 'DELCONSUMER', KEYS[1], ARGV[1], info['name'])
    removed[#removed + 1] = info['name']
  end
end
return removed
",
    )
});

/// How many entries a stream keeps by default (approximately: Redis trims whole nodes).
pub const DEFAULT_MAX_LEN: usize = 100_000;

/// The stream's key: `prefix:events`, or `prefix:events:<name>` for a named stream.
fn stream_key(redis: &FleetRedis, name: Option<&str>) -> String {
    match name {
        Some(name) => redis.key(format_args!("events:{name}")),
        None => redis.key(format_args!("events")),
    }
}

/// Waits between attempts after a Redis error: doubles from 50 ms up to 5 s.
struct Retry {
    next: Duration,
}

impl Retry {
    const FIRST: Duration = Duration::from_millis(50);
    const MAX: Duration = Duration::from_secs(5);

    fn new() -> Self {
        Self { next: Self::FIRST }
    }

    fn reset(&mut self) {
        self.next = Self::FIRST;
    }

    async fn wait(&mut self) {
        tokio::time::sleep(self.next).await;
        self.next = (self.next * 2).min(Self::MAX);
    }
}

/// Logs a run of Redis failures once, then at most every [`ErrorLog::EVERY`], and its end.
struct ErrorLog {
    what: &'static str,
    failures: u64,
    last: Option<Instant>,
}

impl ErrorLog {
    const EVERY: Duration = Duration::from_secs(10);

    fn new(what: &'static str) -> Self {
        Self {
            what,
            failures: 0,
            last: None,
        }
    }

    fn failed(&mut self, error: &dyn fmt::Display) {
        self.failures += 1;
        if self.last.is_none_or(|at| at.elapsed() >= Self::EVERY) {
            self.last = Some(Instant::now());
            tracing::warn!(what = self.what, failures = self.failures, error = %error, "event stream: Redis command failed; retrying");
        }
    }

    fn recovered(&mut self) {
        if self.failures > 0 {
            tracing::info!(
                what = self.what,
                failures = self.failures,
                "event stream: Redis answers again"
            );
            self.failures = 0;
            self.last = None;
        }
    }
}

/// Builds a [`StreamPublisher`].
#[derive(Debug)]
pub struct StreamPublisherBuilder {
    redis: FleetRedis,
    stream: Option<String>,
    events: HashSet<Box<str>, FastHash>,
    max_len: usize,
    sessions: Option<RedisSessionStore>,
}

impl StreamPublisherBuilder {
    /// Publishes the events named here (e.g. `MESSAGE_CREATE`); adds to the names given before.
    /// With none, nothing is published (the publisher still confirms to the session store).
    pub fn events<S: AsRef<str>>(mut self, events: impl IntoIterator<Item = S>) -> Self {
        self.events
            .extend(events.into_iter().map(|e| Box::from(e.as_ref())));
        self
    }

    /// Writes to the stream `prefix:events:<name>` instead of `prefix:events`.
    pub fn stream(mut self, name: &str) -> Self {
        self.stream = Some(name.to_owned());
        self
    }

    /// How many entries the stream keeps, approximately (default [`DEFAULT_MAX_LEN`]). An entry
    /// trimmed before a worker read it is lost to the workers: size this for the longest outage of
    /// every worker to be covered.
    pub fn max_len(mut self, max_len: usize) -> Self {
        self.max_len = max_len.max(1);
        self
    }

    /// The bot's session store: the session id of a shard that resumed a stored session (the
    /// publisher sees no READY for it) is read from it, and written batches are confirmed to it
    /// ([`RedisSessionStore::confirm_published`]), which holds back the stored sequences when its
    /// [`gate_on_publish`](crate::fleet::sessions::SessionStoreOptions::gate_on_publish) is on.
    pub fn session_store(mut self, sessions: RedisSessionStore) -> Self {
        self.sessions = Some(sessions);
        self
    }

    /// Starts the publisher on the current arbiter. Register it for every event with
    /// [`ConfigBuilder::batch_handler_all`](crate::ConfigBuilder::batch_handler_all): it needs to see
    /// each shard's READY to know its session.
    pub fn start(self) -> Addr<StreamPublisher> {
        let key: Arc<str> = stream_key(&self.redis, self.stream.as_deref()).into();
        StreamPublisher {
            redis: self.redis,
            key,
            events: self.events,
            max_len: self.max_len,
            store: self.sessions,
            sessions: HashMap::default(),
        }
        .start()
    }
}

/// Publishes chosen dispatches to the fleet's event stream; a batch handler for every event.
///
/// Each published event is one stream entry with the fields `shard`, `session`, `seq`, `t` and `d`,
/// where `d` is the event's JSON exactly as the gateway sent it (its bytes are copied, never parsed
/// and written again). Each batch is one round trip (a `MULTI` of `XADD ... MAXLEN ~ n`), and the
/// handler answers only once it is in Redis, so batches are written in order and a shard's events
/// wait for Redis like for any slow handler: with the default
/// [`SlowHandlers::Backpressure`](crate::SlowHandlers::Backpressure) none is lost while Redis is
/// away, the publisher retries (backing off up to 5 s) until it is back.
///
/// ```no_run
/// # async fn run() -> Result<(), Box<dyn std::error::Error>> {
/// use std::sync::Arc;
/// use shardline::fleet::{FleetRedis, RedisSessionStore};
/// use shardline::fleet::sessions::SessionStoreOptions;
/// use shardline::fleet::stream::StreamPublisher;
/// let redis = FleetRedis::connect("redis://127.0.0.1:6379", "shardline:mybot").await?;
/// let sessions = RedisSessionStore::new(
///     redis.clone(),
///     SessionStoreOptions::default().gate_on_publish(true),
/// );
/// let publisher = StreamPublisher::builder(redis)
///     .events(["MESSAGE_CREATE", "INTERACTION_CREATE"])
///     .session_store(sessions.clone())
///     .start();
/// let config = shardline::Config::builder("token")
///     .session_store(Arc::new(sessions))
///     .batch_handler_all(publisher.recipient())
///     .build()?;
/// # let _ = config; Ok(()) }
/// ```
pub struct StreamPublisher {
    redis: FleetRedis,
    key: Arc<str>,
    events: HashSet<Box<str>, FastHash>,
    max_len: usize,
    store: Option<RedisSessionStore>,
    /// Per shard, its current session as the events seen so far tell it.
    sessions: HashMap<u32, Arc<str>, FastHash>,
}

impl fmt::Debug for StreamPublisher {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("StreamPublisher")
            .field("key", &self.key)
            .field("events", &self.events)
            .field("max_len", &self.max_len)
            .finish_non_exhaustive()
    }
}

impl StreamPublisher {
    /// A builder of a publisher to the stream of the bot `redis` belongs to.
    pub fn builder(redis: FleetRedis) -> StreamPublisherBuilder {
        StreamPublisherBuilder {
            redis,
            stream: None,
            events: HashSet::default(),
            max_len: DEFAULT_MAX_LEN,
            sessions: None,
        }
    }

    /// The session `shard`'s events belong to: the one its last READY opened, or, before any, the
    /// one the session store holds (a shard that resumed a stored session).
    fn session_of(&mut self, shard: u32) -> Option<Arc<str>> {
        if let Some(session) = self.sessions.get(&shard) {
            return Some(session.clone());
        }
        let stored = self.store.as_ref()?.load(shard)?;
        let session: Arc<str> = stored.session_id.into();
        self.sessions.insert(shard, session.clone());
        Some(session)
    }
}

impl Actor for StreamPublisher {
    type Context = Context<Self>;
}

#[derive(serde::Deserialize)]
struct ReadySession<'a> {
    #[serde(borrow)]
    session_id: Cow<'a, str>,
}

/// A shard changed hands: its session is read anew (from its next READY, or from the session store
/// the new ownership loaded), never carried over from an earlier ownership, whose session another
/// process may have replaced since.
impl Handler<crate::fleet::keeper::FleetEvent> for StreamPublisher {
    type Result = ();

    fn handle(&mut self, event: crate::fleet::keeper::FleetEvent, _: &mut Context<Self>) {
        self.sessions.remove(&event.shard);
    }
}

impl Handler<DispatchBatch> for StreamPublisher {
    type Result = AtomicResponse<Self, ()>;

    fn handle(&mut self, batch: DispatchBatch, _: &mut Context<Self>) -> Self::Result {
        let shard = batch.shard();
        let mut pipe = redis::pipe();
        // All or nothing: a batch retried after an error is not partly in the stream twice.
        pipe.atomic();
        let mut published = 0usize;
        // Per session met in the batch, its last sequence: what is confirmed once it is written.
        let mut confirm: Vec<(Arc<str>, u64)> = Vec::new();
        for event in batch.events() {
            if event.event() == "READY" {
                match event.parse_borrowed::<ReadySession<'_>>() {
                    Ok(ready) => {
                        self.sessions
                            .insert(shard, ready.session_id.as_ref().into());
                    }
                    Err(e) => {
                        tracing::warn!(shard.id = shard, seq = event.seq(), error = %e, "event stream: READY without a session id; the shard's events are published without one");
                        self.sessions.remove(&shard);
                    }
                }
            }
            let session = self.session_of(shard);
            if self.events.contains(event.event()) {
                pipe.cmd("XADD")
                    .arg(&*self.key)
                    .arg("MAXLEN")
                    .arg("~")
                    .arg(self.max_len)
                    .arg("*")
                    .arg("shard")
                    .arg(shard)
                    .arg("session")
                    .arg(session.as_deref().unwrap_or(""))
                    .arg("seq")
                    .arg(event.seq())
                    .arg("t")
                    .arg(event.event())
                    .arg("d")
                    .arg(event.data())
                    .ignore();
                published += 1;
            }
            if let Some(session) = session {
                match confirm.last_mut() {
                    Some((last, seq)) if *last == session => *seq = event.seq(),
                    _ => confirm.push((session, event.seq())),
                }
            }
        }
        let redis = self.redis.clone();
        let key = self.key.clone();
        let write = async move {
            // The batch is finished (for the shard's stored sequence) once it is in the stream.
            let _finished = batch;
            if published == 0 {
                return;
            }
            let mut retry = Retry::new();
            let mut log = ErrorLog::new("XADD");
            loop {
                // A handle per attempt: behind Sentinel, a retry after a failover goes to the new
                // primary, not again to the old one.
                match pipe.query_async::<()>(&mut redis.conn()).await {
                    Ok(()) => break,
                    Err(e) => {
                        log.failed(&e);
                        retry.wait().await;
                    }
                }
            }
            log.recovered();
            tracing::trace!(shard.id = shard, stream = %key, published, "event stream: batch written");
        };
        AtomicResponse::new(Box::pin(actix::fut::wrap_future(write).map(
            move |(), act: &mut Self, _| {
                if let Some(store) = &act.store {
                    for (session, seq) in &confirm {
                        store.confirm_published(shard, session, *seq);
                    }
                }
            },
        )))
    }
}

/// Builds a [`StreamConsumer`]; handlers are registered as on
/// [`ConfigBuilder`](crate::ConfigBuilder) and routed by the same rules.
pub struct StreamConsumerBuilder {
    redis: FleetRedis,
    stream: Option<String>,
    group: String,
    consumer: String,
    router: Router,
    count: usize,
    block: Duration,
    claim_idle: Duration,
    claim_every: Option<Duration>,
    stop_timeout: Duration,
}

impl fmt::Debug for StreamConsumerBuilder {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("StreamConsumerBuilder")
            .field("stream", &self.stream)
            .field("group", &self.group)
            .field("consumer", &self.consumer)
            .field("router", &self.router)
            .field("count", &self.count)
            .field("block", &self.block)
            .field("claim_idle", &self.claim_idle)
            .finish_non_exhaustive()
    }
}

impl StreamConsumerBuilder {
    /// Registers a handler for one event name.
    pub fn handler(mut self, event: &str, handler: Recipient<Dispatch>) -> Self {
        self.router.add(event, handler);
        self
    }

    /// Registers a handler for every event.
    pub fn handler_all(mut self, handler: Recipient<Dispatch>) -> Self {
        self.router.add_all(handler);
        self
    }

    /// Registers a batch handler for one event name: it gets the entries of one read, one shard's
    /// run at a time.
    pub fn batch_handler(mut self, event: &str, handler: Recipient<DispatchBatch>) -> Self {
        self.router.add_batch(event, handler);
        self
    }

    /// Registers a batch handler for every event.
    pub fn batch_handler_all(mut self, handler: Recipient<DispatchBatch>) -> Self {
        self.router.add_batch_all(handler);
        self
    }

    /// Reads the stream `prefix:events:<name>` instead of `prefix:events`.
    pub fn stream(mut self, name: &str) -> Self {
        self.stream = Some(name.to_owned());
        self
    }

    /// How many entries one read takes at most (default 100): they are all handled before they
    /// are acknowledged together.
    pub fn count(mut self, count: usize) -> Self {
        self.count = count;
        self
    }

    /// How long one read waits for new entries (default 1 s); also about the longest a
    /// [`StopConsumer`] waits for a read to end.
    pub fn block(mut self, block: Duration) -> Self {
        self.block = block;
        self
    }

    /// How long an entry read by some consumer stays unacknowledged before this one claims it
    /// (default 30 s). It must be longer than handling one read's entries ever takes: a consumer
    /// that is merely slow has its entries claimed too, and they are then handled twice.
    pub fn claim_idle(mut self, idle: Duration) -> Self {
        self.claim_idle = idle;
        self
    }

    /// How often to look for entries to claim (default: every `claim_idle`, and once at start).
    pub fn claim_every(mut self, every: Duration) -> Self {
        self.claim_every = Some(every);
        self
    }

    /// How long [`StopConsumer`] lets the current read's handlers finish before it stops the
    /// consumer anyway (default 10 s); what is then not acknowledged is claimed by another consumer.
    pub fn stop_timeout(mut self, timeout: Duration) -> Self {
        self.stop_timeout = timeout;
        self
    }

    /// Starts the consumer on the current arbiter. It creates the group if there is none (reading
    /// from the start of the stream: what was published before any worker ran is handled too).
    ///
    /// # Errors
    /// [`FleetError::Config`] when the group or consumer name is empty, the count is zero, or the
    /// block time is not under `claim_idle`.
    pub fn start(self) -> Result<Addr<StreamConsumer>, FleetError> {
        if self.group.is_empty() {
            return Err(FleetError::Config("group", "empty".into()));
        }
        if self.consumer.is_empty() {
            return Err(FleetError::Config("consumer", "empty".into()));
        }
        if self.count == 0 {
            return Err(FleetError::Config("count", "zero".into()));
        }
        if self.block.is_zero() || self.block >= self.claim_idle {
            // BLOCK 0 waits forever; and a read must end well within the time after which its
            // entries could be taken away.
            return Err(FleetError::Config(
                "block",
                format!(
                    "{:?} must be above zero and under claim_idle ({:?})",
                    self.block, self.claim_idle
                ),
            ));
        }
        let key = stream_key(&self.redis, self.stream.as_deref());
        let stats = Arc::new(Counters::default());
        let stopping = Arc::new(AtomicBool::new(false));
        let worker = Worker {
            redis: self.redis,
            conn: None,
            key,
            group: self.group,
            consumer: self.consumer,
            router: self.router.finish(),
            count: self.count,
            block: self.block,
            claim_idle: self.claim_idle,
            claim_every: self.claim_every.unwrap_or(self.claim_idle),
            group_ready: false,
            sessions: HashMap::default(),
            stats: stats.clone(),
            stopping: stopping.clone(),
        };
        Ok(StreamConsumer {
            worker: Some(worker),
            stats,
            stopping,
            stop_timeout: self.stop_timeout,
            waiters: Vec::new(),
        }
        .start())
    }
}

#[derive(Default)]
struct Counters {
    handled: AtomicU64,
    claimed: AtomicU64,
    malformed: AtomicU64,
    trimmed: AtomicU64,
    not_handled: AtomicU64,
    removed_consumers: AtomicU64,
}

/// What a [`StreamConsumer`] has done so far (answer to [`ConsumerStatsRequest`]).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct ConsumerStats {
    /// Entries handled and acknowledged.
    pub handled: u64,
    /// Entries claimed from consumers that left them unacknowledged for `claim_idle`.
    pub claimed: u64,
    /// Entries acknowledged without being handled because they are not events (a field missing or
    /// unreadable); each is logged.
    pub malformed: u64,
    /// Pending entries found trimmed from the stream when claimed: read by a consumer that died,
    /// then gone before anyone claimed them (the stream's length bound).
    pub trimmed: u64,
    /// Entries left unacknowledged because one of their handlers had stopped.
    pub not_handled: u64,
    /// Other consumers of the group removed (`XGROUP DELCONSUMER`) because they held nothing and
    /// had been idle for `claim_idle`: workers that are gone.
    pub removed_consumers: u64,
}

/// Asks a [`StreamConsumer`] for its [`ConsumerStats`].
#[derive(Debug, Clone, Copy, Message)]
#[rtype(result = "ConsumerStats")]
pub struct ConsumerStatsRequest;

/// Stops a [`StreamConsumer`]: it ends its current read (handlers finish, entries are acknowledged)
/// and stops; after [`stop_timeout`](StreamConsumerBuilder::stop_timeout) it stops anyway. The
/// answer comes once it has stopped.
#[derive(Debug, Clone, Copy, Message)]
#[rtype(result = "()")]
pub struct StopConsumer;

/// Reads the fleet's event stream in a consumer group and hands each entry to handler actors as a
/// [`Dispatch`] (with its [`session`](Dispatch::session)), acknowledging it once every handler has
/// handled it; claims the entries other consumers left unacknowledged for
/// [`claim_idle`](StreamConsumerBuilder::claim_idle). Redis errors are retried with backoff.
///
/// Every consumer of a group gets a share of the entries; give each worker process its own
/// consumer name, the same one again after a restart (its own unacknowledged entries are then
/// claimed back at start).
///
/// ```no_run
/// # async fn run(handler: actix::Recipient<shardline::Dispatch>) -> Result<(), Box<dyn std::error::Error>> {
/// use shardline::fleet::FleetRedis;
/// use shardline::fleet::stream::{StopConsumer, StreamConsumer};
/// let redis = FleetRedis::connect("redis://127.0.0.1:6379", "shardline:mybot").await?;
/// let consumer = StreamConsumer::builder(redis, "workers", "worker-1")
///     .handler("MESSAGE_CREATE", handler)
///     .start()?;
/// // ... at shutdown:
/// consumer.send(StopConsumer).await?;
/// # Ok(()) }
/// ```
pub struct StreamConsumer {
    /// Taken when the consumer starts running.
    worker: Option<Worker>,
    stats: Arc<Counters>,
    stopping: Arc<AtomicBool>,
    stop_timeout: Duration,
    waiters: Vec<tokio::sync::oneshot::Sender<()>>,
}

impl fmt::Debug for StreamConsumer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("StreamConsumer")
            .field("stopping", &self.stopping.load(Ordering::Relaxed))
            .finish_non_exhaustive()
    }
}

impl StreamConsumer {
    /// A builder of a consumer named `consumer` in the group `group` of the stream of the bot
    /// `redis` belongs to.
    pub fn builder(redis: FleetRedis, group: &str, consumer: &str) -> StreamConsumerBuilder {
        StreamConsumerBuilder {
            redis,
            stream: None,
            group: group.to_owned(),
            consumer: consumer.to_owned(),
            router: Router::default(),
            count: 100,
            block: Duration::from_secs(1),
            claim_idle: Duration::from_secs(30),
            claim_every: None,
            stop_timeout: Duration::from_secs(10),
        }
    }
}

impl Actor for StreamConsumer {
    type Context = Context<Self>;

    fn started(&mut self, ctx: &mut Context<Self>) {
        if let Some(worker) = self.worker.take() {
            let span = tracing::info_span!("stream_consumer", stream = %worker.key, group = %worker.group, consumer = %worker.consumer);
            let run = tracing::Instrument::instrument(worker.run(), span);
            ctx.spawn(actix::fut::wrap_future(run).map(|(), _: &mut Self, ctx| ctx.stop()));
        }
    }

    fn stopped(&mut self, _: &mut Context<Self>) {
        for waiter in self.waiters.drain(..) {
            let _ = waiter.send(());
        }
    }
}

impl Handler<StopConsumer> for StreamConsumer {
    type Result = ResponseFuture<()>;

    fn handle(&mut self, _: StopConsumer, ctx: &mut Context<Self>) -> Self::Result {
        if !self.stopping.swap(true, Ordering::Relaxed) {
            // A handler that never returns must not keep the consumer: stopping drops the read,
            // and its entries stay pending for another consumer to claim.
            ctx.run_later(self.stop_timeout, |_, ctx| {
                tracing::warn!("event stream consumer: handlers did not finish in time; stopping without acknowledging them");
                ctx.stop();
            });
        }
        let (tx, rx) = tokio::sync::oneshot::channel();
        self.waiters.push(tx);
        Box::pin(async move {
            let _ = rx.await;
        })
    }
}

impl Handler<ConsumerStatsRequest> for StreamConsumer {
    type Result = MessageResult<ConsumerStatsRequest>;

    fn handle(&mut self, _: ConsumerStatsRequest, _: &mut Context<Self>) -> Self::Result {
        let c = &self.stats;
        MessageResult(ConsumerStats {
            handled: c.handled.load(Ordering::Relaxed),
            claimed: c.claimed.load(Ordering::Relaxed),
            malformed: c.malformed.load(Ordering::Relaxed),
            trimmed: c.trimmed.load(Ordering::Relaxed),
            not_handled: c.not_handled.load(Ordering::Relaxed),
            removed_consumers: c.removed_consumers.load(Ordering::Relaxed),
        })
    }
}

/// The consumer's read loop and what it needs, apart from the actor.
struct Worker {
    redis: FleetRedis,
    /// A connection of its own: a blocking read holds its connection for the whole wait.
    conn: Option<ConnectionManager>,
    key: String,
    group: String,
    consumer: String,
    router: Router,
    count: usize,
    block: Duration,
    claim_idle: Duration,
    claim_every: Duration,
    group_ready: bool,
    /// Session ids seen, shared by the dispatches that carry them.
    sessions: HashMap<Box<str>, Arc<str>, FastHash>,
    stats: Arc<Counters>,
    stopping: Arc<AtomicBool>,
}

impl Worker {
    async fn run(mut self) {
        let mut retry = Retry::new();
        let mut log = ErrorLog::new("XREADGROUP");
        // At start, claim at once: a restarted worker's own unacknowledged entries are claimable.
        let mut next_claim = Instant::now();
        while !self.stopping.load(Ordering::Relaxed) {
            let step = self.step(&mut next_claim).await;
            match step {
                Ok(()) => {
                    log.recovered();
                    retry.reset();
                }
                Err(e) => {
                    if e.code() == Some("NOGROUP") {
                        // The stream or group was deleted: create it again.
                        self.group_ready = false;
                    }
                    // The next step connects again, to the node the fleet uses now: behind
                    // Sentinel, the old primary may have become a replica (READONLY) or be gone.
                    self.conn = None;
                    log.failed(&e);
                    retry.wait().await;
                }
            }
        }
        tracing::debug!("event stream consumer stopped");
    }

    async fn conn(&mut self) -> Result<ConnectionManager, redis::RedisError> {
        if let Some(conn) = &self.conn {
            return Ok(conn.clone());
        }
        let conn = self.redis.dedicated(self.block).await.map_err(|e| {
            redis::RedisError::from((redis::ErrorKind::Io, "connect", e.to_string()))
        })?;
        self.conn = Some(conn.clone());
        Ok(conn)
    }

    async fn step(&mut self, next_claim: &mut Instant) -> Result<(), redis::RedisError> {
        let mut conn = self.conn().await?;
        if !self.group_ready {
            let created: Result<(), _> = redis::cmd("XGROUP")
                .arg("CREATE")
                .arg(&self.key)
                .arg(&self.group)
                .arg("0")
                .arg("MKSTREAM")
                .query_async(&mut conn)
                .await;
            match created {
                Ok(()) => {}
                Err(e) if e.code() == Some("BUSYGROUP") => {}
                Err(e) => return Err(e),
            }
            self.group_ready = true;
        }
        if Instant::now() >= *next_claim {
            self.claim(&mut conn).await?;
            *next_claim = Instant::now() + self.claim_every;
        }
        if self.stopping.load(Ordering::Relaxed) {
            return Ok(());
        }
        let read: Option<StreamReadReply> = redis::cmd("XREADGROUP")
            .arg("GROUP")
            .arg(&self.group)
            .arg(&self.consumer)
            .arg("COUNT")
            .arg(self.count)
            .arg("BLOCK")
            .arg(self.block.as_millis().max(1) as u64)
            .arg("STREAMS")
            .arg(&self.key)
            .arg(">")
            .query_async(&mut conn)
            .await?;
        let entries: Vec<StreamId> = read
            .map(|r| r.keys.into_iter().flat_map(|k| k.ids).collect())
            .unwrap_or_default();
        if !entries.is_empty() {
            self.handle(entries, &mut conn).await;
        }
        Ok(())
    }

    /// Claims and handles every entry idle for `claim_idle`, a page at a time.
    async fn claim(&mut self, conn: &mut ConnectionManager) -> Result<(), redis::RedisError> {
        let mut cursor = "0-0".to_owned();
        loop {
            let reply: StreamAutoClaimReply = redis::cmd("XAUTOCLAIM")
                .arg(&self.key)
                .arg(&self.group)
                .arg(&self.consumer)
                .arg(self.claim_idle.as_millis() as u64)
                .arg(&cursor)
                .arg("COUNT")
                .arg(self.count)
                .query_async(conn)
                .await?;
            if !reply.deleted_ids.is_empty() {
                // Redis has dropped them from the pending list: they are gone for good.
                self.stats
                    .trimmed
                    .fetch_add(reply.deleted_ids.len() as u64, Ordering::Relaxed);
                tracing::warn!(
                    count = reply.deleted_ids.len(),
                    "event stream: entries left unacknowledged by a consumer were trimmed from the stream before they were claimed; they are lost (raise the stream's max_len)"
                );
            }
            if !reply.claimed.is_empty() {
                self.stats
                    .claimed
                    .fetch_add(reply.claimed.len() as u64, Ordering::Relaxed);
                tracing::info!(
                    count = reply.claimed.len(),
                    "event stream: claimed entries another consumer left unacknowledged"
                );
                self.handle(reply.claimed, conn).await;
            }
            cursor = reply.next_stream_id;
            if self.stopping.load(Ordering::Relaxed) {
                return Ok(());
            }
            if cursor == "0-0" {
                return self.remove_dead_consumers(conn).await;
            }
        }
    }

    /// Removes from the group every other consumer that holds no entry and has not read or
    /// claimed for `claim_idle`: a dead worker whose entries were just claimed, or one that died
    /// with nothing pending. Without this, each restarted worker under a new name (a pod's) would
    /// leave its name in the group for ever. A live consumer that has got nothing for
    /// `claim_idle` can be removed too (before Redis 7.2, `idle` counts from the last read that
    /// returned entries): it holds nothing, so nothing is lost, and its next read that returns
    /// entries makes it a member again.
    async fn remove_dead_consumers(
        &mut self,
        conn: &mut ConnectionManager,
    ) -> Result<(), redis::RedisError> {
        let removed: Vec<String> = REMOVE_DEAD_CONSUMERS
            .key(&self.key)
            .arg(&self.group)
            .arg(self.claim_idle.as_millis() as u64)
            .arg(&self.consumer)
            .invoke_async(conn)
            .await?;
        if !removed.is_empty() {
            self.stats
                .removed_consumers
                .fetch_add(removed.len() as u64, Ordering::Relaxed);
            tracing::info!(consumers = ?removed, "event stream: removed consumers that were gone and held nothing");
        }
        Ok(())
    }

    /// Hands `entries` to their handlers, waits for them, and acknowledges what was handled.
    async fn handle(&mut self, entries: Vec<StreamId>, conn: &mut ConnectionManager) {
        let mut ids = Vec::with_capacity(entries.len());
        let mut events = Vec::with_capacity(entries.len());
        let mut malformed = Vec::new();
        for entry in entries {
            let id = entry.id.clone();
            match self.dispatch_of(entry) {
                Ok(dispatch) => {
                    ids.push(id);
                    events.push(dispatch);
                }
                Err(why) => {
                    tracing::warn!(entry = %id, why, "event stream: an entry that is not an event; acknowledged without handling it");
                    malformed.push(id);
                }
            }
        }
        let failed = self.router.deliver(&events).await;
        if !failed.is_empty() {
            tracing::warn!(
                count = failed.len(),
                "event stream: a handler had stopped; its entries are left for another consumer"
            );
            self.stats
                .not_handled
                .fetch_add(failed.len() as u64, Ordering::Relaxed);
        }
        let handled: Vec<&String> = ids
            .iter()
            .enumerate()
            .filter(|(i, _)| failed.binary_search(i).is_err())
            .map(|(_, id)| id)
            .collect();
        let mut ack: Vec<&String> = handled.clone();
        ack.extend(malformed.iter());
        if ack.is_empty() {
            return;
        }
        // The handlers have run: acknowledging is worth retrying, as not doing it means they run
        // again somewhere. Given up only when stopping (the entries are then claimed later).
        let mut retry = Retry::new();
        let mut log = ErrorLog::new("XACK");
        loop {
            let acked: Result<u64, _> = redis::cmd("XACK")
                .arg(&self.key)
                .arg(&self.group)
                .arg(&ack)
                .query_async(conn)
                .await;
            match acked {
                Ok(_) => break,
                Err(e) => {
                    log.failed(&e);
                    if self.stopping.load(Ordering::Relaxed) {
                        return;
                    }
                    retry.wait().await;
                }
            }
        }
        log.recovered();
        self.stats
            .handled
            .fetch_add(handled.len() as u64, Ordering::Relaxed);
        self.stats
            .malformed
            .fetch_add(malformed.len() as u64, Ordering::Relaxed);
    }

    /// The dispatch a stream entry holds.
    fn dispatch_of(&mut self, mut entry: StreamId) -> Result<Dispatch, &'static str> {
        fn text(map: &HashMap<String, Value>, field: &str) -> Option<String> {
            match map.get(field)? {
                Value::BulkString(bytes) => String::from_utf8(bytes.clone()).ok(),
                Value::SimpleString(s) => Some(s.clone()),
                _ => None,
            }
        }
        let shard: u32 = text(&entry.map, "shard")
            .and_then(|s| s.parse().ok())
            .ok_or("no shard")?;
        let seq: u64 = text(&entry.map, "seq")
            .and_then(|s| s.parse().ok())
            .ok_or("no seq")?;
        let event = text(&entry.map, "t").ok_or("no t")?;
        let session = text(&entry.map, "session").ok_or("no session")?;
        let data = match entry.map.remove("d") {
            Some(Value::BulkString(bytes)) => Bytes::from(bytes),
            _ => return Err("no d"),
        };
        let dispatch = Dispatch::from_data(shard, seq, event, data);
        if session.is_empty() {
            return Ok(dispatch);
        }
        let session = match self.sessions.get(session.as_str()) {
            Some(shared) => shared.clone(),
            None => {
                let shared: Arc<str> = session.as_str().into();
                if self.sessions.len() >= 4096 {
                    // Old sessions are never asked for again; keep the map from growing forever.
                    self.sessions.clear();
                }
                self.sessions.insert(session.into(), shared.clone());
                shared
            }
        };
        Ok(dispatch.with_session(session))
    }
}
