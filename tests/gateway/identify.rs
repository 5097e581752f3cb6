use std::time::Duration;

use shardline::testkit::{FakeConfig, FakeGateway};
use shardline::{Gateway, RestError, ShardPlan, StartError};

use crate::harness::*;

fn gaps(fake: &FakeGateway) -> Vec<(u32, Duration)> {
    let ids = fake.identifies();
    let t0 = ids[0].1;
    ids.iter().map(|(shard, at)| (*shard, *at - t0)).collect()
}

#[actix_rt::test]
async fn identifies_in_bucket_order_one_per_window_with_max_concurrency_1() {
    let fake_config = FakeConfig {
        identify_window: Duration::from_millis(300),
        ..fast_fake(3, 1)
    };
    let bot = Bot::start(fake_config, 3, |c| c).await;
    let gaps = gaps(&bot.fake);
    assert_eq!(gaps.iter().map(|g| g.0).collect::<Vec<_>>(), [0, 1, 2]);
    for pair in gaps.windows(2) {
        let spacing = pair[1].1 - pair[0].1;
        assert!(
            spacing >= Duration::from_millis(290),
            "identifies {spacing:?} apart: {gaps:?}"
        );
    }
    assert_eq!(bot.fake.bucket_violations(), 0);
    bot.stop().await;
}

#[actix_rt::test]
async fn buckets_identify_together_with_max_concurrency_above_1() {
    let fake_config = FakeConfig {
        identify_window: Duration::from_millis(300),
        ..fast_fake(6, 3)
    };
    let bot = Bot::start(fake_config, 6, |c| c).await;
    let gaps = gaps(&bot.fake);
    let mut order: Vec<u32> = gaps.iter().map(|g| g.0).collect();
    // Shards 0..3 go first (one per bucket), then 3..6.
    order[..3].sort();
    order[3..].sort();
    assert_eq!(order, [0, 1, 2, 3, 4, 5]);
    let at = |shard: u32| gaps.iter().find(|g| g.0 == shard).unwrap().1;
    for shard in 0..3 {
        assert!(at(shard) < Duration::from_millis(250), "{gaps:?}");
        assert!(
            at(shard + 3) - at(shard) >= Duration::from_millis(290),
            "bucket {shard}: {gaps:?}"
        );
    }
    assert_eq!(bot.fake.bucket_violations(), 0);
    bot.stop().await;
}

#[actix_rt::test]
async fn recommended_plan_asks_gateway_bot_for_count_url_and_concurrency() {
    let fake_config = fast_fake(3, 3);
    let fake = FakeGateway::start(fake_config.clone()).await.unwrap();
    let config = shardline::Config::builder(TOKEN)
        .shards(ShardPlan::Recommended)
        .api_base(fake.api_base())
        .identify_window(fake_config.identify_window)
        .compression(shardline::Compression::None)
        .build()
        .unwrap();
    let gateway = Gateway::start(config).await.unwrap();
    assert_eq!(gateway.plan().ids, [0, 1, 2]);
    assert_eq!(gateway.plan().total, 3);
    assert_eq!(gateway.plan().max_concurrency, 3);
    assert_eq!(gateway.plan().gateway_url, fake.gateway_url());
    assert!(
        fake.wait_for(WAIT, "3 ready", |f| f.ready_shards() == [0, 1, 2])
            .await
    );
    gateway.shutdown(false).await;
    fake.stop().await;
}

#[actix_rt::test]
async fn a_range_plan_runs_only_its_shards() {
    let bot = Bot::start(fast_fake(4, 4), 2, |c| {
        c.shards(ShardPlan::Range {
            ids: 2..4,
            total: 4,
        })
    })
    .await;
    assert_eq!(bot.fake.ready_shards(), [2, 3]);
    let shards: Vec<_> = bot
        .gateway
        .status()
        .await
        .iter()
        .map(|s| (s.id, s.total))
        .collect();
    assert_eq!(shards, [(2, 4), (3, 4)]);
    bot.stop().await;
}

