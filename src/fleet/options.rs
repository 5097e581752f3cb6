//! How a process joins a fleet.

use std::ops::Range;
use std::time::Duration;

use crate::fleet::sessions::SessionStoreOptions;
use crate::fleet::FleetError;

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
#[derive(Debug, Clone)]
#[non_exhaustive]
pub struct FleetOptions {
    /// The Redis to share (`redis://host:port/db`).
    pub redis_url: String,
    /// The prefix of every key of this bot (default `shardline`): one per bot sharing a Redis.
    pub prefix: String,
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
            prefix: "shardline".into(),
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

    /// Sets [`prefix`](Self::prefix).
    pub fn prefix(mut self, prefix: impl Into<String>) -> Self {
        self.prefix = prefix.into();
        self
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
        if self.prefix.is_empty() {
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
