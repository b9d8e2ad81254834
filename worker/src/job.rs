//! Run a whole job spec on this process: data, model, LR-range tests, every stage with its
//! schedule and snapshots, then the snapshot ensemble. The CLI's `train` and `lr-find` call this;
//! the coordinator's workers will run its parts.

use std::path::Path;
use std::time::Instant;

use cyclotron_core::checkpoint::{Blob, CheckpointKind, CheckpointStore, RunLocation};
use cyclotron_core::lr_range::{LrFindReport, LrRange};
use cyclotron_core::results::{EnsembleResult, SnapshotResult, StepHistory, TrainResults};
use cyclotron_core::spec::{DataSource, DeviceSpec, JobSpec, LrFindSpec};
use tch::{Device, Tensor};

use crate::data::{load_fashion_mnist, load_image_folder, Dataset, Normalize};
use crate::ensemble;
use crate::error::{Error, Result};
use crate::learner::{labels, metrics, DataBundle, Event, Learner, Observer};
use crate::models::{self, GROUPS};
use crate::tensor_io::to_safetensors;

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
            let (train, valid) = full.split(d.valid_pct, spec.seed);
            (train, valid, Some(test))
        }
        DataSource::ImageFolder => {
            let threads = std::thread::available_parallelism().map_or(2, |n| n.get());
            let s = load_image_folder(Path::new(&path), d.size.unwrap_or(32), threads)?;
            (s.train, s.valid, s.test)
        }
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
    Ok(Learner::new(net, &spec.optimizer, bundle, device, spec.seed))
}

fn range_of(spec: &JobSpec) -> (LrRange, LrFindSpec) {
    let f = spec.lr_find.clone().unwrap_or_default();
    (LrRange { start: f.start, end: f.end, steps: f.steps }, f)
}

/// Only the LR-range test (with the first stage's frozen groups).
pub fn run_lr_find(spec: &JobSpec, obs: &mut dyn Observer) -> Result<LrFindReport> {
    let data = load_data(spec)?;
    let mut l = learner(spec, &data)?;
    if let Some(first) = spec.stages.first() {
        l.freeze_to(first.frozen_groups(GROUPS));
    }
    l.lr_find(range_of(spec).0, obs)
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
struct Taken {
    result: SnapshotResult,
    valid_probs: Tensor,
    eval_probs: Tensor,
}

/// Run every stage of `spec`; snapshots go to `<output>/<job>/<run_id>/snapshots/`.
pub fn run_train(spec: &JobSpec, run_id: &str, obs: &mut dyn Observer) -> Result<TrainResults> {
    let started = Instant::now();
    // open the store first: an unwritable output must fail before an hour of training
    let store = CheckpointStore::open(&spec.output)?;
    let run = RunLocation::new(&spec.name, run_id);
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| Error::Io { what: "tokio runtime".into(), source: e })?;
    let data = load_data(spec)?;
    let mut l = learner(spec, &data)?;
    let eval_ds = data.test.clone().unwrap_or_else(|| data.valid.clone());
    let eval_split = if data.test.is_some() { "test" } else { "valid" };
    let (valid_y, eval_y) = (labels(&data.valid), labels(&eval_ds));

    let mut rec = Recorder { inner: obs, history: StepHistory::default() };
    let (range, find_spec) = range_of(spec);
    let mut lr_finds: Vec<(usize, LrFindReport)> = vec![];
    let mut epochs = vec![];
    let mut taken: Vec<Taken> = vec![];

    for (si, stage) in spec.stages.iter().enumerate() {
        l.freeze_to(stage.frozen_groups(GROUPS));
        if stage.lr_find || (si == 0 && spec.lr_find.is_some()) {
            lr_finds.push((si, l.lr_find(range, &mut rec)?));
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
        let peaks = stage.group_peaks(lr, GROUPS);
        let schedule = stage.schedule(lr, l.steps_per_epoch()?);
        rec.history.stage_starts.push(l.global_step);
        let snapshots_on = stage.snapshots();
        let mut cycle_ends = vec![];
        let mut on_snapshot = |l: &mut Learner, p: cyclotron_core::schedule::SnapshotPoint| -> Result<()> {
            cycle_ends.push((l.global_step, snapshots_on));
            if !snapshots_on {
                return Ok(());
            }
            let index = taken.len();
            let model = to_safetensors(&crate::tensor_io::clone_vars(&l.net.vs))?;
            let state = serde_json::json!({
                "stage": si, "cycle": p.cycle, "epoch": p.epoch, "step": l.global_step,
                "seed": l.seed, "epochs_done": l.epochs_done, "arch": spec.model.arch,
            });
            rt.block_on(store.commit(
                &run.snapshot_dir(index),
                CheckpointKind::Snapshot,
                (l.global_step, si, p.epoch, Some(p.cycle)),
                vec![
                    Blob { name: "model.safetensors".into(), data: model.into() },
                    Blob { name: "state.json".into(), data: state.to_string().into_bytes().into() },
                ],
                state,
            ))?;
            let valid_probs = l.predict(&l.data.valid)?;
            let eval_probs = l.predict(&eval_ds)?;
            let m = metrics(&eval_probs, &eval_y);
            taken.push(Taken {
                result: SnapshotResult {
                    index,
                    stage: si,
                    cycle: p.cycle,
                    epoch: p.epoch,
                    loss: m.loss,
                    accuracy: m.accuracy,
                    valid: metrics(&valid_probs, &valid_y),
                },
                valid_probs,
                eval_probs,
            });
            Ok(())
        };
        epochs.extend(l.fit(si, schedule.as_ref(), &peaks, &mut rec, &mut on_snapshot)?);
        rec.history.cycle_ends.extend(cycle_ends);
    }

    let final_model = l.evaluate(&eval_ds)?;
    let ensemble = if spec.ensemble.members > 0 && !taken.is_empty() {
        let valid: Vec<Tensor> = taken.iter().map(|t| t.valid_probs.shallow_clone()).collect();
        let members = ensemble::select(spec.ensemble.selection, &valid, &valid_y, spec.ensemble.members);
        let pick = |f: &dyn Fn(&Taken) -> &Tensor| -> Tensor {
            ensemble::average(&members.iter().map(|&i| f(&taken[i])).collect::<Vec<_>>())
        };
        let eval = metrics(&pick(&|t| &t.eval_probs), &eval_y);
        let valid = metrics(&pick(&|t| &t.valid_probs), &valid_y);
        Some(EnsembleResult {
            members,
            selection: format!("{:?}", spec.ensemble.selection).to_lowercase(),
            loss: eval.loss,
            accuracy: eval.accuracy,
            valid,
        })
    } else {
        None
    };
    let results = TrainResults {
        job: spec.name.clone(),
        eval_split: eval_split.into(),
        snapshots: taken.into_iter().map(|t| t.result).collect(),
        ensemble,
        final_model,
        epochs,
        lr_finds,
        history: rec.history,
        train_seconds: started.elapsed().as_secs_f64(),
    };
    let body = serde_json::to_vec_pretty(&results)
        .map_err(|e| Error::Invalid { what: "results".into(), message: e.to_string() })?;
    rt.block_on(store.put_raw(&format!("{}/{}/results.json", spec.name, run_id), body.into()))?;
    Ok(results)
}
