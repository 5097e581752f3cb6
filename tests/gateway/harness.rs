//! Shared set-up: a fast fake gateway, a client config pointed at it, and handler actors that record
//! what they receive.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use actix::prelude::*;
use shardline::testkit::{FakeConfig, FakeGateway, RecordedFrame};
use shardline::{
    Backoff, Compression, Config, ConfigBuilder, Dispatch, DispatchBatch, Gateway, Intents, Phase,
    ShardEvent, ShardPlan, ShardStatus, Timeouts,
};

pub const TOKEN: &str = "fake-token";
pub const WAIT: Duration = Duration::from_secs(10);

/// One delivered event as a handler saw it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Seen {
    pub shard: u32,
    pub seq: u64,
    pub event: String,
    pub data: String,
}

/// A handler actor that records every dispatch it receives (one at a time, or in batches).
#[derive(Default, Clone)]
pub struct Recorder {
    pub seen: Arc<Mutex<Vec<Seen>>>,
    /// The size of every batch received as a batch handler.
    pub batch_sizes: Arc<Mutex<Vec<usize>>>,
}

impl Actor for Recorder {
    type Context = Context<Self>;
    fn started(&mut self, ctx: &mut Context<Self>) {
        // Roomy: the recorder must never be the slow handler of a test.
        ctx.set_mailbox_capacity(100_000);
    }
}

impl Handler<Dispatch> for Recorder {
    type Result = ();
    fn handle(&mut self, d: Dispatch, _: &mut Context<Self>) {
        self.record(&d);
    }
}

impl Handler<DispatchBatch> for Recorder {
    type Result = ();
    fn handle(&mut self, batch: DispatchBatch, _: &mut Context<Self>) {
        for d in batch.events() {
            assert_eq!(d.shard(), batch.shard(), "a batch holds one shard's events");
            self.record(d);
        }
        self.batch_sizes.lock().unwrap().push(batch.events().len());
    }
}

impl Recorder {
    pub fn record(&self, d: &Dispatch) {
        let seen = Seen {
            shard: d.shard(),
            seq: d.seq(),
            event: d.event().to_owned(),
            data: String::from_utf8_lossy(d.data()).into_owned(),
        };
        self.seen.lock().unwrap().push(seen);
    }

    pub fn events(&self) -> Vec<Seen> {
        self.seen.lock().unwrap().clone()
    }

    /// (shard, seq) of every event named `event`.
    pub fn seqs(&self, event: &str) -> Vec<(u32, u64)> {
        self.events()
            .into_iter()
            .filter(|s| s.event == event)
            .map(|s| (s.shard, s.seq))
            .collect()
    }

    /// The sequence numbers of `event`, in the order they arrived (whatever the shard).
    pub fn seq_numbers(&self, event: &str) -> Vec<u64> {
        self.seqs(event).into_iter().map(|(_, s)| s).collect()
    }

    pub fn count(&self, event: &str) -> usize {
        self.events().iter().filter(|s| s.event == event).count()
    }
}

/// Records lifecycle events.
#[derive(Default, Clone)]
pub struct Lifecycle {
    pub seen: Arc<Mutex<Vec<ShardEvent>>>,
}

impl Actor for Lifecycle {
    type Context = Context<Self>;
}

impl Handler<ShardEvent> for Lifecycle {
    type Result = ();
    fn handle(&mut self, e: ShardEvent, _: &mut Context<Self>) {
        self.seen.lock().unwrap().push(e);
    }
}

impl Lifecycle {
    pub fn events(&self) -> Vec<ShardEvent> {
        self.seen.lock().unwrap().clone()
    }
}

/// A fake gateway with short intervals and windows, so no test waits out Discord's real ones.
pub fn fast_fake(shards: u32, max_concurrency: u32) -> FakeConfig {
    FakeConfig {
        shards,
        max_concurrency,
        heartbeat_interval: Duration::from_millis(100),
        identify_window: Duration::from_millis(100),
        // Discord's 120 / 60 s against a 41 s heartbeat, scaled to a 100 ms one: heartbeats take a
        // quarter of the budget, as they do on Discord (and longer tests never hit 4008).
        command_limit: (120, Duration::from_secs(3)),
        ..FakeConfig::default()
    }
}

