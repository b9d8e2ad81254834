//! Commands: the entries of the raft log, and how each changes the state.

use cyclotron_core::spec::JobSpec;
use serde::{Deserialize, Serialize};

use super::{
    ClusterState, JobEvent, JobState, JobStatus, TaskRecord, TaskStatus, WorkerRecord, WorkerStatus,
};
use crate::plan::{plan, Task};
use cyclotron_core::sweep::{conclude, PointReport};

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum Command {
    SubmitJob {
        /// The client's idempotency key (empty: none): a second SubmitJob with the same key is
        /// rejected as a duplicate of the first, so a retried submission creates one job.
        #[serde(default)]
        request_id: String,
        job: String,
        spec: Box<JobSpec>,
        /// The spec's text as submitted (handed to workers).
        #[serde(default)]
        spec_toml: String,
        workers_per_run: usize,
        max_restarts: u32,
        now_ms: u64,
    },
    CancelJob {
        job: String,
        reason: String,
    },
    RegisterWorker {
        worker: String,
        addr: String,
        protocol: u32,
        lease_ms: u64,
        now_ms: u64,
        /// Hex SHA-256 of the session secret the registration returned (the secret itself is
        /// never logged or replicated); empty in entries written before sessions existed.
        #[serde(default)]
        session_hash: String,
        /// Compare-and-set: applies only if the worker's current session hash is this one (empty:
        /// unknown or dead), so two processes racing to register one id cannot both win.
        /// `None`: no check (entries written before sessions existed).
        #[serde(default)]
        replaces: Option<String>,
        /// GPUs the worker offers (0: it trains on its CPUs).
        #[serde(default)]
        gpus: u32,
    },
    /// A committed liveness ping: applied for a live registered worker, rejected otherwise, and
    /// changes nothing else. The server does not commit heartbeats (leases are leader memory,
    /// see `crate::leases`); it is the cheapest command, for raft tests and the commit bench.
    Heartbeat {
        worker: String,
        now_ms: u64,
    },
    /// The leader saw these workers' leases end (no heartbeat in time): they are dead and their
    /// runs restart. Renewals are leader memory, so the leader names the workers.
    ExpireWorkers {
        workers: Vec<String>,
        now_ms: u64,
    },
    /// Say why a job waits (shown by `status`).
    SetWaiting {
        job: String,
        reason: String,
    },
    StartTask {
        job: String,
        task: usize,
        workers: Vec<String>,
        generation: u64,
    },
    /// A worker's training event (epoch metrics, LR-range curve, …): appended to the job's log.
    TaskProgress {
        job: String,
        task: usize,
        generation: u64,
        event: JobEvent,
    },
    TaskDone {
        job: String,
        task: usize,
        generation: u64,
        result: serde_json::Value,
    },
    /// The run failed for a reason a restart cannot fix (bad data, divergence): the job fails.
    TaskFailed {
        job: String,
        task: usize,
        generation: u64,
        reason: String,
    },
    /// Tear the run's group down and run the task again (a member stalled or died).
    RestartTask {
        job: String,
        task: usize,
        generation: u64,
        reason: String,
    },
    /// The leader's straggler rule (`crate::live`) names a rank of the running group, another
    /// one, or nobody any more (`rank: None`): recorded on the task and in the job's events.
    NameStraggler {
        job: String,
        task: usize,
        generation: u64,
        rank: Option<u32>,
        worker: String,
        bound: String,
        summary: String,
    },
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    Applied,
    Rejected { reason: String },
}

fn reject(reason: impl Into<String>) -> Outcome {
    Outcome::Rejected { reason: reason.into() }
}

