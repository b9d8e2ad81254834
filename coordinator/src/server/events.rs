//! State → wire: jobs, tasks and job events as the proto messages `status` and `watch` show.

use cyclotron_proto::v1 as pb;
use pb::job_event::Event;

use crate::live::Live;
use crate::state::{JobEvent, JobState, TaskStatus};

/// Job `id` as the wire shows it; `live` (the leader's memory) adds each running task's ranks.
pub(crate) fn job(id: &str, j: &JobState, live: Option<&Live>) -> pb::Job {
    pb::Job {
        job_id: id.to_string(),
        name: j.spec.name.clone(),
        status: j.status.name().to_string(),
        reason: j.status.reason().to_string(),
        tasks: j
            .tasks
            .iter()
            .enumerate()
            .map(|(i, t)| {
                let (workers, generation) = match &t.status {
                    TaskStatus::Running { workers, generation } => (workers.clone(), *generation),
                    _ => (vec![], u64::from(t.restarts)),
                };
                // a job that ended in an older version left its unfinished tasks as they were
                let status = match &t.status {
                    TaskStatus::Waiting | TaskStatus::Running { .. } if j.status.is_terminal() => "stopped",
                    s => s.name(),
                };
                pb::Task {
                    kind: t.task.kind().to_string(),
                    stage: 0,
                    status: status.to_string(),
                    workers,
                    generation,
                    restarts: t.restarts,
                    straggler: match &t.straggler {
                        Some(JobEvent::Straggler { rank: Some(rank), worker, bound, summary, .. })
                            if status == "running" =>
                        {
                            Some(pb::Straggler {
                                rank: *rank,
                                worker: worker.clone(),
                                bound: bound.clone(),
                                summary: summary.clone(),
                            })
                        }
                        _ => None,
                    },
                    ranks: match live.and_then(|l| l.task(id, i)) {
                        Some(l) if status == "running" && l.generation == generation => l
                            .stats()
                            .into_iter()
                            .map(|r| pb::RankStats {
                                rank: r.rank,
                                worker: r.worker,
                                step: r.step,
                                step_ms: r.step_s * 1e3,
                                data_ms: r.data_s * 1e3,
                                comm_ms: r.comm_s * 1e3,
                                busy_ms: r.busy_s * 1e3,
                            })
                            .collect(),
                        _ => vec![],
                    },
                }
            })
            .collect(),
        results_json: j.results().map(|r| r.to_string()).unwrap_or_default(),
    }
}

pub(crate) fn event(index: u64, e: &JobEvent) -> pb::JobEvent {
    let from = e.from().unwrap_or_default().to_string();
    let event = match e.clone() {
        JobEvent::StageStarted { stage, name, epochs, .. } => {
            Event::StageStarted(pb::StageStarted { stage, name, epochs })
        }
        JobEvent::LrFind { stage, lrs, losses, steep, valley, minimum, .. } => {
            Event::LrFind(pb::LrFindCurve { stage, lrs, losses, steep, valley, minimum })
        }
        JobEvent::Epoch { stage, epoch, step, train_loss, valid_loss, valid_accuracy, seconds, .. } => {
            Event::Epoch(pb::EpochMetrics {
                stage,
                epoch,
                step,
                train_loss,
                valid_loss,
                valid_accuracy,
                seconds,
            })
        }
        JobEvent::Snapshot { index, stage, cycle, manifest_url, .. } => {
            Event::Snapshot(pb::SnapshotSaved { index, stage, cycle, manifest_url })
        }
        JobEvent::TaskStarted { task, generation, workers } => {
            Event::TaskStarted(pb::TaskStarted { task, generation, workers })
        }
        JobEvent::TaskRestarted { task, generation, reason } => {
            Event::TaskRestarted(pb::TaskRestarted { task, generation, reason })
        }
        JobEvent::SweepConcluded { chosen, lr, candidates } => {
            Event::SweepConcluded(pb::SweepConcluded { chosen, lr, candidates })
        }
        JobEvent::Straggler { task, generation, rank, worker, bound, summary } => {
            Event::Straggler(pb::StragglerNamed {
                task,
                generation,
                named: rank.is_some(),
                rank: rank.unwrap_or_default(),
                worker,
                bound,
                summary,
            })
        }
        JobEvent::Ended { status, reason } => Event::Ended(pb::JobEnded { status, reason }),
    };
    pb::JobEvent { index, event: Some(event), from }
}
