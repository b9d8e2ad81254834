//! The replicated state machine of the coordinator.
//!
//! Contract: [`ClusterState::apply`] is a pure function of the state and one [`Command`]: no I/O,
//! no clock (time arrives inside commands, stamped by the leader that proposed them), no
//! randomness. Every replica applying the same committed log reaches the same state, which is
//! what lets a new raft leader continue every job. Commands that no longer make sense when they
//! are applied (a heartbeat from a worker declared dead, a result for a cancelled job) are
//! rejected with an [`Outcome::Rejected`] reason and change nothing.

mod command;
mod event;
mod job;
mod worker;

pub use command::{Command, Outcome};
pub use event::JobEvent;
pub use job::{JobState, JobStatus, TaskRecord, TaskStatus};
pub use worker::{WorkerRecord, WorkerStatus};

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

/// Everything the coordinator knows, as of the last applied log entry.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct ClusterState {
    pub jobs: BTreeMap<String, JobState>,
    pub workers: BTreeMap<String, WorkerRecord>,
    /// Index of the last applied raft entry (0 before any).
    pub applied_index: u64,
    /// Submissions by the client's idempotency key: request id → job id.
    #[serde(default)]
    pub submissions: BTreeMap<String, String>,
}

impl ClusterState {
    /// Apply one committed command at raft index `index`.
    pub fn apply(&mut self, index: u64, cmd: &Command) -> Outcome {
        debug_assert!(index > self.applied_index || index == 0, "entries apply in order");
        self.applied_index = index.max(self.applied_index);
        command::apply(self, cmd)
    }

    /// Idle workers (alive, no task), in id order.
    pub fn idle_workers(&self) -> Vec<&str> {
        self.workers
            .iter()
            .filter(|(_, w)| w.status == WorkerStatus::Idle)
            .map(|(id, _)| id.as_str())
            .collect()
    }

    /// The (job, task, generation) worker `id` runs, with its rank and the group size.
    pub fn assignment(&self, id: &str) -> Option<(&str, usize, u64, usize, usize)> {
        let (job, task, generation) = self.workers.get(id)?.task.as_ref()?;
        let j = self.jobs.get(job)?;
        let TaskStatus::Running { workers, generation: g } = &j.tasks.get(*task)?.status else { return None };
        if g != generation {
            return None;
        }
        let rank = workers.iter().position(|w| w == id)?;
        Some((job.as_str(), *task, *generation, rank, workers.len()))
    }

    /// Serialise the whole state (raft snapshots).
    pub fn to_bytes(&self) -> Vec<u8> {
        serde_json::to_vec(self).unwrap_or_default()
    }

    pub fn from_bytes(bytes: &[u8]) -> Result<Self, serde_json::Error> {
        serde_json::from_slice(bytes)
    }
}

#[cfg(test)]
mod tests;
