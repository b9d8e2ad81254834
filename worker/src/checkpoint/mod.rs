//! Checkpoint I/O of a training job: what a periodic checkpoint holds ([`state`]), capturing it
//! from a learner and restoring a learner from it, and the background [`uploader`] that stores it.
//!
//! A checkpoint is taken at an epoch end: `model.safetensors` (every variable, buffers included),
//! `optim.safetensors` (momentum buffers / Adam moments), `ensemble.safetensors` (the predictions
//! of the snapshots taken so far, which the final ensemble averages) and `state.json`
//! ([`state::TrainState`]: step, epochs, stage and position in its schedule, seed, LR-range
//! results, the history so far). Resuming from it continues with the same schedule position and
//! data order (the shuffle is a pure function of seed and epoch), so a deterministic run resumed
//! gives the same losses as one never interrupted. [`restore_latest`] is the one entry point a
//! resume uses, the CLI's `--resume` today and the coordinator's restart path later.

pub mod bench;
pub mod snapshot;
pub mod state;
pub mod uploader;

pub use state::{capture, hand_off, restore_latest, share_weights, Restored, SnapshotProbs, TrainState};
pub use uploader::{Pending, Uploader};
