//! Issue-level guarantees: no stuck shards, no reconnect storms, the identify budget, commands under
//! the limits, slow handlers.

use std::time::{Duration, Instant};

use actix::prelude::*;
use shardline::testkit::{ConnectionOutcome, FakeConfig, FakeGateway, SessionStartLimit};
use shardline::{
    Backoff, Command, CommandError, Config, Gateway, Limits, PresenceUpdate, ShardPlan,
    SlowHandlers, StartError, Status, Timeouts,
};

use crate::harness::*;

fn quick_timeouts(connect: u64, hello: u64, ready: u64) -> Timeouts {
    Timeouts::default()
        .connect(Duration::from_millis(connect))
        .hello(Duration::from_millis(hello))
        .ready(Duration::from_millis(ready))
}

/// Gaps between the openings of the fake's connections.
fn gaps(fake: &FakeGateway) -> Vec<Duration> {
    let conns = fake.connections();
    conns
        .windows(2)
        .map(|w| w[1].opened_at - w[0].opened_at)
        .collect()
}

#[actix_rt::test]
async fn a_gateway_that_never_says_hello_is_left_and_retried() {
    let fake_config = FakeConfig {
        send_hello: false,
        ..fast_fake(1, 1)
    };
    let fake = FakeGateway::start(fake_config.clone()).await.unwrap();
    let gateway = Gateway::start(
        client(&fake, &fake_config, 1)
            .timeouts(quick_timeouts(2000, 200, 2000))
            .build()
            .unwrap(),
    )
    .await
    .unwrap();
    assert!(
        fake.wait_for(WAIT, "three attempts", |f| f.connections().len() >= 3)
            .await
    );
    let conns = fake.connections();
    for conn in &conns[..2] {
        assert_eq!(
            conn.client_close_code,
            Some(4000),
            "the client gave up on the silent connection"
        );
        assert_eq!(conn.outcome, ConnectionOutcome::None);
    }
    assert!(
        gaps(&fake).iter().all(|g| *g >= Duration::from_millis(200)),
        "{:?}",
        gaps(&fake)
    );
    gateway.shutdown(false).await;
    fake.stop().await;
}

#[actix_rt::test]
async fn a_gateway_that_never_answers_identify_is_left_and_retried() {
    let fake_config = FakeConfig {
        answer_handshake: false,
        ..fast_fake(1, 1)
    };
    let fake = FakeGateway::start(fake_config.clone()).await.unwrap();
    let gateway = Gateway::start(
        client(&fake, &fake_config, 1)
            .timeouts(quick_timeouts(2000, 2000, 300))
            .build()
            .unwrap(),
    )
    .await
    .unwrap();
    assert!(
        fake.wait_for(WAIT, "identified three times", |f| sent_any(f, 2).len()
            >= 3)
            .await
    );
    let conns = fake.connections();
    assert_eq!(conns[0].client_close_code, Some(4000));
    // One Identify per connection, each on its own connection.
    let identifies = sent_any(&fake, 2);
    assert_eq!(identifies[0].connection, conns[0].id);
    assert_eq!(identifies[1].connection, conns[1].id);
    gateway.shutdown(false).await;
    fake.stop().await;
}

#[actix_rt::test]
async fn a_tcp_peer_that_never_completes_the_handshake_times_out() {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    let accepted = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let count = accepted.clone();
    std::thread::spawn(move || {
        let mut held = Vec::new();
        for stream in listener.incoming().flatten() {
            count.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
            held.push(stream); // accept, never answer
        }
    });
    let config = Config::builder(TOKEN)
        .gateway_url(format!("ws://127.0.0.1:{port}"))
        .max_concurrency(1)
        .compression(shardline::Compression::None)
        .timeouts(quick_timeouts(200, 2000, 2000))
        .backoff(
            Backoff::default()
                .initial(Duration::from_millis(20))
                .max(Duration::from_millis(50))
                .multiplier(2.0)
                .randomization(0.5),
        )
        .build()
        .unwrap();
    let gateway = Gateway::start(config).await.unwrap();
    wait_until("three connect attempts", || {
        accepted.load(std::sync::atomic::Ordering::SeqCst) >= 3
    })
    .await;
    let status = gateway.status().await;
    assert!(status[0].reconnects >= 2, "{status:?}");
    gateway.shutdown(false).await;
}

