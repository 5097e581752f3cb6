//! `flood_criterion`: a flood of corpus `MESSAGE_CREATE`s (2.6 KB) through one real shard over
//! loopback, from the in-process fake gateway to a counting handler, per handler kind (`each`: a
//! per-event handler, `batch`: a batch handler, `thread`: a per-event handler on the shard's
//! thread) and per transport compression. Criterion reports events/s (`Throughput::Elements`) with
//! its statistics and compares with the last saved run.
//!
//! ```text
//! cargo bench --features testkit,zstd --bench flood_criterion
//! cargo bench --features testkit,zstd --bench flood_criterion -- --test    # each case once
//! ```
//! One iteration is one flood of `EVENTS` events on an established session, timed from the call
//! that gives them to the fake until the handler has counted the last one: the fake builds,
//! compresses and writes the frames in the same process (on its own thread), so the figures are
//! lower than the process-level `flood` bench's, and are meant for regression detection between
//! runs of this bench, not for comparison with the peers (see `flood` and `bench-peers`).

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use actix::prelude::*;
use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};
use shardline::testkit::{FakeConfig, FakeGateway};
use shardline::{Compression, Config, Dispatch, DispatchBatch, Gateway, ShardPlan};
use tokio::sync::Notify;

/// Events per iteration.
const EVENTS: usize = 5_000;

/// What every counter of a run adds to, and who waits for it.
struct Tally {
    count: AtomicUsize,
    target: AtomicUsize,
    reached: Notify,
}

impl Tally {
    fn add(&self, n: usize) {
        let now = self.count.fetch_add(n, Ordering::AcqRel) + n;
        if now >= self.target.load(Ordering::Acquire) {
            self.reached.notify_one();
        }
    }
}

struct Counter(Arc<Tally>);

impl Actor for Counter {
    type Context = Context<Self>;
    fn started(&mut self, ctx: &mut Context<Self>) {
        ctx.set_mailbox_capacity(4096);
    }
}

impl Handler<Dispatch> for Counter {
    type Result = ();
    fn handle(&mut self, _: Dispatch, _: &mut Context<Self>) {
        self.0.add(1);
    }
}

impl Handler<DispatchBatch> for Counter {
    type Result = ();
    fn handle(&mut self, batch: DispatchBatch, _: &mut Context<Self>) {
        self.0.add(batch.events().len());
    }
}

fn compressions() -> Vec<(&'static str, Compression)> {
    let mut list = vec![
        ("none", Compression::None),
        ("zlib-stream", Compression::ZlibStream),
    ];
    #[cfg(feature = "zstd")]
    list.push(("zstd-stream", Compression::ZstdStream));
    list
}

/// A fake and one shard of a bot connected to it, with a counter as `kind` of handler.
async fn start(kind: &str, compression: Compression, tally: Arc<Tally>) -> (FakeGateway, Gateway) {
    let fake = FakeGateway::start(FakeConfig {
        identify_window: Duration::from_millis(5),
        // The floods are not resumed: a short replay log keeps the fake's memory flat.
        replay_capacity: 1_000,
        ..FakeConfig::default()
    })
    .await
    .expect("the fake listens");
    let builder = Config::builder("fake-token")
        .shards(ShardPlan::Count(1))
        .api_base(fake.api_base())
        .identify_window(Duration::from_millis(5))
        .compression(compression);
    let builder = match kind {
        "batch" => builder.batch_handler("MESSAGE_CREATE", Counter(tally).start().recipient()),
        "thread" => builder.handlers_per_thread(move |thread| {
            thread.handler("MESSAGE_CREATE", Counter(tally.clone()).start().recipient());
        }),
        _ => builder.handler("MESSAGE_CREATE", Counter(tally).start().recipient()),
    };
    let gateway = Gateway::start(builder.build().expect("config"))
        .await
        .expect("the gateway starts");
    assert!(
        fake.wait_for(Duration::from_secs(10), "shard ready", |f| f.ready_shards()
            == [0])
            .await,
        "the shard did not become ready"
    );
    (fake, gateway)
}

fn flood(c: &mut Criterion) {
    let d = serde_json::from_str::<serde_json::Value>(include_str!("corpus/message_create.json"))
        .expect("corpus")["d"]
        .to_string();
    let system = actix_rt::System::new();
    let mut group = c.benchmark_group("flood");
    group
        .throughput(Throughput::Elements(EVENTS as u64))
        .sample_size(10)
        .warm_up_time(Duration::from_secs(1))
        .measurement_time(Duration::from_secs(5));
    for (name, compression) in compressions() {
        for kind in ["each", "batch", "thread"] {
            let tally = Arc::new(Tally {
                count: AtomicUsize::new(0),
                target: AtomicUsize::new(usize::MAX),
                reached: Notify::new(),
            });
            let (fake, gateway) = system.block_on(start(kind, compression, tally.clone()));
            group.bench_function(BenchmarkId::new(kind, name), |b| {
                b.iter_custom(|iters| {
                    system.block_on(async {
                        let mut total = Duration::ZERO;
                        for _ in 0..iters {
                            let target = tally.count.load(Ordering::Acquire) + EVENTS;
                            tally.target.store(target, Ordering::Release);
                            let started = Instant::now();
                            fake.flood(0, "MESSAGE_CREATE", &d, EVENTS)
                                .expect("a live session");
                            while tally.count.load(Ordering::Acquire) < target {
                                let wait = tally.reached.notified();
                                if tally.count.load(Ordering::Acquire) >= target {
                                    break;
                                }
                                actix_rt::time::timeout(Duration::from_secs(60), wait)
                                    .await
                                    .expect("the flood arrives");
                            }
                            total += started.elapsed();
                        }
                        total
                    })
                });
            });
            system.block_on(async {
                gateway.shutdown(false).await;
                fake.stop().await;
            });
        }
    }
    group.finish();
}

criterion_group!(benches, flood);
criterion_main!(benches);
