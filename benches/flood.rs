//! `flood`: end to end over loopback, from the fake gateway in a separate process to a counting
//! handler actor — events/s, and p50/p99 latency from the fake's send to the handler's receive.
//!
//! ```text
//! cargo bench --features testkit,zstd --bench flood
//! FLOOD_EVENTS=200000 FLOOD_SHARDS=1,16 FLOOD_COMPRESSION=none,zlib-stream,zstd-stream FLOOD_REPEATS=3 cargo bench ... --bench flood
//! ```
//! The events are the corpus MESSAGE_CREATE (2.6 KB), split evenly over the shards; every 1000th
//! event is followed by a `LATENCY_PROBE` carrying the fake's send time. Each run is a fresh client
//! process; results also go to `target/bench-results/flood.jsonl`.

#[path = "common/mod.rs"]
mod common;

use std::io::Write;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use actix::prelude::*;
use shardline::testkit::{FakeConfig, FakeGateway, Flood};
use shardline::{Compression, Config, Dispatch, Gateway, ShardPlan};

const MESSAGE: &str = include_str!("corpus/message_create.json");
const PROBE_EVERY: usize = 1000;

fn env_list(name: &str, default: &str) -> Vec<String> {
    std::env::var(name).unwrap_or_else(|_| default.to_owned()).split(',').map(|s| s.trim().to_owned()).filter(|s| !s.is_empty()).collect()
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    if let Some(i) = args.iter().position(|a| a == "--serve") {
        return serve(&args[i + 1..]);
    }
    if let Some(i) = args.iter().position(|a| a == "--client") {
        return client(&args[i + 1..]);
    }
    if args.iter().any(|a| a == "--test" || a == "--list") {
        return;
    }
    let events: usize = std::env::var("FLOOD_EVENTS").ok().and_then(|v| v.parse().ok()).unwrap_or(200_000);
    let repeats: usize = std::env::var("FLOOD_REPEATS").ok().and_then(|v| v.parse().ok()).unwrap_or(3);
    let default_compression = if cfg!(feature = "zstd") { "none,zlib-stream,zstd-stream" } else { "none,zlib-stream" };
    let mut lines = Vec::new();
    println!("{:>6} {:>12} {:>22} {:>10} {:>10}", "shards", "compression", "events/s (min-max)", "p50 ms", "p99 ms");
    for shards in env_list("FLOOD_SHARDS", "1,16") {
        for compression in env_list("FLOOD_COMPRESSION", default_compression) {
            let n: usize = shards.parse().expect("shard count");
            let per_shard = events / n;
            let mut rates = Vec::new();
            let mut p50s = Vec::new();
            let mut p99s = Vec::new();
            for _ in 0..repeats {
                let fake = common::FakeProcess::start(&[shards.clone(), per_shard.to_string()]);
                let output = std::process::Command::new(std::env::current_exe().expect("own path"))
                    .args(["--client", &shards, &compression, &per_shard.to_string(), &fake.gateway_url()])
                    .output()
                    .expect("client runs");
                let Some(line) = String::from_utf8_lossy(&output.stdout).lines().find(|l| l.starts_with('{')).map(str::to_owned) else {
                    eprintln!("{shards} shards {compression}: client failed: {}", String::from_utf8_lossy(&output.stderr));
                    continue;
                };
                let v: serde_json::Value = serde_json::from_str(&line).expect("result");
                rates.push(v["events_per_sec"].as_f64().unwrap_or(0.0));
                p50s.push(v["p50_ms"].as_f64().unwrap_or(0.0));
                p99s.push(v["p99_ms"].as_f64().unwrap_or(0.0));
                lines.push(line);
            }
            if rates.is_empty() {
                continue;
            }
            let (rate, lo, hi) = common::median(&mut rates);
            let (p50, _, _) = common::median(&mut p50s);
            let (p99, _, _) = common::median(&mut p99s);
            println!("{:>6} {:>12} {:>9.0} ({:.0}-{:.0}) {:>10.2} {:>10.2}", shards, compression, rate, lo, hi, p50, p99);
        }
    }
    let _ = std::fs::create_dir_all("target/bench-results");
    if let Ok(mut f) = std::fs::File::create("target/bench-results/flood.jsonl") {
        for line in lines {
            let _ = writeln!(f, "{line}");
        }
    }
}

