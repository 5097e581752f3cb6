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
    let lifecycle = Lifecycle::default();
    let config = shardline::Config::builder("wrong-token")
        .api_base(fake.api_base())
        .gateway_url(fake.gateway_url())
        .max_concurrency(1)
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
    actix_rt::time::sleep(std::time::Duration::from_millis(300)).await;
    assert_eq!(
        fake.connections().len(),
        1,
        "a fatal close code is never retried"
    );
    let token_leaks = format!("{:?}", gateway.status().await);
    assert!(!token_leaks.contains("wrong-token"));
    gateway.shutdown(false).await;
    fake.stop().await;
}
