//! One process of a fleet that runs one bot through Redis (feature `redis`): anyone, and any test
//! harness, can run a fleet against any gateway with it.
//!
//! ```text
//! DISCORD_TOKEN=... cargo run --example fleet --features redis -- gateway --redis URL --shards N
//!     [--api-base URL] [--gateway-url URL] [--compress none|zlib-stream] [--lease-ms MS]
//!     [--range A..B] [--owner NAME] [--prefix P] [--redis-ca FILE] [--flush-ms MS]
//!     [--identify-window-ms MS] [--max-concurrency N] [--stream EVENT,...]
//!     [--range-per-ordinal K] [--http ADDR] [--grace-ms MS] [--handler-ms MS]
//! cargo run --example fleet --features redis -- worker --redis URL [--prefix P] [--redis-ca FILE]
//!     [--consumer NAME] [--group G] [--claim-idle-ms MS]
//! ```
//! `gateway` joins the fleet and runs the shards it claims, printing one JSON line per shard change
//! on stdout (`{"shard":3,"state":"claimed"|"ready"|"resumed"|"released"|"lost","owner":"..."}`)
//! and every dispatch it receives as the `tail` example does (`{"shard","seq","t","d"}`).
//! With `--stream`, the chosen events go to the fleet's Redis stream instead of stdout, and
//! `worker` consumes them (consumer group `workers`), printing each handled event the same way;
//! a worker that dies leaves its unacknowledged entries to be claimed by another after
//! `--claim-idle-ms`.
//! `--handler-ms` makes the dispatch handler take that long per event (on a thread of its own), to
//! watch a crash replay what a slow handler had not finished.
//! SIGTERM (or Ctrl-C) leaves resumably: every shard is closed with 4000, its session written to
//! Redis and its lease released for another process to resume it; after `--grace-ms` (default
//! 25 000, under Kubernetes' default 30 s) it exits anyway with code 3, and the leases it still
//! holds expire. `kill -9` is a crash: the other processes take the shards over once the leases
//! expire.
//!
//! `--range-per-ordinal K` pins the process to `K` shards chosen by the number its `HOSTNAME` ends
//! with (a StatefulSet's pod `fleet-2` runs `2K..3K`). `--http ADDR` (built with feature
//! `metrics-endpoint`) serves `/metrics`, `/healthz` and `/readyz` (`shardline::fleet::readiness`)
//! on `ADDR`; deploy/ has Kubernetes manifests that use these.

use std::io::Write;
use std::process::ExitCode;
use std::time::Duration;

use actix::prelude::*;
use shardline::fleet::{FleetEvent, FleetOptions, Placement};
use shardline::{Compression, Config, Dispatch, Gateway, ShardEvent, ShardPlan};

/// Writes JSON lines to stdout; one actor so that lines never interleave.
struct Out {
    out: std::io::LineWriter<std::io::Stdout>,
    owner: String,
    /// How long each dispatch takes it (`--handler-ms`).
    each: Duration,
}

impl Actor for Out {
    type Context = Context<Self>;
}

impl Out {
    fn line(&mut self, parts: &[&[u8]]) {
        let written = parts.iter().try_for_each(|p| self.out.write_all(p));
        if written.is_err() {
            System::current().stop_with_code(0);
        }
    }
}

impl Handler<Dispatch> for Out {
    type Result = ();

    fn handle(&mut self, d: Dispatch, _: &mut Context<Self>) {
        if !self.each.is_zero() {
            // A slow handler: the events after this one wait in its mailbox meanwhile.
            std::thread::sleep(self.each);
        }
        // From the event stream, the session too: (shard, session, seq) is the idempotency key.
        let session = d
            .session()
            .map(|s| format!(",\"session\":{}", serde_json::Value::from(s)))
            .unwrap_or_default();
        let head = format!(
            "{{\"shard\":{},\"seq\":{}{session},\"t\":{},\"d\":",
            d.shard(),
            d.seq(),
            serde_json::Value::from(d.event())
        );
        self.line(&[head.as_bytes(), d.data(), b"}\n"]);
    }
}

