//! Precompute (fastai 0.7's `precompute=True`): with the body frozen, its output on a training
//! item never changes, so run the body once over the training split — in evaluation mode, without
//! augmentation — keep the activations, and train the head on them: an epoch then costs a pass of
//! the head (a matmul for a linear head) instead of the whole network.
//!
//! Batches over the cache follow the same seeded per-epoch order as the image loader
//! ([`rank_positions`]), so a precomputed stage takes as many steps as a normal one. Frozen
//! BatchNorms are in evaluation mode in the full forward pass too (see `models::layers`), so a
//! head step on the cache has the same gradients as a step through the frozen network.
//! Everything but training (predictions, metrics, TTA) goes through the whole image model.

use std::sync::atomic::AtomicBool;

use cyclotron_core::results::Metrics;
use tch::Tensor;

use super::image::{labels, ImageClassification};
use super::{Batch, Batches, Part, Shard, Split, Task};
use crate::data::rank_positions;
use crate::error::{Error, Result};
use crate::models::Model;

/// The head of an image classifier trained on its frozen body's cached activations.
pub struct HeadOnFeatures {
    image: ImageClassification,
    /// Body activations of the training split, in the split's order, on the model's device.
    features: Tensor,
    labels: Tensor,
}

impl std::fmt::Debug for HeadOnFeatures {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("HeadOnFeatures").field("features", &self.features.size()).finish()
    }
}

impl HeadOnFeatures {
    /// Run `image`'s body over its training split once (no augmentation, no gradients).
    pub fn compute(image: ImageClassification) -> Result<HeadOnFeatures> {
        let _guard = tch::no_grad_guard();
        let data = image.data();
        let device = image.net().vs.device();
        let mut parts = vec![];
        for batch in image.loader_with(&data.train, false, 0, data.batch_size * 2, None) {
            parts.push(image.net().forward_body(&batch.x.to_device(device), false)?);
        }
        if parts.is_empty() {
            return Err(Error::Invalid {
                what: "precompute".into(),
                message: "the training split is empty".into(),
            });
        }
        let features = Tensor::cat(&parts, 0);
        let labels = labels(&data.train).to_device(device);
        Ok(HeadOnFeatures { image, features, labels })
    }

    /// Cached items.
    pub fn len(&self) -> usize {
        self.features.size()[0] as usize
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

impl Task for HeadOnFeatures {
    fn model(&self) -> &dyn Model {
        self.image.model()
    }

    fn steps_per_epoch(&self, world: usize) -> Result<u64> {
        self.image.steps_per_epoch(world)
    }

    fn train_batches(&self, epoch: u64, shard: Shard) -> Result<Batches> {
        let batch = self.image.data().batch_size.max(1);
        let positions: Vec<i64> =
            rank_positions(self.len(), self.image.seed(), epoch, shard.rank, shard.world, batch)
                .into_iter()
                .map(|i| i as i64)
                .collect();
        let (features, labels) = (self.features.shallow_clone(), self.labels.shallow_clone());
        let n = positions.len() / batch;
        Ok(Box::new((0..n).map(move |b| {
            let idx = Tensor::from_slice(&positions[b * batch..(b + 1) * batch]).to_device(features.device());
            Batch::of(features.index_select(0, &idx), labels.index_select(0, &idx))
        })))
    }

    fn loss(&mut self, batch: &Batch) -> Result<Tensor> {
        let logits = self.image.net().forward_head(&batch.inputs[0], true)?;
        Ok(super::classification_loss(&logits, &batch.target, self.image.label_smoothing()))
    }

    fn predict(&self, split: Split, abort: &AtomicBool) -> Result<Tensor> {
        self.image.predict(split, abort)
    }

    fn predict_part(
        &self,
        split: Split,
        view: Option<u64>,
        part: Shard,
        abort: &AtomicBool,
    ) -> Result<Option<Part>> {
        self.image.predict_part(split, view, part, abort)
    }

    fn has_augmentation(&self) -> bool {
        self.image.has_augmentation()
    }

    fn predict_augmented(&self, split: Split, view: u64, abort: &AtomicBool) -> Result<Tensor> {
        self.image.predict_augmented(split, view, abort)
    }

    fn metrics(&self, predictions: &Tensor, split: Split) -> Metrics {
        self.image.metrics(predictions, split)
    }

    fn eval_split(&self) -> &'static str {
        self.image.eval_split()
    }

    /// The whole image model's: a snapshot of a head stage is the whole model.
    fn artifacts(&self) -> Result<Vec<(String, Vec<u8>)>> {
        self.image.artifacts()
    }

    /// Already on the cache: the same cache, shared.
    fn precompute(&self) -> Result<Box<dyn Task>> {
        Ok(Box::new(HeadOnFeatures {
            image: self.image.clone(),
            features: self.features.shallow_clone(),
            labels: self.labels.shallow_clone(),
        }))
    }
}

#[cfg(test)]
mod tests {
    use tch::{Device, Kind};

