//! Tasks: what differs between training one kind of model and another. The [`Learner`] owns the
//! loop and everything every task shares (schedules, layer groups and discriminative learning
//! rates, freezing, the optimiser, gradient averaging, the LR-range test, snapshots, checkpoints,
//! ensembles); a [`Task`] owns only its data, its batches, its forward pass and loss, its
//! predictions and metrics, and how its predictions are averaged.
//!
//! Implementations: [`image::ImageClassification`], [`precomputed::HeadOnFeatures`] (the head
//! of an image model trained on cached body activations), [`language_model::LanguageModel`]
//! (truncated BPTT), [`text_classifier::TextClassifier`] (on a language model's encoder) and
//! [`tabular::TabularTask`] (entity embeddings of a CSV's categorical columns and an MLP).
//! [`registry::build`] picks the task a job spec asks for.
//!
//! Contract: a task is driven by one thread. Batches are produced ahead of time (their iterator
//! owns what it reads), so [`Task::loss`] may keep state between batches (a language model's
//! hidden state); [`Task::start_sequence`] says that the batches that follow continue none
//! before them. Predictions are CPU tensors whose first dimension is the split's items, in the
//! split's order; [`Task::average`] of several models' predictions is the ensemble's.
//!
//! [`Learner`]: crate::learner::Learner

pub mod image;
pub mod language_model;
pub mod precomputed;
pub mod registry;
pub mod tabular;
pub mod text_classifier;

use std::sync::atomic::{AtomicBool, Ordering};

use cyclotron_core::results::Metrics;
use tch::{Kind, Tensor};

use crate::error::{Error, Result};
use crate::models::Model;

/// One training batch: the model's inputs (what they mean is the task's: images; tokens; the
/// categorical and continuous columns) and the targets.
#[derive(Debug)]
pub struct Batch {
    pub inputs: Vec<Tensor>,
    pub target: Tensor,
    /// Items the batch trains on (images, rows, tokens): the `samples` of progress and metrics.
    pub items: u64,
}

impl Batch {
    /// A batch of one input tensor `x` with targets `y`, one item per row of `y`.
    pub fn of(x: Tensor, y: Tensor) -> Batch {
        let items = y.size().first().map_or(0, |&n| n as u64);
        Batch { inputs: vec![x], target: y, items }
    }
}

/// The batches of one training epoch, produced ahead (owning what they read).
pub type Batches = Box<dyn Iterator<Item = Batch>>;

/// A split of a task's data.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Split {
    Train,
    Valid,
    /// Where results are reported: the test split when the data has one, else the validation split.
    Eval,
}

/// Which part of every epoch this process trains: rank `rank` of `world` data-parallel ranks.
/// Step `k` of `world` ranks trains on exactly the items of step `k` of one process with a
/// `world` times larger batch (the data-parallel oracle).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Shard {
    pub rank: usize,
    pub world: usize,
}

impl Shard {
    pub const ALONE: Shard = Shard { rank: 0, world: 1 };

    /// This rank's rows `[first, end)` of a split of `items` predicted in batches of `batch`:
    /// a contiguous run of whole batches, the batches dealt as evenly as they go. `None` when
    /// there are fewer batches than ranks.
    pub fn rows_of(&self, items: usize, batch: usize) -> Option<std::ops::Range<usize>> {
        let batches = items.div_ceil(batch.max(1));
        if self.world <= 1 || batches < self.world {
            return None;
        }
        let first = self.rank * batches / self.world;
        let end = (self.rank + 1) * batches / self.world;
        Some(first * batch..(end * batch).min(items))
    }
}

/// One rank's share of a split's predictions ([`Task::predict_part`]): rows `first..` of a
/// split of `items` rows.
#[derive(Debug)]
pub struct Part {
    pub first: usize,
    pub items: usize,
    pub probs: Tensor,
}

/// What a kind of training differs in; see the module docs for the contract.
pub trait Task {
    /// Variables and layer groups, for the learner.
    fn model(&self) -> &dyn Model;

    /// Optimiser steps in one epoch when `world` ranks each train a batch per step; an error
    /// naming the setting to change when the training split gives not even one.
    fn steps_per_epoch(&self, world: usize) -> Result<u64>;

    /// This rank's training batches of epoch `epoch` (the epoch over the whole job: it seeds the
    /// order), at most [`Task::steps_per_epoch`] of them.
    fn train_batches(&self, epoch: u64, shard: Shard) -> Result<Batches>;

    /// The batches that follow continue none before them (an epoch or an LR-range test starts).
    fn start_sequence(&mut self) {}

    /// Forward pass in training mode and the batch's mean loss, a scalar that `backward` can run
    /// through.
    fn loss(&mut self, batch: &Batch) -> Result<Tensor>;

    /// Predictions on `split` in evaluation mode, on the CPU, checking `abort` between batches.
    fn predict(&self, split: Split, abort: &AtomicBool) -> Result<Tensor>;