impl Handler<ShardEvent> for Out {
    type Result = ();

    fn handle(&mut self, event: ShardEvent, _: &mut Context<Self>) {
        let (shard, state) = match event {
            ShardEvent::Ready { shard, .. } => (shard, "ready"),
            ShardEvent::Resumed { shard } => (shard, "resumed"),
            ShardEvent::Fatal { shard, error } => {
                eprintln!("fleet: shard {shard} stopped: {error}");
                System::current().stop_with_code(2);
                return;
            }
            _ => return,
        };
        let line = serde_json::json!({"shard": shard, "state": state, "owner": self.owner});
        self.line(&[line.to_string().as_bytes(), b"\n"]);
    }
}

impl Handler<FleetEvent> for Out {
    type Result = ();

    fn handle(&mut self, event: FleetEvent, _: &mut Context<Self>) {
        let line = serde_json::json!({
            "shard": event.shard,
            "state": event.change.as_str(),
            "owner": event.owner,
        });
        self.line(&[line.to_string().as_bytes(), b"\n"]);
    }
}

struct GatewayArgs {
    redis: String,
    shards: u32,
    api_base: Option<String>,
    gateway_url: Option<String>,
    compress: Compression,
    lease: Duration,
    range: Option<std::ops::Range<u32>>,
    owner: Option<String>,
    prefix: Option<String>,
    redis_ca: Option<Vec<u8>>,
    flush: Option<Duration>,
    identify_window: Option<Duration>,
    max_concurrency: Option<u32>,
    stream: Vec<String>,
    /// Shards per pod: the range is the pod ordinal's (the number ending `HOSTNAME`).
    range_per_ordinal: Option<u32>,
    http: Option<String>,
    grace: Duration,
    handler_time: Duration,
}

const USAGE: &str = "usage: fleet gateway --redis URL --shards N [--api-base URL] [--gateway-url URL] \
[--compress none|zlib-stream] [--lease-ms MS] [--range A..B] [--owner NAME] [--prefix P] [--redis-ca FILE] \
[--flush-ms MS] [--identify-window-ms MS] [--max-concurrency N] [--stream EVENT,...] \
[--range-per-ordinal K] [--http ADDR] [--grace-ms MS] [--handler-ms MS]\n       \
fleet worker --redis URL [--prefix P] [--redis-ca FILE] [--consumer NAME] [--group G] [--claim-idle-ms MS]";

fn millis(flag: &str, v: String) -> Result<Duration, String> {
    v.parse()
        .map(Duration::from_millis)
        .map_err(|e| format!("{flag}: {e}"))
}

fn read_file(flag: &str, path: String) -> Result<Vec<u8>, String> {
    std::fs::read(&path).map_err(|e| format!("{flag} {path}: {e}"))
}

