//! A fake Discord gateway (and `GET /gateway/bot`) as strict as docs/protocol.md: the tests, benches and
//! examples run against it, and bots can use it in their own tests.
//!
//! It checks Identify (token, intents, shard, properties), enforces identify buckets (op 9 when
//! broken), 120 commands / 60 s (close 4008), the 4096-byte limit (close 4002) and the session-start
//! budget, closes connections that stop heartbeating (4009), keeps each session's events for replay
//! on resume, sends `RESUMED`, and speaks zlib-stream and zstd-stream. Tests
//! script it and read back every frame each client sent.
//!
//! ```no_run
//! # actix_rt::System::new().block_on(async {
//! use std::time::Duration;
//! use shardline::testkit::{FakeConfig, FakeGateway};
//!
//! let fake = FakeGateway::start(FakeConfig { heartbeat_interval: Duration::from_millis(100), ..FakeConfig::default() })
//!     .await
//!     .unwrap();
//! // … start a client at fake.api_base() / fake.gateway_url(), then:
//! fake.wait_for(Duration::from_secs(5), "shard 0 ready", |f| f.ready_shards() == [0]).await;
//! // A whole Message object, as Discord sends it (`message` fills in every field it always has).
//! let d = shardline::testkit::message(1_200_000_000_000_000_001, 1_100_000_000_000_000_002, "hi");
//! fake.dispatch(0, "MESSAGE_CREATE", d);
//! let identifies = fake.frames_of(0).into_iter().filter(|f| f.op == Some(2)).count();
//! assert_eq!(identifies, 1);
//! fake.stop().await;
//! # });
//! ```

mod compress;
mod connection;
mod control;
mod payloads;
mod rest;
mod server;
mod state;
mod tls;
mod wire;

use std::ops::RangeInclusive;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use actix_web::{web, App, HttpServer};
use serde_json::Value;

use crate::protocol::Intents;
pub use payloads::{message, missing_fields, FakeBotUser};
pub use state::RestCall;
use state::{Command, State};

/// How the fake gateway behaves. Tests shorten the intervals and windows; the defaults are Discord's.
#[derive(Debug, Clone)]
pub struct FakeConfig {
    /// The only token accepted (default `fake-token`).
    pub token: String,
    /// The recommended shard count `GET /gateway/bot` returns (default 1).
    pub shards: u32,
    /// Identify buckets (default 1).
    pub max_concurrency: u32,
    /// The interval in Hello (default 41 250 ms).
    pub heartbeat_interval: Duration,
    /// No heartbeat for this long (after Hello or the last one) → close 4009. Zero (the default)
    /// means `heartbeat_interval × 1.5 + 100 ms`.
    pub heartbeat_timeout: Duration,
    /// One Identify per bucket per window (default 5 s); a second → op 9.
    pub identify_window: Duration,
    /// How much short of the window an Identify may arrive, for network jitter (default 25 ms).
    pub identify_jitter_tolerance: Duration,
    /// Frames a connection may send per window, heartbeats included (default 120 per 60 s).
    pub command_limit: (u32, Duration),
    /// The session-start budget; each Identify uses one, and at zero Identify gets op 9.
    pub session_start_limit: SessionStartLimit,
    /// Privileged intents the bot may use (default: all of them); others → close 4014.
    pub privileged_intents_enabled: u64,
    /// The fewest shards the bot may run (default 1); fewer → close 4011.
    pub required_shards: u32,
    /// The bot's guilds (default 0: none beyond `guilds_per_shard`): guild `i` has the id
    /// [`guild_id`]`(i)`, and belongs to shard `(id >> 22) % total` of whatever total a connection
    /// identified with (docs/protocol.md §5), so the client's total decides which guilds each of its
    /// shards receives. [`FakeGateway::add_guilds`] adds more at run time.
    pub guilds: u32,
    /// The most guilds one shard may hold (default `None`: no cap). An Identify for a shard that
    /// would hold more is closed with 4011 (sharding required), and so is a live shard that
    /// [`FakeGateway::add_guilds`] takes past it.
    pub max_guilds_per_shard: Option<u32>,
    /// `GUILD_CREATE`s sent after READY on each new session (default 0).
    pub guilds_per_shard: u32,
    /// Dispatches kept per session for replay (default 100 000); a resume from further back → op 9.
    pub replay_capacity: usize,
    /// Overrides `resume_gateway_url` in READY (default `ws://127.0.0.1:PORT/resume`, or
    /// `wss://localhost:PORT/resume` in TLS mode).
    pub resume_url: Option<String>,
    /// Sends every message longer than this as continuation frames of this size (default off).
    pub fragment_size: Option<usize>,
    /// A flood sent to every shard right after its READY (default none): for benchmarks.
    pub flood_on_ready: Option<Flood>,
    /// Whether Hello is sent (default true); `false` makes a gateway that accepts and stays silent.
    pub send_hello: bool,
    /// Whether Identify and Resume are answered (default true); `false` never sends READY/RESUMED.
    pub answer_handshake: bool,
    /// The first this-many Identifies of each shard get a READY without `session_id` (default 0):
    /// a session the client cannot resume.
    pub readies_without_session_id: u32,
    /// Refuses connections without a `compress` query (close 4002) (default false): our choice,
    /// for checking that a client really asks for transport compression; Discord does not.
    pub require_compression: bool,
    /// Requests per REST rate-limit bucket (one per route and channel) per window (default 5 per
    /// 5 s); the next is answered 429.
    pub rest_rate_limit: (u32, Duration),
    /// The bot user: READY's `user`, `GET /users/@me`, `GET /oauth2/applications/@me` and the
    /// author of messages created over REST (default id 1000, `fake-bot`).
    pub bot_user: FakeBotUser,
}

