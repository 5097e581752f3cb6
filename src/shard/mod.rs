//! One shard's life: the sans-IO protocol state machine ([`state`]) and the actor that drives it
//! over a websocket ([`actor`]).

pub mod state;

pub use state::{Action, IdentifyParams, Phase, ShardState};
pub mod actor;
pub mod backoff;
pub(crate) mod client;
pub mod delivery;
pub mod framing;
pub mod heartbeat_grid;
pub mod inflate;
pub mod limiter;
pub mod messages;
pub mod pause;
pub mod read_pool;
#[cfg(feature = "zstd")]
pub mod zstd_stream;
pub use actor::ShardActor;
pub use messages::{GetStatus, SendCommand, ShardStatus, Shutdown};