fn parse_gateway(mut it: impl Iterator<Item = String>) -> Result<GatewayArgs, String> {
    let mut redis = None;
    let mut shards = None;
    let mut args = GatewayArgs {
        redis: String::new(),
        shards: 0,
        api_base: None,
        gateway_url: None,
        compress: Compression::ZlibStream,
        lease: Duration::from_secs(10),
        range: None,
        owner: None,
        prefix: None,
        redis_ca: None,
        flush: None,
        identify_window: None,
        max_concurrency: None,
        stream: Vec::new(),
        range_per_ordinal: None,
        http: None,
        grace: Duration::from_secs(25),
        handler_time: Duration::ZERO,
    };
    while let Some(flag) = it.next() {
        let mut value = || it.next().ok_or(format!("{flag} needs a value"));
        match flag.as_str() {
            "--redis" => redis = Some(value()?),
            "--shards" => shards = Some(value()?.parse().map_err(|e| format!("--shards: {e}"))?),
            "--api-base" => args.api_base = Some(value()?),
            "--gateway-url" => args.gateway_url = Some(value()?),
            "--compress" => {
                args.compress = match value()?.as_str() {
                    "none" => Compression::None,
                    "zlib-stream" => Compression::ZlibStream,
                    other => return Err(format!("--compress: unknown value {other:?}")),
                }
            }
            "--lease-ms" => args.lease = millis(&flag, value()?)?,
            "--range" => {
                let v = value()?;
                let (a, b) = v
                    .split_once("..")
                    .ok_or(format!("--range: {v:?} is not A..B"))?;
                let a = a.parse().map_err(|e| format!("--range: {e}"))?;
                let b = b.parse().map_err(|e| format!("--range: {e}"))?;
                args.range = Some(a..b);
            }
            "--owner" => args.owner = Some(value()?),
            "--prefix" => args.prefix = Some(value()?),
            "--redis-ca" => args.redis_ca = Some(read_file(&flag, value()?)?),
            "--flush-ms" => args.flush = Some(millis(&flag, value()?)?),
            "--identify-window-ms" => args.identify_window = Some(millis(&flag, value()?)?),
            "--max-concurrency" => {
                args.max_concurrency = Some(
                    value()?
                        .parse()
                        .map_err(|e| format!("--max-concurrency: {e}"))?,
                )
            }
            "--range-per-ordinal" => {
                args.range_per_ordinal = Some(
                    value()?
                        .parse()
                        .map_err(|e| format!("--range-per-ordinal: {e}"))?,
                )
            }
            "--http" => args.http = Some(value()?),
            "--grace-ms" => args.grace = millis(&flag, value()?)?,
            "--stream" => {
                args.stream = value()?
                    .split(',')
                    .filter(|s| !s.is_empty())
                    .map(str::to_owned)
                    .collect()
            }
            "--handler-ms" => args.handler_time = millis(&flag, value()?)?,
            other => return Err(format!("unknown argument {other:?}\n{USAGE}")),
        }
    }
    args.redis = redis.ok_or(format!("--redis is required\n{USAGE}"))?;
    args.shards = shards.ok_or(format!("--shards is required\n{USAGE}"))?;
    if let Some(per) = args.range_per_ordinal {
        if args.range.is_some() {
            return Err("--range and --range-per-ordinal exclude each other".into());
        }
        args.range = Some(ordinal_range(per, args.shards)?);
    }
    Ok(args)
}

/// The range of the pod whose name (`HOSTNAME`, as a StatefulSet names its pods: `name-<ordinal>`)
/// ends with its ordinal: `per` shards from `ordinal * per`.
fn ordinal_range(per: u32, shards: u32) -> Result<std::ops::Range<u32>, String> {
    let host = std::env::var("HOSTNAME").map_err(|_| "--range-per-ordinal: HOSTNAME is not set")?;
    let ordinal: u32 = host
        .rsplit_once('-')
        .and_then(|(_, n)| n.parse().ok())
        .ok_or(format!(
            "--range-per-ordinal: HOSTNAME {host:?} does not end with -<ordinal>"
        ))?;
    let start = ordinal
        .checked_mul(per)
        .filter(|s| *s < shards && per > 0)
        .ok_or(format!(
            "--range-per-ordinal: pod {ordinal} with {per} shards each is past the {shards} shards"
        ))?;
    Ok(start..(start + per).min(shards))
}

