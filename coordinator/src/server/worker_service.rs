//! `WorkerService`: registration, heartbeats (lease renewal + assignment), progress, results and
//! rendezvous. All of it is leader-only (followers redirect).
//!
//! What a worker agent can rely on:
//! - `Register` commits the worker as idle (a worker that re-registers while assigned loses that
//!   run: its group restarts with a new generation) and grants `lease_ms`.
//! - `Heartbeat` renews the lease in the leader's memory (nothing is committed) and returns the
//!   current [`pb::Assignment`]: job, task, generation, rank (position in the task's worker list),
//!   world size, the spec text and the task JSON. No assignment (`None`) means "run nothing": the
//!   agent stops its run when the assignment disappears or its (job, task, generation) changes.
//!   `NOT_FOUND` means the coordinator does not know the worker alive (unknown, or declared dead
//!   after its lease ran out): register again.
//! - The run id is the job id; a run always resumes from its last checkpoint (`--resume`), which
//!   starts from the beginning when there is none. `resume_from` is empty: the run's checkpoint
//!   store (the spec's `[checkpoint]`) is the single source of truth.
//! - `ReportProgress` takes one training event as JSON (see `crate::state::JobEvent`).
//! - `ReportResult`: `ok` from rank 0 completes the task with `result_json` (the run's
//!   `TrainResults`); `ok` from other ranks, or for a task already done, is acknowledged and
//!   changes nothing. `!ok` with `permanent` fails the job with `error`; `!ok` otherwise restarts
//!   the task (new generation) up to the job's restart limit.
//! - Calls naming a generation that is not the task's current one fail `FAILED_PRECONDITION`.

use std::sync::Arc;

use cyclotron_proto::v1 as pb;
use cyclotron_proto::{ServiceError, PROTOCOL_VERSION};
use tonic::{Request, Response, Status};

use super::{now_ms, Shared};
use crate::state::{ClusterState, Command, JobEvent, JobState, TaskRecord, TaskStatus, WorkerStatus};

pub(crate) struct Workers {
    shared: Arc<Shared>,
}

impl Workers {
    pub fn new(shared: Arc<Shared>) -> Self {
        Workers { shared }
    }
}

fn unknown_worker(id: &str, dead: bool) -> ServiceError {
    let hint =
        if dead { "it was declared dead after its lease ran out; register again" } else { "register first" };
    ServiceError::NotFound { what: "worker", id: id.to_string(), hint: hint.into() }
}

/// Job `job` and its task `task`: NOT_FOUND for an unknown job, INVALID_ARGUMENT for a task
/// index it does not have.
pub(crate) fn job_task<'a>(
    state: &'a ClusterState,
    job: &str,
    task: usize,
) -> Result<(&'a JobState, &'a TaskRecord), ServiceError> {
    let j = state.jobs.get(job).ok_or_else(|| ServiceError::NotFound {
        what: "job",
        id: job.to_string(),
        hint: String::new(),
    })?;
    let t = j
        .tasks
        .get(task)
        .ok_or_else(|| ServiceError::InvalidArgument(format!("job {job} has no task {task}")))?;
    Ok((j, t))
}

/// Check that `worker` runs (job, task, generation) now: the guard of every report.
pub(crate) fn check_member(
    state: &ClusterState,
    worker: &str,
    job: &str,
    task: usize,
    generation: u64,
) -> Result<usize, ServiceError> {
    let (j, t) = job_task(state, job, task)?;
    if j.status.is_terminal() {
        return Err(ServiceError::FailedPrecondition(format!(
            "job {job} already ended ({})",
            j.status.name()
        )));
    }
    match &t.status {
        TaskStatus::Running { workers, generation: g } if *g == generation => {
            workers.iter().position(|w| w == worker).ok_or_else(|| {
                ServiceError::FailedPrecondition(format!(
                    "worker {worker} is not in the group of job {job} task {task} generation {generation}"
                ))
            })
        }
        TaskStatus::Running { generation: g, .. } => Err(ServiceError::FailedPrecondition(format!(
            "job {job} task {task}: generation {generation} is over, the current one is {g}; stop this run"
        ))),
        other => Err(ServiceError::FailedPrecondition(format!(
            "job {job} task {task} is {} (not running generation {generation}); stop this run",
            other.name()
        ))),
    }
}

/// The handlers; the trait impl below times each call.
impl Workers {
    async fn do_register(
        &self,
        request: Request<pb::RegisterRequest>,
    ) -> Result<Response<pb::RegisterResponse>, Status> {
        let req = request.into_inner();
        if req.worker_id.is_empty() {
            return Err(ServiceError::InvalidArgument("worker_id must not be empty".into()).into());
        }
        if req.protocol_version != PROTOCOL_VERSION {
            return Err(ServiceError::ProtocolMismatch {
                worker: req.worker_id,
                theirs: req.protocol_version,
                ours: PROTOCOL_VERSION,
            }
            .into());
        }
        self.shared.require_leader()?;
        let lease_ms = self.shared.config.lease_ms;
        let now = now_ms();
        self.shared
            .commit(Command::RegisterWorker {
                worker: req.worker_id.clone(),
                addr: req.data_addr,
                protocol: req.protocol_version,
                lease_ms,
                now_ms: now,
            })
            .await?;
        self.shared.leases().renew(&req.worker_id, now, lease_ms);
        Ok(Response::new(pb::RegisterResponse { lease_ms }))
    }

