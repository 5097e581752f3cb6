//! The fake's REST routes beyond `GET /gateway/bot`: the calls clients make when they log in (the
//! bot user, its application) and the channel-message calls a bot makes when it acts on an event
//! (delete a message, post one), as strict as Discord's on what a test can check: the token, 404
//! for ids it does not know, rate-limit headers on every answer and a 429 past the limit. Any
//! other route is answered with Discord's JSON 404 (or 405 for a known path and another method).
//! Every call is recorded, the unknown ones logged as warnings. docs/fake-gateway.md lists them.
//!
//! The fake knows the messages it dispatched as `MESSAGE_CREATE` (by `channel_id` and `id`) and
//! the ones created here; a channel exists once one of its messages was dispatched.

use std::sync::Mutex;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use actix_web::{web, HttpRequest, HttpResponse};
use serde_json::{json, Value};

use super::state::{RestBucket, RestCall, Shared, State};

fn lock(shared: &Mutex<State>) -> std::sync::MutexGuard<'_, State> {
    shared.lock().unwrap_or_else(|p| p.into_inner())
}

pub(crate) fn routes(config: &mut web::ServiceConfig) {
    // A known path with a method it does not take is answered as Discord does (405, JSON), and
    // recorded like any other call.
    config
        .service(
            web::resource("/api/v10/channels/{channel}/messages/{message}")
                .route(web::delete().to(delete_message))
                .default_service(web::to(method_not_allowed)),
        )
        .service(
            web::resource("/api/v10/channels/{channel}/messages")
                .route(web::post().to(create_message))
                .default_service(web::to(method_not_allowed)),
        )
        .service(
            web::resource("/api/v10/users/@me")
                .route(web::get().to(current_user))
                .default_service(web::to(method_not_allowed)),
        )
        .service(
            web::resource("/api/v10/oauth2/applications/@me")
                .route(web::get().to(current_application))
                .default_service(web::to(method_not_allowed)),
        );
}

/// Any route the fake does not serve: Discord's JSON error (docs/protocol.md §10), recorded and
/// logged, so that a bot author sees which route their client wanted.
pub(crate) async fn not_found(req: HttpRequest, body: web::Bytes, shared: Shared) -> HttpResponse {
    unknown(&req, &body, &shared, 404, "404: Not Found")
}

pub(crate) async fn method_not_allowed(
    req: HttpRequest,
    body: web::Bytes,
    shared: Shared,
) -> HttpResponse {
    unknown(&req, &body, &shared, 405, "405: Method Not Allowed")
}

fn unknown(
    req: &HttpRequest,
    body: &[u8],
    shared: &Shared,
    status: u16,
    message: &str,
) -> HttpResponse {
    let method = req.method().as_str().to_owned();
    let path = req.path().to_owned();
    tracing::warn!(%method, %path, status, "fake REST: no such route here (see docs/fake-gateway.md for the routes the fake answers)");
    lock(shared).rest_calls.push(RestCall {
        method,
        path,
        status,
        body: serde_json::from_slice(body).unwrap_or(Value::Null),
        at: Instant::now(),
    });
    let status = actix_web::http::StatusCode::from_u16(status)
        .unwrap_or(actix_web::http::StatusCode::NOT_FOUND);
    HttpResponse::build(status).json(json!({"message": message, "code": 0}))
}

/// `GET /users/@me`: the bot user, which clients such as discord.py ask for when they log in
/// (docs/protocol.md §10).
async fn current_user(req: HttpRequest, shared: Shared) -> HttpResponse {
    let mut state = lock(&shared);
    handle(&mut state, &req, Value::Null, "GET /users/@me", |state| {
        Answer {
            status: 200,
            body: Some(state.config.bot_user.user()),
        }
    })
}

