//! How a process joins a fleet.

use std::ops::Range;
use std::time::Duration;

use crate::error::FleetError;
use crate::fleet::sessions::SessionStoreOptions;

/// Which shards a process of the fleet runs.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum Placement {
    /// Exactly these ids, and no others: each process is given its range (today's
    /// [`ShardPlan::Range`](crate::ShardPlan::Range), with leases). A range whose process is gone
    /// stays down until a process with that range starts.
    Pinned(Range<u32>),
    /// Processes claim free shards and spread them evenly as processes join and leave; the shards
    /// of a process that died are taken over by the others once its leases expire.
    Balanced,
}

/// How a process joins a fleet (feature `redis`): see [`Gateway::start_fleet`](crate::Gateway::start_fleet).
///
/// `Debug` never prints the Redis password (nor the CA certificate).
#[derive(Clone)]
#[non_exhaustive]
pub struct FleetOptions {
    /// The Redis to share: `redis://host:port/db`, `rediss://` over TLS, or
    /// `redis+sentinel://host:port,…/primary-name` behind Sentinel (see
    /// [`FleetRedis::connect`](crate::fleet::FleetRedis::connect)).
    pub redis_url: String,
    /// PEM certificates of the CA that issued a `rediss://` server's certificate, trusted instead
    /// of the webpki roots (default none: the webpki roots).
    pub redis_ca_pem: Option<Vec<u8>>,
    /// The prefix of every key of this bot: one per bot sharing a Redis. `None` (the default)
    /// derives `shardline:<bot user id>` from the token ([`prefix_for`](Self::prefix_for)).
    pub prefix: Option<String>,
    /// This process's name in the fleet, unique among its processes (default: host, pid and a
    /// random suffix).
    pub owner: String,
    /// How long a shard's lease lasts unless renewed (default 10 s): a dead process's shards move
    /// after at most this long; a process that cannot reach Redis for this long stops its shards.
    pub lease_time: Duration,
    /// Which shards this process runs.
    pub placement: Placement,
    /// How the session store writes.
    pub sessions: SessionStoreOptions,
    /// Events published to the fleet's event stream for worker processes (none by default; see
    /// [`stream`](crate::fleet::stream)). With any, the session store's sequences wait for the
    /// stream (`gate_on_publish`), so a crash never skips an event the workers did not get.
    pub stream_events: Vec<String>,
}

impl FleetOptions {
    /// A balanced fleet on the Redis at `redis_url`, with the defaults.
    pub fn new(redis_url: impl Into<String>) -> Self {
        Self {
            redis_url: redis_url.into(),
            redis_ca_pem: None,
            prefix: None,
            owner: default_owner(),
            lease_time: Duration::from_secs(10),
            placement: Placement::Balanced,
            sessions: SessionStoreOptions::default(),
            stream_events: Vec::new(),
        }
    }

    /// Sets [`stream_events`](Self::stream_events).
    pub fn stream_events<S: Into<String>>(mut self, events: impl IntoIterator<Item = S>) -> Self {
        self.stream_events = events.into_iter().map(Into::into).collect();
        self
    }

    /// Sets [`prefix`](Self::prefix): it wins over the one derived from the token.
    pub fn prefix(mut self, prefix: impl Into<String>) -> Self {
        self.prefix = Some(prefix.into());
        self
    }

    /// Sets [`redis_ca_pem`](Self::redis_ca_pem).
    pub fn redis_ca_pem(mut self, pem: impl Into<Vec<u8>>) -> Self {
        self.redis_ca_pem = Some(pem.into());
        self
    }

    /// The key prefix of the bot whose token is `token`: [`prefix`](Self::prefix) when set,
    /// otherwise `shardline:<id>`, with the bot's user id read from the token (docs/fleet.md,
    /// "Keys"), so that two bots sharing a Redis never share leases or budget by default. A token
    /// that carries no id (not a Discord token: a test's) gives `shardline`, with a warning.
    pub fn prefix_for(&self, token: &crate::Token) -> String {
        if let Some(prefix) = &self.prefix {
            return prefix.clone();
        }
        match bot_id(token.expose()) {
            Some(id) => format!("shardline:{id}"),
            None => {
                tracing::warn!("the token carries no bot id: the fleet's keys use the prefix `shardline`, shared by every such bot on this Redis; set FleetOptions::prefix");
                "shardline".into()
            }
        }
    }

    /// Sets [`owner`](Self::owner).
    pub fn owner(mut self, owner: impl Into<String>) -> Self {
        self.owner = owner.into();
        self
    }

    /// Sets [`lease_time`](Self::lease_time).
    pub fn lease_time(mut self, lease_time: Duration) -> Self {
        self.lease_time = lease_time;
        self
    }

    /// Sets [`placement`](Self::placement).
    pub fn placement(mut self, placement: Placement) -> Self {
        self.placement = placement;
        self
    }

    /// Sets [`sessions`](Self::sessions).
    pub fn sessions(mut self, sessions: SessionStoreOptions) -> Self {
        self.sessions = sessions;
        self
    }

