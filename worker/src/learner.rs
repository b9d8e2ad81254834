//! The learner: a model, its optimiser and its data, trained by any [`Schedule`].
//!
//! `fit` runs one stage: every step sets each layer group's learning rate to its peak times the
//! schedule's factor, trains one batch, and reports the loss; at the end of every epoch it measures
//! loss and accuracy on the validation split; at every cycle end it hands a snapshot to the caller.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Instant;

use cyclotron_core::lr_range::{LrFindReport, LrFinder, LrRange, Verdict};
use cyclotron_core::results::{EpochRecord, Metrics};
use cyclotron_core::schedule::{Schedule, SnapshotPoint};
use cyclotron_core::spec::OptimizerSpec;
use tch::{Device, Kind, Tensor};

use crate::data::{Augmentation, Augmenter, Batch, Dataset, Loader, LoaderConfig, Normalize};
use crate::error::{Error, Result};
use crate::models::Net;
use crate::optim::Optimizer;
use crate::tensor_io::{clone_vars, load_into};

/// What the learner tells its observer (progress bars, logs, later metrics and the coordinator).
#[derive(Debug, Clone)]
pub enum Event {
    LrFindStart {
        steps: u32,
    },
    LrFindStep {
        i: u32,
        lr: f64,
        loss: f64,
    },
    LrFindEnd {
        report: Box<LrFindReport>,
    },
    EpochStart {
        stage: usize,
        epoch: u32,
        epochs: u32,
        steps: u64,
    },
    /// One optimiser step: `lr` is the schedule's, `lrs` each layer group's; `samples` this rank's
    /// batch; `seconds` the step itself, `data_seconds` the wait for its batch before it.
    Step {
        stage: usize,
        step: u64,
        loss: f64,
        lr: f64,
        lrs: Vec<f64>,
        samples: u64,
        seconds: f64,
        data_seconds: f64,
    },
    EpochEnd {
        record: EpochRecord,
    },
    /// A long step outside training starts (`done: false`) or ends: "loading data", "uploading
    /// checkpoints".
    Phase {
        what: &'static str,
        done: bool,
    },
    /// From `job`: a stage begins (or continues at `from_epoch` after a resume).
    StageStart {
        stage: usize,
        name: String,
        epochs: u64,
        from_epoch: u32,
    },
    /// From `job`: the job continued from the committed checkpoint `checkpoint`.
    Resumed {
        stage: usize,
        epoch: u32,
        step: u64,
        checkpoint: String,
    },
    /// From `job`: a snapshot was handed to the uploader (`url`: its folder in the store).
    Snapshot {
        index: usize,
        stage: usize,
        cycle: u32,
        epoch: u32,
        accuracy: f64,
        url: String,
    },
}

pub trait Observer {
    fn on_event(&mut self, event: &Event);
}

/// An observer that ignores everything.
#[derive(Debug, Default)]
pub struct Quiet;
impl Observer for Quiet {
    fn on_event(&mut self, _: &Event) {}
}

/// The data a learner trains and evaluates on.
pub struct DataBundle {
    pub train: Dataset,
    pub valid: Dataset,
    pub norm: Normalize,
    pub batch_size: usize,
    pub prefetch: usize,
}

pub struct Learner {
    pub net: Net,
    pub opt: Optimizer,
    opt_spec: OptimizerSpec,
    pub data: DataBundle,
    pub device: Device,
    pub seed: u64,
    /// Epochs trained over the whole job: seeds each epoch's shuffle.
    pub epochs_done: u64,
    /// Optimiser steps over the whole job.
    pub global_step: u64,
    pub abort: Arc<AtomicBool>,
    /// The job's augmentation pipeline (`[data.augment]`), used for TTA views.
    pub augmenter: Option<Arc<Augmenter>>,
    /// Whether training batches are augmented now (set per stage).
    pub augment_train: bool,
    /// Cached body activations: while set, `fit` trains the head on them (a precompute stage).
    pub precomputed: Option<crate::precompute::Precomputed>,
    /// Set when this learner is one rank of a data-parallel group: gradients are averaged over
    /// the group between `backward` and the optimiser step, and each rank trains on its shard.
    pub grad_sync: Option<crate::distributed::GradSync>,
}