/// A client config pointed at `fake`, with the same short windows and fast reconnects.
pub fn client(fake: &FakeGateway, fake_config: &FakeConfig, shards: u32) -> ConfigBuilder {
    let builder = Config::builder(TOKEN)
        .intents(Intents::GUILDS | Intents::GUILD_MESSAGES)
        .shards(ShardPlan::Count(shards))
        .api_base(fake.api_base())
        .gateway_url(fake.gateway_url())
        .max_concurrency(fake_config.max_concurrency)
        .identify_window(fake_config.identify_window)
        .command_limit(fake_config.command_limit.0, fake_config.command_limit.1)
        .compression(Compression::None)
        .arbiters(2);
    fast_reconnects(builder)
}

/// Fast reconnects and short handshake timeouts, so no test waits out the defaults.
pub fn fast_reconnects(builder: ConfigBuilder) -> ConfigBuilder {
    builder
        .backoff(
            Backoff::default()
                .initial(Duration::from_millis(20))
                .max(Duration::from_millis(200))
                .multiplier(2.0)
                .randomization(0.5),
        )
        .timeouts(
            Timeouts::default()
                .connect(Duration::from_secs(2))
                .hello(Duration::from_secs(2))
                .ready(Duration::from_secs(5)),
        )
}

/// A running client and fake, with a recorder for every event and one for lifecycle events.
pub struct Bot {
    pub fake: FakeGateway,
    pub gateway: Gateway,
    pub recorder: Recorder,
    pub lifecycle: Lifecycle,
}

impl Bot {
    /// Starts `fake_config` and a client of `shards` shards configured by `tweak`, and waits until
    /// every shard is READY.
    pub async fn start(
        fake_config: FakeConfig,
        shards: u32,
        tweak: impl FnOnce(ConfigBuilder) -> ConfigBuilder,
    ) -> Bot {
        let fake = FakeGateway::start(fake_config.clone())
            .await
            .expect("fake gateway starts");
        Self::start_with(fake, fake_config, shards, tweak).await
    }

    /// [`start`](Self::start) with a fake already running (started from `fake_config`).
    pub async fn start_with(
        fake: FakeGateway,
        fake_config: FakeConfig,
        shards: u32,
        tweak: impl FnOnce(ConfigBuilder) -> ConfigBuilder,
    ) -> Bot {
        let _ = tracing_subscriber::fmt()
            .with_env_filter(tracing_subscriber::EnvFilter::from_default_env())
            .with_test_writer()
            .try_init();
        let recorder = Recorder::default();
        let lifecycle = Lifecycle::default();
        let config = tweak(
            client(&fake, &fake_config, shards)
                .handler_all(recorder.clone().start().recipient())
                .events(lifecycle.clone().start().recipient()),
        )
        .build()
        .expect("valid config");
        let gateway = Gateway::start(config).await.expect("gateway starts");
        let bot = Bot {
            fake,
            gateway,
            recorder,
            lifecycle,
        };
        assert!(
            bot.fake
                .wait_for(WAIT, "all shards ready", |f| f.ready_shards().len()
                    == shards as usize)
                .await,
            "not every shard became ready: {:?}",
            bot.fake.ready_shards()
        );
        // The fake having sent READY is not the shard having read it: a test that acts at once
        // (a shutdown that keeps sessions, say) must find the session stored.
        status_until(&bot.gateway, "every shard took in READY", |status| {
            status.len() == shards as usize && status.iter().all(|s| s.phase == Phase::Ready)
        })
        .await;
        bot
    }

    pub async fn stop(self) {
        self.gateway.shutdown(false).await;
        self.fake.stop().await;
    }

    /// Waits until `f` holds of the recorder.
    pub async fn until(&self, what: &str, f: impl Fn(&Recorder) -> bool) {
        wait_until(what, || f(&self.recorder)).await;
    }
}

/// Polls `f` every 5 ms for up to [`WAIT`]; panics naming `what` if it never holds.
pub async fn wait_until(what: &str, f: impl Fn() -> bool) {
    let deadline = std::time::Instant::now() + WAIT;
    while !f() {
        assert!(
            std::time::Instant::now() < deadline,
            "timed out waiting for: {what}"
        );
        actix_rt::time::sleep(Duration::from_millis(5)).await;
    }
}

