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
    /// The job ended (cancelled, or failed by another task) before this task finished: it will
    /// not run again. `was` says whether it was `running` or `waiting` then.
    Stopped {
        was: String,
    },
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
    /// Tasks (indices) that must be done before this one starts.
    #[serde(default)]
    pub after: Vec<usize>,
    /// The rank the leader's straggler rule names in the running group (the last
    /// [`JobEvent::Straggler`] of this task's current generation), if any.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub straggler: Option<JobEvent>,
}

impl TaskStatus {
    pub fn name(&self) -> &'static str {
        match self {
            TaskStatus::Waiting => "waiting",
            TaskStatus::Running { .. } => "running",
            TaskStatus::Done => "done",
            TaskStatus::Stopped { .. } => "stopped",
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
    /// The concluded parallel LR sweep, once its last point is done.
    #[serde(default)]
    pub sweep: Option<cyclotron_core::sweep::SweepOutcome>,
}

impl JobState {
    /// Tasks that may start now: waiting, and everything they wait for is done (in plan order).
    pub fn ready_tasks(&self) -> Vec<usize> {
        (0..self.tasks.len()).filter(|&i| self.is_ready(i)).collect()
    }

    /// Whether task `i` waits and everything it waits for is done.
    pub fn is_ready(&self, i: usize) -> bool {
        self.tasks.get(i).is_some_and(|t| {
            t.status == TaskStatus::Waiting
                && t.after.iter().all(|&d| self.tasks.get(d).is_some_and(|d| d.status == TaskStatus::Done))
        })
    }

    /// Workers task `i` runs on: `workers_per_run`, except the evaluation of several runs, which
    /// one worker does.
    pub fn group_size(&self, i: usize) -> usize {
        match self.tasks.get(i).map(|t| &t.task) {
            Some(crate::plan::Task::Evaluate { .. }) => 1,
            _ => self.workers_per_run,
        }
    }

    /// How watchers tell task `i`'s events apart when the job has several tasks: `run 1` (one of
    /// several runs), `sweep 3` (its sweep's points, numbered from 0), `evaluate`; `None` for the
    /// job's only run.
    pub fn task_label(&self, i: usize) -> Option<String> {
        use crate::plan::Task;
        let first_of = |kind: &str| self.tasks.iter().position(|t| t.task.kind() == kind).unwrap_or(0);
        match &self.tasks.get(i)?.task {
            Task::Run { .. } if self.tasks.len() == 1 => None,
            Task::Run { .. } => Some(format!("run {}", i - first_of("run"))),
            Task::Sweep { .. } => Some(format!("sweep {}", i - first_of("sweep"))),
            Task::Evaluate { .. } => Some("evaluate".into()),
        }
    }

    /// What a worker assigned task `i` is sent (see [`crate::plan::Task::order`]).
    pub fn task_order(&self, i: usize) -> Option<cyclotron_proto::v1::TaskOrder> {
        let choice = self.sweep.as_ref().map(cyclotron_core::sweep::SweepOutcome::choice);
        self.tasks.get(i).map(|t| t.task.order(choice.as_ref()))
    }

    /// Whether every task is done.
    pub fn all_done(&self) -> bool {
        self.tasks.iter().all(|t| t.status == TaskStatus::Done)
    }

    /// Whether some task runs now.
    pub fn any_running(&self) -> bool {
        self.tasks.iter().any(|t| matches!(t.status, TaskStatus::Running { .. }))
    }

    /// Change the status; a terminal one appends the job's last event, [`JobEvent::Ended`], and
    /// stops every task that is not done (a cancelled or failed job runs nothing more, and
    /// `status` must not show its tasks as running or waiting).
    pub fn set_status(&mut self, status: JobStatus) {
        if status.is_terminal() && !self.status.is_terminal() {
            self.events
                .push(JobEvent::Ended { status: status.name().into(), reason: status.reason().into() });
        }
        if status.is_terminal() {
            for t in &mut self.tasks {
                if matches!(t.status, TaskStatus::Waiting | TaskStatus::Running { .. }) {
                    t.status = TaskStatus::Stopped { was: t.status.name().into() };
                }
            }
        }
        self.status = status;
    }

    /// The job's results: the report of its last task once done (the run's `TrainResults`, or the
    /// evaluation of several runs), with the concluded sweep added as `sweep`.
    pub fn results(&self) -> Option<serde_json::Value> {
        let mut r = match self.tasks.last() {
            Some(t) if t.status == TaskStatus::Done => t.result.clone()?,
            _ => return None,
        };
        if let (Some(sweep), Some(obj)) = (&self.sweep, r.as_object_mut()) {
            obj.insert("sweep".into(), serde_json::to_value(sweep).unwrap_or_default());
        }
        Some(r)
    }
}