#[actix_rt::test]
async fn handshakes_in_flight_never_exceed_the_limit_and_each_turn_passes_on() {
    // A peer that accepts and never answers: every handshake hangs until the test hangs up on it
    // (the connect timeout is far longer than the test), so turns pass on only when it does.
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    let accepted = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let (hang_up_tx, hang_up_rx) = std::sync::mpsc::channel::<usize>();
    let count = accepted.clone();
    std::thread::spawn(move || {
        let mut held = std::collections::VecDeque::new();
        let mut hang_up_all = false;
        listener.set_nonblocking(true).unwrap();
        loop {
            match listener.accept() {
                Ok((stream, _)) => {
                    count.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                    held.push_back(stream);
                }
                Err(_) => std::thread::sleep(Duration::from_millis(2)),
            }
            while let Ok(n) = hang_up_rx.try_recv() {
                hang_up_all |= n == usize::MAX;
                for _ in 0..n.min(held.len()) {
                    held.pop_front(); // dropped: that handshake fails at once
                }
            }
            if hang_up_all {
                held.clear();
            }
        }
    });
    let config = Config::builder(TOKEN)
        .shards(ShardPlan::Count(6))
        .gateway_url(format!("ws://127.0.0.1:{port}"))
        .max_concurrency(6)
        .compression(shardline::Compression::None)
        .timeouts(quick_timeouts(60_000, 2000, 2000))
        .limits(Limits::default().concurrent_handshakes(2))
        .build()
        .unwrap();
    let gateway = Gateway::start(config).await.unwrap();
    let load = || accepted.load(std::sync::atomic::Ordering::SeqCst);
    wait_until("the first two handshakes", || load() >= 2).await;
    // Nothing ends the two hanging handshakes, so a third connection could only be a breach.
    actix_rt::time::sleep(Duration::from_millis(200)).await;
    assert_eq!(load(), 2, "four shards wait for a turn while two hang");
    // Ending one handshake passes exactly one turn on.
    hang_up_tx.send(1).unwrap();
    wait_until("a third handshake", || load() >= 3).await;
    actix_rt::time::sleep(Duration::from_millis(200)).await;
    assert_eq!(load(), 3, "one turn freed, one shard let through");
    // Hanging up on everything from now on lets every shard have its attempt.
    hang_up_tx.send(usize::MAX).unwrap();
    wait_until("all six attempts", || load() >= 6).await;
    gateway.shutdown(false).await;
}

#[actix_rt::test]
async fn a_plan_the_identify_budget_cannot_cover_is_refused_at_start() {
    let fake_config = FakeConfig {
        session_start_limit: SessionStartLimit {
            total: 3,
            remaining: 3,
            reset_after: 1000,
        },
        ..fast_fake(4, 4)
    };
    let fake = FakeGateway::start(fake_config).await.unwrap();
    let config = Config::builder(TOKEN)
        .shards(ShardPlan::Recommended)
        .api_base(fake.api_base())
        .build()
        .unwrap();
    match Gateway::start(config).await {
        Err(StartError::IdentifyBudget {
            needed: 4,
            total: 3,
            remaining: 3,
        }) => {}
        other => panic!("expected a budget error, got {:?}", other.err()),
    }
    assert!(fake.identifies().is_empty(), "nothing was spent");
    fake.stop().await;
}

#[actix_rt::test]
async fn identifies_past_the_budget_wait_for_its_reset() {
    let fake_config = FakeConfig {
        session_start_limit: SessionStartLimit {
            total: 10,
            remaining: 1,
            reset_after: 700,
        },
        ..fast_fake(2, 2)
    };
    let fake = FakeGateway::start(fake_config.clone()).await.unwrap();
    let config = Config::builder(TOKEN)
        .shards(ShardPlan::Recommended)
        .api_base(fake.api_base())
        .identify_window(fake_config.identify_window)
        .compression(shardline::Compression::None)
        .build()
        .unwrap();
    let gateway = Gateway::start(config).await.unwrap();
    assert!(
        fake.wait_for(WAIT, "both ready", |f| f.ready_shards() == [0, 1])
            .await
    );
    let ids = fake.identifies();
    assert_eq!(ids.len(), 2, "no identify was refused");
    assert!(
        ids[1].1 - ids[0].1 >= Duration::from_millis(600),
        "second identify after {:?}",
        ids[1].1 - ids[0].1
    );
    gateway.shutdown(false).await;
    fake.stop().await;
}

