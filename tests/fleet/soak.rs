//! The seeded fleet soak (issue 15's proof): 3–5 real processes of `examples/fleet.rs` over an
//! uneven shard count (7, 11 or 13) against one real `redis-server` and the fake gateway, under a
//! steady flood of dispatches, with random faults drawn from a printed seed: `kill -9` right after
//! a burst of events to the victim's shards (and a replacement), SIGSTOP/SIGCONT past the lease,
//! SIGTERM (and a replacement), a full restart (SIGTERM to every process, then as many new ones),
//! Redis stopped for well under the lease (nothing may stop), for nearly the lease (past what a
//! holder trusts) and for more than the lease, Redis restarted empty. The start itself counts as
//! a fault: the shards spread as the processes join.
//!
//! Everything is judged from the fake gateway's own record (connections, the frames clients sent,
//! sessions) and from what the processes printed (every dispatch carries a nonce):
//!
//! - never two authenticated connections of one shard at once (a paused process's socket is the
//!   one the rule cannot cover, docs/fleet.md "Ownership": it must write nothing on it after
//!   waking, which is checked instead);
//! - every shard running again (READY or RESUMED at the gateway) within lease + keeper tick +
//!   resume after each fault ends (plus the Identifies a Redis that came back empty needs);
//! - no Identify for a shard whose session the gateway would still have resumed (unless Redis lost
//!   the stored sessions);
//! - every event the fake sent printed at least once, and more than once only when a Resume after
//!   an ungraceful loss of the session's connection (crash, pause, lost lease) replayed it: never
//!   twice across a graceful hand-over (close 4000, session written, lease released).
//!
//! Every violation is collected (the soak does not stop at the first) and reported with its shard,
//! its time (ms since the soak began), the fault before it and the seed. Which process opened a
//! connection is read from /proc (its sockets' ports), for the paused-process checks.
//!
//! `SHARDLINE_SOAK_SEED=N` replays a seed's faults (their timing depends on the machine);
//! `SHARDLINE_SOAK_SECS=N` makes the fault phase longer (default 40 s, about 50 s in all). The
//! processes' logs (RUST_LOG=info) are kept in a temporary directory named in the failure message.
//! Like the other process tests, it runs the `fleet` example binary that cargo built last: `cargo
//! test` builds it, `cargo test --test fleet` alone does not rebuild it.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::io::{BufRead, BufReader};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use serde_json::{json, Value};
use shardline::fleet::{fleet_view, FleetRedis};
use shardline::testkit::{ConnectionOutcome, ConnectionRecord, FakeConfig, FakeGateway};

use crate::harness::{example, fast_fake, TOKEN};
use crate::redis_server::RedisServer;

const LEASE: Duration = Duration::from_millis(1000);
/// The lease keeper renews and claims every lease / 4 (docs/fleet.md "Ownership").
const TICK: Duration = Duration::from_millis(250);
/// What a resume may take on a loaded machine once a shard is claimed: connect, Hello, Resume,
/// the replay. Generous on purpose: the check is about shards left dark, not about speed (the
/// speed is measured in benches/fleet.rs).
const RESUME: Duration = Duration::from_millis(2000);
/// The fake's identify buckets and the window the processes keep between Identifies of a bucket.
const MAX_CONCURRENCY: u32 = 2;
const IDENTIFY_WINDOW: Duration = Duration::from_millis(150);
/// How long every shard may take to run after the processes first start.
const STARTUP: Duration = Duration::from_secs(15);
/// How long a process may take to leave on SIGTERM.
const LEAVE: Duration = Duration::from_secs(10);
/// A dispatch to every shard this often.
const FLOOD_EVERY: Duration = Duration::from_millis(20);
/// Events sent at once to each shard of a process about to be killed.
const BURST: usize = 1000;

/// What a process printed, kept compactly (a soak prints tens of thousands of lines).
#[derive(Default)]
struct Printed {
    /// The nonce of every flood event it printed.
    events: Vec<u64>,
    /// (shard, state) of every ownership or phase line.
    states: Vec<(u32, String)>,
    /// Lines that were not the JSON the example promises.
    garbled: Vec<String>,
}

/// One `fleet gateway` process.
struct SoakProc {
    name: String,
    child: Child,
    printed: Arc<Mutex<Printed>>,
    /// Whether the test ended it (kill -9 or SIGTERM).
    ended_by_test: bool,
    /// Whether it exited without being told to (reported once).
    exited: bool,
}

