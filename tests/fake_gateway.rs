//! The fake gateway is as strict as docs/protocol.md: a raw websocket client breaks each rule and gets
//! Discord's answer.

use std::time::Duration;

use actix_codec::Framed;
use awc::ws::{Codec, Frame, Message};
use awc::BoxedSocket;
use futures_util::{SinkExt, StreamExt};
use serde_json::{json, Value};
use shardline::testkit::{missing_fields, FakeBotUser, FakeConfig, FakeGateway};

type Ws = Framed<BoxedSocket, Codec>;

fn config() -> FakeConfig {
    FakeConfig {
        heartbeat_interval: Duration::from_millis(200),
        identify_window: Duration::from_millis(300),
        ..FakeConfig::default()
    }
}

async fn connect(fake: &FakeGateway, query: &str) -> Ws {
    let url = format!("{}/?{query}", fake.gateway_url());
    let (_, ws) = awc::Client::new()
        .ws(url)
        .max_frame_size(1 << 20)
        .connect()
        .await
        .expect("connects");
    ws
}

/// The next JSON frame, or the close code if the server closed.
async fn next(ws: &mut Ws) -> Result<Value, Option<u16>> {
    loop {
        match tokio_timeout(ws.next()).await {
            Some(Some(Ok(Frame::Text(t)))) => return Ok(serde_json::from_slice(&t).expect("JSON")),
            Some(Some(Ok(Frame::Close(reason)))) => return Err(reason.map(|r| u16::from(r.code))),
            Some(Some(Ok(_))) => continue,
            other => panic!("no frame: {:?}", other.map(|o| o.map(|r| r.is_ok()))),
        }
    }
}

async fn tokio_timeout<F: std::future::Future>(f: F) -> Option<F::Output> {
    actix_rt::time::timeout(Duration::from_secs(5), f)
        .await
        .ok()
}

async fn send(ws: &mut Ws, frame: Value) {
    ws.send(Message::Text(frame.to_string().into()))
        .await
        .expect("sent");
}

fn identify(shard: [u32; 2], intents: u64) -> Value {
    json!({"op": 2, "d": {"token": "fake-token", "intents": intents, "shard": shard,
        "properties": {"os": "linux", "browser": "raw", "device": "raw"}}})
}

/// Connects, reads Hello, and returns the socket.
async fn hello(fake: &FakeGateway) -> Ws {
    let mut ws = connect(fake, "v=10&encoding=json").await;
    let hello = next(&mut ws).await.unwrap();
    assert_eq!(
        hello,
        json!({"t": null, "s": null, "op": 10, "d": {"heartbeat_interval": 200}})
    );
    ws
}

/// Identifies and returns READY's `d`.
async fn ready(ws: &mut Ws, shard: [u32; 2]) -> Value {
    send(ws, identify(shard, 1)).await;
    let ready = next(ws).await.unwrap();
    assert_eq!(
        (ready["op"].clone(), ready["t"].clone(), ready["s"].clone()),
        (json!(0), json!("READY"), json!(1))
    );
    ready["d"].clone()
}

async fn closed_with(ws: &mut Ws) -> Option<u16> {
    loop {
        match next(ws).await {
            Err(code) => return code,
            Ok(_) => continue,
        }
    }
}