    pub(crate) fn validate(&self, total: u32) -> Result<(), FleetError> {
        if self.prefix.as_deref() == Some("") {
            return Err(FleetError::Config("prefix", "is empty".into()));
        }
        if let Placement::Pinned(ids) = &self.placement {
            if ids.is_empty() || ids.end > total {
                return Err(FleetError::Config(
                    "placement",
                    format!("pinned range {ids:?} is empty or not within 0..{total}"),
                ));
            }
        }
        if self.sessions.flush_every.is_zero() || self.sessions.flush_every >= self.lease_time {
            return Err(FleetError::Config(
                "session flush interval",
                format!(
                    "{:?} must be above zero and below the lease time {:?}",
                    self.sessions.flush_every, self.lease_time
                ),
            ));
        }
        Ok(())
    }
}

impl std::fmt::Debug for FleetOptions {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("FleetOptions")
            .field(
                "redis_url",
                &crate::fleet::connect::redact_url(&self.redis_url),
            )
            .field("redis_ca_pem", &self.redis_ca_pem.as_ref().map(|_| "<set>"))
            .field("prefix", &self.prefix)
            .field("owner", &self.owner)
            .field("lease_time", &self.lease_time)
            .field("placement", &self.placement)
            .field("sessions", &self.sessions)
            .field("stream_events", &self.stream_events)
            .finish()
    }
}

/// The bot's user id from its token: a Discord bot token is three dot-separated parts, the first
/// the user id in base64 (docs/fleet.md, "Keys").
fn bot_id(token: &str) -> Option<u64> {
    let first = token.split('.').next()?;
    if first.len() == token.len() {
        return None;
    }
    let decoded = base64_decode(first)?;
    let id = std::str::from_utf8(&decoded).ok()?;
    if id.is_empty() || !id.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    id.parse().ok()
}

/// Base64, standard or URL-safe alphabet, padded or not.
fn base64_decode(text: &str) -> Option<Vec<u8>> {
    let mut out = Vec::with_capacity(text.len() * 3 / 4);
    let (mut acc, mut bits) = (0u32, 0u32);
    for c in text.trim_end_matches('=').bytes() {
        let v = match c {
            b'A'..=b'Z' => c - b'A',
            b'a'..=b'z' => c - b'a' + 26,
            b'0'..=b'9' => c - b'0' + 52,
            b'+' | b'-' => 62,
            b'/' | b'_' => 63,
            _ => return None,
        };
        acc = (acc << 6) | u32::from(v);
        bits += 6;
        if bits >= 8 {
            bits -= 8;
            out.push((acc >> bits) as u8);
            acc &= (1 << bits) - 1;
        }
    }
    Some(out)
}

fn default_owner() -> String {
    let host = std::env::var("HOSTNAME")
        .ok()
        .filter(|h| !h.is_empty())
        .unwrap_or_else(|| "host".into());
    let host: String = host
        .chars()
        .map(|c| if c == ':' { '-' } else { c })
        .collect();
    format!(
        "{host}-{}-{:04x}",
        std::process::id(),
        rand::random::<u16>()
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::Token;

    // The first part of a token is the bot's user id in base64; the others are made up.
    const TOKEN: &str = "ODA4MDM4NTYyNjk0NzI4NzA0.YBz2aQ.not-a-real-signature";

    #[test]
    fn the_default_prefix_names_the_bot_and_an_explicit_one_wins() {
        let options = FleetOptions::new("redis://127.0.0.1/");
        assert_eq!(
            options.prefix_for(&Token::new(TOKEN)),
            "shardline:808038562694728704"
        );
        // Unpadded base64 of another id (17 digits: the length varies with the id).
        assert_eq!(
            options.prefix_for(&Token::new("MTIzNDU2Nzg5MDEyMzQ1Njc.x.y")),
            "shardline:12345678901234567"
        );
        assert_eq!(options.prefix_for(&Token::new("fake-token")), "shardline");
        assert_eq!(
            options.prefix_for(&Token::new("bm90LWFuLWlk.x.y")),
            "shardline"
        );
        assert_eq!(
            options.prefix("mine").prefix_for(&Token::new(TOKEN)),
            "mine"
        );
    }

    #[test]
    fn debug_never_prints_the_redis_password() {
        let options = FleetOptions::new("redis://user:hunter2@10.0.0.1:6379/0")
            .redis_ca_pem(b"-----BEGIN CERTIFICATE-----".to_vec());
        let printed = format!("{options:?}");
        assert!(!printed.contains("hunter2"), "{printed}");
        assert!(!printed.contains("BEGIN CERTIFICATE"), "{printed}");
        assert!(
            printed.contains("redis://<redacted>@10.0.0.1:6379/0"),
            "{printed}"
        );
        let sentinel =
            FleetOptions::new("redis+sentinel://:hunter2@10.0.0.1:26379,10.0.0.2:26379/m");
        assert!(!format!("{sentinel:?}").contains("hunter2"));
    }
}
