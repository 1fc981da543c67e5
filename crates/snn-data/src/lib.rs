//! placeholder
/// Dataset errors.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// placeholder
    #[error("x")]
    X,
}