impl Learner {
    pub fn new(net: Net, opt_spec: &OptimizerSpec, data: DataBundle, device: Device, seed: u64) -> Self {
        let opt = Optimizer::new(opt_spec, net.parameters());
        Learner {
            net,
            opt,
            opt_spec: opt_spec.clone(),
            data,
            device,
            seed,
            epochs_done: 0,
            global_step: 0,
            abort: Arc::new(AtomicBool::new(false)),
            augmenter: None,
            augment_train: false,
            precomputed: None,
            grad_sync: None,
        }
    }

    /// Full batches per epoch of the training split.
    pub fn steps_per_epoch(&self) -> Result<u64> {
        let world = self.grad_sync.as_ref().map_or(1, |s| s.world_size());
        let n = self.data.train.len() / (self.data.batch_size * world);
        if n == 0 {
            return Err(Error::Invalid {
                what: "data.batch_size".into(),
                message: format!(
                    "{} is larger than the training split ({} items); lower batch_size or raise limit_train",
                    self.data.batch_size,
                    self.data.train.len()
                ),
            });
        }
        Ok(n as u64)
    }

    /// Training loaders (`shuffle`) augment when the stage says so; evaluation never does.
    fn loader(&self, ds: &Dataset, shuffle: bool, epoch: u64, batch_size: usize) -> Loader {
        let augment = self.augmenter.as_ref().filter(|_| shuffle && self.augment_train);
        self.loader_with(ds, shuffle, epoch, batch_size, augment)
    }

    /// A loader over `ds` with augmentation `augment` (seeded by the learner's seed and `epoch`).
    pub(crate) fn loader_with(
        &self,
        ds: &Dataset,
        shuffle: bool,
        epoch: u64,
        batch_size: usize,
        augment: Option<&Arc<Augmenter>>,
    ) -> Loader {
        let cfg = LoaderConfig {
            batch_size,
            shuffle_seed: shuffle.then_some(self.seed),
            epoch,
            drop_last: shuffle,
            prefetch: self.data.prefetch,
            augment: augment.map(|a| Augmentation { augmenter: Arc::clone(a), seed: self.seed }),
        };
        Loader::new(ds, &self.data.norm, &cfg)
    }

    /// Freeze the first `frozen` layer groups.
    pub fn freeze_to(&mut self, frozen: usize) {
        self.net.freeze_to(frozen);
    }

    /// One training step at per-group learning rates `lrs`; returns the batch loss.
    fn train_step(&mut self, x: &Tensor, y: &Tensor, lrs: &[f64]) -> Result<f64> {
        if self.precomputed.is_some() {
            let (x, y) = (x.to_device(self.device), y.to_device(self.device));
            return Ok(crate::precompute::train_step_head(&self.net, &mut self.opt, &x, &y, lrs));
        }
        let (x, y) = (x.to_device(self.device), y.to_device(self.device));
        match &mut self.grad_sync {
            Some(sync) => sync.train_step(&self.net, &mut self.opt, &x, &y, lrs),
            None => Ok(train_step(&self.net, &mut self.opt, &x, &y, lrs)),
        }
    }

    fn check_abort(&self) -> Result<()> {
        if self.abort.load(Ordering::Relaxed) {
            return Err(Error::Cancelled);
        }
        Ok(())
    }

    /// Train one stage. `peaks[g]` is group g's peak learning rate; `on_snapshot` is called at
    /// every cycle end of the schedule (when `snapshots` is on) with the point reached.
    pub fn fit(
        &mut self,
        stage: usize,
        schedule: &dyn Schedule,
        peaks: &[f64],
        obs: &mut dyn Observer,
        on_snapshot: &mut dyn FnMut(&mut Learner, SnapshotPoint) -> Result<()>,
    ) -> Result<Vec<EpochRecord>> {
        self.fit_epochs(stage, schedule, peaks, obs, on_snapshot, 0..u32::MAX)
    }

