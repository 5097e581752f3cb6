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

use common::scale::{client, serve};

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
    let shards = common::env_list("SCALE_SHARDS", "1000,10000");
    let compressions = common::env_list("SCALE_COMPRESSION", "none,zlib-stream");
    let idle = std::env::var("SCALE_IDLE_SECS").unwrap_or_else(|_| "30".into());
    let mut results = Vec::new();
    println!(
        "{:>7} {:>12} {:>14} {:>12} {:>14} {:>11}",
        "shards", "compression", "KiB/shard", "ready in", "idle CPU", "reconnects"
    );
    for n in &shards {
        for compression in &compressions {
            let fake = common::FakeProcess::start(std::slice::from_ref(n));
            let output = std::process::Command::new(std::env::current_exe().expect("own path"))
                .args(["--client", n, compression, &idle, &fake.gateway_url()])
                .output()
                .expect("client process runs");
            let line = String::from_utf8_lossy(&output.stdout)
                .lines()
                .find(|l| l.starts_with('{'))
                .map(str::to_owned);
            let Some(line) = line else {
                eprintln!(
                    "{n} shards, {compression}: client failed: {}",
                    String::from_utf8_lossy(&output.stderr)
                );
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
