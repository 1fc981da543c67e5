use std::path::PathBuf;

/// Errors raised while reading datasets.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A file could not be opened or read.
    #[error("{path}: {source}")]
    Io {
        /// The file.
        path: PathBuf,
        /// The OS error.
        source: std::io::Error,
    },
    /// A file's content does not follow its format.
    #[error("{path}: {msg}")]
    Format {
        /// The file (or archive member).
        path: PathBuf,
        /// What is wrong.
        msg: String,
    },
    /// Two parts of a dataset disagree (e.g. image and label counts).
    #[error("{0}")]
    Mismatch(String),
    /// A caller's argument is outside its range (a batch size or step count of 0, a sample index past the
    /// end of the dataset, a buffer of the wrong length).
    #[error("{0}")]
    InvalidArgument(String),
    /// A Hub download or cache lookup failed.
    #[error("{what}: {msg}")]
    Hub {
        /// The repository or file concerned.
        what: String,
        /// What went wrong.
        msg: String,
    },
    /// A dataset file was not found.
    #[error("{what} not found in {dir} (looked for {candidates})")]
    NotFound {
        /// What was looked for.
        what: String,
        /// The folder searched.
        dir: PathBuf,
        /// The file names tried.
        candidates: String,
    },
}

/// Result alias of this crate.
pub type Result<T> = std::result::Result<T, Error>;
