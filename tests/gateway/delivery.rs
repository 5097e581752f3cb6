//! Delivery under handlers that hang: reads never stay paused past `max_pause`, and events of an
//! ended session never move the new session's stored sequence.

use actix::Actor;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use shardline::{MemorySessionStore, SessionInfo, SessionStore, ShardEvent, SlowHandlers};

use crate::harness::*;

#[actix_rt::test]
async fn a_hung_handler_holds_reads_back_for_max_pause_only_then_misses_events_until_it_recovers() {
    let (handler, hung_seen, open, arbiter) = hung();
    let max_pause = Duration::from_millis(600);
    // The fake ends a connection that sends no heartbeat for 450 ms, less than the pause: the
    // connection survives only if heartbeats go on while reads are paused. (Its default, 250 ms,
    // left too little room for a loaded machine's scheduling.)
    let fake = shardline::testkit::FakeConfig {
        heartbeat_timeout: Duration::from_millis(450),
        ..fast_fake(1, 1)
    };
    let bot = Bot::start(fake, 1, move |c| {
        c.handler("MESSAGE_CREATE", handler.recipient())
            .slow_handlers(SlowHandlers::Backpressure {
                max_pending: 16,
                max_pause,
            })
    })
    .await;
    let seqs: Vec<u64> = bot
        .fake
        .flood(0, "MESSAGE_CREATE", r#"{"content":"x"}"#, 200)
        .unwrap()
        .collect();
    let paused = status_until(&bot.gateway, "reads paused for the hung handler", |s| {
        s[0].reading_paused_since.is_some()
    })
    .await;
    assert_eq!(
        paused[0].stalled_handlers, 0,
        "not stalled before max_pause"
    );
    assert!(paused[0].pending >= 16, "{:?}", paused[0]);

    // After max_pause the shard reads again: the catch-all recorder gets the whole burst, in order,
    // while the hung handler still hangs.
    bot.until("the whole burst reached the other handler", |r| {
        r.count("MESSAGE_CREATE") == 200
    })
    .await;
    let got: Vec<u64> = bot.recorder.seq_numbers("MESSAGE_CREATE");
    assert_eq!(
        got, seqs,
        "every event once, in order, to the handler that keeps up"
    );
    let stalls: Vec<ShardEvent> = bot
        .lifecycle
        .events()
        .into_iter()
        .filter(|e| matches!(e, ShardEvent::HandlerStalled { .. }))
        .collect();
    assert_eq!(stalls.len(), 1, "{stalls:?}");
    let ShardEvent::HandlerStalled {
        shard,
        pending,
        paused_for,
    } = stalls[0].clone()
    else {
        unreachable!()
    };
    assert_eq!(shard, 0);
    assert!(
        pending >= 16,
        "the backlog it stopped waiting with: {pending}"
    );
    assert!(paused_for >= max_pause, "{paused_for:?}");
    let status = status_until(&bot.gateway, "everything handed over", |s| {
        s[0].pending == 0
    })
    .await
    .remove(0);
    assert_eq!(status.reading_paused_since, None, "reading again");
    assert_eq!(status.stalled_handlers, 1);
    // The hung handler holds what reached its mailbox (4, the one it blocks on, and the one the
    // shard was waiting to hand it); every other event was dropped for it, and counted.
    let dropped = status.dropped;
    assert!(dropped > 100, "{status:?}");
    assert_eq!(
        hung_seen.count("MESSAGE_CREATE"),
        0,
        "still hung: it has returned from nothing"
    );
    assert_eq!(
        bot.fake.connections().len(),
        1,
        "heartbeats kept the connection"
    );

    // It recovers: it works through its mailbox, and the shard waits for it again.
    open.send(()).unwrap();
    wait_until("the hung handler got what it held", || {
        hung_seen.count("MESSAGE_CREATE") as u64 == 200 - dropped
    })
    .await;
    status_until(&bot.gateway, "back to backpressure", |s| {
        s[0].stalled_handlers == 0
    })
    .await;
    let marker = bot
        .fake
        .dispatch(0, "MESSAGE_CREATE", serde_json::json!({"marker": true}))
        .unwrap();
    wait_until("the marker reached the recovered handler", || {
        hung_seen.seqs("MESSAGE_CREATE").last() == Some(&(0, marker))
    })
    .await;
    let hung_got: Vec<u64> = hung_seen
        .seqs("MESSAGE_CREATE")
        .into_iter()
        .map(|(_, s)| s)
        .collect();
    assert!(
        hung_got.windows(2).all(|w| w[0] < w[1]),
        "in order: {hung_got:?}"
    );
    assert_eq!(
        bot.gateway.status().await[0].dropped,
        dropped,
        "nothing dropped once it recovered"
    );
    assert_eq!(
        hung_got.len() as u64 + dropped,
        201,
        "each event delivered or counted"
    );
    arbiter.stop();
    bot.stop().await;
}

/// `hung` handlers of `MESSAGE_CREATE` hang at once (after the catch-all recorder): each stretch
/// of pause ends after `max_pause`, one stalled handler at a time, until every one is stalled and
/// the catch-all has the whole flood; every event then reaches each hung handler once it recovers,
/// or is counted as dropped for it.
async fn hung_handlers_never_keep_reads_paused(hung_count: usize) {
    let max_pause = Duration::from_millis(300);
    let fake = shardline::testkit::FakeConfig {
        // Heartbeats every 100 ms: room for a loaded machine with many blocked threads.
        heartbeat_timeout: Duration::from_secs(2),
        ..fast_fake(1, 1)
    };
    let handlers: Vec<_> = (0..hung_count).map(|_| hung()).collect();
    let recipients: Vec<_> = handlers.iter().map(|h| h.0.clone().recipient()).collect();
    let bot = Bot::start(fake, 1, move |mut c| {
        for r in recipients {
            c = c.handler("MESSAGE_CREATE", r);
        }
        c.slow_handlers(SlowHandlers::Backpressure {
            max_pending: 16,
            max_pause,
        })
    })
    .await;
    let count = 200;
    let seqs: Vec<u64> = bot
        .fake
        .flood(0, "MESSAGE_CREATE", r#"{"content":"x"}"#, count)
        .unwrap()
        .collect();
    bot.until("the whole flood reached the catch-all", |r| {
        r.count("MESSAGE_CREATE") == count
    })
    .await;
    let got: Vec<u64> = bot.recorder.seq_numbers("MESSAGE_CREATE");
    assert_eq!(
        got, seqs,
        "every event once, in order, to the handler that keeps up"
    );
    let status = status_until(
        &bot.gateway,
        "every hung handler stalled, reading again",
        |s| s[0].pending == 0 && s[0].reading_paused_since.is_none(),
    )
    .await
    .remove(0);
    assert_eq!(status.stalled_handlers, hung_count, "{status:?}");
    let stalls: Vec<ShardEvent> = bot
        .lifecycle
        .events()
        .into_iter()
        .filter(|e| matches!(e, ShardEvent::HandlerStalled { .. }))
        .collect();
    assert_eq!(stalls.len(), hung_count, "one stretch each: {stalls:?}");
    for stall in &stalls {
        let ShardEvent::HandlerStalled { paused_for, .. } = stall else {
            unreachable!()
        };
        assert!(*paused_for >= max_pause, "{paused_for:?}");
    }
    assert_eq!(
        bot.fake.connections().len(),
        1,
        "heartbeats kept the connection"
    );
    // They recover: each gets what reached its mailbox, in order; the rest was counted.
    for (_, _, open, _) in &handlers {
        open.send(()).unwrap();
    }
    let seen = |i: usize| -> Vec<u64> {
        handlers[i]
            .1
            .seqs("MESSAGE_CREATE")
            .into_iter()
            .map(|(_, s)| s)
            .collect()
    };
    let dropped = status.dropped;
    wait_until(
        "each event delivered to each hung handler or counted",
        || {
            (0..hung_count).map(|i| seen(i).len() as u64).sum::<u64>() + dropped
                == (hung_count * count) as u64
        },
    )
    .await;
    for i in 0..hung_count {
        let got = seen(i);
        assert!(got.windows(2).all(|w| w[0] < w[1]), "in order: {got:?}");
        assert!(!got.is_empty());
    }
    assert_eq!(bot.gateway.status().await[0].dropped, dropped);
    for (_, _, _, arbiter) in handlers {
        arbiter.stop();
    }
    bot.stop().await;
}

#[actix_rt::test]
async fn two_hung_handlers_never_keep_reads_paused_past_max_pause() {
    hung_handlers_never_keep_reads_paused(2).await;
}

#[actix_rt::test]
async fn many_hung_handlers_never_keep_reads_paused_past_max_pause() {
    hung_handlers_never_keep_reads_paused(6).await;
}

/// A session store that records, for every `set_seq`, the session it moved.
#[derive(Default)]
struct RecordingStore {
    inner: MemorySessionStore,
    moved: Mutex<Vec<(Option<String>, u64)>>,
}

impl SessionStore for RecordingStore {
    fn load(&self, shard: u32) -> Option<SessionInfo> {
        self.inner.load(shard)
    }
    fn save(&self, shard: u32, session: SessionInfo) {
        self.inner.save(shard, session);
    }
    fn set_seq(&self, shard: u32, seq: u64) {
        let session = self.inner.load(shard).map(|s| s.session_id);
        self.moved.lock().unwrap().push((session, seq));
        self.inner.set_seq(shard, seq);
    }
    fn remove(&self, shard: u32) {
        self.inner.remove(shard);
    }
}

#[actix_rt::test]
async fn events_of_an_ended_session_never_move_the_new_sessions_stored_sequence() {
    let (handler, hung_seen, open, arbiter) = hung();
    let store = Arc::new(RecordingStore::default());
    let st = store.clone();
    let bot = Bot::start(fast_fake(1, 1), 1, move |c| {
        c.handler("MESSAGE_CREATE", handler.recipient())
            .session_store(st)
    })
    .await;
    let old = bot.gateway.status().await[0].session_id.clone().unwrap();
    // READY is seq 1, the burst 2..=61; the hung handler keeps most of it queued in the shard.
    let last = bot
        .fake
        .flood(0, "MESSAGE_CREATE", r#"{"content":"x"}"#, 60)
        .unwrap()
        .last()
        .unwrap();
    status_until(
        &bot.gateway,
        "the burst read, held for the hung handler",
        |s| s[0].seq == Some(last) && s[0].pending > 0,
    )
    .await;
    // The session ends; the shard identifies a new one whose READY (seq 1) queues behind the old
    // session's events.
    bot.fake.invalid_session(0, false);
    let status = status_until(&bot.gateway, "a new session", |s| {
        s[0].session_id.as_ref().is_some_and(|id| *id != old) && s[0].seq == Some(1)
    })
    .await
    .remove(0);
    let new = status.session_id.clone().unwrap();
    assert!(status.pending > 1, "old events still queued: {status:?}");
    open.send(()).unwrap();
    wait_until("every old event delivered", || {
        hung_seen.count("MESSAGE_CREATE") == 60
    })
    .await;
    wait_until("the new READY handed over", || {
        store
            .moved
            .lock()
            .unwrap()
            .contains(&(Some(new.clone()), 1))
    })
    .await;
    let moved_new: Vec<u64> = store
        .moved
        .lock()
        .unwrap()
        .iter()
        .filter(|(s, _)| s.as_deref() == Some(new.as_str()))
        .map(|(_, seq)| *seq)
        .collect();
    assert_eq!(
        moved_new,
        [1],
        "only the new session's own READY moved its sequence"
    );
    assert_eq!(store.load(0).map(|s| (s.session_id, s.seq)), Some((new, 1)));
    arbiter.stop();
    bot.stop().await;
}

/// A session store that checks, at every `set_seq`, that every handler has finished every event at
/// or below the sequence it is given, and keeps the sequences it was given.
struct TrailingStore {
    inner: MemorySessionStore,
    /// The events sent, and the recorders of the handlers each went to.
    sent: Mutex<Vec<u64>>,
    handlers: Vec<Recorder>,
    moved: Mutex<Vec<u64>>,
    ahead: Mutex<Vec<String>>,
}

impl SessionStore for TrailingStore {
    fn load(&self, shard: u32) -> Option<SessionInfo> {
        self.inner.load(shard)
    }
    fn save(&self, shard: u32, session: SessionInfo) {
        self.inner.save(shard, session);
    }
    fn set_seq(&self, shard: u32, seq: u64) {
        for (i, handler) in self.handlers.iter().enumerate() {
            let finished: Vec<u64> = handler
                .seqs("MESSAGE_CREATE")
                .into_iter()
                .map(|(_, s)| s)
                .collect();
            for sent in self.sent.lock().unwrap().iter().filter(|&&s| s <= seq) {
                if !finished.contains(sent) {
                    self.ahead
                        .lock()
                        .unwrap()
                        .push(format!("stored {seq} before handler {i} finished {sent}"));
                }
            }
        }
        self.moved.lock().unwrap().push(seq);
        self.inner.set_seq(shard, seq);
    }
    fn remove(&self, shard: u32) {
        self.inner.remove(shard);
    }
}

/// A crash replays, never loses: the stored sequence (what a restarted shard, or the next owner in
/// a fleet, resumes after) trails what every handler has finished, not what entered its mailbox.
/// A hung handler holds the burst in its mailbox and in the shard; the stored sequence stays at
/// READY until it lets go, then catches up with the last event, with nothing more to read.
#[actix_rt::test]
async fn the_stored_sequence_trails_what_every_handler_has_finished() {
    let (handler, hung_seen, open, arbiter) = hung();
    let quick = Recorder::default();
    let store = Arc::new(TrailingStore {
        inner: MemorySessionStore::new(),
        sent: Mutex::default(),
        handlers: vec![hung_seen.clone(), quick.clone()],
        moved: Mutex::default(),
        ahead: Mutex::default(),
    });
    let st = store.clone();
    let q = quick.clone();
    let bot = Bot::start(fast_fake(1, 1), 1, move |c| {
        c.handler("MESSAGE_CREATE", handler.recipient())
            .handler("MESSAGE_CREATE", q.start().recipient())
            .session_store(st)
    })
    .await;
    let ready = store.load(0).unwrap().seq;
    // Marked sent before the flood: set_seq may run as soon as the first event is read.
    let seqs: Vec<u64> = (ready + 1..=ready + 20).collect();
    *store.sent.lock().unwrap() = seqs.clone();
    let flooded: Vec<u64> = bot
        .fake
        .flood(0, "MESSAGE_CREATE", r#"{"content":"x"}"#, 20)
        .unwrap()
        .collect();
    assert_eq!(flooded, seqs);
    // The hung handler blocks on the first event with more in its mailbox and the shard waiting to
    // hand it the next: the quick handler has finished those (it gets each after the hung one).
    status_until(
        &bot.gateway,
        "the burst read and held for the hung handler",
        |s| s[0].seq == seqs.last().copied() && s[0].pending > 0,
    )
    .await;
    wait_until("the quick handler finished what it was given", || {
        quick.count("MESSAGE_CREATE") >= 3
    })
    .await;
    // (The store also checks every sequence it is given as it is given.)
    assert_eq!(
        store.load(0).map(|s| s.seq),
        Some(ready),
        "the stored sequence moved past events in a handler's mailbox"
    );
    open.send(()).unwrap();
    wait_until("both handlers finished everything", || {
        hung_seen.count("MESSAGE_CREATE") == 20 && quick.count("MESSAGE_CREATE") == 20
    })
    .await;
    // Nothing else arrives: the stored sequence still catches up with the last event.
    wait_until("the stored sequence caught up", || {
        store.load(0).map(|s| s.seq) == seqs.last().copied()
    })
    .await;
    assert_eq!(*store.ahead.lock().unwrap(), Vec::<String>::new());
    let moved = store.moved.lock().unwrap().clone();
    assert!(moved.windows(2).all(|w| w[0] < w[1]), "{moved:?}");
    arbiter.stop();
    bot.stop().await;
}

/// A batch handler whose first batch blocks its thread until the gate opens; it records every
/// event of the batches it finishes.
struct HungBatches {
    seen: Recorder,
    gate: Option<std::sync::mpsc::Receiver<()>>,
}

impl Actor for HungBatches {
    type Context = actix::Context<Self>;
}

impl actix::Handler<shardline::DispatchBatch> for HungBatches {
    type Result = ();
    fn handle(&mut self, batch: shardline::DispatchBatch, _: &mut actix::Context<Self>) {
        if let Some(gate) = self.gate.take() {
            let _ = gate.recv();
        }
        // Taken apart: the batch counts as finished once its last event is dropped.
        for event in batch.into_events() {
            self.seen.record(&event);
        }
    }
}

/// The same for a batch handler: the stored sequence stays behind the batches it holds.
#[actix_rt::test]
async fn the_stored_sequence_trails_what_a_batch_handler_has_finished() {
    let seen = Recorder::default();
    let (open, gate) = std::sync::mpsc::channel();
    let arbiter = actix::Arbiter::new();
    let s = seen.clone();
    let handler = HungBatches::start_in_arbiter(&arbiter.handle(), move |_| HungBatches {
        seen: s,
        gate: Some(gate),
    });
    let store = Arc::new(TrailingStore {
        inner: MemorySessionStore::new(),
        sent: Mutex::default(),
        handlers: vec![seen.clone()],
        moved: Mutex::default(),
        ahead: Mutex::default(),
    });
    let st = store.clone();
    let bot = Bot::start(fast_fake(1, 1), 1, move |c| {
        c.batch_handler("MESSAGE_CREATE", handler.recipient())
            .session_store(st)
    })
    .await;
    let ready = store.load(0).unwrap().seq;
    // Fewer than its mailbox holds (16): the shard never waits for it, and the catch-all
    // recorder gets each event as it comes.
    let seqs: Vec<u64> = (ready + 1..=ready + 10).collect();
    *store.sent.lock().unwrap() = seqs.clone();
    for (i, seq) in seqs.iter().enumerate() {
        // One at a time, so they go out in several batches.
        let sent = bot
            .fake
            .dispatch(0, "MESSAGE_CREATE", serde_json::json!({ "i": i }))
            .unwrap();
        assert_eq!(sent, *seq);
        bot.until("the catch-all recorder has it", |r| {
            r.seqs("MESSAGE_CREATE").last() == Some(&(0, sent))
        })
        .await;
    }
    assert_eq!(store.load(0).map(|s| s.seq), Some(ready));
    open.send(()).unwrap();
    wait_until("the batch handler finished everything", || {
        seen.count("MESSAGE_CREATE") == 10
    })
    .await;
    wait_until("the stored sequence caught up", || {
        store.load(0).map(|s| s.seq) == seqs.last().copied()
    })
    .await;
    assert_eq!(*store.ahead.lock().unwrap(), Vec::<String>::new());
    arbiter.stop();
    bot.stop().await;
}

/// A command naming `i` (a soundboard request for guild `i`).
fn numbered(i: u64) -> shardline::Command {
    shardline::Command::RequestSoundboardSounds(
        shardline::protocol::command::RequestSoundboardSounds {
            guild_ids: vec![i.to_string()],
        },
    )
}

#[actix_rt::test]
async fn a_failed_write_ends_the_connection_and_the_command_goes_out_on_the_next_one_once() {
    // Heartbeats every 30 s: only the write error can end the connection within the test.
    let fake_config = shardline::testkit::FakeConfig {
        heartbeat_interval: Duration::from_secs(30),
        ..fast_fake(1, 1)
    };
    let (handler, _, open, arbiter) = hung();
    let bot = Bot::start(fake_config, 1, move |c| {
        c.handler("MESSAGE_CREATE", handler.recipient())
            .slow_handlers(SlowHandlers::Backpressure {
                max_pending: 4,
                max_pause: Duration::from_secs(60),
            })
    })
    .await;
    // The shard stops reading for the hung handler, so it cannot see the gateway go away: only
    // writing can tell it.
    bot.fake
        .flood(0, "MESSAGE_CREATE", r#"{"content":"x"}"#, 20)
        .unwrap();
    status_until(&bot.gateway, "reads paused", |s| {
        s[0].reading_paused_since.is_some()
    })
    .await;
    bot.fake.drop_connection(0);
    assert!(
        bot.fake
            .wait_for(WAIT, "the gateway closed its end", |f| f.connections()[0]
                .closed_at
                .is_some())
            .await
    );
    // Writes the kernel takes before the peer's reset arrives vanish with the connection (the
    // gateway acknowledges no command); the first one after it fails. Send, one flush each, until
    // the shard has left the connection: the last command sent is the one the socket refused.
    let mut sent = 0;
    let connected =
        |s: &shardline::ShardStatus| s.reconnects == 0 && s.phase == shardline::Phase::Ready;
    while connected(&bot.gateway.status().await[0]) {
        assert!(sent < 500, "the shard never noticed the dead connection");
        bot.gateway.send(0, numbered(sent)).await.unwrap();
        sent += 1;
        actix_rt::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(
        bot.fake
            .wait_for(WAIT, "resumed", |f| f.connections().len() == 2
                && f.ready_shards() == [0])
            .await
    );
    let conns = bot.fake.connections();
    assert!(
        matches!(
            conns[1].outcome,
            shardline::testkit::ConnectionOutcome::Resumed { .. }
        ),
        "{:?}",
        conns[1].outcome
    );
    // The handler recovers: the replay behind it (twice max_pending at most is read before
    // RESUMED) goes through, and the shard is ready to send again.
    open.send(()).unwrap();
    let on = |conn: u64| -> Vec<u64> {
        sent_any(&bot.fake, 31)
            .into_iter()
            .filter(|f| f.connection == conn)
            .map(|f| {
                f.json["d"]["guild_ids"][0]
                    .as_str()
                    .unwrap()
                    .parse()
                    .unwrap()
            })
            .collect()
    };
    wait_until("every command after the failed write sent again", || {
        on(conns[1].id).last() == Some(&(sent - 1))
    })
    .await;
    assert_eq!(
        on(conns[0].id),
        Vec::<u64>::new(),
        "the dead connection received nothing"
    );
    // The refused command went out on the new connection, once.
    assert_eq!(on(conns[1].id), [sent - 1], "sent {sent}");
    arbiter.stop();
    bot.stop().await;
}

#[actix_rt::test]
async fn a_replay_before_resumed_takes_the_queue_to_twice_max_pending_at_most() {
    let (handler, hung_seen, open, arbiter) = hung();
    let max_pending = 16;
    let bot = Bot::start(fast_fake(1, 1), 1, move |c| {
        c.handler("MESSAGE_CREATE", handler.recipient())
            .slow_handlers(SlowHandlers::Backpressure {
                max_pending,
                max_pause: Duration::from_secs(60),
            })
    })
    .await;
    // The hung handler holds a few events; the shard is behind but still reading.
    let mut expected = messages(&bot, 0, 8);
    status_until(&bot.gateway, "a wait for the hung handler", |s| {
        s[0].pending > 0
    })
    .await;
    // The connection drops; 400 events wait in the session, replayed before RESUMED.
    assert!(bot.fake.drop_connection(0));
    expected.extend(messages(&bot, 8, 400));
    assert!(
        bot.fake
            .wait_for(WAIT, "the resume sent", |f| f.connections().len() == 2
                && sent(f, 0, 6).len() == 1)
            .await
    );
    // Reading the replay, the queue stops at twice max_pending and the shard pauses, RESUMED
    // still unread.
    let status = status_until(&bot.gateway, "paused in the handshake", |s| {
        s[0].reading_paused_since.is_some() && s[0].phase == shardline::Phase::Resuming
    })
    .await
    .remove(0);
    assert_eq!(status.pending, 2 * max_pending, "{status:?}");
    for _ in 0..20 {
        let s = bot.gateway.status().await.remove(0);
        assert!(s.pending <= 2 * max_pending, "{s:?}");
        actix_rt::time::sleep(Duration::from_millis(10)).await;
    }
    // The handler recovers: the replay and RESUMED are read, and every event arrives once.
    open.send(()).unwrap();
    bot.until("every event", |r| {
        r.count("MESSAGE_CREATE") == expected.len()
    })
    .await;
    let got: Vec<u64> = bot.recorder.seq_numbers("MESSAGE_CREATE");
    assert_eq!(got, expected, "each event once, in order");
    wait_until("the hung handler got every event", || {
        hung_seen.count("MESSAGE_CREATE") == expected.len()
    })
    .await;
    assert_eq!(bot.gateway.status().await[0].dropped, 0);
    assert_eq!(bot.recorder.count("RESUMED"), 1);
    arbiter.stop();
    bot.stop().await;
}