#[actix_rt::test]
async fn repeated_invalid_sessions_never_become_an_identify_loop() {
    // Every Identify is refused with op 9 false (an exhausted budget the client was not told of).
    let fake_config = FakeConfig {
        session_start_limit: SessionStartLimit {
            total: 1000,
            remaining: 0,
            reset_after: 86_400_000,
        },
        ..fast_fake(1, 1)
    };
    let fake = FakeGateway::start(fake_config.clone()).await.unwrap();
    let config = client(&fake, &fake_config, 1)
        .backoff(
            Backoff::default()
                .initial(Duration::from_millis(50))
                .max(Duration::from_secs(5))
                .multiplier(2.0)
                .randomization(0.2),
        )
        .build()
        .unwrap();
    let gateway = Gateway::start(config).await.unwrap();
    actix_rt::time::sleep(Duration::from_secs(3)).await;
    let ids = fake.identifies();
    // 50, 100, 200, 400, 800, 1600 ms apart: about six in three seconds, not hundreds.
    assert!(
        (3..=8).contains(&ids.len()),
        "{} identifies in 3 s",
        ids.len()
    );
    let gaps: Vec<Duration> = ids.windows(2).map(|w| w[1].1 - w[0].1).collect();
    assert!(
        gaps.last().unwrap() >= &(gaps[0] * 4),
        "the delay grows: {gaps:?}"
    );
    gateway.shutdown(false).await;
    fake.stop().await;
}

#[actix_rt::test]
async fn commands_sent_while_reconnecting_go_out_after_the_resume() {
    let bot = Bot::start(fast_fake(1, 1), 1, |c| c).await;
    assert!(bot.fake.drop_connection(0));
    // A command written in the instant before the client sees the drop would go down with the
    // socket (the gateway acknowledges no command); from the moment it knows, commands wait.
    let lifecycle = bot.lifecycle.clone();
    wait_until("the client saw the drop", || {
        lifecycle
            .events()
            .contains(&shardline::ShardEvent::Disconnected {
                shard: 0,
                code: None,
            })
    })
    .await;
    let presence = Command::PresenceUpdate(PresenceUpdate::new(Status::Dnd));
    bot.gateway.send(0, presence).await.unwrap();
    assert!(
        bot.fake
            .wait_for(WAIT, "presence after resume", |f| sent(f, 0, 3).len() == 1)
            .await
    );
    let frames = bot.fake.frames_of(0);
    let resume = frames
        .iter()
        .position(|f| f.op == Some(6))
        .expect("resumed");
    let command = frames.iter().position(|f| f.op == Some(3)).unwrap();
    assert!(resume < command, "the command waited for the new session");
    assert_eq!(frames[resume].connection, frames[command].connection);
    bot.stop().await;
}

#[actix_rt::test]
async fn the_command_queue_is_bounded_and_overflow_is_an_error() {
    let fake_config = FakeConfig {
        answer_handshake: false,
        ..fast_fake(1, 1)
    };
    let fake = FakeGateway::start(fake_config.clone()).await.unwrap();
    let config = client(&fake, &fake_config, 1)
        .limits(Limits::default().command_queue(2))
        .build()
        .unwrap();
    let gateway = Gateway::start(config).await.unwrap();
    let presence = || Command::PresenceUpdate(PresenceUpdate::new(Status::Online));
    assert_eq!(gateway.send(0, presence()).await, Ok(()));
    assert_eq!(gateway.send(0, presence()).await, Ok(()));
    assert_eq!(
        gateway.send(0, presence()).await,
        Err(CommandError::QueueFull)
    );
    gateway.shutdown(false).await;
    fake.stop().await;
}

#[actix_rt::test]
async fn a_burst_of_commands_stays_under_the_rate_limit() {
    let limit = (20, Duration::from_secs(1));
    let fake_config = FakeConfig {
        command_limit: limit,
        heartbeat_interval: Duration::from_millis(500),
        ..fast_fake(1, 1)
    };
    let bot = Bot::start(fake_config, 1, |c| {
        c.command_limit(limit.0, limit.1)
            .limits(Limits::default().command_queue(100))
    })
    .await;
    for i in 0..40 {
        let mut presence = PresenceUpdate::new(Status::Online);
        presence.since = Some(i);
        assert_eq!(
            bot.gateway.send(0, Command::PresenceUpdate(presence)).await,
            Ok(())
        );
    }
    assert!(
        bot.fake
            .wait_for(Duration::from_secs(15), "all 40 sent", |f| sent(f, 0, 3)
                .len()
                == 40)
            .await
    );
    let since: Vec<u64> = sent(&bot.fake, 0, 3)
        .iter()
        .map(|f| f.json["d"]["since"].as_u64().unwrap())
        .collect();
    assert_eq!(since, (0..40).collect::<Vec<_>>(), "in order, none lost");
    let conns = bot.fake.connections();
    assert_eq!(conns.len(), 1, "never closed for rate limiting");
    assert_eq!(conns[0].server_close_code, None);
    bot.stop().await;
}

