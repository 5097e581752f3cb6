//! `flood`: end to end over loopback, from the fake gateway in a separate process to a counting
//! handler actor (per-event `each`, a `batch` handler, and a per-event handler per shard `thread`):
//! events/s, and p50/p99 latency from the fake's send to the handler's receive.
//!
//! ```text
//! cargo bench --features testkit,zstd --bench flood
//! FLOOD_EVENTS=200000 FLOOD_SHARDS=1,16 FLOOD_COMPRESSION=none,zlib-stream,zstd-stream FLOOD_REPEATS=3 cargo bench ... --bench flood
//! FLOOD_METRICS=off,on cargo bench --features testkit,metrics --bench flood   # the cost of metrics
//! ```
//! With `FLOOD_METRICS=off,on` each repeat runs both, one after the other, so that both see the
//! same machine; the last column is the median of on/off over the repeats.
//! The events are the corpus MESSAGE_CREATE (2.6 KB), split evenly over the shards; every 1000th
//! event is followed by a `LATENCY_PROBE` carrying the fake's send time. Each run is a fresh client
//! process; results also go to `target/bench-results/flood.jsonl`.

#[path = "common/mod.rs"]
mod common;

use std::io::Write;

use common::flood::{client_with, serve};

fn main() {
    let args: Vec<String> = std::env::args().collect();
    if let Some(i) = args.iter().position(|a| a == "--serve") {
        return serve(&args[i + 1..]);
    }
    if let Some(i) = args.iter().position(|a| a == "--client") {
        let args = &args[i + 1..];
        return match args.get(5).map(String::as_str) {
            #[cfg(feature = "metrics")]
            Some("metrics") => client_with(args, "metrics", |c| {
                c.metrics(shardline::metrics::Metrics::default())
            }),
            Some(other) => panic!("unknown variant {other} (metrics need the metrics feature)"),
            None => client_with(args, "", |c| c),
        };
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
    let variants = common::env_list("FLOOD_METRICS", "off");
    let mut lines = Vec::new();
    println!(
        "{:>6} {:>12} {:>8} {:>7} {:>22} {:>10} {:>10} {:>8}",
        "shards",
        "compression",
        "handler",
        "metrics",
        "events/s (min-max)",
        "p50 ms",
        "p99 ms",
        "vs off"
    );
    for shards in common::env_list("FLOOD_SHARDS", "1,16") {
        for (compression, mode) in common::env_list("FLOOD_COMPRESSION", default_compression)
            .into_iter()
            .flat_map(|c| [(c.clone(), "each"), (c.clone(), "batch"), (c, "thread")])
        {
            let n: usize = shards.parse().expect("shard count");
            let per_shard = events / n;
            // Per variant: (events/s, p50, p99) of each repeat, `None` where the run failed.
            let mut runs: Vec<Vec<Option<(f64, f64, f64)>>> = vec![Vec::new(); variants.len()];
            for _ in 0..repeats {
                for (variant, runs) in variants.iter().zip(&mut runs) {
                    let run = run_once(&shards, &compression, per_shard, mode, variant);
                    runs.push(run.as_ref().map(|(r, _)| *r));
                    lines.extend(run.map(|(_, line)| line));
                }
            }
            let off = variants.iter().position(|v| v == "off");
            for (variant, results) in variants.iter().zip(&runs) {
                let ok: Vec<(f64, f64, f64)> = results.iter().flatten().copied().collect();
                if ok.is_empty() {
                    continue;
                }
                let (rate, lo, hi) =
                    common::median(&mut ok.iter().map(|r| r.0).collect::<Vec<f64>>());
                let (p50, _, _) = common::median(&mut ok.iter().map(|r| r.1).collect::<Vec<f64>>());
                let (p99, _, _) = common::median(&mut ok.iter().map(|r| r.2).collect::<Vec<f64>>());
                // The ratio of each repeat's pair (run back to back), then their median.
                let mut ratios: Vec<f64> = off
                    .map(|off| {
                        results
                            .iter()
                            .zip(&runs[off])
                            .filter_map(|(x, o)| Some(x.as_ref()?.0 / o.as_ref()?.0))
                            .collect()
                    })
                    .unwrap_or_default();
                let ratio = if ratios.is_empty() {
                    String::new()
                } else {
                    format!("{:.3}", common::median(&mut ratios).0)
                };
                println!(
                    "{:>6} {:>12} {:>8} {:>7} {:>9.0} ({:.0}-{:.0}) {:>10.2} {:>10.2} {:>8}",
                    shards, compression, mode, variant, rate, lo, hi, p50, p99, ratio
                );
            }
        }
    }
    let _ = std::fs::create_dir_all("target/bench-results");
    if let Ok(mut f) = std::fs::File::create("target/bench-results/flood.jsonl") {
        for line in lines {
            let _ = writeln!(f, "{line}");
        }
    }
}

/// One client process against a fresh fake process: (events/s, p50 ms, p99 ms) and its result line.
fn run_once(
    shards: &str,
    compression: &str,
    per_shard: usize,
    mode: &str,
    variant: &str,
) -> Option<((f64, f64, f64), String)> {
    let fake = common::FakeProcess::start(&[shards.to_owned(), per_shard.to_string()]);
    let mut command = std::process::Command::new(std::env::current_exe().expect("own path"));
    command.args([
        "--client",
        shards,
        compression,
        &per_shard.to_string(),
        &fake.gateway_url(),
        mode,
    ]);
    if variant == "on" {
        command.arg("metrics");
    }
    let output = command.output().expect("client runs");
    let Some(line) = String::from_utf8_lossy(&output.stdout)
        .lines()
        .find(|l| l.starts_with('{'))
        .map(str::to_owned)
    else {
        eprintln!(
            "{shards} shards {compression} metrics {variant}: client failed: {}",
            String::from_utf8_lossy(&output.stderr)
        );
        return None;
    };
    let v: serde_json::Value = serde_json::from_str(&line).expect("result");
    let f = |key: &str| v[key].as_f64().unwrap_or(0.0);
    Some(((f("events_per_sec"), f("p50_ms"), f("p99_ms")), line))
}
