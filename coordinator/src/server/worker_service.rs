//! `WorkerService`: registration, heartbeats (lease renewal + assignment), progress, results and
//! rendezvous. All of it is leader-only (followers redirect).
//!
//! What a worker agent can rely on:
//! - `Register` commits the worker as idle (a worker that re-registers while assigned loses that
//!   run: its group restarts with a new generation), grants `lease_ms` and returns a fresh session
//!   secret; the log keeps only its SHA-256. One live session per worker id: a `Register` for an
//!   id whose lease is live is refused (`ALREADY_EXISTS`) unless it carries that id's current
//!   session (the same process registering again), so a second `worker --id w1` cannot take w1's
//!   work. Every later call carries the session; one that does not match is `PERMISSION_DENIED`.
//! - `Heartbeat` renews the lease in the leader's memory (nothing is committed) and returns the
//!   current [`pb::Assignment`]: job, task, generation, rank (position in the task's worker list),
//!   world size, the validated spec (serialised from the committed `JobSpec`, never the submitted
//!   text) and the task JSON. No assignment (`None`) means "run nothing": the
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

use cyclotron_proto::auth::{digests_equal, hex_encode, random_bytes, sha256};
use cyclotron_proto::limits::{
    check_len, truncate, MAX_ID_LEN, MAX_PROGRESS_JSON, MAX_RESULT_JSON, MAX_TEXT,
};
use cyclotron_proto::v1 as pb;
use cyclotron_proto::{ServiceError, PROTOCOL_VERSION};
use tonic::{Request, Response, Status};

use super::{now_ms, Shared};
use crate::live::StepReport;
use crate::state::{ClusterState, Command, JobEvent, JobState, TaskRecord, TaskStatus, WorkerStatus};

/// Hex SHA-256 of a session secret, as the log keeps it.
fn session_hash(session: &str) -> String {
    hex_encode(&sha256(session.as_bytes()))
}

/// A worker id: 1 to [`MAX_ID_LEN`] bytes of letters, digits, `-`, `_`, `.`, `:` (hostnames, pod
/// names and `<host>-<pid>` fit).
fn check_worker_id(id: &str) -> Result<(), ServiceError> {
    check_len("worker_id", id, MAX_ID_LEN)?;
    if id.is_empty() || !id.chars().all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.' | ':')) {
        return Err(ServiceError::InvalidArgument(format!(
            "worker_id {:?} must be 1 to {MAX_ID_LEN} letters, digits, '-', '_', '.' or ':'",
            id.chars().take(64).collect::<String>()
        )));
    }
    Ok(())
}

/// Check that `session` is worker `id`'s current one: NOT_FOUND for an unknown or dead worker
/// (register again), PERMISSION_DENIED for another session.
pub(crate) fn verify_session(state: &ClusterState, id: &str, session: &str) -> Result<(), ServiceError> {
    let w = state.workers.get(id).ok_or_else(|| unknown_worker(id, false))?;
    if w.status == WorkerStatus::Dead {
        return Err(unknown_worker(id, true));
    }
    if w.session_hash.is_empty() {
        return Ok(()); // registered before sessions existed
    }
    let mut want = [0u8; 32];
    let ok = w.session_hash.len() == 64
        && (0..32)
            .all(|i| u8::from_str_radix(&w.session_hash[2 * i..2 * i + 2], 16).map(|b| want[i] = b).is_ok());
    if ok && digests_equal(&sha256(session.as_bytes()), &want) {
        return Ok(());
    }
    Err(ServiceError::PermissionDenied(format!(
        "worker {id}: this call does not carry the worker's current session (another process registered this id, or the worker registered again since); register again"
    )))
}