#[actix_rt::test]
async fn each_broken_rule_gets_discords_close_code() {
    let fake = FakeGateway::start(FakeConfig {
        privileged_intents_enabled: 0,
        required_shards: 2,
        ..config()
    })
    .await
    .unwrap();
    let cases: Vec<(&str, Value, u16)> = vec![
        (
            "payload before identify",
            json!({"op": 3, "d": {"since": null, "activities": [], "status": "online", "afk": false}}),
            4003,
        ),
        (
            "bad token",
            json!({"op": 2, "d": {"token": "nope", "intents": 1, "shard": [0, 2], "properties": {"os": "a", "browser": "b", "device": "c"}}}),
            4004,
        ),
        ("unknown opcode", json!({"op": 99, "d": null}), 4001),
        ("receive-only opcode", json!({"op": 11}), 4001),
        ("unknown intent bits", identify([0, 2], 1 << 17), 4013),
        (
            "missing intents",
            json!({"op": 2, "d": {"token": "fake-token", "shard": [0, 2], "properties": {"os": "a", "browser": "b", "device": "c"}}}),
            4013,
        ),
        (
            "privileged intent not enabled",
            identify([0, 2], 1 << 15),
            4014,
        ),
        ("shard id not below total", identify([2, 2], 1), 4010),
        ("too few shards", identify([0, 1], 1), 4011),
        (
            "oversized payload",
            json!({"op": 1, "d": "x".repeat(5000)}),
            4002,
        ),
        ("not an envelope", json!([1, 2]), 4002),
    ];
    for (what, frame, code) in cases {
        let mut ws = hello(&fake).await;
        send(&mut ws, frame).await;
        assert_eq!(closed_with(&mut ws).await, Some(code), "{what}");
    }
    let mut ws = connect(&fake, "v=9&encoding=json").await;
    assert_eq!(closed_with(&mut ws).await, Some(4012), "wrong API version");
    let mut ws = connect(&fake, "v=10&encoding=json&compress=lz4").await;
    assert_eq!(
        closed_with(&mut ws).await,
        Some(4002),
        "unknown compression"
    );
    fake.stop().await;
}

#[actix_rt::test]
async fn identify_twice_rate_limits_and_silence_are_closed() {
    let fake = FakeGateway::start(FakeConfig {
        command_limit: (5, Duration::from_secs(60)),
        ..config()
    })
    .await
    .unwrap();
    let mut ws = hello(&fake).await;
    ready(&mut ws, [0, 1]).await;
    send(&mut ws, identify([0, 1], 1)).await;
    assert_eq!(
        closed_with(&mut ws).await,
        Some(4005),
        "already authenticated"
    );

    let mut ws = hello(&fake).await;
    for _ in 0..6 {
        send(&mut ws, json!({"op": 1, "d": null})).await;
    }
    assert_eq!(
        closed_with(&mut ws).await,
        Some(4008),
        "over the command limit"
    );

    // No heartbeat: closed after interval × 1.5 + 100 ms with 4009.
    let mut ws = hello(&fake).await;
    let started = std::time::Instant::now();
    assert_eq!(closed_with(&mut ws).await, Some(4009));
    assert!(started.elapsed() >= Duration::from_millis(350));
    fake.stop().await;
}

#[actix_rt::test]
async fn a_second_identify_in_a_bucket_window_gets_op_9() {
    let fake = FakeGateway::start(FakeConfig {
        max_concurrency: 2,
        ..config()
    })
    .await
    .unwrap();
    let mut a = hello(&fake).await;
    ready(&mut a, [0, 4]).await;
    let mut b = hello(&fake).await;
    ready(&mut b, [1, 4]).await; // another bucket: fine
    let mut c = hello(&fake).await;
    send(&mut c, identify([2, 4], 1)).await; // bucket 0 again, too soon
    assert_eq!(
        next(&mut c).await.unwrap(),
        json!({"t": null, "s": null, "op": 9, "d": false})
    );
    assert_eq!(fake.bucket_violations(), 1);
    assert_eq!(
        fake.identifies().iter().map(|i| i.0).collect::<Vec<_>>(),
        [0, 1, 2]
    );
    fake.stop().await;
}

