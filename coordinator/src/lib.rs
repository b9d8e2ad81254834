//! `cyclotron-coordinator`: the control plane. It turns a job spec into tasks ([`plan`]), keeps
//! every job's and worker's state in a pure, replicated state machine ([`state`]) — every change
//! is a command committed to the raft log and applied in order, so any replica that becomes
//! leader carries on where the old one stood — and decides what to do next ([`scheduler`]):
//! lease expiry, assigning tasks to groups of workers, restarting a run whose group lost a worker.
//!
//! The raft node, its storage and transport, and the gRPC services arrive with the coordinator
//! issue; they will feed [`state::Command`]s through raft and apply them with
//! [`state::ClusterState::apply`].

pub mod leases;
pub mod live;
pub mod metrics;
pub mod plan;
pub mod raft;
pub mod scheduler;
pub mod server;
pub mod state;
pub mod web;

pub use plan::{plan, Task};
pub mod replica;
