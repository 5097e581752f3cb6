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
    let builder = client(fake, fake_config, 4).handler_all(recorder.clone().start().recipient());
    join(builder, redis, owner, changes).await
}

/// Starts a member from `builder` under `owner`, its ownership changes recorded in `changes`.
async fn join(
    builder: shardline::ConfigBuilder,
    redis: &RedisServer,
    owner: &str,
    changes: &Changes,
) -> Gateway {
    Gateway::start_fleet(
        builder.build().unwrap(),
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
    let a_status = status_until(&a, "a runs 2", |s| s.len() == 2).await;
    assert!(a_status.iter().all(|s| s.owner.as_deref() == Some("a")));
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

/// One member with two shards, its events recorded.
async fn one_member(
    redis: &RedisServer,
    lease: Duration,
) -> (FakeGateway, Gateway, Recorder, Changes) {
    let fake_config = fast_fake(2, 2);
    let fake = FakeGateway::start(fake_config.clone()).await.unwrap();
    let (recorder, changes) = (Recorder::default(), Changes::default());
    let config = client(&fake, &fake_config, 2)
        .handler_all(recorder.clone().start().recipient())
        .build()
        .unwrap();
    let gateway = Gateway::start_fleet(
        config,
        options(redis, "solo").lease_time(lease),
        vec![changes.clone().start().recipient()],
    )
    .await
    .unwrap();
    status_until(&gateway, "both shards ready", |s| {
        s.len() == 2 && s.iter().all(|s| s.phase == shardline::Phase::Ready)
    })
    .await;
    (fake, gateway, recorder, changes)
}

/// Redis unreachable for less than a lease: the shards run on (no connection closed, events
/// delivered meanwhile), and the sequences written meanwhile reach Redis once it answers again.
#[actix_rt::test]
async fn a_short_redis_outage_changes_nothing_for_the_shards() {
    let redis = RedisServer::start();
    let (fake, gateway, recorder, changes) = one_member(&redis, Duration::from_secs(3)).await;
    let connections = fake.connections().len();
    redis.pause(true);
    let mut last = 0;
    for i in 0..20 {
        last = fake
            .dispatch(i % 2, "MESSAGE_CREATE", serde_json::json!({"i": i}))
            .unwrap();
    }
    wait_until("delivered while Redis is away", || {
        recorder.count("MESSAGE_CREATE") == 20
    })
    .await;
    actix_rt::time::sleep(Duration::from_millis(800)).await;
    redis.pause(false);
    let store = gateway.fleet().unwrap().sessions().clone();
    let deadline = std::time::Instant::now() + WAIT;
    loop {
        let stored = store.read_from_redis(1).await.ok().flatten().map(|s| s.seq);
        if stored == Some(last) || stored == Some(last - 1) {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "sequences never reached Redis: {stored:?}"
        );
        actix_rt::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(
        fake.connections().len(),
        connections,
        "a connection was replaced"
    );
    assert!(fake.connections().iter().all(|c| c.closed_at.is_none()));
    assert_eq!(changes.count("solo", OwnershipChange::Lost), 0);
    gateway.shutdown(true).await;
    fake.stop().await;
}

/// Redis unreachable past the lease: the shards stop (the process must not run them without
/// ownership), and once Redis answers again the member claims them back and resumes them from
/// the sessions still in Redis, by itself.
#[actix_rt::test]
async fn a_long_redis_outage_stops_the_shards_and_the_fleet_recovers_by_itself() {
    let redis = RedisServer::start();
    let (fake, gateway, _recorder, changes) = one_member(&redis, Duration::from_millis(800)).await;
    redis.pause(true);
    wait_until("the shards stopped", || {
        changes.count("solo", OwnershipChange::Lost) == 2
    })
    .await;
    wait_until("their connections closed", || {
        fake.connections().iter().all(|c| c.closed_at.is_some())
    })
    .await;
    status_until(&gateway, "no shard runs", |s| s.is_empty()).await;
    redis.pause(false);
    wait_until("claimed back", || {
        changes.count("solo", OwnershipChange::Claimed) == 4
    })
    .await;
    status_until(&gateway, "both ready again", |s| {
        s.len() == 2 && s.iter().all(|s| s.phase == shardline::Phase::Ready)
    })
    .await;
    assert_eq!(sent_any(&fake, 2).len(), 2, "recovery identified again");
    assert_eq!(
        sent_any(&fake, 6).len(),
        2,
        "recovery resumed from the stored sessions"
    );
    assert_one_connection_at_a_time(&fake);
    gateway.shutdown(true).await;
    fake.stop().await;
}

/// Redis killed and started again empty (no persistence): leases and sessions are gone; the
/// member claims its shards again and, with no session to resume, identifies them. Nothing panics.
#[actix_rt::test]
async fn redis_restarted_empty_while_shards_run_is_recovered_from() {
    let mut redis = RedisServer::start();
    let (fake, gateway, recorder, changes) = one_member(&redis, Duration::from_millis(800)).await;
    redis.kill();
    actix_rt::time::sleep(Duration::from_millis(300)).await;
    redis.restart();
    wait_until("claimed back", || {
        changes.count("solo", OwnershipChange::Claimed) == 4
    })
    .await;
    status_until(&gateway, "both ready again", |s| {
        s.len() == 2 && s.iter().all(|s| s.phase == shardline::Phase::Ready)
    })
    .await;
    let seq = fake
        .dispatch(0, "MESSAGE_CREATE", serde_json::json!({"after": true}))
        .unwrap();
    wait_until("events flow again", || {
        recorder.seqs("MESSAGE_CREATE").contains(&(0, seq))
    })
    .await;
    assert_one_connection_at_a_time(&fake);
    gateway.shutdown(true).await;
    fake.stop().await;
}

/// Pinned placement: each member runs exactly its range, with leases and the shared store. A range
/// whose member leaves is not taken over by the other; a member started again with that range
/// resumes its shards.
#[actix_rt::test]
async fn pinned_ranges_run_only_their_ids_and_a_restarted_range_resumes() {
    use shardline::fleet::Placement;
    let redis = RedisServer::start();
    let fake_config = fast_fake(4, 2);
    let fake = FakeGateway::start(fake_config.clone()).await.unwrap();
    let (recorder, changes) = (Recorder::default(), Changes::default());
    let pinned = |owner: &str, ids: std::ops::Range<u32>| {
        options(&redis, owner).placement(Placement::Pinned(ids))
    };
    let start = |owner: &'static str, ids: std::ops::Range<u32>| {
        let config = client(&fake, &fake_config, 4)
            .handler_all(recorder.clone().start().recipient())
            .build()
            .unwrap();
        let options = pinned(owner, ids);
        let changes = changes.clone();
        async move {
            Gateway::start_fleet(config, options, vec![changes.start().recipient()])
                .await
                .unwrap()
        }
    };
    let low = start("low", 0..2).await;
    let high = start("high", 2..4).await;
    let ready = |s: &[shardline::ShardStatus]| {
        s.len() == 2 && s.iter().all(|s| s.phase == shardline::Phase::Ready)
    };
    let low_status = status_until(&low, "low runs 0 and 1", ready).await;
    let high_status = status_until(&high, "high runs 2 and 3", ready).await;
    assert_eq!(low_status.iter().map(|s| s.id).collect::<Vec<_>>(), [0, 1]);
    assert_eq!(high_status.iter().map(|s| s.id).collect::<Vec<_>>(), [2, 3]);

    high.shutdown(true).await;
    // A tick of low's keeper well after high left (a tick claims what its placement wants, then
    // reports its shards' status, stamped by Redis): had low wanted high's range, it would have
    // claimed it by then.
    let left = std::time::Instant::now();
    let fleet = low.fleet().unwrap().clone();
    let deadline = left + WAIT;
    loop {
        let view = fleet.view().await.unwrap();
        let ago = view[0].reported_ago.unwrap_or(Duration::MAX);
        if ago + Duration::from_millis(450) < left.elapsed() {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "low never reported again"
        );
        actix_rt::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(
        changes.count("low", OwnershipChange::Claimed),
        2,
        "low claimed outside its range"
    );
    assert_eq!(
        status_until(&low, "low unchanged", |s| s.len() == 2)
            .await
            .len(),
        2
    );

    let again = start("high-again", 2..4).await;
    status_until(&again, "the range is back", ready).await;
    assert_eq!(
        sent_any(&fake, 2).len(),
        4,
        "the range was identified again"
    );
    assert_eq!(
        sent_any(&fake, 6).len(),
        2,
        "the range resumed its two shards"
    );
    assert_one_connection_at_a_time(&fake);
    low.shutdown(true).await;
    again.shutdown(true).await;
    fake.stop().await;
}

/// A member of `total` shards (balanced), with its own recorder and changes.
async fn member_of(
    fake: &FakeGateway,
    fake_config: &FakeConfig,
    redis: &RedisServer,
    owner: &str,
    total: u32,
    changes: &Changes,
) -> Gateway {
    join(client(fake, fake_config, total), redis, owner, changes).await
}

/// Uneven counts: 7 shards over 3 members, and 3 over 2. Every shard runs, split by names (the
/// first members by name one more), never one left dark for want of a member taking the
/// remainder.
#[actix_rt::test]
async fn uneven_shard_counts_leave_no_shard_dark() {
    for (total, names) in [(7u32, &["a", "b", "c"][..]), (3, &["a", "b"][..])] {
        let redis = RedisServer::start();
        let fake_config = fast_fake(total, total);
        let fake = FakeGateway::start(fake_config.clone()).await.unwrap();
        let changes = Changes::default();
        let mut members = Vec::new();
        for name in names {
            members.push(member_of(&fake, &fake_config, &redis, name, total, &changes).await);
        }
        assert!(
            fake.wait_for(WAIT, "every shard ready", |f| f.ready_shards().len()
                == total as usize)
                .await,
            "{total} shards over {}: ready {:?}",
            names.len(),
            fake.ready_shards()
        );
        let n = names.len() as u32;
        for (i, (name, member)) in names.iter().zip(&members).enumerate() {
            let share = (total / n + u32::from((i as u32) < total % n)) as usize;
            status_until(member, "its share ready", |s| {
                s.len() == share && s.iter().all(|s| s.phase == shardline::Phase::Ready)
            })
            .await;
            assert!(changes.count(name, OwnershipChange::Lost) == 0);
        }
        assert_one_connection_at_a_time(&fake);
        for member in &members {
            member.shutdown(true).await;
        }
        fake.stop().await;
    }
}

/// Redis stalls for most of a lease, again and again: when a renewal sent before the guard ran out
/// gets through after the shard had stopped itself, the lease is this process's and the shard runs
/// again (or the lease is given up); never a lease held for a shard that no longer runs.
#[actix_rt::test]
async fn a_renewal_that_lands_after_its_shard_stopped_does_not_strand_the_lease() {
    let redis = RedisServer::start();
    let (fake, gateway, _recorder, _changes) =
        one_member(&redis, Duration::from_millis(1200)).await;
    for _ in 0..4 {
        redis.pause(true);
        actix_rt::time::sleep(Duration::from_millis(1000)).await;
        redis.pause(false);
        actix_rt::time::sleep(Duration::from_millis(400)).await;
    }
    status_until(&gateway, "both shards run again", |s| {
        s.len() == 2 && s.iter().all(|s| s.phase == shardline::Phase::Ready)
    })
    .await;
    // Every lease this process holds in Redis is a shard it runs.
    let deadline = std::time::Instant::now() + WAIT;
    loop {
        let view = gateway.fleet().unwrap().view().await.unwrap();
        let status = gateway.status().await;
        let held: Vec<u32> = view
            .iter()
            .filter(|s| s.owner.as_ref().is_some_and(|(o, _)| o == "solo"))
            .map(|s| s.shard)
            .collect();
        let running: Vec<u32> = status
            .iter()
            .filter(|s| s.phase == shardline::Phase::Ready)
            .map(|s| s.id)
            .collect();
        if held == running && held.len() == 2 {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "leases held {held:?}, shards running {running:?}"
        );
        actix_rt::time::sleep(Duration::from_millis(50)).await;
    }
    assert_one_connection_at_a_time(&fake);
    gateway.shutdown(true).await;
    fake.stop().await;
}

/// A handler that blocks the process's main thread for three lease times: the leases are renewed
/// all the same (on a thread of their own), so no shard is lost and no connection replaced.
#[actix_rt::test]
async fn a_blocked_thread_costs_no_lease() {
    struct Blocker;
    impl Actor for Blocker {
        type Context = Context<Self>;
    }
    impl Handler<shardline::Dispatch> for Blocker {
        type Result = ();
        fn handle(&mut self, d: shardline::Dispatch, _: &mut Context<Self>) {
            if d.data().windows(5).any(|w| w == b"block") {
                std::thread::sleep(Duration::from_millis(3000));
            }
        }
    }
    let redis = RedisServer::start();
    let fake_config = fast_fake(4, 4);
    let fake = FakeGateway::start(fake_config.clone()).await.unwrap();
    let changes = Changes::default();
    let config = client(&fake, &fake_config, 4)
        .handler("MESSAGE_CREATE", Blocker.start().recipient())
        .build()
        .unwrap();
    let gateway = Gateway::start_fleet(
        config,
        options(&redis, "solo").lease_time(Duration::from_millis(1000)),
        vec![changes.clone().start().recipient()],
    )
    .await
    .unwrap();
    status_until(&gateway, "all four ready", |s| {
        s.len() == 4 && s.iter().all(|s| s.phase == shardline::Phase::Ready)
    })
    .await;
    let connections = fake.connections().len();
    fake.dispatch(0, "MESSAGE_CREATE", serde_json::json!({"block": true}));
    // The blocker holds this thread (the test's, the supervisor's and the keeper's) for 3 s.
    actix_rt::time::sleep(Duration::from_millis(200)).await;
    actix_rt::time::sleep(Duration::from_millis(500)).await;
    status_until(&gateway, "all four still ready", |s| {
        s.len() == 4 && s.iter().all(|s| s.phase == shardline::Phase::Ready)
    })
    .await;
    assert_eq!(changes.count("solo", OwnershipChange::Lost), 0);
    assert_eq!(
        fake.connections().len(),
        connections,
        "a connection was replaced"
    );
    assert!(fake.connections().iter().all(|c| c.closed_at.is_none()));
    gateway.shutdown(true).await;
    fake.stop().await;
}

/// A process that resolved another shard total than the running fleet's refuses to start, and
/// says why; once the fleet is gone, another total may start (its keys are its own).
#[actix_rt::test]
async fn a_process_with_another_total_refuses_to_join() {
    let redis = RedisServer::start();
    let fake_config = fast_fake(4, 4);
    let fake = FakeGateway::start(fake_config.clone()).await.unwrap();
    let changes = Changes::default();
    let a = member_of(&fake, &fake_config, &redis, "a", 4, &changes).await;
    let config = client(&fake, &fake_config, 6).build().unwrap();
    let err = Gateway::start_fleet(config, options(&redis, "b"), Vec::new())
        .await
        .err()
        .expect("another total must not join");
    assert!(
        matches!(
            err,
            shardline::StartError::Fleet(shardline::fleet::FleetError::TotalMismatch {
                fleet: 4,
                ours: 6
            })
        ),
        "{err:?}"
    );
    assert!(err.to_string().contains("4 shards"), "{err}");
    a.shutdown(true).await;
    // The fleet's total is kept only while a member heartbeats.
    let deadline = std::time::Instant::now() + WAIT;
    let b = loop {
        let config = client(&fake, &fake_config, 6).build().unwrap();
        match Gateway::start_fleet(config, options(&redis, "b"), Vec::new()).await {
            Ok(b) => break b,
            Err(e) => {
                assert!(std::time::Instant::now() < deadline, "{e}");
                actix_rt::time::sleep(Duration::from_millis(100)).await;
            }
        }
    };
    b.shutdown(true).await;
    fake.stop().await;
}

/// A config that names everything (count, gateway URL, max_concurrency) skips `GET /gateway/bot`
/// in a single process; a fleet still reads the session-start budget from it and keeps it, so
/// its identifies count against the budget Discord reported.
#[actix_rt::test]
async fn a_fleet_keeps_the_budget_even_when_the_config_names_everything() {
    let redis = RedisServer::start();
    let mut fake_config = fast_fake(2, 2);
    fake_config.session_start_limit.remaining = 50;
    let fake = FakeGateway::start(fake_config.clone()).await.unwrap();
    let changes = Changes::default();
    let a = member_of(&fake, &fake_config, &redis, "a", 2, &changes).await;
    status_until(&a, "both ready", |s| {
        s.len() == 2 && s.iter().all(|s| s.phase == shardline::Phase::Ready)
    })
    .await;
    let mut conn = redis::Client::open(redis.url())
        .unwrap()
        .get_multiplexed_async_connection()
        .await
        .unwrap();
    let left: Option<u32> = redis::cmd("GET")
        .arg("shardline:ownership:identify:budget")
        .query_async(&mut conn)
        .await
        .unwrap();
    assert_eq!(left, Some(48), "50 reported, 2 identifies since");
    a.shutdown(true).await;
    fake.stop().await;
}
