//! shardline: a sharded Discord gateway runtime on actix.
#![forbid(unsafe_code)]
#![warn(missing_docs)]
// Nothing that comes from the network may panic the process: no unwrap/expect outside tests.
#![cfg_attr(not(test), deny(clippy::unwrap_used, clippy::expect_used))]

mod client;
pub mod config;
pub mod error;
pub mod event;
mod fast_hash;
#[cfg(feature = "redis")]
pub mod fleet;
#[cfg(feature = "metrics")]
pub mod metrics;
#[cfg(not(feature = "metrics"))]
mod metrics;
pub mod ownership;
mod phase;
pub mod protocol;
pub mod queue;
pub mod reshard;
pub mod rest;
pub mod router;
pub mod session;
pub mod shard;
pub mod supervisor;
#[cfg(feature = "testkit")]
pub mod testkit;
mod token;
pub mod typed;
mod url;

#[cfg(test)]
mod receive_properties;

pub use config::{
    Backoff, Compression, Config, ConfigBuilder, Limits, ShardPlan, SlowHandlers, Timeouts,
};
pub use error::{ConfigError, FatalError, RestError, StartError};
pub use event::ShardEvent;
pub use protocol::{CloseCode, Command, CommandError, Intents, PresenceUpdate, Status};
pub use reshard::{shard_for_guild, ReshardError, ReshardOptions, ReshardReport};
pub use router::{Dispatch, DispatchBatch, Router, ThreadHandlers};
pub use session::{MemorySessionStore, SessionInfo, SessionStore};
pub use shard::{Phase, ShardStatus};
pub use supervisor::{Gateway, Supervisor};
pub use token::Token;
