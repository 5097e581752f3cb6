//! `flood`: end to end over loopback, from the fake gateway in a separate process to a counting
//! handler actor (per-event `each`, a `batch` handler, and a per-event handler per shard `thread`):
//! events/s, and p50/p99 latency from the fake's send to the handler's receive.
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

use common::flood::{client, serve};

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
    let events: usize = std::env::var("FLOOD_EVENTS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(200_000);
    let repeats: usize = std::env::var("FLOOD_REPEATS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(3);
    let default_compression = if cfg!(feature = "zstd") {
        "none,zlib-stream,zstd-stream"
    } else {
        "none,zlib-stream"
    };
    let mut lines = Vec::new();
    println!(
        "{:>6} {:>12} {:>8} {:>22} {:>10} {:>10}",
        "shards", "compression", "handler", "events/s (min-max)", "p50 ms", "p99 ms"
    );
    for shards in common::env_list("FLOOD_SHARDS", "1,16") {
        for (compression, mode) in common::env_list("FLOOD_COMPRESSION", default_compression)
            .into_iter()
            .flat_map(|c| [(c.clone(), "each"), (c.clone(), "batch"), (c, "thread")])
        {
            let n: usize = shards.parse().expect("shard count");
            let per_shard = events / n;
            let mut rates = Vec::new();
            let mut p50s = Vec::new();
            let mut p99s = Vec::new();
            for _ in 0..repeats {
                let fake = common::FakeProcess::start(&[shards.clone(), per_shard.to_string()]);
                let output = std::process::Command::new(std::env::current_exe().expect("own path"))
                    .args([
                        "--client",
                        &shards,
                        &compression,
                        &per_shard.to_string(),
                        &fake.gateway_url(),
                        mode,
                    ])
                    .output()
                    .expect("client runs");
                let Some(line) = String::from_utf8_lossy(&output.stdout)
                    .lines()
                    .find(|l| l.starts_with('{'))
                    .map(str::to_owned)
                else {
                    eprintln!(
                        "{shards} shards {compression}: client failed: {}",
                        String::from_utf8_lossy(&output.stderr)
                    );
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
            println!(
                "{:>6} {:>12} {:>8} {:>9.0} ({:.0}-{:.0}) {:>10.2} {:>10.2}",
                shards, compression, mode, rate, lo, hi, p50, p99
            );
        }
    }
    let _ = std::fs::create_dir_all("target/bench-results");
    if let Ok(mut f) = std::fs::File::create("target/bench-results/flood.jsonl") {
        for line in lines {
            let _ = writeln!(f, "{line}");
        }
    }
}
