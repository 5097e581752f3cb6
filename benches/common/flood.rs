//! The flood bench's fake gateway and shardline client roles (shared with the peer comparison).

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use actix::prelude::*;
use shardline::testkit::{FakeConfig, FakeGateway, Flood};
use shardline::typed::MessageCreate;
use shardline::{Compression, Config, Dispatch, DispatchBatch, Gateway, ShardPlan};

/// The corpus MESSAGE_CREATE (2.6 KB).
pub const MESSAGE: &str = include_str!("../corpus/message_create.json");
/// A `LATENCY_PROBE` after every this many events.
pub const PROBE_EVERY: usize = 1000;

/// The fake gateway process: `--serve <port> <shards> <events per shard>`.
pub fn serve(args: &[String]) {
    let port: u16 = args[0].parse().expect("port");
    let shards: u32 = args[1].parse().expect("shards");
    let count: usize = args[2].parse().expect("events");
    let d = serde_json::from_str::<serde_json::Value>(MESSAGE).expect("corpus")["d"].to_string();
    actix_rt::System::new().block_on(async move {
        let config = FakeConfig {
            shards,
            max_concurrency: shards,
            identify_window: Duration::from_millis(5),
            replay_capacity: 1_000,
            flood_on_ready: Some(Flood {
                event: "MESSAGE_CREATE".into(),
                d,
                count,
                probe_every: PROBE_EVERY,
            }),
            ..FakeConfig::default()
        };
        let _fake = FakeGateway::start_on(config, port).await.expect("listens");
        std::future::pending::<()>().await;
    });
}

/// Where the run's result goes: time from the first to the last event, and probe latencies.
pub type Done = tokio::sync::oneshot::Sender<(Duration, Vec<u64>)>;

/// What every counter of a run adds to: with handlers per thread there is one counter per shard
/// thread, as there is one count per shard task in the twilight client.
pub struct Tally {
    expected: usize,
    count: AtomicUsize,
    first: OnceLock<Instant>,
    latencies_ns: Mutex<Vec<u64>>,
    done: Mutex<Option<Done>>,
}

impl Tally {
    /// A tally that sends the run's result to `done` once `expected` MESSAGE_CREATEs are counted.
    pub fn new(expected: usize, done: Done) -> Arc<Tally> {
        Arc::new(Tally {
            expected,
            count: AtomicUsize::new(0),
            first: OnceLock::new(),
            latencies_ns: Mutex::new(Vec::new()),
            done: Mutex::new(Some(done)),
        })
    }
}

/// Counts messages and collects probe latencies; with `read`, it also reads the content, author and
/// channel of every MESSAGE_CREATE through the lean typed view, as a handler that acts on messages
/// does.
pub struct Counter(pub Arc<Tally>, pub bool);

impl Actor for Counter {
    type Context = Context<Self>;
    fn started(&mut self, ctx: &mut Context<Self>) {
        ctx.set_mailbox_capacity(4096);
    }
}

impl Counter {
    fn take(&mut self, d: &Dispatch) {
        let tally = &*self.0;
        match d.event() {
            "MESSAGE_CREATE" => {
                if self.1 {
                    match d.view::<MessageCreate<'_>>() {
                        Ok(m) => {
                            std::hint::black_box((&*m.content, m.author.id, m.channel_id));
                        }
                        Err(e) => panic!("the flood's MESSAGE_CREATE reads as a view: {e}"),
                    }
                }
                // The clock is read at the first and the last event only, as the twilight
                // counter in the peer bench does.
                tally.first.get_or_init(Instant::now);
                if tally.count.fetch_add(1, Ordering::Relaxed) + 1 == tally.expected {
                    let done = tally.done.lock().expect("tally").take();
                    if let (Some(done), Some(first)) = (done, tally.first.get()) {
                        let elapsed = first.elapsed();
                        let latencies =
                            std::mem::take(&mut *tally.latencies_ns.lock().expect("tally"));
                        let _ = done.send((elapsed, latencies));
                    }
                }
            }
            "LATENCY_PROBE" => {
                #[derive(serde::Deserialize)]
                struct Probe {
                    sent_ns: u64,
                }
                if let Ok(p) = d.parse::<Probe>() {
                    let now = SystemTime::now()
                        .duration_since(UNIX_EPOCH)
                        .unwrap_or_default()
                        .as_nanos() as u64;
                    let latency = now.saturating_sub(p.sent_ns);
                    tally.latencies_ns.lock().expect("tally").push(latency);
                }
            }
            _ => {}
        }
    }
}

impl Handler<Dispatch> for Counter {
    type Result = ();
    fn handle(&mut self, d: Dispatch, _: &mut Context<Self>) {
        self.take(&d);
    }
}

impl Handler<DispatchBatch> for Counter {
    type Result = ();
    fn handle(&mut self, batch: DispatchBatch, _: &mut Context<Self>) {
        for d in batch.events() {
            self.take(d);
        }
    }
}

/// A per-event counter (only `Handler<Dispatch>`) that takes its events a burst at a time
/// (`shardline::handles_bursts!`, registered with `batch_handler`).
pub struct PerEvent(pub Counter);