    use super::*;
    use crate::data::{Dataset, SplitMix64};
    use crate::models::{self, Net};
    use crate::task::image::ImageData;

    fn image_task(arch: &str) -> ImageClassification {
        tch::manual_seed(0);
        let mut rng = SplitMix64::new(5);
        let images: Vec<u8> = (0..48 * 3 * 32 * 32).map(|_| rng.below(256) as u8).collect();
        let labels: Vec<i64> = (0..48).map(|i| i % 4).collect();
        let classes = (0..4).map(|c| c.to_string()).collect();
        let ds = Dataset::new(images, (3, 32, 32), labels, classes);
        let net = models::build(arch, 4, 3, 4, Device::Cpu).unwrap();
        ImageClassification::new(net, ImageData::new(ds.clone(), ds, 16, 2), 1, None)
    }

    fn head_grads(net: &Net) -> Vec<(String, Tensor)> {
        net.parameters()
            .into_iter()
            .filter(|(_, g, _)| *g == 2)
            .map(|(n, _, t)| (n, t.grad().copy()))
            .collect()
    }

    #[test]
    fn cached_features_give_the_head_gradients_of_the_full_frozen_pass() {
        for arch in ["small_resnet", "resnet18"] {
            let mut image = image_task(arch);
            image.model().freeze_to(2);
            let mut head = HeadOnFeatures::compute(image.clone()).unwrap();
            assert_eq!(head.len(), 48);
            // step 0 of epoch 0 both ways: the same items, through the whole network or the cache
            let full = image.train_batches(0, Shard::ALONE).unwrap().next().unwrap();
            let cached = head.train_batches(0, Shard::ALONE).unwrap().next().unwrap();
            assert!(full.target.equal(&cached.target));
            assert_eq!(head.steps_per_epoch(1).unwrap(), 3);
            let zero = |image: &ImageClassification| {
                image.net().parameters().into_iter().for_each(|(_, _, mut t)| t.zero_grad())
            };
            zero(&image);
            image.loss(&full).unwrap().backward();
            let want = head_grads(image.net());
            zero(&image);
            head.loss(&cached).unwrap().backward();
            for ((n, a), (_, b)) in want.iter().zip(head_grads(image.net())) {
                assert!(a.allclose(&b, 1e-4, 1e-5, false), "{arch}: gradient of {n} differs");
            }
        }
    }

    #[test]
    fn frozen_batchnorm_keeps_its_running_statistics() {
        let image = image_task("resnet18");
        let net = image.net();
        let stat = || net.vs.variables()["layer1.0.bn1.running_mean"].copy();
        let x = Tensor::randn([4, 3, 32, 32], (Kind::Float, Device::Cpu));
        net.freeze_to(2);
        let before = stat();
        let _ = net.forward_t(&x, true).unwrap();
        assert!(stat().equal(&before), "a frozen BatchNorm updated its running mean");
        net.freeze_to(0);
        let _ = net.forward_t(&x, true).unwrap();
        assert!(!stat().equal(&before), "an unfrozen BatchNorm did not update");
    }
}