impl SoakProc {
    fn spawn(
        name: &str,
        redis_url: &str,
        fake: &FakeGateway,
        shards: u32,
        logs: &std::path::Path,
    ) -> SoakProc {
        let log = std::fs::File::create(logs.join(format!("{name}.log"))).expect("a log file");
        let mut child = Command::new(example("fleet"))
            .args([
                "gateway",
                "--redis",
                redis_url,
                "--shards",
                &shards.to_string(),
                "--api-base",
                &fake.api_base(),
                "--compress",
                "none",
                "--lease-ms",
                &LEASE.as_millis().to_string(),
                "--owner",
                name,
                "--identify-window-ms",
                &IDENTIFY_WINDOW.as_millis().to_string(),
                "--flush-ms",
                "20",
                "--prefix",
                PREFIX,
            ])
            .env("DISCORD_TOKEN", TOKEN)
            .env("RUST_LOG", "info")
            .stdout(Stdio::piped())
            .stderr(log)
            .spawn()
            .expect("the fleet example runs");
        let stdout = child.stdout.take().expect("piped");
        let printed = Arc::new(Mutex::new(Printed::default()));
        let sink = printed.clone();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                let mut printed = sink.lock().unwrap();
                let Ok(value) = serde_json::from_str::<Value>(&line) else {
                    printed.garbled.push(line);
                    continue;
                };
                let shard = value["shard"].as_u64().unwrap_or(u64::MAX) as u32;
                if let Some(state) = value["state"].as_str() {
                    printed.states.push((shard, state.to_owned()));
                } else if let Some(nonce) = value["d"]["n"].as_u64() {
                    printed.events.push(nonce);
                }
            }
        });
        SoakProc {
            name: name.to_owned(),
            child,
            printed,
            ended_by_test: false,
            exited: false,
        }
    }

    fn pid(&self) -> u32 {
        self.child.id()
    }

    fn signal(&self, signal: &str) {
        let status = Command::new("kill")
            .args([signal, &self.pid().to_string()])
            .status()
            .expect("kill runs");
        assert!(status.success(), "kill {signal} {}", self.name);
    }

    /// The shards it holds now by its own lines: claimed, and not released or lost since.
    fn held(&self) -> BTreeSet<u32> {
        let mut held = BTreeSet::new();
        for (shard, state) in &self.printed.lock().unwrap().states {
            match state.as_str() {
                "claimed" => {
                    held.insert(*shard);
                }
                "released" | "lost" => {
                    held.remove(shard);
                }
                _ => {}
            }
        }
        held
    }
}

