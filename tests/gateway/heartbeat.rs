use std::time::Duration;

use serde_json::json;
use shardline::testkit::FakeConfig;

use crate::harness::*;

#[actix_rt::test]
async fn heartbeats_follow_the_interval_with_a_jittered_first_beat_and_carry_the_sequence() {
    let bot = Bot::start(fast_fake(1, 1), 1, |c| c).await;
    let fake = &bot.fake;
    for n in 0..3 {
        fake.dispatch(0, "MESSAGE_CREATE", json!({ "n": n }))
            .unwrap();
    }
    bot.until("3 messages", |r| r.count("MESSAGE_CREATE") == 3)
        .await;
    let before = sent(fake, 0, 1).len();
    assert!(
        fake.wait_for(WAIT, "3 more heartbeats", |f| sent(f, 0, 1).len()
            >= before + 3)
            .await
    );

    let beats = sent(fake, 0, 1);
    let opened = fake.connections()[0].opened_at;
    // The first beat comes after interval × jitter, jitter in [0, 1), and carries null.
    assert!(
        beats[0].at - opened < Duration::from_millis(100) + Duration::from_millis(50),
        "first beat after {:?}",
        beats[0].at - opened
    );
    // Each beat carries the last sequence received so far: null only before READY (s = 1), never
    // going back.
    let carried: Vec<Option<u64>> = beats.iter().map(|b| b.json["d"].as_u64()).collect();
    assert!(beats
        .iter()
        .all(|b| b.json["op"] == 1 && (b.json["d"].is_null() || b.json["d"].is_u64())));
    assert!(carried.windows(2).all(|w| w[0] <= w[1]), "{carried:?}");
    assert!(
        carried.iter().all(|c| c.is_none_or(|s| s <= 4)),
        "{carried:?}"
    );
    // The last ones carry the last sequence: READY (1) + 3 messages.
    assert_eq!(beats.last().unwrap().json, json!({"op": 1, "d": 4}));
    for pair in beats[1..].windows(2) {
        let gap = pair[1].at - pair[0].at;
        assert!(
            gap > Duration::from_millis(50) && gap < Duration::from_millis(200),
            "beats {gap:?} apart"
        );
    }
    let latency = bot.gateway.status().await[0].latency;
    assert!(
        latency.is_some(),
        "latency is measured from heartbeat to ACK"
    );
    bot.stop().await;
}

#[actix_rt::test]
async fn a_server_heartbeat_request_is_answered_at_once() {
    // A long interval, so the answer cannot be mistaken for a scheduled beat.
    let fake_config = FakeConfig {
        heartbeat_interval: Duration::from_secs(30),
        ..fast_fake(1, 1)
    };
    let bot = Bot::start(fake_config, 1, |c| c).await;
    let fake = &bot.fake;
    fake.dispatch(0, "TYPING_START", json!({})).unwrap();
    bot.until("typing", |r| r.count("TYPING_START") == 1).await;
    let before = sent(fake, 0, 1).len();
    assert!(fake.request_heartbeat(0));
    assert!(
        fake.wait_for(Duration::from_secs(2), "answer", |f| sent(f, 0, 1).len()
            == before + 1)
            .await
    );
    assert_eq!(
        sent(fake, 0, 1).last().unwrap().json,
        json!({"op": 1, "d": 2})
    );
    bot.stop().await;
}

#[actix_rt::test]
async fn a_zombie_connection_is_closed_non_1000_and_resumed() {
    let bot = Bot::start(fast_fake(1, 1), 1, |c| c).await;
    let fake = &bot.fake;
    fake.dispatch(0, "MESSAGE_CREATE", json!({})).unwrap();
    bot.until("message", |r| r.count("MESSAGE_CREATE") == 1)
        .await;
    // ACKs stop just after a beat was recorded (and answered as it was): the next beat is the
    // first to go unanswered.
    let before = sent(fake, 0, 1).len();
    assert!(
        fake.wait_for(WAIT, "a fresh heartbeat", |f| sent(f, 0, 1).len() > before)
            .await
    );
    fake.set_ack_heartbeats(0, false);
    let last_answered = sent(fake, 0, 1).last().unwrap().at;
    assert!(
        fake.wait_for(WAIT, "client gave up on the zombie", |f| f.connections()[0]
            .closed_at
            .is_some())
            .await
    );
    fake.set_ack_heartbeats(0, true);
    let first = fake.connections()[0].clone();
    assert_eq!(first.client_close_code, Some(4000));
    assert!(
        // The Resume itself, not only a second connection: the fake may still count the closed
        // one as the shard's live connection for a moment.
        fake.wait_for(WAIT, "resumed", |f| f.ready_shards() == [0]
            && f.connections().len() == 2
            && !sent(f, 0, 6).is_empty())
            .await
    );
    let resume = sent(fake, 0, 6);
    assert_eq!(resume.len(), 1);
    let session = fake.session(0).unwrap();
    assert_eq!(
        resume[0].json["d"],
        json!({"token": TOKEN, "session_id": session.id, "seq": 2})
    );
    assert_eq!(sent(fake, 0, 2).len(), 1, "no second identify");
    // Exactly one heartbeat went unanswered: the zombie is caught when the next one is due, and
    // that one is never sent.
    let unanswered = sent(fake, 0, 1)
        .into_iter()
        .filter(|f| f.connection == first.id && f.at > last_answered)
        .count();
    assert_eq!(unanswered, 1);
    bot.stop().await;
}

