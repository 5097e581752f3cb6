//! Why a reshard was refused or did not complete.

use std::fmt;

use crate::error::{FatalError, RestError};

/// Why [`Gateway::reshard`](crate::Gateway::reshard) did not reshard.
#[derive(Debug)]
#[non_exhaustive]
pub enum ReshardError {
    /// A total of 0 shards.
    ZeroShards,
    /// The bot already runs this many shards.
    SameTotal(u32),
    /// Another reshard is under way.
    AlreadyUnderWay,
    /// The gateway is shutting down.
    ShuttingDown,
    /// The gateway runs part of a fleet's shards: a fleet reshards as a whole.
    InFleet,
    /// This process runs only some of the bot's shards (`ShardPlan::Range`): the new set would be
    /// the whole bot's.
    PartOfTheBot,
    /// The session-start budget left cannot cover an Identify for every new shard: nothing was
    /// started (exhausting the budget resets the bot's token, docs/protocol.md §5).
    Budget {
        /// Identifies the new set needs.
        needed: u32,
        /// Session starts left now.
        remaining: u32,
    },
    /// `GET /gateway/bot` (asked for the budget, or for the recommended count) failed.
    Rest(RestError),
    /// A shard of the new set stopped for good before the cut: the new set was closed and the old
    /// one kept delivering throughout.
    NewShardFailed {
        /// The new set's shard.
        shard: u32,
        /// Why it stopped.
        error: FatalError,
    },
}

impl fmt::Display for ReshardError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::ZeroShards => write!(f, "a shard total must be at least 1"),
            Self::SameTotal(n) => write!(f, "the bot already runs {n} shards"),
            Self::AlreadyUnderWay => write!(f, "a reshard is already under way"),
            Self::ShuttingDown => write!(f, "the gateway is shutting down"),
            Self::InFleet => write!(f, "a fleet member cannot reshard on its own"),
            Self::PartOfTheBot => write!(
                f,
                "this process runs only some of the bot's shards; a reshard starts the whole bot's"
            ),
            Self::Budget { needed, remaining } => write!(
                f,
                "the new set needs {needed} identifies but only {remaining} session starts are left; nothing was started"
            ),
            Self::Rest(e) => write!(f, "GET /gateway/bot failed: {e}"),
            Self::NewShardFailed { shard, error } => write!(
                f,
                "new shard {shard} stopped for good ({error}); the reshard was rolled back"
            ),
        }
    }
}

impl std::error::Error for ReshardError {}
