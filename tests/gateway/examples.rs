//! The examples run as the README shows them.

use std::io::{BufRead, BufReader, Read};
use std::process::{Command, Stdio};
use std::time::Duration;

use serde_json::{json, Value};
use shardline::testkit::{FakeConfig, FakeGateway};

use crate::harness::*;

#[actix_rt::test]
async fn tail_prints_each_dispatch_as_one_json_line_and_never_the_token() {
    let fake = FakeGateway::start(fast_fake(2, 2)).await.unwrap();
    let mut child = Command::new(example("tail"))
        .args([
            "--api-base",
            &fake.api_base(),
            "--shards",
            "2",
            "--compress",
            "zlib-stream",
        ])
        .env("DISCORD_TOKEN", TOKEN)
        .env("RUST_LOG", "trace")
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("tail runs");
    let stdout = child.stdout.take().unwrap();
    let mut stderr = child.stderr.take().unwrap();
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            let _ = tx.send(line);
        }
    });
    let log = std::thread::spawn(move || {
        let mut text = String::new();
        let _ = stderr.read_to_string(&mut text);
        text
    });
    assert!(
        fake.wait_for(WAIT, "tail's shards ready", |f| f.ready_shards() == [0, 1])
            .await
    );
    fake.dispatch(
        1,
        "MESSAGE_CREATE",
        json!({"content": "hi \"there\"", "n": [1, 2]}),
    )
    .unwrap();
    fake.dispatch_raw(0, "TYPING_START", r#"{ "user_id" : "9" }"#)
        .unwrap();

    let mut lines: Vec<Value> = Vec::new();
    let deadline = std::time::Instant::now() + WAIT;
    while lines.iter().filter(|l| l["t"] != "READY").count() < 2
        && std::time::Instant::now() < deadline
    {
        if let Ok(line) = rx.recv_timeout(Duration::from_millis(50)) {
            lines.push(
                serde_json::from_str(&line).unwrap_or_else(|e| panic!("not JSON ({e}): {line}")),
            );
        }
        actix_rt::time::sleep(Duration::from_millis(1)).await;
    }
    let _ = child.kill();
    let _ = child.wait();
    let log = log.join().unwrap();

    let ready: Vec<_> = lines.iter().filter(|l| l["t"] == "READY").collect();
    assert_eq!(ready.len(), 2);
    let events: Vec<_> = lines
        .iter()
        .filter(|l| l["t"] != "READY")
        .cloned()
        .collect();
    let message = events
        .iter()
        .find(|l| l["t"] == "MESSAGE_CREATE")
        .expect("message line");
    assert_eq!(
        *message,
        json!({"shard": 1, "seq": 2, "t": "MESSAGE_CREATE", "d": {"content": "hi \"there\"", "n": [1, 2]}})
    );
    let typing = events
        .iter()
        .find(|l| l["t"] == "TYPING_START")
        .expect("typing line");
    assert_eq!(
        *typing,
        json!({"shard": 0, "seq": 2, "t": "TYPING_START", "d": {"user_id": "9"}})
    );
    for line in &lines {
        let keys: Vec<&String> = line.as_object().unwrap().keys().collect();
        assert_eq!(keys.len(), 4, "{line}");
    }
    assert!(!log.contains(TOKEN), "the token leaked into tail's log");
    assert!(log.contains("ready"), "logs go to stderr");
    fake.stop().await;
}

#[actix_rt::test]
async fn tail_exits_non_zero_naming_a_fatal_close_code() {
    let fake = FakeGateway::start(FakeConfig {
        privileged_intents_enabled: 0,
        ..fast_fake(1, 1)
    })
    .await
    .unwrap();
    let api_base = fake.api_base();
    let output = actix_rt::task::spawn_blocking(move || {
        Command::new(example("tail"))
            // GUILD_MESSAGES | MESSAGE_CONTENT: privileged, and not enabled for this bot.
            .args([
                "--api-base",
                &api_base,
                "--shards",
                "1",
                "--intents",
                "33280",
            ])
            .env("DISCORD_TOKEN", TOKEN)
            .output()
            .expect("tail runs")
    })
    .await
    .unwrap();
    assert_eq!(output.status.code(), Some(2));
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        stderr.contains("4014") && stderr.contains("disallowed intents"),
        "{stderr}"
    );
    assert!(output.stdout.is_empty());
    assert!(!stderr.contains(TOKEN));
    fake.stop().await;
}
