//! Workers as the state machine sees them: registered with a lease, idle or busy on a task, or
//! dead once the lease ran out without a heartbeat.

use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum WorkerStatus {
    Idle,
    Busy,
    Dead,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct WorkerRecord {
    /// Where its data plane (ring all-reduce) listens.
    pub addr: String,
    pub status: WorkerStatus,
    /// Leader-clock milliseconds after which the worker is dead unless it heartbeats.
    pub lease_expires_ms: u64,
    pub lease_ms: u64,
    /// The task it runs: (job, task index, rendezvous generation).
    pub task: Option<(String, usize, u64)>,
}
