//! `fleet`: what running a bot as a fleet through Redis costs (feature `redis`), against a real
//! `redis-server` and the fake gateway, printed as tables.
//!
//! ```text
//! cargo build --release --example fleet --features redis      # the fleet processes of (a)
//! cargo bench --features redis,testkit --bench fleet
//! FLEET_SECTIONS=failover,store,stream FLEET_SHARDS=6 FLEET_LEASES_MS=1000,3000 FLEET_KILLS=5 \
//! FLEET_FLOOD_EVENTS=200000 FLEET_FLOOD_SHARDS=1,16 FLEET_FLOOD_HANDLERS=thread,batch \
//! FLEET_STREAM_EVENTS=100000 FLEET_REPEATS=5 cargo bench --features redis,testkit --bench fleet
//! ```
//!
//! - **failover**: three `fleet gateway` processes (`examples/fleet.rs`, found next to this bench
//!   binary in `target/release/examples/`, or at `FLEET_EXAMPLE`) share `FLEET_SHARDS` shards of the
//!   fake gateway (in this process). `FLEET_KILLS` times: `kill -9` one process and time until every
//!   shard it held has been RESUMED by a survivor (the survivors' JSON lines, read as they are
//!   printed), split at the moment the new owner's connection reached the fake: kill → connected
//!   (the lease running out, the next keeper tick, the claim, the session read) and connected →
//!   RESUMED (handshake, Hello, Resume, replay); then start a process again and wait until the fleet
//!   is balanced (each process holds its share, every shard READY or RESUMED).
//! - **store**: the `flood` bench's run (fake in one process, bot in another, corpus MESSAGE_CREATE
//!   as fast as the bot reads) with the in-memory session store (`Gateway::start`) and with the
//!   Redis one (`Gateway::start_fleet`: Redis session store, lease, identify queue), taking turns;
//!   Redis's `INFO commandstats` before and after each run counts the commands a run sent, and
//!   each process's CPU time per event is printed (the bot's from its first READY). Before the
//!   floods, `SessionStore::set_seq` (the store's one call per event) is timed on both stores.
//! - **stream**: the same flood published to the fleet's event stream (`start_fleet` with
//!   `stream_events`) and consumed by one worker process (`StreamConsumer`), beside the flood to an
//!   in-process batch handler. Into Redis: the events over the span of the stream entries' ids (the
//!   time Redis appended them); out to the worker: the events over the time from the first append
//!   to the worker's last handled event. At most 100 000 events (the stream's default length
//!   bound), so that no entry is trimmed before the worker reads it.
//! - **handover** and **restart** (not in the default sections: `FLEET_SECTIONS=handover,restart`):
//!   three `fleet gateway` processes over `FLEET_HANDOVER_SHARDS` (7) shards. handover:
//!   `FLEET_HANDOVERS` times, SIGTERM one process and time until every shard it held has been
//!   RESUMED by the other two (and until it exited), then start a new one. restart:
//!   `FLEET_RESTARTS` times, SIGTERM all three, wait until they exited, start three new ones and
//!   time until every shard has been RESUMED by them.
//! - **scale** (not in the default sections: `FLEET_SECTIONS=scale`): one process (in this one)
//!   joins a fleet of `FLEET_SCALE_SHARDS` (2 000) shards with the default 10 s lease: the time
//!   until it holds every lease (the claims), until every shard is READY (bounded by the fake's
//!   identify buckets and the handshakes in flight, not by the fleet), and, from
//!   `shutdown(true)` (what SIGTERM does in the fleet example), until every shard is closed
//!   resumably, its session written and its lease released.
//!
//! Raw results go to `target/bench-results/fleet.jsonl`.

#[path = "common/mod.rs"]
mod common;
#[path = "../tests/fleet/redis_server.rs"]
#[allow(dead_code)]
mod redis_server;

use std::collections::{BTreeMap, BTreeSet};
use std::io::{BufRead, BufReader, Write};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use actix::prelude::*;
use serde_json::{json, Value};
use shardline::fleet::sessions::SessionStoreOptions;
use shardline::fleet::stream::StreamConsumer;
use shardline::fleet::RedisSessionStore;
use shardline::fleet::{FleetOptions, FleetRedis, Placement};
use shardline::testkit::{FakeConfig, FakeGateway};
use shardline::{
    Compression, Config, DispatchBatch, Gateway, MemorySessionStore, SessionInfo, SessionStore,
    ShardPlan,
};

use common::flood::{Counter, Tally};
use redis_server::RedisServer;

fn env_num(name: &str, default: u64) -> u64 {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    if let Some(i) = args.iter().position(|a| a == "--serve") {
        return common::flood::serve(&args[i + 1..]);
    }
    if let Some(i) = args.iter().position(|a| a == "--client") {
        return client(&args[i + 1..]);
    }
    if let Some(i) = args.iter().position(|a| a == "--worker") {
        return worker(&args[i + 1..]);
    }
    if args.iter().any(|a| a == "--test" || a == "--list") {
        return;
    }
    let mut results = Vec::new();
    for section in common::env_list("FLEET_SECTIONS", "failover,store,stream") {
        match section.as_str() {
            "failover" => failover(&mut results),
            "store" => store(&mut results),
            "stream" => stream(&mut results),
            "scale" => scale(&mut results),
            "handover" => handover(&mut results),
            "restart" => restart(&mut results),
            other => eprintln!(
                "unknown section {other:?} (failover, store, stream, scale, handover, restart)"
            ),
        }
    }
    let _ = std::fs::create_dir_all("target/bench-results");
    if let Ok(mut f) = std::fs::File::create("target/bench-results/fleet.jsonl") {
        for line in results {
            let _ = writeln!(f, "{line}");
        }
    }
}

// ---------------------------------------------------------------------------------------------
// scale: one process taking thousands of shards, and handing them over

