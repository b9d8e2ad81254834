//! Precompute (fastai 0.7's `precompute=True`): with the body frozen, its output on a training
//! item never changes, so run the body once over the training split — in evaluation mode, without
//! augmentation — keep the activations, and train the head on them: an epoch then costs a pass of
//! the head (a matmul for a linear head) instead of the whole network.
//!
//! Batches over the cache follow the same seeded per-epoch order as the loader
//! (`epoch_order(len, seed, epoch)`, last partial batch dropped), so a precomputed stage takes as
//! many steps as a normal one. Frozen BatchNorms are in evaluation mode in the full forward pass
//! too (see `models::layers`), so a head step on the cache has the same gradients as a step
//! through the frozen network.

use tch::Tensor;

use crate::data::{epoch_order, Batch};
use crate::error::{Error, Result};
use crate::learner::Learner;
use crate::models::Net;
use crate::optim::Optimizer;

/// The frozen body's activations on the training split, in the split's order, on the model's device.
pub struct Precomputed {
    pub features: Tensor,
    pub labels: Tensor,
}

impl std::fmt::Debug for Precomputed {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Precomputed").field("features", &self.features.size()).finish()
    }
}

impl Precomputed {
    /// Run `l`'s body over its training split once (no augmentation, no gradients).
    pub fn compute(l: &Learner) -> Result<Precomputed> {
        if !l.net.has_split() {
            return Err(Error::Invalid {
                what: "precompute".into(),
                message: format!("{} has no body/head split", l.net.arch),
            });
        }
        let _guard = tch::no_grad_guard();
        let mut parts = vec![];
        for batch in l.loader_with(&l.data.train, false, 0, l.data.batch_size * 2, None) {
            parts.push(l.net.forward_body(&batch.x.to_device(l.device), false));
        }
        if parts.is_empty() {
            return Err(Error::Invalid {
                what: "precompute".into(),
                message: "the training split is empty".into(),
            });
        }
        let features = Tensor::cat(&parts, 0);
        Ok(Precomputed { features, labels: crate::learner::labels(&l.data.train).to_device(l.device) })
    }

    pub fn len(&self) -> usize {
        self.features.size()[0] as usize
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// One epoch of shuffled full batches of cached features, owning their tensors.
    pub fn batches(&self, seed: u64, epoch: u64, batch_size: usize) -> impl Iterator<Item = Batch> + 'static {
        let order: Vec<i64> = epoch_order(self.len(), seed, epoch).into_iter().map(|i| i as i64).collect();
        let (features, labels) = (self.features.shallow_clone(), self.labels.shallow_clone());
        let batch_size = batch_size.max(1);
        let n = order.len() / batch_size;
        (0..n).map(move |b| {
            let idx =
                Tensor::from_slice(&order[b * batch_size..(b + 1) * batch_size]).to_device(features.device());
            Batch { x: features.index_select(0, &idx), y: labels.index_select(0, &idx) }
        })
    }
}

/// A training step of the head alone on cached features: the counterpart of `learner::train_step`.
pub fn train_step_head(net: &Net, opt: &mut Optimizer, features: &Tensor, y: &Tensor, lrs: &[f64]) -> f64 {
    let loss = net.forward_head(features, true).cross_entropy_for_logits(y);
    opt.zero_grad();
    loss.backward();
    opt.step(lrs);
    loss.double_value(&[])
}

/// Head-training throughput of `arch` at `side`×`side` inputs, for `make bench`: samples/s of a
/// step through the frozen network (`full`) and of a step on cached body features (`cached`), and
/// samples/s of the one-off body pass that fills the cache (`precompute`).
#[derive(Debug, Clone, serde::Serialize)]
pub struct HeadBench {
    pub model: String,
    pub side: i64,
    pub batch_size: i64,
    pub threads: i32,
    pub full_samples_per_s: f64,
    pub cached_samples_per_s: f64,
    pub precompute_samples_per_s: f64,
}

