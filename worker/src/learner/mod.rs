//! The learner: a [`Task`]'s model trained by any [`Schedule`], with its optimiser and its
//! gradient averaging. It owns the loop and the one training step every path shares (stages,
//! the LR-range test and its grid probes, `make bench`); the task owns what differs.
//!
//! A step: the task's forward pass and loss, `backward`, the gradients averaged over the
//! data-parallel group ([`GradAverage`]; [`Alone`] outside one), clipped to a global norm when
//! asked, then one optimiser update with each layer group's learning rate. An epoch: at most
//! `steps_per_epoch` of the task's batches for this rank, at the schedule's positions, then the
//! loss and metrics on the validation split. Snapshot points of a schedule fall on epoch ends.

mod range;

use std::cell::RefCell;
use std::sync::atomic::AtomicBool;
use std::sync::Arc;
use std::time::Instant;

use cyclotron_core::results::{EpochRecord, Metrics};
use cyclotron_core::schedule::{Schedule, SnapshotPoint};
use cyclotron_core::spec::{OptimizerSpec, Precision};
use tch::{Device, Kind, Tensor};

use crate::distributed::{Alone, GradAverage};
use crate::error::{Error, Result};
use crate::event::{Event, Observer};
use crate::models::Model;
use crate::optim::Optimizer;
use crate::precision::Autocast;
use crate::task::{check_abort, Batch, Part, Shard, Split, Task};

pub struct Learner {
    /// What is trained, and on what.
    pub task: Box<dyn Task>,
    pub opt: Optimizer,
    opt_spec: OptimizerSpec,
    /// The job's seed (checkpoints record it; a resume must match it).
    pub seed: u64,
    /// Epochs trained over the whole job: seeds each epoch's order.
    pub epochs_done: u64,
    /// Optimiser steps over the whole job.
    pub global_step: u64,
    pub abort: Arc<AtomicBool>,
    /// Gradient averaging over this process's data-parallel group (also gathers the ranks'
    /// shares of a split's predictions, from `&self`: hence the cell).
    grads: RefCell<Box<dyn GradAverage>>,
    /// Every parameter of the model, in its (name-sorted) order: the trainable ones are averaged.
    params: Vec<Tensor>,
    /// Gradients are scaled down to this global L2 norm when above it (`optimizer.clip`).
    pub clip: Option<f64>,
    /// Seconds the last step spent averaging gradients with the group.
    comm_seconds: f64,
    /// What the training step's forward pass and loss compute in (`runtime.precision`).
    pub precision: Precision,
}

impl std::fmt::Debug for Learner {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Learner").field("step", &self.global_step).field("epochs", &self.epochs_done).finish()
    }
}

impl Learner {
    /// A learner of `task` alone (not in a data-parallel group), optimised as `opt_spec` says.
    pub fn new(task: Box<dyn Task>, opt_spec: &OptimizerSpec, seed: u64) -> Self {
        let opt = Optimizer::new(opt_spec, task.model().parameters());
        let params = parameters(task.model());
        Learner {
            task,
            opt,
            opt_spec: opt_spec.clone(),
            seed,
            epochs_done: 0,
            global_step: 0,
            abort: Arc::new(AtomicBool::new(false)),
            grads: RefCell::new(Box::new(Alone)),
            params,
            comm_seconds: 0.0,
            clip: opt_spec.clip,
            precision: Precision::Fp32,
        }
    }

    /// The device of the model.
    pub fn device(&self) -> Device {
        self.task.model().vs().device()
    }

    pub fn model(&self) -> &dyn Model {
        self.task.model()
    }

    /// Become one rank of the data-parallel group behind `grads`: rank 0's weights are copied to
    /// every rank now, gradients averaged over the group from the next step on.
    pub fn join(&mut self, mut grads: Box<dyn GradAverage>) -> Result<()> {
        let vars: Vec<Tensor> = self
            .task
            .model()
            .named_groups()
            .into_iter()
            .map(|(_, _, t)| t)
            .filter(|t| t.kind() == Kind::Float)
            .collect();
        grads.broadcast(&vars)?;
        self.grads = RefCell::new(grads);
        Ok(())
    }