impl Actor for PerEvent {
    type Context = Context<Self>;
    fn started(&mut self, ctx: &mut Context<Self>) {
        ctx.set_mailbox_capacity(4096);
    }
}

impl Handler<Dispatch> for PerEvent {
    type Result = ();
    fn handle(&mut self, d: Dispatch, _: &mut Context<Self>) {
        self.0.take(&d);
    }
}

shardline::handles_bursts!(PerEvent);

/// One run: `--client <shards> <compression> <events per shard> <gateway url> [MODE]`: the counter
/// is a per-event handler (`each`, the default), the same taking its events in bursts (`bursts`:
/// `handles_bursts!`), a batch handler (`batch`), or a per-event handler per shard thread
/// (`thread`: one counter beside the shards of each arbiter); `view`, `bursts-view`, `batch-view`
/// and `thread-view` are the same reading each message through its typed view.
#[allow(dead_code, reason = "the peer comparison's entry point")]
pub fn client(args: &[String]) {
    client_with(args, "", |builder| builder);
}

/// [`client`], with the config changed by `tweak` and `variant` in the result line (e.g. metrics
/// on against off).
pub fn client_with(
    args: &[String],
    variant: &str,
    tweak: impl FnOnce(shardline::ConfigBuilder) -> shardline::ConfigBuilder + 'static,
) {
    let n: u32 = args[0].parse().expect("shards");
    let compression = match args[1].as_str() {
        "none" => Compression::None,
        "zlib-stream" => Compression::ZlibStream,
        #[cfg(feature = "zstd")]
        "zstd-stream" => Compression::ZstdStream,
        other => panic!("unknown compression {other}"),
    };
    let per_shard: usize = args[2].parse().expect("events");
    let url = args[3].clone();
    let mode = args.get(4).map_or("each", String::as_str).to_owned();
    // `view`, `batch-view`, `thread-view`: the same handler kinds, reading every message's view.
    let read = mode.ends_with("view");
    let kind = match mode.trim_end_matches("view").trim_end_matches('-') {
        "" => "each",
        other => other,
    }
    .to_owned();
    let variant = variant.to_owned();
    actix_rt::System::new().block_on(async move {
        let (tx, rx) = tokio::sync::oneshot::channel();
        let tally = Tally::new(per_shard * n as usize, tx);
        let builder = Config::builder("fake-token")
            .shards(ShardPlan::Count(n))
            .gateway_url(url)
            .max_concurrency(n)
            .identify_window(Duration::from_millis(5))
            .compression(compression);
        let builder = match kind.as_str() {
            "batch" => {
                let counter = Counter(tally, read).start();
                builder
                    .batch_handler("MESSAGE_CREATE", counter.clone().recipient())
                    .batch_handler("LATENCY_PROBE", counter.recipient())
            }
            "bursts" => {
                let counter = PerEvent(Counter(tally, read)).start();
                builder
                    .batch_handler("MESSAGE_CREATE", counter.clone().recipient())
                    .batch_handler("LATENCY_PROBE", counter.recipient())
            }
            "thread" => builder.handlers_per_thread(move |thread| {
                let counter = Counter(tally.clone(), read).start();
                thread
                    .handler("MESSAGE_CREATE", counter.clone().recipient())
                    .handler("LATENCY_PROBE", counter.recipient());
            }),
            _ => {
                let counter = Counter(tally, read).start();
                builder
                    .handler("MESSAGE_CREATE", counter.clone().recipient())
                    .handler("LATENCY_PROBE", counter.recipient())
            }
        };
        let config = tweak(builder).build().expect("config");
        let gateway = Gateway::start(config).await.expect("starts");
        let (elapsed, mut latencies) = actix_rt::time::timeout(Duration::from_secs(300), rx)
            .await
            .expect("flood finished in time")
            .expect("counter");
        latencies.sort_unstable();
        let pct = |p: f64| {
            latencies
                .get(((latencies.len() as f64 - 1.0) * p) as usize)
                .map_or(0.0, |&ns| ns as f64 / 1e6)
        };
        let total = per_shard * n as usize;
        let cpu_s = cpu_seconds();
        let result = serde_json::json!({
            "bench": "flood",
            "library": match mode.as_str() {
                "each" => "shardline".to_owned(),
                other => format!("shardline-{other}"),
            },
            "variant": variant,
            "shards": n,
            "compression": args[1],
            "events": total,
            "events_per_sec": total as f64 / elapsed.as_secs_f64(),
            "p50_ms": pct(0.5),
            "p99_ms": pct(0.99),
            "cpu_s": cpu_s,
        });
        println!("{result}");
        drop(gateway);
        std::process::exit(0);
    });
}

/// CPU time of this process's threads so far (Linux `schedstat`, in nanoseconds; 0 elsewhere): the
/// client's cost per event, which the fake gateway sharing the cores does not blur the way it blurs
/// events/s.
pub fn cpu_seconds() -> f64 {
    let Ok(tasks) = std::fs::read_dir("/proc/self/task") else {
        return 0.0;
    };
    tasks
        .flatten()
        .filter_map(|t| std::fs::read_to_string(t.path().join("schedstat")).ok())
        .filter_map(|s| s.split_whitespace().next()?.parse::<u64>().ok())
        .sum::<u64>() as f64
        / 1e9
}
