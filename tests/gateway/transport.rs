use serde_json::{json, Value};
use shardline::testkit::FakeConfig;
use shardline::Compression;

use crate::harness::*;

/// A `GUILD_CREATE` body of about `bytes` bytes.
fn big_guild(bytes: usize) -> String {
    let member = r#"{"user":{"id":"80351110224678912","username":"member","discriminator":"0","avatar":null},"roles":["41771983423143936"],"joined_at":"2015-04-26T06:26:56.936000+00:00","deaf":false,"mute":false}"#;
    let count = bytes / (member.len() + 1) + 1;
    format!(
        r#"{{"id":"41771983423143937","name":"big","members":[{}]}}"#,
        vec![member; count].join(",")
    )
}

#[actix_rt::test]
async fn a_5_mib_guild_create_arrives_whole() {
    for compression in [Compression::None, Compression::ZlibStream] {
        // Reading 5 MiB takes a debug build a few hundred milliseconds: a 1 s interval keeps the
        // 100 ms heartbeat of the other tests from timing out while it does.
        let fake_config = FakeConfig {
            heartbeat_interval: std::time::Duration::from_secs(1),
            ..fast_fake(1, 1)
        };
        let bot = Bot::start(fake_config, 1, |c| c.compression(compression)).await;
        let body = big_guild(5 << 20);
        assert!(body.len() >= 5 << 20);
        let seq = bot.fake.dispatch_raw(0, "GUILD_CREATE", &body).unwrap();
        bot.until("guild", |r| r.count("GUILD_CREATE") == 1).await;
        let got = bot
            .recorder
            .events()
            .into_iter()
            .find(|e| e.event == "GUILD_CREATE")
            .unwrap();
        assert_eq!(got.seq, seq);
        assert_eq!(got.data.len(), body.len(), "{compression:?}");
        assert_eq!(got.data, body);
        assert_eq!(bot.fake.connections().len(), 1, "no reconnect");
        bot.stop().await;
    }
}

#[actix_rt::test]
async fn a_message_in_continuation_frames_is_assembled() {
    let fake_config = FakeConfig {
        fragment_size: Some(1000),
        ..fast_fake(1, 1)
    };
    let bot = Bot::start(fake_config, 1, |c| c).await;
    let body = big_guild(20_000);
    bot.fake.dispatch_raw(0, "GUILD_CREATE", &body).unwrap();
    bot.fake
        .dispatch(0, "MESSAGE_CREATE", json!({"after": true}))
        .unwrap();
    bot.until("both", |r| r.count("MESSAGE_CREATE") == 1).await;
    let events = bot.recorder.events();
    assert_eq!(
        events.iter().map(|e| e.event.as_str()).collect::<Vec<_>>(),
        ["READY", "GUILD_CREATE", "MESSAGE_CREATE"]
    );
    assert_eq!(events[1].data, body);
    bot.stop().await;
}

#[actix_rt::test]
async fn zlib_stream_carries_the_whole_lifecycle() {
    let bot = Bot::start(fast_fake(2, 2), 2, |c| {
        c.compression(Compression::ZlibStream)
    })
    .await;
    for conn in bot.fake.connections() {
        assert_eq!(conn.compress.as_deref(), Some("zlib-stream"));
        assert!(conn.query.contains("compress=zlib-stream"));
    }
    for i in 0..100 {
        bot.fake
            .dispatch(i % 2, "MESSAGE_CREATE", json!({ "i": i }))
            .unwrap();
    }
    bot.until("100", |r| r.count("MESSAGE_CREATE") == 100).await;
    // A resume opens a new inflate context.
    assert!(bot.fake.reconnect(0));
    assert!(
        bot.fake
            .wait_for(WAIT, "resumed", |f| f.connections().len() == 3
                && f.ready_shards() == [0, 1])
            .await
    );
    bot.fake
        .dispatch(0, "MESSAGE_CREATE", json!({ "i": 100 }))
        .unwrap();
    bot.until("101", |r| r.count("MESSAGE_CREATE") == 101).await;
    let per_shard: Vec<usize> = (0..2)
        .map(|s| {
            bot.recorder
                .seqs("MESSAGE_CREATE")
                .iter()
                .filter(|(x, _)| *x == s)
                .count()
        })
        .collect();
    assert_eq!(per_shard, [51, 50]);
    bot.stop().await;
}

