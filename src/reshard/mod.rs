//! Live resharding in one process: a second shard set of a new total runs beside the first, its
//! events held and matched against the old set's (`overlap`), until one cut switches delivery to
//! it; then the old set is closed (docs/resharding.md). The supervisor drives it; this module
//! holds what it decides with.

mod error;
mod gates;
pub(crate) mod overlap;
mod sessions;

use std::time::Duration;

pub use crate::config::ReshardOptions;
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
