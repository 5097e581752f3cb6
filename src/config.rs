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
#[non_exhaustive]
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
#[non_exhaustive]
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
///
/// Set from the defaults, one setting at a time (it may gain settings):
/// `Limits::default().command_queue(128)`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub struct Limits {
    /// The largest websocket message accepted, assembled from its frames (default 64 MiB). A larger
    /// one closes the connection, which then resumes.
    pub max_message_size: usize,
    /// The largest decompressed message (default 64 MiB): stops a decompression bomb. Exact: a
    /// message of this many bytes passes, one byte more resets the connection. (A zstd-stream
    /// connection also holds a window of at most 8 MiB, whatever this says: docs/protocol.md §6.)
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

impl Limits {
    /// Sets [`max_message_size`](Self::max_message_size).
    pub fn max_message_size(mut self, max_message_size: usize) -> Self {
        self.max_message_size = max_message_size;
        self
    }

    /// Sets [`max_decompressed_size`](Self::max_decompressed_size).
    pub fn max_decompressed_size(mut self, max_decompressed_size: usize) -> Self {
        self.max_decompressed_size = max_decompressed_size;
        self
    }

    /// Sets [`command_queue`](Self::command_queue).
    pub fn command_queue(mut self, command_queue: usize) -> Self {
        self.command_queue = command_queue;
        self
    }

    /// Sets [`concurrent_handshakes`](Self::concurrent_handshakes).
    pub fn concurrent_handshakes(mut self, concurrent_handshakes: usize) -> Self {
        self.concurrent_handshakes = concurrent_handshakes;
        self
    }
}

/// What a shard does when a handler's mailbox is full.
///
/// Whatever the policy, a slow handler never delays a shard's heartbeats: those run on the shard's own
/// timers, not behind the handlers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum SlowHandlers {
    /// Wait for slow handlers (the default). The event waits for room in that handler's mailbox;
    /// later events wait in the shard, up to `max_pending`; past that the shard stops reading its
    /// socket until the handlers catch up (Discord keeps the events; if it drops the connection
    /// meanwhile, a resume replays them). Memory per shard stays bounded by `max_pending` events
    /// (twice that before READY/RESUMED, while a resume's replay is read).
    ///
    /// A shard stops reading for at most `max_pause` at a stretch. Past it, the handlers it waits
    /// for are taken as stalled: the shard reads again and, until such a handler takes the event it
    /// was last given, events that find its mailbox full are dropped for it (counted in
    /// `ShardStatus::dropped`, reported once by `ShardEvent::HandlerStalled`); once it has taken
    /// that event, the shard waits for it again. Without the bound, one hung handler would stop
    /// every shard it hears from for as long as it hangs, with their zombie detection off.
    Backpressure {
        /// Events a shard holds while a handler is full, before it stops reading (default 1024).
        max_pending: usize,
        /// How long a shard may stop reading for its handlers before it stops waiting for them
        /// (default 30 s). While reads are paused, heartbeats go on but a missing ACK proves
        /// nothing (it may be sitting unread), so zombie detection waits; 30 s is under one of
        /// Discord's heartbeat intervals (41.25 s), so a connection that died meanwhile is noticed
        /// within `max_pause` plus one interval, no later than zombie detection alone takes at
        /// worst (two intervals). It is also far longer than a slow handler needs to work
        /// through `max_pending` events: a handler that keeps the shard paused this long is stuck.
        max_pause: Duration,
    },
    /// Drop the event for a handler whose mailbox is full, with a warning and a count per drop
    /// (`ShardStatus::dropped`). Never stalls the shard.
    Drop,
}

impl Default for SlowHandlers {
    fn default() -> Self {
        Self::Backpressure {
            max_pending: 1024,
            max_pause: Duration::from_secs(30),
        }
    }
}

/// Timeouts that keep a shard from hanging in one state.
///
/// Set from the defaults: `Timeouts::default().ready(Duration::from_secs(60))`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
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

impl Timeouts {
    /// Sets [`connect`](Self::connect).
    pub fn connect(mut self, connect: Duration) -> Self {
        self.connect = connect;
        self
    }