#[actix_rt::test]
async fn resume_replays_exactly_what_was_missed_then_resumed() {
    let fake = FakeGateway::start(config()).await.unwrap();
    let mut ws = hello(&fake).await;
    let d = ready(&mut ws, [0, 1]).await;
    let session_id = d["session_id"].as_str().unwrap().to_owned();
    assert_eq!(
        d["resume_gateway_url"],
        format!("ws://127.0.0.1:{}/resume", fake.port())
    );
    for n in 0..4 {
        fake.dispatch(0, "MESSAGE_CREATE", json!({ "n": n }))
            .unwrap();
    }
    for s in 2..=5 {
        assert_eq!(next(&mut ws).await.unwrap()["s"], s);
    }
    drop(ws);
    assert!(
        fake.wait_for(Duration::from_secs(5), "detached", |f| f
            .ready_shards()
            .is_empty())
            .await
    );
    fake.dispatch(0, "MESSAGE_CREATE", json!({ "n": 4 }))
        .unwrap();

    let mut ws = hello(&fake).await;
    send(
        &mut ws,
        json!({"op": 6, "d": {"token": "fake-token", "session_id": session_id, "seq": 3}}),
    )
    .await;
    let replayed: Vec<Value> = [
        next(&mut ws).await,
        next(&mut ws).await,
        next(&mut ws).await,
        next(&mut ws).await,
    ]
    .into_iter()
    .map(Result::unwrap)
    .collect();
    assert_eq!(
        replayed
            .iter()
            .map(|f| f["s"].as_u64().unwrap())
            .collect::<Vec<_>>(),
        [4, 5, 6, 7]
    );
    assert_eq!(replayed[2]["d"], json!({"n": 4}));
    assert_eq!(replayed[3]["t"], "RESUMED");

    let mut ws = hello(&fake).await;
    send(
        &mut ws,
        json!({"op": 6, "d": {"token": "fake-token", "session_id": session_id, "seq": 99}}),
    )
    .await;
    assert_eq!(
        closed_with(&mut ws).await,
        Some(4007),
        "seq ahead of the session"
    );
    let mut ws = hello(&fake).await;
    send(
        &mut ws,
        json!({"op": 6, "d": {"token": "fake-token", "session_id": session_id, "seq": 3}}),
    )
    .await;
    assert_eq!(
        next(&mut ws).await.unwrap()["op"],
        9,
        "4007 ended the session"
    );
    fake.stop().await;
}

#[actix_rt::test]
async fn zlib_stream_frames_inflate_to_hello_and_gateway_bot_needs_the_token() {
    let fake = FakeGateway::start(config()).await.unwrap();
    let mut ws = connect(&fake, "v=10&encoding=json&compress=zlib-stream").await;
    let Some(Some(Ok(Frame::Binary(bytes)))) = tokio_timeout(ws.next()).await else {
        panic!("a binary frame")
    };
    assert_eq!(&bytes[..2], &[0x78, 0x01]);
    assert!(bytes.ends_with(&[0, 0, 0xff, 0xff]));
    // One zlib stream, flushed per message: a plain decompressor reads it whole.
    let mut hello = Vec::with_capacity(1024);
    flate2::Decompress::new(true)
        .decompress_vec(&bytes, &mut hello, flate2::FlushDecompress::Sync)
        .unwrap();
    let hello: Value = serde_json::from_slice(&hello).unwrap();
    assert_eq!(hello["op"], 10);

    let client = awc::Client::new();
    let url = format!("{}/gateway/bot", fake.api_base());
    let mut ok = client
        .get(url.as_str())
        .insert_header(("Authorization", "Bot fake-token"))
        .send()
        .await
        .unwrap();
    let body: Value = ok.json().await.unwrap();
    assert_eq!(body["url"], fake.gateway_url());
    assert_eq!(body["session_start_limit"]["max_concurrency"], 1);
    let refused = client
        .get(url.as_str())
        .insert_header(("Authorization", "Bot wrong"))
        .send()
        .await
        .unwrap();
    assert_eq!(refused.status().as_u16(), 401);
    fake.stop().await;
}

