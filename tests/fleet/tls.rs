//! `rediss://`: the fleet over TLS to a real `redis-server` serving a certificate from a CA made
//! for the test (rcgen), trusted through `FleetOptions::redis_ca_pem`.

use actix::prelude::*;
use rcgen::{
    BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair,
    KeyUsagePurpose,
};
use shardline::fleet::{FleetOptions, FleetRedis};
use shardline::testkit::FakeGateway;
use shardline::Gateway;

use crate::harness::*;
use crate::redis_server::RedisServer;

/// PEM of DER bytes under `label`.
fn pem(label: &str, der: &[u8]) -> String {
    const ALPHABET: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut b64 = String::new();
    for chunk in der.chunks(3) {
        let n = chunk
            .iter()
            .enumerate()
            .fold(0u32, |n, (i, b)| n | u32::from(*b) << (16 - 8 * i));
        for i in 0..4 {
            if i <= chunk.len() {
                b64.push(ALPHABET[(n >> (18 - 6 * i) & 63) as usize] as char);
            } else {
                b64.push('=');
            }
        }
    }
    let mut out = format!("-----BEGIN {label}-----\n");
    for line in b64.as_bytes().chunks(64) {
        out.push_str(std::str::from_utf8(line).unwrap());
        out.push('\n');
    }
    out.push_str(&format!("-----END {label}-----\n"));
    out
}

/// A CA, and a certificate for `localhost` it signed with its key: (CA, certificate, key) in PEM.
fn certificates() -> (String, String, String) {
    let mut ca_params = CertificateParams::new(Vec::<String>::new()).unwrap();
    ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    ca_params
        .distinguished_name
        .push(DnType::CommonName, "shardline test Redis CA");
    ca_params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
    let ca_key = KeyPair::generate().unwrap();
    let ca_cert = ca_params.self_signed(&ca_key).unwrap();
    let ca = Issuer::new(ca_params, ca_key);
    let mut leaf_params = CertificateParams::new(vec!["localhost".to_owned()]).unwrap();
    leaf_params
        .distinguished_name
        .push(DnType::CommonName, "localhost");
    leaf_params.key_usages = vec![
        KeyUsagePurpose::DigitalSignature,
        KeyUsagePurpose::KeyEncipherment,
    ];
    leaf_params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
    let leaf_key = KeyPair::generate().unwrap();
    let leaf = leaf_params.signed_by(&leaf_key, &ca).unwrap();
    (
        pem("CERTIFICATE", ca_cert.der()),
        pem("CERTIFICATE", leaf.der()),
        pem("PRIVATE KEY", &leaf_key.serialize_der()),
    )
}

/// A fleet member reaches Redis only over TLS: it claims and runs its shards through the TLS port
/// (its leases are in the server, by its name); the same port refuses a plain `redis://`
/// connection, and a client that trusts only the webpki roots refuses the server's certificate.
#[actix_rt::test]
async fn a_fleet_runs_over_rediss_with_a_private_ca() {
    let (ca, cert, key) = certificates();
    let server = RedisServer::start_tls(&cert, &key);
    let tls_url = server.tls_url();

    let plain_to_tls_port = format!(
        "redis://127.0.0.1:{}/",
        server.tls_port.expect("a TLS port")
    );
    assert!(FleetRedis::connect(&plain_to_tls_port, "p").await.is_err());
    let untrusted = FleetRedis::connect(&tls_url, "p").await.unwrap_err();
    assert!(
        untrusted.to_string().contains("certificate"),
        "refused for its certificate: {untrusted}"
    );
    let redis = FleetRedis::connect_with_ca(&tls_url, "p", Some(ca.as_bytes()))
        .await
        .unwrap();
    assert_eq!(
        redis.node(),
        format!("localhost:{}", server.tls_port.unwrap())
    );

    let fake_config = fast_fake(2, 1);
    let fake = FakeGateway::start(fake_config.clone()).await.unwrap();
    let recorder = Recorder::default();
    let config = client(&fake, &fake_config, 2)
        .handler_all(recorder.clone().start().recipient())
        .build()
        .unwrap();
    let options = FleetOptions::new(tls_url)
        .redis_ca_pem(ca.into_bytes())
        .prefix("shardline:tls")
        .owner("tls-member")
        // A fresh Redis: the first claims wait one lease time (docs/fleet.md "Ownership").
        .lease_time(std::time::Duration::from_millis(1200));
    let gateway = Gateway::start_fleet(config, options, Vec::new())
        .await
        .unwrap();
    assert!(
        fake.wait_for(WAIT, "both shards ready", |f| f.ready_shards().len() == 2)
            .await
    );
    fake.dispatch(0, "MESSAGE_CREATE", serde_json::json!({"over": "tls"}));
    wait_until("the event arrived", || {
        recorder.seqs("MESSAGE_CREATE").len() == 1
    })
    .await;

    // What the member wrote went through the TLS port into this server: look on the plain port.
    let mut look = redis::Client::open(server.url())
        .unwrap()
        .get_multiplexed_async_connection()
        .await
        .unwrap();
    for shard in 0..2 {
        let lease: String = redis::cmd("GET")
            .arg(format!("shardline:tls:2:lease:{shard}"))
            .query_async(&mut look)
            .await
            .unwrap();
        assert!(lease.starts_with("tls-member:"), "{lease}");
    }
    let clients: String = redis::cmd("CLIENT")
        .arg("LIST")
        .query_async(&mut look)
        .await
        .unwrap();
    // Every connection but this one came in over TLS (the lease keeper's, the session store's...).
    let member_connections: Vec<&str> = clients
        .lines()
        .filter(|l| !l.contains("cmd=client|list"))
        .collect();
    assert!(!member_connections.is_empty());
    assert!(
        member_connections
            .iter()
            .all(|l| l.contains(&format!("laddr=127.0.0.1:{}", server.tls_port.unwrap()))),
        "{clients}"
    );
    gateway.shutdown(true).await;
}