/// A stream of dispatches generated as it is sent (never all in memory), for benchmarks.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Flood {
    /// The event name, e.g. `MESSAGE_CREATE`.
    pub event: String,
    /// The serialized `d` of every event.
    pub d: String,
    /// How many events.
    pub count: usize,
    /// Every this many events, a `LATENCY_PROBE` dispatch whose `d` is `{"sent_ns": <ns since the
    /// Unix epoch>}` (0: none), so a client can measure send-to-handler latency.
    pub probe_every: usize,
}

/// `session_start_limit` of `GET /gateway/bot`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SessionStartLimit {
    /// Starts per period.
    pub total: u32,
    /// Starts left.
    pub remaining: u32,
    /// Milliseconds to the reset.
    pub reset_after: u64,
}

impl Default for FakeConfig {
    fn default() -> Self {
        Self {
            token: "fake-token".to_owned(),
            shards: 1,
            max_concurrency: 1,
            heartbeat_interval: Duration::from_millis(41_250),
            heartbeat_timeout: Duration::ZERO,
            identify_window: Duration::from_secs(5),
            identify_jitter_tolerance: Duration::from_millis(25),
            command_limit: (120, Duration::from_secs(60)),
            session_start_limit: SessionStartLimit {
                total: 1000,
                remaining: 1000,
                reset_after: 86_400_000,
            },
            privileged_intents_enabled: Intents::PRIVILEGED.bits(),
            required_shards: 1,
            guilds: 0,
            max_guilds_per_shard: None,
            guilds_per_shard: 0,
            replay_capacity: 100_000,
            resume_url: None,
            fragment_size: None,
            send_hello: true,
            answer_handshake: true,
            readies_without_session_id: 0,
            flood_on_ready: None,
            require_compression: false,
            rest_rate_limit: (5, Duration::from_secs(5)),
            bot_user: FakeBotUser::default(),
        }
    }
}

/// One frame a client sent.
#[derive(Debug, Clone)]
pub struct RecordedFrame {
    /// The connection it came on.
    pub connection: u64,
    /// The shard, once the connection identified or resumed (an Identify/Resume frame carries its own).
    pub shard: Option<u32>,
    /// When it arrived.
    pub at: Instant,
    /// Its `op`, if it had one.
    pub op: Option<u8>,
    /// The parsed frame (`Null` if it was not JSON).
    pub json: Value,
    /// The frame as text.
    pub raw: String,
}

/// How a connection's handshake ended.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum ConnectionOutcome {
    /// Neither identified nor resumed (yet).
    None,
    /// A new session.
    Identified {
        /// Its id.
        session_id: String,
    },
    /// A resumed session.
    Resumed {
        /// Its id.
        session_id: String,
        /// The `seq` the client resumed from.
        seq: u64,
    },
}

