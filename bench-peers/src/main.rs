//! shardline beside twilight-gateway 0.18, in the same run, against the same fake gateway (in its own
//! process), printing the ratio shardline / twilight.
//!
//! ```text
//! cargo run -p shardline-bench-peers --release                      # no transport compression
//! cargo run -p shardline-bench-peers --release --features zlib      # zlib-stream
//! cargo run -p shardline-bench-peers --release --features zstd      # zstd-stream
//! PEERS_SECTIONS=prescan,flood,scale PEERS_FLOOD_EVENTS=200000 PEERS_FLOOD_SHARDS=1,16 PEERS_SCALE_SHARDS=1000,10000 PEERS_IDLE_SECS=60 PEERS_REPEATS=5
//! PEERS_FLOOD_CLIENTS=shardline-view,twilight-typed   # a subset of the flood's clients
//! ```
//! twilight picks its compression when it is compiled, so one build compares one compression.
//! `prescan`: reading op/s/t of each corpus frame, shardline's prescan against twilight's.
//! `flood`: twilight's raw messages (`Stream::next`) and its typed events (`next_event`), against
//! shardline delivering to a counting handler actor, per event (`shardline`), per event a burst at
//! a time (`shardline-bursts`: `handles_bursts!`), in batches (`shardline-batch`) and per event to a counter on each shard thread (`shardline-thread`); and
//! the typed path: the same three handlers reading the content, author and channel of every
//! MESSAGE_CREATE through shardline's lean view (`shardline-view`, `shardline-batch-view`,
//! `shardline-thread-view`), against twilight's typed events, whose handler reads the same fields.
//! `scale`: idle shards, memory per shard, idle CPU.

#[path = "../../benches/common/mod.rs"]
mod common;

use std::io::Write;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use futures_util::StreamExt as _;

use twilight_gateway::queue::Queue;
use twilight_gateway::{
    ConfigBuilder, EventTypeFlags, Intents, Message, Shard, ShardId, StreamExt as _,
};

const COMPRESSION: &str = if cfg!(feature = "zstd") {
    "zstd-stream"
} else if cfg!(feature = "zlib") {
    "zlib-stream"
} else {
    "none"
};