/// Polls the shards' status every 5 ms for up to [`WAIT`] until `f` holds of it, and returns that
/// status; panics naming `what` (with the last status) if it never holds.
pub async fn status_until(
    gateway: &Gateway,
    what: &str,
    f: impl Fn(&[ShardStatus]) -> bool,
) -> Vec<ShardStatus> {
    let deadline = std::time::Instant::now() + WAIT;
    loop {
        let status = gateway.status().await;
        if f(&status) {
            return status;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "timed out waiting for: {what} ({status:?})"
        );
        actix_rt::time::sleep(Duration::from_millis(5)).await;
    }
}

/// The frames a shard sent with opcode `op`.
pub fn sent(fake: &FakeGateway, shard: u32, op: u8) -> Vec<RecordedFrame> {
    fake.frames_of(shard)
        .into_iter()
        .filter(|f| f.op == Some(op))
        .collect()
}

/// Every frame with opcode `op`, whoever sent it (shard is unknown before Identify/Resume).
pub fn sent_any(fake: &FakeGateway, op: u8) -> Vec<RecordedFrame> {
    fake.frames()
        .into_iter()
        .filter(|f| f.op == Some(op))
        .collect()
}

/// Dispatches `n` MESSAGE_CREATEs numbered from `from` to shard 0; returns their seqs.
pub fn messages(bot: &Bot, from: usize, n: usize) -> Vec<u64> {
    (from..from + n)
        .map(|i| {
            bot.fake
                .dispatch(0, "MESSAGE_CREATE", serde_json::json!({ "i": i }))
                .unwrap()
        })
        .collect()
}

/// Collects the `tracing` records of the code it is installed around (with
/// `tracing::subscriber::with_default`, for the current thread, or as the global default), as text.
#[derive(Clone, Default)]
pub struct LogCapture(Arc<Mutex<Vec<u8>>>);

impl LogCapture {
    /// A subscriber writing every record at DEBUG and above into this capture.
    pub fn subscriber(&self) -> impl tracing::Subscriber + Send + Sync {
        self.subscriber_at(tracing::Level::DEBUG)
    }

    /// A subscriber writing every record at `level` and above into this capture.
    pub fn subscriber_at(&self, level: tracing::Level) -> impl tracing::Subscriber + Send + Sync {
        let sink = self.clone();
        tracing_subscriber::fmt()
            .with_max_level(level)
            .with_ansi(false)
            .with_writer(move || sink.clone())
            .finish()
    }

    /// Captures every record at `level` and above from every thread of the process (a test
    /// binary of its own: there is one global subscriber).
    #[allow(
        dead_code,
        reason = "used by the test binaries that capture logs process-wide"
    )]
    pub fn install(&self, level: tracing::Level) {
        tracing::subscriber::set_global_default(self.subscriber_at(level))
            .expect("the only global subscriber of this test binary");
    }

    /// Everything captured so far.
    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.0.lock().unwrap()).into_owned()
    }
}

impl std::io::Write for LogCapture {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

/// A handler with a 4-slot mailbox whose first `handle()` blocks its thread until the gate opens
/// (a handler stuck on a lock or a dead dependency); afterwards it records what it gets.
pub struct Hung {
    seen: Recorder,
    gate: Option<std::sync::mpsc::Receiver<()>>,
}

impl Actor for Hung {
    type Context = Context<Self>;
    fn started(&mut self, ctx: &mut Context<Self>) {
        ctx.set_mailbox_capacity(4);
    }
}

impl Handler<Dispatch> for Hung {
    type Result = ();
    fn handle(&mut self, d: Dispatch, _: &mut Context<Self>) {
        if let Some(gate) = self.gate.take() {
            let _ = gate.recv();
        }
        self.seen.record(&d);
    }
}

/// A [`Hung`] handler on an arbiter of its own; send on the sender to let it go.
pub fn hung() -> (Addr<Hung>, Recorder, std::sync::mpsc::Sender<()>, Arbiter) {
    let seen = Recorder::default();
    let (open, gate) = std::sync::mpsc::channel();
    let arbiter = Arbiter::new();
    let s = seen.clone();
    let addr = Hung::start_in_arbiter(&arbiter.handle(), move |_| Hung {
        seen: s,
        gate: Some(gate),
    });
    (addr, seen, open, arbiter)
}

/// The example binary `cargo test` built next to this test binary.
pub fn example(name: &str) -> std::path::PathBuf {
    let exe = std::env::current_exe().expect("test binary path");
    exe.parent()
        .and_then(|deps| deps.parent())
        .expect("target dir")
        .join("examples")
        .join(name)
}
