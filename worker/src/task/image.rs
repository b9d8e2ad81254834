//! Image classification: images in memory ([`Dataset`]), batches from the background
//! [`Loader`] (augmented when the stage says so), an image [`Net`], cross-entropy, softmax
//! probabilities as predictions, loss and accuracy as metrics, and test-time augmentation views.

use std::rc::Rc;
use std::sync::atomic::AtomicBool;
use std::sync::Arc;

use cyclotron_core::results::Metrics;
use serde::{Deserialize, Serialize};
use tch::{Device, Kind, Tensor};

use super::{check_abort, classification_metrics, Batch, Batches, Part, Shard, Split, Task};
use crate::data::augment::TTA_EPOCH;
use crate::data::{rank_positions, Augmentation, Augmenter, Dataset, Loader, LoaderConfig, Normalize};
use crate::error::{Error, Result};
use crate::models::{Model, Net};

/// The images a classifier trains and is scored on.
#[derive(Clone)]
pub struct ImageData {
    pub train: Dataset,
    pub valid: Dataset,
    /// The test split, when the source has one; results are reported on it.
    pub test: Option<Dataset>,
    pub norm: Normalize,
    pub batch_size: usize,
    /// Batches prepared ahead by the loading thread.
    pub prefetch: usize,
}

impl ImageData {
    /// `train` and `valid` normalised by `train`'s channel statistics, no test split.
    pub fn new(train: Dataset, valid: Dataset, batch_size: usize, prefetch: usize) -> ImageData {
        ImageData { norm: Normalize::from_stats(&train), train, valid, test: None, batch_size, prefetch }
    }

    /// The data set behind `split`.
    pub fn split(&self, split: Split) -> &Dataset {
        match split {
            Split::Train => &self.train,
            Split::Valid => &self.valid,
            Split::Eval => self.test.as_ref().unwrap_or(&self.valid),
        }
    }
}

/// The name of an image classifier's [`ImageCard`] in its snapshots.
pub const IMAGE_CARD: &str = "image.json";
/// The name of a TorchScript model's whole module (buffers included, `torch.jit.load`-able) in
/// its snapshots, beside its parameters in `model.safetensors`.
pub const SCRIPT_MODULE: &str = "model.pt";

/// What a snapshot of an image classifier keeps beside its weights so that `cyclotron predict`
/// can use it without the job's data: the input shape, the class names, and the normalisation
/// fitted on the training split.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ImageCard {
    pub channels: usize,
    pub height: usize,
    pub width: usize,
    pub classes: Vec<String>,
    pub mean: Vec<f32>,
    pub std: Vec<f32>,
}

impl ImageCard {
    /// The card of a model trained on `data`.
    pub fn of(data: &ImageData) -> ImageCard {
        let t = &data.train;
        ImageCard {
            channels: t.channels,
            height: t.height,
            width: t.width,
            classes: t.classes.clone(),
            mean: data.norm.mean.clone(),
            std: data.norm.std.clone(),
        }
    }
}

/// Image classification; cheap to clone (the model and the pixels are shared).
#[derive(Clone)]
pub struct ImageClassification {
    net: Rc<Net>,
    data: ImageData,
    seed: u64,
    /// The job's augmentation pipeline (`[data.augment]`), for training batches and TTA views.
    augmenter: Option<Arc<Augmenter>>,
    /// Whether training batches are augmented now (set per stage).
    augment_train: bool,
    /// `[loss] label_smoothing` of the training loss.
    label_smoothing: f64,
}

impl ImageClassification {
    /// `seed` orders the epochs and draws the augmentations.
    pub fn new(net: Net, data: ImageData, seed: u64, augmenter: Option<Arc<Augmenter>>) -> Self {
        ImageClassification {
            net: Rc::new(net),
            data,
            seed,
            augmenter,
            augment_train: false,
            label_smoothing: 0.0,
        }
    }

    /// This task with label smoothing `eps` in its training loss.
    pub fn with_label_smoothing(mut self, eps: f64) -> Self {
        self.label_smoothing = eps;
        self
    }

    pub fn label_smoothing(&self) -> f64 {
        self.label_smoothing
    }

    pub fn net(&self) -> &Net {
        &self.net
    }

    pub fn data(&self) -> &ImageData {
        &self.data
    }

    pub fn seed(&self) -> u64 {
        self.seed
    }

    fn device(&self) -> Device {
        self.net.vs.device()
    }

    /// A loader over `ds` with augmentation `augment` (seeded by the task's seed and `epoch`).
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

    /// Softmax probabilities of the model on `ds` under `augment` as drawn for `epoch`, in order,
    /// on the CPU: [N, classes].
    fn probabilities(
        &self,
        ds: &Dataset,
        epoch: u64,
        augment: Option<&Arc<Augmenter>>,
        abort: &AtomicBool,
    ) -> Result<Tensor> {
        let _guard = tch::no_grad_guard();
        let mut parts = vec![];
        for batch in self.loader_with(ds, false, epoch, self.data.batch_size * 2, augment) {
            check_abort(abort)?;
            let logits = self.net.forward_t(&batch.x.to_device(self.device()), false)?;
            parts.push(logits.softmax(-1, Kind::Float).to_device(Device::Cpu));
        }
        if parts.is_empty() {
            return Err(Error::Invalid { what: "evaluation".into(), message: "the split is empty".into() });
        }
        Ok(Tensor::cat(&parts, 0))
    }

