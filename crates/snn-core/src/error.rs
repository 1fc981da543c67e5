/// Errors raised by the neuron dynamics.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A tensor had an unusable shape for the requested operation.
    #[error("{op}: {msg}")]
    Shape {
        /// The operation that rejected the tensor.
        op: &'static str,
        /// What was wrong.
        msg: String,
    },
    /// A neuron or encoder parameter was out of its valid range.
    #[error("invalid parameter {name} = {value}: {msg}")]
    Parameter {
        /// Parameter name.
        name: &'static str,
        /// Offending value.
        value: f64,
        /// Valid range or reason.
        msg: &'static str,
    },
    /// An error reported by Candle.
    #[error(transparent)]
    Candle(#[from] candle_core::Error),
}

/// Result alias of this crate.
pub type Result<T> = std::result::Result<T, Error>;
