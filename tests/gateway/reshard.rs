//! Live resharding in one process (docs/resharding.md): a new shard set beside the running one,
//! one cut, the old sessions closed with 1000; every message delivered once across it.

use std::cell::RefCell;
use std::collections::{BTreeMap, HashSet};
use std::rc::Rc;
use std::time::Duration;

use serde_json::{json, Value};
use shardline::testkit::{FakeConfig, SessionStartLimit};
use shardline::{shard_for_guild, ReshardError, ReshardOptions, ShardEvent};

use crate::harness::*;

/// A message about guild `guild` (its channel is `5000 + index`) carrying nonce `n`.
fn message(n: u64, index: usize, guild: u64) -> Value {
    json!({
        "id": (1_300_000_000_000_000_000u64 + n).to_string(),
        "channel_id": (5000 + index).to_string(),
        "guild_id": guild.to_string(),
        "content": format!("m{n}"),
        "nonce": n.to_string(),
    })
}

/// (channel, nonce) of every MESSAGE_CREATE the handlers saw, in the order they saw them.
fn delivered(recorder: &Recorder) -> Vec<(String, u64)> {
    recorder
        .events()
        .into_iter()
        .filter(|s| s.event == "MESSAGE_CREATE")
        .map(|s| {
            let d: Value = serde_json::from_str(&s.data).unwrap();
            let nonce = d["nonce"].as_str().unwrap().parse().unwrap();
            (d["channel_id"].as_str().unwrap().to_owned(), nonce)
        })
        .collect()
}

/// Asserts each of `sent` was delivered exactly once, and in order within each channel.
fn assert_exactly_once_in_order(recorder: &Recorder, sent: &[u64]) {
    let seen = delivered(recorder);
    let mut once = HashSet::new();
    let duplicates: Vec<u64> = seen
        .iter()
        .filter(|(_, n)| !once.insert(*n))
        .map(|(_, n)| *n)
        .collect();
    assert!(duplicates.is_empty(), "delivered twice: {duplicates:?}");
    let expected: HashSet<u64> = sent.iter().copied().collect();
    let missing: Vec<u64> = expected.difference(&once).copied().collect();
    assert!(missing.is_empty(), "never delivered: {missing:?}");
    assert_eq!(once, expected, "delivered only what was sent");
    let mut last: BTreeMap<&str, u64> = BTreeMap::new();
    for (channel, n) in &seen {
        if let Some(prev) = last.insert(channel, *n) {
            assert!(prev < *n, "channel {channel}: {n} after {prev}");
        }
    }
}

fn guild_fake(shards: u32, guilds: u32) -> FakeConfig {
    FakeConfig {
        guilds,
        ..fast_fake(shards, 2)
    }
}

