//! Health for orchestrators, through the fleet example as a real process (`--http`, `--grace-ms`):
//! `/healthz` and `/readyz` over HTTP against the fake gateway and a real Redis, and the bounded
//! hand-over on SIGTERM.

use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::os::unix::process::ExitStatusExt;
use std::time::Duration;

use shardline::testkit::FakeGateway;

use crate::processes::{fleet_fake, wait_long, Proc};
use crate::redis_server::RedisServer;

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .unwrap()
}

/// `GET path` on the process's HTTP port: the status code and the body, or `None` when nothing
/// answers (not listening yet).
fn get(port: u16, path: &str) -> Option<(u16, String)> {
    let mut stream = TcpStream::connect(("127.0.0.1", port)).ok()?;
    stream
        .set_read_timeout(Some(Duration::from_secs(5)))
        .unwrap();
    write!(
        stream,
        "GET {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n"
    )
    .ok()?;
    let mut response = String::new();
    stream.read_to_string(&mut response).ok()?;
    let status = response.split(' ').nth(1)?.parse().ok()?;
    let body = response.split_once("\r\n\r\n")?.1.trim().to_owned();
    Some((status, body))
}

/// Waits until `GET path` answers `status`, and returns the body.
async fn until_answers(port: u16, path: &str, status: u16) -> String {
    let mut last = None;
    for _ in 0..1500 {
        last = get(port, path);
        if let Some((code, body)) = &last {
            if *code == status {
                return body.clone();
            }
        }
        actix_rt::time::sleep(Duration::from_millis(20)).await;
    }
    panic!("{path} never answered {status}; last: {last:?}");
}

/// `/readyz` says no while a shard of the process waits to identify, yes once both are READY, no
/// while Redis does not answer (the process would lose its leases) and yes again when it is back;
/// `/healthz` says yes all along. A second process pinned to the same range, held by the first,
/// is a member with nothing to hold: ready.
#[actix_rt::test]
async fn readyz_follows_the_shards_and_redis() {
    let redis = RedisServer::start();
    let fake = FakeGateway::start(fleet_fake(2)).await.unwrap();
    let (port, other_port) = (free_port(), free_port());
    // One bucket, and a window of 3 s: one shard identifies 3 s after the other.
    let a = Proc::gateway(
        &redis,
        &fake,
        "a",
        2,
        &[
            "--http",
            &format!("127.0.0.1:{port}"),
            "--max-concurrency",
            "1",
            "--identify-window-ms",
            "3000",
        ],
    );
    until_answers(port, "/healthz", 200).await;
    // Observed between two looks at the fake that both saw one shard READY: shard 1 was waiting.
    let mut seen_waiting = None;
    while seen_waiting.is_none() {
        let before = fake.ready_shards();
        let answer = get(port, "/readyz");
        let after = fake.ready_shards();
        assert!(
            after.len() < 2,
            "both READY before /readyz was seen during the wait"
        );
        if before.len() == 1 && after == before {
            let waiting = 1 - before[0];
            seen_waiting = answer.map(|a| (waiting, a));
        }
        actix_rt::time::sleep(Duration::from_millis(20)).await;
    }
    let (waiting, (code, body)) = seen_waiting.unwrap();
    assert_eq!(code, 503, "{body}");
    assert!(
        body.starts_with(&format!("not ready: shard {waiting} is")),
        "{body}"
    );

    wait_long("both shards ready", || fake.ready_shards().len() == 2).await;
    let body = until_answers(port, "/readyz", 200).await;
    assert_eq!(body, "ready: 2 shards READY");

    let b = Proc::gateway(
        &redis,
        &fake,
        "b",
        2,
        &[
            "--http",
            &format!("127.0.0.1:{other_port}"),
            "--range",
            "0..2",
        ],
    );
    let body = until_answers(other_port, "/readyz", 200).await;
    assert_eq!(body, "ready: a member with no shard to hold");
    assert!(b.held().is_empty());

    redis.pause(true);
    let body = until_answers(port, "/readyz", 503).await;
    assert_eq!(body, "not ready: Redis does not answer");
    assert_eq!(get(port, "/healthz"), Some((200, "ok".to_owned())));
    redis.pause(false);
    until_answers(port, "/readyz", 200).await;
    drop(a);
}

/// SIGTERM hands over within `--grace-ms`: with Redis answering, the hand-over finishes and the
/// process exits 0; with Redis stopped, it cannot finish, and the process exits with code 3 once
/// the grace has run out instead of waiting on Redis.
#[actix_rt::test]
async fn sigterm_hands_over_within_the_grace() {
    let redis = RedisServer::start();
    let fake = FakeGateway::start(fleet_fake(1)).await.unwrap();
    let mut a = Proc::gateway(&redis, &fake, "a", 1, &["--grace-ms", "5000"]);
    wait_long("the shard ready", || fake.ready_shards().len() == 1).await;
    let status = a.terminate();
    assert_eq!(status.code(), Some(0), "{status:?}");

    let mut b = Proc::gateway(&redis, &fake, "b", 1, &["--grace-ms", "300"]);
    wait_long("b runs the shard", || b.held().len() == 1).await;
    wait_long("the shard ready again", || fake.ready_shards().len() == 1).await;
    redis.pause(true);
    let status = b.terminate();
    redis.pause(false);
    assert_eq!(status.code(), Some(3), "{status:?} {:?}", status.signal());
}

/// Without a check, `/readyz` says so with a 503 (a probe must not pass by default); a check that
/// does not answer is a 503 too, after 800 ms, and `/healthz` answers all along.
#[actix_rt::test]
async fn readyz_without_an_answer_is_not_ready() {
    use shardline::metrics::{Metrics, ReadinessCheck};
    let metrics = Metrics::default();
    let plain = metrics.serve(("127.0.0.1", 0)).unwrap();
    let hanging: ReadinessCheck = std::sync::Arc::new(|| Box::pin(std::future::pending()));
    let stuck = metrics
        .serve_with_readiness(("127.0.0.1", 0), hanging)
        .unwrap();
    let answering: ReadinessCheck =
        std::sync::Arc::new(|| Box::pin(async { Ok("fine".to_owned()) }));
    let fine = metrics
        .serve_with_readiness(("127.0.0.1", 0), answering)
        .unwrap();
    let (plain_port, stuck_port, fine_port) = (
        plain.local_addr().port(),
        stuck.local_addr().port(),
        fine.local_addr().port(),
    );
    let answers = actix_rt::task::spawn_blocking(move || {
        [
            get(plain_port, "/readyz"),
            get(plain_port, "/healthz"),
            get(stuck_port, "/readyz"),
            get(stuck_port, "/healthz"),
            get(fine_port, "/readyz"),
        ]
    })
    .await
    .unwrap();
    assert_eq!(
        answers,
        [
            Some((503, "no readiness check registered".to_owned())),
            Some((200, "ok".to_owned())),
            Some((503, "the readiness check did not answer in time".to_owned())),
            Some((200, "ok".to_owned())),
            Some((200, "fine".to_owned())),
        ]
    );
    for server in [plain, stuck, fine] {
        server.stop().await;
    }
}
