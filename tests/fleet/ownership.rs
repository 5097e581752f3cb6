//! Shard ownership in-process: two fleet members (two `Gateway`s with their own owner names, as two
//! processes would be) on one Redis and one fake gateway. The tests with real processes, `kill -9`
//! and `SIGSTOP` are in `processes.rs`.

use std::time::Duration;

use actix::prelude::*;
use shardline::fleet::sessions::SessionStoreOptions;
use shardline::fleet::{FleetEvent, FleetOptions, OwnershipChange};
use shardline::testkit::{FakeConfig, FakeGateway};
use shardline::Gateway;

use crate::harness::*;
use crate::redis_server::RedisServer;

/// Every connection of each shard, as (opened, closed) on the fake's clock: no two may overlap.
pub fn assert_one_connection_at_a_time(fake: &FakeGateway) {
    let connections = fake.connections();
    for a in &connections {
        for b in &connections {
            if a.id >= b.id || a.shard.is_none() || a.shard != b.shard {
                continue;
            }
            let (first, second) = if a.opened_at <= b.opened_at {
                (a, b)
            } else {
                (b, a)
            };
            let first_closed = first
                .closed_at
                .expect("an earlier connection of a shard still open");
            assert!(
                first_closed <= second.opened_at,
                "shard {:?} had two connections open at once: {first:?} and {second:?}",
                a.shard
            );
        }
    }
}

#[derive(Default, Clone)]
struct Changes(std::sync::Arc<std::sync::Mutex<Vec<FleetEvent>>>);
impl Actor for Changes {
    type Context = Context<Self>;
}
impl Handler<FleetEvent> for Changes {
    type Result = ();
    fn handle(&mut self, e: FleetEvent, _: &mut Context<Self>) {
        self.0.lock().unwrap().push(e);
    }
}
impl Changes {
    fn count(&self, owner: &str, change: OwnershipChange) -> usize {
        self.0
            .lock()
            .unwrap()
            .iter()
            .filter(|e| e.owner == owner && e.change == change)
            .count()
    }
}

fn options(redis: &RedisServer, owner: &str) -> FleetOptions {
    FleetOptions::new(redis.url())
        .prefix("shardline:ownership")
        .owner(owner)
        .lease_time(Duration::from_millis(1200))
        .sessions(SessionStoreOptions::default().flush_every(Duration::from_millis(20)))
}

async fn member(
    fake: &FakeGateway,
    fake_config: &FakeConfig,
    redis: &RedisServer,
    owner: &str,
    recorder: &Recorder,
    changes: &Changes,
) -> Gateway {
    let config = client(fake, fake_config, 4)
        .handler_all(recorder.clone().start().recipient())
        .build()
        .unwrap();
    Gateway::start_fleet(
        config,
        options(redis, owner),
        vec![changes.clone().start().recipient()],
    )
    .await
    .unwrap()
}

/// A second member joins: the first hands half its shards over (closed resumably, session written,
/// lease released), the second resumes them (op 6), and when the first leaves the second resumes
/// the rest. Nothing is identified twice, every event arrives exactly once, and no shard ever had
/// two connections at once.
#[actix_rt::test]
async fn members_share_the_shards_and_hand_them_over_by_resuming() {
    let redis = RedisServer::start();
    let fake_config = fast_fake(4, 2);
    let fake = FakeGateway::start(fake_config.clone()).await.unwrap();
    let (recorder, changes) = (Recorder::default(), Changes::default());

    let a = member(&fake, &fake_config, &redis, "a", &recorder, &changes).await;
    assert!(
        fake.wait_for(WAIT, "a runs all 4", |f| f.ready_shards().len() == 4)
            .await
    );
    assert_eq!(a.fleet().unwrap().owner(), "a");
    for shard in 0..4 {
        fake.dispatch(
            shard,
            "MESSAGE_CREATE",
            serde_json::json!({"before": shard}),
        );
    }

    let b = member(&fake, &fake_config, &redis, "b", &recorder, &changes).await;
    wait_until("b took 2 shards over", || {
        changes.count("b", OwnershipChange::Claimed) == 2
    })
    .await;
    status_until(&b, "b's shards resumed", |s| {
        s.len() == 2 && s.iter().all(|s| s.phase == shardline::Phase::Ready)
    })
    .await;
    assert_eq!(changes.count("a", OwnershipChange::Released), 2);
    status_until(&a, "a runs 2", |s| s.len() == 2).await;
    let view = b.fleet().unwrap().view().await.unwrap();
    let owners: Vec<String> = view.iter().map(|s| s.owner.clone().unwrap().0).collect();
    assert_eq!(owners.iter().filter(|o| *o == "a").count(), 2, "{view:?}");
    assert_eq!(owners.iter().filter(|o| *o == "b").count(), 2, "{view:?}");

    for shard in 0..4 {
        fake.dispatch(shard, "MESSAGE_CREATE", serde_json::json!({"after": shard}));
    }
    a.shutdown(true).await;
    wait_until("b runs all 4", || {
        changes.count("b", OwnershipChange::Claimed) == 4
    })
    .await;
    status_until(&b, "b's 4 shards ready", |s| {
        s.len() == 4 && s.iter().all(|s| s.phase == shardline::Phase::Ready)
    })
    .await;
    for shard in 0..4 {
        fake.dispatch(shard, "MESSAGE_CREATE", serde_json::json!({"last": shard}));
    }
    wait_until("every message delivered", || {
        recorder.count("MESSAGE_CREATE") >= 12
    })
    .await;

    // 4 Identifies in all (one per shard, at the start); every move was a resume.
    assert_eq!(sent_any(&fake, 2).len(), 4);
    assert_eq!(
        sent_any(&fake, 6).len(),
        4,
        "2 moves to b, then 2 more when a left"
    );
    let mut seqs = recorder.seqs("MESSAGE_CREATE");
    seqs.sort();
    let before = seqs.len();
    seqs.dedup();
    assert_eq!(before, seqs.len(), "an event was delivered twice");
    assert_eq!(seqs.len(), 12);
    assert_one_connection_at_a_time(&fake);
    b.shutdown(true).await;
    fake.stop().await;
}

#[actix_rt::test]
async fn an_unreachable_redis_at_start_is_a_start_error() {
    let fake_config = fast_fake(1, 1);
    let fake = FakeGateway::start(fake_config.clone()).await.unwrap();
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let config = client(&fake, &fake_config, 1).build().unwrap();
    let err = Gateway::start_fleet(
        config,
        FleetOptions::new(format!("redis://127.0.0.1:{port}/")),
        Vec::new(),
    )
    .await
    .err()
    .expect("no Redis, no fleet");
    assert!(
        matches!(
            err,
            shardline::StartError::Fleet(shardline::fleet::FleetError::Connect { .. })
        ),
        "{err:?}"
    );
    assert!(err.to_string().contains("cannot reach Redis"), "{err}");
    assert!(
        fake.connections().is_empty(),
        "a shard connected without a fleet"
    );
    fake.stop().await;
}
