//! Error types, one per concern, each with kinds a caller can match on.

use std::fmt;

use crate::protocol::CloseCode;

/// The configuration cannot run: found when the config is built, never later.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum ConfigError {
    /// The token is empty.
    EmptyToken,
    /// The shard count (or total) is zero.
    ZeroShards,
    /// The range of shard ids is empty.
    EmptyShardRange,
    /// A shard id is not below the total.
    ShardOutOfRange {
        /// The offending id.
        id: u32,
        /// The total.
        total: u32,
    },
    /// `large_threshold` is outside 50..=250 (docs/protocol.md §2).
    LargeThreshold(u16),
    /// Intent bits above 2^53, which no JSON integer of Discord's carries (docs/protocol.md §7).
    IntentsOutOfRange(u64),
    /// `max_concurrency` is zero.
    ZeroMaxConcurrency,
    /// The number of arbiters is zero.
    ZeroArbiters,
    /// A URL is not of the form the setting needs (the setting, then why).
    InvalidUrl(&'static str, String),
    /// A limit or timeout is zero or out of its range (which one, then why).
    InvalidLimit(&'static str, String),
    /// A root certificate added to the config is not one (its index among those added, then why).
    InvalidRootCertificate {
        /// Which one, counted from 0 in the order they were added.
        index: usize,
        /// Why it was refused.
        reason: String,
    },
    /// rustls refused the TLS client configuration.
    Tls(String),
    /// An entry of `allowed_resume_domains` is not a bare host name such as `discord.gg`.
    InvalidResumeDomain {
        /// The entry.
        domain: String,
        /// Why it is refused.
        why: &'static str,
    },
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::EmptyToken => f.write_str("the token is empty"),
            Self::ZeroShards => f.write_str("the shard count must be at least 1"),
            Self::EmptyShardRange => f.write_str("the range of shard ids is empty"),
            Self::ShardOutOfRange { id, total } => {
                write!(f, "shard id {id} is not below the shard total {total}")
            }
            Self::LargeThreshold(n) => write!(f, "large_threshold {n} is outside 50..=250"),
            Self::IntentsOutOfRange(bits) => {
                write!(f, "intent bits {bits:#x} lie above 2^53, beyond any intent")
            }
            Self::ZeroMaxConcurrency => f.write_str("max_concurrency must be at least 1"),
            Self::ZeroArbiters => f.write_str("the number of arbiters must be at least 1"),
            Self::InvalidUrl(what, why) => write!(f, "invalid {what}: {why}"),
            Self::InvalidLimit(what, why) => write!(f, "invalid {what}: {why}"),
            Self::InvalidRootCertificate { index, reason } => {
                write!(
                    f,
                    "root certificate #{index} is not a valid certificate: {reason}"
                )
            }
            Self::Tls(why) => write!(f, "TLS client configuration: {why}"),
            Self::InvalidResumeDomain { domain, why } => {
                write!(
                    f,
                    "allowed_resume_domains entry {domain:?} is refused: {why}"
                )
            }
        }
    }
}

impl std::error::Error for ConfigError {}

/// Why a shard stopped for good.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum FatalError {
    /// The gateway closed with a code after which reconnecting cannot help (docs/protocol.md §4).
    Closed(CloseCode),
}

impl fmt::Display for FatalError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Closed(code) => write!(f, "gateway closed the shard with {code}"),
        }
    }
}

impl std::error::Error for FatalError {}

/// Why the runtime could not start.
#[derive(Debug)]
#[non_exhaustive]
pub enum StartError {
    /// The configuration is invalid.
    Config(ConfigError),
    /// `GET /gateway/bot` failed.
    Rest(RestError),
    /// More shards must identify than the bot's whole session-start budget allows: starting would
    /// burn it (and Discord resets the token of a bot that exhausts it).
    IdentifyBudget {
        /// Shards that would identify (those without a stored session).
        needed: u32,
        /// Session starts per period.
        total: u32,
        /// Session starts left now.
        remaining: u32,
    },
    /// The fleet's Redis cannot be reached, or the fleet options are unusable (feature `redis`).
    #[cfg(feature = "redis")]
    Fleet(FleetError),
}

impl fmt::Display for StartError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Config(e) => write!(f, "configuration: {e}"),
            Self::Rest(e) => write!(f, "GET /gateway/bot: {e}"),
            Self::IdentifyBudget { needed, total, remaining } => write!(
                f,
                "{needed} shards must identify but the session-start budget is {total} per day ({remaining} left)"
            ),
            #[cfg(feature = "redis")]
            Self::Fleet(e) => write!(f, "fleet: {e}"),
        }
    }
}

impl std::error::Error for StartError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            Self::Config(e) => Some(e),
            Self::Rest(e) => Some(e),
            Self::IdentifyBudget { .. } => None,
            #[cfg(feature = "redis")]
            Self::Fleet(e) => Some(e),
        }
    }
}

impl From<ConfigError> for StartError {
    fn from(e: ConfigError) -> Self {
        Self::Config(e)
    }
}

impl From<RestError> for StartError {
    fn from(e: RestError) -> Self {
        Self::Rest(e)
    }
}

/// A REST call to Discord failed.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum RestError {
    /// The request did not complete (connect, TLS, timeout).
    Transport(String),
    /// 401: the token was refused.
    Unauthorized,
    /// Another non-success status, with the start of the body.
    Status(u16, String),
    /// The body is not the documented JSON.
    Body(String),
}

impl fmt::Display for RestError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Transport(e) => write!(f, "request failed: {e}"),
            Self::Unauthorized => f.write_str("401 Unauthorized: the token was refused"),
            Self::Status(code, body) => write!(f, "HTTP {code}: {body}"),
            Self::Body(e) => write!(f, "unexpected body: {e}"),
        }
    }
}

impl std::error::Error for RestError {}

/// What went wrong talking to the fleet's Redis.
#[cfg(feature = "redis")]
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum FleetError {
    /// Redis could not be reached or did not answer (at start).
    Connect {
        /// The URL, without its password.
        url: String,
        /// Why.
        reason: String,
    },
    /// A command failed (Redis went away, timed out, or refused it).
    Command(String),
    /// The fleet's settings are not usable (which one, then why).
    Config(&'static str, String),
    /// The running fleet has another shard total than this process resolved (a process started
    /// with another count, or after Discord changed its recommendation): joining would resume
    /// sessions identified for the other total. Start it with the fleet's total, or reshard.
    TotalMismatch {
        /// The total of the fleet's live members.
        fleet: u32,
        /// The total this process resolved.
        ours: u32,
    },
}

#[cfg(feature = "redis")]
impl fmt::Display for FleetError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Connect { url, reason } => write!(f, "cannot reach Redis at {url}: {reason}"),
            Self::Command(why) => write!(f, "Redis command failed: {why}"),
            Self::Config(what, why) => write!(f, "invalid fleet setting {what}: {why}"),
            Self::TotalMismatch { fleet, ours } => write!(
                f,
                "the running fleet has {fleet} shards in all, this process {ours}: start it with the fleet's total"
            ),
        }
    }
}

#[cfg(feature = "redis")]
impl std::error::Error for FleetError {}