/// `GET /oauth2/applications/@me`: the bot's application, which discord.py asks for at login.
async fn current_application(req: HttpRequest, shared: Shared) -> HttpResponse {
    let mut state = lock(&shared);
    handle(
        &mut state,
        &req,
        Value::Null,
        "GET /oauth2/applications/@me",
        |state| Answer {
            status: 200,
            body: Some(state.config.bot_user.application()),
        },
    )
}

/// Discord's error body.
fn error(status: u16, message: &str, code: u32) -> (u16, Value) {
    (status, json!({"message": message, "code": code}))
}

/// What a route decided, before the rate-limit headers are added.
struct Answer {
    status: u16,
    body: Option<Value>,
}

async fn delete_message(
    req: HttpRequest,
    path: web::Path<(String, String)>,
    shared: Shared,
) -> HttpResponse {
    let (channel, message) = path.into_inner();
    let mut state = lock(&shared);
    let bucket = format!("DELETE /channels/{channel}/messages");
    handle(&mut state, &req, Value::Null, &bucket, |state| {
        let Some(channel_id) = channel.parse::<u64>().ok() else {
            return Answer::error(error(404, "Unknown Channel", 10003));
        };
        let Some(known) = state.channels.get_mut(&channel_id) else {
            return Answer::error(error(404, "Unknown Channel", 10003));
        };
        let removed = message
            .parse::<u64>()
            .ok()
            .is_some_and(|id| known.messages.remove(&id));
        if !removed {
            return Answer::error(error(404, "Unknown Message", 10008));
        }
        tracing::info!(
            channel = channel_id,
            message_id = %message,
            "fake REST: message deleted"
        );
        Answer {
            status: 204,
            body: None,
        }
    })
}

async fn create_message(
    req: HttpRequest,
    path: web::Path<String>,
    body: web::Bytes,
    shared: Shared,
) -> HttpResponse {
    let channel = path.into_inner();
    let sent: Value = serde_json::from_slice(&body).unwrap_or(Value::Null);
    let mut state = lock(&shared);
    let bucket = format!("POST /channels/{channel}/messages");
    handle(&mut state, &req, sent.clone(), &bucket, |state| {
        let Some(channel_id) = channel.parse::<u64>().ok() else {
            return Answer::error(error(404, "Unknown Channel", 10003));
        };
        let Some((shard, guild_id)) = state
            .channels
            .get(&channel_id)
            .map(|c| (c.shard, c.guild_id.clone()))
        else {
            return Answer::error(error(404, "Unknown Channel", 10003));
        };
        if !sent.is_object() {
            return Answer::error(error(400, "400: Bad Request", 50109));
        }
        let content = sent["content"].as_str().unwrap_or("");
        let has_other = ["embeds", "sticker_ids", "components", "poll"]
            .iter()
            .any(|k| sent[k].as_array().is_some_and(|a| !a.is_empty()) || sent[k].is_object());
        if content.is_empty() && !has_other {
            return Answer::error(error(400, "Cannot send an empty message", 50006));
        }
        if content.encode_utf16().count() > 2000 {
            return Answer::error(error(400, "Invalid Form Body", 50035));
        }
        state.last_message_id += 1;
        let id = state.last_message_id;
        let author = state.config.bot_user.author();
        let mut message = super::payloads::message_by(id, channel_id, content, author);
        if let Some(guild) = &guild_id {
            message["guild_id"] = json!(guild);
        }
        if let Some(channel) = state.channels.get_mut(&channel_id) {
            channel.messages.insert(id);
        }
        // As on Discord, the bot's own message comes back through the gateway.
        state.dispatch(
            shard,
            "MESSAGE_CREATE",
            &mut std::iter::once(message.to_string().as_str()),
        );
        tracing::info!(
            channel = channel_id,
            message_id = id,
            "fake REST: message created"
        );
        Answer {
            status: 200,
            body: Some(message),
        }
    })
}

impl Answer {
    fn error((status, body): (u16, Value)) -> Self {
        Self {
            status,
            body: Some(body),
        }
    }
}

