//! Jobs as the state machine sees them: the validated spec, its planned tasks and where each stands.

use cyclotron_core::spec::JobSpec;
use serde::{Deserialize, Serialize};

use super::JobEvent;
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
    /// `pending`, `running`, `succeeded`, `failed` or `cancelled` (the wire's `Job.status`).
    pub fn name(&self) -> &'static str {
        match self {
            JobStatus::Pending { .. } => "pending",
            JobStatus::Running => "running",
            JobStatus::Succeeded => "succeeded",
            JobStatus::Failed { .. } => "failed",
            JobStatus::Cancelled { .. } => "cancelled",
        }
    }

    /// Why it waits, failed or was cancelled; empty otherwise.
    pub fn reason(&self) -> &str {
        match self {
            JobStatus::Pending { reason }
            | JobStatus::Failed { reason }
            | JobStatus::Cancelled { reason } => reason,
            JobStatus::Running | JobStatus::Succeeded => "",
        }
    }

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
    /// Latest progress event while running.
    pub progress: Option<JobEvent>,
}

impl TaskStatus {
    pub fn name(&self) -> &'static str {
        match self {
            TaskStatus::Waiting => "waiting",
            TaskStatus::Running { .. } => "running",
            TaskStatus::Done => "done",
        }
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct JobState {
    pub spec: JobSpec,
    /// The spec as submitted (workers receive this text and run it).
    pub spec_toml: String,
    pub status: JobStatus,
    pub tasks: Vec<TaskRecord>,
    /// Workers a run needs at once.
    pub workers_per_run: usize,
    /// Restarts allowed per task before the job fails.
    pub max_restarts: u32,
    pub submitted_ms: u64,
    /// What `WatchJob` streams; ends with [`JobEvent::Ended`] once the job is terminal.
    pub events: Vec<JobEvent>,
}

impl JobState {
    /// The first task not done, if it is the one that may run now (tasks run in order).
    pub fn next_task(&self) -> Option<usize> {
        self.tasks.iter().position(|t| t.status != TaskStatus::Done)
    }

    /// Change the status; a terminal one appends the job's last event, [`JobEvent::Ended`].
    pub fn set_status(&mut self, status: JobStatus) {
        if status.is_terminal() && !self.status.is_terminal() {
            self.events
                .push(JobEvent::Ended { status: status.name().into(), reason: status.reason().into() });
        }
        self.status = status;
    }

    /// The job's results: the report of its last task once done (the run's `TrainResults`).
    pub fn results(&self) -> Option<&serde_json::Value> {
        match self.tasks.last() {
            Some(t) if t.status == TaskStatus::Done => t.result.as_ref(),
            _ => None,
        }
    }
}
