//! wss:// and https:// end to end: the fake in TLS mode, trusted through an added root or not.

use std::time::{Duration, Instant};

use actix::prelude::*;
use shardline::testkit::{ConnectionOutcome, FakeConfig, FakeGateway};
use shardline::{
    Backoff, Compression, Config, ConfigBuilder, Gateway, Intents, Phase, RestError, ShardEvent,
    ShardPlan, StartError,
};

use crate::harness::*;

async fn tls_fake(config: &FakeConfig) -> FakeGateway {
    let _ = tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::from_default_env())
        .with_test_writer()
        .try_init();
    FakeGateway::start_tls(config.clone())
        .await
        .expect("TLS fake starts")
}

/// A one-shard client of `fake` that asks `GET /gateway/bot` (over https) for its plan and URL.
fn recommended(fake: &FakeGateway, fake_config: &FakeConfig) -> ConfigBuilder {
    let builder = Config::builder(TOKEN)
        .intents(Intents::GUILDS | Intents::GUILD_MESSAGES)
        .shards(ShardPlan::Recommended)
        .api_base(fake.api_base())
        .identify_window(fake_config.identify_window)
        .command_limit(fake_config.command_limit.0, fake_config.command_limit.1)
        .compression(Compression::ZlibStream)
        .arbiters(1);
    fast_reconnects(builder)
}

#[actix_rt::test]
async fn a_session_over_wss_with_the_fakes_ca_identifies_receives_and_resumes_exactly_once() {
    let fake_config = fast_fake(1, 1);
    let fake = tls_fake(&fake_config).await;
    assert!(fake.gateway_url().starts_with("wss://localhost:"));
    assert!(fake.api_base().starts_with("https://localhost:"));
    let recorder = Recorder::default();
    let lifecycle = Lifecycle::default();
    let config = recommended(&fake, &fake_config)
        .add_root_certificate(fake.ca_certificate_der().unwrap())
        .handler_all(recorder.clone().start().recipient())
        .events(lifecycle.clone().start().recipient())
        .build()
        .unwrap();
    let gateway = Gateway::start(config)
        .await
        .expect("GET /gateway/bot over https");
    assert_eq!(gateway.plan().gateway_url, fake.gateway_url());
    assert_eq!(fake.tls_handshakes(), 1, "the REST call's handshake");
    assert!(
        fake.wait_for(WAIT, "ready over wss", |f| f.ready_shards() == [0])
            .await
    );

    let send = |from: usize, n: usize| -> Vec<u64> {
        (from..from + n)
            .map(|i| {
                fake.dispatch(0, "MESSAGE_CREATE", serde_json::json!({ "i": i }))
                    .unwrap()
            })
            .collect()
    };
    let count = |r: &Recorder| r.count("MESSAGE_CREATE");
    let mut expected = send(0, 5);
    wait_until("5 messages", || count(&recorder) == 5).await;

    // op 7: the client closes and resumes on the resume URL, over TLS again.
    assert!(fake.reconnect(0));
    expected.extend(send(5, 5));
    assert!(
        fake.wait_for(WAIT, "resumed after op 7", |f| f.connections().len() == 2
            && f.ready_shards() == [0])
            .await
    );
    expected.extend(send(10, 5));
    wait_until("15 messages", || count(&recorder) == 15).await;

    // A drop without a close frame: a second resume over TLS.
    assert!(fake.drop_connection(0));
    expected.extend(send(15, 5));
    assert!(
        fake.wait_for(WAIT, "resumed after the drop", |f| f.connections().len()
            == 3
            && f.ready_shards() == [0])
            .await
    );
    expected.extend(send(20, 5));
    wait_until("25 messages", || count(&recorder) == 25).await;

    let delivered: Vec<u64> = recorder
        .seqs("MESSAGE_CREATE")
        .into_iter()
        .map(|(_, s)| s)
        .collect();
    assert_eq!(delivered, expected, "every event exactly once, in order");
    assert_eq!(sent(&fake, 0, 2).len(), 1, "one Identify");
    let resumes = sent(&fake, 0, 6);
    assert_eq!(resumes.len(), 2, "one Resume per reconnect");
    let session = fake.session(0).unwrap();
    for frame in &resumes {
        assert_eq!(frame.json["d"]["token"], TOKEN);
        assert_eq!(frame.json["d"]["session_id"], session.id.as_str());
    }
    let conns = fake.connections();
    assert_eq!(conns[0].compress.as_deref(), Some("zlib-stream"));
    for conn in &conns[1..] {
        assert_eq!(conn.path, "/resume", "resumes on resume_gateway_url");
        assert!(
            matches!(&conn.outcome, ConnectionOutcome::Resumed { session_id, .. } if *session_id == session.id)
        );
    }
    assert_eq!(recorder.count("RESUMED"), 2);
    let resumed = lifecycle
        .events()
        .iter()
        .filter(|e| matches!(e, ShardEvent::Resumed { shard: 0 }))
        .count();
    assert_eq!(resumed, 2);
    assert_eq!(
        fake.tls_handshakes(),
        4,
        "REST, then one handshake per websocket connection"
    );
    gateway.shutdown(false).await;
    fake.stop().await;
}