pub(super) fn apply(s: &mut ClusterState, cmd: &Command) -> Outcome {
    match cmd {
        Command::SubmitJob { request_id, job, spec, spec_toml, workers_per_run, max_restarts, now_ms } => {
            if let Some(first) = s.submissions.get(request_id).filter(|_| !request_id.is_empty()) {
                return reject(format!("duplicate submission {request_id}: job {first}"));
            }
            if s.jobs.contains_key(job) {
                return reject(format!("job {job} already exists"));
            }
            if let Err(e) = spec.validate() {
                return reject(e.to_string());
            }
            if *workers_per_run == 0 {
                return reject("workers_per_run must be ≥ 1");
            }
            let tasks = plan(job, spec)
                .into_iter()
                .map(|p| TaskRecord {
                    task: p.task,
                    status: TaskStatus::Waiting,
                    restarts: 0,
                    result: None,
                    progress: None,
                    after: p.after,
                    straggler: None,
                })
                .collect();
            s.jobs.insert(
                job.clone(),
                JobState {
                    spec: (**spec).clone(),
                    spec_toml: spec_toml.clone(),
                    status: JobStatus::Pending { reason: "just submitted".into() },
                    tasks,
                    workers_per_run: *workers_per_run,
                    max_restarts: *max_restarts,
                    submitted_ms: *now_ms,
                    events: vec![],
                    sweep: None,
                },
            );
            if !request_id.is_empty() {
                s.submissions.insert(request_id.clone(), job.clone());
            }
            Outcome::Applied
        }
        Command::CancelJob { job, reason } => {
            let Some(j) = s.jobs.get_mut(job) else { return reject(format!("unknown job {job}")) };
            if j.status.is_terminal() {
                return reject(format!("job {job} already ended"));
            }
            j.set_status(JobStatus::Cancelled { reason: reason.clone() });
            release_job_workers(s, job);
            Outcome::Applied
        }
        Command::RegisterWorker {
            worker,
            addr,
            protocol,
            lease_ms,
            now_ms,
            session_hash,
            replaces,
            gpus,
        } => {
            if *protocol != cyclotron_proto::PROTOCOL_VERSION {
                return reject(format!(
                    "worker {worker} speaks protocol {protocol}, this coordinator speaks {}; run matching versions",
                    cyclotron_proto::PROTOCOL_VERSION
                ));
            }
            if let Some(expected) = replaces {
                let current = s
                    .workers
                    .get(worker)
                    .filter(|w| w.status != WorkerStatus::Dead)
                    .map_or("", |w| w.session_hash.as_str());
                if current != expected {
                    return reject(format!(
                        "worker id {worker} is taken: another process registered it meanwhile"
                    ));
                }
            }
            // a worker that re-registers lost whatever it ran: break that run first
            if let Some(Some((job, task, generation))) = s.workers.get(worker).map(|w| w.task.clone()) {
                break_run(s, &job, task, generation, &format!("worker {worker} re-registered"));
            }
            s.workers.insert(
                worker.clone(),
                WorkerRecord {
                    addr: addr.clone(),
                    status: WorkerStatus::Idle,
                    lease_ms: *lease_ms,
                    registered_ms: *now_ms,
                    task: None,
                    session_hash: session_hash.clone(),
                    gpus: *gpus,
                },
            );
            Outcome::Applied
        }
        Command::Heartbeat { worker, now_ms: _ } => match s.workers.get(worker) {
            Some(w) if w.status != WorkerStatus::Dead => Outcome::Applied,
            Some(_) => reject(format!("worker {worker} was declared dead (lease expired); register again")),
            None => reject(format!("unknown worker {worker}; register first")),
        },
        Command::ExpireWorkers { workers, now_ms: _ } => {
            let expired: Vec<String> = workers
                .iter()
                .filter(|w| s.workers.get(*w).is_some_and(|r| r.status != WorkerStatus::Dead))
                .cloned()
                .collect();
            if expired.is_empty() {
                return reject("none of these workers is alive");
            }
            for id in expired {
                let task = s.workers.get(&id).and_then(|w| w.task.clone());
                if let Some(w) = s.workers.get_mut(&id) {
                    w.status = WorkerStatus::Dead;
                    w.task = None;
                }
                if let Some((job, task, generation)) = task {
                    break_run(s, &job, task, generation, &format!("worker {id} lost (lease expired)"));
                }
            }
            Outcome::Applied
        }
        Command::SetWaiting { job, reason } => match s.jobs.get_mut(job) {
            Some(j) if matches!(j.status, JobStatus::Pending { .. }) => {
                j.status = JobStatus::Pending { reason: reason.clone() };
                Outcome::Applied
            }
            Some(_) => reject(format!("job {job} is not waiting")),
            None => reject(format!("unknown job {job}")),
        },
        Command::StartTask { job, task, workers, generation } => {
            start_task(s, job, *task, workers, *generation)
        }
        Command::TaskProgress { job, task, generation, event } => {
            if !event.is_worker_event() {
                return reject(format!("workers cannot report {event:?}"));
            }
            if let Err(o) = running_task(s, job, *task, *generation) {
                return o;
            }
            let j = s.jobs.get_mut(job).expect("checked by running_task");
            let mut event = event.clone();
            event.set_from(j.task_label(*task));
            j.tasks[*task].progress = Some(event.clone());
            j.events.push(event);
            Outcome::Applied
        }
        Command::NameStraggler { job, task, generation, rank, worker, bound, summary } => {
            let t = match running_task(s, job, *task, *generation) {
                Ok(t) => t,
                Err(o) => return o,
            };
            let TaskStatus::Running { workers, .. } = &t.status else { unreachable!("running_task") };
            if let Some(r) = rank {
                if workers.get(*r as usize) != Some(worker) {
                    return reject(format!("worker {worker} is not rank {r} of job {job} task {task}"));
                }
            }
            let named = |e: &Option<JobEvent>| match e {
                Some(JobEvent::Straggler { rank, bound, .. }) => (*rank, bound.clone()),
                _ => (None, String::new()),
            };
            if named(&t.straggler) == (*rank, bound.clone()) {
                return reject("the same straggler is already named");
            }
            let event = JobEvent::Straggler {
                task: *task as u32,
                generation: *generation,
                rank: *rank,
                worker: worker.clone(),
                bound: bound.clone(),
                summary: summary.clone(),
            };
            t.straggler = rank.map(|_| event.clone());
            s.jobs.get_mut(job).expect("checked by running_task").events.push(event);
            Outcome::Applied
        }
        Command::TaskDone { job, task, generation, result } => {
            match running_task(s, job, *task, *generation) {
                Ok(t) => {
                    t.status = TaskStatus::Done;
                    t.result = Some(result.clone());
                }
                Err(o) => return o,
            }
            release_task_workers(s, job, *task);
            let j = s.jobs.get_mut(job).expect("checked by running_task");
            if matches!(j.tasks[*task].task, Task::Sweep { .. }) {
                if let Err(reason) = conclude_sweep(j) {
                    j.set_status(JobStatus::Failed { reason });
                    release_job_workers(s, job);
                    return Outcome::Applied;
                }
            }
            j.set_status(if j.all_done() {
                JobStatus::Succeeded
            } else if j.any_running() {
                JobStatus::Running
            } else {
                JobStatus::Pending { reason: "next task not started yet".into() }
            });
            Outcome::Applied
        }
        Command::TaskFailed { job, task, generation, reason } => {
            if let Err(o) = running_task(s, job, *task, *generation) {
                return o;
            }
            let j = s.jobs.get_mut(job).expect("checked by running_task");
            j.set_status(JobStatus::Failed { reason: format!("task {task}: {reason}") });
            release_job_workers(s, job);
            Outcome::Applied
        }
        Command::RestartTask { job, task, generation, reason } => {
            if let Err(o) = running_task(s, job, *task, *generation) {
                return o;
            }
            break_run(s, job, *task, *generation, reason);
            Outcome::Applied
        }
    }
}

