//! `route`: one dispatch to 1, 4 and 16 handler actors, measured from the first send until every
//! handler has counted every event. The handlers share one arbiter (thread) and the sender has the
//! other core, as on a 2-core machine a bot would place them; `Router::route` sends with `do_send`.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use actix::prelude::*;
use bytes::Bytes;
use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};
use shardline::{Dispatch, Router};

const BATCH: usize = 10_000;

struct Counter(Arc<AtomicUsize>);

impl Actor for Counter {
    type Context = Context<Self>;
    fn started(&mut self, ctx: &mut Context<Self>) {
        ctx.set_mailbox_capacity(1024);
    }
}

impl Handler<Dispatch> for Counter {
    type Result = ();
    fn handle(&mut self, _: Dispatch, _: &mut Context<Self>) {
        self.0.fetch_add(1, Ordering::Relaxed);
    }
}

fn route(c: &mut Criterion) {
    let frame = Bytes::from_static(include_bytes!("corpus/message_create.json"));
    let dispatch = Dispatch::from_frame(0, frame).expect("a dispatch");
    let system = actix_rt::System::new();
    let mut group = c.benchmark_group("route");
    group.throughput(Throughput::Elements(BATCH as u64));
    for handlers in [1usize, 4, 16] {
        let count = Arc::new(AtomicUsize::new(0));
        let arbiter = Arbiter::new();
        let recipients: Vec<_> = system.block_on(async {
            (0..handlers)
                .map(|_| {
                    let count = count.clone();
                    Counter::start_in_arbiter(&arbiter.handle(), move |_| Counter(count))
                        .recipient()
                })
                .collect()
        });
        let router = Router::new(recipients.iter().map(|r| ("MESSAGE_CREATE", r.clone())), []);
        group.bench_function(BenchmarkId::new("do_send", handlers), |b| {
            b.iter_custom(|iters| {
                let mut total = Duration::ZERO;
                for _ in 0..iters {
                    count.store(0, Ordering::Relaxed);
                    let start = Instant::now();
                    for _ in 0..BATCH {
                        router.route(dispatch.clone());
                    }
                    while count.load(Ordering::Relaxed) < BATCH * handlers {
                        std::thread::yield_now();
                    }
                    total += start.elapsed();
                }
                total
            })
        });
        arbiter.stop();
    }
    group.finish();
}

criterion_group!(benches, route);
criterion_main!(benches);