#[actix_rt::test]
async fn a_bad_token_is_refused_by_rest_and_by_the_gateway() {
    let fake_config = fast_fake(1, 1);
    let fake = FakeGateway::start(fake_config.clone()).await.unwrap();
    let config = shardline::Config::builder("wrong-token")
        .shards(ShardPlan::Recommended)
        .api_base(fake.api_base())
        .build()
        .unwrap();
    match Gateway::start(config).await {
        Err(StartError::Rest(RestError::Unauthorized)) => {}
        other => panic!("expected 401, got {:?}", other.err()),
    }

    // Told the URL and limits, the client goes straight to the gateway, which closes with 4004.
    // Reconnects are made immediate: a retry, were there one, would not wait.
    let lifecycle = Lifecycle::default();
    let config = shardline::Config::builder("wrong-token")
        .api_base(fake.api_base())
        .gateway_url(fake.gateway_url())
        .max_concurrency(1)
        .backoff(
            shardline::Backoff::default()
                .initial(Duration::from_millis(1))
                .max(Duration::from_millis(1))
                .multiplier(1.0)
                .randomization(0.0),
        )
        .compression(shardline::Compression::None)
        .events(actix::Actor::start(lifecycle.clone()).recipient())
        .build()
        .unwrap();
    let gateway = Gateway::start(config).await.unwrap();
    wait_until("fatal 4004", || lifecycle.events().len() >= 2).await;
    assert_eq!(
        lifecycle.events(),
        [
            shardline::ShardEvent::Disconnected {
                shard: 0,
                code: Some(4004)
            },
            shardline::ShardEvent::Fatal {
                shard: 0,
                error: shardline::FatalError::Closed(shardline::CloseCode::AuthenticationFailed)
            }
        ]
    );
    // The shard has stopped for good (its actor is gone, the supervisor holds the fatal error and
    // restarts no fatal shard): nothing is left that could connect again.
    status_until(&gateway, "the shard stopped for good", |status| {
        status.len() == 1
            && status[0].phase == shardline::Phase::Stopped
            && status[0].fatal
                == Some(shardline::FatalError::Closed(
                    shardline::CloseCode::AuthenticationFailed,
                ))
    })
    .await;
    assert_eq!(
        fake.connections().len(),
        1,
        "a fatal close code is never retried"
    );
    assert_eq!(sent_any(&fake, 2).len(), 1, "one Identify");
    let token_leaks = format!("{:?}", gateway.status().await);
    assert!(!token_leaks.contains("wrong-token"));
    gateway.shutdown(false).await;
    fake.stop().await;
}

#[actix_rt::test]
async fn a_ready_without_a_session_id_is_followed_by_one_new_identify_whose_events_flow() {
    // The fake's first READY leaves out session_id: a session the client cannot resume.
    let fake_config = FakeConfig {
        readies_without_session_id: 1,
        ..fast_fake(1, 1)
    };
    let bot = Bot::start(fake_config, 1, |c| c).await;
    let fake = &bot.fake;
    let first = fake.session(0).unwrap().id;
    assert_eq!(bot.gateway.status().await[0].session_id, None);
    assert_eq!(messages(&bot, 0, 3), [2, 3, 4]);
    bot.until("the first session's messages", |r| {
        r.count("MESSAGE_CREATE") == 3
    })
    .await;

    // A close that keeps sessions: with none kept, the shard identifies, and the new session
    // numbers its events from 1 again.
    assert!(fake.close(0, 4000));
    assert!(
        fake.wait_for(WAIT, "a new session", |f| f
            .session(0)
            .is_some_and(|s| s.id != first))
            .await
    );
    let second = fake.session(0).unwrap().id;
    let status = status_until(&bot.gateway, "ready on the new session", |s| {
        s[0].phase == shardline::Phase::Ready && s[0].session_id.as_deref() == Some(&second)
    })
    .await;
    assert_eq!(status[0].seq, Some(1));
    assert_eq!(messages(&bot, 3, 2), [2, 3]);
    bot.until("the new session's messages", |r| {
        r.count("MESSAGE_CREATE") == 5
    })
    .await;
    let events: Vec<(u64, String)> = bot
        .recorder
        .events()
        .into_iter()
        .map(|e| (e.seq, e.event))
        .collect();
    let expected: Vec<(u64, String)> = [
        (1, "READY"),
        (2, "MESSAGE_CREATE"),
        (3, "MESSAGE_CREATE"),
        (4, "MESSAGE_CREATE"),
        (1, "READY"),
        (2, "MESSAGE_CREATE"),
        (3, "MESSAGE_CREATE"),
    ]
    .into_iter()
    .map(|(seq, e)| (seq, e.to_owned()))
    .collect();
    assert_eq!(events, expected);
    // Two Identifies in all (each session's), no Resume, two connections: no loop.
    assert_eq!(fake.identifies().len(), 2);
    assert_eq!(sent(fake, 0, 6).len(), 0);
    assert_eq!(fake.connections().len(), 2);
    bot.stop().await;
}
