//! Many processes running one bot through Redis (feature `redis`): a shared identify queue
//! ([`RedisIdentifyQueue`]), a shared session store ([`RedisSessionStore`]), shard leases with
//! fencing tokens and failover ([`lease`], [`Fleet`]), and an event stream for worker processes
//! ([`stream`]). The single-process runtime with its in-memory stores stays the default; nothing
//! here is used unless the bot asks for it.
//!
//! Every key lives under one prefix per bot (`shardline:<bot>` by default), so several bots can
//! share a Redis. Time-based rules (identify windows, lease expiry, session expiry) are kept by
//! Redis's own TTLs, never by comparing the processes' clocks (docs/fleet.md).

mod error;
pub mod identify;
pub mod lease;
pub mod sessions;
pub mod stream;

pub use error::FleetError;
pub use identify::RedisIdentifyQueue;
pub use sessions::RedisSessionStore;

use std::sync::Arc;
use std::time::Duration;

use redis::aio::{ConnectionManager, ConnectionManagerConfig};

/// A connection to the fleet's Redis and the prefix of the bot's keys. Cheap to clone: clones share
/// one multiplexed connection, which reconnects by itself after Redis comes back.
#[derive(Clone)]
pub struct FleetRedis {
    conn: ConnectionManager,
    /// For connections of their own (a blocking read must not hold up the shared one).
    client: redis::Client,
    prefix: Arc<str>,
}

impl std::fmt::Debug for FleetRedis {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("FleetRedis")
            .field("prefix", &self.prefix)
            .finish_non_exhaustive()
    }
}

/// How long one Redis command may take before it counts as failed: a lease renewal must know in
/// time that it did not get through.
const RESPONSE_TIMEOUT: Duration = Duration::from_secs(2);
/// How long connecting may take, at start and on each reconnect.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(2);

impl FleetRedis {
    /// Connects to `url` (`redis://host:port/db`) and checks that Redis answers. `prefix` names the
    /// bot: every key of it starts with `prefix:`. Must run inside a tokio (actix) runtime.
    ///
    /// # Errors
    /// [`FleetError::Connect`] when Redis cannot be reached or does not answer `PING`.
    pub async fn connect(url: &str, prefix: &str) -> Result<Self, FleetError> {
        let client = redis::Client::open(url).map_err(|e| FleetError::Connect {
            url: redact_url(url),
            reason: e.to_string(),
        })?;
        let config = ConnectionManagerConfig::new()
            .set_connection_timeout(Some(CONNECT_TIMEOUT))
            .set_response_timeout(Some(RESPONSE_TIMEOUT))
            .set_number_of_retries(2)
            .set_max_delay(Duration::from_millis(500));
        let connecting = client.get_connection_manager_with_config(config);
        let mut conn = tokio::time::timeout(CONNECT_TIMEOUT * 3, connecting)
            .await
            .map_err(|_| FleetError::Connect {
                url: redact_url(url),
                reason: "timed out".into(),
            })?
            .map_err(|e| FleetError::Connect {
                url: redact_url(url),
                reason: e.to_string(),
            })?;
        let pong: String = redis::cmd("PING")
            .query_async(&mut conn)
            .await
            .map_err(|e| FleetError::Connect {
                url: redact_url(url),
                reason: e.to_string(),
            })?;
        if pong != "PONG" {
            return Err(FleetError::Connect {
                url: redact_url(url),
                reason: format!("unexpected answer to PING: {pong}"),
            });
        }
        Ok(Self {
            conn,
            client,
            prefix: prefix.into(),
        })
    }

    /// The key `prefix:part`.
    pub(crate) fn key(&self, part: std::fmt::Arguments<'_>) -> String {
        format!("{}:{}", self.prefix, part)
    }

    /// The bot's key prefix.
    pub fn prefix(&self) -> &str {
        &self.prefix
    }

    /// A handle on the shared connection, for one command or pipeline.
    pub(crate) fn conn(&self) -> ConnectionManager {
        self.conn.clone()
    }

    /// A connection of its own, reconnecting like the shared one, whose commands may take up to
    /// `wait` longer than usual: for blocking reads (`XREADGROUP ... BLOCK`), which would hold up
    /// every command behind them on the shared connection.
    pub(crate) async fn dedicated(&self, wait: Duration) -> Result<ConnectionManager, FleetError> {
        let config = ConnectionManagerConfig::new()
            .set_connection_timeout(Some(CONNECT_TIMEOUT))
            .set_response_timeout(Some(RESPONSE_TIMEOUT + wait))
            .set_number_of_retries(2)
            .set_max_delay(Duration::from_millis(500));
        let connecting = self.client.get_connection_manager_with_config(config);
        tokio::time::timeout(CONNECT_TIMEOUT * 3, connecting)
            .await
            .map_err(|_| FleetError::Command("connecting timed out".into()))?
            .map_err(FleetError::from)
    }
}

/// A Redis URL without its password, for errors and logs.
fn redact_url(url: &str) -> String {
    match (url.find("://"), url.rfind('@')) {
        (Some(scheme), Some(at)) if at > scheme => {
            format!("{}://<redacted>@{}", &url[..scheme], &url[at + 1..])
        }
        _ => url.to_owned(),
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn passwords_never_show_in_urls() {
        assert_eq!(
            super::redact_url("redis://:hunter2@10.0.0.1:6379/0"),
            "redis://<redacted>@10.0.0.1:6379/0"
        );
        assert_eq!(
            super::redact_url("redis://127.0.0.1:6379"),
            "redis://127.0.0.1:6379"
        );
    }
}