    /// The gradient averaging of this learner (a group's transport, or [`Alone`]).
    pub fn grad_average(&mut self) -> &mut dyn GradAverage {
        self.grads.get_mut().as_mut()
    }

    /// This process's part of every epoch.
    pub fn shard(&self) -> Shard {
        let grads = self.grads.borrow();
        Shard { rank: grads.rank(), world: grads.world_size() }
    }

    /// Train `task` from now on (the same model: a precompute stage's head task, or back);
    /// returns the task trained so far.
    pub fn set_task(&mut self, task: Box<dyn Task>) -> Box<dyn Task> {
        let old = std::mem::replace(&mut self.task, task);
        self.params = parameters(self.task.model());
        old
    }

    /// Full batches per epoch of the training split, over the whole group.
    pub fn steps_per_epoch(&self) -> Result<u64> {
        self.task.steps_per_epoch(self.shard().world)
    }

    /// Freeze the first `frozen` layer groups.
    pub fn freeze_to(&mut self, frozen: usize) {
        self.task.model().freeze_to(frozen);
    }

    fn check_abort(&self) -> Result<()> {
        check_abort(&self.abort)
    }

    /// The training step: forward and loss (the task's, under autocast at `precision`),
    /// backward, gradients averaged over the group and clipped, one update at per-group learning
    /// rates `lrs`. Returns the batch loss (the group's mean).
    pub fn step(&mut self, batch: &Batch, lrs: &[f64]) -> Result<f64> {
        let device = self.device();
        let task = &mut self.task;
        let loss = Autocast::run(self.precision, device, || task.loss(batch))?;
        self.opt.zero_grad();
        loss.backward();
        let trainable: Vec<Tensor> =
            self.params.iter().filter(|t| t.requires_grad()).map(Tensor::shallow_clone).collect();
        let averaging = Instant::now();
        let mean = self.grads.get_mut().average(&trainable, &loss)?;
        self.comm_seconds = averaging.elapsed().as_secs_f64();
        if let Some(max_norm) = self.clip {
            clip_grad_norm(&trainable, max_norm);
        }
        self.opt.step(lrs);
        Ok(mean)
    }

