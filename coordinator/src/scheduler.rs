//! The scheduler: pure decisions from the state, the leader's leases and its clock. The leader
//! proposes the returned commands through raft; nothing here mutates state or does I/O.
//!
//! Policy, in order: declare dead the workers whose lease ran out (their groups are torn down by
//! that command; assignment waits for the next round, after it applied); then, per job in
//! submission order, start each of its ready tasks (waiting, everything they wait for done: the
//! points of an LR sweep, independent runs) on the next `workers_per_run` idle workers (ranks in
//! worker-id order) while there are enough, or, when none of its tasks runs, say why it waits ("needs 4 workers, 2 registered" stays visible
//! until it can run or is cancelled).

use crate::leases::Leases;
use crate::state::{ClusterState, Command, JobStatus, WorkerStatus};

pub fn decide(state: &ClusterState, leases: &Leases, now_ms: u64) -> Vec<Command> {
    let mut out = vec![];
    let expired = leases.expired(state, now_ms);
    if !expired.is_empty() {
        out.push(Command::ExpireWorkers { workers: expired, now_ms });
        return out;
    }
    let alive = state.workers.values().filter(|w| w.status != WorkerStatus::Dead).count();
    let mut idle: Vec<&str> = state.idle_workers();
    let mut jobs: Vec<_> = state.jobs.iter().filter(|(_, j)| !j.status.is_terminal()).collect();
    jobs.sort_by_key(|(id, j)| (j.submitted_ms, id.as_str()));
    for (id, j) in jobs {
        let ready = j.ready_tasks();
        if ready.is_empty() {
            continue;
        }
        let mut started = 0;
        let need = j.group_size(ready[0]);
        for next in ready {
            let n = j.group_size(next);
            if idle.len() < n {
                break;
            }
            let workers: Vec<String> = idle.drain(..n).map(str::to_string).collect();
            out.push(Command::StartTask {
                job: id.clone(),
                task: next,
                workers,
                generation: u64::from(j.tasks[next].restarts),
            });
            started += 1;
        }
        if started > 0 || j.any_running() {
            continue;
        }
        let reason = if alive < need {
            format!("needs {need} workers, {alive} registered")
        } else {
            format!("needs {need} idle workers, {} idle", idle.len())
        };
        if !matches!(&j.status, JobStatus::Pending { reason: r } if *r == reason) {
            out.push(Command::SetWaiting { job: id.clone(), reason });
        }
    }
    out
}