    /// Sets [`hello`](Self::hello).
    pub fn hello(mut self, hello: Duration) -> Self {
        self.hello = hello;
        self
    }

    /// Sets [`ready`](Self::ready).
    pub fn ready(mut self, ready: Duration) -> Self {
        self.ready = ready;
        self
    }
}

/// Reconnect delays: exponential with jitter, capped, reset after a session reaches READY/RESUMED
/// (an op 7 on such a healthy connection reconnects at once; drops and closes wait).
///
/// Set from the defaults: `Backoff::default().initial(Duration::from_millis(500))`.
#[derive(Debug, Clone, Copy, PartialEq)]
#[non_exhaustive]
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

impl Backoff {
    /// Sets [`initial`](Self::initial).
    pub fn initial(mut self, initial: Duration) -> Self {
        self.initial = initial;
        self
    }

    /// Sets [`max`](Self::max).
    pub fn max(mut self, max: Duration) -> Self {
        self.max = max;
        self
    }

    /// Sets [`multiplier`](Self::multiplier).
    pub fn multiplier(mut self, multiplier: f64) -> Self {
        self.multiplier = multiplier;
        self
    }

    /// Sets [`randomization`](Self::randomization).
    pub fn randomization(mut self, randomization: f64) -> Self {
        self.randomization = randomization;
        self
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
    /// `None`: the default, which depends on the gateway URL (`url::resume_domains`).
    pub(crate) allowed_resume_domains: Option<Vec<String>>,
    pub(crate) router: Arc<Router>,
    pub(crate) events: Vec<Recipient<ShardEvent>>,
    pub(crate) sessions: Arc<dyn SessionStore>,
    pub(crate) identify_queue: Option<Arc<dyn IdentifyQueue>>,
    /// Shards start only when a fleet's lease keeper hands them over.
    pub(crate) dynamic_shards: bool,
    /// In a fleet, this process's name.
    pub(crate) fleet_owner: Option<String>,
    /// How a reshard runs, and whether one starts by itself.
    pub(crate) reshard: ReshardOptions,
    /// The TLS settings of the websockets and `GET /gateway/bot`.
    pub(crate) tls: crate::client::Tls,
    /// Where the shards record metrics (nowhere unless the bot gave a `Metrics`).
    pub(crate) metrics: crate::metrics::Sink,
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

    /// The domains a `resume_gateway_url` may point at when identifying on `gateway_url`.
    pub(crate) fn resume_domains_for(&self, gateway_url: &str) -> Vec<String> {
        crate::url::resume_domains(self.allowed_resume_domains.as_deref(), gateway_url)
    }
}

/// Builds a [`Config`]; every check runs in [`ConfigBuilder::build`].
pub struct ConfigBuilder {
    config: Config,
    intent_bits: u64,
    large_threshold: u16,
    router: Router,
    root_certificates: Vec<crate::client::RootCertificate>,
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
                allowed_resume_domains: None,
                router: Arc::new(Router::default()),
                events: Vec::new(),
                sessions: Arc::new(MemorySessionStore::new()),
                identify_queue: None,
                dynamic_shards: false,
                fleet_owner: None,
                reshard: Default::default(),
                tls: crate::client::Tls::default(),
                metrics: Default::default(),
            },
            intent_bits: 0,
            large_threshold: 50,
            router: Router::default(),
            root_certificates: Vec::new(),
        }
    }

    /// The intents (default: none).
    pub fn intents(mut self, intents: Intents) -> Self {
        self.intent_bits = intents.bits();
        self
    }

    /// The intents as raw bits. Bits this version does not know are sent with a warning (Discord
    /// adds intents); bits above 2^53 are an error at build time.
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

    /// Domains a `resume_gateway_url` may point at (each domain and its subdomains), besides the
    /// gateway URL's own host. Each entry is a bare host name such as `discord.gg`: no scheme, port,
    /// path or leading dot (checked by [`build`](Self::build)).
    ///
    /// Default: `discord.gg` when the gateway URL is Discord's; none when it is a host of the bot's
    /// own (a proxy), so that resumes go through that host too. A list set here applies either way.
    pub fn allowed_resume_domains(mut self, domains: Vec<String>) -> Self {
        self.config.allowed_resume_domains = Some(domains);
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

    /// How a live reshard runs ([`Gateway::reshard`](crate::Gateway::reshard)), and whether a
    /// 4011 close starts one by itself (docs/resharding.md).
    pub fn reshard(mut self, options: ReshardOptions) -> Self {
        self.config.reshard = options;
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

    /// Records Prometheus metrics into `metrics` (feature `metrics`; default: none are kept).
    /// Keep a clone to [`render`](crate::metrics::Metrics::render) or serve them.
    #[cfg(feature = "metrics")]
    pub fn metrics(mut self, metrics: crate::metrics::Metrics) -> Self {
        self.config.metrics = crate::metrics::Sink(Some(metrics));
        self
    }

    /// Trusts a root certificate (DER) for `wss://` and `https://`, on top of the webpki roots
    /// (Mozilla's): for a corporate TLS proxy or a test server. Server certificates are always
    /// verified; there is no way to turn that off. A certificate that does not parse is a
    /// [`ConfigError::InvalidRootCertificate`] from [`build`](Self::build).
    ///
    /// Configs with different roots never share a connection pool, even in one process.
    ///
    /// ```
    /// use shardline::{Config, ConfigError};
    /// let err = Config::builder("t").add_root_certificate(b"not DER".to_vec()).build().unwrap_err();
    /// assert!(matches!(err, ConfigError::InvalidRootCertificate { index: 0, .. }));
    /// ```
    pub fn add_root_certificate(mut self, der: Vec<u8>) -> Self {
        self.root_certificates
            .push(crate::client::RootCertificate::Der(der));
        self
    }

    /// [`add_root_certificate`](Self::add_root_certificate) for every certificate of a PEM bundle
    /// (`-----BEGIN CERTIFICATE-----` blocks; other blocks are skipped). A bundle without a
    /// certificate is an error from [`build`](Self::build).
    pub fn add_root_certificates_pem(mut self, pem: impl Into<Vec<u8>>) -> Self {
        self.root_certificates
            .push(crate::client::RootCertificate::Pem(pem.into()));
        self
    }

    /// Checks everything and returns the config.
    pub fn build(self) -> Result<Config, ConfigError> {
        let mut config = self.config;
        if config.token.is_empty() {
            return Err(ConfigError::EmptyToken);
        }
        config.intents = Intents::from_bits_retain(self.intent_bits).ok_or(
            ConfigError::IntentsOutOfRange(self.intent_bits & !Intents::MAX_BITS),
        )?;
        if config.intents.unknown_bits() != 0 {
            // Sent as they are: the gateway answers an invalid value with 4013, a fatal close code.
            tracing::warn!(
                unknown = config.intents.unknown_bits(),
                "intent bits that this version of shardline does not know; sending them as given"
            );
        }
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
        for domain in config.allowed_resume_domains.iter().flatten() {
            crate::url::check_resume_domain(domain).map_err(|why| {
                ConfigError::InvalidResumeDomain {
                    domain: domain.clone(),
                    why,
                }
            })?;
        }
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
        if let SlowHandlers::Backpressure {
            max_pending,
            max_pause,
        } = config.slow_handlers
        {
            if max_pending == 0 {
                return Err(ConfigError::InvalidLimit("max_pending", "zero".into()));
            }
            if max_pause.is_zero() {
                return Err(ConfigError::InvalidLimit("max_pause", "zero".into()));
            }
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
        config.tls = crate::client::Tls::with_roots(&self.root_certificates)?;
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

/// How a reshard runs ([`ConfigBuilder::reshard`](crate::ConfigBuilder::reshard)).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub struct ReshardOptions {
    /// Reshard by itself, to the count `GET /gateway/bot` recommends, when a shard is closed
    /// with 4011 (sharding required). Default `false`.
    pub on_sharding_required: bool,
    /// Ask `GET /gateway/bot` at this interval and reshard by itself to its recommendation when
    /// that is at least `margin` above the running total. Default `None` (never).
    pub check_every: Option<Duration>,
    /// See [`check_every`](Self::check_every). Default 1.
    pub margin: u32,
    /// How long after a new shard's READY each guild it listed as unavailable is waited for
    /// before the cut goes ahead without it (the guilds given up on are reported). Default 30 s.
    pub guild_timeout: Duration,
    /// How far apart the two sets' copies of one event may arrive and still be recognised as one
    /// event (docs/resharding.md). Default 5 s.
    pub dedup_window: Duration,
    /// Once the new set is complete, how long the cut waits at most for each old shard to show it
    /// has read everything sent before the new sessions began (docs/resharding.md). Default 2 s.
    pub catch_up_timeout: Duration,
}

impl Default for ReshardOptions {
    fn default() -> Self {
        Self {
            on_sharding_required: false,
            check_every: None,
            margin: 1,
            guild_timeout: Duration::from_secs(30),
            dedup_window: Duration::from_secs(5),
            catch_up_timeout: Duration::from_secs(2),
        }
    }
}

impl ReshardOptions {
    /// Sets [`on_sharding_required`](Self::on_sharding_required).
    pub fn on_sharding_required(mut self, on: bool) -> Self {
        self.on_sharding_required = on;
        self
    }

    /// Sets [`check_every`](Self::check_every) and [`margin`](Self::margin).
    pub fn check_recommendation(mut self, every: Duration, margin: u32) -> Self {
        self.check_every = Some(every);
        self.margin = margin.max(1);
        self
    }

    /// Sets [`guild_timeout`](Self::guild_timeout).
    pub fn guild_timeout(mut self, timeout: Duration) -> Self {
        self.guild_timeout = timeout;
        self
    }

    /// Sets [`catch_up_timeout`](Self::catch_up_timeout).
    pub fn catch_up_timeout(mut self, timeout: Duration) -> Self {
        self.catch_up_timeout = timeout;
        self
    }

    /// Sets [`dedup_window`](Self::dedup_window).
    pub fn dedup_window(mut self, window: Duration) -> Self {
        self.dedup_window = window;
        self
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_resume_allow_list_defaults_by_gateway_and_an_explicit_one_applies_everywhere() {
        let default = Config::builder("t").build().unwrap();
        assert_eq!(
            default.resume_domains_for("wss://gateway.discord.gg"),
            ["discord.gg"]
        );
        assert!(default
            .resume_domains_for("wss://gateway-proxy.example")
            .is_empty());
        let proxied = Config::builder("t")
            .gateway_url("wss://gateway-proxy.example")
            .build()
            .unwrap();
        assert!(proxied
            .resume_domains_for("wss://gateway-proxy.example")
            .is_empty());
        let explicit = Config::builder("t")
            .gateway_url("wss://gateway-proxy.example")
            .allowed_resume_domains(vec!["discord.gg".into()])
            .build()
            .unwrap();
        assert_eq!(
            explicit.resume_domains_for("wss://gateway-proxy.example"),
            ["discord.gg"]
        );
    }

    #[test]
    fn a_resume_allow_list_entry_that_is_not_a_host_name_is_refused() {
        for bad in [
            "",
            ".",
            ".discord.gg",
            "wss://discord.gg",
            "discord.gg:443",
            "discord.gg/x",
            "a b",
        ] {
            let err = Config::builder("t")
                .allowed_resume_domains(vec!["discord.gg".into(), bad.into()])
                .build()
                .unwrap_err();
            assert!(
                matches!(&err, ConfigError::InvalidResumeDomain { domain, .. } if domain == bad),
                "{bad:?}: {err:?}"
            );
            assert!(err.to_string().contains("allowed_resume_domains"), "{err}");
        }
        assert!(Config::builder("t")
            .allowed_resume_domains(vec!["discord.gg".into(), "localhost".into()])
            .build()
            .is_ok());
    }
}