fn scale(results: &mut Vec<String>) {
    let shards = env_num("FLEET_SCALE_SHARDS", 2000) as u32;
    let lease = Duration::from_secs(10);
    println!(
        "scale: one process claims {shards} shards (lease {lease:?}), then shuts down resumably"
    );
    let system = actix_rt::System::new();
    let (claimed, ready, handed) = system.block_on(async move {
        // The ready/shutdown lines are printed as they come: a run that stalls shows where.
        let redis = RedisServer::start();
        let fake = FakeGateway::start(FakeConfig {
            shards,
            max_concurrency: 64,
            heartbeat_interval: Duration::from_secs(30),
            identify_window: Duration::from_millis(100),
            session_start_limit: shardline::testkit::SessionStartLimit {
                total: 10_000,
                remaining: 10_000,
                reset_after: 86_400_000,
            },
            ..FakeConfig::default()
        })
        .await
        .expect("the fake gateway starts");
        let config = Config::builder("fake-token")
            .shards(ShardPlan::Count(shards))
            .api_base(fake.api_base())
            .gateway_url(fake.gateway_url())
            .max_concurrency(64)
            .identify_window(Duration::from_millis(150))
            .compression(Compression::None)
            .build()
            .expect("config");
        let options = FleetOptions::new(redis.url())
            .prefix("shardline:scale")
            .owner("a")
            .lease_time(lease);
        let start = Instant::now();
        let gateway = Gateway::start_fleet(config, options, Vec::new())
            .await
            .expect("joins the fleet");
        let fleet = gateway.fleet().expect("a fleet member").clone();
        let held = |view: &[shardline::fleet::FleetShard]| {
            view.iter().filter(|s| s.owner.is_some()).count()
        };
        loop {
            if let Ok(view) = fleet.view().await {
                if held(&view) == shards as usize {
                    break;
                }
            }
            assert!(
                start.elapsed() < Duration::from_secs(120),
                "claims never completed"
            );
            actix_rt::time::sleep(Duration::from_millis(5)).await;
        }
        let claimed = start.elapsed();
        eprintln!("  every lease held after {claimed:?}");
        while fake.ready_shards().len() < shards as usize {
            assert!(
                start.elapsed() < Duration::from_secs(600),
                "shards never all ready"
            );
            actix_rt::time::sleep(Duration::from_millis(20)).await;
        }
        let ready = start.elapsed();
        eprintln!("  every shard READY after {ready:?}");
        let stop = Instant::now();
        gateway.shutdown(true).await;
        let handed = stop.elapsed();
        let view = fleet.view().await.expect("Redis answers");
        assert_eq!(held(&view), 0, "leases left after the hand-over");
        fake.stop().await;
        (claimed, ready, handed)
    });
    println!(
        "{:>8} {:>18} {:>18} {:>22}",
        "shards", "all claimed ms", "all READY ms", "shutdown(true) ms"
    );
    println!(
        "{:>8} {:>18.0} {:>18.0} {:>22.0}",
        shards,
        ms(claimed),
        ms(ready),
        ms(handed)
    );
    results.push(
        json!({"bench": "fleet-scale", "shards": shards, "claimed_ms": ms(claimed),
               "ready_ms": ms(ready), "handover_ms": ms(handed)})
        .to_string(),
    );
}

// ---------------------------------------------------------------------------------------------
// (a) failover

/// The example binary: `FLEET_EXAMPLE`, or `target/release/examples/fleet` beside this bench.
fn example() -> std::path::PathBuf {
    if let Ok(path) = std::env::var("FLEET_EXAMPLE") {
        return path.into();
    }
    let exe = std::env::current_exe().expect("own path");
    let path = exe
        .parent()
        .and_then(|deps| deps.parent())
        .expect("target dir")
        .join("examples")
        .join("fleet");
    assert!(
        path.exists(),
        "{} is missing: build it first with `cargo build --release --example fleet --features redis` \
         (or set FLEET_EXAMPLE)",
        path.display()
    );
    path
}

/// One `fleet gateway` process and every JSON line it printed, with the instant it was read.
struct Proc {
    child: Child,
    lines: Arc<Mutex<Vec<(Instant, Value)>>>,
}

