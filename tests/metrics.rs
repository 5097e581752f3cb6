//! Metrics end to end: a bot runs against the fake gateway, `GET /metrics` is scraped over real
//! HTTP, and the text is read with a Prometheus text-format parser (not the encoder's own code).

#[path = "gateway/harness.rs"]
#[allow(dead_code)]
mod harness;

use std::collections::BTreeMap;
use std::time::Duration;

use actix::prelude::*;
use prometheus_parse::{Sample, Scrape, Value};
use shardline::metrics::{Metrics, MetricsOptions, MetricsServer};
use shardline::testkit::{FakeConfig, FakeGateway, SessionStartLimit};
use shardline::{Backoff, Compression, Config, Gateway, Intents, Phase, ShardPlan, SlowHandlers};

use harness::*;

/// What a scrape said: every sample, by metric name and then by its labels.
struct Scraped(Vec<Sample>);

impl Scraped {
    /// The value of `metric` whose labels include every pair of `labels` (the sum if several do).
    fn get(&self, metric: &str, labels: &[(&str, &str)]) -> Option<f64> {
        let values: Vec<f64> = self
            .0
            .iter()
            .filter(|s| s.metric == metric)
            .filter(|s| labels.iter().all(|(k, v)| s.labels.get(k) == Some(*v)))
            .map(|s| match &s.value {
                Value::Counter(v) | Value::Gauge(v) | Value::Untyped(v) => *v,
                Value::Histogram(_) | Value::Summary(_) => f64::NAN,
            })
            .collect();
        (!values.is_empty()).then(|| values.iter().sum())
    }

    /// The sample count of histogram `metric`.
    fn histogram_count(&self, metric: &str) -> Option<f64> {
        self.0
            .iter()
            .find(|s| s.metric == format!("{metric}_count"))
            .and_then(|s| match &s.value {
                Value::Counter(v) | Value::Gauge(v) | Value::Untyped(v) => Some(*v),
                _ => None,
            })
    }

    /// Every label value of `label` on samples of `metric`, with the sample's value.
    fn by_label(&self, metric: &str, label: &str) -> BTreeMap<String, f64> {
        self.0
            .iter()
            .filter(|s| s.metric == metric)
            .filter_map(|s| {
                let v = match &s.value {
                    Value::Counter(v) | Value::Gauge(v) | Value::Untyped(v) => *v,
                    _ => return None,
                };
                Some((s.labels.get(label)?.to_owned(), v))
            })
            .collect()
    }
}

/// `GET /metrics` over HTTP; the content type is the text format's, and the body parses.
async fn scrape(server: &MetricsServer) -> Scraped {
    let url = format!("http://{}/metrics", server.local_addr());
    let mut response = awc::Client::default()
        .get(&url)
        .send()
        .await
        .expect("the metrics endpoint answers");
    assert_eq!(response.status(), 200);
    let content_type = response
        .headers()
        .get("content-type")
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default()
        .to_owned();
    assert_eq!(content_type, "text/plain; version=0.0.4; charset=utf-8");
    let body = response.body().limit(1 << 24).await.expect("a body");
    let text = String::from_utf8(body.to_vec()).expect("UTF-8");
    let scrape = Scrape::parse(text.lines().map(|l| Ok(l.to_owned()))).expect("parses");
    Scraped(scrape.samples)
}

/// Scrapes until `f` holds (shards flush on a timer); panics naming `what` if it never does.
async fn scrape_until(server: &MetricsServer, what: &str, f: impl Fn(&Scraped) -> bool) -> Scraped {
    let deadline = std::time::Instant::now() + WAIT;
    loop {
        let scraped = scrape(server).await;
        if f(&scraped) {
            return scraped;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "timed out waiting for: {what}"
        );
        actix_rt::time::sleep(Duration::from_millis(10)).await;
    }
}

fn options() -> MetricsOptions {
    MetricsOptions::default().flush_every(Duration::from_millis(20))
}

