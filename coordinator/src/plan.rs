//! The planner: the tasks a job spec expands to, and which tasks each waits for.
//!
//! A worker runs a training task by running the single-process training path as a child process
//! (`cyclotron train JOB.toml --run RUN --resume --rank R --world-size N --peers …`), which
//! already runs every stage in order: freeze/unfreeze and SGDR stages with their snapshots, LR-range
//! tests of later stages, then the run's ensemble evaluation. So one run is ONE [`Task::Run`], and a
//! restarted task (new group, new generation) resumes from the run's last committed checkpoint
//! instead of starting over. Splitting a run into per-stage tasks would add a hand-off between
//! groups and buy nothing while stages are sequential.
//!
//! What runs in parallel, on separate worker groups:
//! 1. the job's LR sweep when it is more than one range test ([`JobSpec::parallel_sweep`]): one
//!    [`Task::Sweep`] per (candidate config, grid LR) — the coordinator concludes it when the last
//!    one is done ([`cyclotron_core::sweep::conclude`]); the runs are sent its chosen candidate and
//!    curve ([`Task::to_json`]);
//! 2. `ensemble.runs = k` independent runs (seeds `seed + i`), each a [`Task::Run`] waiting for
//!    the whole sweep;
//! 3. with k > 1, one [`Task::Evaluate`] waiting for every run: all snapshots of all runs, alone
//!    and averaged.

use cyclotron_core::spec::JobSpec;
use cyclotron_core::sweep::{self, run_id, Candidate, Probe, SweepChoice};
use cyclotron_proto::v1 as pb;

/// A unit of work the coordinator hands to a group of workers (kept in the replicated state;
/// sent to workers as the typed `Assignment.order`, see [`Task::order`]).
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum Task {
    /// One training run, every stage in order, as `cyclotron train` runs it.
    Run {
        stages: usize,
        /// Epochs over all stages.
        epochs: u64,
        /// Whether an LR-range test runs before some stage (in the run, or as the job's sweep).
        lr_find: bool,
        /// Whether some stage saves SGDR snapshots (evaluated as an ensemble at the end).
        snapshots: bool,
        /// Run id in the checkpoint store: the job id, or `<job>-r<i>` for run i of several.
        #[serde(default)]
        run: String,
        /// The run's seed (the spec's seed + i).
        #[serde(default)]
        seed: u64,
    },
    /// One point of the job's LR sweep: candidate `candidate`'s range test, or one grid LR.
    Sweep { candidate: usize, overrides: Candidate, probe: Probe },
    /// Every snapshot of every run, alone and averaged (with `ensemble.runs` > 1).
    Evaluate {
        /// (run id, seed) of each run.
        runs: Vec<(String, u64)>,
    },
}

impl Task {
    /// Short name shown by `status` (`Task.kind` on the wire).
    pub fn kind(&self) -> &'static str {
        match self {
            Task::Run { .. } => "run",
            Task::Sweep { .. } => "sweep",
            Task::Evaluate { .. } => "evaluate",
        }
    }

    /// What a worker is sent for this task (`Assignment.order`): the task, and for a run or the
    /// evaluation the concluded sweep's choice: its candidate's settings apply, and its curve is
    /// the run's first LR-range test.
    pub fn order(&self, choice: Option<&SweepChoice>) -> pb::TaskOrder {
        use pb::task_order::Kind;
        let sweep = choice.map(pb::SweepChoice::from);
        let kind = match self {
            Task::Run { stages, epochs, lr_find, snapshots, run, seed } => Kind::Run(pb::RunOrder {
                stages: u32::try_from(*stages).unwrap_or(u32::MAX),
                epochs: *epochs,
                lr_find: *lr_find,
                snapshots: *snapshots,
                run: run.clone(),
                seed: *seed,
                sweep,
            }),
            Task::Sweep { candidate, overrides, probe } => Kind::Sweep(pb::SweepOrder {
                candidate: u32::try_from(*candidate).unwrap_or(u32::MAX),
                overrides: Some(overrides.into()),
                probe: Some(probe.into()),
            }),
            Task::Evaluate { runs } => Kind::Evaluate(pb::EvaluateOrder {
                runs: runs.iter().map(|(run, seed)| pb::RunSeed { run: run.clone(), seed: *seed }).collect(),
                sweep,
            }),
        };
        pb::TaskOrder { kind: Some(kind) }
    }
}

/// A planned task and the tasks (indices) it waits for.
#[derive(Debug, Clone, PartialEq)]
pub struct Planned {
    pub task: Task,
    pub after: Vec<usize>,
}

