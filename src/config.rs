//! Configuration in code: the builder, and the validated [`Config`] the runtime runs from.

use std::ops::Range;
use std::sync::Arc;
use std::time::Duration;

use actix::Recipient;

use crate::error::ConfigError;
use crate::event::ShardEvent;
use crate::protocol::command::IdentifyProperties;
use crate::protocol::{Intents, PresenceUpdate};
use crate::queue::{IdentifyQueue, IDENTIFY_WINDOW};
use crate::router::{Dispatch, DispatchBatch, Router, ThreadHandlers};
use crate::session::{MemorySessionStore, SessionStore};
use crate::token::Token;

/// Discord's gateway, used when neither the config nor `GET /gateway/bot` says otherwise.
pub const DEFAULT_GATEWAY_URL: &str = "wss://gateway.discord.gg";
/// Discord's REST API base (docs/protocol.md §1).
pub const DEFAULT_API_BASE: &str = "https://discord.com/api/v10";

/// Which shards this process runs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ShardPlan {
    /// Shards `0..n` of `n`.
    Count(u32),
    /// Shards `ids` of `total`: part of a bot in this process, the rest elsewhere.
    Range {
        /// The ids run here.
        ids: Range<u32>,
        /// The bot's shard total.
        total: u32,
    },
    /// Every shard of the count `GET /gateway/bot` recommends.
    Recommended,
}

/// Transport compression (docs/protocol.md §6).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Compression {
    /// Plain text frames.
    None,
    /// One zlib stream per connection.
    #[default]
    ZlibStream,
    /// One zstd stream per connection (feature `zstd`).
    #[cfg(feature = "zstd")]
    ZstdStream,
}

impl Compression {
    /// The `compress` query value, if any.
    pub fn query_value(self) -> Option<&'static str> {
        match self {
            Self::None => None,
            Self::ZlibStream => Some("zlib-stream"),
            #[cfg(feature = "zstd")]
            Self::ZstdStream => Some("zstd-stream"),
        }
    }
}

/// Size limits on received messages, the command queue, and how many handshakes run at once.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    /// The largest websocket message accepted, assembled from its frames (default 64 MiB). A larger
    /// one closes the connection, which then resumes.
    pub max_message_size: usize,
    /// The largest decompressed message (default 64 MiB): stops a decompression bomb.
    pub max_decompressed_size: usize,
    /// Commands kept for a shard while it is not connected (default 64); more is an error.
    pub command_queue: usize,
    /// Websocket handshakes (connect and upgrade) in flight at once across all shards (default 32).
    /// A handshake holds ~16 KiB of buffers for a moment; thousands at once would leave the
    /// allocator holding that much per shard for good. Identify pacing keeps start-up slower than
    /// this anyway.
    pub concurrent_handshakes: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Self {
            max_message_size: 64 << 20,
            max_decompressed_size: 64 << 20,
            command_queue: 64,
            concurrent_handshakes: 32,
        }
    }
}

/// What a shard does when a handler's mailbox is full.
///
/// Whatever the policy, a slow handler never delays a shard's heartbeats: those run on the shard's own
/// timers, not behind the handlers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SlowHandlers {
    /// Never drop (the default). The event waits for room in that handler's mailbox; later events
    /// wait in the shard, up to `max_pending`; past that the shard stops reading its socket until the
    /// handlers catch up (Discord keeps the events; if it drops the connection meanwhile, a resume
    /// replays them). Memory per shard stays bounded by `max_pending` events.
    Backpressure {
        /// Events a shard holds while a handler is full, before it stops reading (default 1024).
        max_pending: usize,
    },
    /// Drop the event for a handler whose mailbox is full, with a warning and a count per drop
    /// (`ShardStatus::dropped`). Never stalls the shard.
    Drop,
}

impl Default for SlowHandlers {
    fn default() -> Self {
        Self::Backpressure { max_pending: 1024 }
    }
}

/// Timeouts that keep a shard from hanging in one state.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Timeouts {
    /// TCP, TLS and websocket handshake (default 10 s).
    pub connect: Duration,
    /// From the open socket to Hello (default 10 s).
    pub hello: Duration,
    /// From Identify or Resume sent to READY or RESUMED (default 30 s; a resume replays a lot).
    pub ready: Duration,
}