#[actix_rt::test]
async fn four_to_six_shards_under_a_flood_every_message_once_in_order_old_sessions_closed_after_the_cut(
) {
    let fake_config = guild_fake(4, 48);
    let bot = Bot::start(fake_config, 4, |b| {
        b.reshard(
            ReshardOptions::default()
                .guild_timeout(Duration::from_secs(10))
                .dedup_window(Duration::from_millis(500)),
        )
    })
    .await;
    let guilds = bot.fake.guild_ids();
    bot.until("the old set's 48 guilds", |r| r.count("GUILD_CREATE") == 48)
        .await;
    let ready_before = bot.recorder.count("READY");

    // A steady flood across every guild, 4 messages per millisecond or so, until told to stop.
    let sent: Rc<RefCell<Vec<u64>>> = Rc::default();
    let stop: Rc<RefCell<bool>> = Rc::default();
    let flood = {
        let (fake, sent, stop, guilds) =
            (bot.fake.clone(), sent.clone(), stop.clone(), guilds.clone());
        actix_rt::spawn(async move {
            let mut n = 0u64;
            while !*stop.borrow() {
                for _ in 0..4 {
                    let index = n as usize % guilds.len();
                    let to = fake.dispatch_guild(
                        guilds[index],
                        "MESSAGE_CREATE",
                        message(n, index, guilds[index]),
                    );
                    assert!(
                        !to.is_empty(),
                        "message {n}: no live session owned guild {index}"
                    );
                    sent.borrow_mut().push(n);
                    n += 1;
                }
                actix_rt::time::sleep(Duration::from_millis(1)).await;
            }
        })
    };
    actix_rt::time::sleep(Duration::from_millis(50)).await;
    let gateway = bot.gateway.clone();
    let reshard = actix_rt::spawn(async move { gateway.reshard(6).await });

    // While both sets run, status shows both, and no old connection has closed.
    let overlap = status_until(&bot.gateway, "both sets in the status", |status| {
        status.iter().filter(|s| s.total == 4).count() == 4
            && status.iter().filter(|s| s.total == 6).count() == 6
    })
    .await;
    assert_eq!(overlap.len(), 10);
    let old_conns = |fake: &shardline::testkit::FakeGateway| {
        fake.connections()
            .into_iter()
            .filter(|c| c.total == Some(4))
            .collect::<Vec<_>>()
    };
    assert!(old_conns(&bot.fake).iter().all(|c| c.closed_at.is_none()));

    let report = reshard.await.unwrap().expect("the reshard completes");
    assert_eq!((report.old_total, report.new_total), (4, 6));
    assert!(report.timed_out_guilds.is_empty());
    // More of the flood after the switch, then it ends.
    actix_rt::time::sleep(Duration::from_millis(200)).await;
    *stop.borrow_mut() = true;
    flood.await.unwrap();
    let sent = sent.borrow().clone();
    assert!(sent.len() > 400, "a flood: {} messages", sent.len());
    bot.until("every message delivered", |r| {
        r.count("MESSAGE_CREATE") >= sent.len()
    })
    .await;
    // Anything delivered twice would come right behind: give it the time to.
    actix_rt::time::sleep(Duration::from_millis(100)).await;
    assert_exactly_once_in_order(&bot.recorder, &sent);

    // The new set's READYs and initial GUILD_CREATEs were not delivered; the lifecycle event was.
    assert_eq!(bot.recorder.count("READY"), ready_before);
    assert_eq!(bot.recorder.count("GUILD_CREATE"), 48);
    assert!(bot.lifecycle.events().contains(&ShardEvent::Resharded {
        old_total: 4,
        new_total: 6,
        timed_out_guilds: vec![],
    }));

    // The fake's record: every old session closed by the client with 1000, after every new shard
    // had identified (the cut needs them all READY); the new set identified on the same buckets.
    let new_identified = bot.fake.identifies().iter().map(|i| i.1).max().unwrap();
    let old = old_conns(&bot.fake);
    assert_eq!(old.len(), 4);
    for c in &old {
        assert_eq!(c.client_close_code, Some(1000), "old connection {c:?}");
        assert!(c.closed_at.unwrap() > new_identified);
    }
    assert_eq!(bot.fake.identifies().len(), 10);
    assert_eq!(bot.fake.bucket_violations(), 0);
    let status = bot.gateway.status().await;
    assert_eq!(status.len(), 6);
    assert!(status
        .iter()
        .all(|s| s.total == 6 && s.phase == shardline::Phase::Ready));
    // Each message went to the shard the formula names under the total that delivered it.
    assert_eq!(
        shard_for_guild(guilds[7], 6),
        ((guilds[7] >> 22) % 6) as u32
    );
    bot.stop().await;
}

