//! The fleet as real OS processes (`examples/fleet.rs`) against one Redis and the fake gateway:
//! shared identify, restart, failover after `kill -9`, a paused process, and workers. Signals are
//! real (`kill -9`, `SIGSTOP`, `SIGCONT`, `SIGTERM`).

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde_json::{json, Value};
use shardline::fleet::sessions::SessionStoreOptions;
use shardline::fleet::{FleetRedis, RedisIdentifyQueue, RedisSessionStore};
use shardline::testkit::{FakeConfig, FakeGateway};

use crate::harness::*;
use crate::ownership::assert_one_connection_at_a_time;
use crate::redis_server::RedisServer;

const LEASE_MS: u64 = 1000;

/// One fleet process and every JSON line it printed.
pub(crate) struct Proc {
    child: Child,
    name: String,
    lines: Arc<Mutex<Vec<Value>>>,
}

impl Proc {
    pub(crate) fn spawn(name: &str, args: &[String]) -> Proc {
        let mut child = Command::new(example("fleet"))
            .args(args)
            .env("DISCORD_TOKEN", TOKEN)
            .env("RUST_LOG", "warn")
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("the fleet example runs");
        let stdout = child.stdout.take().unwrap();
        let lines = Arc::new(Mutex::new(Vec::new()));
        let sink = lines.clone();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                let value: Value = serde_json::from_str(&line)
                    .unwrap_or_else(|e| panic!("not a JSON line ({e}): {line}"));
                sink.lock().unwrap().push(value);
            }
        });
        Proc {
            child,
            name: name.to_owned(),
            lines,
        }
    }

    pub(crate) fn gateway(
        redis: &RedisServer,
        fake: &FakeGateway,
        name: &str,
        shards: u32,
        extra: &[&str],
    ) -> Proc {
        let mut args: Vec<String> = [
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
            &LEASE_MS.to_string(),
            "--owner",
            name,
            // Half a window wider than the fake's: a grant and its Identify are a few ms apart, more
            // on a loaded machine, and the fake (like Discord) judges arrival times.
            "--identify-window-ms",
            "150",
            "--flush-ms",
            "20",
        ]
        .iter()
        .map(|s| s.to_string())
        .collect();
        args.extend(extra.iter().map(|s| s.to_string()));
        Proc::spawn(name, &args)
    }

    fn worker(redis: &RedisServer, name: &str) -> Proc {
        let args: Vec<String> = [
            "worker",
            "--redis",
            &redis.url(),
            "--consumer",
            name,
            "--claim-idle-ms",
            "500",
        ]
        .iter()
        .map(|s| s.to_string())
        .collect();
        Proc::spawn(name, &args)
    }

    fn lines(&self) -> Vec<Value> {
        self.lines.lock().unwrap().clone()
    }

    /// The shards this process has reported in `state` (claimed, ready, resumed, released, lost).
    fn shards_in(&self, state: &str) -> Vec<u32> {
        self.lines()
            .iter()
            .filter(|l| l["state"] == state)
            .map(|l| l["shard"].as_u64().unwrap() as u32)
            .collect()
    }

    /// The shards it holds now: claimed and not since released or lost.
    pub(crate) fn held(&self) -> BTreeSet<u32> {
        let mut held = BTreeSet::new();
        for line in self.lines() {
            let shard = line["shard"].as_u64().unwrap_or(0) as u32;
            match line["state"].as_str() {
                Some("claimed") => {
                    held.insert(shard);
                }
                Some("released" | "lost") => {
                    held.remove(&shard);
                }
                _ => {}
            }
        }
        held
    }

    /// (shard, seq, session) of every MESSAGE_CREATE it printed.
    fn messages(&self) -> Vec<(u32, u64, Option<String>)> {
        self.lines()
            .iter()
            .filter(|l| l["t"] == "MESSAGE_CREATE")
            .map(|l| {
                (
                    l["shard"].as_u64().unwrap() as u32,
                    l["seq"].as_u64().unwrap(),
                    l["session"].as_str().map(str::to_owned),
                )
            })
            .collect()
    }

    pub(crate) fn signal(&self, signal: &str) {
        let status = Command::new("kill")
            .args([signal, &self.child.id().to_string()])
            .status()
            .unwrap();
        assert!(status.success(), "kill {signal} {}", self.name);
    }

    fn kill9(&mut self) {
        self.child.kill().unwrap();
        self.child.wait().unwrap();
    }

    /// SIGTERM, then the exit status once it has left.
    pub(crate) fn terminate(&mut self) -> std::process::ExitStatus {
        self.signal("-TERM");
        let deadline = Instant::now() + WAIT;
        loop {
            if let Some(status) = self.child.try_wait().unwrap() {
                return status;
            }
            assert!(
                Instant::now() < deadline,
                "{} did not leave on SIGTERM",
                self.name
            );
            std::thread::sleep(Duration::from_millis(10));
        }
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = Command::new("kill")
            .args(["-CONT", &self.child.id().to_string()])
            .status();
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

pub(crate) async fn wait_long(what: &str, f: impl Fn() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(30);
    while !f() {
        assert!(Instant::now() < deadline, "timed out waiting for: {what}");
        actix_rt::time::sleep(Duration::from_millis(10)).await;
    }
}

/// The example keeps Discord's command limit (120 per 60 s, heartbeats included), so the fake's
/// heartbeat interval here is 1 s rather than the 100 ms of the in-process tests.
pub(crate) fn fleet_fake(shards: u32) -> FakeConfig {
    FakeConfig {
        replay_capacity: 100_000,
        heartbeat_interval: Duration::from_secs(1),
        command_limit: (120, Duration::from_secs(60)),
        ..fast_fake(shards, 2)
    }
}

/// Three processes start together and share 6 shards: the fake's record of Identifies never
/// breaks the one-per-bucket-per-window rule, each shard identifies once, and the session-start
/// budget is counted once for the fleet (in Redis, and at the fake).
#[actix_rt::test]
async fn three_processes_share_identify_and_one_budget() {
    let redis = RedisServer::start();
    let fake_config = fleet_fake(6);
    let fake = FakeGateway::start(fake_config.clone()).await.unwrap();
    let procs: Vec<Proc> = ["a", "b", "c"]
        .iter()
        .map(|name| Proc::gateway(&redis, &fake, name, 6, &[]))
        .collect();
    wait_long("6 shards ready", || fake.ready_shards().len() == 6).await;
    wait_long("2 shards each", || {
        procs.iter().all(|p| p.held().len() == 2)
    })
    .await;

    assert_eq!(fake.bucket_violations(), 0);
    let identifies = fake.identifies();
    let mut by_bucket: BTreeMap<u32, Vec<Instant>> = BTreeMap::new();
    for (shard, at) in &identifies {
        by_bucket.entry(shard % 2).or_default().push(*at);
    }
    for (bucket, mut times) in by_bucket {
        times.sort();
        for pair in times.windows(2) {
            // The fake's own rule, as `bucket_violations` counts it.
            assert!(
                pair[1] - pair[0] + fake_config.identify_jitter_tolerance
                    >= fake_config.identify_window,
                "bucket {bucket}: identifies {:?} apart",
                pair[1] - pair[0]
            );
        }
    }
    // A shard handed over before it identified is identified by its new owner, once in all.
    let identified: BTreeSet<u32> = identifies.iter().map(|(s, _)| *s).collect();
    assert_eq!(identified.len(), 6);
    let queue = RedisIdentifyQueue::new(
        FleetRedis::connect(&redis.url(), "shardline")
            .await
            .unwrap(),
        2,
        Duration::from_millis(100),
        "test",
    );
    let start = fake_config.session_start_limit.remaining as i64;
    assert_eq!(
        queue.remaining().await.unwrap(),
        Some(start - identifies.len() as i64)
    );
    assert_eq!(
        identifies.len(),
        6,
        "a shard identified twice: {identifies:?}"
    );
    fake.stop().await;
}

/// A process leaves on SIGTERM and another starts: the new one resumes every shard (op 6, no
/// Identify), and every event (before, during the gap, after) is printed exactly once in all.
#[actix_rt::test]
async fn a_restart_resumes_every_shard_and_delivers_each_event_once() {
    let redis = RedisServer::start();
    let fake = FakeGateway::start(fleet_fake(2)).await.unwrap();
    let mut a = Proc::gateway(&redis, &fake, "a", 2, &[]);
    wait_long("a ready", || {
        fake.ready_shards().len() == 2 && a.shards_in("ready").len() == 2
    })
    .await;
    let mut sent = Vec::new();
    for i in 0..100u32 {
        sent.push((
            i % 2,
            fake.dispatch(i % 2, "MESSAGE_CREATE", json!({"i": i}))
                .unwrap(),
        ));
    }
    wait_long("a printed 100", || a.messages().len() == 100).await;
    assert!(a.terminate().success());
    assert_eq!(a.shards_in("released").len(), 2);
    // While no process runs the bot, the gateway keeps the events for the resume.
    for i in 100..160u32 {
        sent.push((
            i % 2,
            fake.dispatch(i % 2, "MESSAGE_CREATE", json!({"i": i}))
                .unwrap(),
        ));
    }
    let b = Proc::gateway(&redis, &fake, "b", 2, &[]);
    wait_long("b resumed both", || b.shards_in("resumed").len() == 2).await;
    for i in 160..200u32 {
        sent.push((
            i % 2,
            fake.dispatch(i % 2, "MESSAGE_CREATE", json!({"i": i}))
                .unwrap(),
        ));
    }
    wait_long("b printed the rest", || b.messages().len() >= 100).await;

    let mut printed: Vec<(u32, u64)> = a
        .messages()
        .into_iter()
        .chain(b.messages())
        .map(|(s, q, _)| (s, q))
        .collect();
    printed.sort();
    sent.sort();
    assert_eq!(printed, sent, "lost or repeated across the restart");
    assert_eq!(
        sent_any(&fake, 2).len(),
        2,
        "only the first process identified"
    );
    assert_eq!(sent_any(&fake, 6).len(), 2, "the second resumed each shard");
    assert_one_connection_at_a_time(&fake);
    fake.stop().await;
}

/// `kill -9` one of three processes: the other two take its shards over once its leases expire
/// and resume them (op 6); no shard ever has two connections at once; every event is printed, and
/// only events after the dead process's last flushed sequence are printed twice.
#[actix_rt::test]
async fn kill_9_moves_the_shards_to_the_others_by_resuming() {
    let redis = RedisServer::start();
    let fake = FakeGateway::start(fleet_fake(6)).await.unwrap();
    let mut procs: Vec<Proc> = ["a", "b", "c"]
        .iter()
        .map(|name| Proc::gateway(&redis, &fake, name, 6, &[]))
        .collect();
    wait_long("6 shards ready, 2 each", || {
        fake.ready_shards().len() == 6 && procs.iter().all(|p| p.held().len() == 2)
    })
    .await;
    let mut sent = Vec::new();
    for i in 0..300u32 {
        sent.push((
            i % 6,
            fake.dispatch(i % 6, "MESSAGE_CREATE", json!({"i": i}))
                .unwrap(),
        ));
    }
    let victim_shards = procs[0].held();
    let identifies_before = sent_any(&fake, 2).len();
    let resumes_before = sent_any(&fake, 6).len();
    let killed_at = Instant::now();
    procs[0].kill9();
    // What the dead process last wrote: nothing can change it now but the next owner.
    let store = RedisSessionStore::new(
        FleetRedis::connect(&redis.url(), "shardline")
            .await
            .unwrap()
            .for_total(6),
        SessionStoreOptions::default(),
    );
    let mut flushed = HashMap::new();
    for &shard in &victim_shards {
        flushed.insert(
            shard,
            store.read_from_redis(shard).await.unwrap().unwrap().seq,
        );
    }
    wait_long("the survivors hold all 6", || {
        procs[1].held().len() + procs[2].held().len() == 6
    })
    .await;
    wait_long("the moved shards resumed", || {
        victim_shards.iter().all(|s| {
            procs[1].shards_in("resumed").contains(s) || procs[2].shards_in("resumed").contains(s)
        })
    })
    .await;
    eprintln!(
        "failover: all moved shards resumed {:?} after kill -9",
        killed_at.elapsed()
    );
    for i in 300..360u32 {
        sent.push((
            i % 6,
            fake.dispatch(i % 6, "MESSAGE_CREATE", json!({"i": i}))
                .unwrap(),
        ));
    }
    wait_long("every event printed", || {
        let printed: BTreeSet<(u32, u64)> = procs
            .iter()
            .flat_map(|p| p.messages())
            .map(|(s, q, _)| (s, q))
            .collect();
        sent.iter().all(|e| printed.contains(e))
    })
    .await;

    assert_eq!(
        sent_any(&fake, 2).len(),
        identifies_before,
        "a moved shard identified"
    );
    assert_eq!(
        sent_any(&fake, 6).len(),
        resumes_before + victim_shards.len()
    );
    let mut seen: HashMap<(u32, u64), usize> = HashMap::new();
    for (shard, seq, _) in procs.iter().flat_map(|p| p.messages()) {
        *seen.entry((shard, seq)).or_default() += 1;
    }
    for ((shard, seq), times) in &seen {
        if *times > 1 {
            assert!(
                victim_shards.contains(shard),
                "shard {shard} seq {seq} printed {times} times"
            );
            assert!(
                *seq > flushed[shard],
                "seq {seq} of shard {shard} was flushed ({}) yet repeated",
                flushed[shard]
            );
            assert_eq!(*times, 2);
        }
    }
    assert_one_connection_at_a_time(&fake);
    fake.stop().await;
}

/// A crash replays, never loses: a process whose handler is slow is killed (`kill -9`) while the
/// handler's mailbox and the shard still hold most of a burst. The sequence it had stored trails
/// what the handler printed, so the next owner's resume replays the rest: every event is printed
/// by one process or the other. (With the sequence stored as events entered the mailbox, the
/// next owner resumed after events no one ever printed.)
#[actix_rt::test]
async fn kill_9_of_a_process_with_a_slow_handler_loses_no_event() {
    let redis = RedisServer::start();
    let fake = FakeGateway::start(fleet_fake(1)).await.unwrap();
    let mut a = Proc::gateway(&redis, &fake, "a", 1, &["--handler-ms", "20"]);
    wait_long("a runs the shard", || {
        fake.ready_shards().len() == 1 && a.held().len() == 1
    })
    .await;
    let sent: Vec<u64> = (0..60u32)
        .map(|i| {
            fake.dispatch(0, "MESSAGE_CREATE", json!({ "i": i }))
                .unwrap()
        })
        .collect();
    // 20 ms an event: a has printed a few, the rest waits in its handler's mailbox and its shard,
    // and sessions were flushed (every 20 ms) several times meanwhile.
    wait_long("a printed 10", || a.messages().len() >= 10).await;
    a.kill9();
    let printed_by_a: BTreeSet<u64> = a.messages().into_iter().map(|(_, q, _)| q).collect();
    assert!(
        printed_by_a.len() < sent.len(),
        "a printed everything before it died: nothing to replay"
    );
    let store = RedisSessionStore::new(
        FleetRedis::connect(&redis.url(), "shardline")
            .await
            .unwrap()
            .for_total(1),
        SessionStoreOptions::default(),
    );
    let stored = store.read_from_redis(0).await.unwrap().unwrap().seq;
    let before = sent[0] - 1;
    assert!(
        (before..=sent[sent.len() - 1])
            .filter(|&q| q <= stored && sent.contains(&q))
            .all(|q| printed_by_a.contains(&q)),
        "the dead process stored {stored}, past events it never printed: {printed_by_a:?}"
    );
    let identifies = sent_any(&fake, 2).len();
    let b = Proc::gateway(&redis, &fake, "b", 1, &[]);
    wait_long("b resumed the shard", || b.shards_in("resumed") == [0]).await;
    let last = *sent.last().unwrap();
    wait_long("b printed the last event", || {
        b.messages().iter().any(|&(_, q, _)| q == last)
    })
    .await;
    let printed: BTreeSet<u64> = printed_by_a
        .iter()
        .copied()
        .chain(b.messages().into_iter().map(|(_, q, _)| q))
        .collect();
    let lost: Vec<u64> = sent
        .iter()
        .copied()
        .filter(|q| !printed.contains(q))
        .collect();
    assert_eq!(lost, Vec::<u64>::new(), "events no process printed");
    assert_eq!(sent_any(&fake, 2).len(), identifies, "b identified");
    assert_one_connection_at_a_time(&fake);
    fake.stop().await;
}

/// A process stopped (SIGSTOP) past its lease: the other takes its shards over; when it is let go
/// (SIGCONT) it gives them up without sending a single frame and without opening a connection.
#[actix_rt::test]
async fn a_paused_process_gives_its_shards_up_without_a_frame() {
    let redis = RedisServer::start();
    let fake = FakeGateway::start(fleet_fake(4)).await.unwrap();
    let a = Proc::gateway(&redis, &fake, "a", 4, &[]);
    let b = Proc::gateway(&redis, &fake, "b", 4, &[]);
    wait_long("4 ready, 2 each", || {
        fake.ready_shards().len() == 4 && a.held().len() == 2 && b.held().len() == 2
    })
    .await;
    let a_shards = a.held();
    let a_connections: BTreeSet<u64> = fake
        .connections()
        .iter()
        .filter(|c| c.closed_at.is_none() && c.shard.is_some_and(|s| a_shards.contains(&s)))
        .map(|c| c.id)
        .collect();
    assert_eq!(a_connections.len(), 2);
    a.signal("-STOP");
    wait_long("b took all 4 over", || b.held().len() == 4).await;
    wait_long("all 4 ready again", || fake.ready_shards().len() == 4).await;
    let woke_at = Instant::now();
    let connections_before = fake.connections().len();
    let lines_before = a.lines().len();
    a.signal("-CONT");
    wait_long("a gave its shards up", || a.shards_in("lost").len() == 2).await;
    // A marker through every shard: b is settled and a had its chance to misbehave.
    for shard in 0..4 {
        fake.dispatch(shard, "MESSAGE_CREATE", json!({"marker": shard}));
    }
    wait_long("b printed the markers", || {
        b.messages().iter().filter(|(s, _, _)| *s < 4).count() >= 4
    })
    .await;
    let late: Vec<_> = fake
        .frames()
        .into_iter()
        .filter(|f| a_connections.contains(&f.connection) && f.at >= woke_at)
        .collect();
    assert!(
        late.is_empty(),
        "the paused process sent on its old connections: {late:?}"
    );
    // Awake, `a` is a live member again and may be given shards anew, under new leases: but
    // only after it gave the old ones up.
    let after_wake: Vec<Value> = a.lines()[lines_before..].to_vec();
    let first_claim = after_wake.iter().position(|l| l["state"] == "claimed");
    let last_loss = after_wake.iter().rposition(|l| l["state"] == "lost");
    assert!(last_loss.is_some(), "{after_wake:?}");
    assert!(
        first_claim.is_none() || first_claim > last_loss,
        "claimed before giving the old leases up: {after_wake:?}"
    );
    // Connections opened since the wake-up are for shards claimed since (by `a` or `b`).
    let claimed_since = after_wake
        .iter()
        .filter(|l| l["state"] == "claimed")
        .count()
        + b.lines().iter().filter(|l| l["state"] == "claimed").count();
    assert!(fake.connections().len() - connections_before <= claimed_since);
    fake.stop().await;
}

/// One gateway process publishes MESSAGE_CREATE to the stream; two workers consume it; one is
/// killed (-9) mid-stream. Every event is handled; the only events handled twice are ones the dead
/// worker had printed (handled) but not acknowledged.
#[actix_rt::test]
async fn workers_handle_every_event_when_one_is_killed() {
    let redis = RedisServer::start();
    let fake = FakeGateway::start(fleet_fake(2)).await.unwrap();
    let gateway = Proc::gateway(&redis, &fake, "g", 2, &["--stream", "MESSAGE_CREATE"]);
    wait_long("gateway ready", || gateway.shards_in("ready").len() == 2).await;
    let mut w1 = Proc::worker(&redis, "w1");
    let w2 = Proc::worker(&redis, "w2");
    let mut sent = Vec::new();
    for i in 0..200u32 {
        sent.push((
            i % 2,
            fake.dispatch(i % 2, "MESSAGE_CREATE", json!({"i": i}))
                .unwrap(),
        ));
    }
    wait_long("w1 handled some", || w1.messages().len() >= 20).await;
    w1.kill9();
    for i in 200..400u32 {
        sent.push((
            i % 2,
            fake.dispatch(i % 2, "MESSAGE_CREATE", json!({"i": i}))
                .unwrap(),
        ));
    }
    wait_long("every event handled", || {
        let handled: BTreeSet<(u32, u64)> = w1
            .messages()
            .into_iter()
            .chain(w2.messages())
            .map(|(s, q, _)| (s, q))
            .collect();
        sent.iter().all(|e| handled.contains(e))
    })
    .await;
    assert!(
        gateway.messages().is_empty(),
        "streamed events are not printed by the gateway"
    );
    let by_w1: BTreeSet<(u32, u64)> = w1.messages().into_iter().map(|(s, q, _)| (s, q)).collect();
    let mut by_w2 = BTreeSet::new();
    for (shard, seq, session) in w2.messages() {
        assert!(session.is_some(), "stream entries carry the session");
        assert!(
            by_w2.insert((shard, seq)),
            "w2 handled ({shard}, {seq}) twice"
        );
    }
    for twice in by_w1.intersection(&by_w2) {
        assert!(sent.contains(twice));
    }
    assert_eq!(
        by_w1.len() + by_w2.len() - by_w1.intersection(&by_w2).count(),
        sent.len()
    );
    fake.stop().await;
}

#[test]
fn a_gateway_process_without_redis_says_so_and_exits() {
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let output = Command::new(example("fleet"))
        .args([
            "gateway",
            "--redis",
            &format!("redis://127.0.0.1:{port}/"),
            "--shards",
            "1",
            "--gateway-url",
            "ws://127.0.0.1:1",
            "--max-concurrency",
            "1",
        ])
        .env("DISCORD_TOKEN", TOKEN)
        .output()
        .unwrap();
    assert_eq!(output.status.code(), Some(1));
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.contains("cannot reach Redis"), "{stderr}");
}

