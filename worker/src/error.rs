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
    /// A non-finite loss: of a training batch (`split` "training"), or of the validation split at
    /// an epoch's end ("validation": the weights or BatchNorm statistics went non-finite while
    /// every batch loss stayed finite). `stage` counts from 0.
    #[error(
        "training diverged in stage {} at step {step}: the {split} loss is {loss}; lower that stage's lr (or set lr = \"auto\" with an [lr_find] section)",
        stage + 1
    )]
    Diverged { stage: usize, step: u64, loss: f64, split: &'static str },
    #[error("{what}: {source}")]
    Io { what: String, source: std::io::Error },
    #[error("cancelled")]
    Cancelled,
    #[error("stopped after {epochs} epochs, as asked (the last checkpoint is committed)")]
    Stopped { epochs: u64 },
}

pub type Result<T, E = Error> = std::result::Result<T, E>;