async fn run_gateway(args: GatewayArgs, token: String) -> Result<(), Box<dyn std::error::Error>> {
    let mut options = FleetOptions::new(args.redis).lease_time(args.lease);
    if let Some(prefix) = args.prefix {
        options = options.prefix(prefix);
    }
    if let Some(pem) = args.redis_ca {
        options = options.redis_ca_pem(pem);
    }
    if let Some(owner) = args.owner {
        options = options.owner(owner);
    }
    if let Some(range) = args.range {
        options = options.placement(Placement::Pinned(range));
    }
    if let Some(flush) = args.flush {
        let sessions = options.sessions.flush_every(flush);
        options = options.sessions(sessions);
    }
    let out = Out {
        out: std::io::LineWriter::new(std::io::stdout()),
        owner: options.owner.clone(),
        each: Duration::ZERO,
    }
    .start();
    // A slow dispatch handler sleeps on a thread of its own, not on the one the fleet's keeper runs on.
    let dispatches = if args.handler_time.is_zero() {
        out.clone()
    } else {
        let (owner, each) = (options.owner.clone(), args.handler_time);
        Out::start_in_arbiter(&Arbiter::new().handle(), move |_| Out {
            out: std::io::LineWriter::new(std::io::stdout()),
            owner,
            each,
        })
    };
    let mut builder = Config::builder(token)
        // GUILDS | GUILD_MESSAGES | DIRECT_MESSAGES
        .intent_bits(1 | 1 << 9 | 1 << 12)
        .compression(args.compress)
        .shards(ShardPlan::Count(args.shards))
        .events(out.clone().recipient());
    if args.stream.is_empty() {
        builder = builder.handler_all(dispatches.recipient());
    } else {
        options = options.stream_events(args.stream.clone());
    }
    if let Some(url) = args.api_base {
        builder = builder.api_base(url);
    }
    if let Some(url) = args.gateway_url {
        builder = builder.gateway_url(url);
    }
    if let Some(window) = args.identify_window {
        builder = builder.identify_window(window);
    }
    if let Some(mc) = args.max_concurrency {
        builder = builder.max_concurrency(mc);
    }
    // Served before the fleet is joined, so a liveness probe gets its answer while it starts.
    let started = std::sync::Arc::new(std::sync::OnceLock::new());
    if let Some(addr) = &args.http {
        builder = serve_http(builder, addr, started.clone())?;
    }
    let gateway = Gateway::start_fleet(builder.build()?, options, vec![out.recipient()]).await?;
    let _ = started.set(gateway.clone());
    let grace = args.grace;
    actix_rt::spawn(async move {
        let mut term =
            actix_rt::signal::unix::signal(actix_rt::signal::unix::SignalKind::terminate())
                .expect("a SIGTERM handler");
        tokio::select! {
            _ = term.recv() => {}
            _ = actix_rt::signal::ctrl_c() => {}
        }
        // The hand-over gets the grace; whatever is left after it is left to its leases, which
        // expire by themselves (docs/fleet.md, "Health").
        if tokio::time::timeout(grace, gateway.shutdown(true))
            .await
            .is_err()
        {
            eprintln!("fleet: the hand-over took longer than --grace-ms {}; exiting, the remaining leases will expire", grace.as_millis());
            System::current().stop_with_code(GRACE_RAN_OUT);
            return;
        }
        System::current().stop();
    });
    Ok(())
}

/// The exit code of a process whose hand-over did not finish within `--grace-ms`.
const GRACE_RAN_OUT: i32 = 3;

/// `--http`: `/metrics`, `/healthz` and `/readyz` (feature `metrics-endpoint`).
#[cfg(feature = "metrics-endpoint")]
fn serve_http(
    builder: shardline::ConfigBuilder,
    addr: &str,
    started: std::sync::Arc<std::sync::OnceLock<Gateway>>,
) -> Result<shardline::ConfigBuilder, Box<dyn std::error::Error>> {
    let metrics = shardline::metrics::Metrics::default();
    let check: shardline::metrics::ReadinessCheck = std::sync::Arc::new(move || {
        let gateway = started.get().cloned();
        Box::pin(async move {
            match gateway {
                None => Err("not ready: joining the fleet".to_owned()),
                Some(gateway) => shardline::fleet::readiness(&gateway).await.into_result(),
            }
        })
    });
    metrics.serve_with_readiness(addr, check)?;
    Ok(builder.metrics(metrics))
}

#[cfg(not(feature = "metrics-endpoint"))]
fn serve_http(
    _: shardline::ConfigBuilder,
    _: &str,
    _: std::sync::Arc<std::sync::OnceLock<Gateway>>,
) -> Result<shardline::ConfigBuilder, Box<dyn std::error::Error>> {
    Err("--http needs the example built with feature metrics-endpoint".into())
}

struct WorkerArgs {
    redis: String,
    prefix: Option<String>,
    redis_ca: Option<Vec<u8>>,
    consumer: String,
    group: String,
    claim_idle: Duration,
}