    /// [`Learner::fit`] for the stage's epochs in `range` only (0-based, clipped to the stage):
    /// the schedule position starts at `range.start` epochs. Checkpoints and resumes use it to
    /// stop and continue at epoch boundaries.
    pub fn fit_epochs(
        &mut self,
        stage: usize,
        schedule: &dyn Schedule,
        peaks: &[f64],
        obs: &mut dyn Observer,
        on_snapshot: &mut dyn FnMut(&mut Learner, SnapshotPoint) -> Result<()>,
        range: std::ops::Range<u32>,
    ) -> Result<Vec<EpochRecord>> {
        let spe = self.steps_per_epoch()?;
        let total = schedule.total_steps();
        let epochs = total.div_ceil(spe) as u32;
        let points = schedule.snapshot_points();
        let range = range.start.min(epochs)..range.end.min(epochs);
        let mut records = Vec::with_capacity(range.len());
        let mut step = range.start as u64 * spe;
        let mut lrs = vec![0.0; peaks.len()];
        for epoch in range {
            let started = Instant::now();
            obs.on_event(&Event::EpochStart { stage, epoch, epochs, steps: spe });
            let batches: Box<dyn Iterator<Item = Batch>> = match &self.precomputed {
                Some(p) => Box::new(p.batches(self.seed, self.epochs_done, self.data.batch_size)),
                None if self.grad_sync.is_some() => Box::new(self.rank_loader(self.epochs_done)),
                None => Box::new(self.loader(&self.data.train, true, self.epochs_done, self.data.batch_size)),
            };
            let (mut sum, mut n) = (0.0, 0u64);
            let mut waited = Instant::now();
            for batch in batches {
                let data_seconds = waited.elapsed().as_secs_f64();
                if step >= total {
                    break;
                }
                self.check_abort()?;
                let factor = schedule.factor_at(step);
                for (lr, peak) in lrs.iter_mut().zip(peaks) {
                    *lr = peak * factor;
                }
                let stepped = Instant::now();
                let loss = self.train_step(&batch.x, &batch.y, &lrs)?;
                let seconds = stepped.elapsed().as_secs_f64();
                if !loss.is_finite() {
                    return Err(Error::Diverged { stage, step: self.global_step, loss });
                }
                step += 1;
                self.global_step += 1;
                sum += loss;
                n += 1;
                obs.on_event(&Event::Step {
                    stage,
                    step: self.global_step,
                    loss,
                    lr: schedule.lr_at(step - 1),
                    lrs: lrs.clone(),
                    samples: batch.y.size()[0] as u64,
                    seconds,
                    data_seconds,
                });
                if let Some(p) = points.iter().find(|p| p.step == step) {
                    on_snapshot(self, *p)?;
                }
                waited = Instant::now();
            }
            self.epochs_done += 1;
            let valid = self.evaluate(&self.data.valid)?;
            let record = EpochRecord {
                stage,
                epoch: epoch + 1,
                step: self.global_step,
                train_loss: if n > 0 { sum / n as f64 } else { f64::NAN },
                valid,
                seconds: started.elapsed().as_secs_f64(),
            };
            obs.on_event(&Event::EpochEnd { record: record.clone() });
            records.push(record);
        }
        Ok(records)
    }

    /// Softmax probabilities of the model on `ds`, in order, on the CPU: [N, classes].
    pub fn predict(&self, ds: &Dataset) -> Result<Tensor> {
        let _guard = tch::no_grad_guard();
        let mut parts = vec![];
        for batch in self.loader(ds, false, 0, self.data.batch_size * 2) {
            self.check_abort()?;
            let logits = self.net.forward_t(&batch.x.to_device(self.device), false);
            parts.push(logits.softmax(-1, Kind::Float).to_device(Device::Cpu));
        }
        if parts.is_empty() {
            return Err(Error::Invalid { what: "evaluation".into(), message: "the split is empty".into() });
        }
        Ok(Tensor::cat(&parts, 0))
    }