fn main() {
    let args: Vec<String> = std::env::args().collect();
    if let Some(i) = args.iter().position(|a| a == "--serve") {
        // --serve <port> <flood|scale> <args…>
        let rest = &args[i + 1..];
        let mut serve_args = vec![rest[0].clone()];
        serve_args.extend_from_slice(&rest[2..]);
        return match rest[1].as_str() {
            "flood" => common::flood::serve(&serve_args),
            _ => common::scale::serve(&serve_args),
        };
    }
    if let Some(i) = args.iter().position(|a| a == "--client") {
        let rest = &args[i + 1..];
        return match (rest[0].as_str(), rest[1].as_str()) {
            ("shardline", "flood") => common::flood::client(&rest[2..]),
            ("shardline-bursts", "flood") => {
                let mut args = rest[2..].to_vec();
                args.push("bursts".into());
                common::flood::client(&args)
            }
            ("shardline-batch", "flood") => {
                let mut args = rest[2..].to_vec();
                args.push("batch".into());
                common::flood::client(&args)
            }
            ("shardline-thread", "flood") => {
                let mut args = rest[2..].to_vec();
                args.push("thread".into());
                common::flood::client(&args)
            }
            (
                view @ ("shardline-view" | "shardline-batch-view" | "shardline-thread-view"),
                "flood",
            ) => {
                let mut args = rest[2..].to_vec();
                args.push(view.trim_start_matches("shardline-").into());
                common::flood::client(&args)
            }
            ("shardline", "scale") => common::scale::client(&rest[2..]),
            ("twilight-raw", "flood") => twilight_flood(&rest[2..], false),
            ("twilight-typed", "flood") => twilight_flood(&rest[2..], true),
            ("twilight", "scale") => twilight_scale(&rest[2..]),
            other => panic!("unknown client {other:?}"),
        };
    }
    let sections = common::env_list("PEERS_SECTIONS", "prescan,flood,scale");
    if sections.iter().any(|s| s == "prescan") {
        prescan();
    }
    let repeats: usize = env_num("PEERS_REPEATS", 5);
    let mut lines = Vec::new();

    let flood_shards = if sections.iter().any(|s| s == "flood") {
        common::env_list("PEERS_FLOOD_SHARDS", "1,16")
    } else {
        Vec::new()
    };
    let scale_shards = if sections.iter().any(|s| s == "scale") {
        common::env_list("PEERS_SCALE_SHARDS", "1000,10000")
    } else {
        Vec::new()
    };
    if flood_shards.is_empty() && scale_shards.is_empty() {
        return;
    }
    println!("flood, {COMPRESSION}: events/s, median of {repeats} interleaved runs (min-max); p99 latency in ms");
    let events: usize = env_num("PEERS_FLOOD_EVENTS", 200_000);
    for shards in flood_shards {
        let n: usize = shards.parse().expect("shards");
        let per_shard = (events / n).to_string();
        const ALL: [&str; 9] = [
            "shardline",
            "shardline-bursts",
            "shardline-batch",
            "shardline-thread",
            "twilight-raw",
            "twilight-typed",
            "shardline-view",
            "shardline-batch-view",
            "shardline-thread-view",
        ];
        let chosen = common::env_list("PEERS_FLOOD_CLIENTS", &ALL.join(","));
        let clients: Vec<&str> = ALL
            .into_iter()
            .filter(|c| chosen.iter().any(|x| x == c))
            .collect();
        // Repeats are interleaved (every client once, then again), so a drift in the machine's
        // speed during the run lands on every client alike.
        let mut rates = vec![Vec::new(); clients.len()];
        let mut p99s = vec![Vec::new(); clients.len()];
        // The client process's CPU time per event (start-up and connect included, alike for all).
        let mut cpus = vec![Vec::new(); clients.len()];
        for _ in 0..repeats {
            for (i, client) in clients.iter().enumerate() {
                let fake = common::FakeProcess::start(&[
                    "flood".into(),
                    shards.clone(),
                    per_shard.clone(),
                ]);
                if let Some(v) = run(&[
                    client,
                    "flood",
                    &shards,
                    COMPRESSION,
                    &per_shard,
                    &fake.gateway_url(),
                ]) {
                    rates[i].push(v["events_per_sec"].as_f64().unwrap_or(0.0));
                    p99s[i].push(v["p99_ms"].as_f64().unwrap_or(0.0));
                    let events = v["events"].as_f64().unwrap_or(0.0);
                    let cpu = v["cpu_s"].as_f64().unwrap_or(0.0);
                    if events > 0.0 && cpu > 0.0 {
                        cpus[i].push(cpu / events * 1e6);
                    }
                    lines.push(v.to_string());
                }
            }
        }
        let mut medians = Vec::new();
        for (i, client) in clients.iter().enumerate() {
            if rates[i].is_empty() {
                medians.push(0.0);
                continue;
            }
            let (m, lo, hi) = common::median(&mut rates[i]);
            let (p99, _, _) = common::median(&mut p99s[i]);
            // twilight's typed stream filters the probes out, so it has no latency figure.
            let p99 = if p99 > 0.0 {
                format!("{p99:.1}")
            } else {
                "-".to_owned()
            };
            let cpu = if cpus[i].is_empty() {
                "-".to_owned()
            } else {
                format!("{:.2}", common::median(&mut cpus[i]).0)
            };
            println!("  {shards:>5} shards  {client:<15} {m:>9.0} ({lo:.0}-{hi:.0})  p99 {p99}  cpu µs/event {cpu}");
            medians.push(m);
        }
        let median = |name: &str| {
            clients
                .iter()
                .position(|c| *c == name)
                .map_or(0.0, |i| medians[i])
        };
        let (raw, typed) = (median("twilight-raw"), median("twilight-typed"));
        for name in [
            "shardline",
            "shardline-bursts",
            "shardline-batch",
            "shardline-thread",
        ] {
            if median(name) > 0.0 && raw > 0.0 && typed > 0.0 {
                println!(
                    "  {shards:>5} shards  ratio {name} / twilight raw = {:.2}, / twilight typed = {:.2}",
                    median(name) / raw,
                    median(name) / typed
                );
            } else if median(name) > 0.0 && raw > 0.0 {
                println!(
                    "  {shards:>5} shards  ratio {name} / twilight raw = {:.2}",
                    median(name) / raw
                );
            }
        }
        // The typed path: both handlers read content, author and channel of every message.
        for name in [
            "shardline-view",
            "shardline-batch-view",
            "shardline-thread-view",
        ] {
            if median(name) > 0.0 && typed > 0.0 {
                println!(
                    "  {shards:>5} shards  ratio {name} / twilight typed = {:.2}",
                    median(name) / typed
                );
            }
        }
    }

    let idle = env_num("PEERS_IDLE_SECS", 60usize).to_string();
    println!(
        "scale, {COMPRESSION}: KiB per idle shard, time to all READY, idle CPU (% of one core)"
    );
    for shards in scale_shards {
        let mut kib = Vec::new();
        for client in ["shardline", "twilight"] {
            let fake = common::FakeProcess::start(&["scale".into(), shards.clone()]);
            match run(&[
                client,
                "scale",
                &shards,
                COMPRESSION,
                &idle,
                &fake.gateway_url(),
            ]) {
                Some(v) => {
                    println!(
                        "  {shards:>5} shards  {client:<10} {:>7.1} KiB  ready {:>5.1}s  idle CPU {:>5.2}%  reconnects {}",
                        v["kib_per_shard"].as_f64().unwrap_or(0.0),
                        v["ready_secs"].as_f64().unwrap_or(0.0),
                        v["idle_cpu_percent"].as_f64().unwrap_or(0.0),
                        v["reconnects"]
                    );
                    kib.push(v["kib_per_shard"].as_f64().unwrap_or(0.0));
                    lines.push(v.to_string());
                }
                None => kib.push(0.0),
            }
        }
        if kib[1] > 0.0 {
            println!(
                "  {shards:>5} shards  ratio shardline / twilight memory = {:.2}",
                kib[0] / kib[1]
            );
        }
    }
    let _ = std::fs::create_dir_all("target/bench-results");
    if let Ok(mut f) =
        std::fs::File::create(format!("target/bench-results/peers-{COMPRESSION}.jsonl"))
    {
        for line in lines {
            let _ = writeln!(f, "{line}");
        }
    }
}