fn start_task(s: &mut ClusterState, job: &str, task: usize, workers: &[String], generation: u64) -> Outcome {
    let Some(j) = s.jobs.get(job) else { return reject(format!("unknown job {job}")) };
    if j.status.is_terminal() {
        return reject(format!("job {job} already ended"));
    }
    if !j.is_ready(task) {
        return reject(format!("task {task} of job {job} is not waiting, or waits for another task"));
    }
    if workers.len() != j.group_size(task) {
        return reject(format!("task needs {} workers, got {}", j.group_size(task), workers.len()));
    }
    let mut seen = std::collections::BTreeSet::new();
    for w in workers {
        match s.workers.get(w) {
            Some(r) if r.status == WorkerStatus::Idle && seen.insert(w) => {}
            _ => return reject(format!("worker {w} is not idle")),
        }
    }
    for w in workers {
        let r = s.workers.get_mut(w).expect("checked above");
        r.status = WorkerStatus::Busy;
        r.task = Some((job.to_string(), task, generation));
    }
    let j = s.jobs.get_mut(job).expect("checked above");
    j.tasks[task].status = TaskStatus::Running { workers: workers.to_vec(), generation };
    j.tasks[task].straggler = None; // a new group: nobody is named yet
    j.set_status(JobStatus::Running);
    j.events.push(JobEvent::TaskStarted { task: task as u32, generation, workers: workers.to_vec() });
    Outcome::Applied
}

/// The task if it runs under `generation`; reports from an older group are stale.
fn running_task<'a>(
    s: &'a mut ClusterState,
    job: &str,
    task: usize,
    generation: u64,
) -> Result<&'a mut TaskRecord, Outcome> {
    let Some(j) = s.jobs.get_mut(job) else { return Err(reject(format!("unknown job {job}"))) };
    if j.status.is_terminal() {
        return Err(reject(format!("job {job} already ended")));
    }
    let Some(t) = j.tasks.get_mut(task) else { return Err(reject(format!("job {job} has no task {task}"))) };
    match &t.status {
        TaskStatus::Running { generation: g, .. } if *g == generation => Ok(t),
        _ => Err(reject(format!(
            "stale report: task {task} of job {job} is not running generation {generation}"
        ))),
    }
}

