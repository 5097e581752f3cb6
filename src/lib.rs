//! shardline: a sharded Discord gateway runtime on actix.
#![warn(missing_docs)]

pub mod protocol;

pub use protocol::{CloseCode, Command, Intents};
