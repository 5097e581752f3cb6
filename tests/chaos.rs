//! Exactly-once delivery under chaos: a seeded soak. The fake gateway floods events to several shards
//! while, at random points, it sends op 7 and op 9, closes with resumable and session-ending codes,
//! drops connections and stops ACKing heartbeats. Afterwards, for every shard, the events delivered
//! are checked session by session: each session's events arrive once, in order, without gaps; only
//! a session the gateway ended may stop short (Discord drops what it had not sent); the live session
//! is complete.
//!
//! Faults are keyed to events, not to time: before fault k the test waits until the handler has
//! seen a seed-chosen fraction of the target shard's live session (its events up to
//! `ceil(fraction × session seq)`), instead of sleeping a random while.
//!
//! The seed is printed; replay a failure with `SHARDLINE_SEED=<seed> cargo test --all-features --test chaos`.
//! What the seed reproduces exactly: the sequence of steps (which shard, which fault or flood, flood
//! sizes, close codes, how long ACKs stay off in steps) and, per fault, the fraction of the live
//! session it waits for. What it does not: how far a session has got when a fault's point is
//! computed (a reconnect from an earlier fault may still be under way), what is on the wire when
//! the fault fires (so which unsent events a session-ending fault discards), and heartbeat timing.
//! A fault on a shard whose session has just ended first waits for the new one; a wait that cannot
//! be met in 2 s is given up and marked in the printed fault list.

#[path = "gateway/harness.rs"]
#[allow(dead_code)]
mod harness;

use std::time::{Duration, Instant};

use actix::Actor;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use shardline::testkit::{ConnectionOutcome, FakeConfig};

use harness::*;

const SHARDS: u32 = 4;
const STEPS: usize = 120;