    /// Probabilities on `ds` of the plain view (`view = None`) or of TTA view `k`
    /// ([`Task::predict_augmented`]).
    fn view_probabilities(&self, ds: &Dataset, view: Option<u64>, abort: &AtomicBool) -> Result<Tensor> {
        let Some(k) = view else {
            return self.probabilities(ds, 0, None, abort);
        };
        let Some(aug) = &self.augmenter else {
            return Err(Error::Invalid {
                what: "tta".into(),
                message: "the job has no [data.augment]".into(),
            });
        };
        let aug = Arc::new(aug.tta_view(k));
        self.probabilities(ds, TTA_EPOCH + k, Some(&aug), abort)
    }

    /// Labels of `split` as an i64 tensor.
    pub fn labels(&self, split: Split) -> Tensor {
        labels(self.data.split(split))
    }
}

/// Labels of a dataset view as an i64 tensor.
pub fn labels(ds: &Dataset) -> Tensor {
    let ys: Vec<i64> = ds.indices.iter().map(|&i| ds.labels[i]).collect();
    Tensor::from_slice(&ys)
}

impl Task for ImageClassification {
    fn model(&self) -> &dyn Model {
        &*self.net
    }

    fn steps_per_epoch(&self, world: usize) -> Result<u64> {
        super::full_batches(
            self.data.train.len(),
            self.data.batch_size,
            world,
            "items",
            " or raise limit_train",
        )
    }

    fn train_batches(&self, epoch: u64, shard: Shard) -> Result<Batches> {
        let batch = self.data.batch_size;
        let positions =
            rank_positions(self.data.train.len(), self.seed, epoch, shard.rank, shard.world, batch);
        let rows = self.data.train.subset(&positions);
        let augment = self.augmenter.as_ref().filter(|_| self.augment_train);
        let loader = self.loader_with(&rows, false, epoch, batch, augment);
        Ok(Box::new(loader.map(|b| Batch::of(b.x, b.y))))
    }

    fn loss(&mut self, batch: &Batch) -> Result<Tensor> {
        let x = batch.inputs[0].to_device(self.device());
        let y = batch.target.to_device(self.device());
        Ok(super::classification_loss(&self.net.forward_t(&x, true)?, &y, self.label_smoothing))
    }

    fn predict(&self, split: Split, abort: &AtomicBool) -> Result<Tensor> {
        self.view_probabilities(self.data.split(split), None, abort)
    }

    /// View `k` takes the `k + 1`-th of the pipeline's flips and rotations for every item
    /// ([`Augmenter::tta_view`]) and draws its other transforms from the task's seed with the
    /// reserved epoch [`TTA_EPOCH`]` + k`, so every snapshot sees the same views and a rerun
    /// repeats them.
    fn predict_augmented(&self, split: Split, view: u64, abort: &AtomicBool) -> Result<Tensor> {
        self.view_probabilities(self.data.split(split), Some(view), abort)
    }

    fn predict_part(
        &self,
        split: Split,
        view: Option<u64>,
        part: Shard,
        abort: &AtomicBool,
    ) -> Result<Option<Part>> {
        let ds = self.data.split(split);
        // the batches of `probabilities`: each row sees the same batch as in the whole split
        let Some(rows) = part.rows_of(ds.len(), self.data.batch_size * 2) else {
            return Ok(None);
        };
        let first = rows.start;
        let probs = self.view_probabilities(&ds.subset(&rows.collect::<Vec<_>>()), view, abort)?;
        Ok(Some(Part { first, items: ds.len(), probs }))
    }

    fn has_augmentation(&self) -> bool {
        self.augmenter.is_some()
    }

    fn set_augment(&mut self, on: bool) {
        self.augment_train = on && self.augmenter.is_some();
    }

    fn metrics(&self, predictions: &Tensor, split: Split) -> Metrics {
        classification_metrics(predictions, &self.labels(split))
    }

    fn eval_split(&self) -> &'static str {
        if self.data.test.is_some() {
            "test"
        } else {
            "valid"
        }
    }

    fn artifacts(&self) -> Result<Vec<(String, Vec<u8>)>> {
        let card = serde_json::to_vec_pretty(&ImageCard::of(&self.data))
            .map_err(|e| Error::Invalid { what: IMAGE_CARD.into(), message: e.to_string() })?;
        let mut files = vec![(IMAGE_CARD.into(), card)];
        if let Some(module) = self.net.script_bytes()? {
            files.push((SCRIPT_MODULE.into(), module));
        }
        Ok(files)
    }

    fn precompute(&self) -> Result<Box<dyn Task>> {
        Ok(Box::new(super::precomputed::HeadOnFeatures::compute(self.clone())?))
    }
}
