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
    bot.until("all", |r| r.count("UNHEARD_OF") == 1).await;
    wait_until("handlers", || {
        messages_a.events().len() == 6
            && messages_b.count("MESSAGE_CREATE") == 3
            && guilds.count("GUILD_CREATE") == 1
    })
    .await;
    actix_rt::time::sleep(std::time::Duration::from_millis(50)).await;
    // a: everything once (READY, 3 messages, guild, unknown); b: its 3; guilds: its 1.
    assert_eq!(
        messages_a
            .events()
            .iter()
            .map(|e| e.seq)
            .collect::<Vec<_>>(),
        [1, 2, 3, 4, 5, 6]
    );
    assert_eq!(messages_b.seqs("MESSAGE_CREATE"), [(0, 2), (0, 3), (0, 4)]);
    assert_eq!(messages_b.events().len(), 3);
    assert_eq!(guilds.events().len(), 1);
    // The harness's catch-all recorder saw every event too.
    assert_eq!(bot.recorder.events().len(), 6);
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
    wait_until("the burst and the guild", || {
        batched.count("MESSAGE_CREATE") == 2000 && batched.count("GUILD_CREATE") == 1
    })
    .await;
    actix_rt::time::sleep(std::time::Duration::from_millis(50)).await;
    let got: Vec<u64> = batched
        .seqs("MESSAGE_CREATE")
        .into_iter()
        .map(|(shard, seq)| {
            assert_eq!(shard, 0);
            seq
        })
        .collect();
    assert_eq!(got, burst, "every event once, in order");
    // READY of each shard, the burst, the guild: nothing else, nothing twice.
    assert_eq!(batched.events().len(), 2 + 2000 + 1);
    let sizes = batched.batch_sizes.lock().unwrap().clone();
    assert_eq!(sizes.iter().sum::<usize>(), 2003);
    assert!(
        sizes.iter().any(|&n| n > 1),
        "a burst arrives in batches, not one by one: {sizes:?}"
    );
    // The per-event handler of the same events is unaffected.
    assert_eq!(
        messages
            .seqs("MESSAGE_CREATE")
            .into_iter()
            .map(|(_, s)| s)
            .collect::<Vec<_>>(),
        burst
    );
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
        floods.push((seqs, guild));
    }
    bot.until("the shared handler has every event", |r| {
        r.count("MESSAGE_CREATE") == 2000 && r.count("GUILD_CREATE") == 4
    })
    .await;
    let handlers = made.lock().unwrap().clone();
    wait_until("the per-thread handlers have every event", || {
        handlers
            .iter()
            .map(|h| h.seen.lock().unwrap().len())
            .sum::<usize>()
            == 2004
    })
    .await;
    actix_rt::time::sleep(std::time::Duration::from_millis(50)).await;

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
            let (seqs, guild) = &floods[shard as usize];
            let of = |name: &str| -> Vec<u64> {
                seen.iter()
                    .filter(|(_, s, _, e)| *s == shard && e == name)
                    .map(|(_, _, seq, _)| *seq)
                    .collect()
            };
            assert_eq!(&of("MESSAGE_CREATE"), seqs, "shard {shard}");
            assert_eq!(of("GUILD_CREATE"), [*guild], "shard {shard}");
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