    /// Loss and accuracy on `ds`.
    pub fn evaluate(&self, ds: &Dataset) -> Result<Metrics> {
        let probs = self.predict(ds)?;
        Ok(metrics(&probs, &labels(ds)))
    }

    /// LR-range test: train at exponentially increasing learning rates (every trainable group at
    /// the same lr) until divergence, `range.steps` steps or one epoch, whichever comes first.
    /// Model weights and optimiser state are restored afterwards.
    pub fn lr_find(&mut self, range: LrRange, obs: &mut dyn Observer) -> Result<LrFindReport> {
        // a checkpoint may still be copying the weights this test is about to change
        self.opt.wait_for_readers();
        let saved = clone_vars(&self.net.vs);
        let steps = range.steps.min(self.steps_per_epoch()? as u32);
        let range = LrRange { steps, ..range };
        // a fresh optimiser: the test must not disturb the real one's momentum
        let real_opt =
            std::mem::replace(&mut self.opt, Optimizer::new(&self.opt_spec, self.net.parameters()));
        obs.on_event(&Event::LrFindStart { steps });
        let mut finder = LrFinder::default();
        let mut diverged = false;
        let loader = self.loader(&self.data.train, true, self.epochs_done, self.data.batch_size);
        let result = (|| -> Result<()> {
            for (i, batch) in (0..steps).zip(loader) {
                self.check_abort()?;
                let lr = range.lr_at(i);
                let lrs = vec![lr; crate::models::GROUPS];
                let loss = self.train_step(&batch.x, &batch.y, &lrs)?;
                obs.on_event(&Event::LrFindStep { i, lr, loss });
                if finder.record(lr, loss) == Verdict::Diverged {
                    diverged = true;
                    break;
                }
            }
            Ok(())
        })();
        self.opt = real_opt;
        load_into(&self.net.vs, &saved, "weights saved before lr_find")?;
        result?;
        let report = LrFindReport::from_finder(finder, diverged);
        obs.on_event(&Event::LrFindEnd { report: Box::new(report.clone()) });
        Ok(report)
    }
}

impl Learner {
    /// One grid point of a parallel LR sweep: `steps` steps (at most one epoch's worth of batches
    /// per pass, continuing into the next epoch's order) at the constant `lr` on every unfrozen
    /// group, with a fresh optimiser; stops early once the loss diverges (not finite, or above
    /// [`cyclotron_core::sweep::DIVERGE_FACTOR`] × the first). The weights are restored afterwards.
    /// Returns the losses and whether it stopped on divergence.
    pub fn lr_probe(&mut self, lr: f64, steps: u32, obs: &mut dyn Observer) -> Result<(Vec<f64>, bool)> {
        self.opt.wait_for_readers();
        let saved = clone_vars(&self.net.vs);
        let real_opt =
            std::mem::replace(&mut self.opt, Optimizer::new(&self.opt_spec, self.net.parameters()));
        obs.on_event(&Event::LrFindStart { steps });
        let lrs = vec![lr; crate::models::GROUPS];
        let mut losses = Vec::with_capacity(steps as usize);
        let mut stopped = false;
        let result = (|| -> Result<()> {
            let mut epoch = self.epochs_done;
            while losses.len() < steps as usize && !stopped {
                let loader = self.loader(&self.data.train, true, epoch, self.data.batch_size);
                let before = losses.len();
                for batch in loader {
                    if losses.len() >= steps as usize {
                        break;
                    }
                    self.check_abort()?;
                    let loss = self.train_step(&batch.x, &batch.y, &lrs)?;
                    obs.on_event(&Event::LrFindStep { i: losses.len() as u32, lr, loss });
                    losses.push(loss);
                    if cyclotron_core::sweep::grid_diverged(losses[0], loss) {
                        stopped = true;
                        break;
                    }
                }
                if losses.len() == before {
                    return Err(Error::Invalid {
                        what: "data".into(),
                        message: "the training split gives no batch; lower data.batch_size".into(),
                    });
                }
                epoch += 1;
            }
            Ok(())
        })();
        self.opt = real_opt;
        load_into(&self.net.vs, &saved, "weights saved before the LR probe")?;
        result?;
        Ok((losses, stopped))
    }
}

