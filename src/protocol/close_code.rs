//! Gateway close codes and what the client does after each (docs/protocol.md §4).

use std::fmt;

/// What a shard does after the server closed its connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CloseAction {
    /// Reconnect and resume the session.
    Resume,
    /// Reconnect and identify: the session is gone.
    Identify,
    /// Do not reconnect: the configuration is wrong and retrying cannot help.
    Fatal,
}

/// A close code the gateway sends, 4000–4014 (docs/protocol.md §4).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[repr(u16)]
#[non_exhaustive]
pub enum CloseCode {
    /// 4000: unknown error.
    UnknownError = 4000,
    /// 4001: unknown opcode or invalid payload.
    UnknownOpcode = 4001,
    /// 4002: decode error, or a sent payload over 4096 bytes.
    DecodeError = 4002,
    /// 4003: a payload was sent before Identify.
    NotAuthenticated = 4003,
    /// 4004: the token is wrong.
    AuthenticationFailed = 4004,
    /// 4005: Identify or Resume was sent twice.
    AlreadyAuthenticated = 4005,
    /// 4007: the sequence sent with Resume is invalid.
    InvalidSeq = 4007,
    /// 4008: more than 120 commands in 60 s.
    RateLimited = 4008,
    /// 4009: the session timed out.
    SessionTimedOut = 4009,
    /// 4010: the shard in Identify is invalid.
    InvalidShard = 4010,
    /// 4011: the bot has too many guilds for its shard count.
    ShardingRequired = 4011,
    /// 4012: the `v` query parameter is wrong.
    InvalidApiVersion = 4012,
    /// 4013: the intents in Identify are invalid.
    InvalidIntents = 4013,
    /// 4014: the intents include privileged intents the bot may not use.
    DisallowedIntents = 4014,
}

impl CloseCode {
    /// Every close code, in numeric order.
    pub const ALL: [CloseCode; 14] = [
        Self::UnknownError,
        Self::UnknownOpcode,
        Self::DecodeError,
        Self::NotAuthenticated,
        Self::AuthenticationFailed,
        Self::AlreadyAuthenticated,
        Self::InvalidSeq,
        Self::RateLimited,
        Self::SessionTimedOut,
        Self::InvalidShard,
        Self::ShardingRequired,
        Self::InvalidApiVersion,
        Self::InvalidIntents,
        Self::DisallowedIntents,
    ];

    /// The close code for a number, or `None` when the gateway does not define it.
    pub fn from_u16(code: u16) -> Option<Self> {
        Self::ALL.iter().copied().find(|c| c.code() == code)
    }

    /// The number on the wire.
    pub const fn code(self) -> u16 {
        self as u16
    }

    /// What the client does after the server closed with this code: the "then" column of §4.
    pub const fn action(self) -> CloseAction {
        match self {
            Self::AuthenticationFailed
            | Self::InvalidShard
            | Self::ShardingRequired
            | Self::InvalidApiVersion
            | Self::InvalidIntents
            | Self::DisallowedIntents => CloseAction::Fatal,
            Self::NotAuthenticated | Self::InvalidSeq | Self::SessionTimedOut => {
                CloseAction::Identify
            }
            Self::UnknownError
            | Self::UnknownOpcode
            | Self::DecodeError
            | Self::AlreadyAuthenticated
            | Self::RateLimited => CloseAction::Resume,
        }
    }

    /// The meaning of the code, as the gateway documents it.
    pub const fn description(self) -> &'static str {
        match self {
            Self::UnknownError => "unknown error",
            Self::UnknownOpcode => "unknown opcode or invalid payload",
            Self::DecodeError => "decode error (or a payload over 4096 bytes)",
            Self::NotAuthenticated => "not authenticated (payload sent before Identify)",
            Self::AuthenticationFailed => "authentication failed: the token is invalid",
            Self::AlreadyAuthenticated => "already authenticated",
            Self::InvalidSeq => "invalid sequence on resume",
            Self::RateLimited => "rate limited: over 120 commands in 60 s",
            Self::SessionTimedOut => "session timed out",
            Self::InvalidShard => "invalid shard",
            Self::ShardingRequired => "sharding required: too many guilds for the shard count",
            Self::InvalidApiVersion => "invalid API version",
            Self::InvalidIntents => "invalid intents",
            Self::DisallowedIntents => "disallowed intents: a privileged intent is not enabled",
        }
    }
}

/// The action for any close code, including ones outside 4000–4014 (they resume, as a drop does).
pub fn action_for(code: u16) -> CloseAction {
    CloseCode::from_u16(code).map_or(CloseAction::Resume, CloseCode::action)
}

impl fmt::Display for CloseCode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} ({})", self.code(), self.description())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_code_maps_to_the_table_in_protocol_md() {
        let expected = [
            (4000, CloseAction::Resume),
            (4001, CloseAction::Resume),
            (4002, CloseAction::Resume),
            (4003, CloseAction::Identify),
            (4004, CloseAction::Fatal),
            (4005, CloseAction::Resume),
            (4007, CloseAction::Identify),
            (4008, CloseAction::Resume),
            (4009, CloseAction::Identify),
            (4010, CloseAction::Fatal),
            (4011, CloseAction::Fatal),
            (4012, CloseAction::Fatal),
            (4013, CloseAction::Fatal),
            (4014, CloseAction::Fatal),
        ];
        for (code, action) in expected {
            assert_eq!(action_for(code), action, "close code {code}");
            assert_eq!(CloseCode::from_u16(code).map(CloseCode::code), Some(code));
        }
        assert_eq!(CloseCode::from_u16(4006), None);
        assert_eq!(action_for(1006), CloseAction::Resume);
        assert_eq!(action_for(4999), CloseAction::Resume);
    }
}