    async fn do_heartbeat(
        &self,
        request: Request<pb::HeartbeatRequest>,
    ) -> Result<Response<pb::HeartbeatResponse>, Status> {
        let id = request.into_inner().worker_id;
        self.shared.require_leader()?;
        let state = self.shared.state();
        let w = state.workers.get(&id).ok_or_else(|| unknown_worker(&id, false))?;
        if w.status == WorkerStatus::Dead {
            return Err(unknown_worker(&id, true).into());
        }
        self.shared.leases().renew(&id, now_ms(), w.lease_ms);
        let assignment = state.assignment(&id).map(|(job, task, generation, rank, world_size)| {
            let j = &state.jobs[job];
            pb::Assignment {
                job_id: job.to_string(),
                task: task as u32,
                generation,
                rank: rank as u32,
                world_size: world_size as u32,
                spec_toml: j.spec_toml.clone(),
                task_json: j.task_json(task),
                resume_from: String::new(),
            }
        });
        Ok(Response::new(pb::HeartbeatResponse { lease_ms: w.lease_ms, assignment }))
    }

    async fn do_report_progress(
        &self,
        request: Request<pb::ProgressReport>,
    ) -> Result<Response<pb::Ack>, Status> {
        let req = request.into_inner();
        let event: JobEvent = serde_json::from_str(&req.progress_json)
            .map_err(|e| ServiceError::InvalidArgument(format!("progress_json is not a job event: {e}")))?;
        if !event.is_worker_event() {
            return Err(ServiceError::InvalidArgument(
                "progress_json: workers report stage_started, lr_find, epoch or snapshot events".into(),
            )
            .into());
        }
        self.shared.require_leader()?;
        let task = req.task as usize;
        check_member(&self.shared.state(), &req.worker_id, &req.job_id, task, req.generation)?;
        self.shared
            .commit(Command::TaskProgress { job: req.job_id, task, generation: req.generation, event })
            .await?;
        Ok(Response::new(pb::Ack {}))
    }

    async fn do_report_result(
        &self,
        request: Request<pb::ResultReport>,
    ) -> Result<Response<pb::Ack>, Status> {
        let req = request.into_inner();
        self.shared.require_leader()?;
        let task = req.task as usize;
        let (job, generation) = (req.job_id.clone(), req.generation);
        let rank = {
            let state = self.shared.state();
            let done =
                state.jobs.get(&job).and_then(|j| j.tasks.get(task)).map(|t| t.status == TaskStatus::Done);
            if req.ok && done == Some(true) {
                return Ok(Response::new(pb::Ack {})); // another rank's report, or a retry
            }
            check_member(&state, &req.worker_id, &job, task, generation)?
        };
        let cmd = if req.ok {
            if rank != 0 {
                return Ok(Response::new(pb::Ack {})); // rank 0 reports the group's result
            }
            let result = serde_json::from_str(&req.result_json)
                .map_err(|e| ServiceError::InvalidArgument(format!("result_json is not JSON: {e}")))?;
            Command::TaskDone { job, task, generation, result }
        } else {
            let reason = format!("rank {rank} ({}): {}", req.worker_id, req.error);
            if req.permanent {
                Command::TaskFailed { job, task, generation, reason }
            } else {
                Command::RestartTask { job, task, generation, reason }
            }
        };
        self.shared.commit(cmd).await?;
        Ok(Response::new(pb::Ack {}))
    }

    async fn do_rendezvous(
        &self,
        request: Request<pb::RendezvousRequest>,
    ) -> Result<Response<pb::RendezvousResponse>, Status> {
        let client_deadline = super::rendezvous::grpc_timeout(request.metadata());
        let req = request.into_inner();
        let response = self.shared.rendezvous_wait(req, client_deadline).await?;
        Ok(Response::new(response))
    }
}

#[tonic::async_trait]
impl pb::worker_service_server::WorkerService for Workers {
    async fn register(
        &self,
        request: Request<pb::RegisterRequest>,
    ) -> Result<Response<pb::RegisterResponse>, Status> {
        self.shared.timed("Register", self.do_register(request)).await
    }

    async fn heartbeat(
        &self,
        request: Request<pb::HeartbeatRequest>,
    ) -> Result<Response<pb::HeartbeatResponse>, Status> {
        self.shared.timed("Heartbeat", self.do_heartbeat(request)).await
    }

    async fn report_progress(
        &self,
        request: Request<pb::ProgressReport>,
    ) -> Result<Response<pb::Ack>, Status> {
        self.shared.timed("ReportProgress", self.do_report_progress(request)).await
    }

    async fn report_result(&self, request: Request<pb::ResultReport>) -> Result<Response<pb::Ack>, Status> {
        self.shared.timed("ReportResult", self.do_report_result(request)).await
    }

    async fn rendezvous(
        &self,
        request: Request<pb::RendezvousRequest>,
    ) -> Result<Response<pb::RendezvousResponse>, Status> {
        self.shared.timed("Rendezvous", self.do_rendezvous(request)).await
    }
}