impl Proc {
    fn gateway(
        redis: &RedisServer,
        fake: &FakeGateway,
        name: &str,
        shards: u32,
        lease_ms: u64,
    ) -> Proc {
        let mut child = Command::new(example())
            .args([
                "gateway",
                "--redis",
                &redis.url(),
                "--shards",
                &shards.to_string(),
                "--api-base",
                &fake.api_base(),
                "--compress",
                "none",
                "--lease-ms",
                &lease_ms.to_string(),
                "--owner",
                name,
                "--identify-window-ms",
                "100",
            ])
            .env("DISCORD_TOKEN", "fake-token")
            .env("RUST_LOG", "warn")
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("the fleet example runs");
        let stdout = child.stdout.take().expect("piped");
        let lines = Arc::new(Mutex::new(Vec::new()));
        let sink = lines.clone();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                if let Ok(value) = serde_json::from_str::<Value>(&line) {
                    sink.lock().expect("lines").push((Instant::now(), value));
                }
            }
        });
        Proc { child, lines }
    }

    fn lines(&self) -> Vec<(Instant, Value)> {
        self.lines.lock().expect("lines").clone()
    }

    /// The shards it holds now, and whether each has been READY or RESUMED since its last claim.
    fn held(&self) -> BTreeMap<u32, bool> {
        let mut held = BTreeMap::new();
        for (_, line) in self.lines() {
            let shard = line["shard"].as_u64().unwrap_or(0) as u32;
            match line["state"].as_str() {
                Some("claimed") => {
                    held.insert(shard, false);
                }
                Some("released" | "lost") => {
                    held.remove(&shard);
                }
                Some("ready" | "resumed") => {
                    if let Some(up) = held.get_mut(&shard) {
                        *up = true;
                    }
                }
                _ => {}
            }
        }
        held
    }

    /// When it first reported `shard` in `state` after `since`.
    fn first(&self, shard: u32, states: &[&str], since: Instant) -> Option<Instant> {
        self.lines()
            .into_iter()
            .find(|(at, l)| {
                *at >= since
                    && l["shard"].as_u64() == Some(u64::from(shard))
                    && states.iter().any(|s| l["state"] == *s)
            })
            .map(|(at, _)| at)
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Every process holds its share, and each held shard is READY or RESUMED since it was claimed.
fn balanced(procs: &[Proc], shards: u32) -> bool {
    let share = shards as usize / procs.len();
    let helds: Vec<BTreeMap<u32, bool>> = procs.iter().map(Proc::held).collect();
    let all: BTreeSet<u32> = helds.iter().flat_map(|h| h.keys().copied()).collect();
    all.len() == shards as usize
        && helds
            .iter()
            .all(|h| (share..=share + 1).contains(&h.len()) && h.values().all(|up| *up))
}

async fn wait_until(what: &str, limit: Duration, f: impl Fn() -> bool) -> Duration {
    let start = Instant::now();
    while !f() {
        assert!(start.elapsed() < limit, "timed out waiting for: {what}");
        actix_rt::time::sleep(Duration::from_millis(2)).await;
    }
    start.elapsed()
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}

fn failover(results: &mut Vec<String>) {
    let shards = env_num("FLEET_SHARDS", 6) as u32;
    let kills = env_num("FLEET_KILLS", 5) as usize;
    let leases: Vec<u64> = common::env_list("FLEET_LEASES_MS", "1000,3000")
        .iter()
        .map(|v| v.parse().expect("lease ms"))
        .collect();
    println!("failover: 3 `fleet gateway` processes, {shards} shards, kill -9 one, {kills} times per lease time");
    println!(
        "{:>8} {:>22} {:>22} {:>22} {:>10} {:>14}",
        "lease",
        "kill→all RESUMED ms",
        "kill→connected ms",
        "connected→RESUMED ms",
        "identifies",
        "rebalance ms"
    );
    println!(
        "{:>8} {:>22} {:>22} {:>22} {:>10} {:>14}",
        "", "median (max)", "median (max)", "median (max)", "", "median"
    );
    for lease_ms in leases {
        let system = actix_rt::System::new();
        let row = system.block_on(failover_runs(shards, kills, lease_ms));
        let (mut total, mut claim, mut resume, identifies, mut rebalance) = row;
        for (i, t) in total.iter().enumerate() {
            results.push(
                json!({"bench": "fleet-failover", "lease_ms": lease_ms, "shards": shards,
                       "kill": i, "failover_ms": t, "claim_ms": claim[i], "resume_ms": resume[i]})
                .to_string(),
            );
        }
        let (t, _, t_max) = common::median(&mut total);
        let (c, _, c_max) = common::median(&mut claim);
        let (r, _, r_max) = common::median(&mut resume);
        let (b, _, _) = common::median(&mut rebalance);
        println!(
            "{:>6}ms {:>13.0} ({:>5.0}) {:>13.0} ({:>5.0}) {:>13.1} ({:>5.1}) {:>10} {:>14.0}",
            lease_ms, t, t_max, c, c_max, r, r_max, identifies, b
        );
    }
}

type FailoverRow = (Vec<f64>, Vec<f64>, Vec<f64>, usize, Vec<f64>);

async fn failover_runs(shards: u32, kills: usize, lease_ms: u64) -> FailoverRow {
    let redis = RedisServer::start();
    // As in the fleet tests: the example keeps Discord's command limit (120 per 60 s, heartbeats
    // included), so heartbeats every second rather than the 41.25 s of Discord.
    let fake = FakeGateway::start(FakeConfig {
        shards,
        max_concurrency: 2,
        heartbeat_interval: Duration::from_secs(1),
        identify_window: Duration::from_millis(100),
        replay_capacity: 100_000,
        command_limit: (120, Duration::from_secs(60)),
        ..FakeConfig::default()
    })
    .await
    .expect("fake gateway starts");
    let mut next_name = 0;
    let mut name = || {
        next_name += 1;
        format!("p{next_name:02}")
    };
    let mut procs: Vec<Proc> = (0..3)
        .map(|_| Proc::gateway(&redis, &fake, &name(), shards, lease_ms))
        .collect();
    let limit = Duration::from_secs(60) + Duration::from_millis(lease_ms * 10);
    wait_until("the fleet is balanced", limit, || balanced(&procs, shards)).await;
    let (mut total, mut claim, mut resume, mut rebalance) = (vec![], vec![], vec![], vec![]);
    let mut identifies = 0;
    for k in 0..kills {
        let victim = k % procs.len();
        // At a random point of the keeper's cycle (a tick every lease/4), as a crash would be.
        let phase = rand::random::<u64>() % (lease_ms / 4).max(1);
        actix_rt::time::sleep(Duration::from_millis(phase)).await;
        let moved: Vec<u32> = procs[victim].held().into_keys().collect();
        let identified_before = fake.identifies().len();
        let killed_at = Instant::now();
        procs[victim].child.kill().expect("kill -9");
        let _ = procs[victim].child.wait();
        let survivors: Vec<usize> = (0..procs.len()).filter(|&i| i != victim).collect();
        let first = |shard: u32, states: &[&str]| {
            survivors
                .iter()
                .filter_map(|&i| procs[i].first(shard, states, killed_at))
                .min()
        };
        wait_until("every moved shard RESUMED", limit, || {
            moved
                .iter()
                .all(|&s| first(s, &["resumed", "ready"]).is_some())
        })
        .await;
        let mut last_claim = Duration::ZERO;
        let mut last_up = Duration::ZERO;
        let mut longest_resume = Duration::ZERO;
        let connections = fake.connections();
        for &s in &moved {
            // The moment the new owner's connection reached the gateway (the fake's record): what
            // comes before is the lease running out and the claim, what comes after the resume.
            let connected = connections
                .iter()
                .filter(|c| c.shard == Some(s) && c.opened_at >= killed_at)
                .map(|c| c.opened_at)
                .min()
                .expect("the new owner connected");
            let up = first(s, &["resumed", "ready"]).expect("resumed");
            last_claim = last_claim.max(connected - killed_at);
            last_up = last_up.max(up - killed_at);
            longest_resume = longest_resume.max(up.saturating_duration_since(connected));
        }
        total.push(ms(last_up));
        claim.push(ms(last_claim));
        resume.push(ms(longest_resume));
        identifies += fake.identifies().len() - identified_before;
        procs[victim] = Proc::gateway(&redis, &fake, &name(), shards, lease_ms);
        let took = wait_until("the fleet is balanced again", limit, || {
            balanced(&procs, shards)
        })
        .await;
        rebalance.push(ms(took));
    }
    drop(procs);
    fake.stop().await;
    (total, claim, resume, identifies, rebalance)
}

// ---------------------------------------------------------------------------------------------
// hand-over (SIGTERM of one process) and full restart (SIGTERM of all, then new ones)

fn sigterm(proc: &Proc) {
    let status = Command::new("kill")
        .args(["-TERM", &proc.child.id().to_string()])
        .status()
        .expect("kill runs");
    assert!(status.success(), "kill -TERM");
}

async fn exited(proc: &mut Proc, limit: Duration) -> Instant {
    let start = Instant::now();
    loop {
        if let Some(status) = proc.child.try_wait().expect("wait") {
            assert!(status.success(), "a process left with {status}");
            return Instant::now();
        }
        assert!(
            start.elapsed() < limit,
            "a process did not leave on SIGTERM"
        );
        actix_rt::time::sleep(Duration::from_millis(2)).await;
    }
}

fn leases_ms() -> Vec<u64> {
    common::env_list("FLEET_LEASES_MS", "1000,3000")
        .iter()
        .map(|v| v.parse().expect("lease ms"))
        .collect()
}

/// The fake of the process sections: heartbeats every second, as in the failover section.
async fn process_fake(shards: u32) -> FakeGateway {
    FakeGateway::start(FakeConfig {
        shards,
        max_concurrency: 2,
        heartbeat_interval: Duration::from_secs(1),
        identify_window: Duration::from_millis(100),
        replay_capacity: 100_000,
        command_limit: (120, Duration::from_secs(60)),
        ..FakeConfig::default()
    })
    .await
    .expect("fake gateway starts")
}

fn handover(results: &mut Vec<String>) {
    let shards = env_num("FLEET_HANDOVER_SHARDS", 7) as u32;
    let times = env_num("FLEET_HANDOVERS", 5) as usize;
    println!(
        "hand-over: 3 `fleet gateway` processes, {shards} shards, SIGTERM one (then a new one), {times} times per lease time"
    );
    println!(
        "{:>8} {:>24} {:>22} {:>10}",
        "lease", "SIGTERM→all RESUMED ms", "SIGTERM→exited ms", "identifies"
    );
    println!(
        "{:>8} {:>24} {:>22} {:>10}",
        "", "median (max)", "median (max)", ""
    );
    for lease_ms in leases_ms() {
        let system = actix_rt::System::new();
        let (mut moved, mut left, identifies) = system.block_on(async move {
            let redis = RedisServer::start();
            let fake = process_fake(shards).await;
            let mut next_name = 0;
            let mut name = || {
                next_name += 1;
                format!("p{next_name:02}")
            };
            let mut procs: Vec<Proc> = (0..3)
                .map(|_| Proc::gateway(&redis, &fake, &name(), shards, lease_ms))
                .collect();
            let limit = Duration::from_secs(60) + Duration::from_millis(lease_ms * 10);
            wait_until("the fleet is balanced", limit, || balanced(&procs, shards)).await;
            let (mut moved_ms, mut left_ms) = (Vec::new(), Vec::new());
            let identified = fake.identifies().len();
            for k in 0..times {
                let victim = k % procs.len();
                let phase = rand::random::<u64>() % (lease_ms / 4).max(1);
                actix_rt::time::sleep(Duration::from_millis(phase)).await;
                let moving: Vec<u32> = procs[victim].held().into_keys().collect();
                let at = Instant::now();
                sigterm(&procs[victim]);
                let gone = exited(&mut procs[victim], limit).await;
                let others: Vec<usize> = (0..procs.len()).filter(|&i| i != victim).collect();
                let first = |shard: u32| {
                    others
                        .iter()
                        .filter_map(|&i| procs[i].first(shard, &["resumed", "ready"], at))
                        .min()
                };
                wait_until("every handed-over shard RESUMED", limit, || {
                    moving.iter().all(|&s| first(s).is_some())
                })
                .await;
                let last = moving
                    .iter()
                    .filter_map(|&s| first(s))
                    .max()
                    .expect("moved");
                moved_ms.push(ms(last - at));
                left_ms.push(ms(gone - at));
                procs[victim] = Proc::gateway(&redis, &fake, &name(), shards, lease_ms);
                wait_until("the fleet is balanced again", limit, || {
                    balanced(&procs, shards)
                })
                .await;
            }
            let identifies = fake.identifies().len() - identified;
            drop(procs);
            fake.stop().await;
            (moved_ms, left_ms, identifies)
        });
        for (i, t) in moved.iter().enumerate() {
            results.push(
                json!({"bench": "fleet-handover", "lease_ms": lease_ms, "shards": shards,
                       "run": i, "resumed_ms": t, "exited_ms": left[i]})
                .to_string(),
            );
        }
        let (m, _, m_max) = common::median(&mut moved);
        let (l, _, l_max) = common::median(&mut left);
        println!(
            "{:>6}ms {:>15.0} ({:>5.0}) {:>13.0} ({:>5.0}) {:>10}",
            lease_ms, m, m_max, l, l_max, identifies
        );
    }
}

fn restart(results: &mut Vec<String>) {
    let shards = env_num("FLEET_HANDOVER_SHARDS", 7) as u32;
    let times = env_num("FLEET_RESTARTS", 5) as usize;
    println!(
        "full restart: 3 `fleet gateway` processes, {shards} shards, SIGTERM all, then 3 new ones, {times} times per lease time"
    );
    println!(
        "{:>8} {:>22} {:>24} {:>24} {:>10}",
        "lease",
        "SIGTERM→all exited ms",
        "start→all RESUMED ms",
        "SIGTERM→all RESUMED ms",
        "identifies"
    );
    println!(
        "{:>8} {:>22} {:>24} {:>24} {:>10}",
        "", "median (max)", "median (max)", "median (max)", ""
    );
    for lease_ms in leases_ms() {
        let system = actix_rt::System::new();
        let (mut left, mut up, mut total, identifies) = system.block_on(async move {
            let redis = RedisServer::start();
            let fake = process_fake(shards).await;
            let mut next_name = 0;
            let mut name = || {
                next_name += 1;
                format!("p{next_name:02}")
            };
            let mut procs: Vec<Proc> = (0..3)
                .map(|_| Proc::gateway(&redis, &fake, &name(), shards, lease_ms))
                .collect();
            let limit = Duration::from_secs(60) + Duration::from_millis(lease_ms * 10);
            wait_until("the fleet is balanced", limit, || balanced(&procs, shards)).await;
            let identified = fake.identifies().len();
            let (mut left, mut up, mut total) = (Vec::new(), Vec::new(), Vec::new());
            for _ in 0..times {
                let at = Instant::now();
                for p in &procs {
                    sigterm(p);
                }
                let mut gone = at;
                for p in &mut procs {
                    gone = gone.max(exited(p, limit).await);
                }
                let started = Instant::now();
                procs = (0..3)
                    .map(|_| Proc::gateway(&redis, &fake, &name(), shards, lease_ms))
                    .collect();
                let first = |shard: u32| {
                    procs
                        .iter()
                        .filter_map(|p| p.first(shard, &["resumed", "ready"], started))
                        .min()
                };
                wait_until("every shard RESUMED by the new processes", limit, || {
                    (0..shards).all(|s| first(s).is_some())
                })
                .await;
                let last = (0..shards).filter_map(first).max().expect("resumed");
                left.push(ms(gone - at));
                up.push(ms(last - started));
                total.push(ms(last - at));
                wait_until("the fleet is balanced again", limit, || {
                    balanced(&procs, shards)
                })
                .await;
            }
            let identifies = fake.identifies().len() - identified;
            drop(procs);
            fake.stop().await;
            (left, up, total, identifies)
        });
        for i in 0..up.len() {
            results.push(
                json!({"bench": "fleet-restart", "lease_ms": lease_ms, "shards": shards, "run": i,
                       "exited_ms": left[i], "resumed_after_start_ms": up[i], "total_ms": total[i]})
                .to_string(),
            );
        }
        let (l, _, l_max) = common::median(&mut left);
        let (u, _, u_max) = common::median(&mut up);
        let (t, _, t_max) = common::median(&mut total);
        println!(
            "{:>6}ms {:>13.0} ({:>5.0}) {:>15.0} ({:>5.0}) {:>15.0} ({:>5.0}) {:>10}",
            lease_ms, l, l_max, u, u_max, t, t_max, identifies
        );
    }
}

// ---------------------------------------------------------------------------------------------
// (b) session store and (c) stream: the flood

/// `--client <memory|redis|stream> <thread|batch> <shards> <events per shard> <gateway url>
/// <redis url> <prefix>`: the bot. `memory` and `redis` count the events and print the flood's JSON
/// line; `stream` publishes them and runs until killed.
fn client(args: &[String]) {
    let store = args[0].clone();
    let mode = args[1].clone();
    let n: u32 = args[2].parse().expect("shards");
    let per_shard: usize = args[3].parse().expect("events");
    let url = args[4].clone();
    let redis_url = args[5].clone();
    let prefix = args[6].clone();
    actix_rt::System::new().block_on(async move {
        let (tx, rx) = tokio::sync::oneshot::channel();
        let tally = Tally::new(per_shard * n as usize, tx);
        let ready_cpu = Arc::new(Mutex::new(None));
        let mut builder = Config::builder("fake-token")
            .events(ReadyCpu(ready_cpu.clone()).start().recipient())
            .shards(ShardPlan::Count(n))
            .gateway_url(url)
            .max_concurrency(n)
            .identify_window(Duration::from_millis(5))
            .compression(Compression::None);
        if store != "stream" {
            builder = match mode.as_str() {
                "thread" => builder.handlers_per_thread(move |thread| {
                    let counter = Counter(tally.clone(), false).start();
                    thread
                        .handler("MESSAGE_CREATE", counter.clone().recipient())
                        .handler("LATENCY_PROBE", counter.recipient());
                }),
                _ => {
                    let counter = Counter(tally, false).start();
                    builder
                        .batch_handler("MESSAGE_CREATE", counter.clone().recipient())
                        .batch_handler("LATENCY_PROBE", counter.recipient())
                }
            };
        }
        let config = builder.build().expect("config");
        let options = FleetOptions::new(redis_url)
            .prefix(prefix)
            .owner("bench")
            .placement(Placement::Balanced);
        let gateway = match store.as_str() {
            "memory" => Gateway::start(config).await,
            "redis" => Gateway::start_fleet(config, options, Vec::new()).await,
            _ => {
                let options = options.stream_events(["MESSAGE_CREATE"]);
                Gateway::start_fleet(config, options, Vec::new()).await
            }
        }
        .expect("starts");
        if store == "stream" {
            // The worker says when it is done; the bench then kills this process and reads its
            // CPU time, from which it takes the start-up's, printed here.
            loop {
                let at = *ready_cpu.lock().expect("cpu");
                if let Some(at) = at {
                    println!("{}", json!({"ready_cpu_ms": ms(at)}));
                    break;
                }
                actix_rt::time::sleep(Duration::from_millis(5)).await;
            }
            std::future::pending::<()>().await;
        }
        let (elapsed, _) = actix_rt::time::timeout(Duration::from_secs(300), rx)
            .await
            .expect("flood finished in time")
            .expect("counter");
        let total = per_shard * n as usize;
        println!(
            "{}",
            json!({"events": total, "events_per_sec": total as f64 / elapsed.as_secs_f64(),
                   "bot_cpu_ms": ms(common::cpu_time()),
                   "bot_flood_cpu_ms": ready_cpu.lock().expect("cpu").map(|at| ms(common::cpu_time().saturating_sub(at)))})
        );
        drop(gateway);
        std::process::exit(0);
    });
}

/// Notes this process's CPU time at the first READY: the fake floods a shard once it is READY, so
/// what the process uses after it is the flood's (the start-up is left out).
struct ReadyCpu(Arc<Mutex<Option<Duration>>>);

impl Actor for ReadyCpu {
    type Context = Context<Self>;
}

impl Handler<shardline::ShardEvent> for ReadyCpu {
    type Result = ();
    fn handle(&mut self, event: shardline::ShardEvent, _: &mut Context<Self>) {
        if matches!(event, shardline::ShardEvent::Ready { .. }) {
            self.0
                .lock()
                .expect("cpu")
                .get_or_insert_with(common::cpu_time);
        }
    }
}

/// Counts the MESSAGE_CREATEs a worker handles; prints a JSON line and exits at the last.
struct WorkerCount {
    expected: usize,
    count: usize,
    first_ns: u128,
}

fn epoch_ns() -> u128 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap_or_default()
        .as_nanos()
}

