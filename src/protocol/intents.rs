//! Gateway intents (docs/protocol.md §7).

use std::fmt;
use std::ops::{BitOr, BitOrAssign};

/// A set of gateway intents: which events the bot asks Discord to send.
///
/// ```
/// use shardline::Intents;
/// let intents = Intents::GUILDS | Intents::GUILD_MESSAGES | Intents::MESSAGE_CONTENT;
/// assert_eq!(intents.bits(), 1 | 1 << 9 | 1 << 15);
/// assert!(intents.is_privileged());
/// assert!(Intents::from_bits(1 << 17).is_none());
/// ```
#[derive(Clone, Copy, PartialEq, Eq, Hash, Default)]
pub struct Intents(u64);

impl Intents {
    /// Guild create/update/delete, roles, channels, threads.
    pub const GUILDS: Self = Self(1 << 0);
    /// Member add/update/remove (privileged).
    pub const GUILD_MEMBERS: Self = Self(1 << 1);
    /// Bans and audit log entries.
    pub const GUILD_MODERATION: Self = Self(1 << 2);
    /// Emojis, stickers, soundboard sounds.
    pub const GUILD_EXPRESSIONS: Self = Self(1 << 3);
    /// Integrations.
    pub const GUILD_INTEGRATIONS: Self = Self(1 << 4);
    /// Webhooks.
    pub const GUILD_WEBHOOKS: Self = Self(1 << 5);
    /// Invites.
    pub const GUILD_INVITES: Self = Self(1 << 6);
    /// Voice states.
    pub const GUILD_VOICE_STATES: Self = Self(1 << 7);
    /// Presences (privileged).
    pub const GUILD_PRESENCES: Self = Self(1 << 8);
    /// Guild messages.
    pub const GUILD_MESSAGES: Self = Self(1 << 9);
    /// Guild message reactions.
    pub const GUILD_MESSAGE_REACTIONS: Self = Self(1 << 10);
    /// Guild typing.
    pub const GUILD_MESSAGE_TYPING: Self = Self(1 << 11);
    /// Direct messages.
    pub const DIRECT_MESSAGES: Self = Self(1 << 12);
    /// Direct message reactions.
    pub const DIRECT_MESSAGE_REACTIONS: Self = Self(1 << 13);
    /// Direct message typing.
    pub const DIRECT_MESSAGE_TYPING: Self = Self(1 << 14);
    /// Message content (privileged).
    pub const MESSAGE_CONTENT: Self = Self(1 << 15);
    /// Scheduled events.
    pub const GUILD_SCHEDULED_EVENTS: Self = Self(1 << 16);
    /// Auto-moderation rules.
    pub const AUTO_MODERATION_CONFIGURATION: Self = Self(1 << 20);
    /// Auto-moderation actions.
    pub const AUTO_MODERATION_EXECUTION: Self = Self(1 << 21);
    /// Guild poll votes.
    pub const GUILD_MESSAGE_POLLS: Self = Self(1 << 24);
    /// Direct message poll votes.
    pub const DIRECT_MESSAGE_POLLS: Self = Self(1 << 25);

    /// Every documented intent: 53608447.
    pub const ALL: Self = Self(53_608_447);
    /// The privileged intents: 33026.
    pub const PRIVILEGED: Self =
        Self(Self::GUILD_MEMBERS.0 | Self::GUILD_PRESENCES.0 | Self::MESSAGE_CONTENT.0);

    /// No intents.
    pub const fn empty() -> Self {
        Self(0)
    }

    /// The largest value Discord's JSON integers carry exactly (2^53 - 1): intent bits above it
    /// cannot be meant, and are refused rather than sent.
    pub const MAX_BITS: u64 = (1 << 53) - 1;

    /// The intents for `bits`, or `None` if a bit is set that no documented intent uses.
    pub const fn from_bits(bits: u64) -> Option<Self> {
        if bits & !Self::ALL.0 == 0 {
            Some(Self(bits))
        } else {
            None
        }
    }

    /// The intents for `bits`, documented or not, or `None` when a bit lies above
    /// [`MAX_BITS`](Self::MAX_BITS). Discord adds intents from time to time (docs/protocol.md §7), so
    /// a bit this version does not know may be one it has not heard of yet.
    pub const fn from_bits_retain(bits: u64) -> Option<Self> {
        if bits & !Self::MAX_BITS == 0 {
            Some(Self(bits))
        } else {
            None
        }
    }

    /// The bits that no intent documented in this version uses.
    pub const fn unknown_bits(self) -> u64 {
        self.0 & !Self::ALL.0
    }

    /// The bits as sent in Identify.
    pub const fn bits(self) -> u64 {
        self.0
    }

    /// Whether every intent in `other` is in `self`.
    pub const fn contains(self, other: Self) -> bool {
        self.0 & other.0 == other.0
    }

    /// Whether any privileged intent is set.
    pub const fn is_privileged(self) -> bool {
        self.0 & Self::PRIVILEGED.0 != 0
    }
}

impl BitOr for Intents {
    type Output = Self;
    fn bitor(self, rhs: Self) -> Self {
        Self(self.0 | rhs.0)
    }
}

impl BitOrAssign for Intents {
    fn bitor_assign(&mut self, rhs: Self) {
        self.0 |= rhs.0;
    }
}

impl fmt::Debug for Intents {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Intents({:#x})", self.0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn all_and_privileged_match_the_documented_values() {
        let every = [
            0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15, 16, 20, 21, 24, 25,
        ]
        .iter()
        .fold(0u64, |acc, bit| acc | 1 << bit);
        assert_eq!(Intents::ALL.bits(), every);
        assert_eq!(Intents::PRIVILEGED.bits(), 33026);
        assert!(Intents::from_bits(every).is_some());
        for bad in [17, 18, 19, 22, 23, 26, 40] {
            assert!(Intents::from_bits(1 << bad).is_none(), "bit {bad}");
        }
    }
}