/// One websocket connection the fake accepted.
#[derive(Debug, Clone)]
pub struct ConnectionRecord {
    /// Its id, in order of acceptance from 1.
    pub id: u64,
    /// The shard, once known.
    pub shard: Option<u32>,
    /// The shard total it identified with, once known (a resume keeps its session's).
    pub total: Option<u32>,
    /// The path (`/` or `/resume`).
    pub path: String,
    /// The query string.
    pub query: String,
    /// The `compress` query value.
    pub compress: Option<String>,
    /// When it was accepted.
    pub opened_at: Instant,
    /// When it ended.
    pub closed_at: Option<Instant>,
    /// The code of the client's close frame, if it sent one.
    pub client_close_code: Option<u16>,
    /// When the client's close frame arrived (the connection ends a moment later, at
    /// `closed_at`, once the fake has answered it).
    pub client_closed_at: Option<Instant>,
    /// The code the fake closed it with, if it did.
    pub server_close_code: Option<u16>,
    /// How its handshake ended.
    pub outcome: ConnectionOutcome,
    /// The client's address (its local port tells which process opened it).
    pub peer: Option<std::net::SocketAddr>,
    /// When a session was attached to it (READY or RESUMED sent): from then it is authenticated.
    pub attached_at: Option<Instant>,
    /// The session's last seq when it was attached (READY and its GUILD_CREATEs, or the last
    /// event replayed before RESUMED): later events were sent on it live.
    pub attached_seq: Option<u64>,
    /// For an Identify, the shard's session it replaced, as it was at that moment (`resumable`
    /// tells whether a Resume would still have been accepted).
    pub replaced: Option<FakeSession>,
}

/// A session as the fake sees it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FakeSession {
    /// The session id.
    pub id: String,
    /// The last seq assigned.
    pub seq: u64,
    /// Whether it can still be resumed.
    pub resumable: bool,
}

/// A running fake gateway. Cloning it is cheap; every clone scripts the same server.
#[derive(Clone)]
pub struct FakeGateway {
    state: Arc<Mutex<State>>,
    server: actix_web::dev::ServerHandle,
    port: u16,
    tls: Option<Arc<tls::FakeTls>>,
}

impl FakeGateway {
    /// Starts on a free port of 127.0.0.1. Must run inside an actix (or tokio) runtime.
    pub async fn start(config: FakeConfig) -> std::io::Result<Self> {
        Self::start_on(config, 0).await
    }

    /// Starts on `port` of 127.0.0.1 (0: any free one).
    pub async fn start_on(config: FakeConfig, port: u16) -> std::io::Result<Self> {
        Self::start_with(config, port, None).await
    }

    /// Starts in TLS mode on a free port of 127.0.0.1: the websocket and `GET /gateway/bot` are
    /// served over TLS only, at `wss://localhost:PORT` and `https://localhost:PORT/api/v10`, with a
    /// certificate for `localhost` and `127.0.0.1` signed by a CA generated here. A client trusts
    /// it with [`ca_certificate_der`](Self::ca_certificate_der).
    ///
    /// ```no_run
    /// # actix_rt::System::new().block_on(async {
    /// use shardline::testkit::{FakeConfig, FakeGateway};
    /// use shardline::Config;
    ///
    /// let fake = FakeGateway::start_tls(FakeConfig::default()).await.unwrap();
    /// let config = Config::builder("fake-token")
    ///     .api_base(fake.api_base())
    ///     .add_root_certificate(fake.ca_certificate_der().unwrap())
    ///     .build()
    ///     .unwrap();
    /// # let _ = config;
    /// # });
    /// ```
    pub async fn start_tls(config: FakeConfig) -> std::io::Result<Self> {
        Self::start_tls_on(config, 0).await
    }

    /// [`start_tls`](Self::start_tls) on `port` (0: any free one).
    pub async fn start_tls_on(config: FakeConfig, port: u16) -> std::io::Result<Self> {
        let (fake_tls, server_config) = tls::generate()?;
        Self::start_with(config, port, Some((fake_tls, server_config))).await
    }

