//! Jobs as the state machine sees them: the validated spec, its planned tasks and where each stands.

use cyclotron_core::spec::JobSpec;
use serde::{Deserialize, Serialize};

use crate::plan::Task;

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum JobStatus {
    /// Waiting for workers or for its next task to be assigned; `reason` says why when it waits.
    Pending {
        reason: String,
    },
    Running,
    Succeeded,
    Failed {
        reason: String,
    },
    Cancelled {
        reason: String,
    },
}

impl JobStatus {
    pub fn is_terminal(&self) -> bool {
        matches!(self, JobStatus::Succeeded | JobStatus::Failed { .. } | JobStatus::Cancelled { .. })
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum TaskStatus {
    Waiting,
    /// Running on `workers` (rank order) under rendezvous `generation`.
    Running {
        workers: Vec<String>,
        generation: u64,
    },
    Done,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TaskRecord {
    pub task: Task,
    pub status: TaskStatus,
    /// Restarts after a group member died or stalled.
    pub restarts: u32,
    /// The worker's report when done (JSON: lr_find curve, stage metrics, ensemble table).
    pub result: Option<serde_json::Value>,
    /// Latest progress report (epoch metrics) while running.
    pub progress: Option<serde_json::Value>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct JobState {
    pub spec: JobSpec,
    pub status: JobStatus,
    pub tasks: Vec<TaskRecord>,
    /// Workers a run needs at once.
    pub workers_per_run: usize,
    /// Restarts allowed per task before the job fails.
    pub max_restarts: u32,
    pub submitted_ms: u64,
}

impl JobState {
    /// The first task not done, if it is the one that may run now (tasks run in order).
    pub fn next_task(&self) -> Option<usize> {
        self.tasks.iter().position(|t| t.status != TaskStatus::Done)
    }
}
