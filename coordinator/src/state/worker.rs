//! Workers as the state machine sees them: registered, idle or busy on a task, or dead once the
//! leader declared its lease expired. Lease renewals (heartbeats) live in the leader's memory, not
//! in the log (see `crate::leases`): only registration and expiry are committed.

use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum WorkerStatus {
    Idle,
    Busy,
    Dead,
}

impl WorkerStatus {
    pub fn name(&self) -> &'static str {
        match self {
            WorkerStatus::Idle => "idle",
            WorkerStatus::Busy => "busy",
            WorkerStatus::Dead => "dead",
        }
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct WorkerRecord {
    /// Where its data plane (ring all-reduce) listens.
    pub addr: String,
    pub status: WorkerStatus,
    /// Lease length granted at registration (renewed in the leader's memory by heartbeats).
    pub lease_ms: u64,
    /// Leader-clock milliseconds of the (last) registration.
    pub registered_ms: u64,
    /// The task it runs: (job, task index, rendezvous generation).
    pub task: Option<(String, usize, u64)>,
    /// Hex SHA-256 of its current session secret (empty: registered before sessions existed).
    #[serde(default)]
    pub session_hash: String,
    /// GPUs it offers (0: it trains on its CPUs).
    #[serde(default)]
    pub gpus: u32,
}