    /// Rank `part.rank` of `part.world`'s share of the predictions on `split` (`view`: the TTA
    /// view of [`Task::predict_augmented`], or `None` for the plain one), so that a data-parallel
    /// group predicts a split once between its ranks instead of once on each. Each row must come
    /// out exactly as the whole-split prediction computes it (whole evaluation batches, the same
    /// views). `None` when the task predicts only whole splits, or the split is too small to give
    /// every rank a batch — then every rank predicts the whole split.
    fn predict_part(
        &self,
        _split: Split,
        _view: Option<u64>,
        _part: Shard,
        _abort: &AtomicBool,
    ) -> Result<Option<Part>> {
        Ok(None)
    }

    /// Whether the task has an augmentation pipeline (training batches, TTA views).
    fn has_augmentation(&self) -> bool {
        false
    }

    /// Predictions on `split` under test-time augmentation view `view` (drawn reproducibly).
    fn predict_augmented(&self, _split: Split, _view: u64, _abort: &AtomicBool) -> Result<Tensor> {
        Err(Error::Invalid {
            what: "tta".into(),
            message: "this task has no augmentation to draw views from".into(),
        })
    }

    /// Whether training batches are augmented from now on (a stage's `augment`); tasks without
    /// augmentation ignore it.
    fn set_augment(&mut self, _on: bool) {}

    /// The task's metrics of `predictions` on `split`.
    fn metrics(&self, predictions: &Tensor, split: Split) -> Metrics;

    /// The ensemble's predictions from its members'.
    fn average(&self, predictions: &[&Tensor]) -> Tensor {
        crate::ensemble::average(predictions)
    }

    /// The name of [`Split::Eval`] in results: `test` or `valid`.
    fn eval_split(&self) -> &'static str;

    /// Files a snapshot of this task keeps beside its weights, so the model can be used without
    /// the job (a text model's `tokenizer.json`).
    fn artifacts(&self) -> Result<Vec<(String, Vec<u8>)>> {
        Ok(vec![])
    }

    /// The task that trains the head alone on cached body activations (a `precompute` stage).
    fn precompute(&self) -> Result<Box<dyn Task>> {
        Err(Error::Invalid {
            what: "precompute".into(),
            message: "this task has no frozen body whose activations could be cached".into(),
        })
    }
}

/// `Err(Cancelled)` once `abort` is set.
pub fn check_abort(abort: &AtomicBool) -> Result<()> {
    if abort.load(Ordering::Relaxed) {
        return Err(Error::Cancelled);
    }
    Ok(())
}

/// The training loss of a classifier: cross-entropy of `logits` against the labels `y`, with
/// label smoothing `eps` (`[loss] label_smoothing`; 0 is the plain loss, computed as before).
pub fn classification_loss(logits: &Tensor, y: &Tensor, eps: f64) -> Tensor {
    if eps > 0.0 {
        logits.cross_entropy_loss::<Tensor>(y, None, tch::Reduction::Mean, -100, eps)
    } else {
        logits.cross_entropy_for_logits(y)
    }
}

/// Optimiser steps in an epoch of `items` training items when `world` ranks each take a batch of
/// `batch` per step: the full batches only. Not even one is an error naming `data.batch_size`;
/// `unit` names the items (`items`, `examples`) and `advice` says what else may change.
pub fn full_batches(items: usize, batch: usize, world: usize, unit: &str, advice: &str) -> Result<u64> {
    let n = items / (batch * world.max(1));
    if n == 0 {
        return Err(Error::Invalid {
            what: "data.batch_size".into(),
            message: format!(
                "{batch} is larger than the training split ({items} {unit}); lower batch_size{advice}"
            ),
        });
    }
    Ok(n as u64)
}

/// Negative log-likelihood and accuracy of probabilities `probs` [N, C] against `labels` [N].
pub fn classification_metrics(probs: &Tensor, labels: &Tensor) -> Metrics {
    let loss = probs.clamp_min(1e-12).log().nll_loss(labels).double_value(&[]);
    let accuracy =
        probs.argmax(-1, false).eq_tensor(labels).to_kind(Kind::Float).mean(Kind::Float).double_value(&[]);
    Metrics::classification(loss, accuracy)
}

#[cfg(test)]
mod loss_tests {
    use super::*;

    #[test]
    fn label_smoothing_mixes_the_uniform_target_into_the_cross_entropy() {
        let logits = Tensor::from_slice(&[2.0f32, 0.5, -1.0, 0.0, 1.0, 3.0]).view([2, 3]);
        let y = Tensor::from_slice(&[0i64, 2]);
        let plain = classification_loss(&logits, &y, 0.0).double_value(&[]);
        assert!((plain - logits.cross_entropy_for_logits(&y).double_value(&[])).abs() < 1e-12);
        // (1 − ε)·CE + ε·mean over classes of −log p
        let eps = 0.1;
        let uniform = -logits.log_softmax(-1, Kind::Float).mean(Kind::Float).double_value(&[]);
        let want = (1.0 - eps) * plain + eps * uniform;
        let got = classification_loss(&logits, &y, eps).double_value(&[]);
        assert!((got - want).abs() < 1e-6, "{got} vs {want}");
        assert!(got > plain, "smoothing raises the loss of confident right answers: {got} vs {plain}");
    }
}