impl Actor for WorkerCount {
    type Context = Context<Self>;
}

impl Handler<DispatchBatch> for WorkerCount {
    type Result = ();
    fn handle(&mut self, batch: DispatchBatch, _: &mut Context<Self>) {
        if self.count == 0 {
            self.first_ns = epoch_ns();
        }
        self.count += batch.events().len();
        if self.count >= self.expected {
            let last_ns = epoch_ns();
            println!(
                "{}",
                json!({"handled": self.count, "first_ns": self.first_ns as u64, "last_ns": last_ns as u64,
                       "cpu_ms": ms(common::cpu_time())})
            );
            std::process::exit(0);
        }
    }
}

/// `--worker <redis url> <prefix> <expected events>`: one worker with a counting batch handler.
fn worker(args: &[String]) {
    let redis_url = args[0].clone();
    let prefix = args[1].clone();
    let expected: usize = args[2].parse().expect("events");
    actix_rt::System::new().block_on(async move {
        let redis = FleetRedis::connect(&redis_url, &prefix)
            .await
            .expect("redis");
        let counter = WorkerCount {
            expected,
            count: 0,
            first_ns: 0,
        }
        .start();
        let _consumer = StreamConsumer::builder(redis, "workers", "worker-1")
            .batch_handler("MESSAGE_CREATE", counter.recipient())
            .start()
            .expect("consumer");
        actix_rt::time::sleep(Duration::from_secs(300)).await;
        eprintln!("worker: timed out");
        std::process::exit(1);
    });
}

