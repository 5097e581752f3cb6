//! Operations: identify permits that die with their connection, resume hosts that fail, shutdown,
//! supervisor restarts, start-up warnings.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use shardline::queue::{IdentifyQueue, LocalIdentifyQueue, PermitRequest, SESSION_START_PERIOD};
use shardline::testkit::ConnectionOutcome;
use shardline::Phase;

use crate::harness::*;

/// What became of the permit requests a queue saw.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
struct Requests {
    made: u32,
    granted: u32,
    /// Dropped before their grant.
    withdrawn: u32,
}

/// Counts what becomes of each request to the queue it wraps.
struct Counting {
    inner: Arc<LocalIdentifyQueue>,
    requests: Arc<Mutex<Requests>>,
}

/// Counts a request as withdrawn if it is dropped before its grant.
struct Pending(Option<Arc<Mutex<Requests>>>);

impl Drop for Pending {
    fn drop(&mut self) {
        if let Some(requests) = self.0.take() {
            requests.lock().unwrap().withdrawn += 1;
        }
    }
}

impl IdentifyQueue for Counting {
    fn acquire(&self, shard: u32, total: u32) -> PermitRequest {
        self.requests.lock().unwrap().made += 1;
        let request = self.inner.acquire(shard, total);
        let mut pending = Pending(Some(self.requests.clone()));
        Box::pin(async move {
            let permit = request.await;
            if let Some(requests) = pending.0.take() {
                requests.lock().unwrap().granted += 1;
            }
            permit
        })
    }
}

#[actix_rt::test]
async fn a_permit_waited_for_by_a_dead_connection_is_withdrawn_and_not_charged() {
    let fake_config = fast_fake(1, 1);
    let fake = shardline::testkit::FakeGateway::start(fake_config.clone())
        .await
        .unwrap();
    // The bucket is busy: a permit was just taken, so the shard's request waits out the window.
    let queue = Arc::new(
        LocalIdentifyQueue::new(1, Duration::from_millis(500)).with_budget(
            100,
            100,
            Duration::from_secs(3600),
            SESSION_START_PERIOD,
        ),
    );
    queue.acquire(0, 1).await.used();
    assert_eq!(queue.remaining(), Some(99));
    let requests = Arc::new(Mutex::new(Requests::default()));
    let counting = Counting {
        inner: queue.clone(),
        requests: requests.clone(),
    };
    let config = client(&fake, &fake_config, 1)
        .identify_queue(Arc::new(counting))
        .build()
        .unwrap();
    let gateway = shardline::Gateway::start(config).await.unwrap();
    status_until(&gateway, "waiting for a permit", |s| {
        s.first()
            .is_some_and(|s| s.phase == Phase::AwaitingIdentify)
    })
    .await;
    assert_eq!(fake.drop_all(), 1, "the waiting connection is dropped");
    assert!(
        fake.wait_for(WAIT, "ready", |f| f.ready_shards() == [0])
            .await
    );
    status_until(&gateway, "ready", |s| s[0].phase == Phase::Ready).await;

    let conns = fake.connections();
    assert_eq!(conns.len(), 2, "{conns:?}");
    assert_eq!(conns[0].outcome, ConnectionOutcome::None);
    assert!(matches!(
        conns[1].outcome,
        ConnectionOutcome::Identified { .. }
    ));
    assert_eq!(sent(&fake, 0, 2).len(), 1, "exactly one Identify");
    assert_eq!(sent_any(&fake, 2).len(), 1);
    assert_eq!(
        *requests.lock().unwrap(),
        Requests {
            made: 2,
            granted: 1,
            withdrawn: 1
        },
        "the dead connection's request was withdrawn, not granted"
    );
    assert_eq!(
        queue.remaining(),
        Some(98),
        "the session start is charged once, for the Identify that went out"
    );
    gateway.shutdown(false).await;
    fake.stop().await;
}

