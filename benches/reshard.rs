//! `reshard`: time to reshard a running bot from N to 2N shards under a steady flood, against the
//! bound the identify rate sets, and the process's memory and CPU while both sets run.
//!
//! ```text
//! cargo bench --features testkit --bench reshard
//! RESHARD_SHARDS=16,64,256 RESHARD_WINDOW_MS=200 RESHARD_RATE=2000 cargo bench ... --bench reshard
//! ```
//! The fake gateway runs in this process (guilds assigned by the formula, 4 per new shard,
//! `max_concurrency` 16, an identify window of `RESHARD_WINDOW_MS` instead of Discord's 5 s), so
//! the memory and CPU figures include it: compare the columns of one row with each other. The
//! bound: the new set's 2N Identifies take `ceil(2N / 16) - 1` windows after the first.

#[path = "common/mod.rs"]
mod common;

use std::cell::Cell;
use std::rc::Rc;
use std::time::{Duration, Instant};

use actix::prelude::*;
use shardline::testkit::{FakeConfig, FakeGateway};
use shardline::{Compression, Config, Dispatch, Gateway, Intents, ShardPlan};

const MAX_CONCURRENCY: u32 = 16;

/// Counts the messages handlers receive.
struct Counter(Rc<Cell<u64>>);

impl Actor for Counter {
    type Context = Context<Self>;
    fn started(&mut self, ctx: &mut Context<Self>) {
        ctx.set_mailbox_capacity(1_000_000);
    }
}

impl Handler<Dispatch> for Counter {
    type Result = ();
    fn handle(&mut self, d: Dispatch, _: &mut Context<Self>) {
        if d.event() == "MESSAGE_CREATE" {
            self.0.set(self.0.get() + 1);
        }
    }
}

struct Row {
    shards: u32,
    to_cut: Duration,
    took: Duration,
    bound: Duration,
    rss_before: u64,
    rss_peak: u64,
    cpu_one_set: f64,
    cpu_overlap: f64,
    sent: u64,
    delivered: u64,
}

