//! The Redis-backed identify queue, session store and leases, each against a real Redis.

use std::time::{Duration, Instant};

use shardline::fleet::lease::Leases;
use shardline::fleet::sessions::SessionStoreOptions;
use shardline::fleet::{FleetError, FleetRedis, RedisIdentifyQueue, RedisSessionStore};
use shardline::queue::IdentifyQueue;
use shardline::{SessionInfo, SessionStore};

use crate::redis_server::RedisServer;

async fn connect(redis: &RedisServer) -> FleetRedis {
    FleetRedis::connect(&redis.url(), "shardline:test")
        .await
        .unwrap()
}

#[actix_rt::test]
async fn an_unreachable_redis_is_a_clear_error() {
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let err = FleetRedis::connect(&format!("redis://:pw@127.0.0.1:{port}/"), "x")
        .await
        .unwrap_err();
    let FleetError::Connect { url, .. } = &err else {
        panic!("{err:?}")
    };
    assert_eq!(url, &format!("redis://<redacted>@127.0.0.1:{port}/"));
    assert!(
        err.to_string().starts_with("cannot reach Redis at"),
        "{err}"
    );
}

/// Two processes' queues on one Redis: a bucket grants once per window between them, other
/// buckets are not held up, and the budget counts every grant once for both.
#[actix_rt::test]
async fn two_queues_share_buckets_and_one_budget() {
    let server = RedisServer::start();
    let window = Duration::from_millis(300);
    let a = RedisIdentifyQueue::new(connect(&server).await, 2, window, "a");
    let b = RedisIdentifyQueue::new(connect(&server).await, 2, window, "b");
    assert_eq!(
        a.set_budget(10, 1000, Duration::from_secs(60))
            .await
            .unwrap(),
        10
    );
    // A second reading of Discord's figure cannot raise what the fleet has counted.
    assert_eq!(
        b.set_budget(12, 1000, Duration::from_secs(60))
            .await
            .unwrap(),
        10
    );

    let start = Instant::now();
    let grants = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
    let mut waits = Vec::new();
    for (queue, shard) in [(&a, 0), (&b, 2), (&a, 4), (&b, 1), (&a, 3)] {
        let permit = queue.acquire(shard, 6);
        let grants = grants.clone();
        waits.push(async move {
            permit.await.used();
            grants.lock().unwrap().push((shard, start.elapsed()));
        });
    }
    futures_util::future::join_all(waits).await;
    let grants = grants.lock().unwrap().clone();
    for bucket in 0..2 {
        let mut times: Vec<Duration> = grants
            .iter()
            .filter(|(s, _)| s % 2 == bucket)
            .map(|(_, t)| *t)
            .collect();
        times.sort();
        for pair in times.windows(2) {
            // Redis's TTL decides, to the millisecond; a grant never comes inside the window.
            assert!(
                pair[1] - pair[0] >= window - Duration::from_millis(5),
                "bucket {bucket}: {grants:?}"
            );
        }
    }
    assert_eq!(a.remaining().await.unwrap(), Some(5));
    assert_eq!(b.remaining().await.unwrap(), Some(5));
}

#[actix_rt::test]
async fn an_exhausted_budget_holds_permits_until_it_resets() {
    let server = RedisServer::start();
    let queue = RedisIdentifyQueue::new(connect(&server).await, 1, Duration::from_millis(10), "a");
    queue
        .set_budget(1, 1, Duration::from_millis(400))
        .await
        .unwrap();
    queue.acquire(0, 1).await.used();
    assert_eq!(queue.remaining().await.unwrap(), Some(0));
    let mut second = queue.acquire(0, 1);
    // Not granted while the budget is spent...
    let early = tokio::time::timeout(Duration::from_millis(200), &mut second).await;
    assert!(early.is_err(), "a permit was granted past the budget");
    // ...and granted once its period has run out.
    tokio::time::timeout(Duration::from_secs(5), second)
        .await
        .expect("the permit after the reset")
        .used();
}

/// Once Discord's period ends (the count's TTL), the count starts again from the daily total and is
/// kept: never a grant past it, as there was when the count simply expired.
#[actix_rt::test]
async fn after_a_reset_the_budget_restarts_from_the_total_and_still_holds() {
    let server = RedisServer::start();
    let queue = RedisIdentifyQueue::new(connect(&server).await, 1, Duration::from_millis(5), "a");
    queue
        .set_budget(1, 2, Duration::from_millis(300))
        .await
        .unwrap();
    queue.acquire(0, 1).await.used();
    assert_eq!(queue.remaining().await.unwrap(), Some(0));
    // Past the reset: the whole daily total (2) again, and then nothing.
    tokio::time::timeout(Duration::from_secs(5), queue.acquire(0, 1))
        .await
        .expect("a permit after the reset")
        .used();
    tokio::time::sleep(Duration::from_millis(10)).await;
    queue.acquire(0, 1).await.used();
    assert_eq!(queue.remaining().await.unwrap(), Some(0));
    assert_eq!(queue.session_starts_remaining(), Some(0));
    let third = tokio::time::timeout(Duration::from_millis(500), queue.acquire(0, 1)).await;
    assert!(
        third.is_err(),
        "a permit was granted past the total after a reset"
    );
}

