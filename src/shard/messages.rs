//! The messages a shard actor answers, and its status report.

use std::time::{Duration, Instant};

use actix::Message;

use crate::error::FatalError;
use crate::protocol::{Command, CommandError};
use crate::shard::Phase;

/// A shard's state as the status API reports it.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct ShardStatus {
    /// The shard id.
    pub id: u32,
    /// The shard total.
    pub total: u32,
    /// Where it is in its life.
    pub phase: Phase,
    /// Time from the last heartbeat to its ACK.
    pub latency: Option<Duration>,
    /// Last sequence received.
    pub seq: Option<u64>,
    /// The session id, once READY.
    pub session_id: Option<String>,
    /// Connections opened after the first.
    pub reconnects: u32,
    /// Why it stopped, if it stopped for good.
    pub fatal: Option<FatalError>,
    /// Events received but still waiting for a handler with a full mailbox.
    pub pending: usize,
    /// Deliveries dropped: to a stopped handler, to a full one under `SlowHandlers::Drop`, or to a
    /// full one that stalled the shard (see [`SlowHandlers`](crate::SlowHandlers)). A batch handler
    /// missing a batch counts one per event in it.
    pub dropped: u64,
    /// Since when the shard has held its reads back because handlers are behind (`None` while it
    /// reads). It stays set across a reconnect made meanwhile.
    pub reading_paused_since: Option<Instant>,
    /// Handlers that stalled the shard for `max_pause` and have not yet taken the event they were
    /// last given: events that find their mailbox full are dropped for them meanwhile.
    pub stalled_handlers: usize,
    /// In a fleet, the process that runs the shard (this one: a status lists only the shards this
    /// process holds); `None` outside a fleet.
    pub owner: Option<std::sync::Arc<str>>,
}

/// Asks a shard for its [`ShardStatus`].
#[derive(Debug, Clone, Copy, Message)]
#[rtype(result = "ShardStatus")]
pub struct GetStatus;

/// Sends a command on a shard's connection: at once if it is ready and under the rate limit, else
/// queued (bounded) until it is.
#[derive(Debug, Clone, Message)]
#[rtype(result = "Result<(), CommandError>")]
pub struct SendCommand(pub Command);

/// Closes a shard's connection and stops it. `resumable: true` closes with 4000 and keeps the
/// session in the store; `false` closes with 1000, which ends the session.
#[derive(Debug, Clone, Copy, Message)]
#[rtype(result = "()")]
pub struct Shutdown {
    /// Whether the session stays resumable.
    pub resumable: bool,
}

/// What a shard actor tells its supervisor.
#[derive(Debug, Clone, Message)]
#[rtype(result = "()")]
pub(crate) enum ShardNotice {
    /// READY or RESUMED arrived.
    Ready { id: u32 },
    /// The actor stopped.
    Stopped {
        id: u32,
        /// Which of the shard's actors (the supervisor numbers them as it starts them).
        incarnation: u64,
        fatal: Option<FatalError>,
        deliberate: bool,
    },
}

/// The shard's lease moved to another process (or could not be renewed in time): stop at once,
/// dropping the connection without sending anything on it, not even a close frame.
#[derive(Debug, Clone, Copy, Message)]
#[rtype(result = "()")]
pub(crate) struct Abandon;

/// After a reshard's cut: deliver what the set's gate held for this shard, ahead of anything the
/// shard reads next (`crate::reshard`).
#[derive(Debug, Clone, Copy, Message)]
#[rtype(result = "()")]
pub(crate) struct ReleaseHeld;