/// The training step every path shares (the learner, the LR-range test, `make bench`): forward in
/// training mode, cross-entropy, backward, one optimiser update. Returns the batch loss.
pub fn train_step(net: &Net, opt: &mut Optimizer, x: &Tensor, y: &Tensor, lrs: &[f64]) -> f64 {
    let loss = net.forward_t(x, true).cross_entropy_for_logits(y);
    opt.zero_grad();
    loss.backward();
    opt.step(lrs);
    loss.double_value(&[])
}

/// Labels of a dataset view as an i64 tensor.
pub fn labels(ds: &Dataset) -> Tensor {
    let ys: Vec<i64> = ds.indices.iter().map(|&i| ds.labels[i]).collect();
    Tensor::from_slice(&ys)
}

/// Negative log-likelihood and accuracy of probabilities `probs` [N, C] against `labels` [N].
pub fn metrics(probs: &Tensor, labels: &Tensor) -> Metrics {
    let loss = probs.clamp_min(1e-12).log().nll_loss(labels).double_value(&[]);
    let accuracy =
        probs.argmax(-1, false).eq_tensor(labels).to_kind(Kind::Float).mean(Kind::Float).double_value(&[]);
    Metrics { loss, accuracy }
}

#[cfg(test)]
mod tests {
    use cyclotron_core::schedule::{Constant, Sgdr};
    use tch::Device;

    use super::*;
    use crate::models::{self, GROUPS};

    /// Two classes of 12×12 grey images: a bright square top-left vs bottom-right, with noise.
    fn toy(n: usize, seed: u64) -> Dataset {
        let mut rng = crate::data::SplitMix64::new(seed);
        let (mut images, mut labels) = (vec![], vec![]);
        for i in 0..n {
            let label = (i % 2) as i64;
            for y in 0..12 {
                for x in 0..12 {
                    let lit = if label == 0 { x < 6 && y < 6 } else { x >= 6 && y >= 6 };
                    let noise = rng.below(60) as u8;
                    images.push(if lit { 160 + noise } else { noise });
                }
            }
            labels.push(label);
        }
        Dataset::new(images, (1, 12, 12), labels, vec!["tl".into(), "br".into()])
    }

    fn learner() -> Learner {
        tch::manual_seed(0);
        let train = toy(256, 1);
        let valid = toy(64, 2);
        let net = models::build("small_resnet", 4, 1, 2, Device::Cpu).unwrap();
        let data =
            DataBundle { norm: Normalize::from_stats(&train), train, valid, batch_size: 32, prefetch: 2 };
        Learner::new(net, &OptimizerSpec::default(), data, Device::Cpu, 3)
    }

    #[test]
    fn fit_learns_and_snapshots_at_every_cycle_end() {
        let mut l = learner();
        let before = l.evaluate(&l.data.valid).unwrap();
        let spe = l.steps_per_epoch().unwrap();
        assert_eq!(spe, 8);
        let sched = Sgdr {
            lr_max: 0.05,
            lr_min: 0.0,
            steps_per_epoch: spe,
            cycles: 2,
            cycle_len: 1,
            cycle_mult: 2,
            warmup: true,
        };
        let mut seen = vec![];
        let records = l
            .fit(0, &sched, &[0.05; GROUPS], &mut Quiet, &mut |l, p| {
                seen.push((p.cycle, p.epoch, l.global_step));
                Ok(())
            })
            .unwrap();
        assert_eq!(seen, vec![(0, 1, 8), (1, 3, 24)], "snapshots after cycle 0 (1 epoch) and 1 (2 more)");
        assert_eq!(records.len(), 3);
        assert_eq!(l.global_step, 24);
        let after = records.last().unwrap().valid;
        assert!(after.accuracy > 0.9, "toy problem not learned: {after:?}");
        assert!(after.loss < before.loss);
    }

