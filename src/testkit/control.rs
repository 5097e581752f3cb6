//! The control API: the scripting a Rust test does through [`FakeGateway`](super::FakeGateway),
//! over plain HTTP under `/_fake`, so that a test in any language can trigger each fault per shard
//! and read what its client sent. Not part of Discord's API.
//!
//! | call | effect |
//! |---|---|
//! | `GET /_fake/shards` | ready shards and each shard's session |
//! | `GET /_fake/connections` | every connection: shard, path, query, close codes, outcome, peer, when and at which seq a session was attached, the session an Identify replaced |
//! | `GET /_fake/frames[?shard=N]` | every frame clients sent (for shard N) |
//! | `GET /_fake/rest` | every REST call and the status answered |
//! | `POST /_fake/shards/{n}/dispatch[?strict=true]` body `{"t", "d", "count"?}` | dispatches (`count` times) |
//! | `POST /_fake/shards/{n}/reconnect[?hold=true]` | op 7; `hold`: nothing more on that connection, later dispatches wait for the resume's replay |
//! | `POST /_fake/shards/{n}/reconnect[?strict=true]` body `{"t", "d", "count"?}` | op 7 held, and these dispatches right behind it, in one step: they reach the client only in the resume's replay |
//! | `POST /_fake/shards/{n}/invalid-session?resumable=true\|false` | op 9 |
//! | `POST /_fake/shards/{n}/request-heartbeat` | op 1 |
//! | `POST /_fake/shards/{n}/close?code=4000` | closes with that code |
//! | `POST /_fake/shards/{n}/drop` | ends the connection without a close frame |
//! | `POST /_fake/shards/{n}/acks?enabled=false\|true` | stops or resumes heartbeat ACKs |
//! | `POST /_fake/drop-all` | drops every connection |
//! | `GET /_fake/guilds` | the bot's guilds (ids as strings) |
//! | `POST /_fake/guilds` body `{"count"}` | the bot joins `count` guilds: `GUILD_CREATE` to their shards, 4011 to shards past the cap |
//! | `POST /_fake/guilds/{id}/dispatch[?strict=true]` body `{"t", "d", "count"?}` | dispatches to every live session whose shard owns the guild under its total (both sets while a bot reshards) |
//! | `POST /_fake/recommended-shards` body `{"shards"}` | the shard count `GET /gateway/bot` recommends from now on |
//!
//! A dispatch goes into the shard's session: sent now if a connection is attached to it, and
//! otherwise kept for the replay when the client resumes; it answers 409 only when the shard has no
//! session or its session ended (op 9 `false`, a close that ends it). The other shard calls act on
//! the live connection and answer 409 when there is none. A dispatch whose `d` lacks a field
//! Discord always sends in that event ([`missing_fields`](super::missing_fields)) is logged as a
//! warning and the answer lists the fields in `missing`; with `?strict=true` it is refused (422)
//! and nothing is sent. Times are milliseconds since the fake started. docs/fake-gateway.md lists
//! every route of the fake.

use std::sync::Mutex;

use actix_web::{web, HttpResponse};
use serde::Deserialize;
use serde_json::{json, Value};

use super::state::Shared;
use super::state::{Command, State};
use super::ConnectionOutcome;

fn lock(shared: &Mutex<State>) -> std::sync::MutexGuard<'_, State> {
    shared.lock().unwrap_or_else(|p| p.into_inner())
}

pub(crate) fn routes(config: &mut web::ServiceConfig) {
    config
        .route("/_fake/shards", web::get().to(shards))
        .route("/_fake/connections", web::get().to(connections))
        .route("/_fake/frames", web::get().to(frames))
        .route("/_fake/rest", web::get().to(rest_calls))
        .route("/_fake/drop-all", web::post().to(drop_all))
        .route("/_fake/guilds", web::get().to(guilds))
        .route("/_fake/guilds", web::post().to(add_guilds))
        .route(
            "/_fake/guilds/{guild}/dispatch",
            web::post().to(dispatch_guild),
        )
        .route(
            "/_fake/recommended-shards",
            web::post().to(recommended_shards),
        )
        .route("/_fake/shards/{shard}/dispatch", web::post().to(dispatch))
        .route("/_fake/shards/{shard}/reconnect", web::post().to(reconnect))
        .route("/_fake/shards/{shard}/{action}", web::post().to(action));
}

