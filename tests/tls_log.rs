//! A shard refused by certificate verification says why in its log: every `tracing` record from
//! every thread is captured (its own test binary: the subscriber is process-wide).

#[path = "gateway/harness.rs"]
#[allow(dead_code)]
mod harness;

use std::time::Duration;

use shardline::testkit::FakeGateway;
use shardline::{Backoff, Gateway};

use harness::*;

#[actix_rt::test]
async fn an_untrusted_certificate_is_logged_as_the_reason_the_connect_failed() {
    let capture = LogCapture::default();
    capture.install(tracing::Level::TRACE);

    let fake_config = fast_fake(1, 1);
    let fake = FakeGateway::start_tls(fake_config.clone()).await.unwrap();
    let config = client(&fake, &fake_config, 1)
        .backoff(
            Backoff::default()
                .initial(Duration::from_secs(1))
                .max(Duration::from_secs(4))
                .multiplier(2.0)
                .randomization(0.0),
        )
        .build()
        .unwrap();
    let gateway = Gateway::start(config).await.unwrap();
    wait_until("the failed connect logged", || {
        capture.text().contains("connect failed")
    })
    .await;
    let log = capture.text();
    let line = log.lines().find(|l| l.contains("connect failed")).unwrap();
    assert!(line.contains("WARN"), "{line}");
    assert!(
        line.contains("invalid peer certificate: UnknownIssuer"),
        "the record names the verification failure: {line}"
    );
    assert!(line.contains("shard.id=0"), "{line}");
    // The next attempt is 1 s after the first.
    assert!((1..=2).contains(&fake.tls_handshakes()));
    assert!(fake.connections().is_empty());
    assert!(!log.contains(TOKEN), "the token was never logged");
    gateway.shutdown(false).await;
    fake.stop().await;
}
