//! Constructors the unit tests of several modules share (compiled for tests only).

use std::sync::Arc;

use cyclotron_core::spec::OptimizerSpec;
use tch::Device;

use crate::data::{Augmenter, Dataset, SplitMix64};
use crate::learner::Learner;
use crate::models;
use crate::task::image::{ImageClassification, ImageData};

/// A tiny image task: `items` random 8×8 grey images (from `SplitMix64(rng_seed)`) in 3 classes
/// (label `i % 3`), trained on and validated on the same items in batches of 8, by a width-4
/// small_resnet (torch seed 0), with `augmenter` as its training augmentation.
pub(crate) fn tiny_image_learner(items: usize, rng_seed: u64, augmenter: Option<Arc<Augmenter>>) -> Learner {
    tch::manual_seed(0);
    let mut rng = SplitMix64::new(rng_seed);
    let images: Vec<u8> = (0..items * 64).map(|_| rng.below(256) as u8).collect();
    let labels: Vec<i64> = (0..items as i64).map(|i| i % 3).collect();
    let ds = Dataset::new(images, (1, 8, 8), labels, vec!["a".into(), "b".into(), "c".into()]);
    let net = models::build("small_resnet", 4, 1, 3, Device::Cpu).unwrap();
    let task = ImageClassification::new(net, ImageData::new(ds.clone(), ds, 8, 2), 1, augmenter);
    Learner::new(Box::new(task), &OptimizerSpec::default(), 1)
}
