//! Redis Sentinel: a fleet reached through `redis+sentinel://` follows a failover to the new
//! primary. A real primary, replica and sentinel (`redis-server --sentinel`) on loopback.

use std::time::{Duration, Instant};

use actix::prelude::*;
use shardline::fleet::sessions::SessionStoreOptions;
use shardline::fleet::{FleetOptions, FleetRedis};
use shardline::testkit::FakeGateway;
use shardline::Gateway;

use crate::harness::*;
use crate::redis_server::RedisServer;

const NAME: &str = "fleetmain";
const PREFIX: &str = "shardline:sentinel";

async fn conn(server: &RedisServer) -> redis::aio::MultiplexedConnection {
    redis::Client::open(server.url())
        .unwrap()
        .get_multiplexed_async_connection()
        .await
        .unwrap()
}

/// The server's role, or "" while it cannot say: a role change closes its clients' connections,
/// and the polls around a failover meet that.
async fn role(server: &RedisServer) -> String {
    let Ok(client) = redis::Client::open(server.url()) else {
        return String::new();
    };
    let Ok(mut conn) = client.get_multiplexed_async_connection().await else {
        return String::new();
    };
    let role: Result<Vec<redis::Value>, _> = redis::cmd("ROLE").query_async(&mut conn).await;
    match role.as_deref() {
        Ok([redis::Value::BulkString(b), ..]) => String::from_utf8(b.clone()).unwrap(),
        _ => String::new(),
    }
}

/// Polls an async condition every 20 ms for up to 30 s (a failover takes a few seconds).
async fn until<F: std::future::Future<Output = bool>>(what: &str, mut f: impl FnMut() -> F) {
    let deadline = Instant::now() + Duration::from_secs(30);
    while !f().await {
        assert!(Instant::now() < deadline, "timed out waiting for: {what}");
        actix_rt::time::sleep(Duration::from_millis(20)).await;
    }
}

/// The sequence the session store holds for `shard` on `server`.
async fn stored_seq(server: &RedisServer, shard: u32) -> Option<u64> {
    let client = redis::Client::open(server.url()).ok()?;
    let mut conn = client.get_multiplexed_async_connection().await.ok()?;
    // An error (a connection closed by a role change) reads as nothing stored yet: polled again.
    let seq: Option<String> = redis::cmd("HGET")
        .arg(format!("{PREFIX}:2:session:{shard}"))
        .arg("seq")
        .query_async(&mut conn)
        .await
        .ok()?;
    seq.and_then(|s| s.parse().ok())
}

/// A fleet member on a primary watched by a sentinel: after `SENTINEL FAILOVER` promotes the
/// replica (and turns the old primary into its replica, where no write can land), the member's
/// connection moves to the new primary: the sessions of events dispatched after the failover are
/// written there, its leases are renewed there, and every event reaches the bot.
#[actix_rt::test]
async fn a_fleet_follows_a_sentinel_failover_to_the_new_primary() {
    failover(false).await;
}

/// The same when the primary crashes (`kill -9`): the sentinel finds it down and promotes the
/// replica; the member follows, and its shards run on (or are claimed again and resumed) with
/// their sessions and leases on the new primary.
#[actix_rt::test]
async fn a_fleet_follows_the_promotion_after_its_primary_crashed() {
    failover(true).await;
}

