//! The standalone fake gateway (`examples/fake_gateway.rs`) driven from outside, as a client in
//! another language would: the server is a subprocess, the client a raw websocket, every fault is
//! triggered and every record read through the control API over plain HTTP.

#[path = "gateway/harness.rs"]
#[allow(dead_code)]
mod harness;

use harness::example;
use std::io::{BufRead, BufReader, Read};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use actix_codec::Framed;
use awc::ws::{Codec, Frame, Message};
use awc::BoxedSocket;
use futures_util::{SinkExt, StreamExt};
use serde_json::{json, Value};

type Ws = Framed<BoxedSocket, Codec>;

const WAIT: Duration = Duration::from_secs(10);

/// The server process, its URLs, and its log (stderr), read on a thread until it exits.
struct Server {
    child: Child,
    urls: Value,
    log: Option<std::thread::JoinHandle<String>>,
}

impl Server {
    fn start(args: &[&str]) -> Self {
        let mut child = Command::new(example("fake_gateway"))
            .args(["--port", "0"])
            .args(args)
            .env("RUST_LOG", "info")
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("fake_gateway runs");
        let mut stdout = BufReader::new(child.stdout.take().expect("stdout"));
        let mut line = String::new();
        stdout.read_line(&mut line).expect("first line");
        let urls: Value = serde_json::from_str(&line).unwrap_or_else(|e| panic!("{e}: {line:?}"));
        let mut stderr = child.stderr.take().expect("stderr");
        let log = std::thread::spawn(move || {
            let mut text = String::new();
            let _ = stderr.read_to_string(&mut text);
            text
        });
        Self {
            child,
            urls,
            log: Some(log),
        }
    }

    fn control(&self, path: &str) -> String {
        format!(
            "{}{path}",
            self.urls["control"].as_str().expect("control url")
        )
    }

    async fn post(&self, path: &str) -> (u16, Value) {
        let mut response = awc::Client::new()
            .post(self.control(path))
            .send()
            .await
            .expect("control API answers");
        let body = response.json::<Value>().await.expect("JSON");
        (response.status().as_u16(), body)
    }

    async fn post_json(&self, path: &str, body: Value) -> (u16, Value) {
        let mut response = awc::Client::new()
            .post(self.control(path))
            .send_json(&body)
            .await
            .expect("control API answers");
        let body = response.json::<Value>().await.expect("JSON");
        (response.status().as_u16(), body)
    }

    async fn get(&self, path: &str) -> Value {
        awc::Client::new()
            .get(self.control(path))
            .send()
            .await
            .expect("control API answers")
            .json::<Value>()
            .limit(1 << 20)
            .await
            .expect("JSON")
    }

    async fn connect(&self, path: &str, query: &str) -> Ws {
        let url = format!(
            "{}{path}?{query}",
            self.urls["gateway"].as_str().expect("gateway")
        );
        let (_, ws) = awc::Client::new()
            .ws(url)
            .max_frame_size(1 << 20)
            .connect()
            .await
            .expect("connects");
        ws
    }

