//! The planner: the ordered list of tasks a job spec expands to (LR-range tests, training stages,
//! ensemble evaluation) — the same order the single-process `cyclotron train` runs them in.

use cyclotron_core::spec::JobSpec;

/// A unit of work the coordinator hands to a group of workers.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub enum Task {
    /// An LR-range test before stage `stage` (0-based).
    LrFind { stage: usize },
    /// Train stage `stage` for `epochs` epochs.
    Train { stage: usize, epochs: u64, snapshots: bool },
    /// Evaluate the snapshots and their ensemble.
    Evaluate { members: usize },
}

/// The tasks of a (validated) job, in the order they run.
pub fn plan(spec: &JobSpec) -> Vec<Task> {
    let mut tasks = vec![];
    for (i, s) in spec.stages.iter().enumerate() {
        if s.lr_find || (i == 0 && spec.lr_find.is_some()) {
            tasks.push(Task::LrFind { stage: i });
        }
        tasks.push(Task::Train { stage: i, epochs: s.total_epochs(), snapshots: s.snapshots() });
    }
    if spec.ensemble.members > 0 && spec.stages.iter().any(|s| s.snapshots()) {
        tasks.push(Task::Evaluate { members: spec.ensemble.members });
    }
    tasks
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_seed_recipe_plans_lr_finds_before_their_stages() {
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
        assert_eq!(
            plan(&spec),
            vec![
                Task::LrFind { stage: 0 },
                Task::Train { stage: 0, epochs: 3, snapshots: false },
                Task::LrFind { stage: 1 },
                Task::Train { stage: 1, epochs: 7, snapshots: true },
                Task::Evaluate { members: 3 },
            ]
        );
    }
}