async fn failover(crash: bool) {
    let mut primary = RedisServer::start();
    let replica = RedisServer::start_replica_of(&primary);
    let sentinel = RedisServer::start_sentinel(&primary, NAME, 500);
    until("the sentinel knows the replica", || async {
        let replicas: Vec<std::collections::HashMap<String, String>> = redis::cmd("SENTINEL")
            .arg("replicas")
            .arg(NAME)
            .query_async(&mut conn(&sentinel).await)
            .await
            .unwrap();
        replicas.iter().any(|r| {
            r.get("port") == Some(&replica.port.to_string())
                && r.get("master-link-status").map(String::as_str) == Some("ok")
        })
    })
    .await;

    let url = format!("redis+sentinel://127.0.0.1:{}/{NAME}", sentinel.port);
    let redis = FleetRedis::connect(&url, PREFIX).await.unwrap();
    assert_eq!(redis.node(), format!("127.0.0.1:{}", primary.port));

    let fake_config = fast_fake(2, 1);
    let fake = FakeGateway::start(fake_config.clone()).await.unwrap();
    let recorder = Recorder::default();
    let config = client(&fake, &fake_config, 2)
        .handler_all(recorder.clone().start().recipient())
        .build()
        .unwrap();
    let options = FleetOptions::new(url)
        .prefix(PREFIX)
        .owner("sentinel-member")
        .lease_time(Duration::from_secs(3))
        .sessions(SessionStoreOptions::default().flush_every(Duration::from_millis(20)))
        .stream_events(["MESSAGE_CREATE"]);
    let gateway = Gateway::start_fleet(config, options, Vec::new())
        .await
        .unwrap();
    assert!(
        fake.wait_for(WAIT, "both shards ready", |f| f.ready_shards().len() == 2)
            .await
    );
    let mut last = [0u64; 2];
    for shard in 0..2 {
        last[shard as usize] = fake
            .dispatch(
                shard,
                "MESSAGE_CREATE",
                serde_json::json!({"before": shard}),
            )
            .unwrap();
    }
    until("the sessions are on the primary", || async {
        stored_seq(&primary, 0).await == Some(last[0])
            && stored_seq(&primary, 1).await == Some(last[1])
    })
    .await;

    if crash {
        primary.kill();
    } else {
        let _: () = redis::cmd("SENTINEL")
            .arg("failover")
            .arg(NAME)
            .query_async(&mut conn(&sentinel).await)
            .await
            .unwrap();
    }
    // An event while the failover is under way: its stream batch fails on the old primary (gone,
    // or read-only) and must be retried on the new one.
    let mut during = Vec::new();
    for shard in 0..2 {
        if let Some(seq) = fake.dispatch(
            shard,
            "MESSAGE_CREATE",
            serde_json::json!({"during": shard}),
        ) {
            during.push((shard, seq));
        }
    }
    assert!(!during.is_empty(), "the shards were connected");
    until("the replica is promoted", || async {
        role(&replica).await == "master"
    })
    .await;
    if !crash {
        until("the old primary follows it", || async {
            role(&primary).await == "slave"
        })
        .await;
    }
    until("the fleet's connection follows", || async {
        redis.node() == format!("127.0.0.1:{}", replica.port)
    })
    .await;

    // Events after the failover: their sequences can only be written to the new primary (the old
    // one is a read-only replica now, fed by the new one, or gone).
    let mut after = Vec::new();
    for round in 0..5 {
        for shard in 0..2 {
            if let Some(seq) =
                fake.dispatch(shard, "MESSAGE_CREATE", serde_json::json!({"after": round}))
            {
                last[shard as usize] = seq;
                after.push((shard, seq));
            }
        }
        actix_rt::time::sleep(Duration::from_millis(50)).await;
    }
    until("the sessions are written to the new primary", || async {
        let mut written = fake.ready_shards().len() == 2;
        for shard in 0..2u32 {
            let live = fake.session(shard).map(|s| s.seq);
            written &= live.is_some() && stored_seq(&replica, shard).await == live;
        }
        written
    })
    .await;
    // Its leases are renewed on the new primary, still by this member.
    let mut look = conn(&replica).await;
    for shard in 0..2 {
        let lease: String = redis::cmd("GET")
            .arg(format!("{PREFIX}:2:lease:{shard}"))
            .query_async(&mut look)
            .await
            .unwrap();
        assert!(lease.starts_with("sentinel-member:"), "{lease}");
    }
    let ttl_before: i64 = redis::cmd("PTTL")
        .arg(format!("{PREFIX}:2:lease:0"))
        .query_async(&mut look)
        .await
        .unwrap();
    until("a renewal on the new primary", || async {
        let ttl: i64 = redis::cmd("PTTL")
            .arg(format!("{PREFIX}:2:lease:0"))
            .query_async(&mut conn(&replica).await)
            .await
            .unwrap();
        ttl > ttl_before
    })
    .await;
    // Every event from the failover on is in the stream, on the new primary.
    until("the events are in the new primary's stream", || async {
        let entries: redis::streams::StreamRangeReply = redis::cmd("XRANGE")
            .arg(format!("{PREFIX}:events"))
            .arg("-")
            .arg("+")
            .query_async(&mut conn(&replica).await)
            .await
            .unwrap();
        let field = |e: &redis::streams::StreamId, name: &str| -> u64 {
            match e.map.get(name) {
                Some(redis::Value::BulkString(b)) => {
                    std::str::from_utf8(b).unwrap().parse().unwrap()
                }
                other => panic!("{other:?}"),
            }
        };
        let published: std::collections::BTreeSet<(u32, u64)> = entries
            .ids
            .iter()
            .map(|e| (field(e, "shard") as u32, field(e, "seq")))
            .collect();
        during.iter().chain(&after).all(|k| published.contains(k))
    })
    .await;
    // Every event reached the bot (at least once: a lease lost in the failover may replay some).
    let got: std::collections::BTreeSet<(u32, u64)> =
        recorder.seqs("MESSAGE_CREATE").into_iter().collect();
    for key in during.iter().chain(&after) {
        assert!(got.contains(key), "{key:?} never arrived");
    }
    gateway.shutdown(true).await;
}
