//! The moderation example end to end: its shard receives messages from the fake gateway, and its
//! twilight-http client deletes exactly the banned ones through the fake's REST routes, retrying
//! the one that met a 429; the fake's REST routes are as strict as Discord's.

#[path = "gateway/harness.rs"]
#[allow(dead_code)]
mod harness;

use harness::example;
use std::collections::BTreeSet;
use std::io::Read;
use std::process::{Command, Stdio};
use std::time::Duration;

use serde_json::{json, Value};
use shardline::testkit::{FakeConfig, FakeGateway, RestCall};

const WAIT: Duration = Duration::from_secs(20);
const TOKEN: &str = "fake-token";
const GUILD: u64 = 1_000_000_000_000_000_000;
const A: u64 = 1_000_000_000_000_000_001;
const B: u64 = 1_000_000_000_000_000_002;
const C: u64 = 1_000_000_000_000_000_003;

fn fake_config() -> FakeConfig {
    FakeConfig {
        heartbeat_interval: Duration::from_millis(200),
        identify_window: Duration::from_millis(100),
        // Two calls per route and channel per 300 ms: the third deletion in channel A meets a 429.
        rest_rate_limit: (2, Duration::from_millis(300)),
        ..FakeConfig::default()
    }
}

fn message(id: u64, channel: u64, content: &str, bot: bool) -> Value {
    json!({
        "id": id.to_string(),
        "channel_id": channel.to_string(),
        "guild_id": GUILD.to_string(),
        "author": {"id": "42", "username": "someone", "bot": bot},
        "content": content,
    })
}

fn deleted(calls: &[RestCall]) -> BTreeSet<String> {
    calls
        .iter()
        .filter(|c| c.method == "DELETE" && c.status == 204)
        .map(|c| c.path.clone())
        .collect()
}

fn path(channel: u64, message: u64) -> String {
    format!("/api/v10/channels/{channel}/messages/{message}")
}

#[actix_rt::test]
async fn the_bot_deletes_exactly_the_banned_messages_and_twilight_retries_the_429() {
    let fake = FakeGateway::start(fake_config()).await.unwrap();
    let mut child = Command::new(example("moderation"))
        .args(["--api-base", &fake.api_base(), "--banned", "spam,scam"])
        .env("DISCORD_TOKEN", TOKEN)
        .env("RUST_LOG", "debug")
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("moderation runs");
    let mut stderr = child.stderr.take().unwrap();
    let log = std::thread::spawn(move || {
        let mut text = String::new();
        let _ = stderr.read_to_string(&mut text);
        text
    });
    assert!(
        fake.wait_for(WAIT, "the bot's shard ready", |f| f.ready_shards() == [0])
            .await
    );
    let conversation = [
        message(1, A, "hello there", false),
        message(2, A, "buy SPAM now", false),
        message(3, B, "spamalot is a musical", false),
        message(4, A, "scam!", false),
        message(5, A, "more spam", false),
        message(6, B, "spam", true),
        message(7, B, "a scam", false),
    ];
    for d in conversation {
        fake.dispatch(0, "MESSAGE_CREATE", d).expect("live session");
    }
    let expected: BTreeSet<String> = [path(A, 2), path(A, 4), path(A, 5), path(B, 7)].into();
    let acted = |f: &FakeGateway| {
        let calls = f.rest_calls();
        deleted(&calls).len() >= 4
            && calls
                .iter()
                .filter(|c| c.method == "POST" && c.status == 200)
                .count()
                >= 4
    };
    assert!(
        fake.wait_for(WAIT, "four deletions and notices", acted)
            .await
    );
    // A marker after everything: once its deletion is in, every earlier decision has been made
    // and sent (the handler takes events in order, and the earlier calls left before it).
    fake.dispatch(0, "MESSAGE_CREATE", message(8, C, "spam", false))
        .unwrap();
    let marker_done = |f: &FakeGateway| {
        let calls = f.rest_calls();
        deleted(&calls).contains(&path(C, 8))
            && calls
                .iter()
                .filter(|c| c.method == "POST" && c.status == 200)
                .count()
                >= 5
    };
    assert!(
        fake.wait_for(
            WAIT,
            "the marker deleted and its notice posted",
            marker_done
        )
        .await
    );
    let _ = child.kill();
    let _ = child.wait();
    let log = log.join().unwrap();

    let calls = fake.rest_calls();
    let mut all_expected = expected.clone();
    all_expected.insert(path(C, 8));
    assert_eq!(deleted(&calls), all_expected);
    // Every DELETE was of a banned message: none of a clean one, the bot's or an unknown one.
    let delete_paths: BTreeSet<String> = calls
        .iter()
        .filter(|c| c.method == "DELETE")
        .map(|c| c.path.clone())
        .collect();
    assert_eq!(delete_paths, all_expected);
    // The third deletion in A met the limit, and twilight retried it once the bucket reset.
    let limited: BTreeSet<&String> = calls
        .iter()
        .filter(|c| c.method == "DELETE" && c.status == 429)
        .map(|c| &c.path)
        .collect();
    assert!(!limited.is_empty(), "no deletion met the limit: {calls:#?}");
    for limited in limited {
        let last = calls.iter().rev().find(|c| &c.path == limited);
        assert_eq!(last.map(|c| c.status), Some(204), "{limited} not retried");
    }
    assert!(
        calls.iter().all(|c| matches!(c.status, 200 | 204 | 429)),
        "{calls:#?}"
    );
    let notices: Vec<&RestCall> = calls
        .iter()
        .filter(|c| c.method == "POST" && c.status == 200)
        .collect();
    assert_eq!(notices.len(), 5);
    assert!(notices
        .iter()
        .all(|c| c.body["content"] == "A message with a banned word was removed."));
    // What is left: the clean messages, the bot's own and the notices (messages the fake made).
    let left = |channel| -> Vec<u64> {
        fake.messages_in(channel)
            .unwrap()
            .into_iter()
            .filter(|&id| id < 1_000)
            .collect()
    };
    assert_eq!(left(A), [1]);
    assert_eq!(left(B), [3, 6]);
    assert_eq!(left(C), Vec::<u64>::new());
    assert_eq!(fake.messages_in(A).unwrap().len(), 1 + 3);
    assert!(!log.contains(TOKEN), "the token leaked into the bot's log");
    fake.stop().await;
}

