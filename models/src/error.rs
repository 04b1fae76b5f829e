//! One error type for model drivers: a message with the context chain already folded in.

use std::fmt;

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ModelError {
    pub message: String,
}

impl ModelError {
    pub fn new(message: impl Into<String>) -> Self {
        ModelError {
            message: message.into(),
        }
    }

    /// Prefixes the message with where it happened (a file, a tensor, a stage).
    pub fn context(self, what: &str) -> Self {
        ModelError::new(format!("{what}: {}", self.message))
    }
}

impl fmt::Display for ModelError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.message)
    }
}

impl std::error::Error for ModelError {}