/// The tasks of a (validated) job: sweep points, then runs, then the evaluation.
pub fn plan(job: &str, spec: &JobSpec) -> Vec<Planned> {
    let mut out = vec![];
    if spec.parallel_sweep() {
        if let Some(f) = &spec.lr_find {
            for (candidate, overrides, probe) in sweep::points(f) {
                out.push(Planned { task: Task::Sweep { candidate, overrides, probe }, after: vec![] });
            }
        }
    }
    let sweep: Vec<usize> = (0..out.len()).collect();
    let runs = spec.ensemble.runs.max(1);
    for i in 0..runs {
        out.push(Planned {
            task: Task::Run {
                stages: spec.stages.len(),
                epochs: spec.stages.iter().map(|s| s.total_epochs()).sum(),
                lr_find: spec.runs_lr_find(),
                snapshots: spec.stages.iter().any(|s| s.snapshots()),
                run: run_id(job, i, runs),
                seed: spec.seed + i as u64,
            },
            after: sweep.clone(),
        });
    }
    if runs > 1 {
        let run_tasks: Vec<usize> = (sweep.len()..out.len()).collect();
        let ids = (0..runs).map(|i| (run_id(job, i, runs), spec.seed + i as u64)).collect();
        out.push(Planned { task: Task::Evaluate { runs: ids }, after: run_tasks });
    }
    out
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
        let tasks = plan("j-1", &spec);
        let run =
            Task::Run { stages: 2, epochs: 10, lr_find: true, snapshots: true, run: "j-1".into(), seed: 42 };
        assert_eq!(tasks, vec![Planned { task: run, after: vec![] }]);
        let json = serde_json::to_value(&tasks[0].task).unwrap();
        assert_eq!(json["kind"], "run");
        assert_eq!(tasks[0].task.kind(), "run");
    }

    fn spec(extra: &str) -> JobSpec {
        let s = JobSpec::from_toml_str(
            &format!("name = \"e\"\nseed = 5\n[data]\nsource = \"fashion_mnist\"\n[model]\narch = \"small_resnet\"\n[[stage]]\nlr = \"auto\"\ncycles = 2\ncycle_len = 1\n{extra}"),
            "<t>",
        )
        .unwrap();
        s.validate().unwrap();
        s
    }

    #[test]
    fn a_grid_sweep_and_independent_runs_wait_for_what_they_need() {
        let tasks = plan(
            "j-2",
            &spec("[lr_find]\ngrid = 4\n[lr_find.candidates]\nbatch_size = [32, 64]\n[ensemble]\nruns = 3\n"),
        );
        let kinds: Vec<&str> = tasks.iter().map(|t| t.task.kind()).collect();
        assert_eq!(kinds, [vec!["sweep"; 8], vec!["run"; 3], vec!["evaluate"]].concat());
        assert!(tasks[..8].iter().all(|t| t.after.is_empty()), "sweep points run at once");
        let sweep: Vec<usize> = (0..8).collect();
        assert!(tasks[8..11].iter().all(|t| t.after == sweep), "runs wait for the whole sweep");
        assert_eq!(tasks[11].after, vec![8, 9, 10]);
        let Task::Run { run, seed, .. } = &tasks[9].task else { panic!() };
        assert_eq!((run.as_str(), *seed), ("j-2-r1", 6));
        let Task::Evaluate { runs, .. } = &tasks[11].task else { panic!() };
        assert_eq!(runs[2], ("j-2-r2".to_string(), 7));
        let Task::Sweep { candidate, overrides, probe } = &tasks[5].task else { panic!() };
        assert_eq!((*candidate, overrides.batch_size), (1, Some(64)));
        assert!(matches!(probe, Probe::Grid { steps: 30, .. }));
    }

    #[test]
    fn several_runs_share_one_range_test_and_one_run_does_its_own() {
        let shared = plan("j", &spec("[lr_find]\n[ensemble]\nruns = 2\n"));
        let kinds: Vec<&str> = shared.iter().map(|t| t.task.kind()).collect();
        assert_eq!(kinds, ["sweep", "run", "run", "evaluate"]);
        assert_eq!(
            shared[0].task,
            Task::Sweep { candidate: 0, overrides: Candidate::default(), probe: Probe::Range }
        );
        let alone = plan("j", &spec("[lr_find]\n"));
        assert_eq!(alone.len(), 1);
        assert!(matches!(&alone[0].task, Task::Run { run, .. } if run == "j"));
    }
}