/// A handler that takes its time with every event and has a small mailbox; with a `gate`, it
/// also stops at its first message until the test opens the gate.
struct Slow {
    inner: Recorder,
    pause: Duration,
    gate: Option<std::sync::mpsc::Receiver<()>>,
}

impl Actor for Slow {
    type Context = Context<Self>;
    fn started(&mut self, ctx: &mut Context<Self>) {
        ctx.set_mailbox_capacity(4);
    }
}

impl Handler<shardline::Dispatch> for Slow {
    type Result = ();
    fn handle(&mut self, d: shardline::Dispatch, _: &mut Context<Self>) {
        if let Some(gate) = self.gate.take() {
            let _ = gate.recv();
        }
        // A handler doing blocking work: its thread is busy, its mailbox fills.
        std::thread::sleep(self.pause);
        self.inner.record(&d);
    }
}

impl Handler<shardline::DispatchBatch> for Slow {
    type Result = ();
    fn handle(&mut self, batch: shardline::DispatchBatch, _: &mut Context<Self>) {
        // A batch handler doing blocking work per batch.
        std::thread::sleep(self.pause);
        for d in batch.events() {
            self.inner.record(d);
        }
    }
}

/// How the slow handler is registered.
#[derive(Clone, Copy)]
enum Registered {
    PerEvent,
    Batch,
}

/// A bot whose only MESSAGE_CREATE handler is a `Slow` one, `pause` per message, on its own thread.
async fn bot_with_slow_handler(
    registered: Registered,
    pause: Duration,
    policy: SlowHandlers,
) -> (Bot, Recorder, Arbiter) {
    let slow = Recorder::default();
    let arbiter = Arbiter::new();
    let s = slow.clone();
    let handler = Slow::start_in_arbiter(&arbiter.handle(), move |_| Slow {
        inner: s,
        pause,
        gate: None,
    });
    let bot = Bot::start(fast_fake(1, 1), 1, move |c| {
        match registered {
            Registered::PerEvent => c.handler("MESSAGE_CREATE", handler.recipient()),
            Registered::Batch => c.batch_handler("MESSAGE_CREATE", handler.recipient()),
        }
        .slow_handlers(policy)
    })
    .await;
    (bot, slow, arbiter)
}

