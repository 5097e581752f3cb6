//! Shard lifecycle events, sent to the recipients registered with
//! [`ConfigBuilder::events`](crate::ConfigBuilder::events).

use std::time::Duration;

use actix::Message;

use crate::error::FatalError;

/// Something that happened to a shard's connection.
#[derive(Debug, Clone, PartialEq, Eq, Message)]
#[rtype(result = "()")]
#[non_exhaustive]
pub enum ShardEvent {
    /// A new session is READY.
    Ready {
        /// The shard.
        shard: u32,
        /// The new session's id.
        session_id: String,
    },
    /// A session was resumed (RESUMED received).
    Resumed {
        /// The shard.
        shard: u32,
    },
    /// The connection ended (closed by the gateway, dropped, timed out, or left by the shard);
    /// the shard reconnects unless a `Fatal` follows.
    Disconnected {
        /// The shard.
        shard: u32,
        /// The gateway's close code, if it closed the connection with one.
        code: Option<u16>,
    },
    /// Handlers held the shard's reads back for `SlowHandlers::Backpressure::max_pause`: the shard
    /// reads again and drops events for the handlers it was waiting for whenever their mailbox is
    /// full, until each takes the event it was last given (see
    /// [`SlowHandlers`](crate::SlowHandlers)).
    HandlerStalled {
        /// The shard.
        shard: u32,
        /// Events the shard held when it stopped waiting.
        pending: usize,
        /// How long it had held its reads back.
        paused_for: Duration,
    },
    /// A reshard's cut: from here on handlers receive the new set's events (docs/resharding.md).
    /// Sent once per reshard, by the supervisor; the old set's shards then close (their
    /// `Disconnected` events carry the old set's shard ids).
    Resharded {
        /// The shard total before.
        old_total: u32,
        /// The shard total now.
        new_total: u32,
        /// Guilds a new shard's READY listed that did not arrive within the guild timeout.
        timed_out_guilds: Vec<u64>,
    },
    /// The shard stopped for good.
    Fatal {
        /// The shard.
        shard: u32,
        /// Why.
        error: FatalError,
    },
}