async fn run(n: u32, window: Duration, rate: u64) -> Row {
    let new_total = 2 * n;
    let fake_config = FakeConfig {
        shards: n,
        max_concurrency: MAX_CONCURRENCY,
        identify_window: window,
        heartbeat_interval: Duration::from_secs(5),
        guilds: 4 * new_total,
        ..FakeConfig::default()
    };
    let fake = FakeGateway::start(fake_config).await.expect("fake starts");
    let delivered = Rc::new(Cell::new(0));
    // The counter lives on this thread (its count is an Rc): only the shards run on arbiters.
    let counter = Counter(delivered.clone()).start();
    let config = Config::builder("fake-token")
        .intents(Intents::GUILDS | Intents::GUILD_MESSAGES)
        .shards(ShardPlan::Count(n))
        .api_base(fake.api_base())
        .gateway_url(fake.gateway_url())
        .max_concurrency(MAX_CONCURRENCY)
        .identify_window(window)
        .compression(Compression::None)
        .arbiters(2)
        .handler_all(counter.recipient())
        .build()
        .expect("config");
    let gateway = Gateway::start(config).await.expect("gateway starts");
    let ready = fake
        .wait_for(Duration::from_secs(600), "old set ready", |f| {
            f.ready_shards().len() == n as usize
        })
        .await;
    assert!(ready, "the old set became ready");
    let guilds = fake.guild_ids();
    let sent = Rc::new(Cell::new(0u64));
    let stop = Rc::new(Cell::new(false));
    let flood = {
        let (fake, sent, stop) = (fake.clone(), sent.clone(), stop.clone());
        actix_rt::spawn(async move {
            let per_tick = (rate / 100).max(1);
            while !stop.get() {
                for _ in 0..per_tick {
                    let i = sent.get();
                    let g = guilds[i as usize % guilds.len()];
                    let d = format!(
                        r#"{{"id":"{}","channel_id":"{}","guild_id":"{g}","content":"m","nonce":"{i}"}}"#,
                        1_300_000_000_000_000_000u64 + i,
                        5000 + i as usize % guilds.len()
                    );
                    fake.dispatch_guild_raw(g, "MESSAGE_CREATE", &d);
                    sent.set(i + 1);
                }
                actix_rt::time::sleep(Duration::from_millis(10)).await;
            }
        })
    };
    // One set under the flood, for a baseline.
    let (c0, t0) = (common::cpu_time(), Instant::now());
    actix_rt::time::sleep(Duration::from_secs(2)).await;
    let cpu_one_set = (common::cpu_time() - c0).as_secs_f64() / t0.elapsed().as_secs_f64();
    let rss_before = common::rss_bytes();
    let peak = Rc::new(Cell::new(rss_before));
    let sampling = Rc::new(Cell::new(true));
    let sampler = {
        let (peak, sampling) = (peak.clone(), sampling.clone());
        actix_rt::spawn(async move {
            while sampling.get() {
                peak.set(peak.get().max(common::rss_bytes()));
                actix_rt::time::sleep(Duration::from_millis(20)).await;
            }
        })
    };
    let (c1, t1) = (common::cpu_time(), Instant::now());
    let report = gateway.reshard(new_total).await.expect("reshard");
    let cpu_overlap = (common::cpu_time() - c1).as_secs_f64() / t1.elapsed().as_secs_f64();
    sampling.set(false);
    let _ = sampler.await;
    actix_rt::time::sleep(Duration::from_millis(500)).await;
    stop.set(true);
    let _ = flood.await;
    let deadline = Instant::now() + Duration::from_secs(30);
    while delivered.get() < sent.get() && Instant::now() < deadline {
        actix_rt::time::sleep(Duration::from_millis(20)).await;
    }
    actix_rt::time::sleep(Duration::from_millis(200)).await;
    let windows = new_total.div_ceil(MAX_CONCURRENCY).saturating_sub(1);
    let row = Row {
        shards: n,
        to_cut: report.to_cut,
        took: report.took,
        bound: window * windows,
        rss_before,
        rss_peak: peak.get(),
        cpu_one_set,
        cpu_overlap,
        sent: sent.get(),
        delivered: delivered.get(),
    };
    gateway.shutdown(false).await;
    fake.stop().await;
    row
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    if args.iter().any(|a| a == "--test" || a == "--list") {
        return;
    }
    let shards: Vec<u32> = common::env_list("RESHARD_SHARDS", "16,64,256")
        .iter()
        .map(|s| s.parse().expect("a shard count"))
        .collect();
    let window = Duration::from_millis(
        std::env::var("RESHARD_WINDOW_MS")
            .ok()
            .and_then(|v| v.parse().ok())
            .unwrap_or(200),
    );
    let rate: u64 = std::env::var("RESHARD_RATE")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(2000);
    println!(
        "{:>11} {:>9} {:>9} {:>9} {:>8} {:>10} {:>10} {:>9} {:>9} {:>16}",
        "shards",
        "bound",
        "to cut",
        "total",
        "/bound",
        "RSS before",
        "RSS peak",
        "CPU 1 set",
        "CPU both",
        "delivered/sent"
    );
    for n in shards {
        let row = actix_rt::System::new().block_on(run(n, window, rate));
        println!(
            "{:>11} {:>8.2}s {:>8.2}s {:>8.2}s {:>8.2} {:>8.1}MiB {:>8.1}MiB {:>8.0}% {:>8.0}% {:>16}",
            format!("{} → {}", row.shards, 2 * row.shards),
            row.bound.as_secs_f64(),
            row.to_cut.as_secs_f64(),
            row.took.as_secs_f64(),
            row.took.as_secs_f64() / row.bound.as_secs_f64().max(f64::EPSILON),
            row.rss_before as f64 / (1 << 20) as f64,
            row.rss_peak as f64 / (1 << 20) as f64,
            row.cpu_one_set * 100.0,
            row.cpu_overlap * 100.0,
            format!("{}/{}", row.delivered, row.sent),
        );
    }
}