/// `INFO commandstats` as command → (calls, µs Redis spent in them). Commands that scripts call
/// are counted too (a session write is an `evalsha` plus its `hset` and `pexpire`).
fn command_stats(conn: &mut redis::Connection) -> BTreeMap<String, (u64, u64)> {
    let info: String = redis::cmd("INFO")
        .arg("commandstats")
        .query(conn)
        .expect("INFO");
    info.lines()
        .filter_map(|l| {
            let (name, rest) = l.strip_prefix("cmdstat_")?.split_once(':')?;
            let field = |key: &str| -> Option<u64> {
                rest.split(',')
                    .find_map(|kv| kv.strip_prefix(key)?.strip_prefix('='))?
                    .parse()
                    .ok()
            };
            Some((name.to_owned(), (field("calls")?, field("usec")?)))
        })
        .collect()
}

/// The CPU time (user + system) the Redis server has used: what the run cost Redis, networking
/// included. (`commandstats`'s times count a command inside `MULTI` or a script twice.)
fn redis_cpu(conn: &mut redis::Connection) -> Duration {
    let info: String = redis::cmd("INFO").arg("cpu").query(conn).expect("INFO");
    let secs: f64 = info
        .lines()
        .filter_map(|l| {
            let (name, value) = l.split_once(':')?;
            matches!(name, "used_cpu_user" | "used_cpu_sys")
                .then(|| value.trim().parse::<f64>().ok())
                .flatten()
        })
        .sum();
    Duration::from_secs_f64(secs)
}

