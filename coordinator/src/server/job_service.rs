//! `JobService`: submit, inspect, cancel and watch jobs.
//!
//! Submit and cancel go through raft on the leader; get, list and watch read this replica's
//! applied state. Job ids are `<spec name>-<n>`, n counting every job ever submitted.

use std::sync::Arc;

use cyclotron_core::spec::JobSpec;
use cyclotron_proto::v1 as pb;
use cyclotron_proto::ServiceError;
use tokio_stream::wrappers::ReceiverStream;
use tonic::{Request, Response, Status};

use super::{events, now_ms, Shared};
use crate::state::{Command, JobEvent, Outcome};

/// Restarts allowed per task when the request says 0.
pub const DEFAULT_MAX_RESTARTS: u32 = 3;

pub(crate) struct Jobs {
    shared: Arc<Shared>,
}

impl Jobs {
    pub fn new(shared: Arc<Shared>) -> Self {
        Jobs { shared }
    }
}

fn unknown_job(id: &str) -> ServiceError {
    ServiceError::NotFound {
        what: "job",
        id: id.to_string(),
        hint: "`cyclotron status` lists the jobs".into(),
    }
}

/// Parse and validate a submitted spec; every problem is named.
pub(crate) fn parse_spec(text: &str) -> Result<JobSpec, ServiceError> {
    let spec = JobSpec::from_toml_str(text, "submitted spec")
        .map_err(|e| ServiceError::InvalidArgument(e.to_string()))?;
    spec.validate().map_err(|e| match e {
        cyclotron_core::Error::InvalidSpec { problems } => ServiceError::InvalidSpec { problems },
        other => ServiceError::InvalidArgument(other.to_string()),
    })?;
    Ok(spec)
}

#[tonic::async_trait]
impl pb::job_service_server::JobService for Jobs {
    async fn submit_job(
        &self,
        request: Request<pb::SubmitJobRequest>,
    ) -> Result<Response<pb::SubmitJobResponse>, Status> {
        let req = request.into_inner();
        let spec = parse_spec(&req.spec_toml)?;
        self.shared.require_leader()?;
        let workers_per_run = req.workers_per_run.max(1) as usize;
        let max_restarts = if req.max_restarts == 0 { DEFAULT_MAX_RESTARTS } else { req.max_restarts };
        // ids come from the committed job count; a concurrent submit may take ours: try the next
        for attempt in 0..8u64 {
            let job = format!("{}-{}", spec.name, self.shared.state().job_seq + 1 + attempt);
            let cmd = Command::SubmitJob {
                job: job.clone(),
                spec: Box::new(spec.clone()),
                spec_toml: req.spec_toml.clone(),
                workers_per_run,
                max_restarts,
                now_ms: now_ms(),
            };
            match self.shared.propose(cmd).await? {
                Outcome::Applied => return Ok(Response::new(pb::SubmitJobResponse { job_id: job })),
                Outcome::Rejected { reason } if reason.contains("already exists") => continue,
                Outcome::Rejected { reason } => return Err(ServiceError::FailedPrecondition(reason).into()),
            }
        }
        Err(ServiceError::Unavailable("too many concurrent submissions; retry".into()).into())
    }

    async fn get_job(&self, request: Request<pb::GetJobRequest>) -> Result<Response<pb::Job>, Status> {
        let id = request.into_inner().job_id;
        let state = self.shared.state();
        let j = state.jobs.get(&id).ok_or_else(|| unknown_job(&id))?;
        Ok(Response::new(events::job(&id, j)))
    }

    async fn list_jobs(
        &self,
        _request: Request<pb::ListJobsRequest>,
    ) -> Result<Response<pb::ListJobsResponse>, Status> {
        let state = self.shared.state();
        let mut jobs: Vec<_> = state.jobs.iter().collect();
        jobs.sort_by_key(|(id, j)| (j.submitted_ms, id.as_str()));
        let jobs = jobs.into_iter().map(|(id, j)| events::job(id, j)).collect();
        Ok(Response::new(pb::ListJobsResponse { jobs }))
    }

    async fn cancel_job(&self, request: Request<pb::CancelJobRequest>) -> Result<Response<pb::Job>, Status> {
        let req = request.into_inner();
        self.shared.require_leader()?;
        {
            let state = self.shared.state();
            let j = state.jobs.get(&req.job_id).ok_or_else(|| unknown_job(&req.job_id))?;
            if j.status.is_terminal() {
                return Err(ServiceError::FailedPrecondition(format!(
                    "job {} already ended ({})",
                    req.job_id,
                    j.status.name()
                ))
                .into());
            }
        }
        let reason = if req.reason.is_empty() { "cancelled by the user".to_string() } else { req.reason };
        self.shared.commit(Command::CancelJob { job: req.job_id.clone(), reason }).await?;
        let state = self.shared.state();
        let j = state.jobs.get(&req.job_id).ok_or_else(|| unknown_job(&req.job_id))?;
        Ok(Response::new(events::job(&req.job_id, j)))
    }

    type WatchJobStream = ReceiverStream<Result<pb::JobEvent, Status>>;

    async fn watch_job(
        &self,
        request: Request<pb::WatchJobRequest>,
    ) -> Result<Response<Self::WatchJobStream>, Status> {
        let req = request.into_inner();
        let mut states = self.shared.replica.state();
        if !states.borrow().jobs.contains_key(&req.job_id) {
            return Err(unknown_job(&req.job_id).into());
        }
        let (tx, rx) = tokio::sync::mpsc::channel(64);
        tokio::spawn(async move {
            let mut next = req.from_index as usize;
            loop {
                let batch: Vec<(usize, JobEvent)> = {
                    let state = states.borrow_and_update();
                    let Some(j) = state.jobs.get(&req.job_id) else { return };
                    j.events.iter().enumerate().skip(next).map(|(i, e)| (i, e.clone())).collect()
                };
                for (i, e) in batch {
                    let ended = matches!(e, JobEvent::Ended { .. });
                    if tx.send(Ok(events::event(i as u64, &e))).await.is_err() {
                        return; // the client went away
                    }
                    next = i + 1;
                    if ended {
                        return;
                    }
                }
                tokio::select! {
                    changed = states.changed() => {
                        if changed.is_err() {
                            let _ = tx.send(Err(ServiceError::Unavailable("coordinator replica stopped".into()).into())).await;
                            return;
                        }
                    }
                    _ = tx.closed() => return,
                }
            }
        });
        Ok(Response::new(ReceiverStream::new(rx)))
    }
}
