//! Run a whole job spec on this process: data, model, LR-range tests, every stage with its
//! schedule and snapshots, then the snapshot ensemble. The CLI's `train` and `lr-find` call this;
//! the coordinator's workers will run its parts.

use std::path::Path;
use std::time::Instant;

use cyclotron_core::checkpoint::{
    Blob, CheckpointKind, CheckpointStore, RunLocation, S3Options, StoreOptions,
};
use cyclotron_core::lr_range::{LrFindReport, LrRange};
use cyclotron_core::results::{EnsembleResult, SnapshotResult, StepHistory, TrainResults};
use cyclotron_core::spec::{DataSource, DeviceSpec, JobSpec, LrFindSpec};
use tch::{Device, Tensor};

use crate::data::{load_fashion_mnist, load_image_folder, Dataset, Normalize};
use crate::ensemble;
use crate::error::{Error, Result};
use crate::learner::{labels, metrics, DataBundle, Event, Learner, Observer};
use crate::models::{self, GROUPS};

/// Data of a job, split and limited as the spec says.
pub struct JobData {
    pub train: Dataset,
    pub valid: Dataset,
    pub test: Option<Dataset>,
}

/// Load the spec's data set: a validation split carved from the training data when the source
/// has none, limits applied.
pub fn load_data(spec: &JobSpec) -> Result<JobData> {
    let d = &spec.data;
    let path = d.resolved_path();
    let (train, valid, test) = match d.source {
        DataSource::FashionMnist => {
            let (full, test) = load_fashion_mnist(Path::new(&path))?;
            let (train, valid) = full.split(d.valid_pct, d.split_seed.unwrap_or(spec.seed));
            (train, valid, Some(test))
        }
        DataSource::ImageFolder => {
            let threads = std::thread::available_parallelism().map_or(2, |n| n.get());
            let s = load_image_folder(Path::new(&path), d.size.unwrap_or(32), threads)?;
            (s.train, s.valid, s.test)
        }
    };
    let (train, valid, test) = match &d.classes {
        Some(keep) => {
            (train.select_classes(keep), valid.select_classes(keep), test.map(|t| t.select_classes(keep)))
        }
        None => (train, valid, test),
    };
    let limit = |ds: Dataset, n: Option<usize>| match n {
        Some(n) if n < ds.len() => ds.take(n),
        _ => ds,
    };
    let data = JobData {
        train: limit(train, d.limit_train),
        valid: limit(valid, d.limit_eval),
        test: test.map(|t| limit(t, d.limit_eval)),
    };
    if data.valid.is_empty() {
        return Err(Error::Invalid {
            what: "data".into(),
            message: format!(
                "the validation split of {path} is empty; raise data.valid_pct or add images to valid/"
            ),
        });
    }
    Ok(data)
}

/// The device the spec asks for.
pub fn device(spec: &JobSpec) -> Result<Device> {
    match spec.runtime.device {
        DeviceSpec::Cpu => Ok(Device::Cpu),
        DeviceSpec::Auto => Ok(Device::cuda_if_available()),
        DeviceSpec::Cuda if tch::Cuda::is_available() => Ok(Device::Cuda(0)),
        DeviceSpec::Cuda => Err(Error::Invalid {
            what: "runtime.device".into(),
            message: "\"cuda\" was asked for but no CUDA device is visible; use \"auto\" or \"cpu\"".into(),
        }),
    }
}

/// Build the learner for `spec` on `data`.
pub fn learner(spec: &JobSpec, data: &JobData) -> Result<Learner> {
    let threads =
        spec.runtime.threads.unwrap_or_else(|| std::thread::available_parallelism().map_or(1, |n| n.get()));
    tch::set_num_threads(threads as i32);
    tch::manual_seed(spec.seed as i64);
    let device = device(spec)?;
    let (mean, std) = data.train.channel_stats();
    let net = models::build(
        &spec.model.arch,
        spec.model.width,
        data.train.channels as i64,
        data.train.num_classes() as i64,
        device,
    )?;
    let bundle = DataBundle {
        train: data.train.clone(),
        valid: data.valid.clone(),
        norm: Normalize { mean, std },
        batch_size: spec.data.batch_size,
        prefetch: spec.data.prefetch,
    };
    if let Some(url) = &spec.model.pretrained {
        let skipped = models::pretrained::load_pretrained(&net, url, &store_options(spec))?;
        if !skipped.is_empty() {
            tracing::info!(url = %url, skipped = ?skipped, "pretrained weights loaded; new head");
        }
    }
    let mut l = Learner::new(net, &spec.optimizer, bundle, device, spec.seed);
    l.augmenter = augmenter(spec)?;
    Ok(l)
}

