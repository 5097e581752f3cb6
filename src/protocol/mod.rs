//! The wire, and nothing else: opcodes, close codes, intents, the frames a client sends, and the lazy
//! parse of a received frame. Pure functions and plain data (docs/protocol.md).

pub mod close_code;
pub mod command;
pub mod envelope;
pub mod events;
pub mod intents;
pub mod opcode;

pub use close_code::{CloseAction, CloseCode};
pub use command::{Command, CommandError, PresenceUpdate, Status};
pub use envelope::{DataSpan, Envelope, EnvelopeError, EventName};
pub use intents::Intents;
pub use opcode::OpCode;

/// The gateway API version this crate speaks (docs/protocol.md §1).
pub const API_VERSION: u8 = 10;
pub mod prescan;
