//! The fake gateway's HTTP side: `GET /api/v10/gateway`, `GET /api/v10/gateway/bot` and the websocket
//! at `/` and `/resume` (docs/protocol.md §1), beside the REST and control routes; anything else is
//! Discord's JSON 404.

use std::sync::{Arc, Mutex};

use actix_web::{web, HttpRequest, HttpResponse};
use serde_json::json;

use super::compress::Compressor;
use super::connection::Connection;
use super::state::State;
use crate::protocol::CloseCode;

pub(crate) use super::state::Shared;

fn lock(shared: &Mutex<State>) -> std::sync::MutexGuard<'_, State> {
    shared.lock().unwrap_or_else(|p| p.into_inner())
}

pub(crate) fn routes(config: &mut web::ServiceConfig) {
    super::rest::routes(config);
    super::control::routes(config);
    let resource =
        |path: &str| web::resource(path).default_service(web::to(super::rest::method_not_allowed));
    config
        .service(resource("/api/v10/gateway").route(web::get().to(gateway)))
        .service(resource("/api/v10/gateway/bot").route(web::get().to(gateway_bot)))
        .service(resource("/").route(web::get().to(websocket)))
        .service(resource("/resume").route(web::get().to(websocket)))
        .default_service(web::to(super::rest::not_found));
}

async fn gateway(shared: Shared) -> HttpResponse {
    let url = lock(&shared).ws_base();
    HttpResponse::Ok().json(json!({ "url": url }))
}

async fn gateway_bot(req: HttpRequest, shared: Shared) -> HttpResponse {
    let mut state = lock(&shared);
    let expected = format!("Bot {}", state.config.token);
    let authorized = req
        .headers()
        .get("authorization")
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v == expected);
    if !authorized {
        return HttpResponse::Unauthorized()
            .json(json!({"message": "401: Unauthorized", "code": 0}));
    }
    let remaining = state.starts_left();
    let reset_after = state
        .starts_reset_at
        .saturating_duration_since(std::time::Instant::now())
        .as_millis() as u64;
    let c = &state.config;
    HttpResponse::Ok().json(json!({
        "url": state.ws_base(),
        "shards": c.shards,
        "session_start_limit": {
            "total": c.session_start_limit.total,
            "remaining": remaining,
            "reset_after": reset_after,
            "max_concurrency": c.max_concurrency,
        }
    }))
}

/// The query's value for `key`.
fn param<'q>(query: &'q str, key: &str) -> Option<&'q str> {
    query
        .split('&')
        .filter_map(|kv| kv.split_once('='))
        .find(|(k, _)| *k == key)
        .map(|(_, v)| v)
}

async fn websocket(
    req: HttpRequest,
    body: web::Payload,
    shared: Shared,
) -> Result<HttpResponse, actix_web::Error> {
    let query = req.query_string().to_owned();
    let compress = param(&query, "compress").map(str::to_owned);
    // §1: wrong `v` → 4012; only JSON encoding here; unknown compression → decode error.
    let mut refuse = None;
    if param(&query, "v") != Some("10") {
        refuse = Some((CloseCode::InvalidApiVersion.code(), "v is not 10"));
    } else if param(&query, "encoding").is_some_and(|e| e != "json") {
        refuse = Some((
            CloseCode::DecodeError.code(),
            "encoding other than json (the fake speaks json only)",
        ));
    }
    let compressor = match compress.as_deref() {
        None => {
            if lock(&shared).config.require_compression {
                // Our choice for `--compress-only`: Discord accepts uncompressed clients.
                refuse = refuse.or(Some((
                    CloseCode::DecodeError.code(),
                    "no compress query, and this fake requires transport compression",
                )));
            }
            None
        }
        Some(value) => {
            let c = Compressor::for_query(value);
            if c.is_none() {
                refuse = refuse.or(Some((
                    CloseCode::DecodeError.code(),
                    "unknown compress value (the fake speaks zlib-stream and zstd-stream)",
                )));
            }
            c
        }
    };
    // Frames up to 1 MiB are read, so that one over the 4096-byte limit is seen and refused.
    let (response, out, stream) = super::wire::accept(&req, body, 1 << 20)?;
    let (tx, commands) = tokio::sync::mpsc::unbounded_channel();
    let shared: Arc<Mutex<State>> = shared.into_inner();
    let id = lock(&shared).open(req.path(), &query, compress.clone(), req.peer_addr(), tx);
    tracing::info!(conn = id, path = req.path(), query = %query, compress, peer = ?req.peer_addr(), "fake gateway: websocket connection accepted");
    if let Some((code, reason)) = refuse {
        tracing::info!(
            conn = id,
            code,
            reason,
            "fake gateway: refusing the connection's query"
        );
    }
    actix_web::rt::spawn(
        Connection {
            id,
            shared,
            out,
            stream,
            commands,
            compressor,
            refuse,
        }
        .run(),
    );
    Ok(response)
}
