//! The bot token, as a type that never shows itself (docs/design.md, "The token").

use std::fmt;
use std::sync::Arc;

/// A bot token. `Debug` and `Display` print `Token(<redacted>)`, so it cannot leak through logs,
/// errors or status output.
///
/// ```
/// use shardline::Token;
/// let token = Token::new("secret.token.value");
/// assert_eq!(format!("{token:?} {token}"), "Token(<redacted>) Token(<redacted>)");
/// ```
#[derive(Clone, PartialEq, Eq)]
pub struct Token(Arc<str>);

impl Token {
    /// Wraps a bare token (without the `Bot ` prefix).
    pub fn new(token: impl Into<String>) -> Self {
        let token: String = token.into();
        Self(Arc::from(token.trim()))
    }

    /// The bare token, for the two places it must go: Identify/Resume and `Authorization`.
    pub(crate) fn expose(&self) -> &str {
        &self.0
    }

    /// Whether the token is empty.
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

impl fmt::Debug for Token {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Token(<redacted>)")
    }
}

impl fmt::Display for Token {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Token(<redacted>)")
    }
}

impl From<&str> for Token {
    fn from(token: &str) -> Self {
        Self::new(token)
    }
}

impl From<String> for Token {
    fn from(token: String) -> Self {
        Self::new(token)
    }
}