#[actix_rt::test]
async fn after_op_9_the_same_socket_takes_identify_or_resume_as_discord_does() {
    let fake = FakeGateway::start(FakeConfig {
        // One Identify per bucket per millisecond: the second Identify below is never too soon.
        identify_window: Duration::from_millis(1),
        identify_jitter_tolerance: Duration::ZERO,
        ..config()
    })
    .await
    .unwrap();
    let mut ws = hello(&fake).await;
    let first = ready(&mut ws, [0, 1]).await["session_id"].clone();
    // `false`: the session is gone; a fresh Identify on the same socket starts a new one.
    assert!(fake.invalid_session(0, false));
    assert_eq!(
        next(&mut ws).await.unwrap(),
        json!({"t": null, "s": null, "op": 9, "d": false})
    );
    assert!(fake.ready_shards().is_empty(), "op 9 detaches the session");
    actix_rt::time::sleep(Duration::from_millis(2)).await;
    let second = ready(&mut ws, [0, 1]).await["session_id"].clone();
    assert_ne!(first, second);
    assert_ne!(
        fake.session(0).map(|s| s.id),
        first.as_str().map(str::to_owned)
    );
    // `true`: Resume on the same socket replays what was dispatched meanwhile, then RESUMED.
    assert!(fake.invalid_session(0, true));
    assert_eq!(next(&mut ws).await.unwrap()["d"], json!(true));
    let seq = fake.dispatch(0, "TYPING_START", json!({"n": 1})).unwrap();
    send(
        &mut ws,
        json!({"op": 6, "d": {"token": "fake-token", "session_id": second, "seq": 1}}),
    )
    .await;
    assert_eq!(next(&mut ws).await.unwrap()["s"], json!(seq));
    assert_eq!(next(&mut ws).await.unwrap()["t"], "RESUMED");
    assert_eq!(fake.ready_shards(), [0]);
    let ops: Vec<_> = fake.frames_of(0).iter().filter_map(|f| f.op).collect();
    assert_eq!(ops, [2, 2, 6]);
    assert_eq!(fake.connections().len(), 1);
    fake.stop().await;
}

/// GET `path` under the REST base with the bot's token (or none): status and JSON body.
async fn rest_get(fake: &FakeGateway, path: &str, token: Option<&str>) -> (u16, Value) {
    let mut request = awc::Client::new().get(format!("{}{path}", fake.api_base()));
    if let Some(token) = token {
        request = request.insert_header(("Authorization", format!("Bot {token}")));
    }
    let mut response = request.send().await.expect("REST answers");
    let body = response.json::<Value>().await.expect("a JSON body");
    (response.status().as_u16(), body)
}

#[actix_rt::test]
async fn zstd_stream_is_spoken_by_every_testkit_build() {
    // Not behind `cfg(feature = "zstd")`: `testkit` alone must bring it (the README's build of the
    // standalone fake is `--features testkit`, and clients such as discord.py ask for zstd-stream).
    let fake = FakeGateway::start(config()).await.unwrap();
    let mut ws = connect(&fake, "v=10&encoding=json&compress=zstd-stream").await;
    let mut decoder = zstd::stream::raw::Decoder::new().unwrap();
    let mut read = |bytes: &[u8]| -> Value {
        use zstd::stream::raw::{InBuffer, Operation, OutBuffer};
        let mut out = vec![0u8; 64 * 1024];
        let mut src = InBuffer::around(bytes);
        let mut dst = OutBuffer::around(&mut out[..]);
        decoder.run(&mut src, &mut dst).unwrap();
        assert_eq!(src.pos(), bytes.len(), "one message per websocket message");
        let n = dst.pos();
        serde_json::from_slice(&out[..n]).expect("one whole JSON message")
    };
    let Some(Some(Ok(Frame::Binary(bytes)))) = tokio_timeout(ws.next()).await else {
        panic!("a binary frame")
    };
    assert_eq!(read(&bytes)["op"], 10);
    send(&mut ws, identify([0, 1], 1)).await;
    let Some(Some(Ok(Frame::Binary(bytes)))) = tokio_timeout(ws.next()).await else {
        panic!("a binary frame")
    };
    // The same zstd context goes on across messages.
    let ready = read(&bytes);
    assert_eq!(
        (ready["t"].clone(), ready["s"].clone()),
        (json!("READY"), json!(1))
    );
    assert_eq!(
        fake.connections()[0].compress.as_deref(),
        Some("zstd-stream")
    );
    fake.stop().await;
}

