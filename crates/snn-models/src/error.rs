use std::path::PathBuf;

/// Errors raised while describing, building, running or storing a network.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The network description is inconsistent.
    #[error("invalid network spec: {0}")]
    Spec(String),
    /// No built-in architecture has this name.
    #[error("unknown model '{name}' (available: {available})")]
    UnknownModel {
        /// The requested name.
        name: String,
        /// The names that exist.
        available: String,
    },
    /// A checkpoint file could not be used.
    #[error("checkpoint {path}: {msg}")]
    Checkpoint {
        /// The file.
        path: PathBuf,
        /// What is wrong with it.
        msg: String,
    },
    /// Weights given to a network do not fit its spec.
    #[error("weights do not fit the network: {0}")]
    Weights(String),
    /// A NIR graph or file could not be converted, read or written.
    #[error("NIR: {0}")]
    Nir(String),
    /// A file could not be read or written.
    #[error("{path}: {source}")]
    Io {
        /// The file.
        path: PathBuf,
        /// The OS error.
        source: std::io::Error,
    },
    /// A neuron-dynamics error.
    #[error(transparent)]
    Core(#[from] snn_core::Error),
    /// A tensor error.
    #[error(transparent)]
    Candle(#[from] candle_core::Error),
}

/// Result alias of this crate.
pub type Result<T> = std::result::Result<T, Error>;