    #[test]
    fn lr_find_restores_weights_and_optimiser_state() {
        let mut l = learner();
        // one real step so the optimiser has momentum to protect
        l.fit(
            0,
            &Constant { lr: 0.01, steps_per_epoch: 8, epochs: 1 },
            &[0.01; GROUPS],
            &mut Quiet,
            &mut |_, _| Ok(()),
        )
        .unwrap();
        let weights = clone_vars(&l.net.vs);
        let (momentum, _) = l.opt.state();
        let report = l.lr_find(LrRange { start: 1e-4, end: 10.0, steps: 50 }, &mut Quiet).unwrap();
        // at most one epoch of steps
        assert!(!report.lrs.is_empty() && report.lrs.len() <= 8, "{} steps", report.lrs.len());
        for ((n, a), (_, b)) in weights.iter().zip(clone_vars(&l.net.vs).iter()) {
            assert!(a.equal(b), "{n} changed by lr_find");
        }
        let (after, _) = l.opt.state();
        assert_eq!(momentum.len(), after.len());
        for ((n, a), (_, b)) in momentum.iter().zip(after.iter()) {
            assert!(a.equal(b), "momentum of {n} changed by lr_find");
        }
    }

    #[test]
    fn lr_probes_start_from_the_same_weights_cross_epochs_and_stop_on_divergence() {
        let mut l = learner();
        let weights = clone_vars(&l.net.vs);
        // 20 steps: more than one epoch (8 batches)
        let (small, stopped) = l.lr_probe(0.01, 20, &mut Quiet).unwrap();
        assert_eq!((small.len(), stopped), (20, false));
        for ((n, a), (_, b)) in weights.iter().zip(clone_vars(&l.net.vs).iter()) {
            assert!(a.equal(b), "{n} changed by the probe");
        }
        // the same init and batches: the same first loss at any LR, and a repeat is identical
        let (again, _) = l.lr_probe(0.01, 20, &mut Quiet).unwrap();
        assert_eq!(small, again);
        let (good, _) = l.lr_probe(0.1, 20, &mut Quiet).unwrap();
        assert_eq!(good[0], small[0]);
        assert!(good[19] < small[19], "0.1 learns faster than 0.01 in 20 steps: {good:?} vs {small:?}");
        let (blown, stopped) = l.lr_probe(1e4, 20, &mut Quiet).unwrap();
        assert!(stopped && blown.len() < 20, "{blown:?}");
    }

    #[test]
    fn frozen_groups_do_not_move() {
        let mut l = learner();
        l.freeze_to(2);
        let before = clone_vars(&l.net.vs);
        l.fit(
            0,
            &Constant { lr: 0.05, steps_per_epoch: 8, epochs: 1 },
            &[0.05; GROUPS],
            &mut Quiet,
            &mut |_, _| Ok(()),
        )
        .unwrap();
        for ((name, a), (_, b)) in before.iter().zip(clone_vars(&l.net.vs).iter()) {
            let group = l.net.group_of(name);
            if group < 2 && !models::is_buffer(name) {
                assert!(a.equal(b), "{name} in frozen group {group} moved");
            }
            if name == "head.fc.weight" {
                assert!(!a.equal(b), "the head did not train");
            }
        }
    }

    #[test]
    fn batch_larger_than_the_data_is_an_error_naming_the_field() {
        let mut l = learner();
        l.data.batch_size = 1000;
        let e = l.steps_per_epoch().unwrap_err().to_string();
        assert!(e.starts_with("data.batch_size: 1000 is larger than the training split (256 items)"), "{e}");
    }
}
