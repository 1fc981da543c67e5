use std::path::PathBuf;

/// Errors raised by training, evaluation and the golden-vector checks.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A recipe or option is out of range.
    #[error("invalid configuration: {0}")]
    Config(String),
    /// A golden-vector case is malformed.
    #[error("golden case {path}: {msg}")]
    Golden {
        /// The file.
        path: PathBuf,
        /// What is wrong.
        msg: String,
    },
    /// Training diverged.
    #[error("non-finite {what} at epoch {epoch}, batch {batch}")]
    NonFinite {
        /// Which quantity (loss, a named gradient or weight).
        what: String,
        /// 1-based epoch.
        epoch: usize,
        /// 0-based batch within the epoch.
        batch: usize,
    },
    /// Training was asked to stop; its state was saved when an output folder was given.
    #[error("interrupted at epoch {epoch} after batch {batch}")]
    Interrupted {
        /// 1-based epoch.
        epoch: usize,
        /// Batches of that epoch completed.
        batch: usize,
    },
    /// A file could not be read or written.
    #[error("{path}: {source}")]
    Io {
        /// The file.
        path: PathBuf,
        /// The OS error.
        source: std::io::Error,
    },
    /// A model error.
    #[error(transparent)]
    Model(#[from] snn_models::Error),
    /// A dataset error.
    #[error(transparent)]
    Data(#[from] snn_data::Error),
    /// A neuron-dynamics error.
    #[error(transparent)]
    Core(#[from] snn_core::Error),
    /// A tensor error.
    #[error(transparent)]
    Candle(#[from] candle_core::Error),
}

/// Result alias of this crate.
pub type Result<T> = std::result::Result<T, Error>;
