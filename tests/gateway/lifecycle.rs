use serde_json::{json, Value};
use shardline::testkit::{ConnectionOutcome, FakeConfig};
use shardline::{Phase, ShardEvent};
use std::time::Duration;

use crate::harness::*;

#[actix_rt::test]
async fn one_shard_identifies_receives_events_and_shuts_down_for_good() {
    let bot = Bot::start(fast_fake(1, 1), 1, |c| c.large_threshold(100)).await;
    let fake = &bot.fake;

    let identifies = sent(fake, 0, 2);
    assert_eq!(identifies.len(), 1);
    let d = &identifies[0].json["d"];
    assert_eq!(d["token"], TOKEN);
    assert_eq!(d["intents"], 1 | 1 << 9);
    assert_eq!(d["shard"], json!([0, 1]));
    assert_eq!(d["large_threshold"], 100);
    assert_eq!(d["compress"], false);
    assert_eq!(d["properties"]["browser"], "shardline");
    assert!(d["properties"]["os"].is_string() && d["properties"]["device"].is_string());
    assert!(d.get("presence").is_none());

    let seq = fake
        .dispatch(0, "MESSAGE_CREATE", json!({"id": "1", "content": "hello"}))
        .unwrap();
    assert_eq!(seq, 2, "READY is s=1");
    bot.until("MESSAGE_CREATE delivered", |r| {
        r.count("MESSAGE_CREATE") == 1
    })
    .await;
    let events = bot.recorder.events();
    assert_eq!(
        events
            .iter()
            .map(|e| (e.seq, e.event.as_str()))
            .collect::<Vec<_>>(),
        [(1, "READY"), (2, "MESSAGE_CREATE")]
    );
    assert_eq!(
        serde_json::from_str::<Value>(&events[1].data).unwrap(),
        json!({"id": "1", "content": "hello"})
    );

    let session = fake.session(0).unwrap();
    let status = bot.gateway.status().await;
    assert_eq!(status.len(), 1);
    assert_eq!(status[0].phase, Phase::Ready);
    assert_eq!(status[0].seq, Some(2));
    assert_eq!(status[0].session_id.as_deref(), Some(session.id.as_str()));
    assert_eq!(status[0].reconnects, 0);
    assert!(bot.lifecycle.events().contains(&ShardEvent::Ready {
        shard: 0,
        session_id: session.id.clone()
    }));

    bot.gateway.shutdown(false).await;
    assert!(
        fake.wait_for(WAIT, "client closed", |f| f.connections()[0]
            .closed_at
            .is_some())
            .await
    );
    let conns = fake.connections();
    assert_eq!(conns.len(), 1);
    assert_eq!(
        conns[0].client_close_code,
        Some(1000),
        "a final shutdown closes with 1000"
    );
    assert!(matches!(
        conns[0].outcome,
        ConnectionOutcome::Identified { .. }
    ));
    assert!(!fake.session(0).unwrap().resumable, "1000 ends the session");
    assert!(bot.gateway.status().await.is_empty());
    fake.stop().await;
}

#[actix_rt::test]
async fn several_shards_each_get_their_own_session_and_events() {
    let bot = Bot::start(fast_fake(4, 2), 4, |c| c).await;
    let fake = &bot.fake;
    for shard in 0..4 {
        let identify = sent(fake, shard, 2);
        assert_eq!(identify.len(), 1, "shard {shard}");
        assert_eq!(identify[0].json["d"]["shard"], json!([shard, 4]));
    }
    for shard in 0..4 {
        for n in 0..(shard + 1) {
            fake.dispatch(shard, "MESSAGE_CREATE", json!({ "n": n }))
                .unwrap();
        }
    }
    bot.until("10 messages", |r| r.count("MESSAGE_CREATE") == 10)
        .await;
    for shard in 0..4 {
        let seqs: Vec<u64> = bot
            .recorder
            .seqs("MESSAGE_CREATE")
            .into_iter()
            .filter(|(s, _)| *s == shard)
            .map(|(_, q)| q)
            .collect();
        assert_eq!(
            seqs,
            (2..2 + shard as u64 + 1).collect::<Vec<_>>(),
            "shard {shard}"
        );
    }
    let status = bot.gateway.status().await;
    assert_eq!(
        status.iter().map(|s| (s.id, s.phase)).collect::<Vec<_>>(),
        (0..4).map(|i| (i, Phase::Ready)).collect::<Vec<_>>()
    );
    let ids: std::collections::HashSet<_> =
        status.iter().filter_map(|s| s.session_id.clone()).collect();
    assert_eq!(ids.len(), 4);
    bot.stop().await;
}

#[actix_rt::test]
async fn resumable_shutdown_keeps_sessions_in_the_store() {
    let store = std::sync::Arc::new(shardline::MemorySessionStore::new());
    let s = store.clone();
    let bot = Bot::start(fast_fake(2, 2), 2, move |c| c.session_store(s)).await;
    bot.fake.dispatch(1, "MESSAGE_CREATE", json!({})).unwrap();
    bot.until("message", |r| r.count("MESSAGE_CREATE") == 1)
        .await;
    bot.gateway.shutdown(true).await;
    assert!(
        bot.fake
            .wait_for(WAIT, "both closed", |f| f
                .connections()
                .iter()
                .all(|c| c.closed_at.is_some()))
            .await
    );
    for conn in bot.fake.connections() {
        assert_eq!(
            conn.client_close_code,
            Some(4000),
            "a resumable shutdown never closes with 1000"
        );
    }
    let kept = store.snapshot();
    assert_eq!(kept.len(), 2);
    for (shard, info) in kept {
        let session = bot.fake.session(shard).unwrap();
        assert!(session.resumable);
        assert_eq!(info.session_id, session.id);
        assert_eq!(info.seq, session.seq);
    }
    bot.fake.stop().await;
}