/// Commands sent between two snapshots, without the bench's own (INFO, FLUSHALL, and the reads
/// of the stream's length and ends).
fn commands_between(
    before: &BTreeMap<String, (u64, u64)>,
    after: &BTreeMap<String, (u64, u64)>,
) -> BTreeMap<String, (u64, u64)> {
    after
        .iter()
        .filter(|(name, _)| {
            !matches!(
                name.as_str(),
                "info" | "flushall" | "xlen" | "xrange" | "xrevrange"
            )
        })
        .map(|(name, (calls, usec))| {
            let (c0, u0) = before.get(name).copied().unwrap_or((0, 0));
            (name.clone(), (calls - c0, usec - u0))
        })
        .filter(|(_, (calls, _))| *calls > 0)
        .collect()
}

/// One flood run of the bot with `store`; the worker too for `stream`. Answers the JSON result.
fn flood_run(
    redis: &RedisServer,
    conn: &mut redis::Connection,
    run: usize,
    store: &str,
    mode: &str,
    shards: u32,
    per_shard: usize,
) -> Option<Value> {
    let _: () = redis::cmd("FLUSHALL").query(conn).expect("FLUSHALL");
    let prefix = format!("bench{run}");
    let total = per_shard * shards as usize;
    let before = command_stats(conn);
    let cpu_before = redis_cpu(conn);
    let fake = common::FakeProcess::start(&[shards.to_string(), per_shard.to_string()]);
    let client_args = |store: &str| {
        vec![
            "--client".to_owned(),
            store.to_owned(),
            mode.to_owned(),
            shards.to_string(),
            per_shard.to_string(),
            fake.gateway_url(),
            redis.url(),
            prefix.clone(),
        ]
    };
    let own = std::env::current_exe().expect("own path");
    let mut result: Value = if store == "stream" {
        let worker = Command::new(&own)
            .args(["--worker", &redis.url(), &prefix, &total.to_string()])
            .stdout(Stdio::piped())
            .spawn()
            .expect("worker runs");
        let mut client = Command::new(&own)
            .args(client_args(store))
            .stdout(Stdio::piped())
            .spawn()
            .expect("client runs");
        let output = worker.wait_with_output().expect("worker ends");
        let client_cpu = common::cpu_time_of(&client.id().to_string());
        let _ = client.kill();
        let ready_cpu = client.wait_with_output().ok().and_then(|o| {
            let line = String::from_utf8_lossy(&o.stdout)
                .lines()
                .next()?
                .to_owned();
            serde_json::from_str::<Value>(&line).ok()?["ready_cpu_ms"].as_f64()
        });
        let line = String::from_utf8_lossy(&output.stdout)
            .lines()
            .find(|l| l.starts_with('{'))
            .map(str::to_owned);
        let Some(line) = line else {
            eprintln!("stream run {run}: the worker failed");
            return None;
        };
        let w: Value = serde_json::from_str(&line).expect("worker result");
        // Stream ids are `<ms>-<n>`, the ms of Redis's clock when the entry was appended.
        let id_ms = |reply: redis::streams::StreamRangeReply| -> Option<u64> {
            reply.ids.first()?.id.split_once('-')?.0.parse().ok()
        };
        let key = format!("{prefix}:events");
        let len: usize = redis::cmd("XLEN").arg(&key).query(conn).expect("XLEN");
        let first = id_ms(
            redis::cmd("XRANGE")
                .arg(&key)
                .arg("-")
                .arg("+")
                .arg("COUNT")
                .arg(1)
                .query(conn)
                .expect("XRANGE"),
        )?;
        let last = id_ms(
            redis::cmd("XREVRANGE")
                .arg(&key)
                .arg("+")
                .arg("-")
                .arg("COUNT")
                .arg(1)
                .query(conn)
                .expect("XREVRANGE"),
        )?;
        if len != total {
            eprintln!("stream run {run}: {len} entries in the stream, expected {total}");
        }
        let publish_secs = (last.saturating_sub(first)).max(1) as f64 / 1000.0;
        let first_ns = u128::from(first) * 1_000_000;
        let worker_last = u128::from(w["last_ns"].as_u64().unwrap_or(0));
        let worker_secs = worker_last.saturating_sub(first_ns) as f64 / 1e9;
        json!({
            "events": total,
            "events_per_sec": total as f64 / publish_secs,
            "worker_events_per_sec": total as f64 / worker_secs,
            "stream_len": len,
            "bot_cpu_ms": ms(client_cpu),
            "bot_flood_cpu_ms": ready_cpu.map(|at| ms(client_cpu) - at),
            "worker_cpu_ms": w["cpu_ms"],
        })
    } else {
        let output = Command::new(&own)
            .args(client_args(store))
            .output()
            .expect("client runs");
        let line = String::from_utf8_lossy(&output.stdout)
            .lines()
            .find(|l| l.starts_with('{'))
            .map(str::to_owned);
        let Some(line) = line else {
            eprintln!(
                "{store} run {run}: client failed: {}",
                String::from_utf8_lossy(&output.stderr)
            );
            return None;
        };
        serde_json::from_str(&line).expect("client result")
    };
    result["fake_cpu_ms"] = json!(ms(common::cpu_time_of(&fake.pid().to_string())));
    drop(fake);
    let commands = commands_between(&before, &command_stats(conn));
    let count: u64 = commands.values().map(|(calls, _)| calls).sum();
    result["commands"] = json!(commands
        .iter()
        .map(|(name, (calls, _))| (name.clone(), *calls))
        .collect::<BTreeMap<_, _>>());
    result["redis_cpu_ms"] = json!(ms(redis_cpu(conn).saturating_sub(cpu_before)));
    result["commands_total"] = json!(count);
    result["commands_per_1000_events"] = json!(count as f64 * 1000.0 / total as f64);
    result["bench"] = json!("fleet-flood");
    result["store"] = json!(store);
    result["handler"] = json!(mode);
    result["shards"] = json!(shards);
    Some(result)
}