#[actix_rt::test]
async fn a_scrape_over_http_counts_what_the_shards_received_and_did() {
    let _ = tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::from_default_env())
        .with_test_writer()
        .try_init();
    let fake_config = FakeConfig {
        session_start_limit: SessionStartLimit {
            total: 50,
            remaining: 20,
            reset_after: 86_400_000,
        },
        ..fast_fake(2, 2)
    };
    let fake = FakeGateway::start(fake_config.clone()).await.unwrap();
    let metrics = Metrics::new(options().per_shard_series(true));
    let server = metrics.serve(("127.0.0.1", 0)).unwrap();
    let recorder = Recorder::default();
    // No gateway URL and no max_concurrency: the bot asks GET /gateway/bot, so its in-process
    // identify queue keeps the session-start budget the fake reports.
    let config = Config::builder(TOKEN)
        .intents(Intents::GUILDS | Intents::GUILD_MESSAGES)
        .shards(ShardPlan::Count(2))
        .api_base(fake.api_base())
        .identify_window(fake_config.identify_window)
        .command_limit(fake_config.command_limit.0, fake_config.command_limit.1)
        .compression(Compression::ZlibStream)
        .backoff(Backoff::default().initial(Duration::from_millis(20)))
        .handler_all(recorder.clone().start().recipient())
        .metrics(metrics.clone())
        .build()
        .unwrap();
    let gateway = Gateway::start(config).await.unwrap();
    status_until(&gateway, "both shards ready", |s| {
        s.len() == 2 && s.iter().all(|s| s.phase == Phase::Ready)
    })
    .await;

    fake.flood(0, "MESSAGE_CREATE", r#"{"content":"hello"}"#, 300)
        .unwrap();
    for _ in 0..5 {
        fake.dispatch_raw(1, "SOMETHING_DISCORD_ADDS_LATER", "{}")
            .unwrap();
    }
    for i in 0..3 {
        fake.dispatch_raw(1, &format!("MADE_UP_{i}"), "{}").unwrap();
    }
    // Shard 1 is asked to reconnect (op 7), shard 0 is closed with 4000: each resumes.
    let wait_resumed = |shard: u32, n: usize| {
        let recorder = recorder.clone();
        async move {
            wait_until("a RESUMED", || {
                recorder
                    .events()
                    .iter()
                    .filter(|e| e.shard == shard && e.event == "RESUMED")
                    .count()
                    == n
            })
            .await
        }
    };
    assert!(fake.reconnect(1));
    wait_resumed(1, 1).await;
    assert!(fake.close(0, 4000));
    wait_resumed(0, 1).await;
    // op 9 (resumable); then no ACKs on shard 0; then an undecodable frame on shard 1.
    assert!(fake.invalid_session(1, true));
    wait_resumed(1, 2).await;
    fake.set_ack_heartbeats(0, false);
    let closed = |f: &FakeGateway| {
        f.connections()
            .iter()
            .filter(|c| c.shard == Some(0) && c.closed_at.is_some())
            .count()
    };
    assert!(
        fake.wait_for(WAIT, "the zombie closed", |f| closed(f) == 2)
            .await
    );
    fake.set_ack_heartbeats(0, true);
    wait_resumed(0, 2).await;
    // A binary frame that does not inflate: the connection's zlib context is lost.
    assert!(fake.send_raw_binary(1, &[0xff, 0xff, 0xff, 0xff, 0x00, 0x00, 0xff, 0xff]));
    wait_resumed(1, 3).await;
    // A marker on each shard after its resume: everything before it has been delivered.
    fake.dispatch_raw(0, "TYPING_START", "{}").unwrap();
    fake.dispatch_raw(1, "TYPING_START", "{}").unwrap();
    recorder_until(&recorder, "both markers", |r| r.count("TYPING_START") == 2).await;

    let scraped = scrape_until(
        &server,
        "the markers flushed and a beat answered on each shard",
        |s| {
            s.get(
                "shardline_events_received_total",
                &[("event", "TYPING_START")],
            ) == Some(2.0)
                && s.get("shardline_shards", &[("phase", "ready")]) == Some(2.0)
                && s.by_label("shardline_shard_heartbeat_latency_seconds", "shard")
                    .len()
                    == 2
        },
    )
    .await;

    // Every documented name the handler saw is counted exactly; the eight made-up ones are one
    // `other` series, not eight.
    let seen = recorder.events();
    let events = scraped.by_label("shardline_events_received_total", "event");
    let mut expected: BTreeMap<String, f64> = BTreeMap::new();
    for e in &seen {
        let name = if shardline::protocol::events::is_known_event(&e.event) {
            e.event.clone()
        } else {
            "other".to_owned()
        };
        *expected.entry(name).or_default() += 1.0;
    }
    assert_eq!(events, expected);
    assert_eq!(events["MESSAGE_CREATE"], 300.0);
    assert_eq!(events["other"], 8.0);
    assert_eq!(events["READY"], 2.0);

    let reconnects = scraped.by_label("shardline_reconnects_total", "cause");
    for cause in [
        "reconnect_requested",
        "gateway_close",
        "invalid_session",
        "zombie",
        "bad_message",
    ] {
        assert_eq!(reconnects[cause], 1.0, "{cause}: {reconnects:?}");
    }
    assert_eq!(
        reconnects.values().sum::<f64>(),
        5.0,
        "no other reconnect: {reconnects:?}"
    );

    let phases = scraped.by_label("shardline_shards", "phase");
    assert_eq!(phases.values().sum::<f64>(), 2.0, "{phases:?}");
    assert_eq!(phases["ready"], 2.0);
    for shard in ["0", "1"] {
        assert_eq!(
            scraped.get(
                "shardline_shard_phase",
                &[("shard", shard), ("phase", "ready")]
            ),
            Some(1.0)
        );
    }
    assert!(scraped.histogram_count("shardline_heartbeat_latency_seconds") >= Some(2.0));
    // Two Identifies (the reconnects resumed), each after a wait in the queue.
    assert_eq!(
        scraped.histogram_count("shardline_identify_queue_wait_seconds"),
        Some(2.0)
    );
    assert_eq!(fake.identifies().len(), 2);
    assert_eq!(
        scraped.get("shardline_session_starts_remaining", &[]),
        Some(18.0)
    );
    // zlib-stream: the messages are larger than the frames that carried them.
    let wire = scraped
        .get("shardline_bytes_received_total", &[("stage", "wire")])
        .unwrap();
    let decompressed = scraped
        .get(
            "shardline_bytes_received_total",
            &[("stage", "decompressed")],
        )
        .unwrap();
    assert!(wire > 0.0 && decompressed > wire, "{wire} {decompressed}");
    let payload: usize = seen.iter().map(|e| e.data.len()).sum();
    assert!(decompressed > payload as f64);
    assert_eq!(
        scraped.get("shardline_handler_backlog_events", &[]),
        Some(0.0)
    );
    assert_eq!(
        scraped.get("shardline_handler_dropped_events_total", &[]),
        Some(0.0)
    );

    gateway.shutdown(false).await;
    // A deliberate shutdown ends in phase Stopped, and the shards stay counted there.
    let scraped = scrape(&server).await;
    assert_eq!(
        scraped.get("shardline_shards", &[("phase", "stopped")]),
        Some(2.0)
    );
    server.stop().await;
    fake.stop().await;
}