#[actix_rt::test]
async fn a_new_gateway_resumes_from_the_store_without_identifying() {
    let store = std::sync::Arc::new(shardline::MemorySessionStore::new());
    let s = store.clone();
    let fake_config = fast_fake(2, 2);
    let bot = Bot::start(fake_config.clone(), 2, move |c| c.session_store(s)).await;
    bot.gateway.shutdown(true).await;
    // Events that arrive while no process runs the bot are replayed on resume.
    bot.fake
        .dispatch(0, "MESSAGE_CREATE", json!({"during": "restart"}))
        .unwrap();
    let recorder = Recorder::default();
    let config = client(&bot.fake, &fake_config, 2)
        .session_store(store.clone())
        .handler(
            "MESSAGE_CREATE",
            actix::Actor::start(recorder.clone()).recipient(),
        )
        .build()
        .unwrap();
    let second = shardline::Gateway::start(config).await.unwrap();
    wait_until("replayed message", || recorder.count("MESSAGE_CREATE") == 1).await;
    assert!(
        bot.fake
            .wait_for(WAIT, "both resumed", |f| f.ready_shards().len() == 2)
            .await
    );
    for shard in 0..2 {
        assert_eq!(
            sent(&bot.fake, shard, 2).len(),
            1,
            "shard {shard} identified only once"
        );
        assert_eq!(sent(&bot.fake, shard, 6).len(), 1, "shard {shard} resumed");
    }
    assert_eq!(recorder.seqs("MESSAGE_CREATE"), [(0, 2)]);
    second.shutdown(false).await;
    bot.fake.stop().await;
}

/// A session store that panics once, inside the shard, when first asked to record `at_seq` or a
/// later sequence.
struct PanicsOnce {
    inner: shardline::MemorySessionStore,
    at_seq: u64,
    armed: std::sync::atomic::AtomicBool,
}

impl shardline::SessionStore for PanicsOnce {
    fn load(&self, shard: u32) -> Option<shardline::SessionInfo> {
        self.inner.load(shard)
    }
    fn save(&self, shard: u32, session: shardline::SessionInfo) {
        self.inner.save(shard, session)
    }
    fn set_seq(&self, shard: u32, seq: u64) {
        if seq >= self.at_seq && self.armed.swap(false, std::sync::atomic::Ordering::SeqCst) {
            panic!("store failure injected by the test at seq {seq}");
        }
        self.inner.set_seq(shard, seq)
    }
    fn remove(&self, shard: u32) {
        self.inner.remove(shard)
    }
}

#[actix_rt::test]
async fn a_shard_that_dies_is_restarted_and_resumes_without_losing_the_event() {
    let store = std::sync::Arc::new(PanicsOnce {
        inner: shardline::MemorySessionStore::new(),
        at_seq: 3,
        armed: std::sync::atomic::AtomicBool::new(true),
    });
    let s = store.clone();
    // The panic (and its backtrace, if RUST_BACKTRACE is set) holds the shard's thread with the
    // dead connection still open; on a loaded machine that outlasts a 250 ms heartbeat timeout, the
    // fake ends the session with 4009, and there is nothing left to resume. This test is about the
    // restart, so the fake waits longer for heartbeats.
    let fake = FakeConfig {
        heartbeat_timeout: Duration::from_secs(5),
        ..fast_fake(1, 1)
    };
    // A per-thread handler too: the restarted shard runs on the same thread and must find it.
    let local = Recorder::default();
    let setups = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let (l, n) = (local.clone(), setups.clone());
    let bot = Bot::start(fake, 1, move |c| {
        c.session_store(s).handlers_per_thread(move |thread| {
            n.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
            thread.handler("MESSAGE_CREATE", actix::Actor::start(l.clone()).recipient());
        })
    })
    .await;
    for n in 0..3 {
        bot.fake
            .dispatch(0, "MESSAGE_CREATE", json!({ "n": n }))
            .unwrap();
    }
    // The shard dies recording that its handlers finished the events: it had not recorded them, so
    // its restart resumes before them and they are replayed (a crash replays, never loses).
    let last_twice = |seqs: Vec<(u32, u64)>| seqs.iter().filter(|s| s.1 == 4).count() == 2;
    bot.until("the last event again after the restart", |r| {
        last_twice(r.seqs("MESSAGE_CREATE"))
    })
    .await;
    wait_until("the per-thread handler has it again too", || {
        last_twice(local.seqs("MESSAGE_CREATE"))
    })
    .await;
    let ConnectionOutcome::Resumed { seq: from, .. } = bot.fake.connections()[1].outcome else {
        panic!("{:?}", bot.fake.connections()[1].outcome)
    };
    assert!(from < 3, "resumed after an event it never recorded: {from}");
    let expected: Vec<(u32, u64)> = [2, 3, 4]
        .into_iter()
        .chain(from + 1..=4)
        .map(|seq| (0, seq))
        .collect();
    assert_eq!(
        bot.recorder.seqs("MESSAGE_CREATE"),
        expected,
        "each in order, then what followed the stored sequence again"
    );
    assert_eq!(local.seqs("MESSAGE_CREATE"), expected);
    assert_eq!(
        setups.load(std::sync::atomic::Ordering::SeqCst),
        1,
        "the restarted shard found its thread's handlers"
    );
    let conns = bot.fake.connections();
    assert_eq!(
        conns.len(),
        2,
        "the restarted shard opened a new connection"
    );
    assert_eq!(sent(&bot.fake, 0, 2).len(), 1, "no second identify");
    let status = bot.gateway.status().await;
    assert_eq!(status[0].phase, Phase::Ready);
    bot.stop().await;
}