/// The fake gateway process: `--serve <port> <shards> <events per shard>`.
fn serve(args: &[String]) {
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
            flood_on_ready: Some(Flood { event: "MESSAGE_CREATE".into(), d, count, probe_every: PROBE_EVERY }),
            ..FakeConfig::default()
        };
        let _fake = FakeGateway::start_on(config, port).await.expect("listens");
        std::future::pending::<()>().await;
    });
}

/// Counts messages and collects probe latencies.
struct Counter {
    expected: usize,
    count: usize,
    first: Option<Instant>,
    latencies_ns: Vec<u64>,
    done: Option<tokio::sync::oneshot::Sender<(Duration, Vec<u64>)>>,
}

impl Actor for Counter {
    type Context = Context<Self>;
    fn started(&mut self, ctx: &mut Context<Self>) {
        ctx.set_mailbox_capacity(4096);
    }
}

impl Handler<Dispatch> for Counter {
    type Result = ();
    fn handle(&mut self, d: Dispatch, _: &mut Context<Self>) {
        match d.event() {
            "MESSAGE_CREATE" => {
                let now = Instant::now();
                self.first.get_or_insert(now);
                self.count += 1;
                if self.count == self.expected {
                    if let (Some(done), Some(first)) = (self.done.take(), self.first) {
                        let _ = done.send((now - first, std::mem::take(&mut self.latencies_ns)));
                    }
                }
            }
            "LATENCY_PROBE" => {
                #[derive(serde::Deserialize)]
                struct Probe {
                    sent_ns: u64,
                }
                if let Ok(p) = d.parse::<Probe>() {
                    let now = SystemTime::now().duration_since(UNIX_EPOCH).unwrap_or_default().as_nanos() as u64;
                    self.latencies_ns.push(now.saturating_sub(p.sent_ns));
                }
            }
            _ => {}
        }
    }
}

/// One run: `--client <shards> <compression> <events per shard> <gateway url>`.
fn client(args: &[String]) {
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
    actix_rt::System::new().block_on(async move {
        let (tx, rx) = tokio::sync::oneshot::channel();
        let counter = Counter { expected: per_shard * n as usize, count: 0, first: None, latencies_ns: Vec::new(), done: Some(tx) }.start();
        let config = Config::builder("fake-token")
            .shards(ShardPlan::Count(n))
            .gateway_url(url)
            .max_concurrency(n)
            .identify_window(Duration::from_millis(5))
            .compression(compression)
            .handler("MESSAGE_CREATE", counter.clone().recipient())
            .handler("LATENCY_PROBE", counter.recipient())
            .build()
            .expect("config");
        let gateway = Gateway::start(config).await.expect("starts");
        let (elapsed, mut latencies) = actix_rt::time::timeout(Duration::from_secs(300), rx).await.expect("flood finished in time").expect("counter");
        latencies.sort_unstable();
        let pct = |p: f64| latencies.get(((latencies.len() as f64 - 1.0) * p) as usize).map_or(0.0, |&ns| ns as f64 / 1e6);
        let total = per_shard * n as usize;
        let result = serde_json::json!({
            "bench": "flood",
            "library": "shardline",
            "shards": n,
            "compression": args[1],
            "events": total,
            "events_per_sec": total as f64 / elapsed.as_secs_f64(),
            "p50_ms": pct(0.5),
            "p99_ms": pct(0.99),
        });
        println!("{result}");
        drop(gateway);
        std::process::exit(0);
    });
}