async fn recorder_until(recorder: &Recorder, what: &str, f: impl Fn(&Recorder) -> bool) {
    wait_until(what, || f(recorder)).await;
}

#[actix_rt::test]
async fn the_backlog_is_what_waits_for_a_full_handler_and_drops_are_counted_exactly() {
    let metrics = Metrics::new(options());
    let server = metrics.serve(("127.0.0.1", 0)).unwrap();
    let (handler, seen, open, arbiter) = hung();
    let m = metrics.clone();
    let bot = Bot::start(fast_fake(1, 1), 1, move |c| {
        c.handler("MESSAGE_CREATE", handler.recipient())
            .slow_handlers(SlowHandlers::Backpressure {
                max_pending: 16,
                max_pause: Duration::from_secs(60),
            })
            .metrics(m)
    })
    .await;
    bot.fake
        .flood(0, "MESSAGE_CREATE", r#"{"content":"x"}"#, 100)
        .unwrap();
    let paused = status_until(&bot.gateway, "reads paused for the hung handler", |s| {
        s[0].reading_paused_since.is_some()
    })
    .await
    .remove(0);
    // Reads are paused, so the backlog holds still: the gauge catches up with it exactly.
    assert!(paused.pending >= 16, "{paused:?}");
    scrape_until(&server, "the backlog exported", |s| {
        s.get("shardline_handler_backlog_events", &[]) == Some(paused.pending as f64)
    })
    .await;
    open.send(()).unwrap();
    wait_until("the hung handler got everything", || {
        seen.count("MESSAGE_CREATE") == 100
    })
    .await;
    scrape_until(&server, "the backlog drained", |s| {
        s.get("shardline_handler_backlog_events", &[]) == Some(0.0)
    })
    .await;
    arbiter.stop();
    bot.stop().await;
    server.stop().await;

    // Under SlowHandlers::Drop, the exported drops are the shard's own count.
    let metrics = Metrics::new(options());
    let server = metrics.serve(("127.0.0.1", 0)).unwrap();
    let (handler, seen, open, arbiter) = hung();
    let m = metrics.clone();
    let bot = Bot::start(fast_fake(1, 1), 1, move |c| {
        c.handler("MESSAGE_CREATE", handler.recipient())
            .slow_handlers(SlowHandlers::Drop)
            .metrics(m)
    })
    .await;
    let count = 200;
    bot.fake
        .flood(0, "MESSAGE_CREATE", r#"{"content":"x"}"#, count)
        .unwrap();
    bot.until("the whole flood seen by the catch-all", |r| {
        r.count("MESSAGE_CREATE") == count
    })
    .await;
    open.send(()).unwrap();
    let status = status_until(&bot.gateway, "every event delivered or dropped", |s| {
        seen.count("MESSAGE_CREATE") as u64 + s[0].dropped == count as u64
    })
    .await
    .remove(0);
    assert!(status.dropped > 100, "{status:?}");
    let dropped = status.dropped as f64;
    scrape_until(&server, "the drops exported", |s| {
        s.get("shardline_handler_dropped_events_total", &[]) == Some(dropped)
    })
    .await;
    arbiter.stop();
    bot.stop().await;
    server.stop().await;
}

#[actix_rt::test]
async fn connects_that_fail_count_as_reconnects_caused_by_the_failed_connect() {
    // A port nothing listens on: every connect is refused.
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let metrics = Metrics::new(options());
    let server = metrics.serve(("127.0.0.1", 0)).unwrap();
    let config = Config::builder(TOKEN)
        .shards(ShardPlan::Count(1))
        .gateway_url(format!("ws://127.0.0.1:{port}"))
        .max_concurrency(1)
        .backoff(
            Backoff::default()
                .initial(Duration::from_millis(10))
                .max(Duration::from_millis(20)),
        )
        .metrics(metrics.clone())
        .build()
        .unwrap();
    let gateway = Gateway::start(config).await.unwrap();
    let scraped = scrape_until(&server, "failed connects counted", |s| {
        s.get("shardline_reconnects_total", &[("cause", "connect_failed")]) >= Some(2.0)
    })
    .await;
    let reconnects = scraped.by_label("shardline_reconnects_total", "cause");
    assert_eq!(
        reconnects.values().sum::<f64>(),
        reconnects["connect_failed"],
        "{reconnects:?}"
    );
    assert_eq!(
        scraped.get("shardline_shards", &[("phase", "ready")]),
        Some(0.0)
    );
    gateway.shutdown(false).await;
    server.stop().await;
}