#[actix_rt::test]
async fn every_event_of_every_session_is_delivered_exactly_once_under_chaos() {
    let seed: u64 = std::env::var("SHARDLINE_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(rand::random);
    println!("chaos seed: {seed} (replay with SHARDLINE_SEED={seed})");
    let mut rng = StdRng::seed_from_u64(seed);

    let fake_config = FakeConfig {
        identify_window: Duration::from_millis(50),
        ..fast_fake(SHARDS, SHARDS)
    };
    // Every event goes to a per-event handler (the harness's recorder) and to a batch handler.
    let batched = Recorder::default();
    let batch_handler = batched.clone().start();
    let bot = Bot::start(fake_config, SHARDS, move |c| {
        c.batch_handler_all(batch_handler.recipient())
    })
    .await;
    let fake = &bot.fake;
    let mut acks_off: Vec<(u32, usize)> = Vec::new();
    let mut faults = Vec::new();
    for step in 0..STEPS {
        let shard = rng.gen_range(0..SHARDS);
        let roll = rng.gen_range(0..100);
        // Faults wait for the handler to have seen this fraction of the shard's live session.
        let (waited_for, met) = if roll >= 60 {
            let fraction: f64 = rng.gen();
            wait_for_fraction(fake, &bot.recorder, shard, fraction).await
        } else {
            (0, true)
        };
        let fault = match roll {
            0..=59 => {
                let n = rng.gen_range(1..40);
                fake.flood(shard, "MESSAGE_CREATE", r#"{"content":"chaos"}"#, n);
                None
            }
            60..=67 => Some(("op 7", fake.reconnect(shard))),
            68..=73 => Some(("op 9 true", fake.invalid_session(shard, true))),
            74..=77 => Some(("op 9 false", fake.invalid_session(shard, false))),
            78..=84 => {
                let code = [4000, 4001, 4002, 4005, 4008][rng.gen_range(0..5)];
                Some(("resumable close", fake.close(shard, code)))
            }
            85..=87 => Some((
                "session-ending close",
                fake.close(shard, [4007, 4009][rng.gen_range(0..2)]),
            )),
            88..=94 => Some(("drop", fake.drop_connection(shard))),
            _ => {
                fake.set_ack_heartbeats(shard, false);
                acks_off.push((shard, step + rng.gen_range(3..10)));
                Some(("no ACKs", true))
            }
        };
        if let Some(fault) = fault {
            faults.push((step, shard, fault.0, fault.1, waited_for, met));
        }
        acks_off.retain(|&(s, until)| {
            if step >= until {
                fake.set_ack_heartbeats(s, true);
                false
            } else {
                true
            }
        });
    }
    for (shard, _) in acks_off {
        fake.set_ack_heartbeats(shard, true);
    }
    println!("faults (step, shard, fault, sent, after seq, wait met): {faults:?}");

    // Settle: every shard ready, and every event of each live session delivered.
    let recorder = bot.recorder.clone();
    let batch_recorder = batched.clone();
    let settled = fake
        .wait_for(
            Duration::from_secs(30),
            "all live sessions delivered",
            |f| {
                f.ready_shards().len() == SHARDS as usize
                    && (0..SHARDS).all(|s| {
                        let last = f.session(s).map(|x| x.seq).unwrap_or(0);
                        [&recorder, &batch_recorder].iter().all(|r| {
                            r.events()
                                .iter()
                                .rev()
                                .find(|e| e.shard == s)
                                .map(|e| e.seq)
                                == Some(last)
                        })
                    })
            },
        )
        .await;
    assert!(settled, "seed {seed}: shards did not settle");

    for (handler, events) in [
        ("per-event", bot.recorder.events()),
        ("batch", batched.events()),
    ] {
        for shard in 0..SHARDS {
            let seqs: Vec<u64> = events
                .iter()
                .filter(|e| e.shard == shard)
                .map(|e| e.seq)
                .collect();
            // Split into sessions: each new session starts at READY, s = 1.
            let mut sessions: Vec<Vec<u64>> = Vec::new();
            for seq in seqs {
                if seq == 1 {
                    sessions.push(Vec::new());
                }
                sessions
                .last_mut()
                .unwrap_or_else(|| panic!("seed {seed}: {handler} handler, shard {shard} got seq {seq} before READY"))
                .push(seq);
            }
            for (i, session) in sessions.iter().enumerate() {
                let expected: Vec<u64> = (1..=session.len() as u64).collect();
                assert_eq!(
                session, &expected,
                "seed {seed}: {handler} handler, shard {shard}, session {i}: duplicated, reordered or missing events"
            );
            }
            // One READY per session: each session the handler saw is a distinct session the fake
            // created. (A READY the fake queued on a connection the chaos then killed never
            // reaches the client, so the fake may have created more.)
            let created: Vec<String> = fake
                .connections()
                .iter()
                .filter(|c| c.shard == Some(shard))
                .filter_map(|c| match &c.outcome {
                    ConnectionOutcome::Identified { session_id } => Some(session_id.clone()),
                    _ => None,
                })
                .collect();
            let seen: Vec<String> = events
                .iter()
                .filter(|e| e.shard == shard && e.event == "READY")
                .map(|e| {
                    serde_json::from_str::<serde_json::Value>(&e.data).unwrap()["session_id"]
                        .as_str()
                        .unwrap()
                        .to_owned()
                })
                .collect();
            assert_eq!(
                seen.len(),
                sessions.len(),
                "seed {seed}: {handler} handler, shard {shard}: every session starts with READY"
            );
            for (i, id) in seen.iter().enumerate() {
                assert!(
                    created.contains(id) && !seen[..i].contains(id),
                    "seed {seed}: {handler} handler, shard {shard}: READY of {id} unknown or twice"
                );
            }
            let live = fake.session(shard).unwrap();
            assert_eq!(seen.last(), Some(&live.id), "seed {seed}: {handler} handler, shard {shard}: the live session is the last one seen");
            assert_eq!(
                sessions.last().map(|s| s.len() as u64),
                Some(live.seq),
                "seed {seed}: {handler} handler, shard {shard}: the live session is complete"
            );
        }
    }
    let events = bot.recorder.events();
    let total: usize = events
        .iter()
        .filter(|e| e.event == "MESSAGE_CREATE")
        .count();
    println!(
        "seed {seed}: {total} messages delivered across {} connections",
        fake.connections().len()
    );
    bot.stop().await;
}

/// Waits (up to 2 s) until `shard` has a live, connected session and `recorder` has seen it up
/// to `ceil(fraction × its seq)`. Returns that seq and whether it was reached.
async fn wait_for_fraction(
    fake: &shardline::testkit::FakeGateway,
    recorder: &Recorder,
    shard: u32,
    fraction: f64,
) -> (u64, bool) {
    let deadline = Instant::now() + Duration::from_secs(2);
    // The point is fixed by the first live session seen: a fault after a session-ending one waits
    // for the new session to be up.
    let mut point: Option<(String, u64)> = None;
    loop {
        if point.is_none() {
            point = fake
                .session(shard)
                .filter(|s| s.resumable && fake.ready_shards().contains(&shard))
                .map(|live| (live.id, (fraction * live.seq as f64).ceil() as u64));
        }
        if let Some((id, target)) = &point {
            if seen_in_session(recorder, shard, id) >= *target {
                return (*target, true);
            }
        }
        if Instant::now() >= deadline {
            return (point.map_or(0, |p| p.1), false);
        }
        actix_rt::time::sleep(Duration::from_millis(1)).await;
    }
}

/// The last seq `recorder` has seen of `shard`'s session `id` (0 if not even its READY).
fn seen_in_session(recorder: &Recorder, shard: u32, id: &str) -> u64 {
    let events = recorder.events();
    let mine = events.iter().filter(|e| e.shard == shard);
    let mut in_session = false;
    let mut last = 0;
    for e in mine {
        if e.event == "READY" {
            in_session = serde_json::from_str::<serde_json::Value>(&e.data)
                .is_ok_and(|d| d["session_id"] == id);
        }
        if in_session {
            last = e.seq;
        }
    }
    last
}