/// The job's augmentation pipeline, `None` without `[data.augment]`.
pub fn augmenter(spec: &JobSpec) -> Result<Option<std::sync::Arc<crate::data::Augmenter>>> {
    let Some(a) = &spec.data.augment else { return Ok(None) };
    let transforms = a
        .resolve()
        .map_err(|problems| Error::Invalid { what: "data.augment".into(), message: problems.join("; ") })?;
    Ok(Some(std::sync::Arc::new(crate::data::Augmenter::new(transforms))))
}

fn range_of(spec: &JobSpec) -> (LrRange, LrFindSpec) {
    let f = spec.lr_find.clone().unwrap_or_default();
    (LrRange { start: f.start, end: f.end, steps: f.steps }, f)
}

/// Only the LR-range test (with the first stage's frozen groups).
pub fn run_lr_find(spec: &JobSpec, obs: &mut dyn Observer) -> Result<LrFindReport> {
    let data = phase(obs, "loading data", || load_data(spec))?;
    let mut l = learner(spec, &data)?;
    if let Some(first) = spec.stages.first() {
        l.freeze_to(first.frozen_groups(GROUPS));
    }
    l.lr_find(range_of(spec).0, obs)
}

/// Runs `f` between the start and end events of phase `what` (progress spinners).
fn phase<T>(obs: &mut dyn Observer, what: &'static str, f: impl FnOnce() -> Result<T>) -> Result<T> {
    obs.on_event(&Event::Phase { what, done: false });
    let r = f();
    obs.on_event(&Event::Phase { what, done: true });
    r
}

/// Records the step history for plots, then passes events on.
struct Recorder<'a> {
    inner: &'a mut dyn Observer,
    history: StepHistory,
}

impl Observer for Recorder<'_> {
    fn on_event(&mut self, e: &Event) {
        if let Event::Step { step, loss, lr, .. } = e {
            self.history.steps.push(*step);
            self.history.losses.push(*loss);
            self.history.lrs.push(*lr);
        }
        self.inner.on_event(e);
    }
}

/// One snapshot's predictions, kept in memory for the ensemble.
pub(crate) struct Taken {
    pub result: SnapshotResult,
    pub valid_probs: Tensor,
    pub eval_probs: Tensor,
    /// With test-time augmentation, when the job has `[tta]`.
    pub eval_tta: Option<Tensor>,
}

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
    let mut sync = g.join(l.net.vs.device())?;
    opts.metrics.iter().for_each(|m| sync.set_metrics(m.comm.clone()));
    sync.broadcast_model(&l.net)?;
    l.grad_sync = Some(sync);
    Ok(())
}

/// The job's store, with the `[checkpoint]` section's transfer and S3 settings.
pub fn open_store(spec: &JobSpec) -> Result<CheckpointStore> {
    Ok(CheckpointStore::open_with(&spec.output, &store_options(spec))?)
}

