//! The event stream (src/fleet/stream.rs) end to end: a bot against the fake gateway publishes to a
//! real Redis, consumers in one group handle the entries; and the session store's publish gate.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use actix::prelude::*;
use redis::streams::{StreamId, StreamRangeReply};
use redis::Value;
use shardline::fleet::sessions::SessionStoreOptions;
use shardline::fleet::stream::{
    ConsumerStats, ConsumerStatsRequest, StopConsumer, StreamConsumer, StreamPublisher,
};
use shardline::fleet::{FleetRedis, RedisSessionStore};
use shardline::{Dispatch, Gateway, SessionInfo, SessionStore};

use crate::harness::{client, fast_fake, sent, status_until, wait_until, Bot, WAIT};
use crate::redis_server::RedisServer;

const PREFIX: &str = "shardline:streamtest";
const STREAM: &str = "shardline:streamtest:events";
const GROUP: &str = "workers";

async fn connect(redis: &RedisServer) -> FleetRedis {
    FleetRedis::connect(&redis.url(), PREFIX).await.unwrap()
}

/// A plain connection for looking at what is in Redis.
async fn inspect(redis: &RedisServer) -> redis::aio::MultiplexedConnection {
    redis::Client::open(redis.url())
        .unwrap()
        .get_multiplexed_async_connection()
        .await
        .unwrap()
}

/// The identity of an event, and what a handler got.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
struct Key {
    shard: u32,
    session: String,
    seq: u64,
}

#[derive(Debug, Clone)]
struct Handled {
    key: Key,
    event: String,
    data: Vec<u8>,
}

/// A worker's handler: records each event; optionally never answers for its `hang_at`-th event
/// (counted from 1), which keeps its consumer from acknowledging that read.
#[derive(Clone, Default)]
struct WorkerHandler {
    seen: Arc<Mutex<Vec<Handled>>>,
    hang_at: Option<usize>,
    hung: Arc<AtomicBool>,
}

impl Actor for WorkerHandler {
    type Context = Context<Self>;
}

impl Handler<Dispatch> for WorkerHandler {
    type Result = ResponseFuture<()>;
    fn handle(&mut self, d: Dispatch, _: &mut Context<Self>) -> Self::Result {
        let mut seen = self.seen.lock().unwrap();
        seen.push(Handled {
            key: Key {
                shard: d.shard(),
                session: d.session().expect("stream events carry a session").into(),
                seq: d.seq(),
            },
            event: d.event().into(),
            data: d.data().to_vec(),
        });
        if Some(seen.len()) == self.hang_at {
            self.hung.store(true, Ordering::SeqCst);
            return Box::pin(std::future::pending());
        }
        Box::pin(async {})
    }
}

impl WorkerHandler {
    fn handled(&self) -> Vec<Handled> {
        self.seen.lock().unwrap().clone()
    }
}

fn field(entry: &StreamId, name: &str) -> Vec<u8> {
    match entry.map.get(name) {
        Some(Value::BulkString(b)) => b.clone(),
        other => panic!("field {name} of {}: {other:?}", entry.id),
    }
}

fn key_of(entry: &StreamId) -> Key {
    let text = |name| String::from_utf8(field(entry, name)).unwrap();
    Key {
        shard: text("shard").parse().unwrap(),
        session: text("session"),
        seq: text("seq").parse().unwrap(),
    }
}

async fn stream_entries(conn: &mut redis::aio::MultiplexedConnection) -> Vec<StreamId> {
    let range: StreamRangeReply = redis::cmd("XRANGE")
        .arg(STREAM)
        .arg("-")
        .arg("+")
        .query_async(conn)
        .await
        .unwrap();
    range.ids
}

/// Ids of the entries `consumer` has read and not acknowledged.
async fn pending_of(conn: &mut redis::aio::MultiplexedConnection, consumer: &str) -> Vec<String> {
    let pending: Vec<(String, String, u64, u64)> = redis::cmd("XPENDING")
        .arg(STREAM)
        .arg(GROUP)
        .arg("-")
        .arg("+")
        .arg(100_000)
        .arg(consumer)
        .query_async(conn)
        .await
        .unwrap();
    pending.into_iter().map(|(id, ..)| id).collect()
}

