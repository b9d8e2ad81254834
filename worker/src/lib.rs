//! `cyclotron-worker`: the only crate that links libtorch. In layers, each using only those
//! below it:
//! 1. [`data`] (data sets, sources, the background loader), [`models`] (variables in layer
//!    groups, the architectures), [`optim`] (per-group learning rates), [`collective`] (ring,
//!    NCCL), [`event`] (what training reports), [`tensor_io`], [`runtime`];
//! 2. [`distributed`] (gradient averaging over a group, a trait of its own) and [`task`] (what
//!    differs between kinds of training: batches, forward and loss, predictions, metrics);
//! 3. the [`learner`] (the loop and the one training step, the LR-range test);
//! 4. [`checkpoint`], [`tta`], [`ensemble`], then [`job`] (a whole job spec on one process),
//!    [`sweep`] and [`evaluate`] (a cluster's other tasks), [`metrics`], [`bench`];
//! 5. the [`agent`] (`cyclotron worker`), which runs the coordinator's assignments as child
//!    processes and sees training only through [`event`].

pub mod agent;
pub mod allocator;
pub mod bench;
pub mod checkpoint;
pub mod collective;
pub mod data;
pub mod distributed;
pub mod ensemble;
pub mod error;
pub mod evaluate;
pub mod event;
pub mod fault;
pub mod job;
pub mod learner;
pub mod memory_format;
pub mod metrics;
pub mod models;
pub mod optim;
pub mod precision;
pub mod predict;
pub mod runtime;
pub mod sweep;
pub mod task;
pub mod tensor_io;
#[cfg(test)]
mod test_support;
pub mod tta;

pub use error::{Error, Result};
