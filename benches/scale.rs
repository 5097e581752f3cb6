//! `scale`: many idle shards in one process — memory per shard (RSS), time until all are READY, idle
//! CPU, and heartbeat ACKs missed (reconnects) over the idle period.
//!
//! ```text
//! cargo bench --features testkit,zstd --bench scale
//! SCALE_SHARDS=1000,10000 SCALE_IDLE_SECS=60 SCALE_COMPRESSION=none,zlib-stream,zstd-stream cargo bench ... --bench scale
//! ```
//! Each configuration runs in a fresh client process (RSS starts clean) against the fake gateway in
//! another process. The shards receive a READY and two small GUILD_CREATEs each, then idle with
//! Discord's 41.25 s heartbeat. Results also go to `target/bench-results/scale.jsonl`.

#[path = "common/mod.rs"]
mod common;

use std::io::Write;
use std::time::{Duration, Instant};

use shardline::testkit::{FakeConfig, FakeGateway};
use shardline::{Compression, Config, Gateway, ShardPlan};

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
        // `cargo test --benches` / criterion's test mode: nothing to smoke-test cheaply here.
        return;
    }
    let shards = env_list("SCALE_SHARDS", "1000,10000");
    let compressions = env_list("SCALE_COMPRESSION", "none,zlib-stream");
    let idle = std::env::var("SCALE_IDLE_SECS").unwrap_or_else(|_| "30".into());
    let mut results = Vec::new();
    println!("{:>7} {:>12} {:>14} {:>12} {:>14} {:>11}", "shards", "compression", "KiB/shard", "ready in", "idle CPU", "reconnects");
    for n in &shards {
        for compression in &compressions {
            let fake = common::FakeProcess::start(&[n.clone()]);
            let output = std::process::Command::new(std::env::current_exe().expect("own path"))
                .args(["--client", n, compression, &idle, &fake.gateway_url()])
                .output()
                .expect("client process runs");
            let line = String::from_utf8_lossy(&output.stdout).lines().find(|l| l.starts_with('{')).map(str::to_owned);
            let Some(line) = line else {
                eprintln!("{n} shards, {compression}: client failed: {}", String::from_utf8_lossy(&output.stderr));
                continue;
            };
            let v: serde_json::Value = serde_json::from_str(&line).expect("client result");
            println!(
                "{:>7} {:>12} {:>14.1} {:>11.1}s {:>13.2}% {:>11}",
                n,
                compression,
                v["kib_per_shard"].as_f64().unwrap_or(0.0),
                v["ready_secs"].as_f64().unwrap_or(0.0),
                v["idle_cpu_percent"].as_f64().unwrap_or(0.0),
                v["reconnects"]
            );
            results.push(line);
        }
    }
    let _ = std::fs::create_dir_all("target/bench-results");
    if let Ok(mut f) = std::fs::File::create("target/bench-results/scale.jsonl") {
        for line in results {
            let _ = writeln!(f, "{line}");
        }
    }
}

/// The fake gateway process: `--serve <port> <shards>`.
fn serve(args: &[String]) {
    let port: u16 = args[0].parse().expect("port");
    let shards: u32 = args.get(1).and_then(|s| s.parse().ok()).unwrap_or(1);
    actix_rt::System::new().block_on(async move {
        let config = FakeConfig {
            shards,
            // Identify pacing relaxed: every shard its own bucket, a short window.
            max_concurrency: shards,
            identify_window: Duration::from_millis(5),
            command_limit: (120, Duration::from_secs(60)),
            guilds_per_shard: 2,
            replay_capacity: 1_000,
            ..FakeConfig::default()
        };
        let _fake = FakeGateway::start_on(config, port).await.expect("listens");
        std::future::pending::<()>().await;
    });
}

/// One measured configuration: `--client <shards> <compression> <idle secs> <gateway url>`.
fn client(args: &[String]) {
    let n: u32 = args[0].parse().expect("shard count");
    let compression = match args[1].as_str() {
        "none" => Compression::None,
        "zlib-stream" => Compression::ZlibStream,
        #[cfg(feature = "zstd")]
        "zstd-stream" => Compression::ZstdStream,
        other => panic!("unknown compression {other}"),
    };
    let idle = Duration::from_secs(args[2].parse().expect("idle seconds"));
    let url = args[3].clone();
    actix_rt::System::new().block_on(async move {
        let rss0 = common::rss_bytes();
        let config = Config::builder("fake-token")
            .shards(ShardPlan::Count(n))
            .gateway_url(url)
            .max_concurrency(n)
            .identify_window(Duration::from_millis(5))
            .compression(compression)
            .build()
            .expect("config");
        let started = Instant::now();
        let gateway = Gateway::start(config).await.expect("starts");
        loop {
            let p = gateway.progress().await.expect("progress");
            if p.ready == p.total {
                break;
            }
            assert!(started.elapsed() < Duration::from_secs(600), "not all ready: {p:?}");
            actix_rt::time::sleep(Duration::from_millis(100)).await;
        }
        let ready = started.elapsed();
        // Let the GUILD_CREATEs arrive and the buffers settle.
        actix_rt::time::sleep(Duration::from_secs(3)).await;
        let rss1 = common::rss_bytes();
        let cpu0 = common::cpu_time();
        let t0 = Instant::now();
        actix_rt::time::sleep(idle).await;
        let cpu = common::cpu_time() - cpu0;
        let idle_cpu = cpu.as_secs_f64() / t0.elapsed().as_secs_f64() * 100.0;
        let status = gateway.status().await;
        let reconnects: u32 = status.iter().map(|s| s.reconnects).sum();
        let result = serde_json::json!({
            "bench": "scale",
            "library": "shardline",
            "shards": n,
            "compression": args[1],
            "kib_per_shard": (rss1.saturating_sub(rss0)) as f64 / 1024.0 / n as f64,
            "ready_secs": ready.as_secs_f64(),
            "idle_cpu_percent": idle_cpu,
            "idle_secs": idle.as_secs(),
            "reconnects": reconnects,
        });
        println!("{result}");
        std::process::exit(0);
    });
}
