//! `JobService`: submit, inspect, cancel and watch jobs.
//!
//! Submit and cancel go through raft on the leader; get, list and watch read this replica's
//! applied state.
//!
//! Job ids are `<spec name>-<UTC date>-<time>` (`fashion-mnist-20261127-221632`, then `-2`, `-3`
//! for more in the same second). The job id is also the run id in the checkpoint store, so it must
//! not repeat across clusters sharing a store: a counter restarting at 1 in every new cluster
//! would make a new job "resume" an old, finished run of the same name.

use std::sync::Arc;

use cyclotron_core::spec::JobSpec;
use cyclotron_proto::limits::{check_len, MAX_ID_LEN, MAX_TEXT};
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

/// `YYYYMMDD-HHMMSS` (UTC) of a Unix time in seconds.
pub(crate) fn utc_stamp(unix_s: u64) -> String {
    let (days, secs) = (unix_s / 86_400, unix_s % 86_400);
    // civil date from days since 1970-01-01 (H. Hinnant's algorithm)
    let z = days as i64 + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1_460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    format!("{year:04}{month:02}{day:02}-{:02}{:02}{:02}", secs / 3600, secs / 60 % 60, secs % 60)
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

/// The handlers; the trait impl below times each call.
impl Jobs {
    async fn do_submit_job(
        &self,
        request: Request<pb::SubmitJobRequest>,
    ) -> Result<Response<pb::SubmitJobResponse>, Status> {
        let req = request.into_inner();
        let job_id =
            submit(&self.shared, &req.spec_toml, &req.request_id, req.workers_per_run, req.max_restarts)
                .await?;
        Ok(Response::new(pb::SubmitJobResponse { job_id }))
    }
}

/// Validate and commit a submission (the CLI's `SubmitJob` and the web view's form): the job id.
pub(crate) async fn submit(
    shared: &Shared,
    spec_toml: &str,
    request_id: &str,
    workers_per_run: u32,
    max_restarts: u32,
) -> Result<String, ServiceError> {
    check_len("request_id", request_id, MAX_ID_LEN)?;
    let spec = parse_spec(spec_toml)?;
    shared.require_leader()?;
    let workers_per_run = workers_per_run.max(1) as usize;
    let problems = spec.world_problems(workers_per_run);
    if !problems.is_empty() {
        return Err(ServiceError::InvalidSpec { problems });
    }
    let max_restarts = if max_restarts == 0 { DEFAULT_MAX_RESTARTS } else { max_restarts };
    // a retry of a submission that already committed: its job, nothing new
    let first = |state: &crate::state::ClusterState| {
        (!request_id.is_empty()).then(|| state.submissions.get(request_id).cloned()).flatten()
    };
    if let Some(job_id) = first(&shared.state()) {
        return Ok(job_id);
    }
    let now = now_ms();
    let base = format!("{}-{}", spec.name, utc_stamp(now / 1000));
    let mut k = 1u32;
    // a concurrent submission may take the id we chose: move to the next one
    for _ in 0..8 {
        let job = {
            let state = shared.state();
            loop {
                let id = if k == 1 { base.clone() } else { format!("{base}-{k}") };
                if !state.jobs.contains_key(&id) {
                    break id;
                }
                k += 1;
            }
        };
        let cmd = Command::SubmitJob {
            request_id: request_id.to_string(),
            job: job.clone(),
            spec: Box::new(spec.clone()),
            spec_toml: spec_toml.to_string(),
            workers_per_run,
            max_restarts,
            now_ms: now,
        };
        match shared.propose(cmd).await? {
            Outcome::Applied => return Ok(job),
            Outcome::Rejected { reason } => {
                // the same key committed first (an earlier try of this submission): its job
                if let Some(job_id) = first(&shared.state()) {
                    return Ok(job_id);
                }
                if !reason.contains("already exists") {
                    return Err(ServiceError::FailedPrecondition(reason));
                }
                k += 1;
            }
        }
    }
    Err(ServiceError::Unavailable("too many concurrent submissions; retry".into()))
}

impl Jobs {
    async fn do_get_job(&self, request: Request<pb::GetJobRequest>) -> Result<Response<pb::Job>, Status> {
        let id = request.into_inner().job_id;
        check_len("job_id", &id, MAX_ID_LEN)?;
        let state = self.shared.state();
        let j = state.jobs.get(&id).ok_or_else(|| unknown_job(&id))?;
        Ok(Response::new(events::job(&id, j, Some(&self.shared.live()))))
    }

    async fn do_list_jobs(
        &self,
        _request: Request<pb::ListJobsRequest>,
    ) -> Result<Response<pb::ListJobsResponse>, Status> {
        let state = self.shared.state();
        let mut jobs: Vec<_> = state.jobs.iter().collect();
        jobs.sort_by_key(|(id, j)| (j.submitted_ms, id.as_str()));
        let live = self.shared.live();
        let jobs = jobs.into_iter().map(|(id, j)| events::job(id, j, Some(&live))).collect();
        Ok(Response::new(pb::ListJobsResponse { jobs }))
    }

    async fn do_cancel_job(
        &self,
        request: Request<pb::CancelJobRequest>,
    ) -> Result<Response<pb::Job>, Status> {
        let req = request.into_inner();
        check_len("job_id", &req.job_id, MAX_ID_LEN)?;
        check_len("reason", &req.reason, MAX_TEXT)?;
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
        Ok(Response::new(events::job(&req.job_id, j, Some(&self.shared.live()))))
    }

    async fn do_watch_job(
        &self,
        request: Request<pb::WatchJobRequest>,
    ) -> Result<Response<ReceiverStream<Result<pb::JobEvent, Status>>>, Status> {
        let req = request.into_inner();
        check_len("job_id", &req.job_id, MAX_ID_LEN)?;
        let mut states = self.shared.replica.state();
        if !states.borrow().jobs.contains_key(&req.job_id) {
            return Err(unknown_job(&req.job_id).into());
        }
        let (tx, rx) = tokio::sync::mpsc::channel(64);
        let shared = self.shared.clone();
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
                    _ = shared.shutting_down() => {
                        let _ = tx.send(Err(ServiceError::Unavailable("coordinator shutting down; watch again from the last index".into()).into())).await;
                        return;
                    }
                }
            }
        });
        Ok(Response::new(ReceiverStream::new(rx)))
    }
}