    /// Epoch `epoch` (0-based, within the stage) of a stage trained by `schedule`: `peaks[g]` is
    /// group g's peak learning rate. The schedule position starts at `epoch` epochs; the epoch
    /// ends after `steps_per_epoch` steps or at the schedule's end, then is validated.
    pub fn train_epoch(
        &mut self,
        stage: usize,
        schedule: &dyn Schedule,
        peaks: &[f64],
        epoch: u32,
        obs: &mut dyn Observer,
    ) -> Result<EpochRecord> {
        let spe = self.steps_per_epoch()?;
        let total = schedule.total_steps();
        let epochs = total.div_ceil(spe) as u32;
        let started = Instant::now();
        obs.on_event(&Event::EpochStart { stage, epoch, epochs, steps: spe });
        let batches = self.task.train_batches(self.epochs_done, self.shard())?;
        self.task.start_sequence();
        let mut step = u64::from(epoch) * spe;
        let end = (step + spe).min(total);
        let mut lrs = vec![0.0; peaks.len()];
        let (mut sum, mut n) = (0.0, 0u64);
        let mut waited = Instant::now();
        for batch in batches {
            let data_seconds = waited.elapsed().as_secs_f64();
            if step >= end {
                break;
            }
            self.check_abort()?;
            let factor = schedule.factor_at(step);
            for (lr, peak) in lrs.iter_mut().zip(peaks) {
                *lr = peak * factor;
            }
            let stepped = Instant::now();
            crate::fault::slow_step(self.shard().rank);
            let loss = self.step(&batch, &lrs)?;
            let seconds = stepped.elapsed().as_secs_f64();
            if !loss.is_finite() {
                return Err(Error::Diverged { stage, step: self.global_step, loss, split: "training" });
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
                samples: batch.items,
                seconds,
                data_seconds,
                comm_seconds: self.comm_seconds,
            });
            waited = Instant::now();
        }
        self.epochs_done += 1;
        // the epoch's validation pass (the progress line and the divergence check) runs at the
        // training precision: in bf16 it takes about half the fp32 time. Snapshot scoring,
        // ensembles, TTA and `predict` stay fp32 (`job::scoring`), so they still agree exactly.
        let device = self.device();
        let predictions = Autocast::run(self.precision, device, || self.predict(Split::Valid))?;
        let valid = self.task.metrics(&predictions, Split::Valid);
        // every batch loss can stay finite while the weights or BatchNorm's running statistics
        // do not: a model that predicts NaN must not go on to be snapshotted and "succeed"
        // (an empty validation split, `data.valid_pct = 0`, has a NaN loss of nothing)
        if !valid.loss.is_finite() && predictions.numel() > 0 {
            return Err(Error::Diverged {
                stage,
                step: self.global_step,
                loss: valid.loss,
                split: "validation",
            });
        }
        let record = EpochRecord {
            stage,
            epoch: epoch + 1,
            step: self.global_step,
            train_loss: if n > 0 { sum / n as f64 } else { f64::NAN },
            valid,
            seconds: started.elapsed().as_secs_f64(),
        };
        obs.on_event(&Event::EpochEnd { record: record.clone() });
        Ok(record)
    }

    /// Train a whole stage: every epoch of `schedule`, calling `on_snapshot` at each of its
    /// snapshot points (cycle ends, which fall on epoch ends) after that epoch.
    pub fn fit(
        &mut self,
        stage: usize,
        schedule: &dyn Schedule,
        peaks: &[f64],
        obs: &mut dyn Observer,
        on_snapshot: &mut dyn FnMut(&mut Learner, SnapshotPoint) -> Result<()>,
    ) -> Result<Vec<EpochRecord>> {
        let spe = self.steps_per_epoch()?;
        let epochs = schedule.total_steps().div_ceil(spe) as u32;
        let mut records = Vec::with_capacity(epochs as usize);
        for epoch in 0..epochs {
            records.push(self.train_epoch(stage, schedule, peaks, epoch, obs)?);
            for p in cycle_ends_in(schedule, spe, epoch) {
                on_snapshot(self, p)?;
            }
        }
        Ok(records)
    }

    /// The task's predictions on `split`. In a data-parallel group every rank must call it (it
    /// is collective): each predicts its share of the split ([`Task::predict_part`]) and the
    /// shares are gathered, so every rank gets the whole split's predictions, row for row what
    /// one process computes, in 1 / world of the time. Tasks that cannot share predict whole.
    pub fn predict(&self, split: Split) -> Result<Tensor> {
        self.predict_view(split, None)
    }

    /// The task's predictions on `split` under test-time augmentation view `view`; collective
    /// and shared between the ranks like [`Learner::predict`].
    pub fn predict_augmented(&self, split: Split, view: u64) -> Result<Tensor> {
        self.predict_view(split, Some(view))
    }

    /// The plain view (`None`) or TTA view `k` of `split`, shared between the ranks when the
    /// task can split it.
    fn predict_view(&self, split: Split, view: Option<u64>) -> Result<Tensor> {
        self.share_buffers()?;
        match (self.task.predict_part(split, view, self.shard(), &self.abort)?, view) {
            (Some(part), _) => self.gather(part),
            (None, None) => self.task.predict(split, &self.abort),
            (None, Some(k)) => self.task.predict_augmented(split, k, &self.abort),
        }
    }

    /// In a group, rank 0's buffers (BatchNorm running statistics) on every rank before a
    /// prediction, as PyTorch DDP's `broadcast_buffers`: gradients keep the parameters equal, but
    /// each rank's running statistics follow its own half-batches, and rank 0's model is the one
    /// snapshots save and `predict` reloads, so every rank's share must be predicted with it.
    fn share_buffers(&self) -> Result<()> {
        if self.shard().world <= 1 {
            return Ok(());
        }
        let model = self.task.model();
        let buffers: Vec<Tensor> = model
            .named_groups()
            .into_iter()
            .filter(|(name, _, t)| !model.is_parameter(name) && t.kind() == Kind::Float)
            .map(|(_, _, t)| t)
            .collect();
        if buffers.is_empty() {
            return Ok(());
        }
        self.grads.borrow_mut().broadcast(&buffers)
    }

    /// The whole split's predictions from every rank's part: each rank writes its rows into a
    /// zeroed buffer and the group sums them (exact: every element is one rank's value plus
    /// zeros), a bounded chunk at a time so a large split needs no second full-size copy.
    fn gather(&self, part: Part) -> Result<Tensor> {
        // unit tests cross chunk boundaries at odd places
        const CHUNK: usize = if cfg!(test) { 7 } else { 1 << 20 };
        let mut shape = part.probs.size();
        let rows = shape[0].max(1) as usize;
        let mine = Vec::<f32>::try_from(part.probs.to_kind(Kind::Float).reshape([-1]))?;
        let per_row = mine.len() / rows;
        let mine_at = part.first * per_row..part.first * per_row + mine.len();
        let mut all = vec![0.0f32; part.items * per_row];
        let mut scratch = Vec::with_capacity(CHUNK.min(all.len()));
        let mut grads = self.grads.borrow_mut();
        for (c, out) in all.chunks_mut(CHUNK).enumerate() {
            let at = c * CHUNK;
            scratch.clear();
            scratch.extend((at..at + out.len()).map(|i| {
                if mine_at.contains(&i) {
                    f64::from(mine[i - mine_at.start])
                } else {
                    0.0
                }
            }));
            grads.sum(&mut scratch)?;
            for (o, &v) in out.iter_mut().zip(&scratch) {
                *o = v as f32;
            }
        }
        shape[0] = part.items as i64;
        Ok(crate::data::loader::cpu_tensor(&all, &shape))
    }

    /// The task's metrics on `split`.
    pub fn evaluate(&self, split: Split) -> Result<Metrics> {
        let predictions = self.predict(split)?;
        Ok(self.task.metrics(&predictions, split))
    }
}