impl Drop for SoakProc {
    fn drop(&mut self) {
        let _ = Command::new("kill")
            .args(["-CONT", &self.pid().to_string()])
            .status();
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The local ports of a process's TCP connections to `remote_port` (from /proc): which of the
/// fake's connections it opened, by their peer port. The remote port must match too: Linux hands
/// out one local port to several connections when their destinations differ.
fn tcp_ports_of(pid: u32, remote_port: u16) -> BTreeSet<u16> {
    let mut inodes = BTreeSet::new();
    if let Ok(fds) = std::fs::read_dir(format!("/proc/{pid}/fd")) {
        for fd in fds.flatten() {
            if let Ok(target) = std::fs::read_link(fd.path()) {
                let target = target.to_string_lossy().into_owned();
                if let Some(inode) = target
                    .strip_prefix("socket:[")
                    .and_then(|t| t.strip_suffix(']'))
                    .and_then(|t| t.parse::<u64>().ok())
                {
                    inodes.insert(inode);
                }
            }
        }
    }
    let port = |address: &str| {
        address
            .rsplit(':')
            .next()
            .and_then(|p| u16::from_str_radix(p, 16).ok())
    };
    let mut ports = BTreeSet::new();
    for table in ["tcp", "tcp6"] {
        let Ok(text) = std::fs::read_to_string(format!("/proc/{pid}/net/{table}")) else {
            continue;
        };
        for line in text.lines().skip(1) {
            let fields: Vec<&str> = line.split_whitespace().collect();
            let (Some(local), Some(remote), Some(inode)) =
                (fields.get(1), fields.get(2), fields.get(9))
            else {
                continue;
            };
            if let (Some(local), Some(remote), Ok(inode)) =
                (port(local), port(remote), inode.parse::<u64>())
            {
                if remote == remote_port && inodes.contains(&inode) {
                    ports.insert(local);
                }
            }
        }
    }
    ports
}

/// The prefix of the soak's keys in Redis.
const PREFIX: &str = "shardline-soak";

/// Each shard's lease holder in Redis (`owner:token`), through the fleet's own view.
fn lease_holders(url: &str, total: u32) -> Result<Vec<Option<String>>, String> {
    actix_rt::System::new().block_on(async {
        let redis = FleetRedis::connect(url, PREFIX)
            .await
            .map_err(|e| e.to_string())?
            .for_total(total);
        let view = fleet_view(&redis, total).await.map_err(|e| e.to_string())?;
        Ok(view
            .into_iter()
            .map(|s| s.owner.map(|(owner, token)| format!("{owner}:{token}")))
            .collect())
    })
}

/// The fake gateway on a thread (and actix system) of its own, so that the test may block
/// (waiting for a process, restarting Redis) without delaying the fake's record.
struct FakeThread {
    fake: FakeGateway,
    system: actix_rt::System,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl FakeThread {
    fn start(config: FakeConfig) -> FakeThread {
        let (tx, rx) = std::sync::mpsc::channel();
        let thread = std::thread::spawn(move || {
            let system = actix_rt::System::new();
            system.block_on(async {
                let fake = FakeGateway::start(config).await.expect("the fake starts");
                tx.send((fake, actix_rt::System::current())).unwrap();
            });
            system.run().expect("the fake's system runs");
        });
        let (fake, system) = rx.recv().expect("the fake started");
        FakeThread {
            fake,
            system,
            thread: Some(thread),
        }
    }
}

impl Drop for FakeThread {
    fn drop(&mut self) {
        self.fake.drop_all();
        self.system.stop();
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

/// One flood event as the fake sent it.
#[derive(Clone)]
struct Sent {
    shard: u32,
    session: String,
    seq: u64,
    at: Instant,
}

/// What the fake sent: every event carries a nonce (`{"n": nonce}`) the processes print back.
#[derive(Clone)]
struct Events {
    fake: FakeGateway,
    sent: Arc<Mutex<HashMap<u64, Sent>>>,
    nonce: Arc<AtomicU64>,
}

impl Events {
    /// One MESSAGE_CREATE to `shard`, if it has a live session (attached or not).
    fn send(&self, shard: u32) {
        let nonce = self.nonce.fetch_add(1, Ordering::Relaxed) + 1;
        let at = Instant::now();
        if let Some((session, seq)) =
            self.fake
                .dispatch_in_session(shard, "MESSAGE_CREATE", json!({ "n": nonce }))
        {
            let sent = Sent {
                shard,
                session,
                seq,
                at,
            };
            self.sent.lock().unwrap().insert(nonce, sent);
        }
    }
}

/// A fault, and the moment from which the shards it disturbed must run again within `bound`.
#[derive(Debug, Clone)]
struct Fault {
    n: usize,
    what: String,
    at: Instant,
    /// When the fault ended (the kill, the wake-up, Redis answering again, a process started).
    ended: Instant,
    /// Every shard runs again within this after `ended`; `None`: nothing may stop at all.
    bound: Option<Duration>,
    redis_restart: bool,
}

/// A process stopped with SIGSTOP, and its connections open at that moment.
struct Pause {
    fault: usize,
    name: String,
    from: Instant,
    to: Instant,
    connections: BTreeSet<u64>,
}

struct Soak {
    rng: StdRng,
    t0: Instant,
    shards: u32,
    fake: FakeGateway,
    redis: RedisServer,
    procs: Vec<SoakProc>,
    next_name: usize,
    faults: Vec<Fault>,
    pauses: Vec<Pause>,
    violations: Vec<String>,
    logs: PathBuf,
    events: Events,
}

impl Soak {
    fn ms(&self, at: Instant) -> u128 {
        at.saturating_duration_since(self.t0).as_millis()
    }

    fn violation(&mut self, text: String) {
        eprintln!("soak: VIOLATION {text}");
        self.violations.push(text);
    }

    /// "after fault #n (what, at t ms)": the last fault that began at or before `at`.
    fn preceding(&self, at: Instant) -> String {
        match self.faults.iter().rev().find(|f| f.at <= at) {
            Some(f) => format!(
                "preceding fault #{} {} at {} ms (ended {} ms)",
                f.n,
                f.what,
                self.ms(f.at),
                self.ms(f.ended)
            ),
            None => "before any fault".to_owned(),
        }
    }

    fn spawn(&mut self) -> usize {
        let name = format!("p{:02}", self.next_name);
        self.next_name += 1;
        let url = self.redis.url();
        self.procs.push(SoakProc::spawn(
            &name,
            &url,
            &self.fake,
            self.shards,
            &self.logs,
        ));
        self.procs.len() - 1
    }

    /// Indexes of the processes running (not ended by the test).
    fn running(&self) -> Vec<usize> {
        (0..self.procs.len())
            .filter(|&i| !self.procs[i].ended_by_test && !self.procs[i].exited)
            .collect()
    }

    /// A process that exited without being told to is a failure of the product.
    fn check_exits(&mut self) {
        for i in 0..self.procs.len() {
            if self.procs[i].ended_by_test || self.procs[i].exited {
                continue;
            }
            if let Ok(Some(status)) = self.procs[i].child.try_wait() {
                self.procs[i].exited = true;
                let now = Instant::now();
                let text = format!(
                    "process {} exited by itself ({status}) at {} ms; {}",
                    self.procs[i].name,
                    self.ms(now),
                    self.preceding(now)
                );
                self.violation(text);
            }
        }
    }

    fn sleep(&mut self, d: Duration) {
        let until = Instant::now() + d;
        while Instant::now() < until {
            std::thread::sleep(Duration::from_millis(20).min(until - Instant::now()));
        }
        self.check_exits();
    }

    /// Waits until every shard is attached at the fake, or `limit` passes; how long it took.
    fn wait_all_ready(&mut self, limit: Duration) -> Option<Duration> {
        let start = Instant::now();
        loop {
            if self.fake.ready_shards().len() == self.shards as usize {
                return Some(start.elapsed());
            }
            if start.elapsed() >= limit {
                return None;
            }
            std::thread::sleep(Duration::from_millis(20));
            self.check_exits();
        }
    }

    /// Time for a Redis that came back empty: every shard identifies again, one per bucket per
    /// window.
    fn identify_all(&self) -> Duration {
        IDENTIFY_WINDOW * self.shards.div_ceil(MAX_CONCURRENCY)
    }

    fn record(
        &mut self,
        what: String,
        at: Instant,
        bound: Option<Duration>,
        restart: bool,
    ) -> usize {
        let n = self.faults.len() + 1;
        let ended = Instant::now();
        eprintln!(
            "soak: fault #{n} at {} ms: {what} (ended {} ms)",
            self.ms(at),
            self.ms(ended)
        );
        self.faults.push(Fault {
            n,
            what,
            at,
            ended,
            bound,
            redis_restart: restart,
        });
        n
    }

    fn settle(&mut self, n: usize) {
        let bound = self.faults[n - 1].bound.unwrap_or(LEASE + TICK + RESUME);
        let took = self.wait_all_ready(bound + RESUME);
        let ended = self.faults[n - 1].ended;
        eprintln!(
            "soak: after fault #{n}: every shard attached at the fake {}",
            match took {
                Some(_) => format!(
                    "{} ms after it ended",
                    self.ms(Instant::now()) - self.ms(ended)
                ),
                None => "not yet".to_owned(),
            }
        );
    }

    /// Waits for process `i`, sent SIGTERM at `at`, to leave: within `LEAVE`, with status 0.
    fn leave(&mut self, i: usize, at: Instant) {
        let deadline = at + LEAVE;
        let status = loop {
            if let Some(status) = self.procs[i].child.try_wait().unwrap() {
                break Some(status);
            }
            if Instant::now() >= deadline {
                break None;
            }
            std::thread::sleep(Duration::from_millis(10));
        };
        if !status.is_some_and(|s| s.success()) {
            let text = format!(
                "{} did not leave cleanly on SIGTERM at {} ms: {status:?} (allowed {LEAVE:?})",
                self.procs[i].name,
                self.ms(at)
            );
            self.violation(text);
            let _ = self.procs[i].child.kill();
            let _ = self.procs[i].child.wait();
        }
    }

    fn one_fault(&mut self) {
        let bound = LEASE + TICK + RESUME;
        let running = self.running();
        // Process faults twice as often as each Redis fault and a full restart.
        let kind = [0, 0, 1, 1, 2, 2, 3, 4, 5, 6][self.rng.gen_range(0..10)];
        match kind {
            6 if !running.is_empty() => {
                // A full restart (a deploy of every process at once): each leaves on SIGTERM,
                // then as many start again and resume every shard.
                let at = Instant::now();
                for &i in &running {
                    self.procs[i].ended_by_test = true;
                    self.procs[i].signal("-TERM");
                }
                for &i in &running {
                    self.leave(i, at);
                }
                let names: Vec<String> = running
                    .iter()
                    .map(|&i| self.procs[i].name.clone())
                    .collect();
                let pause = Duration::from_millis(self.rng.gen_range(100..1000));
                self.sleep(pause);
                for _ in 0..running.len() {
                    self.spawn();
                }
                // The shards are down from the SIGTERMs until the new processes resume them:
                // one fault, ending when they start.
                let n = self.record(
                    format!(
                        "full restart: SIGTERM {names:?}, {} ms later {} new processes",
                        pause.as_millis(),
                        running.len()
                    ),
                    at,
                    Some(bound + Duration::from_secs(2)),
                    false,
                );
                self.settle(n);
            }
            0 | 2 if !running.is_empty() => {
                let i = running[self.rng.gen_range(0..running.len())];
                let at = Instant::now();
                let what;
                if kind == 0 {
                    // A burst to its shards first, so that the crash finds events received and
                    // not yet handled: none of them may be lost (issue 15, item 2).
                    // The kill comes a few flush intervals later: the burst has been received,
                    // its sequence flushed, and part of it still waits to be printed (the pipe to
                    // this test fills up).
                    for shard in self.procs[i].held() {
                        for _ in 0..BURST {
                            self.events.send(shard);
                        }
                    }
                    let delay = Duration::from_millis(self.rng.gen_range(10..80));
                    std::thread::sleep(delay);
                    self.procs[i].ended_by_test = true;
                    let _ = self.procs[i].child.kill();
                    let _ = self.procs[i].child.wait();
                    what = format!("kill -9 {}", self.procs[i].name);
                } else {
                    self.procs[i].ended_by_test = true;
                    self.procs[i].signal("-TERM");
                    self.leave(i, at);
                    what = format!("SIGTERM {}", self.procs[i].name);
                }
                let n = self.record(what, at, Some(bound), false);
                self.settle(n);
                // A replacement, as a supervisor or a deploy would start.
                let wait = Duration::from_millis(self.rng.gen_range(200..1500));
                self.sleep(wait);
                let at = Instant::now();
                let j = self.spawn();
                let what = format!(
                    "started {} (replacing {})",
                    self.procs[j].name, self.procs[i].name
                );
                let n = self.record(what, at, Some(bound + Duration::from_secs(1)), false);
                self.settle(n);
            }
            1 if !running.is_empty() => {
                let i = running[self.rng.gen_range(0..running.len())];
                let pause = LEASE.mul_f64(self.rng.gen_range(1.5..3.0));
                let from = Instant::now();
                self.procs[i].signal("-STOP");
                // Its connections to the fake, open now: it must write nothing on them once woken.
                let ports = tcp_ports_of(self.procs[i].pid(), self.fake.port());
                let connections: BTreeSet<u64> = self
                    .fake
                    .connections()
                    .iter()
                    .filter(|c| c.closed_at.is_none())
                    .filter(|c| c.peer.is_some_and(|p| ports.contains(&p.port())))
                    .map(|c| c.id)
                    .collect();
                self.sleep(pause.saturating_sub(from.elapsed()));
                // What it held when stopped: every line from before the stop has been read by now,
                // and it prints nothing until woken.
                let held = self.procs[i].held();
                let to = Instant::now();
                self.procs[i].signal("-CONT");
                let shards_of: Vec<String> = self
                    .fake
                    .connections()
                    .iter()
                    .filter(|c| connections.contains(&c.id))
                    .map(|c| format!("{}: shard {:?}", c.id, c.shard))
                    .collect();
                let what = format!(
                    "SIGSTOP {} for {} ms (its connections then: {shards_of:?}; it held {held:?})",
                    self.procs[i].name,
                    pause.as_millis(),
                );
                let name = self.procs[i].name.clone();
                let n = self.record(what, from, Some(bound), false);
                self.faults[n - 1].ended = to;
                self.pauses.push(Pause {
                    fault: n,
                    name,
                    from,
                    to,
                    connections,
                });
                self.settle(n);
            }
            3 => {
                // Shorter than the lease. Well within what a holder trusts after its last renewal
                // (lease − lease/5, renewed every tick, with room for a late tick): no shard may
                // stop. Or nearly a lease: a holder's guard may pass while its renewal waits on
                // Redis, and the shards it stops must run again in time (issue 15, item 3).
                let (pause, bound, what) = if self.rng.gen_bool(0.5) {
                    let pause = Duration::from_millis(self.rng.gen_range(100..300));
                    (pause, None, "no shard may stop")
                } else {
                    let pause = LEASE.mul_f64(self.rng.gen_range(0.6..0.95));
                    (
                        pause,
                        Some(bound),
                        "shorter than the lease, longer than it is trusted",
                    )
                };
                let at = Instant::now();
                self.redis.pause(true);
                self.sleep(pause);
                self.redis.pause(false);
                let n = self.record(
                    format!("Redis SIGSTOP for {} ms ({what})", pause.as_millis()),
                    at,
                    bound,
                    false,
                );
                self.settle(n);
            }
            4 => {
                let pause = LEASE.mul_f64(self.rng.gen_range(1.5..2.5));
                let at = Instant::now();
                self.redis.pause(true);
                self.sleep(pause);
                self.redis.pause(false);
                let n = self.record(
                    format!(
                        "Redis SIGSTOP for {} ms (longer than the lease)",
                        pause.as_millis()
                    ),
                    at,
                    Some(bound),
                    false,
                );
                self.settle(n);
            }
            _ => {
                let at = Instant::now();
                self.redis.restart();
                let n = self.record(
                    "Redis restarted empty".to_owned(),
                    at,
                    Some(bound + self.identify_all()),
                    true,
                );
                self.settle(n);
            }
        }
        let quiet = Duration::from_millis(self.rng.gen_range(300..1200));
        self.sleep(quiet);
    }
}

/// Authenticated spans of every connection of one shard: (from, to, connection).
fn spans(
    connections: &[ConnectionRecord],
    end: Instant,
) -> BTreeMap<u32, Vec<(Instant, Instant, u64)>> {
    let mut spans: BTreeMap<u32, Vec<(Instant, Instant, u64)>> = BTreeMap::new();
    for c in connections {
        if let (Some(shard), Some(at)) = (c.shard, c.attached_at) {
            // A graceful close ends it when the client's close frame arrives: the fake's answer
            // and its own end of the connection come a moment later.
            let to = c.client_closed_at.or(c.closed_at).unwrap_or(end);
            spans.entry(shard).or_default().push((at, to, c.id));
        }
    }
    for list in spans.values_mut() {
        list.sort();
    }
    spans
}

fn session_of(c: &ConnectionRecord) -> Option<&str> {
    match &c.outcome {
        ConnectionOutcome::Identified { session_id } => Some(session_id),
        ConnectionOutcome::Resumed { session_id, .. } => Some(session_id),
        _ => None,
    }
}

impl Soak {
    /// Never two authenticated connections of a shard at once, except a paused process's (which
    /// must then stay silent once woken).
    fn check_overlaps(&mut self, connections: &[ConnectionRecord], end: Instant) {
        let paused_at: HashMap<u64, Instant> = self
            .pauses
            .iter()
            .flat_map(|p| p.connections.iter().map(|c| (*c, p.from)))
            .collect();
        let mut found = Vec::new();
        for (shard, list) in spans(connections, end) {
            for (i, a) in list.iter().enumerate() {
                for b in &list[i + 1..] {
                    if b.0 >= a.1 {
                        continue;
                    }
                    if paused_at.get(&a.2).is_some_and(|&from| from <= b.0) {
                        continue;
                    }
                    found.push((shard, *a, *b));
                }
            }
        }
        for (shard, a, b) in found {
            let text = format!(
                "shard {shard}: two authenticated connections at once: {} (from {} ms to {} ms) and {} (from {} ms); {}",
                a.2,
                self.ms(a.0),
                self.ms(a.1),
                b.2,
                self.ms(b.0),
                self.preceding(b.0)
            );
            self.violation(text);
        }
    }

    /// A paused process writes nothing on the connections it had open once it wakes.
    fn check_silent_after_wake(&mut self, connections: &[ConnectionRecord]) {
        let frames = self.fake.frames();
        let mut found = Vec::new();
        for pause in &self.pauses {
            for f in frames
                .iter()
                .filter(|f| pause.connections.contains(&f.connection) && f.at >= pause.to)
            {
                let shard = f.shard.or_else(|| {
                    connections
                        .iter()
                        .find(|c| c.id == f.connection)
                        .and_then(|c| c.shard)
                });
                found.push(format!(
                    "shard {shard:?}: {} wrote op {:?} on connection {} at {} ms, after waking at {} ms from SIGSTOP (fault #{}); its lease had passed",
                    pause.name,
                    f.op,
                    f.connection,
                    self.ms(f.at),
                    self.ms(pause.to),
                    pause.fault
                ));
            }
        }
        for text in found {
            self.violation(text);
        }
    }

    /// Every shard runs again within each fault's bound; nothing stops outside a fault.
    fn check_liveness(&mut self, connections: &[ConnectionRecord], end: Instant) {
        let paused: HashMap<u64, Instant> = self
            .pauses
            .iter()
            .flat_map(|p| p.connections.iter().map(|c| (*c, p.from)))
            .collect();
        let mut found = Vec::new();
        let mut holders = None;
        for shard in 0..self.shards {
            // When the shard ran, by the fake's record; a paused process's connection counts as
            // down from the pause.
            let mut up: Vec<(Instant, Instant)> = connections
                .iter()
                .filter(|c| c.shard == Some(shard))
                .filter_map(|c| {
                    let from = c.attached_at?;
                    let mut to = c.closed_at.unwrap_or(end);
                    if let Some(&p) = paused.get(&c.id) {
                        to = to.min(p.max(from));
                    }
                    Some((from, to))
                })
                .collect();
            up.sort();
            let Some(first) = up.first().map(|u| u.0) else {
                found.push(format!(
                    "shard {shard} never ran (no READY or RESUMED at the gateway in {} ms)",
                    self.ms(end)
                ));
                continue;
            };
            let mut gaps = Vec::new();
            let mut covered = first;
            for (from, to) in up {
                if from > covered {
                    gaps.push((covered, from));
                }
                covered = covered.max(to);
            }
            if covered < end {
                gaps.push((covered, end));
            }
            for (down, back) in gaps {
                let allowed = self
                    .faults
                    .iter()
                    .filter(|f| f.at <= down)
                    .filter_map(|f| f.bound.map(|b| f.ended + b))
                    .max();
                if allowed.is_some_and(|a| back <= a) {
                    continue;
                }
                let back_text = if back >= end {
                    let holder = holders
                        .get_or_insert_with(|| lease_holders(&self.redis.url(), self.shards))
                        .as_ref()
                        .map(|h| h[shard as usize].clone());
                    let claimants: Vec<&str> = self
                        .procs
                        .iter()
                        .filter(|p| !p.exited && !p.ended_by_test && p.held().contains(&shard))
                        .map(|p| p.name.as_str())
                        .collect();
                    format!(
                        "not running at the end (its lease in Redis: {holder:?}; processes that say they hold it: {claimants:?})"
                    )
                } else {
                    format!("running again at {} ms", self.ms(back))
                };
                found.push(format!(
                    "shard {shard} down from {} ms, {back_text} ({} ms dark; allowed until {}); {}",
                    self.ms(down),
                    back.saturating_duration_since(down).as_millis(),
                    allowed.map_or("never: no fault allows it".to_owned(), |a| format!(
                        "{} ms",
                        self.ms(a)
                    )),
                    self.preceding(down)
                ));
            }
        }
        for text in found {
            self.violation(text);
        }
    }

    /// No Identify while the shard's session was resumable, except the first after Redis came
    /// back empty (the stored sessions were lost with it). Answers the sessions such an Identify
    /// legitimately replaced: their undelivered events are lost with them.
    fn check_identifies(&mut self, connections: &[ConnectionRecord]) -> BTreeSet<String> {
        let restarts: Vec<Instant> = self
            .faults
            .iter()
            .filter(|f| f.redis_restart)
            .map(|f| f.at)
            .collect();
        let mut identified: Vec<&ConnectionRecord> = connections
            .iter()
            .filter(|c| matches!(c.outcome, ConnectionOutcome::Identified { .. }))
            .collect();
        identified.sort_by_key(|c| c.attached_at);
        let mut excused = BTreeSet::new();
        let mut found = Vec::new();
        for (i, c) in identified.iter().enumerate() {
            let Some(replaced) = c.replaced.as_ref().filter(|r| r.resumable) else {
                continue;
            };
            let at = c.attached_at.expect("attached");
            let shard = c.shard.expect("identified");
            // The first Identify of the shard since the last Redis restart before it.
            let first_since_restart =
                restarts
                    .iter()
                    .filter(|&&r| r <= at)
                    .max()
                    .is_some_and(|&r| {
                        !identified[..i].iter().any(|e| {
                            e.shard == Some(shard) && e.attached_at.is_some_and(|t| t >= r)
                        })
                    });
            if first_since_restart {
                excused.insert(replaced.id.clone());
                continue;
            }
            found.push(format!(
                "shard {shard}: Identify (connection {}) at {} ms while its session {} (seq {}) was still resumable at the gateway; {}",
                c.id,
                self.ms(at),
                replaced.id,
                replaced.seq,
                self.preceding(at)
            ));
        }
        for text in found {
            self.violation(text);
        }
        excused
    }

    /// Every event printed at least once; more than once only as often as Resumes after an
    /// ungraceful loss replayed it.
    fn check_delivery(
        &mut self,
        sent: &HashMap<u64, Sent>,
        connections: &[ConnectionRecord],
        excused: &BTreeSet<String>,
        end: Instant,
    ) {
        let ready_at_end = self.fake.ready_shards();
        let mut printed: HashMap<u64, usize> = HashMap::new();
        for p in &self.procs {
            for nonce in &p.printed.lock().unwrap().events {
                *printed.entry(*nonce).or_default() += 1;
            }
        }
        // Per session, its connections in the order they were attached.
        let mut by_session: HashMap<&str, Vec<&ConnectionRecord>> = HashMap::new();
        for c in connections {
            if let (Some(s), Some(_)) = (session_of(c), c.attached_seq) {
                by_session.entry(s).or_default().push(c);
            }
        }
        for list in by_session.values_mut() {
            list.sort_by_key(|c| c.attached_seq);
        }
        // (session, seq) → the Resumes that replayed it, each with whether the connection before
        // it ended gracefully (the client's close 4000).
        let replays = |session: &str, seq: u64| -> Vec<(u64, bool, Instant)> {
            let Some(list) = by_session.get(session) else {
                return Vec::new();
            };
            let mut out = Vec::new();
            for (j, c) in list.iter().enumerate() {
                if let ConnectionOutcome::Resumed { seq: from, .. } = c.outcome {
                    if from < seq && seq <= c.attached_seq.unwrap_or(0) {
                        let graceful = j > 0 && list[j - 1].client_close_code == Some(4000);
                        out.push((c.id, graceful, c.attached_at.unwrap_or(end)));
                    }
                }
            }
            out
        };
        let mut lost: BTreeMap<u32, Vec<(u64, &Sent)>> = BTreeMap::new();
        let mut twice: BTreeMap<u32, Vec<String>> = BTreeMap::new();
        let (mut excused_lost, mut repeated) = (0, 0);
        for (nonce, s) in sent {
            let n = printed.get(nonce).copied().unwrap_or(0);
            if n == 0 {
                if excused.contains(&s.session) {
                    excused_lost += 1;
                } else {
                    lost.entry(s.shard).or_default().push((*nonce, s));
                }
                continue;
            }
            if n > 1 {
                repeated += 1;
            }
            let replayed = replays(&s.session, s.seq);
            let ungraceful = replayed.iter().filter(|r| !r.1).count();
            if n > 1 + ungraceful {
                let resumes: Vec<String> = replayed
                    .iter()
                    .map(|(c, graceful, at)| {
                        format!(
                            "connection {c} at {} ms after {}",
                            self.ms(*at),
                            if *graceful {
                                "a graceful close 4000"
                            } else {
                                "an ungraceful end"
                            }
                        )
                    })
                    .collect();
                let at = replayed.iter().find(|r| r.1).map_or(s.at, |r| r.2);
                twice.entry(s.shard).or_default().push(format!(
                    "seq {} (nonce {nonce}, sent at {} ms) printed {n} times, replayed by Resumes {resumes:?}; {}",
                    s.seq,
                    self.ms(s.at),
                    self.preceding(at)
                ));
            }
        }
        eprintln!(
            "soak: {} events sent, {} printed more than once, {} lost with sessions Redis forgot",
            sent.len(),
            repeated,
            excused_lost
        );
        let mut found = Vec::new();
        for (shard, events) in lost {
            // What became of each: the connection it was sent on live (the last attached before
            // it was sent), and the next connection of its session.
            let mut by_cause: BTreeMap<String, Vec<&Sent>> = BTreeMap::new();
            for (_, s) in events {
                let list = by_session
                    .get(s.session.as_str())
                    .map(Vec::as_slice)
                    .unwrap_or(&[]);
                let on = list
                    .iter()
                    .rev()
                    .find(|c| c.attached_at.is_some_and(|a| a <= s.at));
                let next = list
                    .iter()
                    .find(|c| c.attached_at.is_some_and(|a| a > s.at));
                let on_text = match on {
                    Some(c) => format!(
                        "sent on connection {}, which {}",
                        c.id,
                        match (c.client_close_code, c.closed_at) {
                            (Some(code), _) => format!("the client closed with {code}"),
                            (None, Some(_)) => "ended without a close from the client".to_owned(),
                            (None, None) => "is still open".to_owned(),
                        }
                    ),
                    None => "sent while no connection was attached".to_owned(),
                };
                let next_text = match next.map(|c| (c, &c.outcome)) {
                    Some((c, ConnectionOutcome::Resumed { seq, .. })) if *seq >= s.seq => format!(
                        "the session's next connection {} resumed at {} ms from seq {seq}, past it: the stored sequence was ahead of what any process printed",
                        c.id,
                        self.ms(c.attached_at.unwrap_or(end))
                    ),
                    Some((c, _)) => format!(
                        "then replayed on connection {} at {} ms, and still not printed",
                        c.id,
                        self.ms(c.attached_at.unwrap_or(end))
                    ),
                    None if !ready_at_end.contains(&shard) => {
                        "no later connection: the shard was not running at the end".to_owned()
                    }
                    None => "no later connection of its session".to_owned(),
                };
                by_cause
                    .entry(format!("{on_text}; {next_text}"))
                    .or_default()
                    .push(s);
            }
            for (cause, mut events) in by_cause {
                events.sort_by_key(|s| (s.at, s.seq));
                let first = events[0];
                found.push(format!(
                    "shard {shard}: {} events lost ({cause}); first seq {} of session {} sent at {} ms (seqs {:?}{}); {}",
                    events.len(),
                    first.seq,
                    first.session,
                    self.ms(first.at),
                    events.iter().take(8).map(|s| s.seq).collect::<Vec<_>>(),
                    if events.len() > 8 { ", ..." } else { "" },
                    self.preceding(first.at)
                ));
            }
        }
        for (shard, texts) in twice {
            found.push(format!(
                "shard {shard}: {} events printed more often than ungraceful Resumes replayed them: {}{}",
                texts.len(),
                texts.iter().take(4).cloned().collect::<Vec<_>>().join("; "),
                if texts.len() > 4 { "; ..." } else { "" }
            ));
        }
        for text in found {
            self.violation(text);
        }
    }
}

fn env_u64(name: &str) -> Option<u64> {
    std::env::var(name).ok().and_then(|v| v.parse().ok())
}

/// The soak: see the module's header.
#[test]
fn a_seeded_fleet_soak_keeps_every_promise() {
    let seed = env_u64("SHARDLINE_SOAK_SEED").unwrap_or_else(rand::random);
    let secs = env_u64("SHARDLINE_SOAK_SECS").unwrap_or(40);
    let mut rng = StdRng::seed_from_u64(seed);
    let shards = [7, 11, 13][rng.gen_range(0..3)];
    let processes = rng.gen_range(3..=5);
    eprintln!(
        "soak: seed {seed} (replay with SHARDLINE_SOAK_SEED={seed}): {processes} processes, {shards} shards, {secs} s of faults"
    );
    let logs = std::env::temp_dir().join(format!("shardline-soak-{seed}-{}", std::process::id()));
    std::fs::create_dir_all(&logs).unwrap();
    let fake_thread = FakeThread::start(FakeConfig {
        // Paused processes keep their sockets open as long as the test wants: the fake never
        // ends a session by itself, so every Identify and every lost event is the fleet's doing.
        heartbeat_timeout: Duration::from_secs(600),
        heartbeat_interval: Duration::from_secs(1),
        // The example keeps Discord's command limit, heartbeats included.
        command_limit: (120, Duration::from_secs(60)),
        replay_capacity: 1_000_000,
        ..fast_fake(shards, MAX_CONCURRENCY)
    });
    let fake = fake_thread.fake.clone();
    let t0 = Instant::now();
    let mut soak = Soak {
        rng,
        t0,
        shards,
        fake: fake.clone(),
        redis: RedisServer::start(),
        procs: Vec::new(),
        next_name: 0,
        faults: Vec::new(),
        pauses: Vec::new(),
        violations: Vec::new(),
        logs: logs.clone(),
        events: Events {
            fake: fake.clone(),
            sent: Arc::default(),
            nonce: Arc::default(),
        },
    };

    // The flood: one event to every shard with a live session every FLOOD_EVERY.
    let flooding = Arc::new(AtomicBool::new(true));
    // Stops the flood however the soak ends (a panic too), so no thread outlives it.
    struct StopFlood(Arc<AtomicBool>);
    impl Drop for StopFlood {
        fn drop(&mut self) {
            self.0.store(false, Ordering::Relaxed);
        }
    }
    let stop_flood = StopFlood(flooding.clone());
    let flood = {
        let (events, flooding) = (soak.events.clone(), flooding.clone());
        std::thread::spawn(move || {
            while flooding.load(Ordering::Relaxed) {
                for shard in 0..shards {
                    events.send(shard);
                }
                std::thread::sleep(FLOOD_EVERY);
            }
        })
    };

    let started = Instant::now();
    for _ in 0..processes {
        soak.spawn();
    }
    // Fault #1 is the start itself: the shards spread over the processes as they join.
    soak.record(
        format!("{processes} processes started"),
        started,
        Some(STARTUP),
        false,
    );
    if soak.wait_all_ready(STARTUP).is_none() {
        let ready = fake.ready_shards();
        let dark: Vec<u32> = (0..shards).filter(|s| !ready.contains(s)).collect();
        let held: Vec<(String, BTreeSet<u32>)> = soak
            .procs
            .iter()
            .map(|p| (p.name.clone(), p.held()))
            .collect();
        soak.violation(format!(
            "shards {dark:?} not running {} ms after {processes} processes started (held by their own lines: {held:?})",
            STARTUP.as_millis()
        ));
    }
    eprintln!("soak: started at {} ms", soak.ms(Instant::now()));

    let faults_until = Instant::now() + Duration::from_secs(secs);
    while Instant::now() < faults_until {
        soak.one_fault();
    }
    // The last fault's window, then the flood stops and what was sent gets printed.
    let last_bound = soak
        .faults
        .iter()
        .filter_map(|f| f.bound.map(|b| f.ended + b))
        .max()
        .unwrap_or_else(Instant::now);
    soak.sleep(last_bound.saturating_duration_since(Instant::now()));
    drop(stop_flood);
    flood.join().unwrap();
    let sent = std::mem::take(&mut *soak.events.sent.lock().unwrap());
    let all_printed = |soak: &Soak| {
        let printed: BTreeSet<u64> = soak
            .procs
            .iter()
            .flat_map(|p| p.printed.lock().unwrap().events.clone())
            .collect();
        sent.keys().all(|n| printed.contains(n))
    };
    let deadline = Instant::now() + Duration::from_secs(5);
    while !all_printed(&soak) && Instant::now() < deadline {
        soak.sleep(Duration::from_millis(50));
    }
    let end = Instant::now();
    let connections = fake.connections();

    for p in &soak.procs {
        let garbled = p.printed.lock().unwrap().garbled.clone();
        if let Some(first) = garbled.first() {
            let text = format!(
                "{} printed {} lines that are not JSON, the first: {first:?}",
                p.name,
                garbled.len()
            );
            eprintln!("soak: VIOLATION {text}");
            soak.violations.push(text);
        }
    }
    let violations = fake.bucket_violations();
    if violations > 0 {
        soak.violation(format!("{violations} Identifies broke the bucket rule"));
    }
    soak.check_overlaps(&connections, end);
    soak.check_silent_after_wake(&connections);
    soak.check_liveness(&connections, end);
    let excused = soak.check_identifies(&connections);
    soak.check_delivery(&sent, &connections, &excused, end);

    let summary: Vec<String> = soak
        .faults
        .iter()
        .map(|f| format!("#{} {} ms {}", f.n, soak.ms(f.at), f.what))
        .collect();
    let Soak {
        violations,
        procs,
        redis,
        ..
    } = soak;
    drop(procs);
    drop(redis);
    drop(fake_thread);
    assert!(
        violations.is_empty(),
        "fleet soak, seed {seed} (replay: SHARDLINE_SOAK_SEED={seed}), {processes} processes, {shards} shards, \
         lease {LEASE:?}; {} violations:\n- {}\nfaults:\n  {}\nprocess logs: {}",
        violations.len(),
        violations.join("\n- "),
        summary.join("\n  "),
        logs.display()
    );
    let _ = std::fs::remove_dir_all(&logs);
}
