//! The scheduler: pure decisions from the state and the leader's clock. The leader proposes the
//! returned commands through raft; nothing here mutates state or does I/O.
//!
//! Policy, in order: expire leases that ran out; then, per job in submission order, start its next
//! waiting task on the first `workers_per_run` idle workers (ranks in worker-id order), or say
//! why it waits ("needs 4 workers, 2 registered" stays visible until it can run or is cancelled).

use crate::state::{ClusterState, Command, JobStatus, TaskStatus, WorkerStatus};

pub fn decide(state: &ClusterState, now_ms: u64) -> Vec<Command> {
    let mut out = vec![];
    if state.workers.values().any(|w| w.status != WorkerStatus::Dead && w.lease_expires_ms < now_ms) {
        // the group of an expired worker is torn down by this command; assign after it applies
        out.push(Command::ExpireLeases { now_ms });
        return out;
    }
    let alive = state.workers.values().filter(|w| w.status != WorkerStatus::Dead).count();
    let mut idle: Vec<&str> = state.idle_workers();
    let mut jobs: Vec<_> = state.jobs.iter().filter(|(_, j)| !j.status.is_terminal()).collect();
    jobs.sort_by_key(|(id, j)| (j.submitted_ms, id.as_str()));
    for (id, j) in jobs {
        let Some(next) = j.next_task() else { continue };
        let t = &j.tasks[next];
        if t.status != TaskStatus::Waiting {
            continue;
        }
        if idle.len() >= j.workers_per_run {
            let workers: Vec<String> = idle.drain(..j.workers_per_run).map(str::to_string).collect();
            out.push(Command::StartTask {
                job: id.clone(),
                task: next,
                workers,
                generation: u64::from(t.restarts),
            });
            continue;
        }
        let reason = if alive < j.workers_per_run {
            format!("needs {} workers, {alive} registered", j.workers_per_run)
        } else {
            format!("needs {} idle workers, {} idle", j.workers_per_run, idle.len())
        };
        if !matches!(&j.status, JobStatus::Pending { reason: r } if *r == reason) {
            out.push(Command::SetWaiting { job: id.clone(), reason });
        }
    }
    out
}
