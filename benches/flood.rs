//! `flood`: end to end over loopback, from the fake gateway in a separate process to a counting
//! handler actor (per-event `each`, a `batch` handler, and a per-event handler per shard `thread`):
//! events/s, and p50/p99 latency from the fake's send to the handler's receive.
//!
//! ```text
//! cargo bench --features testkit,zstd --bench flood
//! FLOOD_EVENTS=200000 FLOOD_SHARDS=1,16 FLOOD_COMPRESSION=none,zlib-stream,zstd-stream FLOOD_REPEATS=3 cargo bench ... --bench flood
//! FLOOD_METRICS=off,on cargo bench --features testkit,metrics --bench flood   # the cost of metrics
//! FLOOD_HANDLERS=batch,thread ...                                              # some handler kinds only
//! FLOOD_HANDLERS=each,bursts ...      # `bursts`: the per-event counter taking bursts (`handles_bursts!`)
//! ```
//! With `FLOOD_METRICS=off,on` each repeat runs both, one after the other, so that both see the
//! same machine; the last columns are the client's CPU time per event and, per repeat pair, on/off
//! of events/s and of CPU per event (medians).
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
        "{:>6} {:>12} {:>8} {:>7} {:>22} {:>8} {:>8} {:>8} {:>10} {:>10}",
        "shards",
        "compression",
        "handler",
        "metrics",
        "events/s (min-max)",
        "p50 ms",
        "p99 ms",
        "cpu µs/ev",
        "rate÷off",
        "cpu÷off"
    );
    let handlers = common::env_list("FLOOD_HANDLERS", "each,batch,thread");
    for shards in common::env_list("FLOOD_SHARDS", "1,16") {
        for (compression, mode) in common::env_list("FLOOD_COMPRESSION", default_compression)
            .into_iter()
            .flat_map(|c| handlers.iter().map(move |h| (c.clone(), h.as_str())))
        {
            let n: usize = shards.parse().expect("shard count");
            let per_shard = events / n;
            // Per variant: (events/s, p50, p99, CPU µs per event) of each repeat, `None` where the
            // run failed.
            let mut runs: Vec<Vec<Option<Run>>> = vec![Vec::new(); variants.len()];
            for _ in 0..repeats {
                for (variant, runs) in variants.iter().zip(&mut runs) {
                    let run = run_once(&shards, &compression, per_shard, mode, variant);
                    runs.push(run.as_ref().map(|(r, _)| *r));
                    lines.extend(run.map(|(_, line)| line));
                }
            }
            let off = variants.iter().position(|v| v == "off");
            for (variant, results) in variants.iter().zip(&runs) {
                let ok: Vec<Run> = results.iter().flatten().copied().collect();
                if ok.is_empty() {
                    continue;
                }
                let (rate, lo, hi) =
                    common::median(&mut ok.iter().map(|r| r.0).collect::<Vec<f64>>());
                let (p50, _, _) = common::median(&mut ok.iter().map(|r| r.1).collect::<Vec<f64>>());
                let (p99, _, _) = common::median(&mut ok.iter().map(|r| r.2).collect::<Vec<f64>>());
                let (cpu, _, _) = common::median(&mut ok.iter().map(|r| r.3).collect::<Vec<f64>>());
                // The ratio of each repeat's pair (run back to back), then their median.
                let ratio = |of: fn(&Run) -> f64| {
                    let mut ratios: Vec<f64> = off
                        .map(|off| {
                            results
                                .iter()
                                .zip(&runs[off])
                                .filter_map(|(x, o)| Some(of(x.as_ref()?) / of(o.as_ref()?)))
                                .collect()
                        })
                        .unwrap_or_default();
                    if ratios.is_empty() {
                        String::new()
                    } else {
                        format!("{:.3}", common::median(&mut ratios).0)
                    }
                };
                println!(
                    "{:>6} {:>12} {:>8} {:>7} {:>9.0} ({:.0}-{:.0}) {:>8.2} {:>8.2} {:>8.3} {:>10} {:>10}",
                    shards,
                    compression,
                    mode,
                    variant,
                    rate,
                    lo,
                    hi,
                    p50,
                    p99,
                    cpu,
                    ratio(|r| r.0),
                    ratio(|r| r.3)
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

/// events/s, p50 ms, p99 ms, client CPU µs per event.
type Run = (f64, f64, f64, f64);

/// One client process against a fresh fake process: its figures and its result line.
fn run_once(
    shards: &str,
    compression: &str,
    per_shard: usize,
    mode: &str,
    variant: &str,
) -> Option<(Run, String)> {
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
    let cpu_us_per_event = f("cpu_s") * 1e6 / f("events").max(1.0);
    Some((
        (
            f("events_per_sec"),
            f("p50_ms"),
            f("p99_ms"),
            cpu_us_per_event,
        ),
        line,
    ))
}