/// Tear down a run: its task waits again (one more restart) or, past `max_restarts`, the job fails.
fn break_run(s: &mut ClusterState, job: &str, task: usize, generation: u64, reason: &str) {
    let Some(j) = s.jobs.get_mut(job) else { return };
    let Some(t) = j.tasks.get_mut(task) else { return };
    if !matches!(&t.status, TaskStatus::Running { generation: g, .. } if *g == generation) {
        return;
    }
    t.status = TaskStatus::Waiting;
    t.restarts += 1;
    let gave_up = t.restarts > j.max_restarts;
    j.events.push(JobEvent::TaskRestarted { task: task as u32, generation, reason: reason.to_string() });
    j.set_status(if gave_up {
        JobStatus::Failed {
            reason: format!("task {task}: {reason}; gave up after {} restarts", j.max_restarts),
        }
    } else if j.any_running() {
        JobStatus::Running
    } else {
        JobStatus::Pending { reason: format!("restarting task {task} ({reason})") }
    });
    let failed = j.status.is_terminal();
    release_task_workers(s, job, task);
    if failed {
        release_job_workers(s, job);
    }
}

/// When the last point of the job's sweep is done: conclude it (pure: every replica computes the
/// same outcome from the same committed reports), record it and tell the watchers; the tasks that
/// wait for it are sent its choice when assigned ([`JobState::task_order`]). An error is the reason
/// the job fails.
fn conclude_sweep(j: &mut JobState) -> Result<(), String> {
    let sweep_tasks: Vec<usize> =
        (0..j.tasks.len()).filter(|&i| matches!(j.tasks[i].task, Task::Sweep { .. })).collect();
    if j.sweep.is_some() || sweep_tasks.iter().any(|&i| j.tasks[i].status != TaskStatus::Done) {
        return Ok(());
    }
    let Some(f) = &j.spec.lr_find else { return Err("a sweep task without [lr_find]".into()) };
    let mut reports = vec![];
    for &i in &sweep_tasks {
        let Task::Sweep { candidate, .. } = &j.tasks[i].task else { continue };
        let value = j.tasks[i].result.clone().unwrap_or_default();
        let report: PointReport = serde_json::from_value(value)
            .map_err(|e| format!("LR sweep task {i} reported a result that is not a sweep report: {e}"))?;
        reports.push((*candidate, report));
    }
    let outcome = conclude(f, &reports, j.spec.needs_lr()).map_err(|e| format!("LR sweep: {e}"))?;
    let chosen = outcome.chosen();
    let s = chosen.report.suggestion;
    j.events.push(JobEvent::LrFind {
        stage: 0,
        lrs: chosen.report.lrs.clone(),
        losses: chosen.report.losses.clone(),
        steep: s.map_or(f64::NAN, |s| s.steep),
        valley: s.map_or(f64::NAN, |s| s.valley),
        minimum: s.map_or(f64::NAN, |s| s.minimum),
        still_falling: Some(chosen.report.still_falling()),
        from: Some(format!("sweep of {}", chosen.label)),
    });
    j.events.push(JobEvent::SweepConcluded {
        chosen: chosen.label.clone(),
        lr: chosen.lr.unwrap_or(f64::NAN),
        candidates: outcome
            .candidates
            .iter()
            .map(|c| {
                format!(
                    "{}: best loss {:.4}, lr {}",
                    c.label,
                    c.best_loss,
                    c.lr.map_or("none".into(), |l| format!("{l:.3e}"))
                )
            })
            .collect(),
    });
    j.sweep = Some(outcome);
    Ok(())
}

fn release_task_workers(s: &mut ClusterState, job: &str, task: usize) {
    for w in s.workers.values_mut() {
        if matches!(&w.task, Some((j, t, _)) if j == job && *t == task) {
            w.task = None;
            if w.status == WorkerStatus::Busy {
                w.status = WorkerStatus::Idle;
            }
        }
    }
}

fn release_job_workers(s: &mut ClusterState, job: &str) {
    for w in s.workers.values_mut() {
        if matches!(&w.task, Some((j, _, _)) if j == job) {
            w.task = None;
            if w.status == WorkerStatus::Busy {
                w.status = WorkerStatus::Idle;
            }
        }
    }
}