/// Backpressure: a burst of `count` reaches the slow handler once each, in order; the shard holds at
/// most `max_pending` meanwhile and keeps its connection (heartbeats never wait for handlers).
async fn backpressure_loses_nothing(
    registered: Registered,
    pause: Duration,
    count: usize,
    max_pending: usize,
) {
    let (bot, slow, arbiter) = bot_with_slow_handler(
        registered,
        pause,
        SlowHandlers::Backpressure {
            max_pending,
            max_pause: Duration::from_secs(60),
        },
    )
    .await;
    let seqs = bot
        .fake
        .flood(0, "MESSAGE_CREATE", r#"{"content":"x"}"#, count)
        .unwrap();
    let mut most_pending = 0;
    let deadline = Instant::now() + Duration::from_secs(20);
    while slow.count("MESSAGE_CREATE") < count && Instant::now() < deadline {
        most_pending = most_pending.max(bot.gateway.status().await[0].pending);
        actix_rt::time::sleep(Duration::from_millis(5)).await;
    }
    let got: Vec<u64> = slow
        .seqs("MESSAGE_CREATE")
        .into_iter()
        .map(|(_, s)| s)
        .collect();
    assert_eq!(got, seqs.collect::<Vec<_>>(), "every event once, in order");
    assert!(
        most_pending <= max_pending,
        "pending grew to {most_pending}"
    );
    assert!(most_pending > 0, "the handler really was behind");
    assert_eq!(
        bot.fake.connections().len(),
        1,
        "heartbeats kept the connection alive through the backlog"
    );
    assert_eq!(bot.gateway.status().await[0].dropped, 0);
    arbiter.stop();
    bot.stop().await;
}

/// Drop: of a burst of `count`, every event is either delivered or counted as dropped, and some are.
async fn drop_counts_every_loss(registered: Registered, pause: Duration, count: usize) {
    let (bot, slow, arbiter) = bot_with_slow_handler(registered, pause, SlowHandlers::Drop).await;
    bot.fake
        .flood(0, "MESSAGE_CREATE", r#"{"content":"x"}"#, count)
        .unwrap();
    bot.until("the whole burst seen by the catch-all", |r| {
        r.count("MESSAGE_CREATE") == count
    })
    .await;
    let deadline = Instant::now() + Duration::from_secs(10);
    let (mut dropped, mut delivered) = (0, 0);
    while Instant::now() < deadline {
        // The handler's backlog (at most its 4-slot mailbox) drains.
        dropped = bot.gateway.status().await[0].dropped;
        delivered = slow.count("MESSAGE_CREATE") as u64;
        if delivered + dropped == count as u64 {
            break;
        }
        actix_rt::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(dropped > 0, "a 4-slot mailbox behind a burst drops some");
    assert_eq!(
        delivered + dropped,
        count as u64,
        "delivered {delivered} + dropped {dropped}"
    );
    arbiter.stop();
    bot.stop().await;
}

#[actix_rt::test]
async fn a_slow_handler_slows_delivery_but_never_heartbeats_and_loses_nothing() {
    backpressure_loses_nothing(Registered::PerEvent, Duration::from_millis(3), 400, 16).await;
}

#[actix_rt::test]
async fn the_drop_policy_counts_every_event_it_drops() {
    drop_counts_every_loss(Registered::PerEvent, Duration::from_millis(2), 300).await;
}

#[actix_rt::test]
async fn a_slow_batch_handler_holds_the_shard_back_without_losing_or_reordering() {
    backpressure_loses_nothing(Registered::Batch, Duration::from_millis(15), 3000, 64).await;
}

#[actix_rt::test]
async fn the_drop_policy_counts_every_event_of_a_dropped_batch() {
    drop_counts_every_loss(Registered::Batch, Duration::from_millis(30), 3000).await;
}

#[actix_rt::test]
async fn the_stored_sequence_never_runs_ahead_of_what_handlers_were_given() {
    use shardline::SessionStore as _;
    let store = std::sync::Arc::new(shardline::MemorySessionStore::new());
    let gated = Recorder::default();
    let (open, gate) = std::sync::mpsc::channel::<()>();
    let arbiter = Arbiter::new();
    let g = gated.clone();
    let handler = Slow::start_in_arbiter(&arbiter.handle(), move |_| Slow {
        inner: g,
        pause: Duration::ZERO,
        gate: Some(gate),
    });
    let st = store.clone();
    let bot = Bot::start(fast_fake(1, 1), 1, move |c| {
        c.handler("MESSAGE_CREATE", handler.recipient())
            .session_store(st)
    })
    .await;
    // READY is seq 1, the burst 2..=61. The handler stops at the first message until the gate
    // opens, so most of the burst waits in the shard.
    let last = bot
        .fake
        .flood(0, "MESSAGE_CREATE", r#"{"content":"x"}"#, 60)
        .unwrap()
        .last()
        .unwrap();
    wait_until("the shard holding a backlog", || {
        bot.fake.session(0).is_some_and(|f| f.seq == last)
    })
    .await;
    // RESUMED (seq 62) now arrives behind events no handler has been given yet.
    bot.fake.reconnect(0);
    assert!(
        bot.fake
            .wait_for(WAIT, "resumed", |f| f.connections().len() == 2
                && f.ready_shards().len() == 1)
            .await
    );
    // Until the shard has read RESUMED (its sequence reaches it).
    let status = status_until(&bot.gateway, "the shard read RESUMED", |s| {
        s[0].seq == Some(last + 1)
    })
    .await
    .remove(0);
    assert_eq!(status.seq, Some(last + 1), "the shard read RESUMED");
    let pending = status.pending as u64;
    let stored = store.load(0).unwrap().seq;
    assert!(
        pending > 0,
        "the shard holds events for the stopped handler"
    );
    // The handler has finished nothing (it is stopped at the first event of the burst): the stored
    // sequence is still READY's, whatever was handed over.
    assert_eq!(
        stored, 1,
        "the stored sequence names the last event every handler finished"
    );
    open.send(()).unwrap();
    wait_until("all delivered", || gated.count("MESSAGE_CREATE") == 60).await;
    wait_until("RESUMED handed over", || {
        store.load(0).is_some_and(|s| s.seq == last + 1)
    })
    .await;
    arbiter.stop();
    bot.stop().await;
}