#[actix_rt::test]
async fn a_resume_host_that_keeps_failing_is_given_up_for_the_gateway_url() {
    // A port nothing listens on, on the gateway's own (so allowed) host: every connect is refused.
    let dead = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let dead_port = dead.local_addr().unwrap().port();
    drop(dead);
    let fake_config = shardline::testkit::FakeConfig {
        resume_url: Some(format!("ws://127.0.0.1:{dead_port}/resume")),
        ..fast_fake(1, 1)
    };
    let bot = Bot::start(fake_config, 1, |c| c).await;
    assert!(bot.fake.drop_connection(0));
    assert!(
        bot.fake
            .wait_for(WAIT, "resumed", |f| f.connections().len() == 2
                && f.ready_shards() == [0])
            .await
    );
    let status = status_until(&bot.gateway, "ready again", |s| s[0].phase == Phase::Ready).await;
    let conns = bot.fake.connections();
    assert_eq!(conns[1].path, "/", "resumed on the gateway URL");
    let session = bot.fake.session(0).unwrap();
    assert!(
        matches!(&conns[1].outcome, ConnectionOutcome::Resumed { session_id, .. } if *session_id == session.id),
        "{:?}",
        conns[1].outcome
    );
    assert_eq!(sent(&bot.fake, 0, 6).len(), 1, "one Resume");
    assert_eq!(sent(&bot.fake, 0, 2).len(), 1, "no second Identify");
    assert_eq!(
        status[0].reconnects,
        1 + shardline::shard::RESUME_HOST_ATTEMPTS,
        "the resume host was tried {} times",
        shardline::shard::RESUME_HOST_ATTEMPTS
    );
    assert!(bot
        .lifecycle
        .events()
        .contains(&shardline::ShardEvent::Resumed { shard: 0 }));
    bot.stop().await;
}

/// The resume host accepts the websocket and then never says Hello (`silent`) or closes at once:
/// after [`RESUME_HOST_ATTEMPTS`](shardline::shard::RESUME_HOST_ATTEMPTS) such connections the
/// shard resumes through the gateway URL, losing nothing.
async fn a_resume_host_that_accepts_then_fails_is_given_up(silent: bool) {
    let host_config = shardline::testkit::FakeConfig {
        send_hello: !silent,
        // Closes (4002) right after the upgrade a client that asks for no compression.
        require_compression: !silent,
        ..fast_fake(1, 1)
    };
    let host = shardline::testkit::FakeGateway::start(host_config)
        .await
        .unwrap();
    let fake_config = shardline::testkit::FakeConfig {
        resume_url: Some(format!("{}/resume", host.gateway_url())),
        ..fast_fake(1, 1)
    };
    let bot = Bot::start(fake_config, 1, |c| {
        c.timeouts(
            shardline::Timeouts::default()
                .connect(Duration::from_secs(2))
                .hello(Duration::from_millis(200))
                .ready(Duration::from_secs(5)),
        )
    })
    .await;
    let mut expected = messages(&bot, 0, 3);
    bot.until("first messages", |r| r.count("MESSAGE_CREATE") == 3)
        .await;
    assert!(bot.fake.drop_connection(0));
    expected.extend(messages(&bot, 3, 3));
    assert!(
        bot.fake
            .wait_for(WAIT, "resumed", |f| f.connections().len() == 2
                && f.ready_shards() == [0])
            .await
    );
    bot.until("every message", |r| r.count("MESSAGE_CREATE") >= 6)
        .await;
    let got: Vec<u64> = bot.recorder.seq_numbers("MESSAGE_CREATE");
    assert_eq!(got, expected, "every message once, in order");
    let attempts = shardline::shard::RESUME_HOST_ATTEMPTS as usize;
    let tried = host.connections();
    assert_eq!(
        tried.len(),
        attempts,
        "the resume host was tried {attempts} times: {tried:?}"
    );
    assert!(tried.iter().all(|c| c.path == "/resume"));
    let conns = bot.fake.connections();
    assert_eq!(conns[1].path, "/", "resumed on the gateway URL");
    assert!(matches!(
        conns[1].outcome,
        ConnectionOutcome::Resumed { .. }
    ));
    assert_eq!(sent(&bot.fake, 0, 2).len(), 1, "no second Identify");
    bot.stop().await;
    host.stop().await;
}

