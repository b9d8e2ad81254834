//! The planner: the tasks a job spec expands to.
//!
//! A worker runs a task by running the single-process training path as a child process
//! (`cyclotron train JOB.toml --run JOB_ID --resume --rank R --world-size N --peers …`), which
//! already runs every stage in order: the LR-range tests, freeze/unfreeze and SGDR stages with
//! their snapshots, then the ensemble evaluation. So a job is ONE [`Task::Run`] covering all of it,
//! and the run id is the job id: a restarted task (new group, new generation) resumes from the
//! run's last committed checkpoint in the spec's `[checkpoint]` store instead of starting over.
//! Splitting the run into per-stage tasks would add a checkpoint hand-off between groups and buy
//! nothing while stages are sequential; the parallel LR sweep (independent tasks on separate
//! groups) is where more than one task per job pays off, and the task list is ready for it.

use cyclotron_core::spec::JobSpec;

/// A unit of work the coordinator hands to a group of workers (sent to workers as
/// `Assignment.task_json`, e.g. `{"kind":"run","stages":2,"epochs":10,…}`).
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum Task {
    /// The whole job, every stage in order, as `cyclotron train` runs it; what it covers is
    /// listed for `status` and the worker's logs.
    Run {
        stages: usize,
        /// Epochs over all stages.
        epochs: u64,
        /// Whether an LR-range test runs before some stage.
        lr_find: bool,
        /// Whether some stage saves SGDR snapshots (evaluated as an ensemble at the end).
        snapshots: bool,
    },
}

impl Task {
    /// Short name shown by `status` (`Task.kind` on the wire).
    pub fn kind(&self) -> &'static str {
        match self {
            Task::Run { .. } => "run",
        }
    }
}

/// The tasks of a (validated) job, in the order they run.
pub fn plan(spec: &JobSpec) -> Vec<Task> {
    vec![Task::Run {
        stages: spec.stages.len(),
        epochs: spec.stages.iter().map(|s| s.total_epochs()).sum(),
        lr_find: spec.runs_lr_find(),
        snapshots: spec.stages.iter().any(|s| s.snapshots()),
    }]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_seed_recipe_is_one_run_covering_every_stage() {
        let spec = JobSpec::from_toml_str(
            r#"
name = "seed"
[data]
source = "fashion_mnist"
[model]
arch = "small_resnet"
[lr_find]
[[stage]]
freeze = true
lr = 0.01
epochs = 3
[[stage]]
lr_find = true
lr = "auto"
group_lrs = "thirds"
cycles = 3
cycle_len = 1
cycle_mult = 2
"#,
            "<t>",
        )
        .unwrap();
        spec.validate().unwrap();
        let tasks = plan(&spec);
        assert_eq!(tasks, vec![Task::Run { stages: 2, epochs: 10, lr_find: true, snapshots: true }]);
        let json = serde_json::to_value(&tasks[0]).unwrap();
        assert_eq!(json["kind"], "run");
        assert_eq!(tasks[0].kind(), "run");
    }
}