    /// Stops the server and returns its log.
    fn stop(mut self) -> String {
        let _ = self.child.kill();
        let _ = self.child.wait();
        self.log
            .take()
            .map(|l| l.join().unwrap_or_default())
            .unwrap_or_default()
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// What the server sent next: a JSON text frame, or how the connection ended.
#[derive(Debug, PartialEq)]
enum Next {
    Json(Value),
    Binary,
    Closed(Option<u16>, Option<String>),
    /// The stream ended (or broke) without a close frame.
    Ended,
}

async fn next(ws: &mut Ws) -> Next {
    loop {
        let frame = actix_rt::time::timeout(WAIT, ws.next())
            .await
            .expect("a frame in time");
        return match frame {
            Some(Ok(Frame::Text(t))) => Next::Json(serde_json::from_slice(&t).expect("JSON")),
            Some(Ok(Frame::Binary(_))) => Next::Binary,
            Some(Ok(Frame::Close(reason))) => Next::Closed(
                reason.as_ref().map(|r| u16::from(r.code)),
                reason.and_then(|r| r.description),
            ),
            Some(Ok(_)) => continue,
            Some(Err(_)) | None => Next::Ended,
        };
    }
}

async fn next_json(ws: &mut Ws) -> Value {
    match next(ws).await {
        Next::Json(v) => v,
        other => panic!("expected a JSON frame, got {other:?}"),
    }
}

async fn send(ws: &mut Ws, frame: Value) {
    ws.send(Message::Text(frame.to_string().into()))
        .await
        .expect("sent");
}

#[actix_rt::test]
async fn every_fault_is_triggered_and_every_frame_read_back_over_http() {
    let server = Server::start(&["--heartbeat-interval-ms", "60000"]);
    let mut ws = server.connect("/", "v=10&encoding=json").await;
    assert_eq!(next_json(&mut ws).await["op"], 10);
    send(
        &mut ws,
        json!({"op": 2, "d": {"token": "fake-token", "intents": 513, "shard": [0, 1],
            "properties": {"os": "linux", "browser": "raw", "device": "raw"}}}),
    )
    .await;
    let ready = next_json(&mut ws).await;
    assert_eq!((&ready["t"], &ready["s"]), (&json!("READY"), &json!(1)));
    let session_id = ready["d"]["session_id"]
        .as_str()
        .expect("session")
        .to_owned();
    let shards = server.get("/shards").await;
    assert_eq!(shards["ready"], json!([0]));
    assert_eq!(shards["sessions"]["0"]["id"], json!(session_id));

    // Dispatches, three at once.
    let d = shardline::testkit::message(11, 22, "hi");
    let (status, seqs) = server
        .post_json(
            "/shards/0/dispatch",
            json!({"t": "MESSAGE_CREATE", "d": d, "count": 3}),
        )
        .await;
    assert_eq!(
        (status, seqs),
        (200, json!({"first_seq": 2, "last_seq": 4}))
    );
    for s in 2..=4 {
        assert_eq!(
            next_json(&mut ws).await,
            json!({"t": "MESSAGE_CREATE", "s": s, "op": 0, "d": d})
        );
    }

    // op 1, answered by a heartbeat, acknowledged.
    assert_eq!(server.post("/shards/0/request-heartbeat").await.0, 200);
    assert_eq!(next_json(&mut ws).await["op"], 1);
    send(&mut ws, json!({"op": 1, "d": 4})).await;
    assert_eq!(next_json(&mut ws).await["op"], 11);

    // ACKs stopped: the next frame after a heartbeat is the marker dispatched after it, not an
    // ACK; once resumed, the heartbeat is acknowledged again.
    assert_eq!(server.post("/shards/0/acks?enabled=false").await.0, 200);
    send(&mut ws, json!({"op": 1, "d": 4})).await;
    let (status, _) = server
        .post_json("/shards/0/dispatch", json!({"t": "MARKER", "d": {}}))
        .await;
    assert_eq!(status, 200);
    assert_eq!(next_json(&mut ws).await["t"], "MARKER");
    assert_eq!(server.post("/shards/0/acks?enabled=true").await.0, 200);
    send(&mut ws, json!({"op": 1, "d": 5})).await;
    assert_eq!(next_json(&mut ws).await["op"], 11);

    // op 7.
    assert_eq!(server.post("/shards/0/reconnect").await.0, 200);
    assert_eq!(
        next_json(&mut ws).await,
        json!({"t": null, "s": null, "op": 7, "d": null})
    );

    // op 9 `true`, answered by Resume on the same socket, as @discordjs/ws does: RESUMED, not 4005.
    assert_eq!(
        server
            .post("/shards/0/invalid-session?resumable=true")
            .await
            .0,
        200
    );
    assert_eq!(
        next_json(&mut ws).await,
        json!({"t": null, "s": null, "op": 9, "d": true})
    );
    send(
        &mut ws,
        json!({"op": 6, "d": {"token": "fake-token", "session_id": session_id, "seq": 5}}),
    )
    .await;
    assert_eq!(
        next_json(&mut ws).await,
        json!({"t": "RESUMED", "s": 6, "op": 0, "d": {}})
    );

    // A close code, with the reason in the close frame.
    assert_eq!(server.post("/shards/0/close?code=4000").await.0, 200);
    assert_eq!(
        next(&mut ws).await,
        Next::Closed(Some(4000), Some("closed by the test script".into()))
    );

    // Resume on a new connection, then a drop without a close frame.
    let mut ws = server.connect("/resume", "v=10&encoding=json").await;
    assert_eq!(next_json(&mut ws).await["op"], 10);
    send(
        &mut ws,
        json!({"op": 6, "d": {"token": "fake-token", "session_id": session_id, "seq": 6}}),
    )
    .await;
    assert_eq!(next_json(&mut ws).await["t"], "RESUMED");
    assert_eq!(server.post("/shards/0/drop").await.0, 200);
    assert_eq!(next(&mut ws).await, Next::Ended);

    // Nothing is connected now: a fault has nowhere to go.
    let (status, body) = server.post("/shards/0/reconnect").await;
    assert_eq!(status, 409, "{body}");

    // The record of what the client sent, per shard, in order.
    let frames = server.get("/frames?shard=0").await;
    let ops: Vec<(u64, u64)> = frames
        .as_array()
        .expect("list")
        .iter()
        .map(|f| (f["connection"].as_u64().unwrap(), f["op"].as_u64().unwrap()))
        .collect();
    assert_eq!(ops, [(1, 2), (1, 1), (1, 1), (1, 1), (1, 6), (2, 6)]);
    assert_eq!(frames[4]["frame"]["d"]["seq"], 5);
    let connections = server.get("/connections").await;
    assert_eq!(connections.as_array().map(Vec::len), Some(2));
    assert_eq!(connections[0]["server_close_code"], 4000);
    assert_eq!(
        connections[0]["outcome"],
        json!({"resumed": session_id, "seq": 5})
    );
    assert_eq!(connections[1]["path"], "/resume");
    assert_eq!(connections[1]["server_close_code"], Value::Null);
    // When and from where each was attached: the last seq replayed before its RESUMED.
    assert_eq!(connections[0]["attached_seq"], 5);
    assert_eq!(connections[1]["attached_seq"], 6);
    assert!(connections[1]["attached_ms"].as_u64() >= connections[0]["attached_ms"].as_u64());
    assert_eq!(
        connections[0]["replaced"],
        Value::Null,
        "a Resume replaces nothing"
    );
    assert!(connections[0]["peer"]
        .as_str()
        .is_some_and(|p| p.starts_with("127.0.0.1:")));

    let log = server.stop();
    for line in [
        "websocket connection accepted",
        "identified, READY sent",
        "invalid session (op 9)",
        "resumed, RESUMED sent",
        "reason=\"closed by the test script\"",
        "code=4000",
    ] {
        assert!(log.contains(line), "the log lacks {line:?}:\n{log}");
    }
    assert!(!log.contains("fake-token"), "the token is in the log");
}

#[actix_rt::test]
async fn compress_only_refuses_a_plain_client_and_says_why() {
    let server = Server::start(&["--compress-only"]);
    let mut plain = server.connect("/", "v=10&encoding=json").await;
    let Next::Closed(code, Some(reason)) = next(&mut plain).await else {
        panic!("a plain client is closed with a reason");
    };
    assert_eq!(code, Some(4002));
    assert!(
        reason.contains("requires transport compression"),
        "{reason}"
    );
    let mut zlib = server
        .connect("/", "v=10&encoding=json&compress=zlib-stream")
        .await;
    assert_eq!(next(&mut zlib).await, Next::Binary, "Hello, compressed");
    let connections = server.get("/connections").await;
    assert_eq!(connections[0]["server_close_code"], 4002);
    assert_eq!(connections[1]["compress"], "zlib-stream");
    let log = server.stop();
    assert!(
        log.contains("refusing the connection's query")
            && log.contains("requires transport compression"),
        "{log}"
    );
}

#[actix_rt::test]
async fn unknown_arguments_are_refused_and_documented_ones_accepted() {
    let output = Command::new(example("fake_gateway"))
        .args(["--port", "0", "--compres-only"])
        .output()
        .expect("runs");
    assert_eq!(output.status.code(), Some(64));
    assert!(String::from_utf8_lossy(&output.stderr).contains("unknown argument \"--compres-only\""));
    // Every flag in the example's header is one it accepts.
    let server = Server::start(&[
        "--shards",
        "2",
        "--max-concurrency",
        "2",
        "--heartbeat-interval-ms",
        "1000",
        "--identify-window-ms",
        "100",
        "--rest-rate-limit",
        "2/100",
        "--token",
        "other-token",
        "--bot-name",
        "moderator",
        "--bot-id",
        "1100000000000000042",
        "--guilds",
        "4",
        "--max-guilds-per-shard",
        "9",
        "--compress-only",
        "--flood-event",
        "MESSAGE_CREATE",
        "--flood-count",
        "3",
    ]);
    assert_eq!(
        server.get("/shards").await,
        json!({"ready": [], "sessions": {}})
    );
    let api = server.urls["api_base"]
        .as_str()
        .expect("api_base")
        .to_owned();
    let me: Value = awc::Client::new()
        .get(format!("{api}/users/@me"))
        .insert_header(("Authorization", "Bot other-token"))
        .send()
        .await
        .expect("answers")
        .json()
        .await
        .expect("JSON");
    assert_eq!(
        (&me["id"], &me["username"]),
        (&json!("1100000000000000042"), &json!("moderator"))
    );
    server.stop();
}

/// The JSON after `-d '` in the first dispatch `curl` of `text` (a README or the example's header,
/// whose lines may carry a `//! ` prefix).
fn documented_dispatch(text: &str) -> (String, Value) {
    let text: String = text
        .lines()
        .map(|l| l.strip_prefix("//! ").unwrap_or(l))
        .collect::<Vec<_>>()
        .join("\n");
    let start = text.find("/dispatch").expect("a dispatch example");
    let url_end = text[start..].find('\'').expect("quoted URL") + start;
    let path = text[start..url_end].to_owned();
    let body_start = text[url_end..].find("-d '").expect("a -d body") + url_end + 4;
    let body_end = text[body_start..].find('\'').expect("closing quote") + body_start;
    let body = serde_json::from_str(&text[body_start..body_end])
        .unwrap_or_else(|e| panic!("{e}: {}", &text[body_start..body_end]));
    (path, body)
}

/// Connects and identifies shard 0 of 1 on a raw websocket; READY's `d`.
async fn identified(server: &Server) -> (Ws, Value) {
    let mut ws = server.connect("/", "v=10&encoding=json").await;
    assert_eq!(next_json(&mut ws).await["op"], 10);
    send(
        &mut ws,
        json!({"op": 2, "d": {"token": "fake-token", "intents": 513, "shard": [0, 1],
            "properties": {"os": "linux", "browser": "raw", "device": "raw"}}}),
    )
    .await;
    let ready = next_json(&mut ws).await;
    assert_eq!(ready["t"], "READY");
    (ws, ready["d"].clone())
}

#[actix_rt::test]
async fn documented_dispatches_pass_strict_mode_and_incomplete_ones_are_named() {
    let server = Server::start(&["--heartbeat-interval-ms", "60000"]);
    let (mut ws, _) = identified(&server).await;
    let readme = include_str!("../README.md");
    let header = include_str!("../examples/fake_gateway.rs");
    for (source, text) in [("README.md", readme), ("examples/fake_gateway.rs", header)] {
        let (path, body) = documented_dispatch(text);
        assert!(path.ends_with("?strict=true"), "{source}: {path}");
        assert_eq!(body["t"], "MESSAGE_CREATE", "{source}");
        let (status, answer) = server
            .post_json("/shards/0/dispatch?strict=true", body.clone())
            .await;
        assert_eq!(status, 200, "{source}: {answer}");
        let count = body["count"].as_u64().unwrap_or(1);
        assert_eq!(
            answer["last_seq"].as_u64().unwrap() - answer["first_seq"].as_u64().unwrap() + 1,
            count
        );
        for _ in 0..count {
            assert_eq!(next_json(&mut ws).await["d"], body["d"]);
        }
    }

    // The shape the README showed before: refused in strict mode, sent with a warning otherwise.
    let bare = json!({"t": "MESSAGE_CREATE", "d": {"id": "1", "channel_id": "2", "content": "hi"}});
    let (status, answer) = server
        .post_json("/shards/0/dispatch?strict=true", bare.clone())
        .await;
    assert_eq!(status, 422, "{answer}");
    assert_eq!(
        answer["missing"],
        json!([
            "author",
            "timestamp",
            "edited_timestamp",
            "tts",
            "mention_everyone",
            "mentions",
            "mention_roles",
            "attachments",
            "embeds",
            "pinned",
            "type"
        ])
    );
    let (status, answer) = server.post_json("/shards/0/dispatch", bare.clone()).await;
    assert_eq!(status, 200, "{answer}");
    assert_eq!(answer["missing"].as_array().map(Vec::len), Some(11));
    // Nothing of the refused one was sent: the next frame is the one sent without `strict`.
    let frame = next_json(&mut ws).await;
    assert_eq!(
        (&frame["d"], &frame["s"]),
        (&bare["d"], &answer["first_seq"])
    );
    // Events the fake knows no rule for pass in strict mode as they are.
    let (status, _) = server
        .post_json(
            "/shards/0/dispatch?strict=true",
            json!({"t": "SOMETHING_NEW", "d": {}}),
        )
        .await;
    assert_eq!(status, 200);
    let log = server.stop();
    assert!(
        log.contains("dispatch refused (strict)") && log.contains("dispatch lacks fields"),
        "{log}"
    );
}

#[actix_rt::test]
async fn the_default_flood_is_a_whole_message() {
    let server = Server::start(&["--flood-event", "MESSAGE_CREATE", "--flood-count", "2"]);
    let (mut ws, _) = identified(&server).await;
    for s in 2..=3 {
        let frame = next_json(&mut ws).await;
        assert_eq!(
            (&frame["t"], &frame["s"]),
            (&json!("MESSAGE_CREATE"), &json!(s))
        );
        assert_eq!(
            shardline::testkit::missing_fields("MESSAGE_CREATE", &frame["d"]),
            Vec::<String>::new()
        );
        let message: twilight_model::channel::Message =
            serde_json::from_value(frame["d"].clone()).expect("twilight-model reads it");
        assert_eq!(message.content, "flood");
    }
    server.stop();
}

#[actix_rt::test]
async fn a_dispatch_between_connections_waits_for_the_resume_and_409_comes_once_the_session_ended()
{
    let server = Server::start(&["--heartbeat-interval-ms", "60000"]);
    let (mut ws, ready) = identified(&server).await;
    let session_id = ready["session_id"].as_str().unwrap().to_owned();

    // op 7 with `hold`: the dispatch right after it never goes out on the old connection (the
    // heartbeat's ACK comes first), and comes back as the resume's replay.
    assert_eq!(server.post("/shards/0/reconnect?hold=true").await.0, 200);
    assert_eq!(next_json(&mut ws).await["op"], 7);
    let held = json!({"t": "MARKER", "d": {"n": 1}});
    let (status, seqs) = server.post_json("/shards/0/dispatch", held).await;
    assert_eq!((status, &seqs["first_seq"]), (200, &json!(2)));
    send(&mut ws, json!({"op": 1, "d": 1})).await;
    assert_eq!(
        next_json(&mut ws).await["op"],
        11,
        "the ACK, not the dispatch"
    );
    drop(ws);

    // No connection now, but the session can resume: a dispatch is kept, not refused.
    let (status, seqs) = server
        .post_json("/shards/0/dispatch", json!({"t": "MARKER", "d": {"n": 2}}))
        .await;
    assert_eq!((status, &seqs["first_seq"]), (200, &json!(3)), "{seqs}");
    assert_eq!(
        server.post("/shards/0/reconnect").await.0,
        409,
        "no live connection"
    );
    let mut ws = server.connect("/resume", "v=10&encoding=json").await;
    assert_eq!(next_json(&mut ws).await["op"], 10);
    send(
        &mut ws,
        json!({"op": 6, "d": {"token": "fake-token", "session_id": session_id, "seq": 1}}),
    )
    .await;
    for (s, n) in [(2, 1), (3, 2)] {
        assert_eq!(
            next_json(&mut ws).await,
            json!({"t": "MARKER", "s": s, "op": 0, "d": {"n": n}})
        );
    }
    assert_eq!(next_json(&mut ws).await["t"], "RESUMED");

    // op 7 with dispatches in the same call: none on the old connection, all in the replay.
    let d = shardline::testkit::message(5, 6, "replayed");
    let (status, seqs) = server
        .post_json(
            "/shards/0/reconnect?strict=true",
            json!({"t": "MESSAGE_CREATE", "d": d, "count": 2}),
        )
        .await;
    assert_eq!(
        (status, seqs),
        (200, json!({"first_seq": 5, "last_seq": 6}))
    );
    assert_eq!(next_json(&mut ws).await["op"], 7);
    send(&mut ws, json!({"op": 1, "d": 4})).await;
    assert_eq!(
        next_json(&mut ws).await["op"],
        11,
        "the ACK, not the dispatches"
    );
    let (status, refused) = server
        .post_json(
            "/shards/0/reconnect?strict=true",
            json!({"t": "MESSAGE_CREATE", "d": {"id": "1"}}),
        )
        .await;
    assert_eq!(status, 422, "{refused}");
    drop(ws);
    let mut ws = server.connect("/resume", "v=10&encoding=json").await;
    assert_eq!(next_json(&mut ws).await["op"], 10);
    send(
        &mut ws,
        json!({"op": 6, "d": {"token": "fake-token", "session_id": session_id, "seq": 4}}),
    )
    .await;
    for s in [5, 6] {
        assert_eq!(
            next_json(&mut ws).await,
            json!({"t": "MESSAGE_CREATE", "s": s, "op": 0, "d": d})
        );
    }
    assert_eq!(next_json(&mut ws).await["t"], "RESUMED");

    // op 9 `false` ends the session: now a dispatch has nowhere to go.
    assert_eq!(
        server
            .post("/shards/0/invalid-session?resumable=false")
            .await
            .0,
        200
    );
    let (status, answer) = server
        .post_json("/shards/0/dispatch", json!({"t": "MARKER", "d": {}}))
        .await;
    assert_eq!(status, 409, "{answer}");
    server.stop();
}

#[actix_rt::test]
async fn an_unknown_rest_route_is_logged_with_its_path() {
    let server = Server::start(&[]);
    let api = server.urls["api_base"]
        .as_str()
        .expect("api_base")
        .to_owned();
    let mut response = awc::Client::new()
        .get(format!("{api}/applications/1000/commands"))
        .insert_header(("Authorization", "Bot fake-token"))
        .send()
        .await
        .expect("answers");
    assert_eq!(response.status().as_u16(), 404);
    assert_eq!(
        response.json::<Value>().await.unwrap(),
        json!({"message": "404: Not Found", "code": 0})
    );
    let rest = server.get("/rest").await;
    assert_eq!(rest[0]["path"], "/api/v10/applications/1000/commands");
    assert_eq!(rest[0]["status"], 404);
    let log = server.stop();
    assert!(
        log.contains("no such route here") && log.contains("/api/v10/applications/1000/commands"),
        "{log}"
    );
}

/// Identifies shard `shard` of `total` on a raw websocket; the READY's `d`, or the close code.
async fn identify_as(server: &Server, shard: u32, total: u32) -> (Ws, Result<Value, Option<u16>>) {
    let mut ws = server.connect("/", "v=10&encoding=json").await;
    assert_eq!(next_json(&mut ws).await["op"], 10);
    send(
        &mut ws,
        json!({"op": 2, "d": {"token": "fake-token", "intents": 513, "shard": [shard, total],
            "properties": {"os": "linux", "browser": "raw", "device": "raw"}}}),
    )
    .await;
    let answer = match next(&mut ws).await {
        Next::Json(ready) => {
            assert_eq!(ready["t"], "READY");
            Ok(ready["d"].clone())
        }
        Next::Closed(code, _) => Err(code),
        other => panic!("unexpected {other:?}"),
    };
    (ws, answer)
}

fn guild_ids(ready: &Value) -> Vec<u64> {
    ready["guilds"]
        .as_array()
        .unwrap()
        .iter()
        .map(|g| g["id"].as_str().unwrap().parse().unwrap())
        .collect()
}

#[actix_rt::test]
async fn guilds_follow_each_connections_total_and_the_recommendation_and_cap_are_controlled_over_http(
) {
    let server = Server::start(&[
        "--guilds",
        "6",
        "--max-guilds-per-shard",
        "3",
        "--identify-window-ms",
        "1",
    ]);
    let all: Vec<u64> = server.get("/guilds").await["guilds"]
        .as_array()
        .unwrap()
        .iter()
        .map(|g| g.as_str().unwrap().parse().unwrap())
        .collect();
    assert_eq!(all.len(), 6);
    // Shard 1 of 2 and shard 1 of 3 of one bot, at once: each READY lists the guilds the formula
    // gives its own total.
    let (mut of_two, ready) = identify_as(&server, 1, 2).await;
    let ready_two = ready.expect("READY");
    let (mut of_three, ready) = identify_as(&server, 1, 3).await;
    let ready_three = ready.expect("READY");
    let owned = |shard: u64, total: u64| -> Vec<u64> {
        all.iter()
            .copied()
            .filter(|g| (g >> 22) % total == shard)
            .collect()
    };
    assert_eq!(guild_ids(&ready_two), owned(1, 2));
    assert_eq!(guild_ids(&ready_three), owned(1, 3));
    assert_eq!(guild_ids(&ready_two).len(), 3);
    for (ws, n) in [(&mut of_two, 3), (&mut of_three, 2)] {
        for _ in 0..n {
            assert_eq!(next_json(ws).await["t"], "GUILD_CREATE");
        }
    }
    // A dispatch about a guild both connections own reaches both, each under its own seq.
    let both = owned(1, 2)
        .into_iter()
        .find(|g| owned(1, 3).contains(g))
        .expect("a guild on shard 1 of 2 and of 3");
    let (status, answer) = server
        .post_json(
            &format!("/guilds/{both}/dispatch"),
            json!({"t": "TYPING_START", "d": {"channel_id": "2", "user_id": "3", "timestamp": 1, "guild_id": both.to_string()}}),
        )
        .await;
    assert_eq!(status, 200, "{answer}");
    assert_eq!(
        answer["sent"],
        json!([
            {"shard": 1, "total": 2, "first_seq": 5, "last_seq": 5},
            {"shard": 1, "total": 3, "first_seq": 4, "last_seq": 4},
        ])
    );
    for ws in [&mut of_two, &mut of_three] {
        let frame = next_json(ws).await;
        assert_eq!(frame["t"], "TYPING_START");
        assert_eq!(frame["d"]["guild_id"], both.to_string());
    }
    let connections = server.get("/connections").await;
    let totals: Vec<&Value> = connections
        .as_array()
        .unwrap()
        .iter()
        .map(|c| &c["total"])
        .collect();
    assert_eq!(totals, [&json!(2), &json!(3)]);
    // The recommendation changes at run time.
    assert_eq!(
        server
            .post_json("/recommended-shards", json!({"shards": 0}))
            .await
            .0,
        400
    );
    assert_eq!(
        server
            .post_json("/recommended-shards", json!({"shards": 5}))
            .await,
        (200, json!({"shards": 5}))
    );
    let api = server.urls["api_base"].as_str().unwrap().to_owned();
    let bot: Value = awc::Client::new()
        .get(format!("{api}/gateway/bot"))
        .insert_header(("Authorization", "Bot fake-token"))
        .send()
        .await
        .expect("answers")
        .json()
        .await
        .expect("JSON");
    assert_eq!(bot["shards"], 5);
    // Shard 0 of 1 would hold all 6, past the cap of 3: 4011 at once.
    let (_, refused) = identify_as(&server, 0, 1).await;
    assert_eq!(refused.err(), Some(Some(4011)));
    // Two more guilds: shard 1 of 2 gets those it owns; past 3 guilds, it is closed with 4011.
    let (status, added) = server.post_json("/guilds", json!({"count": 2})).await;
    assert_eq!(status, 200);
    let added: Vec<u64> = added["added"]
        .as_array()
        .unwrap()
        .iter()
        .map(|g| g.as_str().unwrap().parse().unwrap())
        .collect();
    let joined: Vec<u64> = added
        .iter()
        .copied()
        .filter(|g| (g >> 22) % 2 == 1)
        .collect();
    assert_eq!(
        joined.len(),
        1,
        "of two consecutive guilds, one is on shard 1 of 2"
    );
    let frame = next_json(&mut of_two).await;
    assert_eq!(frame["t"], "GUILD_CREATE");
    assert_eq!(frame["d"]["id"], joined[0].to_string());
    assert_eq!(
        next(&mut of_two).await,
        Next::Closed(
            Some(4011),
            Some("the shard holds more guilds than the cap".into())
        )
    );
    server.stop();
}
