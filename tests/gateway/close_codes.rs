use std::time::Duration;

use serde_json::json;
use shardline::testkit::ConnectionOutcome;
use shardline::{CloseCode, FatalError, Phase, ShardEvent};

use crate::harness::*;

#[derive(Debug, PartialEq, Eq)]
enum Then {
    Resume,
    Identify,
    Fatal,
}

async fn reaction_to(code: u16) -> Then {
    let bot = Bot::start(fast_fake(1, 1), 1, |c| c).await;
    bot.fake.dispatch(0, "MESSAGE_CREATE", json!({})).unwrap();
    bot.until("message", |r| r.count("MESSAGE_CREATE") == 1)
        .await;
    assert!(bot.fake.close(0, code));
    let lifecycle = bot.lifecycle.clone();
    wait_until("the shard reacts", || {
        bot.fake.connections().len() == 2 && bot.fake.ready_shards() == [0]
            || lifecycle
                .events()
                .iter()
                .any(|e| matches!(e, ShardEvent::Fatal { .. }))
    })
    .await;
    let then = match bot.fake.connections().get(1).map(|c| c.outcome.clone()) {
        Some(ConnectionOutcome::Resumed { seq, .. }) => {
            assert_eq!(seq, 2, "code {code}: resumes from the last seq");
            Then::Resume
        }
        Some(ConnectionOutcome::Identified { .. }) => Then::Identify,
        _ => {
            let status = &bot.gateway.status().await[0];
            assert_eq!(status.phase, Phase::Stopped);
            let expected = FatalError::Closed(CloseCode::from_u16(code).unwrap());
            assert_eq!(status.fatal.as_ref(), Some(&expected));
            assert!(lifecycle.events().contains(&ShardEvent::Fatal {
                shard: 0,
                error: expected
            }));
            actix_rt::time::sleep(Duration::from_millis(200)).await;
            assert_eq!(
                bot.fake.connections().len(),
                1,
                "code {code}: no reconnect after a fatal code"
            );
            Then::Fatal
        }
    };
    bot.stop().await;
    then
}

#[actix_rt::test]
async fn every_close_code_gets_the_reaction_protocol_md_gives_it() {
    let table = [
        (4000, Then::Resume),
        (4001, Then::Resume),
        (4002, Then::Resume),
        (4003, Then::Identify),
        (4004, Then::Fatal),
        (4005, Then::Resume),
        (4007, Then::Identify),
        (4008, Then::Resume),
        (4009, Then::Identify),
        (4010, Then::Fatal),
        (4011, Then::Fatal),
        (4012, Then::Fatal),
        (4013, Then::Fatal),
        (4014, Then::Fatal),
        // Not in the table: treated like a drop.
        (1011, Then::Resume),
    ];
    for (code, expected) in table {
        assert_eq!(reaction_to(code).await, expected, "close code {code}");
    }
}