/// CPU µs per event of one process of a run (`key` in ms), or NaN when unknown.
fn us_per_event(run: &Value, key: &str) -> f64 {
    let events = run["events"].as_f64().unwrap_or(0.0);
    match run[key].as_f64() {
        Some(ms) if events > 0.0 => ms * 1000.0 / events,
        _ => f64::NAN,
    }
}

/// The median of each named CPU figure over the runs, as `name x.xx µs`.
fn cpu_line(figures: &[(&str, Vec<f64>)]) -> String {
    figures
        .iter()
        .filter(|(_, v)| !v.is_empty())
        .map(|(name, v)| {
            let mut v = v.clone();
            format!("{name} {:.2}", common::median(&mut v).0)
        })
        .collect::<Vec<_>>()
        .join(" · ")
}

/// ns per `set_seq`, the one call a session store gets per event (docs: `SessionStore::set_seq`),
/// through `dyn SessionStore` as the shard calls it, with the store's flush task running.
fn set_seq_ns(store: &dyn SessionStore, calls: u64) -> f64 {
    store.save(
        0,
        SessionInfo {
            session_id: "bench".into(),
            seq: 1,
            resume_url: None,
        },
    );
    let start = Instant::now();
    for seq in 1..=calls {
        store.set_seq(std::hint::black_box(0), seq);
    }
    start.elapsed().as_nanos() as f64 / calls as f64
}

/// `set_seq` on the in-memory store and on the Redis one, taking turns: median ns per call.
fn set_seq_costs(redis_url: &str, turns: usize) -> (f64, f64) {
    actix_rt::System::new().block_on(async move {
        let redis = FleetRedis::connect(redis_url, "setseq")
            .await
            .expect("redis");
        let in_redis = RedisSessionStore::new(redis, SessionStoreOptions::default());
        let in_memory = MemorySessionStore::new();
        let (mut memory, mut redis) = (Vec::new(), Vec::new());
        for _ in 0..turns {
            memory.push(set_seq_ns(&in_memory, 5_000_000));
            redis.push(set_seq_ns(&in_redis, 5_000_000));
            // The flush task (on this thread) gets its turn between the measurements.
            actix_rt::time::sleep(Duration::from_millis(150)).await;
        }
        (common::median(&mut memory).0, common::median(&mut redis).0)
    })
}

fn store(results: &mut Vec<String>) {
    let events = env_num("FLEET_FLOOD_EVENTS", 200_000) as usize;
    let repeats = env_num("FLEET_REPEATS", 5) as usize;
    let redis = RedisServer::start();
    let mut conn = redis::Client::open(redis.url())
        .and_then(|c| c.get_connection())
        .expect("redis connection");
    let (memory_ns, redis_ns) = set_seq_costs(&redis.url(), 7);
    results.push(
        json!({"bench": "fleet-set-seq", "memory_ns": memory_ns, "redis_ns": redis_ns}).to_string(),
    );
    println!();
    println!(
        "session store: set_seq (its one call per event), 5 M calls, 7 turns: in-memory {memory_ns:.1} ns, Redis store {redis_ns:.1} ns per call"
    );
    println!("session store: flood of {events} MESSAGE_CREATE (no compression), in-memory store vs Redis store (start_fleet), {repeats} turns each");
    println!(
        "{:>6} {:>8} {:>24} {:>24} {:>8} {:>28} {:>12}",
        "shards",
        "handler",
        "memory events/s",
        "redis events/s",
        "ratio",
        "Redis commands per run (per 1000 events)",
        "Redis CPU ms"
    );
    let mut run = 0;
    for shards in common::env_list("FLEET_FLOOD_SHARDS", "1,16") {
        let n: u32 = shards.parse().expect("shard count");
        for mode in common::env_list("FLEET_FLOOD_HANDLERS", "thread,batch") {
            let mut memory = Vec::new();
            let mut redis_rates = Vec::new();
            let mut ratios = Vec::new();
            let mut commands = Vec::new();
            let mut per_1000 = Vec::new();
            let mut cpu = Vec::new();
            let (mut bot_m, mut bot_r, mut fake_m, mut fake_r, mut redis_r) =
                (vec![], vec![], vec![], vec![], vec![]);
            let mut breakdown: BTreeMap<String, u64> = BTreeMap::new();
            for _ in 0..repeats {
                run += 1;
                let m = flood_run(
                    &redis,
                    &mut conn,
                    run,
                    "memory",
                    &mode,
                    n,
                    events / n as usize,
                );
                run += 1;
                let r = flood_run(
                    &redis,
                    &mut conn,
                    run,
                    "redis",
                    &mode,
                    n,
                    events / n as usize,
                );
                let (Some(m), Some(r)) = (m, r) else { continue };
                let (mr, rr) = (
                    m["events_per_sec"].as_f64().unwrap_or(0.0),
                    r["events_per_sec"].as_f64().unwrap_or(0.0),
                );
                memory.push(mr);
                redis_rates.push(rr);
                ratios.push(rr / mr);
                commands.push(r["commands_total"].as_f64().unwrap_or(0.0));
                per_1000.push(r["commands_per_1000_events"].as_f64().unwrap_or(0.0));
                cpu.push(r["redis_cpu_ms"].as_f64().unwrap_or(0.0));
                bot_m.push(us_per_event(&m, "bot_flood_cpu_ms"));
                bot_r.push(us_per_event(&r, "bot_flood_cpu_ms"));
                fake_m.push(us_per_event(&m, "fake_cpu_ms"));
                fake_r.push(us_per_event(&r, "fake_cpu_ms"));
                redis_r.push(us_per_event(&r, "redis_cpu_ms"));
                if let Some(cmds) = r["commands"].as_object() {
                    for (name, calls) in cmds {
                        *breakdown.entry(name.clone()).or_default() += calls.as_u64().unwrap_or(0);
                    }
                }
                results.push(m.to_string());
                results.push(r.to_string());
            }
            if memory.is_empty() {
                continue;
            }
            let turns = memory.len() as u64;
            let (m, m_lo, m_hi) = common::median(&mut memory);
            let (r, r_lo, r_hi) = common::median(&mut redis_rates);
            let (ratio, ratio_lo, ratio_hi) = common::median(&mut ratios);
            let (c, _, _) = common::median(&mut commands);
            let (p, _, _) = common::median(&mut per_1000);
            let (u, _, _) = common::median(&mut cpu);
            println!(
                "{:>6} {:>8} {:>7.0}k ({:.0}-{:.0}k) {:>7.0}k ({:.0}-{:.0}k) {:>5.3} ({:.2}-{:.2}) {:>10.0} ({:.2}) {:>8.0}",
                shards, mode, m / 1e3, m_lo / 1e3, m_hi / 1e3, r / 1e3, r_lo / 1e3, r_hi / 1e3,
                ratio, ratio_lo, ratio_hi, c, p, u
            );
            let per_run: Vec<String> = breakdown
                .iter()
                .map(|(name, calls)| format!("{name} {:.1}", *calls as f64 / turns as f64))
                .collect();
            println!(
                "{:>15} commands per Redis run (inside scripts counted too): {}",
                "",
                per_run.join(", ")
            );
            println!(
                "{:>15} CPU µs per event (bot: from its first READY; others: the whole run): {}",
                "",
                cpu_line(&[
                    ("bot memory", bot_m),
                    ("bot redis", bot_r),
                    ("fake memory", fake_m),
                    ("fake redis", fake_r),
                    ("Redis", redis_r),
                ])
            );
        }
    }
}