impl Default for Timeouts {
    fn default() -> Self {
        Self {
            connect: Duration::from_secs(10),
            hello: Duration::from_secs(10),
            ready: Duration::from_secs(30),
        }
    }
}

/// Reconnect delays: exponential with jitter, capped, reset after a session reaches READY/RESUMED
/// (an op 7 on such a healthy connection reconnects at once; drops and closes wait).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Backoff {
    /// The first delay (default 1 s).
    pub initial: Duration,
    /// The cap (default 60 s).
    pub max: Duration,
    /// Growth per attempt (default 2).
    pub multiplier: f64,
    /// Jitter: each delay is drawn from `delay × [1 - r, 1 + r]` (default 0.5).
    pub randomization: f64,
}

impl Default for Backoff {
    fn default() -> Self {
        Self {
            initial: Duration::from_secs(1),
            max: Duration::from_secs(60),
            multiplier: 2.0,
            randomization: 0.5,
        }
    }
}

/// The validated configuration of a bot's gateway runtime. Build it with [`Config::builder`].
#[derive(Clone)]
pub struct Config {
    pub(crate) token: Token,
    pub(crate) intents: Intents,
    pub(crate) plan: ShardPlan,
    pub(crate) gateway_url: Option<String>,
    pub(crate) api_base: String,
    pub(crate) large_threshold: u8,
    pub(crate) presence: Option<PresenceUpdate>,
    pub(crate) properties: IdentifyProperties,
    pub(crate) compression: Compression,
    pub(crate) slow_handlers: SlowHandlers,
    pub(crate) limits: Limits,
    pub(crate) timeouts: Timeouts,
    pub(crate) backoff: Backoff,
    pub(crate) max_concurrency: Option<u32>,
    pub(crate) identify_window: Duration,
    pub(crate) command_limit: (u32, Duration),
    pub(crate) arbiters: usize,
    pub(crate) allowed_resume_domains: Vec<String>,
    pub(crate) router: Arc<Router>,
    pub(crate) events: Vec<Recipient<ShardEvent>>,
    pub(crate) sessions: Arc<dyn SessionStore>,
    pub(crate) identify_queue: Option<Arc<dyn IdentifyQueue>>,
}

impl std::fmt::Debug for Config {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Config")
            .field("token", &self.token)
            .field("intents", &self.intents)
            .field("plan", &self.plan)
            .field("gateway_url", &self.gateway_url)
            .field("api_base", &self.api_base)
            .field("compression", &self.compression)
            .field("router", &self.router)
            .finish_non_exhaustive()
    }
}

impl Config {
    /// A builder for a bot with this token.
    ///
    /// ```
    /// use shardline::{Config, Intents, ShardPlan};
    /// let config = Config::builder("my-token")
    ///     .intents(Intents::GUILDS | Intents::GUILD_MESSAGES)
    ///     .shards(ShardPlan::Count(4))
    ///     .build()
    ///     .unwrap();
    /// assert_eq!(config.plan(), &ShardPlan::Count(4));
    /// assert!(Config::builder("t").shards(ShardPlan::Count(0)).build().is_err());
    /// ```
    pub fn builder(token: impl Into<Token>) -> ConfigBuilder {
        ConfigBuilder::new(token.into())
    }

    /// The shard plan.
    pub fn plan(&self) -> &ShardPlan {
        &self.plan
    }

    /// The session store.
    pub fn sessions(&self) -> &Arc<dyn SessionStore> {
        &self.sessions
    }

    /// The intents sent in Identify.
    pub fn intents(&self) -> Intents {
        self.intents
    }
}

/// Builds a [`Config`]; every check runs in [`ConfigBuilder::build`].
pub struct ConfigBuilder {
    config: Config,
    intent_bits: u64,
    large_threshold: u16,
    router: Router,
}