async fn pending_total(conn: &mut redis::aio::MultiplexedConnection) -> u64 {
    let summary: Vec<Value> = redis::cmd("XPENDING")
        .arg(STREAM)
        .arg(GROUP)
        .query_async(conn)
        .await
        .unwrap();
    match summary.first() {
        Some(Value::Int(n)) => *n as u64,
        other => panic!("{other:?}"),
    }
}

/// The names of the group's consumers, sorted.
async fn consumers(conn: &mut redis::aio::MultiplexedConnection) -> Vec<String> {
    let infos: Vec<HashMap<String, Value>> = redis::cmd("XINFO")
        .arg("CONSUMERS")
        .arg(STREAM)
        .arg(GROUP)
        .query_async(conn)
        .await
        .unwrap();
    let mut names: Vec<String> = infos
        .iter()
        .map(|c| match &c["name"] {
            Value::BulkString(b) => String::from_utf8(b.clone()).unwrap(),
            Value::SimpleString(s) => s.clone(),
            other => panic!("{other:?}"),
        })
        .collect();
    names.sort();
    names
}

/// Consumers that are gone are removed from the group once they hold nothing: one that died
/// holding entries (after they are claimed) and one that died holding none; nothing is lost on
/// the way, and live consumers go on handling every new entry exactly once.
#[actix_rt::test]
async fn consumers_that_are_gone_are_removed_from_the_group() {
    let server = RedisServer::start();
    let redis = connect(&server).await;
    let mut conn = inspect(&server).await;
    let _: () = redis::cmd("XGROUP")
        .arg("CREATE")
        .arg(STREAM)
        .arg(GROUP)
        .arg("$")
        .arg("MKSTREAM")
        .query_async(&mut conn)
        .await
        .unwrap();
    for i in 0..10 {
        let _: String = redis::cmd("XADD")
            .arg(STREAM)
            .arg("*")
            .arg(&[
                "shard",
                "0",
                "session",
                "s",
                "seq",
                &(i + 1).to_string(),
                "t",
                "MESSAGE_CREATE",
                "d",
                "{}",
            ])
            .query_async(&mut conn)
            .await
            .unwrap();
    }
    // "dead" reads five and never acknowledges them; "empty" joins and never reads.
    let _: Value = redis::cmd("XREADGROUP")
        .arg(&["GROUP", GROUP, "dead", "COUNT", "5", "STREAMS", STREAM, ">"])
        .query_async(&mut conn)
        .await
        .unwrap();
    let _: i64 = redis::cmd("XGROUP")
        .arg(&["CREATECONSUMER", STREAM, GROUP, "empty"])
        .query_async(&mut conn)
        .await
        .unwrap();
    assert_eq!(consumers(&mut conn).await, ["dead", "empty"]);
    assert_eq!(pending_of(&mut conn, "dead").await.len(), 5);

    let live_handler = WorkerHandler::default();
    let live = StreamConsumer::builder(redis.clone(), GROUP, "live")
        .handler_all(live_handler.clone().start().recipient())
        .block(Duration::from_millis(50))
        // Never claims in this test.
        .claim_idle(Duration::from_secs(600))
        .start()
        .unwrap();
    let claimer_handler = WorkerHandler::default();
    let claimer = StreamConsumer::builder(redis.clone(), GROUP, "claimer")
        .handler_all(claimer_handler.clone().start().recipient())
        .block(Duration::from_millis(50))
        .claim_idle(Duration::from_millis(1000))
        .claim_every(Duration::from_millis(50))
        .start()
        .unwrap();
    until_async("the gone consumers removed", || {
        let mut conn = conn.clone();
        async move {
            let names = consumers(&mut conn).await;
            !names.iter().any(|n| n == "dead" || n == "empty")
        }
    })
    .await;
    let claimer_stats = stats(&claimer).await;
    assert_eq!(claimer_stats.claimed, 5, "dead's five were claimed first");
    assert!(claimer_stats.removed_consumers >= 2, "{claimer_stats:?}");
    assert_eq!(
        live_handler.handled().len() + claimer_handler.handled().len(),
        10,
        "every entry handled once"
    );
    // A live consumer that got nothing for `claim_idle` may have been removed too (before Redis
    // 7.2, `idle` counts from the last read that returned entries): it held nothing, and its
    // next read makes it a member again. Nothing is lost either way.
    for i in 10..20 {
        let _: String = redis::cmd("XADD")
            .arg(STREAM)
            .arg("*")
            .arg(&[
                "shard",
                "0",
                "session",
                "s",
                "seq",
                &(i + 1).to_string(),
                "t",
                "MESSAGE_CREATE",
                "d",
                "{}",
            ])
            .query_async(&mut conn)
            .await
            .unwrap();
    }
    until_async("the next ten handled", || {
        let (live, claimer) = (live_handler.clone(), claimer_handler.clone());
        async move { live.handled().len() + claimer.handled().len() >= 20 }
    })
    .await;
    let mut seqs: Vec<u64> = live_handler
        .handled()
        .into_iter()
        .chain(claimer_handler.handled())
        .map(|h| h.key.seq)
        .collect();
    seqs.sort_unstable();
    assert_eq!(
        seqs,
        (1..=20).collect::<Vec<u64>>(),
        "each entry handled exactly once"
    );
    until_async("everything acknowledged", || {
        let mut conn = conn.clone();
        async move { pending_total(&mut conn).await == 0 }
    })
    .await;
    claimer.send(StopConsumer).await.unwrap();
    live.send(StopConsumer).await.unwrap();
}