/// The snapshot points of `schedule` reached by epoch `epoch` (0-based) of `spe` steps.
pub fn cycle_ends_in(schedule: &dyn Schedule, spe: u64, epoch: u32) -> Vec<SnapshotPoint> {
    let (from, to) = (u64::from(epoch) * spe, (u64::from(epoch) + 1) * spe);
    schedule.snapshot_points().into_iter().filter(|p| p.step > from && p.step <= to).collect()
}

/// Every parameter of `model` in its order.
fn parameters(model: &dyn Model) -> Vec<Tensor> {
    model.parameters().into_iter().map(|(_, _, t)| t).collect()
}

/// Scales the gradients of `params` down so that their global L2 norm is at most `max_norm`
/// (torch's `clip_grad_norm_`: coefficient `max_norm / (norm + 1e-6)`, clamped at 1). Returns
/// the norm before clipping.
pub fn clip_grad_norm(params: &[Tensor], max_norm: f64) -> f64 {
    let _guard = tch::no_grad_guard();
    let grads: Vec<Tensor> = params.iter().map(Tensor::grad).filter(Tensor::defined).collect();
    if grads.is_empty() {
        return 0.0;
    }
    let norms: Vec<Tensor> = grads.iter().map(|g| g.norm().to_kind(Kind::Float)).collect();
    let total = Tensor::stack(&norms, 0).norm().double_value(&[]);
    let coef = max_norm / (total + 1e-6);
    if coef < 1.0 {
        for g in &grads {
            let _ = g.shallow_clone().g_mul_scalar_(coef);
        }
    }
    total
}