/// The spec text workers run: the committed, validated `JobSpec` serialised, never the text as
/// submitted (a forwarded command could carry a text that differs from the spec it validated).
pub(crate) fn run_spec_toml(j: &JobState) -> Result<String, ServiceError> {
    toml::to_string(&j.spec)
        .map_err(|e| ServiceError::Internal(format!("cannot serialise the job spec: {e}")))
}

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
        check_worker_id(&req.worker_id)?;
        check_len("data_addr", &req.data_addr, MAX_ID_LEN)?;
        check_len("session", &req.session, MAX_ID_LEN)?;
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
        let (now, wall) = (super::monotonic_ms(), now_ms());
        // one live session per id: the same process (it holds the session) may register again;
        // another one waits for the lease to end (or for the worker to be declared dead)
        let replaces = {
            let state = self.shared.state();
            match state.workers.get(&req.worker_id).filter(|w| w.status != WorkerStatus::Dead) {
                None => String::new(),
                Some(w) => {
                    let own = !req.session.is_empty()
                        && verify_session(&state, &req.worker_id, &req.session).is_ok();
                    let until = self.shared.leases().expires_ms(&req.worker_id).unwrap_or(0);
                    if !own && until >= now {
                        return Err(ServiceError::WorkerIdTaken {
                            worker: req.worker_id,
                            remaining_ms: until - now,
                        }
                        .into());
                    }
                    w.session_hash.clone()
                }
            }
        };
        let session = hex_encode(&random_bytes::<32>().map_err(|e| ServiceError::Internal(e.to_string()))?);
        let cmd = Command::RegisterWorker {
            worker: req.worker_id.clone(),
            addr: req.data_addr,
            protocol: req.protocol_version,
            lease_ms,
            now_ms: wall,
            session_hash: session_hash(&session),
            replaces: Some(replaces),
            gpus: req.gpus,
        };
        match self.shared.propose(cmd).await? {
            crate::state::Outcome::Applied => {}
            crate::state::Outcome::Rejected { reason } if reason.contains("is taken") => {
                let remaining_ms =
                    self.shared.leases().expires_ms(&req.worker_id).map_or(0, |t| t.saturating_sub(now));
                return Err(ServiceError::WorkerIdTaken { worker: req.worker_id, remaining_ms }.into());
            }
            crate::state::Outcome::Rejected { reason } => {
                return Err(ServiceError::FailedPrecondition(reason).into())
            }
        }
        self.shared.leases().renew(&req.worker_id, now, lease_ms);
        Ok(Response::new(pb::RegisterResponse { lease_ms, session }))
    }

    async fn do_heartbeat(
        &self,
        request: Request<pb::HeartbeatRequest>,
    ) -> Result<Response<pb::HeartbeatResponse>, Status> {
        let req = request.into_inner();
        let id = req.worker_id;
        check_len("worker_id", &id, MAX_ID_LEN)?;
        self.shared.require_leader()?;
        let state = self.shared.state();
        verify_session(&state, &id, &req.session)?;
        let lease_ms = state.workers.get(&id).map_or(self.shared.config.lease_ms, |w| w.lease_ms);
        self.shared.leases().renew(&id, super::monotonic_ms(), lease_ms);
        let assignment = match state.assignment(&id) {
            None => None,
            Some((job, task, generation, rank, world_size)) => {
                let Some(j) = state.jobs.get(job) else {
                    return Err(ServiceError::Internal(format!("job {job} of an assignment is gone")).into());
                };
                Some(pb::Assignment {
                    job_id: job.to_string(),
                    task: task as u32,
                    generation,
                    rank: rank as u32,
                    world_size: world_size as u32,
                    spec_toml: run_spec_toml(j)?,
                    order: j.task_order(task),
                    resume_from: String::new(),
                })
            }
        };
        Ok(Response::new(pb::HeartbeatResponse { lease_ms, assignment }))
    }

    async fn do_report_progress(
        &self,
        request: Request<pb::ProgressReport>,
    ) -> Result<Response<pb::Ack>, Status> {
        let req = request.into_inner();
        check_len("job_id", &req.job_id, MAX_ID_LEN)?;
        check_len("progress_json", &req.progress_json, MAX_PROGRESS_JSON)?;
        let value: serde_json::Value = serde_json::from_str(&req.progress_json)
            .map_err(|e| ServiceError::InvalidArgument(format!("progress_json is not JSON: {e}")))?;
        if let Some(report) = StepReport::from_progress(&value) {
            let report = report.map_err(|e| {
                ServiceError::InvalidArgument(format!("progress_json is not a step summary: {e}"))
            })?;
            return self.step_summary(req, report).await.map(Response::new).map_err(Into::into);
        }
        let event: JobEvent = serde_json::from_value(value)
            .map_err(|e| ServiceError::InvalidArgument(format!("progress_json is not a job event: {e}")))?;
        if !event.is_worker_event() {
            return Err(ServiceError::InvalidArgument(
                "progress_json: workers report stage_started, lr_find, epoch or snapshot events".into(),
            )
            .into());
        }
        self.shared.require_leader()?;
        let task = req.task as usize;
        let state = self.shared.state();
        verify_session(&state, &req.worker_id, &req.session)?;
        check_member(&state, &req.worker_id, &req.job_id, task, req.generation)?;
        drop(state);
        self.shared
            .commit(Command::TaskProgress { job: req.job_id, task, generation: req.generation, event })
            .await?;
        Ok(Response::new(pb::Ack {}))
    }

    /// A rank's step summary: leader memory (the live view), then the straggler rule; a change
    /// of the named straggler is committed.
    async fn step_summary(
        &self,
        req: pb::ProgressReport,
        report: StepReport,
    ) -> Result<pb::Ack, ServiceError> {
        if !report.is_sane() {
            return Err(ServiceError::InvalidArgument(
                "progress_json: a step summary needs steps > 0 and non-negative finite seconds".into(),
            ));
        }
        self.shared.require_leader()?;
        let task = req.task as usize;
        let (rank, named) = {
            let state = self.shared.state();
            verify_session(&state, &req.worker_id, &req.session)?;
            let rank = check_member(&state, &req.worker_id, &req.job_id, task, req.generation)?;
            let named = state
                .jobs
                .get(&req.job_id)
                .and_then(|j| j.tasks.get(task))
                .and_then(|t| match &t.straggler {
                    Some(JobEvent::Straggler { rank, bound, .. }) => Some((*rank, bound.clone())),
                    _ => None,
                })
                .unwrap_or((None, String::new()));
            (rank, named)
        };
        let straggler = {
            let mut live = self.shared.live();
            let from = crate::live::Sender {
                job: &req.job_id,
                task,
                generation: req.generation,
                rank: rank as u32,
                worker: &req.worker_id,
            };
            live.record(&from, report, now_ms());
            let t = live.task(&req.job_id, task);
            // the rule speaks once every rank has reported; until then the name stands
            let complete =
                t.is_some_and(|t| t.ranks.values().all(|r| r.summaries.len() >= crate::live::MIN_SUMMARIES));
            if complete {
                Some(t.and_then(|t| t.straggler_after(named.0)))
            } else {
                None
            }
        };
        let Some(straggler) = straggler else { return Ok(pb::Ack {}) };
        let now = (
            straggler.as_ref().map(|s| s.rank),
            straggler.as_ref().map_or(String::new(), |s| s.bound.name().to_string()),
        );
        if now != named {
            let cmd = match straggler {
                Some(s) => Command::NameStraggler {
                    job: req.job_id,
                    task,
                    generation: req.generation,
                    rank: Some(s.rank),
                    worker: s.worker.clone(),
                    bound: s.bound.name().into(),
                    summary: s.summary(),
                },
                None => Command::NameStraggler {
                    job: req.job_id,
                    task,
                    generation: req.generation,
                    rank: None,
                    worker: String::new(),
                    bound: String::new(),
                    summary: "no rank stands out any more".into(),
                },
            };
            // a race with another rank's report proposing the same change is rejected, harmlessly
            if let Err(e) = self.shared.commit(cmd).await {
                tracing::debug!("straggler not recorded: {e}");
            }
        }
        Ok(pb::Ack {})
    }

    async fn do_report_result(
        &self,
        request: Request<pb::ResultReport>,
    ) -> Result<Response<pb::Ack>, Status> {
        let req = request.into_inner();
        check_len("job_id", &req.job_id, MAX_ID_LEN)?;
        check_len("result_json", &req.result_json, MAX_RESULT_JSON)?;
        self.shared.require_leader()?;
        let task = req.task as usize;
        let (job, generation) = (req.job_id.clone(), req.generation);
        let rank = {
            let state = self.shared.state();
            verify_session(&state, &req.worker_id, &req.session)?;
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
            let reason = format!("rank {rank} ({}): {}", req.worker_id, truncate(&req.error, MAX_TEXT));
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