/// A reading of Discord's budget taken after its reset replaces a stale low count of the period
/// before; within one period the lower count stands.
#[actix_rt::test]
async fn a_new_periods_budget_replaces_a_stale_count_and_a_same_period_one_does_not_raise_it() {
    let server = RedisServer::start();
    let queue = RedisIdentifyQueue::new(connect(&server).await, 1, Duration::from_millis(5), "a");
    // The end of a day: 3 left, resetting in 2 s.
    assert_eq!(
        queue
            .set_budget(3, 1000, Duration::from_secs(2))
            .await
            .unwrap(),
        3
    );
    // A process starting right after Discord's reset reads the whole budget for a new day.
    assert_eq!(
        queue
            .set_budget(1000, 1000, Duration::from_secs(86_400))
            .await
            .unwrap(),
        1000,
        "a stale low count was pinned for a day"
    );
    // Another reading of the same day cannot raise what the fleet has counted.
    assert_eq!(
        queue
            .set_budget(990, 1000, Duration::from_secs(86_400))
            .await
            .unwrap(),
        990
    );
    assert_eq!(
        queue
            .set_budget(995, 1000, Duration::from_secs(86_399))
            .await
            .unwrap(),
        990
    );
}

/// With a budget source (what `start_fleet` gives its queue: `GET /gateway/bot`), a queue that
/// knows no budget (Redis restarted empty) reads Discord's before it grants anything, and grants
/// nothing while it cannot; a count that rolled over is corrected from the source.
#[actix_rt::test]
async fn with_a_source_no_permit_is_granted_before_a_budget_is_known() {
    use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
    use std::sync::Arc;
    let server = RedisServer::start();
    let calls = Arc::new(AtomicU32::new(0));
    let answering = Arc::new(AtomicBool::new(false));
    let source: shardline::fleet::identify::BudgetSource = {
        let (calls, answering) = (calls.clone(), answering.clone());
        Arc::new(move || {
            calls.fetch_add(1, Ordering::SeqCst);
            let answering = answering.load(Ordering::SeqCst);
            Box::pin(async move {
                if answering {
                    Ok(serde_json::from_value(serde_json::json!({
                        "total": 1000, "remaining": 7, "reset_after": 60_000, "max_concurrency": 1
                    }))
                    .unwrap())
                } else {
                    Err("GET /gateway/bot: 503".to_owned())
                }
            })
        })
    };
    let queue = RedisIdentifyQueue::new(connect(&server).await, 1, Duration::from_millis(5), "a")
        .budget_source(source);
    let mut request = queue.acquire(0, 1);
    let early = tokio::time::timeout(Duration::from_millis(400), &mut request).await;
    assert!(early.is_err(), "granted with no budget known");
    assert!(
        calls.load(Ordering::SeqCst) >= 1,
        "the source was not asked"
    );
    assert_eq!(queue.remaining().await.unwrap(), None);
    answering.store(true, Ordering::SeqCst);
    tokio::time::timeout(Duration::from_secs(10), request)
        .await
        .expect("granted once the budget is known")
        .used();
    assert_eq!(queue.remaining().await.unwrap(), Some(6));
}