#[actix_rt::test]
async fn a_reshard_the_session_start_budget_cannot_cover_is_refused_before_any_identify() {
    let fake_config = FakeConfig {
        session_start_limit: SessionStartLimit {
            total: 1000,
            remaining: 9,
            reset_after: 86_400_000,
        },
        ..guild_fake(4, 12)
    };
    let bot = Bot::start(fake_config, 4, |b| b).await;
    let before = bot.fake.connections().len();
    // 5 session starts are left: 6 identifies would not fit.
    match bot.gateway.reshard(6).await {
        Err(ReshardError::Budget {
            needed: 6,
            remaining: 5,
        }) => {}
        other => panic!("expected a budget refusal, got {other:?}"),
    }
    assert!(matches!(
        bot.gateway.reshard(0).await,
        Err(ReshardError::ZeroShards)
    ));
    assert!(matches!(
        bot.gateway.reshard(4).await,
        Err(ReshardError::SameTotal(4))
    ));
    actix_rt::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(
        bot.fake.identifies().len(),
        4,
        "no Identify for the refused set"
    );
    assert_eq!(bot.fake.connections().len(), before, "no connection opened");
    assert_eq!(bot.gateway.status().await.len(), 4);
    // 5 fit.
    let report = bot
        .gateway
        .reshard(5)
        .await
        .expect("5 identifies fit the budget");
    assert_eq!(report.new_total, 5);
    bot.stop().await;
}

#[actix_rt::test]
async fn a_4011_with_automatic_resharding_on_reshards_to_the_recommended_count_and_keeps_delivering(
) {
    let fake_config = FakeConfig {
        max_guilds_per_shard: Some(2),
        ..guild_fake(4, 8)
    };
    let bot = Bot::start(fake_config, 4, |b| {
        b.reshard(
            ReshardOptions::default()
                .on_sharding_required(true)
                .catch_up_timeout(Duration::from_millis(200)),
        )
    })
    .await;
    bot.fake.set_recommended_shards(6);
    // The bot joins a ninth guild: its shard now holds 3, past the cap of 2.
    let added = bot.fake.add_guilds(1);
    wait_until("the automatic reshard's cut", || {
        bot.lifecycle.events().iter().any(|e| {
            matches!(
                e,
                ShardEvent::Resharded {
                    old_total: 4,
                    new_total: 6,
                    ..
                }
            )
        })
    })
    .await;
    let closed: Vec<_> = bot
        .fake
        .connections()
        .into_iter()
        .filter(|c| c.server_close_code == Some(4011))
        .collect();
    assert_eq!(closed.len(), 1, "one shard was past the cap");
    assert_eq!(closed[0].shard, Some(shard_for_guild(added[0], 4)));
    status_until(&bot.gateway, "six shards ready", |status| {
        status.len() == 6
            && status
                .iter()
                .all(|s| s.total == 6 && s.phase == shardline::Phase::Ready)
    })
    .await;
    // Every guild, the new one too, is served again: one message each, each delivered once.
    let guilds = bot.fake.guild_ids();
    assert_eq!(guilds.len(), 9);
    let sent: Vec<u64> = (0..guilds.len() as u64).collect();
    for (index, &guild) in guilds.iter().enumerate() {
        let to =
            bot.fake
                .dispatch_guild(guild, "MESSAGE_CREATE", message(index as u64, index, guild));
        assert_eq!(to.len(), 1, "guild {index} is owned by one live shard");
        assert_eq!(to[0].1, 6);
        assert_eq!(to[0].0, shard_for_guild(guild, 6));
    }
    bot.until("every message delivered", |r| {
        r.count("MESSAGE_CREATE") >= sent.len()
    })
    .await;
    actix_rt::time::sleep(Duration::from_millis(100)).await;
    assert_exactly_once_in_order(&bot.recorder, &sent);
    bot.stop().await;
}

