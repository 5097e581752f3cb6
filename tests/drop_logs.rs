//! Logs under overload and hostile input, captured process-wide (one global subscriber, so the
//! tests of this binary run one at a time and each reads only what was logged since it started).
//!
//! Under overload a shard drops one event per handler per event; its warnings must not become a
//! log storm: the first drop is logged, then one summary line per second, and the count in the
//! status stays exact. Whatever the gateway sends, its content never reaches a log line above
//! debug, and no kind of warning it can cause is written more than once a second per shard.

#[path = "gateway/harness.rs"]
#[allow(dead_code)]
mod harness;

use std::sync::OnceLock;
use std::time::{Duration, Instant};

use actix::prelude::*;
use shardline::{Dispatch, SlowHandlers};

use harness::*;

/// A handler with a 4-slot mailbox that takes 1 ms per event.
struct Slow(Recorder);

impl Actor for Slow {
    type Context = Context<Self>;
    fn started(&mut self, ctx: &mut Context<Self>) {
        ctx.set_mailbox_capacity(4);
    }
}

impl Handler<Dispatch> for Slow {
    type Result = ();
    fn handle(&mut self, d: Dispatch, _: &mut Context<Self>) {
        std::thread::sleep(Duration::from_millis(1));
        self.0.record(&d);
    }
}

/// The process-wide capture (at DEBUG), installed by the first test that asks.
fn capture() -> &'static LogCapture {
    static CAPTURE: OnceLock<LogCapture> = OnceLock::new();
    CAPTURE.get_or_init(|| {
        let capture = LogCapture::default();
        capture.install(tracing::Level::DEBUG);
        capture
    })
}

/// One test at a time: each reads the capture from where it was when it started.
static SERIAL: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

/// What was captured since `from` (a length of the capture's text).
fn since(from: usize) -> String {
    capture().text().get(from..).unwrap_or_default().to_owned()
}

/// The lines of `logs` written at `level` or above (fmt's level column).
fn at_least_info(logs: &str) -> Vec<&str> {
    logs.lines()
        .filter(|l| {
            [" INFO ", " WARN ", " ERROR "]
                .iter()
                .any(|lvl| l.contains(lvl))
        })
        .collect()
}

#[actix_rt::test]
async fn drops_under_a_flood_are_counted_exactly_and_logged_in_summaries() {
    let _serial = SERIAL.lock().await;
    let from = capture().text().len();
    let slow = Recorder::default();
    let arbiter = Arbiter::new();
    let s = slow.clone();
    let handler = Slow::start_in_arbiter(&arbiter.handle(), move |_| Slow(s));
    let bot = Bot::start(fast_fake(1, 1), 1, move |c| {
        c.handler("MESSAGE_CREATE", handler.recipient())
            .slow_handlers(SlowHandlers::Drop)
    })
    .await;
    let count = 5000;
    bot.fake
        .flood(0, "MESSAGE_CREATE", r#"{"content":"x"}"#, count)
        .unwrap();
    bot.until("the whole flood seen by the catch-all", |r| {
        r.count("MESSAGE_CREATE") == count
    })
    .await;
    let status = status_until(&bot.gateway, "every event delivered or counted", |s| {
        slow.count("MESSAGE_CREATE") as u64 + s[0].dropped == count as u64
    })
    .await
    .remove(0);
    assert!(
        status.dropped > 1000,
        "a 4-slot mailbox drops most: {status:?}"
    );
    let logs = since(from);
    let lines = logs
        .lines()
        .filter(|l| l.contains("not delivered to"))
        .count();
    assert!(lines >= 1, "the first drop is logged:\n{logs}");
    assert!(
        (lines as u64) * 100 < status.dropped,
        "{lines} warning lines for {} drops:\n{logs}",
        status.dropped
    );
    arbiter.stop();
    bot.stop().await;
}

#[actix_rt::test]
async fn a_gateway_sending_garbage_in_a_loop_is_logged_a_few_times_and_never_quoted() {
    let _serial = SERIAL.lock().await;
    let from = capture().text().len();
    let started = Instant::now();
    let bot = Bot::start(fast_fake(1, 1), 1, |c| c).await;
    let n = 300;
    for i in 0..n {
        // Not JSON, an opcode nobody knows, a dispatch without `s`: each with a message's text in it.
        assert!(bot
            .fake
            .send_raw_text(0, &format!("{{not json, private-text-{i}")));
        assert!(bot.fake.send_raw_text(
            0,
            &format!(r#"{{"op":99,"d":{{"content":"private-text-{i}"}}}}"#)
        ));
        assert!(bot.fake.send_raw_text(
            0,
            &format!(
                r#"{{"t":"MESSAGE_CREATE","s":null,"op":0,"d":{{"content":"private-text-{i}"}}}}"#
            )
        ));
        // The gateway asking for heartbeats far past the send limit.
        assert!(bot.fake.request_heartbeat(0));
    }
    let marker = bot
        .fake
        .dispatch(0, "MESSAGE_CREATE", serde_json::json!({"marker": true}))
        .unwrap();
    bot.until("the marker after the garbage", |r| {
        r.seqs("MESSAGE_CREATE") == [(0, marker)]
    })
    .await;
    let elapsed = started.elapsed();
    assert_eq!(
        bot.fake.connections().len(),
        1,
        "garbage is skipped, not a reason to reconnect"
    );
    bot.stop().await;
    let logs = since(from);
    let shown = at_least_info(&logs);
    assert!(
        shown.iter().all(|l| !l.contains("private-text")),
        "content above debug:\n{}",
        shown.join("\n")
    );
    // One line at once, then at most one a second, per kind (and the test ran `elapsed`).
    let bound = 2 + elapsed.as_secs() as usize;
    for what in [
        "skipped a malformed frame",
        "ignored an unknown opcode",
        "ignored a dispatch without s",
        "send limit reached",
    ] {
        let lines = shown.iter().filter(|l| l.contains(what)).count();
        assert!(
            (1..=bound).contains(&lines),
            "{lines} lines of {what:?} for {n} causes in {elapsed:?}:\n{logs}"
        );
    }
    // The content is there for whoever turns debug on.
    assert!(logs.contains("private-text"), "{logs}");
}

#[actix_rt::test]
async fn a_frame_the_websocket_codec_refuses_ends_the_connection_once() {
    let _serial = SERIAL.lock().await;
    let from = capture().text().len();
    let bot = Bot::start(fast_fake(1, 1), 1, |c| c).await;
    let mut expected = messages(&bot, 0, 10);
    bot.until("first batch", |r| r.count("MESSAGE_CREATE") == 10)
        .await;
    // A text frame with RSV1 set (no extension was negotiated), then more bytes behind it.
    assert!(bot
        .fake
        .send_raw_wire(0, &[0xC1, 0x01, b'x', 0x81, 0x01, b'y']));
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
    assert_eq!(got, expected, "every message once, in order");
    let conns = bot.fake.connections();
    assert_eq!(conns[0].client_close_code, Some(4000), "left resumably");
    // The old connection's reader is kept for the close handshake (up to a second): once its
    // stream has ended, it reads nothing more. A reader that repeated the codec's error would
    // be read in a loop for all that time.
    actix_rt::time::sleep(Duration::from_millis(1200)).await;
    let logs = since(from);
    let errors = logs
        .lines()
        .filter(|l| l.contains("websocket protocol error"))
        .count();
    assert_eq!(errors, 1, "{logs}");
    let after = logs
        .lines()
        .filter(|l| l.contains("read from a connection being closed"))
        .count();
    assert!(after <= 2, "{after} reads after the connection was left");
    bot.stop().await;
}