/// A reply to the gateway's op 1 whose ACK has not come back when the next scheduled beat is due is
/// no zombie: only a scheduled beat left unanswered for an interval is. The fake stretches the
/// round trip of the reply to forever (it never ACKs it) instead of aiming the op 1 at the moment
/// before the scheduled beat.
#[actix_rt::test]
async fn a_reply_to_op_1_still_unanswered_at_the_scheduled_beat_is_no_zombie() {
    let interval = Duration::from_millis(300);
    let fake_config = FakeConfig {
        heartbeat_interval: interval,
        ..fast_fake(1, 1)
    };
    let bot = Bot::start(fake_config, 1, |c| c).await;
    let fake = &bot.fake;
    let conn = fake.connections()[0].id;
    let beats_on_conn = |f: &shardline::testkit::FakeGateway| -> Vec<_> {
        sent(f, 0, 1)
            .into_iter()
            .filter(|b| b.connection == conn)
            .collect()
    };
    // Right after a scheduled beat (answered as it was recorded), the gateway asks for one and
    // does not answer the reply.
    let before = beats_on_conn(fake).len();
    assert!(
        fake.wait_for(WAIT, "a scheduled beat", |f| beats_on_conn(f).len()
            > before)
            .await
    );
    let scheduled = beats_on_conn(fake).last().unwrap().at;
    fake.set_ack_heartbeats(0, false);
    assert!(fake.request_heartbeat(0));
    let n = beats_on_conn(fake).len();
    assert!(
        fake.wait_for(WAIT, "the reply", |f| beats_on_conn(f).len() > n)
            .await
    );
    fake.set_ack_heartbeats(0, true);
    let reply = beats_on_conn(fake).last().unwrap().at;
    assert!(
        reply - scheduled < interval,
        "the reply went out before the next scheduled beat"
    );
    // Three more scheduled beats on the same connection: the one due with the reply unanswered
    // did not close it, nor did the ones after.
    assert!(
        fake.wait_for(
            WAIT,
            "three more beats on the connection",
            |f| beats_on_conn(f).iter().filter(|b| b.at > reply).count() >= 3
        )
        .await,
        "connections: {:?}",
        fake.connections()
    );
    let connections = fake.connections();
    assert_eq!(connections.len(), 1, "{connections:?}");
    assert_eq!(connections[0].closed_at, None);
    assert_eq!(sent(fake, 0, 6).len(), 0, "no resume");
    assert_eq!(sent(fake, 0, 2).len(), 1, "one identify");
    assert!(bot.gateway.status().await[0].latency.is_some());
    bot.stop().await;
}

/// The first heartbeat goes out at interval × jitter after Hello, jitter drawn anew for every
/// connection: over eight shards the first beats are spread, not all at one offset. (Uniform draws
/// put eight offsets within a tenth of the interval of each other with probability under 1e-6; a
/// fixed jitter, zero or not, always does.)
#[actix_rt::test]
async fn first_heartbeats_of_several_shards_are_spread_by_the_jitter() {
    const SHARDS: u32 = 8;
    let interval = Duration::from_secs(1);
    let fake_config = FakeConfig {
        heartbeat_interval: interval,
        ..fast_fake(SHARDS, SHARDS)
    };
    let bot = Bot::start(fake_config, SHARDS, |c| c).await;
    let fake = &bot.fake;
    let first_beat = |f: &shardline::testkit::FakeGateway, conn: u64| {
        f.frames()
            .into_iter()
            .find(|b| b.connection == conn && b.op == Some(1))
            .map(|b| b.at)
    };
    let connections = fake.connections();
    assert_eq!(connections.len(), SHARDS as usize);
    assert!(
        fake.wait_for(WAIT, "every shard's first beat", |f| connections
            .iter()
            .all(|c| first_beat(f, c.id).is_some()))
            .await
    );
    let offsets: Vec<Duration> = connections
        .iter()
        .map(|c| first_beat(fake, c.id).unwrap() - c.opened_at)
        .collect();
    let (min, max) = (
        *offsets.iter().min().unwrap(),
        *offsets.iter().max().unwrap(),
    );
    assert!(max - min >= interval / 10, "{offsets:?}");
    assert!(
        offsets.iter().all(|&o| o < interval + interval / 10),
        "{offsets:?}"
    );
    bot.stop().await;
}