#[actix_rt::test]
async fn a_new_shard_closed_for_good_rolls_the_reshard_back_and_the_old_set_keeps_delivering() {
    let fake_config = FakeConfig {
        max_guilds_per_shard: Some(2),
        ..guild_fake(4, 8)
    };
    let bot = Bot::start(fake_config, 4, |b| b).await;
    // Three shards would hold 3 guilds each: the fake closes the new shards with 4011.
    match bot.gateway.reshard(3).await {
        Err(ReshardError::NewShardFailed { .. }) => {}
        other => panic!("expected a roll-back, got {other:?}"),
    }
    status_until(&bot.gateway, "the old set alone", |status| {
        status.len() == 4 && status.iter().all(|s| s.total == 4)
    })
    .await;
    let guilds = bot.fake.guild_ids();
    let sent: Vec<u64> = (0..guilds.len() as u64).collect();
    for (index, &guild) in guilds.iter().enumerate() {
        let to =
            bot.fake
                .dispatch_guild(guild, "MESSAGE_CREATE", message(index as u64, index, guild));
        assert_eq!(to.iter().map(|t| t.1).collect::<Vec<_>>(), [4]);
    }
    bot.until("every message delivered", |r| {
        r.count("MESSAGE_CREATE") >= sent.len()
    })
    .await;
    actix_rt::time::sleep(Duration::from_millis(100)).await;
    assert_exactly_once_in_order(&bot.recorder, &sent);
    assert!(bot
        .fake
        .connections()
        .iter()
        .filter(|c| c.total == Some(4))
        .all(|c| c.closed_at.is_none()));
    bot.stop().await;
}

#[actix_rt::test]
async fn a_periodic_check_reshards_once_the_recommendation_is_the_margin_above_the_running_total() {
    let bot = Bot::start(guild_fake(2, 12), 2, |b| {
        b.reshard(
            ReshardOptions::default()
                .check_recommendation(Duration::from_millis(50), 2)
                .catch_up_timeout(Duration::from_millis(200)),
        )
    })
    .await;
    // One above: below the margin, nothing happens over several checks.
    bot.fake.set_recommended_shards(3);
    actix_rt::time::sleep(Duration::from_millis(400)).await;
    assert_eq!(bot.fake.identifies().len(), 2);
    bot.fake.set_recommended_shards(4);
    wait_until("the reshard to 4", || {
        bot.lifecycle.events().contains(&ShardEvent::Resharded {
            old_total: 2,
            new_total: 4,
            timed_out_guilds: vec![],
        })
    })
    .await;
    status_until(&bot.gateway, "four shards", |status| {
        status.len() == 4 && status.iter().all(|s| s.total == 4)
    })
    .await;
    assert_eq!(bot.fake.identifies().len(), 6);
    bot.stop().await;
}

#[actix_rt::test]
async fn a_shutdown_during_a_reshard_closes_both_sets_and_answers_the_reshard() {
    // A long identify window: the new set is still identifying when the shutdown comes.
    let fake_config = FakeConfig {
        identify_window: Duration::from_millis(400),
        ..guild_fake(2, 8)
    };
    let bot = Bot::start(fake_config, 2, |b| b).await;
    let gateway = bot.gateway.clone();
    let reshard = actix_rt::spawn(async move { gateway.reshard(6).await });
    wait_until("a new shard connected", || {
        bot.fake.connections().iter().any(|c| c.total == Some(6))
    })
    .await;
    bot.gateway.shutdown(false).await;
    assert!(matches!(
        reshard.await.unwrap(),
        Err(ReshardError::ShuttingDown)
    ));
    wait_until("every connection closed", || {
        bot.fake.connections().iter().all(|c| c.closed_at.is_some())
    })
    .await;
    assert!(bot.gateway.status().await.is_empty());
    bot.fake.stop().await;
}

#[actix_rt::test]
async fn a_process_running_a_range_of_the_bots_shards_refuses_to_reshard_alone() {
    let bot = Bot::start(guild_fake(4, 8), 2, |b| {
        b.shards(shardline::ShardPlan::Range {
            ids: 0..2,
            total: 4,
        })
    })
    .await;
    assert!(matches!(
        bot.gateway.reshard(6).await,
        Err(ReshardError::PartOfTheBot)
    ));
    assert_eq!(bot.fake.identifies().len(), 2);
    bot.stop().await;
}
