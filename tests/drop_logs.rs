//! Under overload a shard drops one event per handler per event; its warnings must not become a
//! log storm: the first drop is logged, then one summary line per second, and the count in the
//! status stays exact.

#[path = "gateway/harness.rs"]
#[allow(dead_code)]
mod harness;

use std::time::Duration;

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

#[actix_rt::test]
async fn drops_under_a_flood_are_counted_exactly_and_logged_in_summaries() {
    let capture = LogCapture::default();
    capture.install(tracing::Level::WARN);
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
    let logs = capture.text();
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