#[actix_rt::test]
async fn malformed_frames_unknown_opcodes_and_unknown_events_are_survived() {
    let bot = Bot::start(fast_fake(1, 1), 1, |c| c).await;
    let fake = &bot.fake;
    assert!(fake.send_raw_text(0, "{not json"));
    assert!(fake.send_raw_text(0, r#"{"op":99,"d":{}}"#));
    assert!(fake.send_raw_text(0, r#"[1,2,3]"#));
    assert!(fake.send_raw_text(0, r#"{"op":0,"d":{},"s":null,"t":"NO_SEQ"}"#));
    assert!(fake.send_raw_binary(0, &[0xff, 0xfe, 0x00, 0x01]));
    fake.dispatch(0, "BRAND_NEW_EVENT", json!({"x": 1}))
        .unwrap();
    fake.dispatch(0, "MESSAGE_CREATE", json!({"after": "garbage"}))
        .unwrap();
    bot.until("message after garbage", |r| r.count("MESSAGE_CREATE") == 1)
        .await;
    let events: Vec<_> = bot
        .recorder
        .events()
        .into_iter()
        .map(|e| (e.seq, e.event))
        .collect();
    assert_eq!(
        events,
        [
            (1, "READY".to_owned()),
            (2, "BRAND_NEW_EVENT".to_owned()),
            (3, "MESSAGE_CREATE".to_owned())
        ]
    );
    assert_eq!(
        fake.connections().len(),
        1,
        "garbage is skipped, not a reason to reconnect"
    );
    let got: Value = serde_json::from_str(&bot.recorder.events()[1].data).unwrap();
    assert_eq!(got, json!({"x": 1}));
    bot.stop().await;
}

/// Sends `fault` between two batches of messages; the shard must reconnect, resume and deliver every
/// message exactly once, in order.
async fn survives(
    fault: impl FnOnce(&Bot),
    tweak: impl FnOnce(shardline::ConfigBuilder) -> shardline::ConfigBuilder,
) {
    let bot = Bot::start(fast_fake(1, 1), 1, tweak).await;
    let mut expected = messages(&bot, 0, 10);
    bot.until("first batch", |r| r.count("MESSAGE_CREATE") == 10)
        .await;
    fault(&bot);
    assert!(
        bot.fake
            .wait_for(WAIT, "resumed", |f| f.connections().len() == 2
                && f.ready_shards() == [0])
            .await
    );
    expected.extend(messages(&bot, 10, 10));
    bot.until("second batch", |r| r.count("MESSAGE_CREATE") >= 20)
        .await;
    let got: Vec<u64> = bot.recorder.seq_numbers("MESSAGE_CREATE");
    assert_eq!(got, expected);
    let conns = bot.fake.connections();
    assert_eq!(
        conns[0].client_close_code,
        Some(4000),
        "left with a resumable close"
    );
    assert!(matches!(
        conns[1].outcome,
        shardline::testkit::ConnectionOutcome::Resumed { .. }
    ));
    bot.stop().await;
}

#[actix_rt::test]
async fn a_corrupt_zlib_stream_resets_the_connection_and_resumes() {
    survives(
        |bot| {
            assert!(bot
                .fake
                .send_raw_binary(0, b"\x78\x01not deflate at all\x00\x00\xff\xff"))
        },
        |c| c.compression(Compression::ZlibStream),
    )
    .await;
}

#[actix_rt::test]
async fn a_decompression_bomb_hits_the_cap_and_resumes() {
    // 8 MiB of zeros compress to a few KiB; the cap is 256 KiB.
    let limits = shardline::Limits::default().max_decompressed_size(256 << 10);
    survives(
        |bot| assert!(bot.fake.send_raw_compressed(0, &vec![b' '; 8 << 20])),
        |c| c.compression(Compression::ZlibStream).limits(limits),
    )
    .await;
}

#[actix_rt::test]
async fn a_frame_over_the_receive_limit_resets_the_connection_and_resumes() {
    let limits = shardline::Limits::default().max_message_size(64 << 10);
    survives(
        |bot| {
            assert!(bot.fake.send_raw_text(
                0,
                &format!(
                    r#"{{"op":0,"s":999,"t":"X","d":"{}"}}"#,
                    "y".repeat(100 << 10)
                )
            ))
        },
        |c| c.limits(limits),
    )
    .await;
}

#[actix_rt::test]
async fn repeated_and_stale_sequence_numbers_are_not_delivered_twice() {
    let bot = Bot::start(fast_fake(1, 1), 1, |c| c).await;
    messages(&bot, 0, 3);
    bot.until("three", |r| r.count("MESSAGE_CREATE") == 3).await;
    assert!(bot.fake.send_raw_text(
        0,
        r#"{"t":"MESSAGE_CREATE","s":3,"op":0,"d":{"i":"again"}}"#
    ));
    assert!(bot.fake.send_raw_text(
        0,
        r#"{"t":"MESSAGE_CREATE","s":1,"op":0,"d":{"i":"stale"}}"#
    ));
    messages(&bot, 3, 1);
    bot.until("the fourth", |r| r.count("MESSAGE_CREATE") == 4)
        .await;
    assert_eq!(
        bot.recorder.seqs("MESSAGE_CREATE"),
        [(0, 2), (0, 3), (0, 4), (0, 5)]
    );
    assert!(!bot
        .recorder
        .events()
        .iter()
        .any(|e| e.data.contains("again") || e.data.contains("stale")));
    bot.stop().await;
}

#[cfg(feature = "zstd")]
#[actix_rt::test]
async fn zstd_stream_carries_the_whole_lifecycle_and_a_resume() {
    let bot = Bot::start(fast_fake(1, 1), 1, |c| {
        c.compression(Compression::ZstdStream)
    })
    .await;
    assert_eq!(
        bot.fake.connections()[0].compress.as_deref(),
        Some("zstd-stream")
    );
    let body = big_guild(300_000);
    bot.fake.dispatch_raw(0, "GUILD_CREATE", &body).unwrap();
    for i in 0..50 {
        bot.fake
            .dispatch(0, "MESSAGE_CREATE", json!({ "i": i }))
            .unwrap();
    }
    bot.until("50", |r| r.count("MESSAGE_CREATE") == 50).await;
    assert!(bot.fake.reconnect(0));
    bot.fake
        .dispatch(0, "MESSAGE_CREATE", json!({ "i": 50 }))
        .unwrap();
    bot.until("51 after the resume", |r| r.count("MESSAGE_CREATE") == 51)
        .await;
    let guild = bot
        .recorder
        .events()
        .into_iter()
        .find(|e| e.event == "GUILD_CREATE")
        .unwrap();
    assert_eq!(guild.data, body);
    assert_eq!(
        bot.recorder
            .seqs("MESSAGE_CREATE")
            .into_iter()
            .map(|(_, s)| s)
            .collect::<Vec<_>>(),
        (3..=53).collect::<Vec<_>>()
    );
    bot.stop().await;
}