fn stream(results: &mut Vec<String>) {
    let events = (env_num("FLEET_STREAM_EVENTS", 100_000) as usize)
        .min(shardline::fleet::stream::DEFAULT_MAX_LEN);
    let repeats = env_num("FLEET_REPEATS", 5) as usize;
    let redis = RedisServer::start();
    let mut conn = redis::Client::open(redis.url())
        .and_then(|c| c.get_connection())
        .expect("redis connection");
    println!();
    println!("event stream: flood of {events} MESSAGE_CREATE, 1 shard, to an in-process batch handler vs published to the stream and consumed by one worker process, {repeats} turns each");
    println!(
        "{:>24} {:>24} {:>24} {:>22} {:>16}",
        "in-process events/s",
        "into Redis events/s",
        "out to worker events/s",
        "Redis commands per run",
        "Redis CPU ms"
    );
    let (mut local, mut into, mut out, mut commands, mut busy) =
        (vec![], vec![], vec![], vec![], vec![]);
    let mut breakdown: BTreeMap<String, f64> = BTreeMap::new();
    let (mut bot_l, mut bot_s, mut worker_s, mut redis_s, mut fake_l, mut fake_s) =
        (vec![], vec![], vec![], vec![], vec![], vec![]);
    for i in 0..repeats {
        let base = 10_000 + i * 2;
        let l = flood_run(&redis, &mut conn, base, "memory", "batch", 1, events);
        let s = flood_run(&redis, &mut conn, base + 1, "stream", "batch", 1, events);
        let (Some(l), Some(s)) = (l, s) else { continue };
        local.push(l["events_per_sec"].as_f64().unwrap_or(0.0));
        into.push(s["events_per_sec"].as_f64().unwrap_or(0.0));
        out.push(s["worker_events_per_sec"].as_f64().unwrap_or(0.0));
        commands.push(s["commands_total"].as_f64().unwrap_or(0.0));
        busy.push(s["redis_cpu_ms"].as_f64().unwrap_or(0.0));
        bot_l.push(us_per_event(&l, "bot_flood_cpu_ms"));
        bot_s.push(us_per_event(&s, "bot_flood_cpu_ms"));
        worker_s.push(us_per_event(&s, "worker_cpu_ms"));
        redis_s.push(us_per_event(&s, "redis_cpu_ms"));
        fake_l.push(us_per_event(&l, "fake_cpu_ms"));
        fake_s.push(us_per_event(&s, "fake_cpu_ms"));
        if let Some(cmds) = s["commands"].as_object() {
            for (name, calls) in cmds {
                *breakdown.entry(name.clone()).or_default() += calls.as_f64().unwrap_or(0.0);
            }
        }
        results.push(l.to_string());
        results.push(s.to_string());
    }
    if local.is_empty() {
        return;
    }
    let turns = local.len() as f64;
    let (l, l_lo, l_hi) = common::median(&mut local);
    let (i, i_lo, i_hi) = common::median(&mut into);
    let (o, o_lo, o_hi) = common::median(&mut out);
    let (c, _, _) = common::median(&mut commands);
    let (b, _, _) = common::median(&mut busy);
    println!(
        "{:>7.0}k ({:.0}-{:.0}k) {:>9.0}k ({:.0}-{:.0}k) {:>9.0}k ({:.0}-{:.0}k) {:>22.0} {:>16.0}",
        l / 1e3,
        l_lo / 1e3,
        l_hi / 1e3,
        i / 1e3,
        i_lo / 1e3,
        i_hi / 1e3,
        o / 1e3,
        o_lo / 1e3,
        o_hi / 1e3,
        c,
        b
    );
    let per_run: Vec<String> = breakdown
        .iter()
        .map(|(name, calls)| format!("{name} {:.0}", calls / turns))
        .collect();
    println!(
        "{:>15} commands per stream run (inside MULTI and scripts counted too): {}",
        "",
        per_run.join(", ")
    );
    println!(
        "{:>15} CPU µs per event (bot: from its first READY; others: the whole run): {}",
        "",
        cpu_line(&[
            ("bot in-process", bot_l),
            ("bot publishing", bot_s),
            ("worker", worker_s),
            ("Redis", redis_s),
            ("fake in-process run", fake_l),
            ("fake stream run", fake_s),
        ])
    );
}
