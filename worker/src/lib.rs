//! `cyclotron-worker`: the only crate that links libtorch. It trains: models split into layer
//! groups ([`models`]), data sets and the background loader ([`data`]), optimisers with per-group
//! learning rates ([`optim`]), the [`learner`] (fit by any schedule, LR-range test, evaluation),
//! snapshot [`ensemble`]s, [`job`], which runs a whole job spec on one process, its Prometheus
//! [`metrics`], and the [`agent`] (`cyclotron worker`), which runs the coordinator's assignments
//! as child processes.

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
pub mod job;
pub mod learner;
pub mod metrics;
pub mod models;
pub mod optim;
pub mod precompute;
pub mod sweep;
pub mod tensor_io;
pub mod tta;

pub use error::{Error, Result};