/// The corpus frames, as in `benches/parse.rs`.
const CORPUS: [(&str, &str); 5] = [
    (
        "message_create",
        include_str!("../../benches/corpus/message_create.json"),
    ),
    (
        "typing_start",
        include_str!("../../benches/corpus/typing_start.json"),
    ),
    (
        "presence_update",
        include_str!("../../benches/corpus/presence_update.json"),
    ),
    (
        "guild_create",
        include_str!("../../benches/corpus/guild_create.json"),
    ),
    (
        "heartbeat_ack",
        include_str!("../../benches/corpus/heartbeat_ack.json"),
    ),
];

/// Calls per sample so that one sample of `f` takes about 20 ms.
fn calibrate(mut f: impl FnMut()) -> u64 {
    let mut iters = 1u64;
    loop {
        let t = Instant::now();
        for _ in 0..iters {
            f();
        }
        if t.elapsed() > Duration::from_millis(20) {
            return iters;
        }
        iters *= 2;
    }
}

/// Nanoseconds per call of `f`, one sample.
fn sample(iters: u64, mut f: impl FnMut()) -> f64 {
    let t = Instant::now();
    for _ in 0..iters {
        f();
    }
    t.elapsed().as_nanos() as f64 / iters as f64
}

/// Median nanoseconds per call of `a` and of `b` over 21 samples each, taken in turns (a, b, a, b…)
/// after a warm-up, so that the machine's drift lands on both alike.
fn time_pair_ns(mut a: impl FnMut(), mut b: impl FnMut()) -> (f64, f64) {
    let (ia, ib) = (calibrate(&mut a), calibrate(&mut b));
    let (mut sa, mut sb) = (Vec::new(), Vec::new());
    for _ in 0..21 {
        sa.push(sample(ia, &mut a));
        sb.push(sample(ib, &mut b));
    }
    (common::median(&mut sa).0, common::median(&mut sb).0)
}

