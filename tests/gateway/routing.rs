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
