//! The README's main job: a bot of four shards against the built-in fake gateway, no token needed.
//!
//! It starts the fake gateway in-process, asks it (like Discord) for the recommended shard count,
//! runs four shards with a handler actor that counts `MESSAGE_CREATE`s, sends a flood of messages,
//! forces one shard to reconnect and resume mid-flood, prints every shard's status, and shuts down.
//!
//! Run: `cargo run --example demo --features testkit`

use std::collections::BTreeMap;
use std::time::Duration;

use actix::prelude::*;
use shardline::testkit::{FakeConfig, FakeGateway};
use shardline::{Compression, Config, Dispatch, Gateway, Intents, ShardPlan};

const SHARDS: u32 = 4;
const PER_SHARD: usize = 2_500;

/// Counts the messages each shard delivered.
#[derive(Default)]
struct MessageCounter {
    per_shard: BTreeMap<u32, usize>,
}

impl Actor for MessageCounter {
    type Context = Context<Self>;
}

impl Handler<Dispatch> for MessageCounter {
    type Result = ();

    fn handle(&mut self, msg: Dispatch, _: &mut Context<Self>) {
        *self.per_shard.entry(msg.shard()).or_default() += 1;
    }
}

#[derive(Message)]
#[rtype(result = "BTreeMap<u32, usize>")]
struct Counts;

impl Handler<Counts> for MessageCounter {
    type Result = MessageResult<Counts>;

    fn handle(&mut self, _: Counts, _: &mut Context<Self>) -> Self::Result {
        MessageResult(self.per_shard.clone())
    }
}

#[actix_rt::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| "warn,demo=info".into()),
        )
        .with_writer(std::io::stderr)
        .init();

    let fake = FakeGateway::start(FakeConfig {
        shards: SHARDS,
        max_concurrency: 2,
        heartbeat_interval: Duration::from_millis(500),
        identify_window: Duration::from_millis(500),
        guilds_per_shard: 3,
        ..FakeConfig::default()
    })
    .await?;
    println!("fake gateway listening on {}", fake.gateway_url());

    let counter = MessageCounter::default().start();
    let config = Config::builder("fake-token")
        .intents(Intents::GUILDS | Intents::GUILD_MESSAGES | Intents::MESSAGE_CONTENT)
        .shards(ShardPlan::Recommended)
        .api_base(fake.api_base())
        .identify_window(Duration::from_millis(500))
        .compression(Compression::ZlibStream)
        .handler("MESSAGE_CREATE", counter.clone().recipient())
        .build()?;
    let gateway = Gateway::start(config).await?;
    let plan = gateway.plan();
    println!(
        "GET /gateway/bot recommends {} shards, max_concurrency {}",
        plan.total, plan.max_concurrency
    );

    if !fake
        .wait_for(Duration::from_secs(30), "all shards ready", |f| {
            f.ready_shards().len() == SHARDS as usize
        })
        .await
    {
        return Err("shards did not become ready".into());
    }
    println!("all {SHARDS} shards READY; flooding {PER_SHARD} MESSAGE_CREATEs per shard");

    let body = r#"{"id":"1190000000000000000","channel_id":"1180000000000000000","guild_id":"1170000000000000000","author":{"id":"1160000000000000000","username":"demo","discriminator":"0","avatar":null},"content":"hello from the fake gateway","timestamp":"2026-11-24T12:00:00.000000+00:00","tts":false,"mention_everyone":false,"mentions":[],"mention_roles":[],"attachments":[],"embeds":[],"pinned":false,"type":0}"#;
    for shard in 0..SHARDS {
        fake.flood(shard, "MESSAGE_CREATE", body, PER_SHARD / 2);
    }
    // Shard 1 is told to reconnect mid-flood; what it misses is replayed when it resumes.
    fake.reconnect(1);
    for shard in 0..SHARDS {
        fake.flood(shard, "MESSAGE_CREATE", body, PER_SHARD - PER_SHARD / 2);
    }

    let expected = PER_SHARD * SHARDS as usize;
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    let counts = loop {
        let counts = counter.send(Counts).await?;
        if counts.values().sum::<usize>() >= expected || std::time::Instant::now() > deadline {
            break counts;
        }
        actix_rt::time::sleep(Duration::from_millis(20)).await;
    };

    println!("\n shard | phase | seq   | latency | reconnects | messages | session");
    println!("-------+-------+-------+---------+------------+----------+---------------------------------");
    for status in gateway.status().await {
        println!(
            " {:>5} | {:<5} | {:>5} | {:>7} | {:>10} | {:>8} | {}",
            status.id,
            format!("{:?}", status.phase),
            status.seq.map_or("-".into(), |s| s.to_string()),
            status
                .latency
                .map_or("-".into(), |l| format!("{}ms", l.as_millis())),
            status.reconnects,
            counts.get(&status.id).copied().unwrap_or(0),
            status.session_id.unwrap_or_default(),
        );
    }
    let total: usize = counts.values().sum();
    println!("\n{total} of {expected} messages delivered, each exactly once");

    gateway.shutdown(false).await;
    fake.stop().await;
    if total != expected {
        return Err(format!("delivered {total}, expected {expected}").into());
    }
    Ok(())
}