/// A permit whose Identify never went out (its connection died first) gives its budget unit back,
/// but not its bucket's window; a request dropped before its grant reserves nothing.
#[actix_rt::test]
async fn unused_permits_give_the_budget_back_and_withdrawn_requests_cost_nothing() {
    let server = RedisServer::start();
    // A window long enough that nothing in this test can outlast it.
    let window = Duration::from_secs(30);
    let queue = RedisIdentifyQueue::new(connect(&server).await, 1, window, "a");
    queue
        .set_budget(5, 1000, Duration::from_secs(60))
        .await
        .unwrap();
    let unused = queue.acquire(0, 1).await;
    assert_eq!(queue.remaining().await.unwrap(), Some(4));
    drop(unused);
    let deadline = Instant::now() + Duration::from_secs(5);
    while queue.remaining().await.unwrap() != Some(5) {
        assert!(Instant::now() < deadline, "the unit never came back");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    // The window is still taken: a request now waits, and dropping it takes nothing.
    let mut redis = redis::Client::open(server.url())
        .unwrap()
        .get_multiplexed_async_connection()
        .await
        .unwrap();
    let bucket = "shardline:test:identify:bucket:0";
    let ttl_before: i64 = redis::cmd("PTTL")
        .arg(bucket)
        .query_async(&mut redis)
        .await
        .unwrap();
    let waiting = queue.acquire(0, 1);
    assert!(tokio::time::timeout(Duration::from_millis(100), waiting)
        .await
        .is_err());
    assert_eq!(queue.remaining().await.unwrap(), Some(5));
    // Still the first permit's key, its window running down, not set again by the withdrawn one.
    let holder: Option<String> = redis::cmd("GET")
        .arg(bucket)
        .query_async(&mut redis)
        .await
        .unwrap();
    let ttl_after: i64 = redis::cmd("PTTL")
        .arg(bucket)
        .query_async(&mut redis)
        .await
        .unwrap();
    assert_eq!(holder.as_deref(), Some("a"));
    assert!(
        0 < ttl_after && ttl_after < ttl_before,
        "{ttl_before} -> {ttl_after}"
    );
}

#[actix_rt::test]
async fn sessions_reach_redis_without_a_write_per_event_and_load_in_another_process() {
    let server = RedisServer::start();
    let options = SessionStoreOptions::default().flush_every(Duration::from_millis(50));
    let store = RedisSessionStore::new(connect(&server).await, options);
    store.save(
        3,
        SessionInfo {
            session_id: "s3".into(),
            seq: 1,
            resume_url: Some("wss://resume.example".into()),
        },
    );
    for seq in 2..=1000 {
        store.set_seq(3, seq);
    }
    assert_eq!(store.load(3).unwrap().seq, 1000);
    store.flush().await.unwrap();
    let stored = store.read_from_redis(3).await.unwrap().unwrap();
    assert_eq!(stored.seq, 1000);
    assert_eq!(stored.resume_url.as_deref(), Some("wss://resume.example"));

    // Another process's store sees it once it loads.
    let other = RedisSessionStore::new(connect(&server).await, options);
    assert_eq!(other.load(3), None);
    assert_eq!(other.load_from_redis(&[3, 4]).await.unwrap(), 1);
    assert_eq!(other.load(3), Some(stored));
    assert_eq!(other.load(4), None);

    // The background writer flushes by itself.
    store.set_seq(3, 1001);
    let deadline = Instant::now() + Duration::from_secs(5);
    while store.read_from_redis(3).await.unwrap().unwrap().seq != 1001 {
        assert!(Instant::now() < deadline, "never flushed");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    store.remove(3);
    store.flush().await.unwrap();
    assert_eq!(store.read_from_redis(3).await.unwrap(), None);
}

#[actix_rt::test]
async fn a_stale_lease_holder_cannot_write_the_session() {
    let server = RedisServer::start();
    let redis = connect(&server).await;
    let lease_time = Duration::from_millis(300);
    let old = Leases::new(redis.clone(), "old", lease_time).unwrap();
    let new = Leases::new(redis.clone(), "new", lease_time).unwrap();
    let (old_lease, _) = old.claim(7).await.unwrap().unwrap();
    assert!(
        new.claim(7).await.unwrap().is_none(),
        "a held lease was claimed"
    );

    let options = SessionStoreOptions::default().flush_every(Duration::from_secs(60));
    let old_store = RedisSessionStore::new(redis.clone(), options);
    old_store.set_fence(7, Some(old_lease.value.clone()));
    let session = |seq| SessionInfo {
        session_id: "s7".into(),
        seq,
        resume_url: None,
    };
    old_store.save(7, session(10));
    old_store.flush().await.unwrap();
    assert_eq!(
        old_store.read_from_redis(7).await.unwrap(),
        Some(session(10))
    );

    // The old holder is paused past its lease; the new one claims with a larger token.
    tokio::time::sleep(lease_time + Duration::from_millis(50)).await;
    let (new_lease, _) = new.claim(7).await.unwrap().unwrap();
    assert!(new_lease.token > old_lease.token);
    let new_store = RedisSessionStore::new(redis.clone(), options);
    new_store.set_fence(7, Some(new_lease.value.clone()));
    new_store.save(7, session(20));
    new_store.flush().await.unwrap();

    // The old holder wakes and writes: Redis refuses it, the new session stands.
    old_store.set_seq(7, 15);
    old_store.flush().await.unwrap();
    assert_eq!(
        new_store.read_from_redis(7).await.unwrap(),
        Some(session(20))
    );
    assert_eq!(old.renew(&old_lease).await.unwrap(), None);
    assert!(!old.release(&old_lease).await.unwrap());
    assert!(new.renew(&new_lease).await.unwrap().is_some());
    assert!(new.release(&new_lease).await.unwrap());
    assert_eq!(new.holder(7).await.unwrap(), None);
}
