use actix::Actor;
use serde_json::json;

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
