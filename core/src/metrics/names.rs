//! Every metric name Cyclotron exports, in one place: the worker and coordinator registries use
//! these constants, and the Grafana dashboard test checks its queries against real expositions.
//!
//! Names follow `cyclotron_<what>_<unit>` (`_seconds`, `_bytes`, counters end in `_total`); labels
//! are of low cardinality: [`LABEL_JOB`], [`LABEL_RANK`], [`LABEL_GROUP`] on worker metrics, fixed
//! state / kind / method sets on coordinator metrics, never a step number.

// ---- labels ----
/// The job's name (spec `name`).
pub const LABEL_JOB: &str = "job";
/// The data-parallel rank of the worker process (0 when training alone).
pub const LABEL_RANK: &str = "rank";
/// A layer group (`body_early`, `body_late`, `head`).
pub const LABEL_GROUP: &str = "group";
/// A worker, job or task state (`idle`, `running`, `done`, …).
pub const LABEL_STATE: &str = "state";
/// A task kind (`lr_find`, `train`, `evaluate`).
pub const LABEL_KIND: &str = "kind";
/// A gRPC method (`/cyclotron.Coordinator/Submit`, …).
pub const LABEL_METHOD: &str = "method";

// ---- worker: training ----
/// Gauge: the latest training batch loss (the group's mean in data-parallel runs).
pub const TRAIN_LOSS: &str = "cyclotron_train_loss";
/// Gauge: the learning rate of each layer group at the latest step (label `group`).
pub const LEARNING_RATE: &str = "cyclotron_learning_rate";
/// Counter: training samples this rank processed.
pub const SAMPLES: &str = "cyclotron_samples_total";
/// Counter: optimiser steps this rank took.
pub const STEPS: &str = "cyclotron_steps_total";
/// Histogram: time of one training step (forward, backward, gradient sync, update), seconds.
pub const STEP_SECONDS: &str = "cyclotron_step_seconds";
/// Counter: time the training loop waited for the next batch from the data loader, seconds.
pub const DATA_WAIT_SECONDS: &str = "cyclotron_data_wait_seconds_total";
/// Counter: epochs finished.
pub const EPOCHS: &str = "cyclotron_epochs_total";
/// Gauge: validation loss at the latest epoch end.
pub const VALID_LOSS: &str = "cyclotron_valid_loss";
/// Gauge: validation accuracy (0–1) at the latest epoch end.
pub const VALID_ACCURACY: &str = "cyclotron_valid_accuracy_ratio";
/// Gauge: steps the running (or latest) LR-range test has done.
pub const LR_FIND_STEPS_DONE: &str = "cyclotron_lr_find_steps_done";
/// Gauge: steps the running (or latest) LR-range test plans at most.
pub const LR_FIND_STEPS_PLANNED: &str = "cyclotron_lr_find_steps_planned";

// ---- worker: data parallelism ----
/// Counter: time the communication thread spent in gradient all-reduce calls, seconds.
pub const ALLREDUCE_SECONDS: &str = "cyclotron_allreduce_seconds_total";
/// Counter: payload bytes this rank all-reduced (fp32 gradient buckets).
pub const ALLREDUCE_BYTES: &str = "cyclotron_allreduce_bytes_total";

// ---- worker: checkpoints ----
/// Counter: bytes of committed checkpoints and snapshots (every blob, manifest excluded).
pub const CHECKPOINT_BYTES: &str = "cyclotron_checkpoint_bytes_total";
/// Histogram: time to serialise and commit one checkpoint or snapshot, seconds.
pub const CHECKPOINT_SECONDS: &str = "cyclotron_checkpoint_seconds";
/// Counter: checkpoints or snapshots committed.
pub const CHECKPOINTS: &str = "cyclotron_checkpoints_total";
/// Counter: checkpoint or snapshot uploads that failed for good (after retries).
pub const CHECKPOINT_FAILURES: &str = "cyclotron_checkpoint_failures_total";

// ---- coordinator: cluster state ----
/// Gauge: workers by state (`idle`, `busy`, `dead`).
pub const WORKERS: &str = "cyclotron_workers";
/// Gauge: jobs by state (`pending`, `running`, `succeeded`, `failed`, `cancelled`).
pub const JOBS: &str = "cyclotron_jobs";
/// Gauge: tasks by kind (`lr_find`, `train`, `evaluate`) and state (`waiting`, `running`, `done`).
pub const TASKS: &str = "cyclotron_tasks";

/// Gauge: running data-parallel groups in which the straggler rule names a rank.
pub const STRAGGLERS: &str = "cyclotron_stragglers";
/// Gauge: the rank the straggler rule names, by job, task and `bound` (`compute` or `data`); a
/// series exists only while that rank is named.
pub const STRAGGLER_RANK: &str = "cyclotron_straggler_rank";

// ---- coordinator: raft ----
/// Gauge: the replica's raft term.
pub const RAFT_TERM: &str = "cyclotron_raft_term";
/// Gauge: 1 on the leader, 0 elsewhere.
pub const RAFT_IS_LEADER: &str = "cyclotron_raft_is_leader";
/// Gauge: the raft commit index.
pub const RAFT_COMMIT_INDEX: &str = "cyclotron_raft_commit_index";
/// Gauge: the index of the last entry applied to the state machine.
pub const RAFT_APPLIED_INDEX: &str = "cyclotron_raft_applied_index";

// ---- coordinator: gRPC ----
/// Histogram: gRPC request latency by method, seconds.
pub const RPC_SECONDS: &str = "cyclotron_rpc_duration_seconds";

/// Every worker metric name, as it appears in the exposition (histograms by their base name).
pub const WORKER_METRICS: &[&str] = &[
    TRAIN_LOSS,
    LEARNING_RATE,
    SAMPLES,
    STEPS,
    STEP_SECONDS,
    DATA_WAIT_SECONDS,
    EPOCHS,
    VALID_LOSS,
    VALID_ACCURACY,
    LR_FIND_STEPS_DONE,
    LR_FIND_STEPS_PLANNED,
    ALLREDUCE_SECONDS,
    ALLREDUCE_BYTES,
    CHECKPOINT_BYTES,
    CHECKPOINT_SECONDS,
    CHECKPOINTS,
    CHECKPOINT_FAILURES,
];

/// Every coordinator metric name.
pub const COORDINATOR_METRICS: &[&str] = &[
    WORKERS,
    JOBS,
    TASKS,
    STRAGGLERS,
    RAFT_TERM,
    RAFT_IS_LEADER,
    RAFT_COMMIT_INDEX,
    RAFT_APPLIED_INDEX,
    RPC_SECONDS,
];

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_follow_the_convention() {
        for name in WORKER_METRICS.iter().chain(COORDINATOR_METRICS) {
            assert!(name.starts_with("cyclotron_"), "{name}");
            assert!(name.chars().all(|c| c.is_ascii_lowercase() || c == '_'), "{name}");
            assert!(!name.ends_with("_ms") && !name.contains("_milliseconds"), "{name}: use seconds");
        }
        let mut all: Vec<_> = WORKER_METRICS.iter().chain(COORDINATOR_METRICS).collect();
        let n = all.len();
        all.sort();
        all.dedup();
        assert_eq!(all.len(), n, "a metric name is listed twice");
    }
}