#[actix_rt::test]
async fn a_resume_host_that_never_says_hello_is_given_up_for_the_gateway_url() {
    a_resume_host_that_accepts_then_fails_is_given_up(true).await;
}

#[actix_rt::test]
async fn a_resume_host_that_closes_at_once_is_given_up_for_the_gateway_url() {
    a_resume_host_that_accepts_then_fails_is_given_up(false).await;
}

/// Two shutdowns at once: the second must not return (or stop the supervisor) before the first has
/// closed every shard.
async fn concurrent_shutdowns_close_every_shard_once(resumable: bool, code: u16) {
    let bot = Bot::start(fast_fake(3, 3), 3, |c| c).await;
    let (first, second) = (bot.gateway.clone(), bot.gateway.clone());
    let fake = bot.fake.clone();
    // `join` polls the first before the second: the first shutdown is the one under way.
    let ((), when_second_returned) = futures_util::future::join(first.shutdown(resumable), async {
        second.shutdown(!resumable).await;
        fake.connections()
    })
    .await;
    assert_eq!(when_second_returned.len(), 3, "no shard reconnected");
    for conn in &when_second_returned {
        assert_eq!(
            conn.client_close_code,
            Some(code),
            "closed with {code} before the second shutdown returned: {conn:?}"
        );
    }
    assert!(bot.gateway.status().await.is_empty(), "no shard left");
    assert!(
        bot.fake
            .wait_for(WAIT, "every connection ended", |f| f
                .connections()
                .iter()
                .all(|c| c.closed_at.is_some()))
            .await
    );
    assert_eq!(bot.fake.connections().len(), 3);
    bot.fake.stop().await;
}

#[actix_rt::test]
async fn two_concurrent_resumable_shutdowns_both_wait_for_every_close_4000() {
    concurrent_shutdowns_close_every_shard_once(true, 4000).await;
}

#[actix_rt::test]
async fn two_concurrent_final_shutdowns_both_wait_for_every_close_1000() {
    concurrent_shutdowns_close_every_shard_once(false, 1000).await;
}

/// Log lines written on this thread while it is installed (`tracing::subscriber::set_default`).
#[derive(Clone, Default)]
struct Capture(Arc<Mutex<Vec<u8>>>);

impl std::io::Write for Capture {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl Capture {
    /// Captures what this thread logs (the supervisor and `Gateway::start` run on the test's own
    /// thread) until the guard is dropped.
    fn install(&self) -> tracing::subscriber::DefaultGuard {
        let writer = self.clone();
        let subscriber = tracing_subscriber::fmt()
            .with_max_level(tracing::Level::INFO)
            .with_ansi(false)
            .with_writer(move || writer.clone())
            .finish();
        tracing::subscriber::set_default(subscriber)
    }