/// A raw HTTP call to the fake's REST routes.
async fn call(
    fake: &FakeGateway,
    method: &str,
    path: &str,
    token: Option<&str>,
    body: Option<Value>,
) -> (u16, awc::http::header::HeaderMap, Value) {
    let url = format!("{}{path}", fake.api_base());
    let client = awc::Client::new();
    let mut request = match method {
        "DELETE" => client.delete(url),
        _ => client.post(url),
    };
    if let Some(token) = token {
        request = request.insert_header(("Authorization", format!("Bot {token}")));
    }
    let mut response = match body {
        Some(body) => request.send_json(&body).await,
        None => request.send().await,
    }
    .expect("answers");
    let bytes = response.body().await.expect("body");
    let json = serde_json::from_slice(&bytes).unwrap_or(Value::Null);
    (response.status().as_u16(), response.headers().clone(), json)
}

#[actix_rt::test]
async fn the_rest_routes_check_the_token_the_ids_and_the_rate_limit() {
    let fake = FakeGateway::start(FakeConfig {
        rest_rate_limit: (2, Duration::from_secs(60)),
        ..fake_config()
    })
    .await
    .unwrap();
    let mut ws = awc::Client::new()
        .ws(format!("{}/?v=10&encoding=json", fake.gateway_url()))
        .connect()
        .await
        .unwrap()
        .1;
    use futures_util::{SinkExt, StreamExt};
    let _hello = ws.next().await;
    let identify = json!({"op": 2, "d": {"token": TOKEN, "intents": 513, "shard": [0, 1],
        "properties": {"os": "linux", "browser": "raw", "device": "raw"}}});
    ws.send(awc::ws::Message::Text(identify.to_string().into()))
        .await
        .unwrap();
    assert!(
        fake.wait_for(WAIT, "ready", |f| f.ready_shards() == [0])
            .await
    );
    fake.dispatch(0, "MESSAGE_CREATE", message(10, A, "x", false));
    fake.dispatch(0, "MESSAGE_CREATE", message(11, A, "y", false));

    let (status, _, body) = call(
        &fake,
        "DELETE",
        &format!("/channels/{A}/messages/10"),
        None,
        None,
    )
    .await;
    assert_eq!(
        (status, body),
        (401, json!({"message": "401: Unauthorized", "code": 0}))
    );
    let (status, _, _) = call(
        &fake,
        "DELETE",
        &format!("/channels/{A}/messages/10"),
        Some("wrong"),
        None,
    )
    .await;
    assert_eq!(status, 401);
    let (status, _, body) = call(
        &fake,
        "DELETE",
        &format!("/channels/{B}/messages/10"),
        Some(TOKEN),
        None,
    )
    .await;
    assert_eq!(
        (status, body["code"].clone()),
        (404, json!(10003)),
        "unknown channel"
    );

    // The bucket of DELETE in channel A: two calls per window, whatever their outcome.
    let (status, headers, body) = call(
        &fake,
        "DELETE",
        &format!("/channels/{A}/messages/99"),
        Some(TOKEN),
        None,
    )
    .await;
    assert_eq!(
        (status, body["code"].clone()),
        (404, json!(10008)),
        "unknown message"
    );
    assert_eq!(headers.get("x-ratelimit-limit").unwrap(), "2");
    assert_eq!(headers.get("x-ratelimit-remaining").unwrap(), "1");
    let bucket = headers.get("x-ratelimit-bucket").unwrap().clone();
    assert!(
        headers.get("x-ratelimit-reset-after").is_some()
            && headers.get("x-ratelimit-reset").is_some()
    );
    let (status, headers, _) = call(
        &fake,
        "DELETE",
        &format!("/channels/{A}/messages/10"),
        Some(TOKEN),
        None,
    )
    .await;
    assert_eq!(status, 204);
    assert_eq!(headers.get("x-ratelimit-remaining").unwrap(), "0");
    assert_eq!(headers.get("x-ratelimit-bucket").unwrap(), &bucket);
    let (status, headers, body) = call(
        &fake,
        "DELETE",
        &format!("/channels/{A}/messages/11"),
        Some(TOKEN),
        None,
    )
    .await;
    assert_eq!(status, 429);
    assert_eq!(headers.get("x-ratelimit-scope").unwrap(), "user");
    assert!(headers.get("retry-after").is_some());
    assert_eq!(
        (body["global"].clone(), body["message"].clone()),
        (json!(false), json!("You are being rate limited."))
    );
    assert!(body["retry_after"]
        .as_f64()
        .is_some_and(|s| s > 0.0 && s <= 60.0));
    assert_eq!(
        fake.messages_in(A),
        Some(vec![11]),
        "the 429'd call deleted nothing"
    );

    // POST has its own bucket; an empty message is refused, a real one exists afterwards and
    // comes back through the gateway as MESSAGE_CREATE.
    let posted = format!("/channels/{A}/messages");
    let (status, _, body) = call(
        &fake,
        "POST",
        &posted,
        Some(TOKEN),
        Some(json!({"content": ""})),
    )
    .await;
    assert_eq!((status, body["code"].clone()), (400, json!(50006)));
    let (status, _, body) = call(
        &fake,
        "POST",
        &posted,
        Some(TOKEN),
        Some(json!({"content": "hi"})),
    )
    .await;
    assert_eq!(status, 200);
    assert_eq!(
        (body["content"].clone(), body["channel_id"].clone()),
        (json!("hi"), json!(A.to_string()))
    );
    let id: u64 = body["id"].as_str().unwrap().parse().unwrap();
    assert_eq!(fake.messages_in(A), Some(vec![11, id]));
    let seq = fake.session(0).unwrap().seq;
    let last = loop {
        match ws.next().await {
            Some(Ok(awc::ws::Frame::Text(t))) => {
                let v: Value = serde_json::from_slice(&t).unwrap();
                if v["s"] == json!(seq) {
                    break v;
                }
            }
            Some(Ok(_)) => {}
            other => panic!("{other:?}"),
        }
    };
    assert_eq!(
        (last["t"].clone(), last["d"]["id"].clone()),
        (json!("MESSAGE_CREATE"), body["id"].clone())
    );
    let statuses: Vec<(String, u16)> = fake
        .rest_calls()
        .iter()
        .map(|c| (c.method.clone(), c.status))
        .collect();
    let expected: Vec<(String, u16)> = [
        ("DELETE", 401),
        ("DELETE", 401),
        ("DELETE", 404),
        ("DELETE", 404),
        ("DELETE", 204),
        ("DELETE", 429),
        ("POST", 400),
        ("POST", 200),
    ]
    .iter()
    .map(|(m, s)| (m.to_string(), *s))
    .collect();
    assert_eq!(statuses, expected);
    fake.stop().await;
}