/// The `[checkpoint]` section's transfer and S3 settings (also used to read `s3://` weights).
pub fn store_options(spec: &JobSpec) -> StoreOptions {
    let c = &spec.checkpoint;
    StoreOptions {
        multipart_threshold: c.multipart_threshold_mb << 20,
        s3: S3Options {
            endpoint: c.s3_endpoint.clone(),
            region: c.s3_region.clone(),
            allow_http: c.s3_allow_http,
            ..Default::default()
        },
        ..Default::default()
    }
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
    let started = Instant::now();
    // open the store first: an unwritable output must fail before an hour of training
    // only rank 0 of a data-parallel group writes; the others' writes go to a dropped memory store
    let store = match &opts.group {
        Some(g) if !g.is_writer() => CheckpointStore::open("memory://")?,
        _ => open_store(spec)?,
    };
    let run = RunLocation::new(&spec.name, run_id);
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| Error::Io { what: "tokio runtime".into(), source: e })?;
    rt.block_on(store.check_access(&run.prefix()))?;
    let data = phase(obs, "loading data", || load_data(spec))?;
    let mut l = learner(spec, &data)?;
    join_group(spec, &mut l, opts)?;
    let eval_ds = data.test.clone().unwrap_or_else(|| data.valid.clone());
    let eval_split = if data.test.is_some() { "test" } else { "valid" };
    let (valid_y, eval_y) = (labels(&data.valid), labels(&eval_ds));

    let mut metered = crate::metrics::Metered::new(opts.metrics.clone(), obs);
    let mut rec = Recorder { inner: &mut metered, history: StepHistory::default() };
    let (range, find_spec) = range_of(spec);
    let mut lr_finds: Vec<(usize, LrFindReport)> = vec![];
    let mut epochs = vec![];
    let mut taken: Vec<Taken> = vec![];
    // where a resume continues: (stage, epochs done in it)
    let mut resume_at = (0usize, 0u32);
    if opts.resume {
        // every rank of a group restores the same checkpoint (only rank 0 writes to the store)
        let read_store = match &opts.group {
            Some(g) if !g.is_writer() => open_store(spec)?,
            _ => store.clone(),
        };
        match crate::checkpoint::restore_latest(&read_store, &run, &rt, &mut l)? {
            Some(r) => {
                rec.on_event(&Event::Resumed {
                    stage: r.state.stage,
                    epoch: r.state.stage_epochs,
                    step: r.state.global_step,
                    checkpoint: r.dir.clone(),
                });
                resume_at = (r.state.stage, r.state.stage_epochs);
                rec.history = r.state.history;
                lr_finds = r.state.lr_finds;
                epochs = r.state.epochs;
                taken = r
                    .state
                    .snapshots
                    .into_iter()
                    .zip(r.snapshots)
                    .map(|(result, (valid_probs, eval_probs, eval_tta))| Taken {
                        result,
                        valid_probs,
                        eval_probs,
                        eval_tta,
                    })
                    .collect();
            }
            None => {
                tracing::info!(run = %run.prefix(), "no checkpoint to resume from; starting at the beginning")
            }
        }
    }
    let ckpt = &spec.checkpoint;
    let uploader = crate::checkpoint::Uploader::start_with_metrics(
        store.clone(),
        ckpt.max_pending,
        opts.metrics.as_ref().map(|m| m.checkpoint.clone()),
    )?;
    let mut epochs_this_process = 0u64;

    for (si, stage) in spec.stages.iter().enumerate() {
        let start_epoch = match resume_at {
            (rs, _) if si < rs => continue,
            (rs, e) if si == rs => e,
            _ => 0,
        };
        if start_epoch as u64 >= stage.total_epochs() {
            continue;
        }
        rec.on_event(&Event::StageStart {
            stage: si,
            name: stage.name.clone().unwrap_or_default(),
            epochs: stage.total_epochs(),
            from_epoch: start_epoch,
        });
        l.freeze_to(stage.frozen_groups(GROUPS));
        l.augment_train = l.augmenter.is_some() && stage.augment.unwrap_or(true) && !stage.precompute;
        if !stage.precompute {
            l.precomputed = None;
        }
        if start_epoch == 0 && (stage.lr_find || (si == 0 && spec.lr_find.is_some())) {
            // the LR-range test trains on images through the whole network, never on a cache
            let report = match &opts.lr_find {
                Some(swept) if si == 0 && spec.lr_find.is_some() => swept.clone(),
                _ => {
                    let cache = l.precomputed.take();
                    let r = l.lr_find(range, &mut rec);
                    l.precomputed = cache;
                    r?
                }
            };
            lr_finds.push((si, report));
        }
        let lr = match stage.fixed_lr() {
            Some(lr) => lr,
            None => {
                let report =
                    &lr_finds.last().expect("validate() ensures an LR-range test precedes lr = \"auto\"").1;
                let s = report.suggestion.ok_or_else(|| Error::Invalid {
                    what: format!("stage {}: lr = \"auto\"", si + 1),
                    message: "the LR-range test gave no suggestion (it diverged at once); set lr explicitly or lower lr_find.start".into(),
                })?;
                s.get(find_spec.suggestion)
            }
        };
        // after the LR-range test, which trains (and restores) the whole frozen network
        if stage.precompute && l.precomputed.is_none() {
            l.precomputed = Some(crate::precompute::Precomputed::compute(&l)?);
        }
        let peaks = stage.group_peaks(lr, GROUPS);
        let schedule = stage.schedule(lr, l.steps_per_epoch()?);
        if start_epoch == 0 {
            rec.history.stage_starts.push(l.global_step);
        }
        let snapshots_on = stage.snapshots();
        let spe = l.steps_per_epoch()?;
        let stage_epochs = schedule.total_steps().div_ceil(spe) as u32;
        for epoch in start_epoch..stage_epochs {
            let mut cycle_ends = vec![];
            let taken_before = taken.len();
            let mut on_snapshot = |l: &mut Learner,
                                   p: cyclotron_core::schedule::SnapshotPoint|
             -> Result<()> {
                cycle_ends.push((l.global_step, snapshots_on));
                if !snapshots_on {
                    return Ok(());
                }
                let index = taken.len();
                let state = serde_json::json!({
                    "stage": si, "cycle": p.cycle, "epoch": p.epoch, "step": l.global_step,
                    "seed": l.seed, "epochs_done": l.epochs_done, "arch": spec.model.arch,
                });
                // the same commit path as periodic checkpoints: copied off the training
                // thread, uploaded in order, committed manifest-last; never deleted by retention
                let pending = crate::checkpoint::Pending {
                    dir: run.snapshot_dir(index),
                    kind: CheckpointKind::Snapshot,
                    position: (l.global_step, si, p.epoch, Some(p.cycle)),
                    tensors: vec![("model.safetensors".into(), crate::checkpoint::share_weights(&l.net.vs))],
                    raw: vec![Blob {
                        name: "state.json".into(),
                        data: state.to_string().into_bytes().into(),
                    }],
                    state,
                    retention: None,
                };
                crate::checkpoint::hand_off(&mut l.opt, pending, &uploader)?;
                let at = SnapshotAt { index, stage: si, cycle: p.cycle, epoch: p.epoch, run: None };
                taken.push(score_snapshot(l, spec, &eval_ds, (&valid_y, &eval_y), at)?);
                Ok(())
            };
            epochs.extend(l.fit_epochs(
                si,
                schedule.as_ref(),
                &peaks,
                &mut rec,
                &mut on_snapshot,
                epoch..epoch + 1,
            )?);
            rec.history.cycle_ends.extend(cycle_ends);
            for t in &taken[taken_before..] {
                let s = &t.result;
                rec.on_event(&Event::Snapshot {
                    index: s.index,
                    stage: s.stage,
                    cycle: s.cycle,
                    epoch: s.epoch,
                    accuracy: s.accuracy,
                    url: format!("{}/{}", spec.output.trim_end_matches('/'), run.snapshot_dir(s.index)),
                });
            }
            // a periodic checkpoint at this epoch end: CPU copies handed to the uploader
            if ckpt.every_epochs > 0 && l.epochs_done % ckpt.every_epochs == 0 {
                let state = crate::checkpoint::TrainState {
                    version: crate::checkpoint::state::STATE_VERSION,
                    seed: l.seed,
                    global_step: l.global_step,
                    epochs_done: l.epochs_done,
                    stage: si,
                    stage_epochs: epoch + 1,
                    steps_per_epoch: spe,
                    opt_counts: vec![],
                    lr_finds: lr_finds.clone(),
                    epochs: epochs.clone(),
                    history: rec.history.clone(),
                    snapshots: taken.iter().map(|t| t.result.clone()).collect(),
                };
                let probs: Vec<_> = taken
                    .iter()
                    .map(|t| {
                        (
                            t.valid_probs.shallow_clone(),
                            t.eval_probs.shallow_clone(),
                            t.eval_tta.as_ref().map(|x| x.shallow_clone()),
                        )
                    })
                    .collect();
                let pending = crate::checkpoint::capture(&l, &run, state, &probs, ckpt.keep_last);
                crate::checkpoint::hand_off(&mut l.opt, pending, &uploader)?;
            }
            epochs_this_process += 1;
            if opts.stop_after_epochs.is_some_and(|n| epochs_this_process >= n) {
                uploader.finish(std::time::Duration::from_secs(ckpt.upload_deadline_s))?;
                return Err(Error::Stopped { epochs: epochs_this_process });
            }
        }
    }
    // training is over: wait for the checkpoints still uploading (a failure fails the job)
    let deadline = std::time::Duration::from_secs(ckpt.upload_deadline_s);
    phase(&mut rec, "uploading checkpoints", || uploader.finish(deadline))?;

    let final_probs = l.predict(&eval_ds)?;
    let final_model = metrics(&final_probs, &eval_y);
    let final_tta = match (&spec.tta, &l.augmenter) {
        (Some(t), Some(aug)) => {
            Some(metrics(&crate::tta::predict(&l, &eval_ds, aug, t, Some(final_probs))?, &eval_y))
        }
        _ => None,
    };
    let ensemble = if spec.ensemble.members > 0 && !taken.is_empty() {
        let valid: Vec<Tensor> = taken.iter().map(|t| t.valid_probs.shallow_clone()).collect();
        let members = ensemble::select(spec.ensemble.selection, &valid, &valid_y, spec.ensemble.members);
        let selection = format!("{:?}", spec.ensemble.selection).to_lowercase();
        Some(average_of(&taken, members, &selection, &valid_y, &eval_y))
    } else {
        None
    };
    let results = TrainResults {
        job: spec.name.clone(),
        eval_split: eval_split.into(),
        snapshots: taken.into_iter().map(|t| t.result).collect(),
        ensemble,
        final_model,
        final_tta,
        epochs,
        lr_finds,
        history: rec.history,
        train_seconds: started.elapsed().as_secs_f64(),
        sweep: None,
        runs: vec![],
        all_snapshots: None,
    };
    let body = serde_json::to_vec_pretty(&results)
        .map_err(|e| Error::Invalid { what: "results".into(), message: e.to_string() })?;
    rt.block_on(store.put_raw(&format!("{}/{}/results.json", spec.name, run_id), body.into()))?;
    Ok(results)
}