    async fn start_with(
        config: FakeConfig,
        port: u16,
        tls: Option<(tls::FakeTls, rustls::ServerConfig)>,
    ) -> std::io::Result<Self> {
        let mut state = State::new(config);
        state.tls = tls.is_some();
        let data = web::Data::new(Mutex::new(state));
        let state: Arc<Mutex<State>> = data.clone().into_inner();
        let app_data = data.clone();
        let server = HttpServer::new(move || {
            App::new()
                .app_data(app_data.clone())
                .configure(server::routes)
        })
        .workers(1)
        .disable_signals()
        .shutdown_timeout(0);
        let (server, tls) = match tls {
            None => (server.bind(("127.0.0.1", port))?, None),
            Some((fake_tls, server_config)) => (
                server.bind_rustls_0_23(("127.0.0.1", port), server_config)?,
                Some(Arc::new(fake_tls)),
            ),
        };
        let port = server.addrs().first().map(|a| a.port()).unwrap_or(port);
        lock(&state).port = port;
        let server = server.run();
        let handle = server.handle();
        actix_rt::spawn(server);
        tracing::debug!(port, tls = tls.is_some(), "fake gateway listening");
        Ok(Self {
            state,
            server: handle,
            port,
            tls,
        })
    }

    /// The port it listens on.
    pub fn port(&self) -> u16 {
        self.port
    }

    /// The REST base: `http://127.0.0.1:PORT/api/v10`, or `https://localhost:PORT/api/v10` in TLS
    /// mode.
    pub fn api_base(&self) -> String {
        format!("{}/api/v10", self.state().http_base())
    }

    /// The gateway URL: `ws://127.0.0.1:PORT`, or `wss://localhost:PORT` in TLS mode.
    pub fn gateway_url(&self) -> String {
        self.state().ws_base()
    }

    /// In TLS mode, the DER of the CA that signed the fake's certificate: the root a client must
    /// add to connect (`ConfigBuilder::add_root_certificate`).
    pub fn ca_certificate_der(&self) -> Option<Vec<u8>> {
        self.tls.as_ref().map(|t| t.ca_der.clone())
    }

    /// In TLS mode, how many TLS handshakes clients began (ClientHellos received), whether or not
    /// they completed: a client that refuses the certificate is counted too. Always 0 otherwise.
    pub fn tls_handshakes(&self) -> usize {
        self.tls.as_ref().map_or(0, |t| {
            t.handshakes.load(std::sync::atomic::Ordering::SeqCst)
        })
    }

    /// Stops the server and drops every connection.
    pub async fn stop(&self) {
        let live: Vec<_> = lock(&self.state)
            .live
            .values()
            .map(|l| l.tx.clone())
            .collect();
        for tx in live {
            let _ = tx.send(Command::Drop);
        }
        self.server.stop(false).await;
    }