#[actix_rt::test]
async fn the_configured_bot_user_is_in_ready_and_the_login_routes() {
    let fake = FakeGateway::start(FakeConfig {
        bot_user: FakeBotUser {
            id: 1_100_000_000_000_000_042,
            username: "moderator".into(),
        },
        ..config()
    })
    .await
    .unwrap();
    let (status, me) = rest_get(&fake, "/users/@me", Some("fake-token")).await;
    assert_eq!(status, 200, "{me}");
    assert_eq!(
        (&me["id"], &me["username"], &me["bot"]),
        (
            &json!("1100000000000000042"),
            &json!("moderator"),
            &json!(true)
        )
    );
    let (status, app) = rest_get(&fake, "/oauth2/applications/@me", Some("fake-token")).await;
    assert_eq!(status, 200, "{app}");
    assert_eq!(app["id"], "1100000000000000042");
    assert_eq!(app["owner"]["id"], "1100000000000000042");
    for field in [
        "name",
        "icon",
        "description",
        "bot_public",
        "bot_require_code_grant",
        "verify_key",
        "flags",
    ] {
        assert!(
            app.get(field).is_some(),
            "the application lacks {field}: {app}"
        );
    }
    assert_eq!(
        rest_get(&fake, "/users/@me", Some("wrong")).await,
        (401, json!({"message": "401: Unauthorized", "code": 0}))
    );
    assert_eq!(
        rest_get(&fake, "/users/@me", None).await,
        (401, json!({"message": "401: Unauthorized", "code": 0}))
    );
    let mut ws = hello(&fake).await;
    let d = ready(&mut ws, [0, 1]).await;
    assert_eq!(d["user"], me, "READY's user is the same bot user");
    assert_eq!(d["application"]["id"], "1100000000000000042");
    let calls: Vec<(String, u16)> = fake
        .rest_calls()
        .into_iter()
        .map(|c| (c.path, c.status))
        .collect();
    assert_eq!(
        calls,
        [
            ("/api/v10/users/@me".to_owned(), 200),
            ("/api/v10/oauth2/applications/@me".to_owned(), 200),
            ("/api/v10/users/@me".to_owned(), 401),
            ("/api/v10/users/@me".to_owned(), 401),
        ]
    );
    fake.stop().await;
}

#[actix_rt::test]
async fn unknown_routes_get_discords_json_error_and_are_recorded() {
    let fake = FakeGateway::start(config()).await.unwrap();
    assert_eq!(
        rest_get(&fake, "/applications/1000/commands", Some("fake-token")).await,
        (404, json!({"message": "404: Not Found", "code": 0}))
    );
    // A path the fake serves, with a method it does not take there.
    let mut response = awc::Client::new()
        .patch(format!("{}/users/@me", fake.api_base()))
        .insert_header(("Authorization", "Bot fake-token"))
        .send_json(&json!({"username": "renamed"}))
        .await
        .unwrap();
    assert_eq!(response.status().as_u16(), 405);
    assert_eq!(
        response.json::<Value>().await.unwrap(),
        json!({"message": "405: Method Not Allowed", "code": 0})
    );
    let calls: Vec<(String, String, u16, Value)> = fake
        .rest_calls()
        .into_iter()
        .map(|c| (c.method, c.path, c.status, c.body))
        .collect();
    assert_eq!(
        calls,
        [
            (
                "GET".to_owned(),
                "/api/v10/applications/1000/commands".to_owned(),
                404,
                Value::Null
            ),
            (
                "PATCH".to_owned(),
                "/api/v10/users/@me".to_owned(),
                405,
                json!({"username": "renamed"})
            ),
        ]
    );
    fake.stop().await;
}

#[test]
fn the_sample_message_is_one_twilight_model_reads() {
    let d = shardline::testkit::message(1_200_000_000_000_000_001, 1_100_000_000_000_000_002, "hi");
    assert!(missing_fields("MESSAGE_CREATE", &d).is_empty());
    let message: twilight_model::channel::Message =
        serde_json::from_value(d.clone()).expect("twilight-model reads it");
    assert_eq!(message.content, "hi");
    assert_eq!(message.id.get(), 1_200_000_000_000_000_001);
    assert!(
        !message.author.bot,
        "a user's message, which bots do not skip"
    );
}
