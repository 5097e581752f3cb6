// The type lives with the other error enums (`crate::error`); here, what only Redis brings.
pub use crate::error::FleetError;

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
