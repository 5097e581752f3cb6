use std::sync::{Arc, Mutex};

use actix::Actor;
use serde_json::json;
use shardline::{Dispatch, DispatchBatch};

use crate::harness::*;

#[actix_rt::test]
async fn each_event_reaches_each_of_its_handlers_once() {
    let messages_a = Recorder::default();
    let messages_b = Recorder::default();
    let guilds = Recorder::default();
    let (a, b, g) = (
        messages_a.clone().start(),
        messages_b.clone().start(),
        guilds.clone().start(),
    );
    let bot = Bot::start(fast_fake(1, 1), 1, move |c| {
        c.handler("MESSAGE_CREATE", a.clone().recipient())
            .handler("MESSAGE_CREATE", b.recipient())
            // Registered twice, by name and for everything: still once per event.
            .handler_all(a.recipient())
            .handler("GUILD_CREATE", g.recipient())
    })
    .await;
    for _ in 0..3 {
        bot.fake.dispatch(0, "MESSAGE_CREATE", json!({})).unwrap();
    }
    bot.fake
        .dispatch(0, "GUILD_CREATE", json!({"id": "1"}))
        .unwrap();
    bot.fake.dispatch(0, "UNHEARD_OF", json!({})).unwrap();
    // Markers, one for each handler, after everything else: a handler gets a shard's events in
    // order, so once it has its marker, anything extra (a repeat) would already be there.
    let marker_m = bot
        .fake
        .dispatch(0, "MESSAGE_CREATE", json!({"marker": true}))
        .unwrap();
    let marker_g = bot
        .fake
        .dispatch(0, "GUILD_CREATE", json!({"marker": true}))
        .unwrap();
    let has = |r: &Recorder, seq: u64| r.events().iter().any(|e| e.seq == seq);
    wait_until("every handler has its marker", || {
        has(&messages_a, marker_g)
            && has(&messages_b, marker_m)
            && has(&guilds, marker_g)
            && has(&bot.recorder, marker_g)
    })
    .await;
    // a: everything once (READY, 3 messages, guild, unknown, markers); b: its 3 and its marker;
    // guilds: its 1 and its marker.
    assert_eq!(
        messages_a
            .events()
            .iter()
            .map(|e| e.seq)
            .collect::<Vec<_>>(),
        [1, 2, 3, 4, 5, 6, 7, 8]
    );
    assert_eq!(
        messages_b.seqs("MESSAGE_CREATE"),
        [(0, 2), (0, 3), (0, 4), (0, marker_m)]
    );
    assert_eq!(messages_b.events().len(), 4);
    assert_eq!(guilds.seqs("GUILD_CREATE"), [(0, 5), (0, marker_g)]);
    assert_eq!(guilds.events().len(), 2);
    // The harness's catch-all recorder saw every event too.
    assert_eq!(bot.recorder.events().len(), 8);
    bot.stop().await;
}

