use std::time::Duration;

use serde_json::json;
use shardline::testkit::ConnectionOutcome;

use crate::harness::*;

fn delivered(bot: &Bot) -> Vec<u64> {
    bot.recorder
        .seqs("MESSAGE_CREATE")
        .into_iter()
        .map(|(_, s)| s)
        .collect()
}

#[actix_rt::test]
async fn op_7_resumes_on_the_resume_url_with_the_last_seq_and_loses_nothing() {
    let bot = Bot::start(fast_fake(1, 1), 1, |c| c).await;
    let mut expected = messages(&bot, 0, 5);
    bot.until("5 messages", |r| r.count("MESSAGE_CREATE") == 5)
        .await;
    assert!(bot.fake.reconnect(0));
    // Sent while the client reconnects: kept by the session and replayed.
    expected.extend(messages(&bot, 5, 5));
    assert!(
        bot.fake
            .wait_for(WAIT, "resumed", |f| f.connections().len() == 2
                && f.ready_shards() == [0])
            .await
    );
    expected.extend(messages(&bot, 10, 5));
    bot.until("15 messages", |r| r.count("MESSAGE_CREATE") >= 15)
        .await;

    let conns = bot.fake.connections();
    assert_eq!(conns[0].client_close_code, Some(4000));
    assert_eq!(conns[1].path, "/resume", "resumes on resume_gateway_url");
    assert!(conns[1].query.contains("v=10") && conns[1].query.contains("encoding=json"));
    let session = bot.fake.session(0).unwrap();
    assert!(
        matches!(&conns[1].outcome, ConnectionOutcome::Resumed { session_id, seq: 6 } if *session_id == session.id)
    );
    assert_eq!(
        delivered(&bot),
        expected,
        "every event exactly once, in order"
    );
    assert_eq!(bot.recorder.count("RESUMED"), 1);
    assert_eq!(
        bot.lifecycle
            .events()
            .iter()
            .filter(|e| matches!(e, shardline::ShardEvent::Resumed { .. }))
            .count(),
        1
    );
    bot.stop().await;
}

#[actix_rt::test]
async fn a_drop_without_close_frame_resumes_and_replays_exactly_once() {
    let bot = Bot::start(fast_fake(1, 1), 1, |c| c).await;
    let mut expected = messages(&bot, 0, 50);
    bot.until("50", |r| r.count("MESSAGE_CREATE") == 50).await;
    assert!(bot.fake.drop_connection(0));
    expected.extend(messages(&bot, 50, 50));
    bot.until("100", |r| r.count("MESSAGE_CREATE") >= 100).await;
    assert_eq!(delivered(&bot), expected);
    let conns = bot.fake.connections();
    assert_eq!(conns.len(), 2);
    assert_eq!(conns[0].client_close_code, None);
    assert!(matches!(
        conns[1].outcome,
        ConnectionOutcome::Resumed { .. }
    ));
    assert_eq!(bot.gateway.status().await[0].reconnects, 1);
    bot.stop().await;
}

#[actix_rt::test]
async fn op_9_true_resumes_and_op_9_false_identifies_a_new_session() {
    let bot = Bot::start(fast_fake(1, 1), 1, |c| c).await;
    let first = bot.fake.session(0).unwrap();
    messages(&bot, 0, 2);
    assert!(bot.fake.invalid_session(0, true));
    assert!(
        bot.fake
            .wait_for(WAIT, "resumed", |f| f.connections().len() == 2
                && f.ready_shards() == [0])
            .await
    );
    assert!(matches!(
        bot.fake.connections()[1].outcome,
        ConnectionOutcome::Resumed { seq: 3, .. }
    ));
    assert_eq!(bot.fake.session(0).unwrap().id, first.id);

    assert!(bot.fake.invalid_session(0, false));
    assert!(
        bot.fake
            .wait_for(WAIT, "new session", |f| f.connections().len() == 3
                && f.ready_shards() == [0])
            .await
    );
    let conns = bot.fake.connections();
    assert_eq!(
        conns[2].path, "/",
        "a new session starts on the gateway URL"
    );
    assert!(
        matches!(&conns[2].outcome, ConnectionOutcome::Identified { session_id } if *session_id != first.id)
    );
    assert_eq!(sent(&bot.fake, 0, 2).len(), 2);
    // The new session starts over at s = 1.
    let seq = bot.fake.dispatch(0, "MESSAGE_CREATE", json!({})).unwrap();
    assert_eq!(seq, 2);
    bot.until("message in new session", |r| r.count("MESSAGE_CREATE") == 3)
        .await;
    assert_eq!(delivered(&bot), [2, 3, 2]);
    let ready: Vec<_> = bot.recorder.seqs("READY");
    assert_eq!(ready.len(), 2);
    bot.stop().await;
}

#[actix_rt::test]
async fn a_hostile_resume_url_is_not_followed() {
    let fake_config = shardline::testkit::FakeConfig {
        resume_url: Some("ws://evil.example:9/steal".into()),
        ..fast_fake(1, 1)
    };
    let bot = Bot::start(fake_config, 1, |c| c).await;
    assert!(bot.fake.reconnect(0));
    assert!(
        bot.fake
            .wait_for(WAIT, "resumed", |f| f.connections().len() == 2
                && f.ready_shards() == [0])
            .await
    );
    let conns = bot.fake.connections();
    assert_eq!(
        conns[1].path, "/",
        "resumed on the gateway URL, not the hostile one"
    );
    assert!(matches!(
        conns[1].outcome,
        ConnectionOutcome::Resumed { .. }
    ));
    bot.stop().await;
}

/// After a healthy session, op 7 reconnects at once: the backoff (a first delay of 5–15 s here) is
/// for attempts failing in a row, not for the gateway asking. Each resume must come well within
/// the shortest such delay, or the delay was applied.
#[actix_rt::test]
async fn op_7_after_a_healthy_session_reconnects_without_the_backoff_delay() {
    let bot = Bot::start(fast_fake(1, 1), 1, |c| {
        c.backoff(
            shardline::Backoff::default()
                .initial(Duration::from_secs(10))
                .max(Duration::from_secs(60))
                .multiplier(2.0)
                .randomization(0.5),
        )
    })
    .await;
    let mut sent_seqs = messages(&bot, 0, 2);
    for round in 1..=2 {
        assert!(bot.fake.reconnect(0));
        let deadline = std::time::Instant::now() + Duration::from_secs(3);
        loop {
            let resumed = sent(&bot.fake, 0, 6).len() == round
                && bot.fake.connections().len() == round + 1
                && bot.fake.ready_shards() == [0];
            let status = bot.gateway.status().await;
            if resumed && status[0].phase == shardline::Phase::Ready {
                break;
            }
            assert!(
                std::time::Instant::now() < deadline,
                "round {round}: no resume within 3 s of op 7: {status:?}"
            );
            actix_rt::time::sleep(Duration::from_millis(5)).await;
        }
        sent_seqs.extend(messages(&bot, 2 * round, 2));
    }
    let last = *sent_seqs.last().unwrap();
    bot.until("every message", |r| {
        r.seqs("MESSAGE_CREATE").last() == Some(&(0, last))
    })
    .await;
    assert_eq!(delivered(&bot), sent_seqs);
    assert_eq!(
        sent(&bot.fake, 0, 2).len(),
        1,
        "resumed, never identified again"
    );
    bot.stop().await;
}
