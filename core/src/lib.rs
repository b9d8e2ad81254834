//! `cyclotron-core`: what every Cyclotron role shares, with no libtorch inside, so the
//! coordinator builds and ships without it.
//!
//! - [`spec`]: the TOML job spec and its validation;
//! - [`schedule`]: learning-rate schedules as pure functions of the step (constant, cosine, SGDR, one-cycle);
//! - [`lr_range`]: LR-range test analysis (smoothing, divergence stop, suggestions);
//! - [`checkpoint`]: the checkpoint manifest and the store over `object_store` (`file://`, `memory://`);
//! - [`sweep`]: parallel LR sweeps: candidate configs, grid points, merging and choosing;
//! - [`results`]: what a job reports (`results.json`, `lr_find.json`);
//! - [`events`]: training progress as a stream of events (`--events-jsonl`, worker progress reports);
//! - [`metrics`]: metric names, the `/metrics` HTTP server;
//! - [`ids`]: identifier newtypes.

pub mod checkpoint;
pub mod error;
pub mod events;
pub mod ids;
pub mod lr_range;
pub mod metrics;
pub mod results;
pub mod schedule;
pub mod serde_nan;
pub mod spec;
pub mod sweep;

pub use error::{Error, Result};
