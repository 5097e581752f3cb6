//! The one REST call the runtime makes: `GET /gateway/bot` (docs/protocol.md §1).

use serde::Deserialize;

use crate::config::Config;
use crate::error::RestError;

/// The answer of `GET /gateway/bot`.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
pub struct GatewayBot {
    /// The gateway URL (`wss://gateway.discord.gg`).
    pub url: String,
    /// The recommended shard count.
    pub shards: u32,
    /// The identify budget.
    pub session_start_limit: SessionStartLimit,
}

/// How many sessions the bot may still start, and how fast.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
pub struct SessionStartLimit {
    /// Session starts allowed per reset period.
    pub total: u32,
    /// Session starts left.
    pub remaining: u32,
    /// Milliseconds until `remaining` resets to `total`.
    pub reset_after: u64,
    /// Identifies allowed per 5 s (the number of buckets).
    pub max_concurrency: u32,
}

/// Calls `GET {api_base}/gateway/bot` with the config's token, over the config's TLS settings (the
/// same roots as the shards), with its connect timeout for the whole request.
pub async fn gateway_bot(config: &Config) -> Result<GatewayBot, RestError> {
    let url = format!("{}/gateway/bot", config.api_base.trim_end_matches('/'));
    let token = &config.token;
    let client = crate::client::rest_client(&config.tls, config.timeouts.connect);
    let mut response = client
        .get(url.as_str())
        .insert_header(("Authorization", format!("Bot {}", token.expose())))
        .insert_header((
            "User-Agent",
            concat!("DiscordBot (shardline, ", env!("CARGO_PKG_VERSION"), ")"),
        ))
        .send()
        .await
        .map_err(|e| RestError::Transport(e.to_string()))?;
    let body = response
        .body()
        .limit(1 << 20)
        .await
        .map_err(|e| RestError::Transport(e.to_string()))?;
    match response.status().as_u16() {
        200..=299 => serde_json::from_slice(&body).map_err(|e| RestError::Body(e.to_string())),
        401 => Err(RestError::Unauthorized),
        code => {
            let start = String::from_utf8_lossy(&body[..body.len().min(200)]).into_owned();
            Err(RestError::Status(code, start))
        }
    }
}