impl ConfigBuilder {
    fn new(token: Token) -> Self {
        Self {
            config: Config {
                token,
                intents: Intents::empty(),
                plan: ShardPlan::Count(1),
                gateway_url: None,
                api_base: DEFAULT_API_BASE.to_owned(),
                large_threshold: 50,
                presence: None,
                properties: IdentifyProperties::default(),
                compression: Compression::default(),
                slow_handlers: SlowHandlers::default(),
                limits: Limits::default(),
                timeouts: Timeouts::default(),
                backoff: Backoff::default(),
                max_concurrency: None,
                identify_window: IDENTIFY_WINDOW,
                command_limit: (120, Duration::from_secs(60)),
                arbiters: std::thread::available_parallelism().map_or(1, |n| n.get()),
                allowed_resume_domains: vec!["discord.gg".to_owned()],
                router: Arc::new(Router::default()),
                events: Vec::new(),
                sessions: Arc::new(MemorySessionStore::new()),
                identify_queue: None,
            },
            intent_bits: 0,
            large_threshold: 50,
            router: Router::default(),
        }
    }

    /// The intents (default: none).
    pub fn intents(mut self, intents: Intents) -> Self {
        self.intent_bits = intents.bits();
        self
    }

    /// The intents as raw bits; unknown bits are an error at build time.
    pub fn intent_bits(mut self, bits: u64) -> Self {
        self.intent_bits = bits;
        self
    }

    /// Which shards to run (default: one shard).
    pub fn shards(mut self, plan: ShardPlan) -> Self {
        self.config.plan = plan;
        self
    }

    /// The gateway URL (`wss://…`, no query). Default: the `url` from `GET /gateway/bot`.
    pub fn gateway_url(mut self, url: impl Into<String>) -> Self {
        self.config.gateway_url = Some(url.into());
        self
    }

    /// The REST API base, e.g. for a proxy or a test server (default Discord's v10).
    pub fn api_base(mut self, url: impl Into<String>) -> Self {
        self.config.api_base = url.into();
        self
    }

    /// `large_threshold` in Identify, 50..=250 (default 50).
    pub fn large_threshold(mut self, n: u16) -> Self {
        self.large_threshold = n;
        self
    }

    /// The presence sent in Identify.
    pub fn presence(mut self, presence: PresenceUpdate) -> Self {
        self.config.presence = Some(presence);
        self
    }

    /// Transport compression (default zlib-stream).
    pub fn compression(mut self, compression: Compression) -> Self {
        self.config.compression = compression;
        self
    }

    /// What to do when a handler falls behind (default: backpressure, never drop).
    pub fn slow_handlers(mut self, policy: SlowHandlers) -> Self {
        self.config.slow_handlers = policy;
        self
    }

    /// Receive limits and the command queue size.
    pub fn limits(mut self, limits: Limits) -> Self {
        self.config.limits = limits;
        self
    }

    /// Timeouts for connect, Hello and READY.
    pub fn timeouts(mut self, timeouts: Timeouts) -> Self {
        self.config.timeouts = timeouts;
        self
    }

    /// Reconnect backoff.
    pub fn backoff(mut self, backoff: Backoff) -> Self {
        self.config.backoff = backoff;
        self
    }

    /// Identify concurrency; default: `max_concurrency` from `GET /gateway/bot`.
    pub fn max_concurrency(mut self, n: u32) -> Self {
        self.config.max_concurrency = Some(n);
        self
    }

    /// The identify window per bucket. Discord's is 5 s; change it only for a test server.
    pub fn identify_window(mut self, window: Duration) -> Self {
        self.config.identify_window = window;
        self
    }

    /// Commands per window per connection. Discord's is 120 per 60 s; change it only for a test server.
    pub fn command_limit(mut self, count: u32, per: Duration) -> Self {
        self.config.command_limit = (count, per);
        self
    }

    /// The number of arbiters (threads) the shards are spread over (default: one per core).
    pub fn arbiters(mut self, n: usize) -> Self {
        self.config.arbiters = n;
        self
    }

    /// Domains whose subdomains a `resume_gateway_url` may point at, besides the gateway URL's own
    /// host (default: `discord.gg`).
    pub fn allowed_resume_domains(mut self, domains: Vec<String>) -> Self {
        self.config.allowed_resume_domains = domains;
        self
    }

    /// Identify properties (`os`, `browser`, `device`).
    pub fn properties(mut self, properties: IdentifyProperties) -> Self {
        self.config.properties = properties;
        self
    }

    /// Registers a handler for one event name (e.g. `MESSAGE_CREATE`).
    pub fn handler(mut self, event: &str, handler: Recipient<Dispatch>) -> Self {
        self.router.add(event, handler);
        self
    }

