//! One error type for the engine. The variants say whose fault a failure is, so the HTTP
//! layers can map them to status codes without parsing messages.

use std::path::PathBuf;

#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The caller asked for something impossible (bad parameter, unusable image): a 4xx.
    #[error("{0}")]
    InvalidInput(String),
    /// A model id that is malformed or unsafe (path traversal, control characters...).
    #[error("invalid model id '{id}': {reason}")]
    InvalidModelId { id: String, reason: String },
    /// The model is not in the model directory and could not be downloaded.
    #[error("model '{id}' not found in {}{}", dir.display(), hint)]
    ModelNotFound {
        id: String,
        dir: PathBuf,
        hint: String,
    },
    /// A model folder that exists but cannot be used (missing file, bad config, wrong tensor).
    #[error("{0}")]
    Model(String),
    /// The cause is part of the message and deliberately not an error `source`: chained
    /// reports (anyhow's `{:#}`) would print it twice.
    #[error("{}: {cause}", path.display())]
    Io {
        path: PathBuf,
        cause: std::io::Error,
    },
    #[error(transparent)]
    Tensor(#[from] candle_core::Error),
}

pub type Result<T> = std::result::Result<T, Error>;

impl Error {
    pub fn io(path: impl Into<PathBuf>, source: std::io::Error) -> Self {
        Error::Io {
            path: path.into(),
            cause: source,
        }
    }
}

/// Reads and parses a JSON file, naming the file in any error.
pub fn read_json<T: serde::de::DeserializeOwned>(path: &std::path::Path) -> Result<T> {
    let text = std::fs::read_to_string(path).map_err(|e| Error::io(path, e))?;
    serde_json::from_str(&text).map_err(|e| Error::Model(format!("{}: {e}", path.display())))
}
