//! Gateway opcodes (docs/protocol.md §2).

/// A gateway opcode: the `op` field of every frame.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[repr(u8)]
#[non_exhaustive]
pub enum OpCode {
    /// An event; `t` names it and `s` numbers it.
    Dispatch = 0,
    /// Heartbeat, sent by the client on its interval and requested by the server.
    Heartbeat = 1,
    /// Starts a new session.
    Identify = 2,
    /// Updates the bot's presence.
    PresenceUpdate = 3,
    /// Joins, moves or leaves a voice channel.
    VoiceStateUpdate = 4,
    /// Resumes a session after a reconnect.
    Resume = 6,
    /// The server asks the client to reconnect and resume.
    Reconnect = 7,
    /// Asks for a guild's members; answered with `GUILD_MEMBERS_CHUNK` dispatches.
    RequestGuildMembers = 8,
    /// The session is invalid; `d` says whether it may be resumed.
    InvalidSession = 9,
    /// First frame of a connection, carrying the heartbeat interval.
    Hello = 10,
    /// Acknowledges a heartbeat.
    HeartbeatAck = 11,
    /// Asks for the soundboard sounds of guilds.
    RequestSoundboardSounds = 31,
}

impl OpCode {
    /// The opcode for a number, or `None` for one the protocol does not define.
    pub const fn from_u8(op: u8) -> Option<Self> {
        Some(match op {
            0 => Self::Dispatch,
            1 => Self::Heartbeat,
            2 => Self::Identify,
            3 => Self::PresenceUpdate,
            4 => Self::VoiceStateUpdate,
            6 => Self::Resume,
            7 => Self::Reconnect,
            8 => Self::RequestGuildMembers,
            9 => Self::InvalidSession,
            10 => Self::Hello,
            11 => Self::HeartbeatAck,
            31 => Self::RequestSoundboardSounds,
            _ => return None,
        })
    }

    /// The opcode's number on the wire.
    pub const fn code(self) -> u8 {
        self as u8
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trips_every_defined_opcode_and_rejects_the_rest() {
        let defined: Vec<u8> = (0..=255)
            .filter(|&n| OpCode::from_u8(n).is_some())
            .collect();
        assert_eq!(defined, [0, 1, 2, 3, 4, 6, 7, 8, 9, 10, 11, 31]);
        for n in defined {
            assert_eq!(OpCode::from_u8(n).map(OpCode::code), Some(n));
        }
    }
}