/// Checks the token and the bucket, runs the route, records the call and answers with Discord's
/// rate-limit headers.
fn handle(
    state: &mut State,
    req: &HttpRequest,
    sent: Value,
    bucket_key: &str,
    route: impl FnOnce(&mut State) -> Answer,
) -> HttpResponse {
    let now = Instant::now();
    let method = req.method().as_str().to_owned();
    let path = req.path().to_owned();
    let expected = format!("Bot {}", state.config.token);
    let authorized = req
        .headers()
        .get("authorization")
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v == expected);
    let record = |state: &mut State, status: u16| {
        state.rest_calls.push(RestCall {
            method: method.clone(),
            path: path.clone(),
            status,
            body: sent.clone(),
            at: now,
        });
    };
    if !authorized {
        tracing::info!(%method, %path, "fake REST: 401, missing or wrong token");
        record(state, 401);
        return HttpResponse::Unauthorized()
            .json(json!({"message": "401: Unauthorized", "code": 0}));
    }
    let (limit, window) = state.config.rest_rate_limit;
    let buckets = state.rest_buckets.len();
    let bucket = state
        .rest_buckets
        .entry(bucket_key.to_owned())
        .or_insert_with(|| RestBucket {
            hash: format!("{buckets:016x}"),
            window_start: now,
            used: 0,
        });
    if now.duration_since(bucket.window_start) >= window {
        bucket.window_start = now;
        bucket.used = 0;
    }
    let reset_after = window.saturating_sub(now.duration_since(bucket.window_start));
    let hash = bucket.hash.clone();
    if bucket.used >= limit {
        tracing::info!(%method, %path, bucket = %hash, ?reset_after, "fake REST: 429, rate limit exceeded");
        record(state, 429);
        let mut response = HttpResponse::TooManyRequests();
        rate_limit_headers(&mut response, limit, 0, reset_after, &hash);
        response.insert_header(("X-RateLimit-Scope", "user"));
        response.insert_header(("Retry-After", reset_after.as_secs_f64().ceil().to_string()));
        return response.json(json!({
            "message": "You are being rate limited.",
            "retry_after": seconds(reset_after),
            "global": false,
        }));
    }
    bucket.used += 1;
    let remaining = limit - bucket.used;
    let answer = route(state);
    tracing::debug!(%method, %path, status = answer.status, "fake REST: answered");
    record(state, answer.status);
    let status = actix_web::http::StatusCode::from_u16(answer.status)
        .unwrap_or(actix_web::http::StatusCode::INTERNAL_SERVER_ERROR);
    let mut response = HttpResponse::build(status);
    rate_limit_headers(&mut response, limit, remaining, reset_after, &hash);
    match answer.body {
        Some(body) => response.json(body),
        None => response.finish(),
    }
}

/// Seconds with millisecond precision, as Discord writes `X-RateLimit-Reset-After` and
/// `retry_after`.
fn seconds(d: Duration) -> f64 {
    (d.as_millis() as f64) / 1000.0
}

fn rate_limit_headers(
    response: &mut actix_web::HttpResponseBuilder,
    limit: u32,
    remaining: u32,
    reset_after: Duration,
    bucket: &str,
) {
    let reset_at = SystemTime::now()
        .checked_add(reset_after)
        .unwrap_or_else(SystemTime::now)
        .duration_since(UNIX_EPOCH)
        .unwrap_or_default();
    response
        .insert_header(("X-RateLimit-Limit", limit.to_string()))
        .insert_header(("X-RateLimit-Remaining", remaining.to_string()))
        .insert_header((
            "X-RateLimit-Reset",
            format!("{:.3}", reset_at.as_secs_f64()),
        ))
        .insert_header((
            "X-RateLimit-Reset-After",
            format!("{:.3}", seconds(reset_after)),
        ))
        .insert_header(("X-RateLimit-Bucket", bucket.to_owned()));
}