#[actix_rt::test]
async fn without_the_ca_get_gateway_bot_fails_naming_the_certificate_and_sends_no_token() {
    let fake_config = fast_fake(1, 1);
    let fake = tls_fake(&fake_config).await;
    let config = recommended(&fake, &fake_config).build().unwrap();
    let err = match Gateway::start(config).await {
        Ok(_) => panic!("started against an untrusted certificate"),
        Err(e) => e,
    };
    let StartError::Rest(RestError::Transport(message)) = &err else {
        panic!("not a transport error: {err:?}");
    };
    assert!(
        message.contains("invalid peer certificate") && message.contains("UnknownIssuer"),
        "the error names the certificate problem: {message}"
    );
    assert_eq!(fake.tls_handshakes(), 1);
    assert!(fake.connections().is_empty());
    assert!(fake.frames().is_empty());
    fake.stop().await;
}

#[actix_rt::test]
async fn without_the_ca_a_shard_backs_off_and_never_upgrades_or_sends_its_token() {
    let fake_config = fast_fake(1, 1);
    let fake = tls_fake(&fake_config).await;
    // A fixed plan and URL: no REST call, so every handshake the fake sees is the shard's.
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
    let started = Instant::now();
    let gateway = Gateway::start(config).await.expect("no REST to fail");
    assert!(
        fake.wait_for(WAIT, "the first handshake", |f| f.tls_handshakes() >= 1)
            .await
    );
    // Attempts at 0 s, 1 s and 3 s: a window of 1.5 s from the start holds at most two.
    actix_rt::time::sleep(
        (started + Duration::from_millis(1500)).saturating_duration_since(Instant::now()),
    )
    .await;
    let in_window = fake.tls_handshakes();
    assert!(
        (1..=2).contains(&in_window),
        "{in_window} handshakes in 1.5 s with a 1 s backoff"
    );
    let status = gateway.status().await;
    assert!(status[0].reconnects <= 1, "{status:?}");
    // It keeps trying (the backoff never gives up), and still never gets further than TLS.
    assert!(
        fake.wait_for(WAIT, "a retry", |f| f.tls_handshakes() >= 2)
            .await
    );
    let status = gateway.status().await;
    assert_ne!(status[0].phase, Phase::Ready);
    assert_eq!(status[0].session_id, None);
    assert!(
        fake.connections().is_empty(),
        "no websocket upgrade over an unverified connection"
    );
    assert!(
        fake.frames().is_empty(),
        "no frame at all, so no Identify or Resume"
    );
    assert!(fake.identifies().is_empty());
    gateway.shutdown(false).await;
    fake.stop().await;
}