/// Reading the envelope (op, s, t) of each corpus frame: shardline's prescan against twilight's
/// (`GatewayEventDeserializer::from_json`, what twilight runs on every frame before deciding whether
/// the event is wanted).
fn prescan() {
    use std::hint::black_box;
    use twilight_model::gateway::event::GatewayEventDeserializer;
    println!(
        "prescan: ns per frame, median of 21 samples taken in turns (events/s); ratio = twilight time / shardline time"
    );
    let mut lines = Vec::new();
    for (name, frame) in CORPUS {
        let ours = shardline::protocol::Envelope::parse(frame.as_bytes()).expect("envelope");
        let theirs = GatewayEventDeserializer::from_json(frame).expect("twilight envelope");
        assert_eq!((ours.op, ours.seq), (theirs.op(), theirs.sequence()));
        let (shardline_ns, twilight_ns) = time_pair_ns(
            || {
                let _ = black_box(
                    shardline::protocol::Envelope::parse(black_box(frame.as_bytes()))
                        .map(|e| (e.op, e.seq, e.event)),
                );
            },
            || {
                let _ = black_box(
                    GatewayEventDeserializer::from_json(black_box(frame))
                        .map(|d| (d.op(), d.sequence(), d.event_type().map(str::len))),
                );
            },
        );
        println!(
            "  {name:<16} shardline {shardline_ns:>7.1} ns ({:>5.1} M/s)  twilight {twilight_ns:>7.1} ns ({:>5.1} M/s)  ratio {:.2}",
            1e3 / shardline_ns,
            1e3 / twilight_ns,
            twilight_ns / shardline_ns
        );
        lines.push(
            serde_json::json!({
                "bench": "prescan",
                "frame": name,
                "bytes": frame.len(),
                "shardline_ns": shardline_ns,
                "twilight_ns": twilight_ns,
            })
            .to_string(),
        );
    }
    let _ = std::fs::create_dir_all("target/bench-results");
    if let Ok(mut f) = std::fs::File::create("target/bench-results/prescan.jsonl") {
        for line in lines {
            let _ = writeln!(f, "{line}");
        }
    }
}