/// The `tail` example joins a fleet with `--redis`: it claims the shards and prints their
/// dispatches, and the fleet's view in Redis names it as their owner.
#[actix_rt::test]
async fn tail_joins_a_fleet_with_redis() {
    let redis = RedisServer::start();
    let fake = FakeGateway::start(fleet_fake(2)).await.unwrap();
    let mut tail = Command::new(example("tail"))
        .args([
            "--redis",
            &redis.url(),
            "--shards",
            "2",
            "--api-base",
            &fake.api_base(),
            "--compress",
            "none",
        ])
        .env("DISCORD_TOKEN", TOKEN)
        .env("RUST_LOG", "warn")
        .stdout(Stdio::piped())
        .spawn()
        .expect("tail runs");
    let stdout = tail.stdout.take().unwrap();
    let lines = Arc::new(Mutex::new(Vec::<Value>::new()));
    let sink = lines.clone();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            sink.lock()
                .unwrap()
                .push(serde_json::from_str(&line).unwrap());
        }
    });
    wait_long("both shards ready", || fake.ready_shards().len() == 2).await;
    let seq = fake
        .dispatch(1, "MESSAGE_CREATE", json!({"hello": "fleet"}))
        .unwrap();
    wait_long("tail printed it", || {
        lines
            .lock()
            .unwrap()
            .iter()
            .any(|l| l["t"] == "MESSAGE_CREATE" && l["seq"] == seq && l["shard"] == 1)
    })
    .await;
    let redis_handle = FleetRedis::connect(&redis.url(), "shardline")
        .await
        .unwrap()
        .for_total(2);
    let view = shardline::fleet::fleet_view(&redis_handle, 2)
        .await
        .unwrap();
    assert!(view.iter().all(|s| s.owner.is_some()), "{view:?}");
    let _ = tail.kill();
    let _ = tail.wait();
    fake.stop().await;
}