    /// Registers a handler for every event, including ones this crate does not know.
    pub fn handler_all(mut self, handler: Recipient<Dispatch>) -> Self {
        self.router.add_all(handler);
        self
    }

    /// Registers a batch handler for one event name: it gets the events of each burst a shard reads
    /// as one [`DispatchBatch`], in sequence order, instead of one message per event. Same delivery
    /// guarantees and slow-handler policy as [`handler`](Self::handler); one mailbox message per
    /// burst instead of per event, for handlers that take events by the thousand.
    ///
    /// ```
    /// # actix_rt::System::new().block_on(async {
    /// use actix::prelude::*;
    /// use shardline::{Config, DispatchBatch};
    /// struct Count(usize);
    /// impl Actor for Count { type Context = Context<Self>; }
    /// impl Handler<DispatchBatch> for Count {
    ///     type Result = ();
    ///     fn handle(&mut self, batch: DispatchBatch, _: &mut Context<Self>) {
    ///         self.0 += batch.events().len();
    ///     }
    /// }
    /// let counter = Count(0).start();
    /// let config = Config::builder("token")
    ///     .batch_handler("MESSAGE_CREATE", counter.recipient())
    ///     .build()
    ///     .unwrap();
    /// # let _ = config;
    /// # });
    /// ```
    pub fn batch_handler(mut self, event: &str, handler: Recipient<DispatchBatch>) -> Self {
        self.router.add_batch(event, handler);
        self
    }

    /// Registers a batch handler for every event (see [`batch_handler`](Self::batch_handler)).
    pub fn batch_handler_all(mut self, handler: Recipient<DispatchBatch>) -> Self {
        self.router.add_batch_all(handler);
        self
    }

    /// Registers handlers per shard thread: `setup` runs once on every arbiter thread that runs
    /// shards, before its first shard starts there, and the handlers it registers get the events of
    /// that thread's shards only (on top of the handlers registered for every shard).
    ///
    /// An actor the setup starts runs on the shard thread itself, so handing it an event is a local
    /// mailbox push: no other thread is woken, which is most of what delivering a small event to a
    /// handler on another thread costs. It suits handlers whose work splits by shard (counters,
    /// per-guild state, command dispatch); a handler that must see every shard's events in one place
    /// is registered with [`handler`](Self::handler). Handlers live as long as their thread: a shard
    /// restarted on it finds the same ones. Delivery guarantees and the slow-handler policy are the
    /// same. Such a handler shares its thread with the shards: one that blocks it (long computation,
    /// blocking I/O) holds up the reads and heartbeats of every shard there, so heavy work belongs
    /// in an actor of its own.
    ///
    /// ```
    /// # actix_rt::System::new().block_on(async {
    /// use std::sync::atomic::{AtomicUsize, Ordering};
    /// use std::sync::Arc;
    /// use actix::prelude::*;
    /// use shardline::{Config, Dispatch};
    /// // One counter per thread; the total is the sum.
    /// struct Count(Arc<AtomicUsize>);
    /// impl Actor for Count { type Context = Context<Self>; }
    /// impl Handler<Dispatch> for Count {
    ///     type Result = ();
    ///     fn handle(&mut self, _: Dispatch, _: &mut Context<Self>) {
    ///         self.0.fetch_add(1, Ordering::Relaxed);
    ///     }
    /// }
    /// let total = Arc::new(AtomicUsize::new(0));
    /// let config = Config::builder("token")
    ///     .handlers_per_thread(move |thread| {
    ///         let counter = Count(total.clone()).start();
    ///         thread.handler("MESSAGE_CREATE", counter.recipient());
    ///     })
    ///     .build()
    ///     .unwrap();
    /// # let _ = config;
    /// # });
    /// ```
    pub fn handlers_per_thread(
        mut self,
        setup: impl Fn(&mut ThreadHandlers) + Send + Sync + 'static,
    ) -> Self {
        self.router.add_per_thread(Arc::new(setup));
        self
    }

    /// Registers a recipient for shard lifecycle events (ready, resumed, disconnected, fatal).
    pub fn events(mut self, recipient: Recipient<ShardEvent>) -> Self {
        self.config.events.push(recipient);
        self
    }

