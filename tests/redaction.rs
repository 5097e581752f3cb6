//! The token never appears in logs: every `tracing` record at TRACE level, from every thread,
//! through a full session with faults, is captured and searched.

#[path = "gateway/harness.rs"]
#[allow(dead_code)]
mod harness;

use std::time::Duration;

use serde_json::json;
use shardline::testkit::{FakeConfig, FakeGateway};
use shardline::{Command, Compression, Config, Gateway, PresenceUpdate, ShardPlan, Status};

use harness::*;

const SECRET: &str = "MTA5ODc2NTQzMjEw.Gx7kQz.s3cr3t-t0k3n-v4lu3";

#[actix_rt::test]
async fn the_token_never_appears_in_trace_logs() {
    let capture = LogCapture::default();
    capture.install(tracing::Level::TRACE);

    let fake_config = FakeConfig {
        token: SECRET.to_owned(),
        ..fast_fake(2, 2)
    };
    let fake = FakeGateway::start(fake_config.clone()).await.unwrap();
    let config = Config::builder(SECRET)
        .shards(ShardPlan::Recommended)
        .api_base(fake.api_base())
        .identify_window(fake_config.identify_window)
        .compression(Compression::ZlibStream)
        .backoff(
            shardline::Backoff::default()
                .initial(Duration::from_millis(20))
                .max(Duration::from_millis(100))
                .multiplier(2.0)
                .randomization(0.5),
        )
        .build()
        .unwrap();
    tracing::info!(?config, "config");
    let gateway = Gateway::start(config).await.unwrap();
    assert!(
        fake.wait_for(WAIT, "ready", |f| f.ready_shards() == [0, 1])
            .await
    );

    // Faults: each sends an Identify or a Resume (the token) over again.
    fake.dispatch(0, "MESSAGE_CREATE", json!({"content": "hello"}))
        .unwrap();
    fake.reconnect(0);
    assert!(
        fake.wait_for(WAIT, "resumed", |f| f.connections().len() == 3
            && f.ready_shards() == [0, 1])
            .await
    );
    fake.invalid_session(1, false);
    assert!(
        fake.wait_for(WAIT, "re-identified", |f| f.identifies().len() == 3
            && f.ready_shards() == [0, 1])
            .await
    );
    fake.set_ack_heartbeats(0, false);
    assert!(
        fake.wait_for(WAIT, "zombie left", |f| f.connections().len() >= 5)
            .await
    );
    fake.set_ack_heartbeats(0, true);
    fake.close(1, 4000);
    assert!(
        fake.wait_for(WAIT, "all back", |f| f.ready_shards() == [0, 1]
            && f.connections()
                .iter()
                .filter(|c| c.closed_at.is_none())
                .count()
                == 2)
            .await
    );
    gateway
        .send_all(Command::PresenceUpdate(PresenceUpdate::new(Status::Idle)))
        .await;
    let status = gateway.status().await;
    tracing::info!(?status, "status");
    gateway.shutdown(true).await;
    fake.stop().await;

    let logs = capture.text();
    let lines = logs.lines().count();
    assert!(lines > 200, "TRACE logging ran ({lines} lines)");
    assert!(
        logs.contains("resume") && logs.contains("zombie"),
        "the faults were logged"
    );
    assert!(
        logs.contains("Token(<redacted>)"),
        "the config was logged, redacted"
    );
    let leaks: Vec<&str> = logs
        .lines()
        .filter(|l| l.contains(SECRET) || l.contains("s3cr3t"))
        .collect();
    assert!(
        leaks.is_empty(),
        "the token leaked in {} lines, e.g. {:?}",
        leaks.len(),
        leaks.first()
    );
}
