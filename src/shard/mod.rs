//! One shard's life: the sans-IO protocol state machine (`state`) and the actor that drives it
//! over a websocket (`actor`). Only what a bot needs is public: a shard's [`Phase`], its
//! [`ShardStatus`] and the messages the supervisor relays.

pub(crate) mod state;

pub use state::{Phase, RESUME_HOST_ATTEMPTS};
pub(crate) mod actor;
pub(crate) mod backoff;
pub(crate) mod delivery;
pub(crate) mod framing;
pub(crate) mod gate;
pub(crate) mod heartbeat_grid;
pub(crate) mod inflate;
pub(crate) mod limiter;
pub(crate) mod log_throttle;
pub mod messages;
pub(crate) mod pause;
pub(crate) mod read_pool;
#[cfg(feature = "zstd")]
pub(crate) mod zstd_stream;
pub(crate) use actor::ShardActor;
pub use messages::{GetStatus, SendCommand, ShardStatus, Shutdown};
