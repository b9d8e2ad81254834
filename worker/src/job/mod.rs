//! Run a whole job spec on this process: the task and its learner, LR-range tests, every stage
//! with its schedule, snapshots and checkpoints, then the snapshot ensemble ([`run::JobRun`]).
//! The CLI's `train` and `lr-find` call this; a cluster's workers run it as child processes.

mod run;
pub(crate) mod scoring;

use cyclotron_core::checkpoint::CheckpointStore;
use cyclotron_core::lr_range::{LrFindReport, LrRange};
use cyclotron_core::results::TrainResults;
use cyclotron_core::spec::{JobSpec, LrFindSpec, MemoryFormat, Precision};

use crate::error::{Error, Result};
use crate::event::Observer;
use crate::learner::Learner;
use crate::models::GROUPS;
use crate::runtime::store_options;

pub use run::{JobRun, Position, StageEnd, JOB_SPEC};

/// How `run_train_with` starts and stops (the CLI's `--resume` and hidden `--stop-after-epochs`).
#[derive(Debug, Clone, Default)]
pub struct TrainOptions {
    /// Continue from the newest valid checkpoint of the run, if it has one.
    pub resume: bool,
    /// Stop (with [`Error::Stopped`]) after this many epochs of this process, once their
    /// checkpoints are committed: tests use it to interrupt a run at a known point.
    pub stop_after_epochs: Option<u64>,
    /// One rank of a data-parallel group (static launch); `None` trains alone.
    pub group: Option<crate::distributed::GroupSpec>,
    /// Where to record Prometheus metrics (`--metrics-addr`); `None` records nothing.
    pub metrics: Option<crate::metrics::JobMetrics>,
    /// The job's first LR-range test, already run by the cluster's parallel sweep: stage 1 takes
    /// it instead of running `[lr_find]` itself.
    pub lr_find: Option<LrFindReport>,
}

/// The learner of `spec`: its task built (data loaded inside a "loading data" phase of `obs`),
/// its optimiser, alone until it joins a group.
pub fn build_learner(spec: &JobSpec, obs: &mut dyn Observer) -> Result<Learner> {
    let task = crate::task::registry::build(spec, obs)?;
    // before the optimiser exists: its buffers take the layout they find
    if spec.runtime.memory_format == MemoryFormat::ChannelsLast {
        let moved = crate::memory_format::to_channels_last(task.model())?;
        tracing::info!("runtime.memory_format = \"channels_last\": {moved} weights laid out NHWC");
    }
    let mut learner = Learner::new(task, &spec.optimizer, spec.seed);
    let (precision, why) = crate::precision::resolve(spec.runtime.precision, learner.device());
    if spec.runtime.precision == Precision::Auto {
        tracing::info!("runtime.precision = \"auto\": {} ({why})", format!("{precision:?}").to_lowercase());
    }
    learner.precision = precision;
    if let Some(warning) = crate::precision::slow_precision_warning(learner.precision, learner.device()) {
        tracing::warn!("{warning}");
    }
    Ok(learner)
}

/// Join the data-parallel group of `opts` (if any): the same initial weights as rank 0, gradients
/// averaged over the group from then on.
pub fn join_group(spec: &JobSpec, l: &mut Learner, opts: &TrainOptions) -> Result<()> {
    let Some(g) = &opts.group else { return Ok(()) };
    if spec.stages.iter().any(|s| s.precompute) {
        return Err(Error::Invalid {
            what: "--world-size".into(),
            message:
                "precompute stages are not supported in data-parallel runs yet; train them on one process"
                    .into(),
        });
    }
    let grads = g.join(l.device())?;
    if let Some(m) = &opts.metrics {
        grads.set_metrics(m.comm.clone());
    }
    l.join(grads)
}

/// The spec this process trains as one rank of `opts.group` (or alone): `data.global_batch_size`
/// split over the group's ranks ([`JobSpec::per_rank`]).
pub fn rank_spec(spec: &JobSpec, opts: &TrainOptions) -> Result<JobSpec> {
    let world = opts.group.as_ref().map_or(1, |g| g.world_size);
    spec.per_rank(world).map_err(|message| Error::Invalid { what: "--world-size".into(), message })
}

/// The job's store, with the `[checkpoint]` section's transfer and S3 settings.
pub fn open_store(spec: &JobSpec) -> Result<CheckpointStore> {
    Ok(CheckpointStore::open_with(&spec.output, &store_options(spec))?)
}

/// The LR-range test settings of `spec` (defaults without `[lr_find]`).
pub(crate) fn range_of(spec: &JobSpec) -> (LrRange, LrFindSpec) {
    let f = spec.lr_find.clone().unwrap_or_default();
    (LrRange { start: f.start, end: f.end, steps: f.steps }, f)
}

/// Only the LR-range test (with the first stage's frozen groups).
pub fn run_lr_find(spec: &JobSpec, obs: &mut dyn Observer) -> Result<LrFindReport> {
    let mut l = build_learner(spec, obs)?;
    if let Some(first) = spec.stages.first() {
        l.freeze_to(first.frozen_groups(GROUPS));
    }
    l.lr_find(range_of(spec).0, obs)
}

/// Run every stage of `spec`; snapshots go to `<output>/<job>/<run_id>/snapshots/`.
pub fn run_train(spec: &JobSpec, run_id: &str, obs: &mut dyn Observer) -> Result<TrainResults> {
    run_train_with(spec, run_id, &TrainOptions::default(), obs)
}

/// [`run_train`] with periodic checkpoints (`[checkpoint]`), resume and stop options.
pub fn run_train_with(
    spec: &JobSpec,
    run_id: &str,
    opts: &TrainOptions,
    obs: &mut dyn Observer,
) -> Result<TrainResults> {
    let spec = &rank_spec(spec, opts)?;
    let mut run = JobRun::start(spec, run_id, opts, obs)?;
    let from = if opts.resume { run.resume()? } else { Default::default() };
    for stage in 0..spec.stages.len() {
        let from_epoch = match stage.cmp(&from.stage) {
            std::cmp::Ordering::Less => continue,
            std::cmp::Ordering::Equal => from.epochs,
            std::cmp::Ordering::Greater => 0,
        };
        if run.run_stage(stage, from_epoch)? == StageEnd::Stopped {
            return Err(run.stop());
        }
    }
    run.finish()
}