    fn lines(&self, containing: &str) -> Vec<String> {
        String::from_utf8_lossy(&self.0.lock().unwrap())
            .lines()
            .filter(|l| l.contains(containing))
            .map(str::to_owned)
            .collect()
    }
}

/// A session store that panics, inside the shard, the first time it is asked to record each of
/// `seqs`.
struct PanicsAt {
    inner: shardline::MemorySessionStore,
    seqs: Mutex<Vec<u64>>,
}

impl shardline::SessionStore for PanicsAt {
    fn load(&self, shard: u32) -> Option<shardline::SessionInfo> {
        self.inner.load(shard)
    }
    fn save(&self, shard: u32, session: shardline::SessionInfo) {
        self.inner.save(shard, session)
    }
    fn set_seq(&self, shard: u32, seq: u64) {
        let armed = {
            let mut seqs = self.seqs.lock().unwrap();
            let at = seqs.iter().position(|&s| s == seq);
            at.map(|i| seqs.remove(i)).is_some()
        };
        if armed {
            panic!("store failure injected by the test at seq {seq}");
        }
        self.inner.set_seq(shard, seq)
    }
    fn remove(&self, shard: u32) {
        self.inner.remove(shard)
    }
}

#[actix_rt::test]
async fn the_restart_delay_starts_over_once_a_restarted_shard_is_ready() {
    let capture = Capture::default();
    let _guard = capture.install();
    let store = Arc::new(PanicsAt {
        inner: shardline::MemorySessionStore::new(),
        seqs: Mutex::new(vec![2, 4]),
    });
    // See lifecycle.rs: a panicking shard's thread may outlast a short heartbeat timeout.
    let fake_config = shardline::testkit::FakeConfig {
        heartbeat_timeout: Duration::from_secs(5),
        ..fast_fake(1, 1)
    };
    let s = store.clone();
    let bot = Bot::start(fake_config, 1, move |c| {
        // No jitter: the restart delays are exact, 20 ms then 40 ms if they kept growing.
        c.session_store(s).backoff(
            shardline::Backoff::default()
                .initial(Duration::from_millis(20))
                .max(Duration::from_secs(1))
                .multiplier(2.0)
                .randomization(0.0),
        )
    })
    .await;
    for (n, connections) in [(0, 2), (1, 3)] {
        bot.fake
            .dispatch(0, "MESSAGE_CREATE", serde_json::json!({ "n": n }))
            .unwrap();
        assert!(
            bot.fake
                .wait_for(WAIT, "restarted and resumed", |f| f.connections().len()
                    == connections
                    && f.ready_shards() == [0])
                .await
        );
        status_until(&bot.gateway, "ready again", |s| s[0].phase == Phase::Ready).await;
    }
    let restarts = capture.lines("shard stopped unexpectedly; restarting");
    assert_eq!(restarts.len(), 2, "{restarts:#?}");
    for line in &restarts {
        assert!(
            line.contains("delay=20ms"),
            "each restart after a READY waits the first delay: {restarts:#?}"
        );
    }
    assert!(restarts[1].contains("restarts=2"), "{restarts:#?}");
    assert!(matches!(
        bot.fake.connections()[2].outcome,
        ConnectionOutcome::Resumed { .. }
    ));
    // Each shard died recording that its handlers had finished the event, so each event was
    // replayed to the restarted shard and delivered again.
    assert_eq!(
        bot.recorder.seqs("MESSAGE_CREATE"),
        [(0, 2), (0, 2), (0, 4), (0, 4)]
    );
    bot.stop().await;
}

const UNSHARED: &str = "identify limit is not shared";
const NO_BUDGET: &str = "session-start budget is unknown";

#[actix_rt::test]
async fn start_warns_when_identify_limits_are_not_kept() {
    let fake_config = fast_fake(4, 2);
    let fake = shardline::testkit::FakeGateway::start(fake_config.clone())
        .await
        .unwrap();
    let start = |config: shardline::ConfigBuilder| async {
        let capture = Capture::default();
        let guard = capture.install();
        let gateway = shardline::Gateway::start(config.build().unwrap())
            .await
            .unwrap();
        drop(guard);
        gateway.shutdown(false).await;
        (
            capture.lines(UNSHARED).len(),
            capture.lines(NO_BUDGET).len(),
        )
    };
    let range = shardline::ShardPlan::Range {
        ids: 2..4,
        total: 4,
    };

    // One process of several, told its limits: both warnings, once each.
    let explicit = client(&fake, &fake_config, 2).shards(range.clone());
    assert_eq!(start(explicit).await, (1, 1));

    // Limits from GET /gateway/bot: the budget is kept, but the range still shares nothing.
    let asked = shardline::Config::builder(TOKEN)
        .api_base(fake.api_base())
        .identify_window(fake_config.identify_window)
        .shards(range.clone());
    assert_eq!(start(asked).await, (1, 0));

    // All the shards, limits from GET /gateway/bot: nothing to warn of.
    let whole = shardline::Config::builder(TOKEN)
        .api_base(fake.api_base())
        .identify_window(fake_config.identify_window)
        .shards(shardline::ShardPlan::Count(4));
    assert_eq!(start(whole).await, (0, 0));

    // A queue of the bot's own: sharing and budget are its business.
    let own = client(&fake, &fake_config, 2)
        .shards(range)
        .identify_queue(Arc::new(LocalIdentifyQueue::new(
            2,
            fake_config.identify_window,
        )));
    assert_eq!(start(own).await, (0, 0));
    fake.stop().await;
}
