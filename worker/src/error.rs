//! The one error type of `cyclotron-worker`.

use crate::data::DataError;

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error(transparent)]
    Data(#[from] DataError),
    #[error(transparent)]
    Text(#[from] crate::data::text::TextError),
    #[error(transparent)]
    Core(#[from] cyclotron_core::Error),
    #[error(transparent)]
    Collective(#[from] crate::collective::CollectiveError),
    #[error("libtorch: {0}")]
    Torch(#[from] tch::TchError),
    #[error("unknown model {arch:?}; known models: {}", cyclotron_core::spec::KNOWN_ARCHS.join(", "))]
    UnknownModel { arch: String },
    #[error("shape mismatch: {message}")]
    Shape { message: String },
    #[error("{what}: {message}")]
    Invalid { what: String, message: String },
    #[error("checkpoint {key}: {message}")]
    Checkpoint { key: String, message: String },
    #[error("training diverged at stage {stage}, step {step}: the loss is {loss}; lower the learning rate")]
    Diverged { stage: usize, step: u64, loss: f64 },
    #[error("{what}: {source}")]
    Io { what: String, source: std::io::Error },
    #[error("cancelled")]
    Cancelled,
    #[error("stopped after {epochs} epochs, as asked (the last checkpoint is committed)")]
    Stopped { epochs: u64 },
}

pub type Result<T, E = Error> = std::result::Result<T, E>;