async fn shards(shared: Shared) -> HttpResponse {
    let state = lock(&shared);
    let mut ready: Vec<u32> = state
        .current
        .keys()
        .copied()
        .filter(|&s| state.live_conn_of(s).is_some())
        .collect();
    ready.sort_unstable();
    let sessions: serde_json::Map<String, Value> = state
        .current
        .keys()
        .filter_map(|&shard| {
            state.snapshot(shard).map(|s| {
                (
                    shard.to_string(),
                    json!({"id": s.id, "seq": s.seq, "resumable": s.resumable}),
                )
            })
        })
        .collect();
    HttpResponse::Ok().json(json!({"ready": ready, "sessions": sessions}))
}

async fn connections(shared: Shared) -> HttpResponse {
    let state = lock(&shared);
    let list: Vec<Value> = state
        .conns
        .iter()
        .map(|c| {
            let outcome = match &c.outcome {
                ConnectionOutcome::None => json!(null),
                ConnectionOutcome::Identified { session_id } => {
                    json!({"identified": session_id})
                }
                ConnectionOutcome::Resumed { session_id, seq } => {
                    json!({"resumed": session_id, "seq": seq})
                }
            };
            json!({
                "id": c.id,
                "shard": c.shard,
                "total": c.total,
                "path": c.path,
                "query": c.query,
                "compress": c.compress,
                "opened_ms": state.millis_since_start(c.opened_at),
                "closed_ms": c.closed_at.map(|t| state.millis_since_start(t)),
                "client_close_code": c.client_close_code,
                "client_closed_ms": c.client_closed_at.map(|t| state.millis_since_start(t)),
                "server_close_code": c.server_close_code,
                "outcome": outcome,
                "peer": c.peer.map(|p| p.to_string()),
                "attached_ms": c.attached_at.map(|t| state.millis_since_start(t)),
                "attached_seq": c.attached_seq,
                "replaced": c.replaced.as_ref().map(|r| {
                    json!({"session_id": r.id, "seq": r.seq, "resumable": r.resumable})
                }),
            })
        })
        .collect();
    HttpResponse::Ok().json(list)
}

#[derive(Deserialize)]
struct ShardQuery {
    shard: Option<u32>,
}

async fn frames(shared: Shared, query: web::Query<ShardQuery>) -> HttpResponse {
    let state = lock(&shared);
    let list: Vec<Value> = state
        .frames
        .iter()
        .filter(|f| query.shard.is_none_or(|s| f.shard == Some(s)))
        .map(|f| {
            json!({
                "connection": f.connection,
                "shard": f.shard,
                "at_ms": state.millis_since_start(f.at),
                "op": f.op,
                // The frame itself, or its text if it was not JSON.
                "frame": if f.json.is_null() { json!(f.raw) } else { f.json.clone() },
            })
        })
        .collect();
    HttpResponse::Ok().json(list)
}

async fn rest_calls(shared: Shared) -> HttpResponse {
    let state = lock(&shared);
    let list: Vec<Value> = state
        .rest_calls
        .iter()
        .map(|c| {
            json!({
                "method": c.method,
                "path": c.path,
                "status": c.status,
                "body": c.body,
                "at_ms": state.millis_since_start(c.at),
            })
        })
        .collect();
    HttpResponse::Ok().json(list)
}

async fn drop_all(shared: Shared) -> HttpResponse {
    let dropped = lock(&shared).drop_all();
    tracing::info!(dropped, "fake control: dropped every connection");
    HttpResponse::Ok().json(json!({"dropped": dropped}))
}

async fn guilds(shared: Shared) -> HttpResponse {
    let ids: Vec<String> = lock(&shared).guilds.iter().map(u64::to_string).collect();
    HttpResponse::Ok().json(json!({"guilds": ids}))
}

#[derive(Deserialize)]
struct AddGuildsBody {
    count: u32,
}

async fn add_guilds(shared: Shared, body: web::Json<AddGuildsBody>) -> HttpResponse {
    let added = lock(&shared).add_guilds(body.count);
    tracing::info!(count = added.len(), "fake control: guilds added");
    let ids: Vec<String> = added.iter().map(u64::to_string).collect();
    HttpResponse::Ok().json(json!({"added": ids}))
}