#[tonic::async_trait]
impl pb::job_service_server::JobService for Jobs {
    type WatchJobStream = ReceiverStream<Result<pb::JobEvent, Status>>;

    async fn submit_job(
        &self,
        request: Request<pb::SubmitJobRequest>,
    ) -> Result<Response<pb::SubmitJobResponse>, Status> {
        self.shared.timed("SubmitJob", self.do_submit_job(request)).await
    }

    async fn get_job(&self, request: Request<pb::GetJobRequest>) -> Result<Response<pb::Job>, Status> {
        self.shared.timed("GetJob", self.do_get_job(request)).await
    }

    async fn list_jobs(
        &self,
        request: Request<pb::ListJobsRequest>,
    ) -> Result<Response<pb::ListJobsResponse>, Status> {
        self.shared.timed("ListJobs", self.do_list_jobs(request)).await
    }

    async fn cancel_job(&self, request: Request<pb::CancelJobRequest>) -> Result<Response<pb::Job>, Status> {
        self.shared.timed("CancelJob", self.do_cancel_job(request)).await
    }

    async fn watch_job(
        &self,
        request: Request<pb::WatchJobRequest>,
    ) -> Result<Response<Self::WatchJobStream>, Status> {
        self.shared.timed("WatchJob", self.do_watch_job(request)).await
    }
}

#[cfg(test)]
mod tests {
    use super::utc_stamp;

    #[test]
    fn job_id_stamps_are_utc_dates_and_times() {
        assert_eq!(utc_stamp(0), "19700101-000000");
        assert_eq!(utc_stamp(951_782_400), "20000229-000000");
        assert_eq!(utc_stamp(1_795_905_392), "20261128-223632");
        assert_eq!(utc_stamp(4_102_444_799), "20991231-235959");
    }
}