    /// The session store (default: an in-process [`MemorySessionStore`]).
    pub fn session_store(mut self, store: Arc<dyn SessionStore>) -> Self {
        self.config.sessions = store;
        self
    }

    /// The identify queue (default: an in-process queue sized by `max_concurrency`).
    pub fn identify_queue(mut self, queue: Arc<dyn IdentifyQueue>) -> Self {
        self.config.identify_queue = Some(queue);
        self
    }

    /// Checks everything and returns the config.
    pub fn build(self) -> Result<Config, ConfigError> {
        let mut config = self.config;
        if config.token.is_empty() {
            return Err(ConfigError::EmptyToken);
        }
        config.intents = Intents::from_bits(self.intent_bits).ok_or(
            ConfigError::UnknownIntents(self.intent_bits & !Intents::ALL.bits()),
        )?;
        match &config.plan {
            ShardPlan::Count(0) | ShardPlan::Range { total: 0, .. } => {
                return Err(ConfigError::ZeroShards)
            }
            ShardPlan::Range { ids, .. } if ids.is_empty() => {
                return Err(ConfigError::EmptyShardRange)
            }
            ShardPlan::Range { ids, total } if ids.end > *total => {
                return Err(ConfigError::ShardOutOfRange {
                    id: ids.end - 1,
                    total: *total,
                })
            }
            _ => {}
        }
        // docs/protocol.md §2: large_threshold is 50..=250.
        if !(50..=250).contains(&self.large_threshold) {
            return Err(ConfigError::LargeThreshold(self.large_threshold));
        }
        config.large_threshold = self.large_threshold as u8;
        if config.max_concurrency == Some(0) {
            return Err(ConfigError::ZeroMaxConcurrency);
        }
        if config.arbiters == 0 {
            return Err(ConfigError::ZeroArbiters);
        }
        if let Some(url) = &config.gateway_url {
            check_url("gateway_url", url, &["ws", "wss"])?;
        }
        check_url("api_base", &config.api_base, &["http", "https"])?;
        let limits = config.limits;
        for (what, value) in [
            ("max_message_size", limits.max_message_size),
            ("max_decompressed_size", limits.max_decompressed_size),
        ] {
            if value < 4096 {
                return Err(ConfigError::InvalidLimit(
                    what,
                    format!("{value} is under 4096 bytes"),
                ));
            }
        }
        if limits.concurrent_handshakes == 0 {
            return Err(ConfigError::InvalidLimit(
                "concurrent_handshakes",
                "0 would never connect".to_owned(),
            ));
        }
        let t = config.timeouts;
        for (what, d) in [
            ("connect timeout", t.connect),
            ("hello timeout", t.hello),
            ("ready timeout", t.ready),
        ] {
            if d.is_zero() {
                return Err(ConfigError::InvalidLimit(what, "zero".into()));
            }
        }
        let b = config.backoff;
        if b.initial.is_zero()
            || b.max < b.initial
            || b.multiplier < 1.0
            || !(0.0..=1.0).contains(&b.randomization)
        {
            return Err(ConfigError::InvalidLimit(
                "backoff",
                "needs 0 < initial <= max, multiplier >= 1, randomization in 0..=1".into(),
            ));
        }
        if config.slow_handlers == (SlowHandlers::Backpressure { max_pending: 0 }) {
            return Err(ConfigError::InvalidLimit("max_pending", "zero".into()));
        }
        if config.command_limit.0 < 2 || config.command_limit.1.is_zero() {
            return Err(ConfigError::InvalidLimit(
                "command_limit",
                "needs at least 2 per non-zero window".into(),
            ));
        }
        if config.identify_window.is_zero() {
            return Err(ConfigError::InvalidLimit("identify_window", "zero".into()));
        }
        config.router = Arc::new(self.router.finish());
        Ok(config)
    }
}

fn check_url(what: &'static str, url: &str, schemes: &[&str]) -> Result<(), ConfigError> {
    match crate::url::Url::parse(url) {
        Some(u) if schemes.contains(&u.scheme) => Ok(()),
        Some(u) => Err(ConfigError::InvalidUrl(
            what,
            format!("scheme {:?} is not one of {schemes:?}", u.scheme),
        )),
        None => Err(ConfigError::InvalidUrl(
            what,
            format!("{url:?} is not an absolute URL"),
        )),
    }
}