async fn dispatch_guild(
    shared: Shared,
    guild: web::Path<u64>,
    query: web::Query<DispatchQuery>,
    body: web::Json<DispatchBody>,
) -> HttpResponse {
    let guild = guild.into_inner();
    let body = body.into_inner();
    // Refusals are logged against shard 0: the body is the same whichever shard it goes to.
    let (d, count, missing) = match check(0, &body, query.strict) {
        Ok(checked) => checked,
        Err(refused) => return refused.response(),
    };
    let sent = lock(&shared).dispatch_guild(guild, &body.t, &d, count);
    if sent.is_empty() {
        return HttpResponse::Conflict().json(json!({
            "error": format!("no live session owns guild {guild}")
        }));
    }
    let to: Vec<Value> = sent
        .iter()
        .map(|&(shard, total, first)| {
            json!({"shard": shard, "total": total, "first_seq": first, "last_seq": first + count as u64 - 1})
        })
        .collect();
    let mut answer = json!({ "sent": to });
    if !missing.is_empty() {
        answer["missing"] = json!(missing);
    }
    HttpResponse::Ok().json(answer)
}

#[derive(Deserialize)]
struct RecommendedBody {
    shards: u32,
}

async fn recommended_shards(shared: Shared, body: web::Json<RecommendedBody>) -> HttpResponse {
    if body.shards == 0 {
        return bad_request("shards must be at least 1");
    }
    lock(&shared).config.shards = body.shards;
    tracing::info!(
        shards = body.shards,
        "fake control: recommended shard count changed"
    );
    HttpResponse::Ok().json(json!({"shards": body.shards}))
}

#[derive(Deserialize)]
struct DispatchBody {
    t: String,
    d: Value,
    count: Option<usize>,
}

#[derive(Deserialize)]
struct DispatchQuery {
    #[serde(default)]
    strict: bool,
}

async fn dispatch(
    shared: Shared,
    shard: web::Path<u32>,
    query: web::Query<DispatchQuery>,
    body: web::Json<DispatchBody>,
) -> HttpResponse {
    let shard = shard.into_inner();
    let body = body.into_inner();
    let (d, count, missing) = match check(shard, &body, query.strict) {
        Ok(checked) => checked,
        Err(refused) => return refused.response(),
    };
    let t = body.t;
    let seqs = lock(&shared).dispatch(shard, &t, &mut std::iter::repeat_n(d.as_str(), count));
    match seqs {
        Some((first, last)) => {
            tracing::info!(shard, event = %t, count, first, last, "fake control: dispatched");
            HttpResponse::Ok().json(seqs_answer(first, last, &missing))
        }
        None => HttpResponse::Conflict().json(json!({
            "error": format!("shard {shard} has no session that can take a dispatch (none yet, or it ended)")
        })),
    }
}

/// Why a dispatch body was refused.
enum Refusal {
    ZeroCount,
    /// `?strict=true` and these fields Discord always sends are missing.
    Incomplete {
        event: String,
        missing: Vec<String>,
    },
}

impl Refusal {
    fn response(self) -> HttpResponse {
        match self {
            Self::ZeroCount => bad_request("count must be at least 1"),
            Self::Incomplete { event, missing } => {
                HttpResponse::UnprocessableEntity().json(json!({
                    "error": format!("{event} lacks fields Discord always sends"),
                    "missing": missing,
                }))
            }
        }
    }
}

/// A dispatch body's `d` serialized, its count, and the fields it lacks; or why it is refused.
fn check(
    shard: u32,
    body: &DispatchBody,
    strict: bool,
) -> Result<(String, usize, Vec<String>), Refusal> {
    let count = body.count.unwrap_or(1);
    if count == 0 {
        return Err(Refusal::ZeroCount);
    }
    let t = &body.t;
    let missing = super::missing_fields(t, &body.d);
    if !missing.is_empty() {
        if strict {
            tracing::warn!(shard, event = %t, ?missing, "fake control: dispatch refused (strict): fields Discord always sends are missing");
            return Err(Refusal::Incomplete {
                event: t.clone(),
                missing,
            });
        }
        tracing::warn!(shard, event = %t, ?missing, "fake control: dispatch lacks fields Discord always sends; typed clients may reject it");
    }
    Ok((body.d.to_string(), count, missing))
}