async fn stats(consumer: &Addr<StreamConsumer>) -> ConsumerStats {
    consumer.send(ConsumerStatsRequest).await.unwrap()
}

/// Polls an async condition every 10 ms for up to [`WAIT`].
async fn until_async<F: std::future::Future<Output = bool>>(what: &str, mut f: impl FnMut() -> F) {
    let deadline = Instant::now() + WAIT;
    while !f().await {
        assert!(Instant::now() < deadline, "timed out waiting for: {what}");
        actix_rt::time::sleep(Duration::from_millis(10)).await;
    }
}

/// Every MESSAGE_CREATE of a flood on two shards is handled exactly once across two consumers of
/// one group, with its session, and `d` as the fake sent it byte for byte; other events are not
/// in the stream.
#[actix_rt::test]
async fn a_flood_is_handled_once_across_two_consumers() {
    let server = RedisServer::start();
    let redis = connect(&server).await;
    let store = RedisSessionStore::new(
        redis.clone(),
        SessionStoreOptions::default().gate_on_publish(true),
    );
    let publisher = StreamPublisher::builder(redis.clone())
        .events(["MESSAGE_CREATE"])
        .session_store(store.clone())
        .start();
    let handlers = [WorkerHandler::default(), WorkerHandler::default()];
    let consumers: Vec<Addr<StreamConsumer>> = handlers
        .iter()
        .enumerate()
        .map(|(i, h)| {
            StreamConsumer::builder(redis.clone(), GROUP, &format!("worker-{i}"))
                .handler_all(h.clone().start().recipient())
                .count(25)
                .block(Duration::from_millis(100))
                .start()
                .unwrap()
        })
        .collect();

    let store_for_bot = store.clone();
    let bot = Bot::start(fast_fake(2, 1), 2, move |c| {
        c.session_store(Arc::new(store_for_bot))
            .batch_handler_all(publisher.recipient())
    })
    .await;
    let mut sent: BTreeMap<(u32, u64), String> = BTreeMap::new();
    for i in 0..500 {
        for shard in 0..2u32 {
            // Spacing and an escape serde would not write back the same way.
            let d = format!(r#"{{ "i" : {i},"shard":{shard}, "text":"caf\u00e9 \"q\"" }}"#);
            let seq = bot.fake.dispatch_raw(shard, "MESSAGE_CREATE", &d).unwrap();
            sent.insert((shard, seq), d);
            if i % 50 == 0 {
                bot.fake
                    .dispatch_raw(shard, "TYPING_START", r#"{"user_id":"1"}"#)
                    .unwrap();
            }
        }
    }
    let total = || handlers.iter().map(|h| h.handled().len()).sum::<usize>();
    wait_until("every message handled by a worker", || total() >= 1000).await;
    until_async("every message acknowledged", || {
        let consumers = consumers.clone();
        async move { stats(&consumers[0]).await.handled + stats(&consumers[1]).await.handled == 1000 }
    })
    .await;
    let [a, b] = [stats(&consumers[0]).await, stats(&consumers[1]).await];
    eprintln!("worker-0 {a:?}, worker-1 {b:?}");
    for consumer in &consumers {
        consumer.send(StopConsumer).await.unwrap();
    }

    let sessions: HashMap<u32, String> = (0..2)
        .map(|shard| (shard, bot.fake.session(shard).unwrap().id))
        .collect();
    let mut handled: BTreeMap<(u32, u64), Handled> = BTreeMap::new();
    for h in handlers.iter().flat_map(|h| h.handled()) {
        assert_eq!(h.event, "MESSAGE_CREATE");
        assert_eq!(h.key.session, sessions[&h.key.shard]);
        let again = handled.insert((h.key.shard, h.key.seq), h.clone());
        assert!(again.is_none(), "handled twice: {:?}", h.key);
    }
    // Stopped consumers handle nothing more: this count is final.
    assert_eq!(total(), 1000);
    assert_eq!(
        handled.keys().collect::<Vec<_>>(),
        sent.keys().collect::<Vec<_>>()
    );
    for (key, d) in &sent {
        assert_eq!(handled[key].data, d.as_bytes(), "d of {key:?}");
    }
    assert_eq!(a.handled + b.handled, 1000, "{a:?} {b:?}");
    assert_eq!(a.claimed + b.claimed, 0);

    let mut conn = inspect(&server).await;
    let entries = stream_entries(&mut conn).await;
    assert_eq!(entries.len(), 1000, "only the chosen event is published");
    for entry in &entries {
        assert_eq!(field(entry, "t"), b"MESSAGE_CREATE");
        let key = key_of(entry);
        assert_eq!(field(entry, "d"), sent[&(key.shard, key.seq)].as_bytes());
    }
    assert_eq!(pending_total(&mut conn).await, 0, "everything acknowledged");
    bot.stop().await;
}

/// A consumer whose handler hangs holds its read unacknowledged; once it is gone, another
/// consumer of the group claims those entries after `claim_idle` and handles them. Every event is
/// handled, and the only ones handled twice are among the entries the dead consumer held.
#[actix_rt::test]
async fn a_dead_consumers_entries_are_claimed_by_another() {
    let server = RedisServer::start();
    let redis = connect(&server).await;
    let publisher = StreamPublisher::builder(redis.clone())
        .events(["MESSAGE_CREATE"])
        .start();
    let bot = Bot::start(fast_fake(1, 1), 1, move |c| {
        c.batch_handler_all(publisher.recipient())
    })
    .await;
    for i in 0..300 {
        bot.fake
            .dispatch_raw(0, "MESSAGE_CREATE", &format!(r#"{{"i":{i}}}"#))
            .unwrap();
    }
    let mut conn = inspect(&server).await;
    until_async("all 300 published", || {
        let mut conn = conn.clone();
        async move { stream_entries(&mut conn).await.len() == 300 }
    })
    .await;
    let entries = stream_entries(&mut conn).await;
    let keys: Vec<Key> = entries.iter().map(key_of).collect();

    // A reads 20 at a time: it acknowledges the first read, then hangs on the 30th event, the
    // 10th of its second read.
    let dying = WorkerHandler {
        hang_at: Some(30),
        ..WorkerHandler::default()
    };
    let a = StreamConsumer::builder(redis.clone(), GROUP, "a")
        .handler("MESSAGE_CREATE", dying.clone().start().recipient())
        .count(20)
        .block(Duration::from_millis(100))
        .stop_timeout(Duration::from_millis(200))
        .start()
        .unwrap();
    wait_until("A hangs", || dying.hung.load(Ordering::SeqCst)).await;
    let held: BTreeSet<String> = pending_of(&mut conn, "a").await.into_iter().collect();
    let expected_held: BTreeSet<String> = entries[20..40].iter().map(|e| e.id.clone()).collect();
    assert_eq!(held, expected_held, "A holds its second read");
    a.send(StopConsumer).await.unwrap();
    assert_eq!(pending_of(&mut conn, "a").await.len(), 20, "still held");

    let claimed_idle = Duration::from_millis(500);
    let survivor = WorkerHandler::default();
    let b = StreamConsumer::builder(redis.clone(), GROUP, "b")
        .handler_all(survivor.clone().start().recipient())
        .count(20)
        .block(Duration::from_millis(100))
        .claim_idle(claimed_idle)
        .claim_every(Duration::from_millis(100))
        .start()
        .unwrap();
    until_async("B claimed A's entries and handled everything", || {
        let b = b.clone();
        async move { stats(&b).await.handled == 280 }
    })
    .await;
    // A, gone, its entries claimed, is removed from the group; B (the one removing) stays.
    until_async("A removed from the group", || {
        let mut conn = conn.clone();
        async move { consumers(&mut conn).await == ["b"] }
    })
    .await;
    let b_stats = stats(&b).await;
    assert_eq!(b_stats.removed_consumers, 1, "{b_stats:?}");
    b.send(StopConsumer).await.unwrap();
    // 260 read as new, 20 claimed from A.
    assert_eq!((b_stats.claimed, b_stats.trimmed), (20, 0), "{b_stats:?}");
    assert_eq!(survivor.handled().len(), 280);

    let mut times: HashMap<Key, usize> = HashMap::new();
    for h in dying.handled().into_iter().chain(survivor.handled()) {
        *times.entry(h.key).or_default() += 1;
    }
    for key in &keys {
        assert!(times.contains_key(key), "never handled: {key:?}");
    }
    assert_eq!(times.len(), 300);
    let twice: BTreeSet<Key> = times
        .iter()
        .filter(|(_, n)| **n > 1)
        .map(|(k, _)| k.clone())
        .collect();
    assert!(times.values().all(|n| *n <= 2));
    let held_keys: BTreeSet<Key> = entries
        .iter()
        .filter(|e| held.contains(&e.id))
        .map(key_of)
        .collect();
    assert!(
        twice.is_subset(&held_keys),
        "{twice:?} not within {held_keys:?}"
    );
    // Exactly: those A's handler got (the 21st to the 30th) before it hung.
    assert_eq!(twice, keys[20..30].iter().cloned().collect());
    assert_eq!(pending_total(&mut conn).await, 0, "everything acknowledged");
    bot.stop().await;
}

/// With the gate, the sequence written for a shard never passes what the publisher confirmed for
/// its current session; a confirmation for another session moves nothing; without the gate the
/// handed-over sequence is written.
#[actix_rt::test]
async fn the_publish_gate_holds_the_stored_sequence_at_what_was_published() {
    let server = RedisServer::start();
    let redis = connect(&server).await;
    let options = SessionStoreOptions::default().flush_every(Duration::from_secs(60));
    let gated = RedisSessionStore::new(redis.clone(), options.gate_on_publish(true));
    let session = |id: &str, seq| SessionInfo {
        session_id: id.into(),
        seq,
        resume_url: None,
    };
    gated.save(0, session("s1", 1));
    gated.set_seq(0, 10);
    gated.flush().await.unwrap();
    assert_eq!(gated.read_from_redis(0).await.unwrap().unwrap().seq, 1);
    assert_eq!(
        gated.load(0).unwrap().seq,
        10,
        "this process resumes from what it handed over"
    );
    gated.confirm_published(0, "s1", 5);
    gated.flush().await.unwrap();
    assert_eq!(gated.read_from_redis(0).await.unwrap().unwrap().seq, 5);
    gated.confirm_published(0, "an older session", 9);
    gated.flush().await.unwrap();
    assert_eq!(gated.read_from_redis(0).await.unwrap().unwrap().seq, 5);
    gated.confirm_published(0, "s1", 20);
    gated.flush().await.unwrap();
    assert_eq!(gated.read_from_redis(0).await.unwrap().unwrap().seq, 10);
    // A new session starts the gate at its READY.
    gated.save(0, session("s2", 1));
    gated.set_seq(0, 7);
    gated.confirm_published(0, "s1", 30);
    gated.flush().await.unwrap();
    let stored = gated.read_from_redis(0).await.unwrap().unwrap();
    assert_eq!((stored.session_id.as_str(), stored.seq), ("s2", 1));

    // A session loaded from Redis is published up to where it was stored.
    let other = RedisSessionStore::new(redis.clone(), options.gate_on_publish(true));
    other.load_from_redis(&[0]).await.unwrap();
    other.set_seq(0, 50);
    other.flush().await.unwrap();
    assert_eq!(other.read_from_redis(0).await.unwrap().unwrap().seq, 1);

    let ungated = RedisSessionStore::new(redis, options);
    ungated.save(1, session("u", 1));
    ungated.set_seq(1, 10);
    ungated.flush().await.unwrap();
    assert_eq!(ungated.read_from_redis(1).await.unwrap().unwrap().seq, 10);
}

/// End to end: while the stream cannot be written (the key holds a string), the shard keeps handing
/// events over but the stored sequence stays at READY; once it can, the publisher's retry writes
/// every event once, in order, and the stored sequence follows.
#[actix_rt::test]
async fn a_stream_that_cannot_be_written_holds_back_the_stored_sequence() {
    let server = RedisServer::start();
    let redis = connect(&server).await;
    let mut conn = inspect(&server).await;
    let _: () = redis::cmd("SET")
        .arg(STREAM)
        .arg("not a stream")
        .query_async(&mut conn)
        .await
        .unwrap();
    let store = RedisSessionStore::new(
        redis.clone(),
        SessionStoreOptions::default()
            .flush_every(Duration::from_millis(20))
            .gate_on_publish(true),
    );
    let publisher = StreamPublisher::builder(redis.clone())
        .events(["MESSAGE_CREATE"])
        .session_store(store.clone())
        .start();
    let store_for_bot = store.clone();
    let bot = Bot::start(fast_fake(1, 1), 1, move |c| {
        c.session_store(Arc::new(store_for_bot))
            .batch_handler_all(publisher.recipient())
    })
    .await;
    let ready_seq = bot.recorder.seqs("READY")[0].1;
    let seqs: Vec<u64> = (0..50)
        .map(|i| {
            bot.fake
                .dispatch_raw(0, "MESSAGE_CREATE", &format!(r#"{{"i":{i}}}"#))
                .unwrap()
        })
        .collect();
    let last = *seqs.last().unwrap();
    bot.until("all handed over", |r| r.count("MESSAGE_CREATE") == 50)
        .await;
    // The publisher finishes a batch once it is in the stream: the shard's own record stays at
    // READY as well.
    assert_eq!(store.load(0).unwrap().seq, ready_seq);
    store.flush().await.unwrap();
    assert_eq!(
        store.read_from_redis(0).await.unwrap().unwrap().seq,
        ready_seq,
        "nothing published, nothing passed READY stored"
    );

    let _: () = redis::cmd("DEL")
        .arg(STREAM)
        .query_async(&mut conn)
        .await
        .unwrap();
    until_async("the stored sequence reaches the last event", || {
        let store = store.clone();
        async move { store.read_from_redis(0).await.unwrap().unwrap().seq == last }
    })
    .await;
    let written: Vec<u64> = stream_entries(&mut conn)
        .await
        .iter()
        .map(|e| key_of(e).seq)
        .collect();
    assert_eq!(written, seqs, "every event once, in order");
    bot.stop().await;
}

/// Entries that are not events are acknowledged (and counted) rather than handled or retried forever.
#[actix_rt::test]
async fn an_entry_that_is_not_an_event_is_acknowledged_without_handling() {
    let server = RedisServer::start();
    let redis = connect(&server).await;
    let mut conn = inspect(&server).await;
    let _: String = redis::cmd("XADD")
        .arg(STREAM)
        .arg("*")
        .arg("shard")
        .arg("zero")
        .query_async(&mut conn)
        .await
        .unwrap();
    let _: String = redis::cmd("XADD")
        .arg(STREAM)
        .arg("*")
        .arg("shard")
        .arg(4)
        .arg("session")
        .arg("s")
        .arg("seq")
        .arg(9)
        .arg("t")
        .arg("GUILD_CREATE")
        .arg("d")
        .arg("{}")
        .query_async(&mut conn)
        .await
        .unwrap();
    let handler = WorkerHandler::default();
    let consumer = StreamConsumer::builder(redis, GROUP, "w")
        .handler("GUILD_CREATE", handler.clone().start().recipient())
        .block(Duration::from_millis(50))
        .start()
        .unwrap();
    until_async("both entries dealt with", || {
        let consumer = consumer.clone();
        async move {
            let s = stats(&consumer).await;
            s.handled == 1 && s.malformed == 1
        }
    })
    .await;
    consumer.send(StopConsumer).await.unwrap();
    let handled = handler.handled();
    assert_eq!(handled.len(), 1);
    assert_eq!(
        (
            &handled[0].key,
            handled[0].event.as_str(),
            handled[0].data.as_slice()
        ),
        (
            &Key {
                shard: 4,
                session: "s".into(),
                seq: 9
            },
            "GUILD_CREATE",
            &b"{}"[..]
        )
    );
    assert_eq!(pending_total(&mut conn).await, 0);
}

/// Redis restarts empty (killed, nothing saved) while events flow: the publisher retries until it
/// is back and writes every event handed over meanwhile once, in order; the consumer finds its
/// group gone, creates it again and handles them all.
#[actix_rt::test]
async fn publisher_and_consumer_ride_out_a_redis_restart() {
    let mut server = RedisServer::start();
    let redis = connect(&server).await;
    let publisher = StreamPublisher::builder(redis.clone())
        .events(["MESSAGE_CREATE"])
        .start();
    let handler = WorkerHandler::default();
    let consumer = StreamConsumer::builder(redis.clone(), GROUP, "w")
        .handler_all(handler.clone().start().recipient())
        .block(Duration::from_millis(50))
        .start()
        .unwrap();
    let bot = Bot::start(fast_fake(1, 1), 1, move |c| {
        c.batch_handler_all(publisher.recipient())
    })
    .await;
    let before = bot
        .fake
        .dispatch_raw(0, "MESSAGE_CREATE", r#"{"before":true}"#)
        .unwrap();
    wait_until("the first event handled", || handler.handled().len() == 1).await;
    assert_eq!(handler.handled()[0].key.seq, before);

    server.kill();
    let seqs: Vec<u64> = (0..30)
        .map(|i| {
            bot.fake
                .dispatch_raw(0, "MESSAGE_CREATE", &format!(r#"{{"i":{i}}}"#))
                .unwrap()
        })
        .collect();
    bot.until("all handed over", |r| r.count("MESSAGE_CREATE") == 31)
        .await;
    server.restart();

    let mut conn = inspect(&server).await;
    until_async("the events reach the new Redis", || {
        let mut conn = conn.clone();
        async move { stream_entries(&mut conn).await.len() == 30 }
    })
    .await;
    let written: Vec<u64> = stream_entries(&mut conn)
        .await
        .iter()
        .map(|e| key_of(e).seq)
        .collect();
    assert_eq!(written, seqs, "every event once, in order");
    wait_until("the consumer handled them", || {
        handler.handled().len() == 31
    })
    .await;
    consumer.send(StopConsumer).await.unwrap();
    let handled: Vec<u64> = handler
        .handled()
        .iter()
        .skip(1)
        .map(|h| h.key.seq)
        .collect();
    assert_eq!(handled, seqs);
    assert_eq!(pending_total(&mut conn).await, 0);
    bot.stop().await;
}

/// A process that resumed a stored session sees no READY: its publisher labels the shard's events
/// with the session from the store, and (gated) the stored sequence follows what it published.
#[actix_rt::test]
async fn events_of_a_resumed_session_carry_the_stored_session() {
    let server = RedisServer::start();
    let redis = connect(&server).await;
    let first = RedisSessionStore::new(redis.clone(), SessionStoreOptions::default());
    let fake_config = fast_fake(1, 1);
    let s = first.clone();
    let bot = Bot::start(fake_config.clone(), 1, move |c| {
        c.session_store(Arc::new(s))
    })
    .await;
    bot.gateway.shutdown(true).await;
    first.flush().await.unwrap();
    let session = bot.fake.session(0).unwrap().id;
    // Sent while no process runs the shard: replayed on resume.
    let seqs: Vec<u64> = (0..5)
        .map(|i| {
            bot.fake
                .dispatch_raw(0, "MESSAGE_CREATE", &format!(r#"{{"i":{i}}}"#))
                .unwrap()
        })
        .collect();

    // Another process.
    let store = RedisSessionStore::new(
        redis.clone(),
        SessionStoreOptions::default()
            .flush_every(Duration::from_millis(20))
            .gate_on_publish(true),
    );
    assert_eq!(store.load_from_redis(&[0]).await.unwrap(), 1);
    let publisher = StreamPublisher::builder(redis.clone())
        .events(["MESSAGE_CREATE"])
        .session_store(store.clone())
        .start();
    let config = client(&bot.fake, &fake_config, 1)
        .session_store(Arc::new(store.clone()))
        .batch_handler_all(publisher.recipient())
        .build()
        .unwrap();
    let gateway = Gateway::start(config).await.unwrap();
    let mut conn = inspect(&server).await;
    until_async("the replayed events are published", || {
        let mut conn = conn.clone();
        async move { stream_entries(&mut conn).await.len() == 5 }
    })
    .await;
    let keys: Vec<Key> = stream_entries(&mut conn).await.iter().map(key_of).collect();
    let expected: Vec<Key> = seqs
        .iter()
        .map(|&seq| Key {
            shard: 0,
            session: session.clone(),
            seq,
        })
        .collect();
    assert_eq!(keys, expected);
    assert_eq!(
        sent(&bot.fake, 0, 2).len(),
        1,
        "resumed, not identified again"
    );
    let last = *seqs.last().unwrap();
    until_async("the stored sequence follows", || {
        let store = store.clone();
        async move { store.read_from_redis(0).await.unwrap().unwrap().seq >= last }
    })
    .await;
    gateway.shutdown(false).await;
    bot.fake.stop().await;
}

/// A shard that moves to another process, starts a new session there and comes back: the events
/// its first owner publishes after the return carry the new session, not the one it had before
/// (workers deduplicate by session and sequence, and the publish gate follows the session).
#[actix_rt::test]
async fn a_shard_that_comes_back_is_published_under_its_new_session() {
    use shardline::fleet::FleetOptions;
    let server = RedisServer::start();
    let fake_config = fast_fake(2, 2);
    let fake = shardline::testkit::FakeGateway::start(fake_config.clone())
        .await
        .unwrap();
    let options = |owner: &str| {
        FleetOptions::new(server.url())
            .prefix(PREFIX)
            .owner(owner)
            .lease_time(Duration::from_millis(1200))
            .sessions(SessionStoreOptions::default().flush_every(Duration::from_millis(20)))
            .stream_events(["MESSAGE_CREATE"])
    };
    let member = |owner: &'static str| {
        let config = client(&fake, &fake_config, 2).build().unwrap();
        Gateway::start_fleet(config, options(owner), Vec::new())
    };
    let ready = |n: usize| {
        move |s: &[shardline::ShardStatus]| {
            s.len() == n && s.iter().all(|s| s.phase == shardline::Phase::Ready)
        }
    };
    let a = member("a").await.unwrap();
    status_until(&a, "a runs both", ready(2)).await;
    let first = fake.session(1).unwrap().id;

    let b = member("b").await.unwrap();
    status_until(&b, "b took shard 1 over", ready(1)).await;
    // A new session for shard 1 while b runs it.
    fake.invalid_session(1, false);
    wait_until("shard 1 identified again", || {
        fake.session(1).is_some_and(|s| s.id != first) && fake.ready_shards().contains(&1)
    })
    .await;
    let second = fake.session(1).unwrap().id;
    status_until(&b, "b runs the new session", |s| {
        s.len() == 1 && s[0].session_id.as_deref() == Some(second.as_str())
    })
    .await;
    b.shutdown(true).await;
    status_until(&a, "a runs both again", |s| {
        s.len() == 2
            && s.iter().all(|s| s.phase == shardline::Phase::Ready)
            && s[1].session_id.as_deref() == Some(second.as_str())
    })
    .await;

    let seq = fake
        .dispatch_raw(1, "MESSAGE_CREATE", r#"{"back":true}"#)
        .unwrap();
    let mut conn = inspect(&server).await;
    until_async("the event is published", || {
        let mut conn = conn.clone();
        async move {
            stream_entries(&mut conn)
                .await
                .iter()
                .any(|e| key_of(e).shard == 1 && key_of(e).seq == seq)
        }
    })
    .await;
    let entry = stream_entries(&mut conn)
        .await
        .into_iter()
        .map(|e| key_of(&e))
        .find(|k| k.shard == 1 && k.seq == seq)
        .unwrap();
    assert_eq!(
        entry.session, second,
        "published under the session shard 1 had before it moved"
    );
    a.shutdown(true).await;
    fake.stop().await;
}