/// Time `steps` head-training steps both ways on random data (after one warm-up step each).
pub fn head_throughput(
    arch: &str,
    side: i64,
    batch_size: i64,
    threads: i32,
    steps: usize,
) -> Result<HeadBench> {
    use std::time::Instant;
    tch::set_num_threads(threads);
    tch::manual_seed(0);
    let net = crate::models::build(arch, 32, 3, 10, tch::Device::Cpu)?;
    net.freeze_to(crate::models::GROUPS - 1);
    let spec = cyclotron_core::spec::OptimizerSpec::default();
    let mut opt = Optimizer::new(&spec, net.parameters());
    let opts = (tch::Kind::Float, tch::Device::Cpu);
    let x = Tensor::randn([batch_size, 3, side, side], opts);
    let y = Tensor::randint(10, [batch_size], (tch::Kind::Int64, tch::Device::Cpu));
    let lrs = [0.01; crate::models::GROUPS];
    let rate = |t: Instant| (steps as f64 * batch_size as f64) / t.elapsed().as_secs_f64();
    crate::learner::train_step(&net, &mut opt, &x, &y, &lrs);
    let t = Instant::now();
    for _ in 0..steps {
        crate::learner::train_step(&net, &mut opt, &x, &y, &lrs);
    }
    let full = rate(t);
    let t = Instant::now();
    let features = tch::no_grad(|| {
        let mut f = net.forward_body(&x, false);
        for _ in 1..steps {
            f = net.forward_body(&x, false);
        }
        f
    });
    let precompute = rate(t);
    train_step_head(&net, &mut opt, &features, &y, &lrs);
    let t = Instant::now();
    for _ in 0..steps {
        train_step_head(&net, &mut opt, &features, &y, &lrs);
    }
    Ok(HeadBench {
        model: arch.into(),
        side,
        batch_size,
        threads,
        full_samples_per_s: full,
        cached_samples_per_s: rate(t),
        precompute_samples_per_s: precompute,
    })
}

#[cfg(test)]
mod tests {
    use cyclotron_core::spec::OptimizerSpec;

    use tch::{Device, Kind};

    use super::*;
    use crate::data::{Dataset, Normalize, SplitMix64};
    use crate::learner::DataBundle;
    use crate::models;

    fn learner(arch: &str) -> Learner {
        tch::manual_seed(0);
        let mut rng = SplitMix64::new(5);
        let images: Vec<u8> = (0..48 * 3 * 32 * 32).map(|_| rng.below(256) as u8).collect();
        let labels: Vec<i64> = (0..48).map(|i| i % 4).collect();
        let classes = (0..4).map(|c| c.to_string()).collect();
        let ds = Dataset::new(images, (3, 32, 32), labels, classes);
        let net = models::build(arch, 4, 3, 4, Device::Cpu).unwrap();
        let data = DataBundle {
            norm: Normalize::from_stats(&ds),
            train: ds.clone(),
            valid: ds,
            batch_size: 16,
            prefetch: 2,
        };
        Learner::new(net, &OptimizerSpec::default(), data, Device::Cpu, 1)
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
            let l = learner(arch);
            l.net.freeze_to(2);
            let cache = Precomputed::compute(&l).unwrap();
            assert_eq!(cache.len(), 48);
            let batch = cache.batches(1, 0, 16).next().unwrap();
            // the same items through the whole network, in training mode
            let order: Vec<usize> = epoch_order(48, 1, 0)[..16].to_vec();
            let full = l.loader_with(&l.data.train.subset(&order), false, 0, 16, None).next().unwrap();
            assert!(full.y.equal(&batch.y));
            let zero = || l.net.parameters().into_iter().for_each(|(_, _, mut t)| t.zero_grad());
            zero();
            l.net.forward_t(&full.x, true).cross_entropy_for_logits(&full.y).backward();
            let want = head_grads(&l.net);
            zero();
            l.net.forward_head(&batch.x, true).cross_entropy_for_logits(&batch.y).backward();
            for ((n, a), (_, b)) in want.iter().zip(head_grads(&l.net)) {
                assert!(a.allclose(&b, 1e-4, 1e-5, false), "{arch}: gradient of {n} differs");
            }
        }
    }

    #[test]
    fn frozen_batchnorm_keeps_its_running_statistics() {
        let l = learner("resnet18");
        let stat = || l.net.vs.variables()["layer1.0.bn1.running_mean"].copy();
        let x = Tensor::randn([4, 3, 32, 32], (Kind::Float, Device::Cpu));
        l.net.freeze_to(2);
        let before = stat();
        let _ = l.net.forward_t(&x, true);
        assert!(stat().equal(&before), "a frozen BatchNorm updated its running mean");
        l.net.freeze_to(0);
        let _ = l.net.forward_t(&x, true);
        assert!(!stat().equal(&before), "an unfrozen BatchNorm did not update");
    }
}