fn env_num<T: std::str::FromStr>(name: &str, default: T) -> T {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

/// Runs one client process and returns its result line.
fn run(args: &[&str]) -> Option<serde_json::Value> {
    let output = std::process::Command::new(std::env::current_exe().ok()?)
        .arg("--client")
        .args(args)
        .output()
        .ok()?;
    let line = String::from_utf8_lossy(&output.stdout)
        .lines()
        .find(|l| l.starts_with('{'))
        .map(str::to_owned);
    if line.is_none() {
        eprintln!(
            "{args:?} failed: {}",
            String::from_utf8_lossy(&output.stderr)
        );
    }
    serde_json::from_str(&line?).ok()
}

/// Grants every identify at once. Identify pacing is relaxed for both libraries (shardline runs with
/// a 5 ms window and a bucket per shard); twilight's `InMemoryQueue` releases buckets on a fixed
/// 5 s tick, which would stagger the shards' starts by 5 s and measure the queue, not the gateway.
#[derive(Debug, Clone, Copy)]
struct Immediate;

impl Queue for Immediate {
    fn enqueue(&self, _shard: u32) -> tokio::sync::oneshot::Receiver<()> {
        let (tx, rx) = tokio::sync::oneshot::channel();
        let _ = tx.send(());
        rx
    }
}

fn shards(n: u32, url: &str) -> Vec<Shard<Immediate>> {
    let queue = Immediate;
    let config = ConfigBuilder::new(
        "fake-token".to_owned(),
        Intents::GUILDS | Intents::GUILD_MESSAGES,
    )
    .proxy_url(url.to_owned())
    .queue(queue)
    .build();
    (0..n)
        .map(|id| Shard::with_config(ShardId::new(id, n), config.clone()))
        .collect()
}

/// `<shards> <compression> <events per shard> <url>`: counts MESSAGE_CREATEs across all shards.
fn twilight_flood(args: &[String], typed: bool) {
    let n: u32 = args[0].parse().expect("shards");
    let per_shard: usize = args[2].parse().expect("events");
    let url = args[3].clone();
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime");
    runtime.block_on(async move {
        let total = per_shard * n as usize;
        let count = Arc::new(AtomicUsize::new(0));
        let (done_tx, mut done_rx) =
            tokio::sync::mpsc::unbounded_channel::<(Instant, Instant, Vec<u64>)>();
        for mut shard in shards(n, &url) {
            let (count, done_tx) = (count.clone(), done_tx.clone());
            tokio::spawn(async move {
                let mut first = None;
                let mut latencies = Vec::new();
                let mut mine = 0;
                while mine < per_shard {
                    if typed {
                        match shard.next_event(EventTypeFlags::MESSAGE_CREATE).await {
                            Some(Ok(twilight_gateway::Event::MessageCreate(m))) => {
                                // What the typed-view handler reads, read here too.
                                std::hint::black_box((&*m.content, m.author.id, m.channel_id));
                            }
                            Some(_) => continue,
                            None => return,
                        }
                    } else {
                        match shard.next().await {
                            Some(Ok(Message::Text(text))) => {
                                if text.starts_with(r#"{"t":"LATENCY_PROBE""#) {
                                    latencies.extend(probe_latency(&text));
                                    continue;
                                }
                                if !text.starts_with(r#"{"t":"MESSAGE_CREATE""#) {
                                    continue;
                                }
                            }
                            Some(_) => continue,
                            None => return,
                        }
                    }
                    first.get_or_insert_with(Instant::now);
                    mine += 1;
                    count.fetch_add(1, Ordering::Relaxed);
                }
                let _ = done_tx.send((
                    first.unwrap_or_else(Instant::now),
                    Instant::now(),
                    latencies,
                ));
                // Keep the shard alive (heartbeats) until the process exits.
                while shard.next().await.is_some() {}
            });
        }
        let (mut first, mut last, mut latencies) = (None::<Instant>, None::<Instant>, Vec::new());
        for _ in 0..n {
            let (f, l, lat) = tokio::time::timeout(Duration::from_secs(300), done_rx.recv())
                .await
                .expect("flood in time")
                .expect("shard");
            first = Some(first.map_or(f, |x| x.min(f)));
            last = Some(last.map_or(l, |x| x.max(l)));
            latencies.extend(lat);
        }
        let elapsed = last.zip(first).map_or(Duration::ZERO, |(l, f)| l - f);
        latencies.sort_unstable();
        let pct = |p: f64| {
            latencies
                .get(((latencies.len() as f64 - 1.0) * p) as usize)
                .map_or(0.0, |&ns| ns as f64 / 1e6)
        };
        let result = serde_json::json!({
            "bench": "flood",
            "library": if typed { "twilight-typed" } else { "twilight-raw" },
            "shards": n,
            "compression": COMPRESSION,
            "events": total,
            "events_per_sec": total as f64 / elapsed.as_secs_f64(),
            "p50_ms": pct(0.5),
            "p99_ms": pct(0.99),
            // Measured as the shardline clients measure it (their threads' schedstat).
            "cpu_s": common::flood::cpu_seconds(),
        });
        println!("{result}");
        std::process::exit(0);
    });
}

fn probe_latency(text: &str) -> Option<u64> {
    let start = text.find(r#""sent_ns":"#)? + 10;
    let digits: String = text[start..]
        .chars()
        .take_while(char::is_ascii_digit)
        .collect();
    let sent: u64 = digits.parse().ok()?;
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .ok()?
        .as_nanos() as u64;
    Some(now.saturating_sub(sent))
}

/// `<shards> <compression> <idle secs> <url>`: idle shards, as `benches/scale.rs` measures shardline.
fn twilight_scale(args: &[String]) {
    let n: u32 = args[0].parse().expect("shards");
    let idle = Duration::from_secs(args[2].parse().expect("idle secs"));
    let url = args[3].clone();
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime");
    runtime.block_on(async move {
        let rss0 = common::rss_bytes();
        let ready = Arc::new(AtomicUsize::new(0));
        let sessions = Arc::new(AtomicUsize::new(0));
        let started = Instant::now();
        for mut shard in shards(n, &url) {
            let (ready, sessions) = (ready.clone(), sessions.clone());
            tokio::spawn(async move {
                let mut seen_ready = false;
                while let Some(item) = shard.next().await {
                    if let Ok(Message::Text(text)) = item {
                        if text.starts_with(r#"{"t":"READY""#)
                            || text.starts_with(r#"{"t":"RESUMED""#)
                        {
                            sessions.fetch_add(1, Ordering::Relaxed);
                            if !seen_ready {
                                seen_ready = true;
                                ready.fetch_add(1, Ordering::Relaxed);
                            }
                        }
                    }
                }
            });
        }
        while ready.load(Ordering::Relaxed) < n as usize {
            assert!(
                started.elapsed() < Duration::from_secs(600),
                "not all ready"
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        let ready_secs = started.elapsed().as_secs_f64();
        tokio::time::sleep(Duration::from_secs(3)).await;
        let rss1 = common::rss_bytes();
        let cpu0 = common::cpu_time();
        let t0 = Instant::now();
        tokio::time::sleep(idle).await;
        let idle_cpu =
            (common::cpu_time() - cpu0).as_secs_f64() / t0.elapsed().as_secs_f64() * 100.0;
        let result = serde_json::json!({
            "bench": "scale",
            "library": "twilight",
            "shards": n,
            "compression": COMPRESSION,
            "kib_per_shard": rss1.saturating_sub(rss0) as f64 / 1024.0 / n as f64,
            "ready_secs": ready_secs,
            "idle_cpu_percent": idle_cpu,
            "idle_secs": idle.as_secs(),
            "reconnects": sessions.load(Ordering::Relaxed).saturating_sub(n as usize),
        });
        println!("{result}");
        std::process::exit(0);
    });
}
