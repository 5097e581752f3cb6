//! Live resharding in one process: a second shard set of a new total runs beside the first, its
//! events held and matched against the old set's (`overlap`), until one cut switches delivery to
//! it; then the old set is closed (docs/resharding.md). The supervisor drives it; this module
//! holds what it decides with.

mod error;
mod gates;
pub(crate) mod overlap;
mod sessions;

use std::time::Duration;

pub use error::ReshardError;
pub(crate) use gates::{NewSide, OldSide};
pub(crate) use sessions::StagedSessions;

/// The shard of `total` that receives the events of guild `guild_id`: `(guild_id >> 22) % total`
/// (docs/protocol.md §5).
///
/// ```
/// assert_eq!(shardline::shard_for_guild(175928847299117063, 16), 4);
/// assert_eq!(shardline::shard_for_guild(175928847299117063, 1), 0);
/// ```
pub fn shard_for_guild(guild_id: u64, total: u32) -> u32 {
    ((guild_id >> 22) % u64::from(total.max(1))) as u32
}

/// How a reshard runs ([`ConfigBuilder::reshard`](crate::ConfigBuilder::reshard)).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub struct ReshardOptions {
    /// Reshard by itself, to the count `GET /gateway/bot` recommends, when a shard is closed
    /// with 4011 (sharding required). Default `false`.
    pub on_sharding_required: bool,
    /// Ask `GET /gateway/bot` at this interval and reshard by itself to its recommendation when
    /// that is at least `margin` above the running total. Default `None` (never).
    pub check_every: Option<Duration>,
    /// See [`check_every`](Self::check_every). Default 1.
    pub margin: u32,
    /// How long after a new shard's READY each guild it listed as unavailable is waited for
    /// before the cut goes ahead without it (the guilds given up on are reported). Default 30 s.
    pub guild_timeout: Duration,
    /// How far apart the two sets' copies of one event may arrive and still be recognised as one
    /// event (docs/resharding.md). Default 5 s.
    pub dedup_window: Duration,
    /// Once the new set is complete, how long the cut waits at most for each old shard to show it
    /// has read everything sent before the new sessions began (docs/resharding.md). Default 2 s.
    pub catch_up_timeout: Duration,
}

impl Default for ReshardOptions {
    fn default() -> Self {
        Self {
            on_sharding_required: false,
            check_every: None,
            margin: 1,
            guild_timeout: Duration::from_secs(30),
            dedup_window: Duration::from_secs(5),
            catch_up_timeout: Duration::from_secs(2),
        }
    }
}

impl ReshardOptions {
    /// Sets [`on_sharding_required`](Self::on_sharding_required).
    pub fn on_sharding_required(mut self, on: bool) -> Self {
        self.on_sharding_required = on;
        self
    }

    /// Sets [`check_every`](Self::check_every) and [`margin`](Self::margin).
    pub fn check_recommendation(mut self, every: Duration, margin: u32) -> Self {
        self.check_every = Some(every);
        self.margin = margin.max(1);
        self
    }

    /// Sets [`guild_timeout`](Self::guild_timeout).
    pub fn guild_timeout(mut self, timeout: Duration) -> Self {
        self.guild_timeout = timeout;
        self
    }

    /// Sets [`catch_up_timeout`](Self::catch_up_timeout).
    pub fn catch_up_timeout(mut self, timeout: Duration) -> Self {
        self.catch_up_timeout = timeout;
        self
    }

    /// Sets [`dedup_window`](Self::dedup_window).
    pub fn dedup_window(mut self, window: Duration) -> Self {
        self.dedup_window = window;
        self
    }
}

/// What a finished reshard did.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct ReshardReport {
    /// The shard total before.
    pub old_total: u32,
    /// The shard total now.
    pub new_total: u32,
    /// From the call to the old set's sessions being closed.
    pub took: Duration,
    /// From the call to the cut.
    pub to_cut: Duration,
    /// Events the new set held that the old set had not delivered by the cut: delivered after it.
    pub held_at_cut: usize,
    /// Copies dropped because the other set had delivered them.
    pub duplicates: u64,
    /// Guilds a new shard's READY listed that did not arrive within the guild timeout.
    pub timed_out_guilds: Vec<u64>,
}