/// The strict form of the pause: one process, and a gateway that keeps silent connections open.
/// Paused past its lease, the process wakes with its connections still open and its heartbeats
/// overdue: it writes nothing on them (not a heartbeat, not a close frame), and only then claims
/// the shards again and resumes them on new connections.
#[actix_rt::test]
async fn a_process_woken_past_its_lease_writes_nothing_on_its_open_connections() {
    let redis = RedisServer::start();
    let fake = FakeGateway::start(FakeConfig {
        heartbeat_timeout: Duration::from_secs(60),
        ..fleet_fake(2)
    })
    .await
    .unwrap();
    let a = Proc::gateway(&redis, &fake, "a", 2, &[]);
    wait_long("both ready", || {
        fake.ready_shards().len() == 2 && a.shards_in("ready").len() == 2
    })
    .await;
    let open: BTreeSet<u64> = fake
        .connections()
        .iter()
        .filter(|c| c.closed_at.is_none() && c.shard.is_some())
        .map(|c| c.id)
        .collect();
    assert_eq!(open.len(), 2);
    a.signal("-STOP");
    // Past the lease and past a heartbeat interval: on waking, every timer is overdue.
    actix_rt::time::sleep(Duration::from_millis(LEASE_MS * 2 + 500)).await;
    assert!(
        fake.connections()
            .iter()
            .filter(|c| open.contains(&c.id))
            .all(|c| c.closed_at.is_none()),
        "the gateway kept the paused connections open"
    );
    let woke_at = Instant::now();
    a.signal("-CONT");
    wait_long("resumed on new connections", || {
        a.shards_in("resumed").len() == 2
    })
    .await;
    let late: Vec<_> = fake
        .frames()
        .into_iter()
        .filter(|f| open.contains(&f.connection) && f.at >= woke_at)
        .collect();
    assert!(
        late.is_empty(),
        "wrote on a connection whose lease had passed: {late:?}"
    );
    let closed_by_client: Vec<_> = fake
        .connections()
        .into_iter()
        .filter(|c| open.contains(&c.id) && c.client_close_code.is_some())
        .collect();
    assert!(
        closed_by_client.is_empty(),
        "sent a close frame: {closed_by_client:?}"
    );
    assert_eq!(a.shards_in("lost").len(), 2, "{:?}", a.lines());
    fake.stop().await;
}
