use std::fmt;

/// What went wrong talking to the fleet's Redis.
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
}

impl fmt::Display for FleetError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Connect { url, reason } => write!(f, "cannot reach Redis at {url}: {reason}"),
            Self::Command(why) => write!(f, "Redis command failed: {why}"),
            Self::Config(what, why) => write!(f, "invalid fleet setting {what}: {why}"),
        }
    }
}

impl std::error::Error for FleetError {}

impl From<redis::RedisError> for FleetError {
    fn from(e: redis::RedisError) -> Self {
        Self::Command(e.to_string())
    }
}

impl From<redis::ParsingError> for FleetError {
    fn from(e: redis::ParsingError) -> Self {
        Self::Command(format!("unexpected answer: {e}"))
    }
}
