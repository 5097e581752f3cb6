//! shardline: a sharded Discord gateway runtime on actix.
#![warn(missing_docs)]

pub mod protocol;
#[cfg(feature = "testkit")]
pub mod testkit;

pub use protocol::{CloseCode, Command, Intents};
