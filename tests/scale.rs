//! Many shards at once. A binary of its own: cargo runs test binaries one after another, so this
//! load does not starve the timing of the other tests.

#[path = "gateway/harness.rs"]
#[allow(dead_code)]
mod harness;

use std::time::{Duration, Instant};

use shardline::testkit::{ConnectionOutcome, FakeConfig};
use shardline::{Backoff, Timeouts};

use harness::*;

fn quick_timeouts(connect: u64, hello: u64, ready: u64) -> Timeouts {
    Timeouts::default()
        .connect(Duration::from_millis(connect))
        .hello(Duration::from_millis(hello))
        .ready(Duration::from_millis(ready))
}

#[actix_rt::test]
async fn when_100_shards_drop_at_once_reconnects_spread_out_and_buckets_hold() {
    // A 2-core machine running 100 debug-build shards and the fake at once stalls threads for tens
    // of milliseconds; the fake's jitter tolerance stands in for that, as for network jitter.
    let fake_config = FakeConfig {
        identify_window: Duration::from_millis(200),
        identify_jitter_tolerance: Duration::from_millis(60),
        ..fast_fake(100, 10)
    };
    let bot = Bot::start(fake_config, 100, |c| {
        c.backoff(
            Backoff::default()
                .initial(Duration::from_millis(400))
                .max(Duration::from_secs(2))
                .multiplier(2.0)
                .randomization(0.5),
        )
        .timeouts(quick_timeouts(5000, 5000, 10_000))
    })
    .await;
    let before = bot.fake.connections().len();
    let dropped_at = Instant::now();
    assert_eq!(bot.fake.drop_all(), 100);
    assert!(
        bot.fake
            .wait_for(Duration::from_secs(20), "all resumed", |f| f
                .connections()
                .len()
                == before + 100
                && f.ready_shards().len() == 100)
            .await
    );
    let mut reconnect_times: Vec<Duration> = bot.fake.connections()[before..]
        .iter()
        .map(|c| c.opened_at - dropped_at)
        .collect();
    reconnect_times.sort();
    let (first, last) = (reconnect_times[0], reconnect_times[99]);
    // Jittered delays of 400 ms × [0.5, 1.5]: spread over ~400 ms, not a burst.
    assert!(
        first >= Duration::from_millis(150),
        "first reconnect after {first:?}"
    );
    assert!(
        last - first >= Duration::from_millis(250),
        "reconnects spread over only {:?}",
        last - first
    );
    let densest = reconnect_times
        .iter()
        .map(|t| {
            reconnect_times
                .iter()
                .filter(|u| **u >= *t && **u - *t < Duration::from_millis(40))
                .count()
        })
        .max()
        .unwrap();
    assert!(densest <= 30, "{densest} reconnects within 40 ms");
    assert!(bot.fake.connections()[before..]
        .iter()
        .all(|c| matches!(c.outcome, ConnectionOutcome::Resumed { .. })));

    // Now every session is gone: 100 fresh identifies, and the buckets still hold.
    for shard in 0..100 {
        bot.fake.close(shard, 4009);
    }
    let settled = bot
        .fake
        .wait_for(Duration::from_secs(30), "all identified again", |f| {
            f.identifies().len() == 200 && f.ready_shards().len() == 100
        })
        .await;
    assert!(
        settled,
        "identifies {}, ready {}, bucket violations {}, connections {}",
        bot.fake.identifies().len(),
        bot.fake.ready_shards().len(),
        bot.fake.bucket_violations(),
        bot.fake.connections().len()
    );
    assert_eq!(bot.fake.bucket_violations(), 0);
    bot.stop().await;
}