fn seqs_answer(first: u64, last: u64, missing: &[String]) -> Value {
    let mut answer = json!({"first_seq": first, "last_seq": last});
    if !missing.is_empty() {
        answer["missing"] = json!(missing);
    }
    answer
}

#[derive(Deserialize)]
struct ReconnectQuery {
    #[serde(default)]
    hold: bool,
    #[serde(default)]
    strict: bool,
}

/// op 7; held (nothing more on that connection) with `hold` or a body, whose dispatches then go
/// into the session under the same lock: no resume can come between, so they reach the client
/// only in the replay, however fast it reconnects.
async fn reconnect(
    shared: Shared,
    shard: web::Path<u32>,
    query: web::Query<ReconnectQuery>,
    body: web::Bytes,
) -> HttpResponse {
    let shard = shard.into_inner();
    let replay = if body.is_empty() {
        None
    } else {
        let Ok(replay) = serde_json::from_slice::<DispatchBody>(&body) else {
            return bad_request("the body, if any, is a dispatch: {\"t\", \"d\", \"count\"?}");
        };
        match check(shard, &replay, query.strict) {
            Ok((d, count, missing)) => Some((replay.t, d, count, missing)),
            Err(refused) => return refused.response(),
        }
    };
    let mut state = lock(&shared);
    let sent = if replay.is_some() || query.hold {
        state.reconnect_holding(shard)
    } else {
        state.send_to_shard(
            shard,
            Command::Send(vec![r#"{"t":null,"s":null,"op":7,"d":null}"#.into()]),
        )
    };
    if !sent {
        return no_session(shard);
    }
    let Some((t, d, count, missing)) = replay else {
        tracing::info!(shard, hold = query.hold, "fake control: op 7 sent");
        return HttpResponse::Ok().json(json!({"ok": true}));
    };
    match state.dispatch(shard, &t, &mut std::iter::repeat_n(d.as_str(), count)) {
        Some((first, last)) => {
            tracing::info!(shard, event = %t, count, first, last, "fake control: op 7 sent, dispatches kept for the replay");
            HttpResponse::Ok().json(seqs_answer(first, last, &missing))
        }
        None => no_session(shard),
    }
}

#[derive(Deserialize)]
struct ActionQuery {
    resumable: Option<bool>,
    code: Option<u16>,
    enabled: Option<bool>,
}

async fn action(
    shared: Shared,
    path: web::Path<(u32, String)>,
    query: web::Query<ActionQuery>,
) -> HttpResponse {
    let (shard, action) = path.into_inner();
    let mut state = lock(&shared);
    let op = |frame: &'static str| Command::Send(vec![frame.into()]);
    let sent = match action.as_str() {
        "request-heartbeat" => {
            state.send_to_shard(shard, op(r#"{"t":null,"s":null,"op":1,"d":null}"#))
        }
        "invalid-session" => {
            let Some(resumable) = query.resumable else {
                return bad_request("invalid-session needs ?resumable=true or false");
            };
            state.invalid_session(shard, resumable)
        }
        "close" => {
            let Some(code) = query.code.filter(|c| (1000..5000).contains(c)) else {
                return bad_request("close needs ?code= between 1000 and 4999");
            };
            state.send_to_shard(shard, Command::Close(code))
        }
        "drop" => state.send_to_shard(shard, Command::Drop),
        "acks" => {
            let Some(enabled) = query.enabled else {
                return bad_request("acks needs ?enabled=true or false");
            };
            // Kept for the shard, whether or not it is connected now.
            state.set_ack_heartbeats(shard, enabled);
            tracing::info!(shard, enabled, "fake control: heartbeat ACKs");
            return HttpResponse::Ok().json(json!({"ok": true}));
        }
        other => {
            return HttpResponse::NotFound()
                .json(json!({"error": format!("unknown action {other:?}")}))
        }
    };
    drop(state);
    if sent {
        tracing::info!(shard, action = %action, "fake control: done");
        HttpResponse::Ok().json(json!({"ok": true}))
    } else {
        no_session(shard)
    }
}

fn bad_request(why: &str) -> HttpResponse {
    HttpResponse::BadRequest().json(json!({"error": why}))
}

fn no_session(shard: u32) -> HttpResponse {
    HttpResponse::Conflict().json(json!({
        "error": format!("shard {shard} has no session attached to a live connection")
    }))
}