/// Where a snapshot sits in the job: what its [`SnapshotResult`] says besides the scores.
pub(crate) struct SnapshotAt {
    pub index: usize,
    pub stage: usize,
    pub cycle: u32,
    pub epoch: u32,
    pub run: Option<String>,
}

/// Score the learner's current weights as snapshot `at`: predictions on the validation and the
/// evaluation split (`labels`: their labels), and with TTA when the job has `[tta]`.
pub(crate) fn score_snapshot(
    l: &Learner,
    spec: &JobSpec,
    eval_ds: &Dataset,
    (valid_y, eval_y): (&Tensor, &Tensor),
    at: SnapshotAt,
) -> Result<Taken> {
    let valid_probs = l.predict(&l.data.valid)?;
    let eval_probs = l.predict(eval_ds)?;
    let m = metrics(&eval_probs, eval_y);
    let eval_tta = match (&spec.tta, &l.augmenter) {
        (Some(t), Some(aug)) => {
            Some(crate::tta::predict(l, eval_ds, aug, t, Some(eval_probs.shallow_clone()))?)
        }
        _ => None,
    };
    Ok(Taken {
        result: SnapshotResult {
            index: at.index,
            stage: at.stage,
            cycle: at.cycle,
            epoch: at.epoch,
            loss: m.loss,
            accuracy: m.accuracy,
            valid: metrics(&valid_probs, valid_y),
            tta: eval_tta.as_ref().map(|p| metrics(p, eval_y)),
            run: at.run,
        },
        valid_probs,
        eval_probs,
        eval_tta,
    })
}

/// The ensemble of snapshots `members` (indices into `taken`): their probabilities averaged, on
/// the evaluation split, the validation split and (when every member has them) with TTA.
pub(crate) fn average_of(
    taken: &[Taken],
    members: Vec<usize>,
    selection: &str,
    valid_y: &Tensor,
    eval_y: &Tensor,
) -> EnsembleResult {
    let pick = |f: &dyn Fn(&Taken) -> &Tensor| -> Tensor {
        ensemble::average(&members.iter().map(|&i| f(&taken[i])).collect::<Vec<_>>())
    };
    let eval = metrics(&pick(&|t| &t.eval_probs), eval_y);
    let valid = metrics(&pick(&|t| &t.valid_probs), valid_y);
    let tta = members
        .iter()
        .map(|&i| taken[i].eval_tta.as_ref())
        .collect::<Option<Vec<_>>>()
        .filter(|v| !v.is_empty())
        .map(|v| metrics(&ensemble::average(&v), eval_y));
    EnsembleResult {
        members,
        selection: selection.into(),
        loss: eval.loss,
        accuracy: eval.accuracy,
        valid,
        tta,
    }
}