#[actix_rt::test]
async fn a_batch_handler_gets_every_event_once_in_order_a_burst_at_a_time() {
    let batched = Recorder::default();
    let messages = Recorder::default();
    let (b, m) = (batched.clone().start(), messages.clone().start());
    let bot = Bot::start(fast_fake(2, 2), 2, move |c| {
        c.batch_handler("MESSAGE_CREATE", b.clone().recipient())
            // Registered twice: still once per event.
            .batch_handler_all(b.recipient())
            .handler("MESSAGE_CREATE", m.recipient())
    })
    .await;
    let burst: Vec<u64> = bot
        .fake
        .flood(0, "MESSAGE_CREATE", r#"{"content":"x"}"#, 2000)
        .unwrap()
        .collect();
    bot.fake
        .dispatch(1, "GUILD_CREATE", json!({"id": "1"}))
        .unwrap();
    // A marker message on each shard, after the rest: a handler gets a shard's events in order, so
    // once it has both markers, every event before them (and any repeat of one) is in.
    let markers: Vec<(u32, u64)> = (0..2)
        .map(|shard| {
            let seq = bot
                .fake
                .dispatch(shard, "MESSAGE_CREATE", json!({"marker": true}))
                .unwrap();
            (shard, seq)
        })
        .collect();
    let done = |r: &Recorder| {
        let seen = r.seqs("MESSAGE_CREATE");
        markers.iter().all(|m| seen.contains(m))
    };
    wait_until("the markers", || done(&batched) && done(&messages)).await;
    let of_shard = |r: &Recorder, shard: u32| -> Vec<u64> {
        r.seqs("MESSAGE_CREATE")
            .into_iter()
            .filter(|m| m.0 == shard)
            .map(|m| m.1)
            .collect()
    };
    let mut expected = burst.clone();
    expected.push(markers[0].1);
    assert_eq!(
        of_shard(&batched, 0),
        expected,
        "every event once, in order"
    );
    assert_eq!(of_shard(&batched, 1), [markers[1].1]);
    // READY of each shard, the burst, the guild, the markers: nothing else, nothing twice.
    assert_eq!(batched.count("GUILD_CREATE"), 1);
    assert_eq!(batched.events().len(), 2 + 2000 + 1 + 2);
    let sizes = batched.batch_sizes.lock().unwrap().clone();
    assert_eq!(sizes.iter().sum::<usize>(), 2005);
    assert!(
        sizes.iter().any(|&n| n > 1),
        "a burst arrives in batches, not one by one: {sizes:?}"
    );
    // The per-event handler of the same events is unaffected.
    assert_eq!(of_shard(&messages, 0), expected);
    assert_eq!(of_shard(&messages, 1), [markers[1].1]);
    assert_eq!(messages.events().len(), 2000 + 2);
    bot.stop().await;
}

/// The handling thread, shard, seq and name of one event.
type Handled = (std::thread::ThreadId, u32, u64, String);

/// What a per-thread handler saw: the thread its setup ran on, and per event the handling thread,
/// shard, seq and name.
#[derive(Clone)]
struct OnThread {
    setup_thread: std::thread::ThreadId,
    seen: Arc<Mutex<Vec<Handled>>>,
}

impl Actor for OnThread {
    type Context = actix::Context<Self>;
}

impl OnThread {
    fn record(&self, d: &Dispatch) {
        let here = std::thread::current().id();
        let entry = (here, d.shard(), d.seq(), d.event().to_owned());
        self.seen.lock().unwrap().push(entry);
    }
}

impl actix::Handler<Dispatch> for OnThread {
    type Result = ();
    fn handle(&mut self, d: Dispatch, _: &mut Self::Context) {
        self.record(&d);
    }
}

impl actix::Handler<DispatchBatch> for OnThread {
    type Result = ();
    fn handle(&mut self, batch: DispatchBatch, _: &mut Self::Context) {
        for d in batch.events() {
            self.record(d);
        }
    }
}

#[actix_rt::test]
async fn per_thread_handlers_run_beside_their_shards_and_get_exactly_their_events() {
    let made = Arc::new(Mutex::new(Vec::<OnThread>::new()));
    let m = made.clone();
    // 4 shards over the harness's 2 arbiters.
    let bot = Bot::start(fast_fake(4, 4), 4, move |c| {
        c.handlers_per_thread(move |thread| {
            let handler = OnThread {
                setup_thread: std::thread::current().id(),
                seen: Default::default(),
            };
            m.lock().unwrap().push(handler.clone());
            let addr = handler.start();
            thread
                .handler("MESSAGE_CREATE", addr.clone().recipient())
                .batch_handler("GUILD_CREATE", addr.recipient());
        })
    })
    .await;
    let mut floods = Vec::new();
    for shard in 0..4 {
        let seqs: Vec<u64> = bot
            .fake
            .flood(shard, "MESSAGE_CREATE", r#"{"content":"x"}"#, 500)
            .unwrap()
            .collect();
        let guild = bot
            .fake
            .dispatch(shard, "GUILD_CREATE", json!({ "id": shard.to_string() }))
            .unwrap();
        // One marker per path into the handler (per event and batched), after the rest.
        let marker = bot
            .fake
            .dispatch(shard, "MESSAGE_CREATE", json!({"marker": true}))
            .unwrap();
        let guild_marker = bot
            .fake
            .dispatch(shard, "GUILD_CREATE", json!({"marker": true}))
            .unwrap();
        floods.push((seqs, guild, marker, guild_marker));
    }
    bot.until("the shared handler has every event", |r| {
        r.count("MESSAGE_CREATE") == 2004 && r.count("GUILD_CREATE") == 8
    })
    .await;
    let handlers = made.lock().unwrap().clone();
    // Each shard's marker comes after its other events: once every marker is in, anything a
    // handler would get extra (a repeat, another shard's event) is in too.
    wait_until("the per-thread handlers have every marker", || {
        floods
            .iter()
            .enumerate()
            .all(|(shard, (_, _, marker, guild_marker))| {
                [marker, guild_marker].iter().all(|&m| {
                    handlers.iter().any(|h| {
                        h.seen
                            .lock()
                            .unwrap()
                            .iter()
                            .any(|(_, s, seq, _)| *s == shard as u32 && seq == m)
                    })
                })
            })
    })
    .await;

    assert_eq!(handlers.len(), 2, "the setup runs once per shard thread");
    let test_thread = std::thread::current().id();
    assert_ne!(handlers[0].setup_thread, handlers[1].setup_thread);
    let mut shards_seen = Vec::new();
    for handler in &handlers {
        assert_ne!(
            handler.setup_thread, test_thread,
            "set up on a shard thread"
        );
        let seen = handler.seen.lock().unwrap().clone();
        assert!(
            seen.iter().all(|(t, ..)| *t == handler.setup_thread),
            "every event is handled on the thread the handler was set up on"
        );
        let mut mine: Vec<u32> = seen.iter().map(|(_, shard, ..)| *shard).collect();
        mine.sort_unstable();
        mine.dedup();
        assert_eq!(mine.len(), 2, "each thread runs two of the four shards");
        // Exactly the flood and the guild of each of its shards: each once, in order.
        for &shard in &mine {
            let (seqs, guild, marker, guild_marker) = &floods[shard as usize];
            let of = |name: &str| -> Vec<u64> {
                seen.iter()
                    .filter(|(_, s, _, e)| *s == shard && e == name)
                    .map(|(_, _, seq, _)| *seq)
                    .collect()
            };
            let mut messages = seqs.clone();
            messages.push(*marker);
            assert_eq!(of("MESSAGE_CREATE"), messages, "shard {shard}");
            assert_eq!(of("GUILD_CREATE"), [*guild, *guild_marker], "shard {shard}");
        }
        // READY is registered with neither handler.
        assert!(seen.iter().all(|(.., e)| e != "READY"));
        shards_seen.extend(mine);
    }
    shards_seen.sort_unstable();
    assert_eq!(
        shards_seen,
        [0, 1, 2, 3],
        "no shard is heard by two threads"
    );
    bot.stop().await;
}

/// What a handler that reads `d` saw: seq, name, `d` parsed, and `d` as a validated raw value.
type Read = (
    u64,
    String,
    Result<serde_json::Value, String>,
    Option<String>,
);

/// A handler that reads every event's `d` (the reads that used to panic on a broken frame).
#[derive(Default, Clone)]
struct Reader {
    seen: Arc<Mutex<Vec<Read>>>,
}

impl Actor for Reader {
    type Context = actix::Context<Self>;
}

impl actix::Handler<Dispatch> for Reader {
    type Result = ();
    fn handle(&mut self, d: Dispatch, _: &mut Self::Context) {
        let _ = d.data();
        let entry = (
            d.seq(),
            d.event().to_owned(),
            d.parse::<serde_json::Value>().map_err(|e| e.to_string()),
            d.raw().ok().map(|raw| raw.get().to_owned()),
        );
        self.seen.lock().unwrap().push(entry);
    }
}

#[actix_rt::test]
async fn frames_whose_object_never_closes_are_skipped_and_nothing_after_them_is_lost() {
    let reader = Reader::default();
    let r = reader.clone().start();
    let bot = Bot::start(fast_fake(1, 1), 1, move |c| c.handler_all(r.recipient())).await;
    let session = bot.fake.session(0).unwrap().id;
    let first = bot
        .fake
        .dispatch(0, "MESSAGE_CREATE", json!({"n": 1}))
        .unwrap();
    // The object's closing brace is missing and the last `}` is `d`'s: a dispatch, a Hello, an
    // op 9 and a READY. Each broken dispatch carries the seq the next real event will have: taken
    // for delivered, it would make that event look like a repeat.
    let next = first + 1;
    for bad in [
        format!(r#"{{"t":"MESSAGE_CREATE","s":{next},"op":0,"d":{{"id":"1"}}"#),
        r#"{"t":null,"s":null,"op":10,"d":{"heartbeat_interval":41250}"#.to_owned(),
        r#"{"t":null,"s":null,"op":9,"d":{"x":{"y":false}}"#.to_owned(),
        format!(r#"{{"t":"READY","s":{next},"op":0,"d":{{"session_id":"x","user":{{"id":"1"}}}}"#),
    ] {
        assert!(bot.fake.send_raw_text(0, &bad));
    }
    let after: Vec<u64> = (2..=4)
        .map(|n| {
            bot.fake
                .dispatch(0, "MESSAGE_CREATE", json!({ "n": n }))
                .unwrap()
        })
        .collect();
    assert_eq!(after[0], next);
    let last = *after.last().unwrap();
    wait_until("the last message", || {
        reader
            .seen
            .lock()
            .unwrap()
            .iter()
            .any(|e| e.1 == "MESSAGE_CREATE" && e.0 == last)
    })
    .await;
    let seen = reader.seen.lock().unwrap().clone();
    let expected: Vec<Read> = std::iter::once(first)
        .chain(after)
        .enumerate()
        .map(|(i, seq)| {
            let d = json!({ "n": i + 1 });
            (
                seq,
                "MESSAGE_CREATE".to_owned(),
                Ok(d.clone()),
                Some(d.to_string()),
            )
        })
        .collect();
    assert_eq!(seen.len(), 1 + expected.len(), "{seen:?}");
    assert_eq!((seen[0].0, seen[0].1.as_str()), (1, "READY"));
    assert_eq!(seen[0].2.as_ref().unwrap()["session_id"], json!(session));
    assert_eq!(seen[1..], expected[..]);
    // Nothing else happened: one connection, one Identify, the session untouched.
    assert_eq!(bot.fake.connections().len(), 1);
    assert_eq!(bot.fake.identifies().len(), 1);
    let status = bot.gateway.status().await;
    assert_eq!(status[0].session_id.as_deref(), Some(session.as_str()));
    assert_eq!(status[0].seq, Some(last));
    bot.stop().await;
}

/// A per-event handler (only `Handler<Dispatch>`) that takes its events in bursts.
struct PerEvent {
    seen: Recorder,
    /// How many times its `handle` ran, and on which thread each time.
    calls: Arc<Mutex<Vec<std::thread::ThreadId>>>,
}

impl Actor for PerEvent {
    type Context = actix::Context<Self>;
}

impl actix::Handler<Dispatch> for PerEvent {
    type Result = ();
    fn handle(&mut self, d: Dispatch, _: &mut actix::Context<Self>) {
        self.calls.lock().unwrap().push(std::thread::current().id());
        self.seen.record(&d);
    }
}

shardline::handles_bursts!(PerEvent);

/// `handles_bursts!`: a per-event handler on another thread, registered as a batch handler, runs
/// its own `handle` once per event, in order, on its thread.
#[actix_rt::test]
async fn a_per_event_handler_taking_bursts_runs_once_per_event_in_order() {
    let seen = Recorder::default();
    let calls = Arc::new(Mutex::new(Vec::new()));
    let arbiter = actix::Arbiter::new();
    let (s, c) = (seen.clone(), calls.clone());
    let handler =
        PerEvent::start_in_arbiter(&arbiter.handle(), move |_| PerEvent { seen: s, calls: c });
    let bot = Bot::start(fast_fake(1, 1), 1, move |c| {
        c.batch_handler("MESSAGE_CREATE", handler.recipient())
    })
    .await;
    let burst: Vec<u64> = bot
        .fake
        .flood(0, "MESSAGE_CREATE", r#"{"content":"x"}"#, 1000)
        .unwrap()
        .collect();
    let last = *burst.last().unwrap();
    wait_until("the whole burst", || {
        seen.seqs("MESSAGE_CREATE").last() == Some(&(0, last))
    })
    .await;
    let got: Vec<u64> = seen
        .seqs("MESSAGE_CREATE")
        .into_iter()
        .map(|(_, s)| s)
        .collect();
    assert_eq!(got, burst, "each event once, in order");
    let calls = calls.lock().unwrap().clone();
    assert_eq!(calls.len(), 1000, "its handle ran once per event");
    assert!(
        calls.iter().all(|t| *t != std::thread::current().id()),
        "on its own thread"
    );
    arbiter.stop();
    bot.stop().await;
}