#[actix_rt::test]
async fn two_gateways_in_one_process_trust_only_their_own_roots() {
    let fake_config = fast_fake(1, 1);
    let trusted = tls_fake(&fake_config).await;
    let other = tls_fake(&fake_config).await;
    let recorder = Recorder::default();
    let a = client(&trusted, &fake_config, 1)
        .add_root_certificate(trusted.ca_certificate_der().unwrap())
        .handler_all(recorder.clone().start().recipient())
        .build()
        .unwrap();
    // Trusts the other fake's CA only: the same server must be refused.
    let b = client(&trusted, &fake_config, 1)
        .add_root_certificate(other.ca_certificate_der().unwrap())
        .build()
        .unwrap();
    let gateway_a = Gateway::start(a).await.unwrap();
    assert!(
        trusted
            .wait_for(WAIT, "A ready", |f| f.ready_shards() == [0])
            .await
    );
    let gateway_b = Gateway::start(b).await.unwrap();
    assert!(
        trusted
            .wait_for(WAIT, "B's handshake", |f| f.tls_handshakes() >= 2)
            .await
    );
    let seq = trusted
        .dispatch(0, "MESSAGE_CREATE", serde_json::json!({"to": "A"}))
        .unwrap();
    wait_until("A's event", || recorder.count("MESSAGE_CREATE") == 1).await;
    assert_eq!(recorder.seqs("MESSAGE_CREATE"), [(0, seq)]);
    assert_eq!(trusted.connections().len(), 1, "only A's websocket");
    assert_eq!(sent_any(&trusted, 2).len(), 1, "only A's Identify");
    assert_eq!(gateway_b.status().await[0].session_id, None);
    assert_eq!(other.tls_handshakes(), 0);
    gateway_b.shutdown(false).await;
    gateway_a.shutdown(false).await;
    trusted.stop().await;
    other.stop().await;
}

#[actix_rt::test]
async fn root_certificates_that_do_not_parse_are_config_errors() {
    let fake = tls_fake(&FakeConfig::default()).await;
    let ca = fake.ca_certificate_der().unwrap();
    let err = Config::builder(TOKEN)
        .add_root_certificate(ca.clone())
        .add_root_certificate(ca[..ca.len() / 2].to_vec())
        .build()
        .unwrap_err();
    assert!(
        matches!(
            &err,
            shardline::ConfigError::InvalidRootCertificate { index: 1, .. }
        ),
        "{err:?}"
    );
    assert!(err
        .to_string()
        .starts_with("root certificate #1 is not a valid certificate"));
    let err = Config::builder(TOKEN)
        .add_root_certificates_pem("no certificate here")
        .build()
        .unwrap_err();
    assert_eq!(
        err,
        shardline::ConfigError::InvalidRootCertificate {
            index: 0,
            reason: "no PEM CERTIFICATE block".to_owned()
        }
    );
    let pem = format!(
        "-----BEGIN CERTIFICATE-----\n{}\n-----END CERTIFICATE-----\n",
        base64(&ca)
    );
    assert!(Config::builder(TOKEN)
        .add_root_certificates_pem(pem)
        .build()
        .is_ok());
    fake.stop().await;
}

/// Standard base64 with padding, 64 columns: enough PEM for a test.
fn base64(bytes: &[u8]) -> String {
    const ALPHABET: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut out = String::new();
    for chunk in bytes.chunks(3) {
        let n = chunk
            .iter()
            .enumerate()
            .fold(0u32, |n, (i, &b)| n | (u32::from(b) << (16 - 8 * i)));
        for i in 0..4 {
            if i <= chunk.len() {
                out.push(ALPHABET[(n >> (18 - 6 * i) & 63) as usize] as char);
            } else {
                out.push('=');
            }
        }
    }
    out.as_bytes()
        .chunks(64)
        .map(|line| String::from_utf8_lossy(line).into_owned())
        .collect::<Vec<_>>()
        .join("\n")
}