fn parse_worker(mut it: impl Iterator<Item = String>) -> Result<WorkerArgs, String> {
    let mut args = WorkerArgs {
        redis: String::new(),
        prefix: None,
        redis_ca: None,
        consumer: format!("worker-{}", std::process::id()),
        group: "workers".into(),
        claim_idle: Duration::from_secs(30),
    };
    let mut redis = None;
    while let Some(flag) = it.next() {
        let mut value = || it.next().ok_or(format!("{flag} needs a value"));
        match flag.as_str() {
            "--redis" => redis = Some(value()?),
            "--prefix" => args.prefix = Some(value()?),
            "--redis-ca" => args.redis_ca = Some(read_file(&flag, value()?)?),
            "--consumer" => args.consumer = value()?,
            "--group" => args.group = value()?,
            "--claim-idle-ms" => args.claim_idle = millis(&flag, value()?)?,
            other => return Err(format!("unknown argument {other:?}\n{USAGE}")),
        }
    }
    args.redis = redis.ok_or(format!("--redis is required\n{USAGE}"))?;
    Ok(args)
}

/// A worker: consumes the fleet's event stream and prints each handled event as the gateway does.
async fn run_worker(args: WorkerArgs) -> Result<(), Box<dyn std::error::Error>> {
    use shardline::fleet::stream::{StopConsumer, StreamConsumer};
    // The gateways' prefix: derived from the same token unless given.
    let prefix = args.prefix.unwrap_or_else(|| {
        let token = std::env::var("DISCORD_TOKEN").unwrap_or_default();
        FleetOptions::new(&args.redis).prefix_for(&shardline::Token::new(token))
    });
    let redis = shardline::fleet::FleetRedis::connect_with_ca(
        &args.redis,
        &prefix,
        args.redis_ca.as_deref(),
    )
    .await?;
    let out = Out {
        out: std::io::LineWriter::new(std::io::stdout()),
        owner: args.consumer.clone(),
        each: Duration::ZERO,
    }
    .start();
    let consumer = StreamConsumer::builder(redis, &args.group, &args.consumer)
        .handler_all(out.recipient())
        .claim_idle(args.claim_idle)
        .claim_every(args.claim_idle / 2)
        // A read blocks for less than an entry may sit unclaimed.
        .block(args.claim_idle / 4)
        .start()?;
    actix_rt::spawn(async move {
        let mut term =
            actix_rt::signal::unix::signal(actix_rt::signal::unix::SignalKind::terminate())
                .expect("a SIGTERM handler");
        tokio::select! {
            _ = term.recv() => {}
            _ = actix_rt::signal::ctrl_c() => {}
        }
        let _ = consumer.send(StopConsumer).await;
        System::current().stop();
    });
    Ok(())
}

fn main() -> ExitCode {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "info".into()),
        )
        .with_writer(std::io::stderr)
        .init();
    let mut it = std::env::args().skip(1);
    let command = it.next().unwrap_or_default();
    let system = System::new();
    let started = match command.as_str() {
        "gateway" => {
            let args = match parse_gateway(it) {
                Ok(args) => args,
                Err(e) => {
                    eprintln!("fleet: {e}");
                    return ExitCode::from(64);
                }
            };
            let Ok(token) = std::env::var("DISCORD_TOKEN") else {
                eprintln!("fleet: set DISCORD_TOKEN");
                return ExitCode::from(64);
            };
            system.block_on(run_gateway(args, token))
        }
        "worker" => {
            let args = match parse_worker(it) {
                Ok(args) => args,
                Err(e) => {
                    eprintln!("fleet: {e}");
                    return ExitCode::from(64);
                }
            };
            system.block_on(run_worker(args))
        }
        _ => {
            eprintln!("{USAGE}");
            return ExitCode::from(64);
        }
    };
    if let Err(e) = started {
        eprintln!("fleet: {e}");
        return ExitCode::from(1);
    }
    match system.run_with_code() {
        Ok(0) => ExitCode::SUCCESS,
        Ok(code) => ExitCode::from(code.clamp(1, 255) as u8),
        Err(e) => {
            eprintln!("fleet: {e}");
            ExitCode::from(1)
        }
    }
}