#[cfg(test)]
mod tests {
    use cyclotron_core::lr_range::LrRange;
    use cyclotron_core::schedule::{Constant, Sgdr};
    use tch::Device;

    use super::*;
    use crate::data::Dataset;
    use crate::event::Quiet;
    use crate::models::{self, GROUPS};
    use crate::task::image::{ImageClassification, ImageData};
    use crate::tensor_io::clone_vars;

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

    fn learner_with_batch(batch_size: usize) -> Learner {
        tch::manual_seed(0);
        let net = models::build("small_resnet", 4, 1, 2, Device::Cpu).unwrap();
        let data = ImageData::new(toy(256, 1), toy(64, 2), batch_size, 2);
        Learner::new(Box::new(ImageClassification::new(net, data, 3, None)), &OptimizerSpec::default(), 3)
    }

    fn learner() -> Learner {
        learner_with_batch(32)
    }

    #[test]
    fn fit_learns_and_snapshots_at_every_cycle_end() {
        let mut l = learner();
        let before = l.evaluate(Split::Valid).unwrap();
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
    fn bf16_steps_track_fp32_steps_learn_the_toy_problem_and_validate_in_bf16() {
        let batch = {
            let l = learner();
            l.task.train_batches(0, Shard::ALONE).unwrap().next().unwrap()
        };
        let run = |precision: Precision, steps: usize| {
            let mut l = learner();
            l.precision = precision;
            let losses: Vec<f64> = (0..steps).map(|_| l.step(&batch, &[0.05; GROUPS]).unwrap()).collect();
            (clone_vars(l.model().vs()), losses, l)
        };
        let (w32, loss32, _) = run(Precision::Fp32, 3);
        let (w16, loss16, mut l16) = run(Precision::Bf16, 3);
        let (mut diff2, mut norm2) = (0f64, 0f64);
        for ((name, a), (_, b)) in w32.iter().zip(&w16) {
            assert_eq!(b.kind(), Kind::Float, "{name}: the parameters stay fp32");
            diff2 += (a - b).square().sum(Kind::Double).double_value(&[]);
            norm2 += a.square().sum(Kind::Double).double_value(&[]);
        }
        // bf16 keeps 8 bits of mantissa: close to fp32's steps over the whole model (a single
        // BatchNorm bias that starts at 0 moves by more in relative terms), but not the same steps
        let drift = (diff2 / norm2).sqrt();
        assert!(drift > 0.0, "bf16 changed nothing: was autocast on?");
        assert!(drift < 0.01, "bf16 steps drifted from fp32 by {drift} of the weights' norm");
        for (a, b) in loss32.iter().zip(&loss16) {
            assert!((a - b).abs() < 0.05 * a.abs().max(0.1), "losses {loss32:?} vs {loss16:?}");
        }
        // and it learns
        let spe = l16.steps_per_epoch().unwrap();
        let sched = Constant { lr: 0.05, steps_per_epoch: spe, epochs: 2 };
        let records = l16.fit(0, &sched, &[0.05; GROUPS], &mut Quiet, &mut |_, _| Ok(())).unwrap();
        assert!(records.last().unwrap().valid.accuracy > 0.9, "{:?}", records.last());
        // the epoch's validation ran in bf16: close to, not equal to, fp32's evaluation of the
        // same weights (which snapshots, ensembles and `predict` use)
        let (epoch_loss, fp32_loss) =
            (records.last().unwrap().valid.loss, l16.evaluate(Split::Valid).unwrap().loss);
        assert_ne!(epoch_loss, fp32_loss, "the epoch's validation was not in bf16");
        assert!((epoch_loss - fp32_loss).abs() < 0.05 * fp32_loss.max(0.05), "{epoch_loss} vs {fp32_loss}");
        // and fp32 training validates in fp32
        let mut l32 = learner();
        let records = l32.fit(0, &sched, &[0.05; GROUPS], &mut Quiet, &mut |_, _| Ok(())).unwrap();
        assert_eq!(records.last().unwrap().valid.loss, l32.evaluate(Split::Valid).unwrap().loss);
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
        let weights = clone_vars(l.model().vs());
        let (momentum, _) = l.opt.state();
        let report = l.lr_find(LrRange { start: 1e-4, end: 1e-2, steps: 20 }, &mut Quiet).unwrap();
        // every step asked for, though an epoch has only 8: the split is walked again (fastai's
        // num_it), so a small data set still gets a full curve
        assert_eq!(report.lrs.len(), 20, "{} steps", report.lrs.len());
        assert!(!report.diverged);
        for ((n, a), (_, b)) in weights.iter().zip(clone_vars(l.model().vs()).iter()) {
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
        let weights = clone_vars(l.model().vs());
        // 20 steps: more than one epoch (8 batches)
        let (small, stopped) = l.lr_probe(0.01, 20, &mut Quiet).unwrap();
        assert_eq!((small.len(), stopped), (20, false));
        for ((n, a), (_, b)) in weights.iter().zip(clone_vars(l.model().vs()).iter()) {
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
        let before = clone_vars(l.model().vs());
        l.fit(
            0,
            &Constant { lr: 0.05, steps_per_epoch: 8, epochs: 1 },
            &[0.05; GROUPS],
            &mut Quiet,
            &mut |_, _| Ok(()),
        )
        .unwrap();
        for ((name, a), (_, b)) in before.iter().zip(clone_vars(l.model().vs()).iter()) {
            let group = l.model().group_of(name);
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
        let l = learner_with_batch(1000);
        let e = l.steps_per_epoch().unwrap_err().to_string();
        assert!(e.starts_with("data.batch_size: 1000 is larger than the training split (256 items)"), "{e}");
    }

    #[test]
    fn clipping_scales_the_global_norm_down_and_leaves_small_gradients_alone() {
        let a = Tensor::from_slice(&[3.0f32, 0.0]).set_requires_grad(true);
        let b = Tensor::from_slice(&[0.0f32, 4.0]).set_requires_grad(true);
        // gradients (3, 0) and (0, 4): global norm 5
        (&a * &a / 2.0 + &b * &b / 2.0).sum(Kind::Float).backward();
        let params = [a.shallow_clone(), b.shallow_clone()];
        let norm = clip_grad_norm(&params, 1.0);
        assert!((norm - 5.0).abs() < 1e-6, "{norm}");
        let coef = 1.0 / (5.0 + 1e-6);
        assert!(a.grad().allclose(&Tensor::from_slice(&[3.0f32 * coef as f32, 0.0]), 1e-7, 1e-7, false));
        assert!(b.grad().allclose(&Tensor::from_slice(&[0.0f32, 4.0 * coef as f32]), 1e-7, 1e-7, false));
        let before = a.grad().copy();
        assert!((clip_grad_norm(&params, 10.0) - 1.0).abs() < 1e-5);
        assert!(a.grad().equal(&before), "a norm below the limit must not change the gradients");
    }

    #[test]
    fn epochs_take_at_most_steps_per_epoch_and_snapshot_points_fall_on_their_ends() {
        let mut l = learner();
        let sched = Constant { lr: 0.01, steps_per_epoch: 8, epochs: 2 };
        l.train_epoch(0, &sched, &[0.01; GROUPS], 0, &mut Quiet).unwrap();
        assert_eq!((l.global_step, l.epochs_done), (8, 1));
        let sgdr = Sgdr {
            lr_max: 0.1,
            lr_min: 0.0,
            steps_per_epoch: 8,
            cycles: 2,
            cycle_len: 1,
            cycle_mult: 2,
            warmup: false,
        };
        let ends: Vec<Vec<u32>> =
            (0..3).map(|e| cycle_ends_in(&sgdr, 8, e).into_iter().map(|p| p.cycle).collect()).collect();
        assert_eq!(ends, vec![vec![0], vec![], vec![1]]);
    }
}