    fn state(&self) -> MutexGuard<'_, State> {
        lock(&self.state)
    }

    /// Sends a dispatch on `shard`'s session (kept for replay; sent now if a connection is attached).
    /// Returns its seq, or `None` if the shard has no live session.
    pub fn dispatch(&self, shard: u32, event: &str, d: Value) -> Option<u64> {
        self.dispatch_raw(shard, event, &d.to_string())
    }

    /// [`dispatch`](Self::dispatch), also answering the session the event was appended to, read
    /// under the same lock: `(session id, seq)`.
    pub fn dispatch_in_session(&self, shard: u32, event: &str, d: Value) -> Option<(String, u64)> {
        let mut state = self.state();
        let (seq, _) =
            state.dispatch(shard, event, &mut std::iter::once(d.to_string().as_str()))?;
        Some((state.current.get(&shard)?.clone(), seq))
    }

    /// [`dispatch`](Self::dispatch) with `d` already serialized.
    pub fn dispatch_raw(&self, shard: u32, event: &str, d_json: &str) -> Option<u64> {
        self.state()
            .dispatch(shard, event, &mut std::iter::once(d_json))
            .map(|(first, _)| first)
    }

    /// `count` dispatches of `d_json`; returns their seqs.
    pub fn flood(
        &self,
        shard: u32,
        event: &str,
        d_json: &str,
        count: usize,
    ) -> Option<RangeInclusive<u64>> {
        if count == 0 {
            return None;
        }
        self.state()
            .dispatch(shard, event, &mut std::iter::repeat_n(d_json, count))
            .map(|(first, last)| first..=last)
    }

    /// Sends a dispatch about guild `guild_id` to every live session whose shard owns the guild
    /// under the total that session identified with (`(guild_id >> 22) % total`): while a bot runs
    /// two shard sets (resharding), both receive it, as on Discord. Returns `(shard, total, seq)`
    /// for each session it went to, ordered by total then shard.
    pub fn dispatch_guild(&self, guild_id: u64, event: &str, d: Value) -> Vec<(u32, u32, u64)> {
        self.dispatch_guild_raw(guild_id, event, &d.to_string())
    }

    /// [`dispatch_guild`](Self::dispatch_guild) with `d` already serialized.
    pub fn dispatch_guild_raw(
        &self,
        guild_id: u64,
        event: &str,
        d_json: &str,
    ) -> Vec<(u32, u32, u64)> {
        self.state().dispatch_guild(guild_id, event, d_json, 1)
    }

    /// The ids of the bot's guilds ([`FakeConfig::guilds`] plus any added), in order.
    pub fn guild_ids(&self) -> Vec<u64> {
        self.state().guilds.clone()
    }

    /// Adds `count` guilds (the bot joined them): each is sent as `GUILD_CREATE` to the live
    /// sessions whose shard owns it; then every live session whose shard now holds more than
    /// [`FakeConfig::max_guilds_per_shard`] is closed with 4011. Returns the new ids.
    pub fn add_guilds(&self, count: u32) -> Vec<u64> {
        self.state().add_guilds(count)
    }

    /// Changes the shard count `GET /gateway/bot` recommends from now on.
    pub fn set_recommended_shards(&self, shards: u32) {
        self.state().config.shards = shards.max(1);
    }

    /// op 7 Reconnect.
    pub fn reconnect(&self, shard: u32) -> bool {
        self.send_op(shard, r#"{"t":null,"s":null,"op":7,"d":null}"#)
    }

    /// op 7, and nothing more on that connection: what is dispatched next waits in the session
    /// for the client's Resume, however long the client takes to close the old connection (and
    /// goes out on the new connection if it resumed already). [`reconnect`](Self::reconnect)
    /// keeps sending on the old connection until the client closes it.
    pub fn reconnect_holding(&self, shard: u32) -> bool {
        self.state().reconnect_holding(shard)
    }

    /// op 9 Invalid Session; `false` also ends the session, as on Discord. The connection stays
    /// open but no longer authenticated: the client may Resume (after `true`) or Identify on it, or
    /// reconnect (docs/protocol.md §3.8).
    pub fn invalid_session(&self, shard: u32, resumable: bool) -> bool {
        self.state().invalid_session(shard, resumable)
    }

    /// op 1: asks the client for a heartbeat.
    pub fn request_heartbeat(&self, shard: u32) -> bool {
        self.send_op(shard, r#"{"t":null,"s":null,"op":1,"d":null}"#)
    }

    fn send_op(&self, shard: u32, frame: &'static str) -> bool {
        self.state()
            .send_to_shard(shard, Command::Send(vec![frame.into()]))
    }

    /// Closes the shard's connection with `code` (4007 and 4009 also end the session).
    pub fn close(&self, shard: u32, code: u16) -> bool {
        self.state().send_to_shard(shard, Command::Close(code))
    }

    /// Ends the shard's connection without a close frame.
    pub fn drop_connection(&self, shard: u32) -> bool {
        self.state().send_to_shard(shard, Command::Drop)
    }

    /// Ends every live connection at once without a close frame (a network partition, a gateway
    /// restart). Returns how many were dropped.
    pub fn drop_all(&self) -> usize {
        self.state().drop_all()
    }

    /// Stops (`false`) or resumes answering the shard's heartbeats with ACKs.
    pub fn set_ack_heartbeats(&self, shard: u32, ack: bool) {
        self.state().set_ack_heartbeats(shard, ack);
    }

    /// Sends a text frame as it is (e.g. malformed JSON).
    pub fn send_raw_text(&self, shard: u32, text: &str) -> bool {
        self.state()
            .send_to_shard(shard, Command::RawText(text.to_owned()))
    }

    /// Sends a binary frame as it is.
    pub fn send_raw_binary(&self, shard: u32, bytes: &[u8]) -> bool {
        self.state().send_to_shard(
            shard,
            Command::RawBinary(bytes::Bytes::copy_from_slice(bytes)),
        )
    }

    /// Writes `bytes` to the shard's socket as they are, framed or not (e.g. a websocket frame with
    /// reserved bits set, or a masked one, which a server must never send).
    pub fn send_raw_wire(&self, shard: u32, bytes: &[u8]) -> bool {
        self.state().send_to_shard(
            shard,
            Command::RawWire(bytes::Bytes::copy_from_slice(bytes)),
        )
    }

    /// Sends `payload` through the connection's transport compressor as one message, outside the
    /// session log (e.g. a decompression bomb). Without compression it goes out as a binary frame.
    pub fn send_raw_compressed(&self, shard: u32, payload: &[u8]) -> bool {
        self.state().send_to_shard(
            shard,
            Command::RawCompressed(bytes::Bytes::copy_from_slice(payload)),
        )
    }

    /// Every frame every client sent, in order of arrival.
    pub fn frames(&self) -> Vec<RecordedFrame> {
        self.state().frames.clone()
    }

    /// The frames sent for `shard`.
    pub fn frames_of(&self, shard: u32) -> Vec<RecordedFrame> {
        self.state()
            .frames
            .iter()
            .filter(|f| f.shard == Some(shard))
            .cloned()
            .collect()
    }

    /// Every connection accepted, in order.
    pub fn connections(&self) -> Vec<ConnectionRecord> {
        self.state().conns.clone()
    }

    /// Every Identify received (accepted or not): shard and time.
    pub fn identifies(&self) -> Vec<(u32, Instant)> {
        self.state().identifies.clone()
    }

    /// Every REST call received (beyond `GET /gateway` and `/gateway/bot`), in order, with the
    /// status the fake answered.
    pub fn rest_calls(&self) -> Vec<RestCall> {
        self.state().rest_calls.clone()
    }

    /// The ids of the messages that exist in `channel` now (dispatched as `MESSAGE_CREATE` or
    /// created over REST, and not deleted), ascending; `None` if the fake knows no such channel.
    pub fn messages_in(&self, channel: u64) -> Option<Vec<u64>> {
        self.state()
            .channels
            .get(&channel)
            .map(|c| c.messages.iter().copied().collect())
    }

    /// Identifies refused for breaking the bucket rule.
    pub fn bucket_violations(&self) -> usize {
        self.state().bucket_violations
    }

    /// Shards whose current session is attached to a live connection (READY or RESUMED sent), sorted.
    pub fn ready_shards(&self) -> Vec<u32> {
        let state = self.state();
        let mut shards: Vec<u32> = state
            .current
            .keys()
            .copied()
            .filter(|&s| state.live_conn_of(s).is_some())
            .collect();
        shards.sort_unstable();
        shards
    }

    /// The shard's current session.
    pub fn session(&self, shard: u32) -> Option<FakeSession> {
        self.state().snapshot(shard)
    }

    /// Polls `f` every 5 ms until it holds (true) or `timeout` passes (false, logged with `what`).
    pub async fn wait_for<F: Fn(&FakeGateway) -> bool>(
        &self,
        timeout: Duration,
        what: &str,
        f: F,
    ) -> bool {
        let deadline = Instant::now() + timeout;
        loop {
            if f(self) {
                return true;
            }
            if Instant::now() >= deadline {
                tracing::warn!(what, ?timeout, "fake gateway: condition not met in time");
                return false;
            }
            actix_rt::time::sleep(Duration::from_millis(5)).await;
        }
    }
}

/// The id of the fake's guild number `i` ([`FakeConfig::guilds`]): a snowflake whose upper bits
/// (`id >> 22`, what the shard formula reads) are [`GUILD_BASE`]` + i`.
pub fn guild_id(i: u32) -> u64 {
    (GUILD_BASE + u64::from(i)) << 22
}

/// `id >> 22` of the fake's first guild: a snowflake of late 2017.
pub const GUILD_BASE: u64 = 238_418_579_101;

fn lock(state: &Mutex<State>) -> MutexGuard<'_, State> {
    state.lock().unwrap_or_else(|p| p.into_inner())
}
