//! Test-time augmentation: predict the original view of every item and `n` augmented views
//! (the training transforms of `[data.augment]`), then combine the softmax outputs:
//!
//! - `beta = Some(β)` (fastai v2, β = 0.25): `lerp(mean of augmented, original, β)`
//!   = `(1 − β)·aug_mean + β·original`;
//! - `beta = None` (fastai 0.7): the plain mean of the original and the `n` augmented views.
//!
//! View `k` draws its augmentation from the learner's seed with the reserved epoch
//! [`TTA_EPOCH`]` + k`, so every snapshot sees the same views and a rerun repeats them.
//! With `n = 0` the result is exactly the plain prediction.

use std::sync::Arc;

use cyclotron_core::spec::TtaSpec;
use tch::{Device, Kind, Tensor};

use crate::data::{Augmenter, Dataset};
use crate::error::{Error, Result};
use crate::learner::Learner;

/// The augmentation "epoch" of TTA view 0; training epochs never come near it.
pub const TTA_EPOCH: u64 = 1 << 62;

/// Combine the original view's probabilities with the augmented views' (see the module docs).
pub fn combine(original: &Tensor, views: &[Tensor], beta: Option<f64>) -> Tensor {
    if views.is_empty() {
        return original.shallow_clone();
    }
    match beta {
        Some(b) => {
            let refs: Vec<&Tensor> = views.iter().collect();
            let aug_mean = crate::ensemble::average(&refs);
            aug_mean.lerp(original, b)
        }
        None => {
            let mut all: Vec<&Tensor> = vec![original];
            all.extend(views.iter());
            crate::ensemble::average(&all)
        }
    }
}

/// Softmax probabilities of `l`'s model on `ds` under augmentation `aug` drawn as view `view`.
fn predict_view(l: &Learner, ds: &Dataset, aug: &Arc<Augmenter>, view: u64) -> Result<Tensor> {
    let _guard = tch::no_grad_guard();
    let mut parts = vec![];
    for batch in l.loader_with(ds, false, TTA_EPOCH + view, l.data.batch_size * 2, Some(aug)) {
        if l.abort.load(std::sync::atomic::Ordering::Relaxed) {
            return Err(Error::Cancelled);
        }
        let logits = l.net.forward_t(&batch.x.to_device(l.device), false);
        parts.push(logits.softmax(-1, Kind::Float).to_device(Device::Cpu));
    }
    if parts.is_empty() {
        return Err(Error::Invalid { what: "tta".into(), message: "the split is empty".into() });
    }
    Ok(Tensor::cat(&parts, 0))
}

/// TTA probabilities of `l`'s model on `ds`: [N, classes] on the CPU, in the view's order.
/// `original` may pass the plain prediction when the caller has it already.
pub fn predict(
    l: &Learner,
    ds: &Dataset,
    aug: &Arc<Augmenter>,
    spec: &TtaSpec,
    original: Option<Tensor>,
) -> Result<Tensor> {
    let original = match original {
        Some(p) => p,
        None => l.predict(ds)?,
    };
    let views = (0..spec.n as u64).map(|k| predict_view(l, ds, aug, k)).collect::<Result<Vec<_>>>()?;
    Ok(combine(&original, &views, spec.beta))
}

#[cfg(test)]
mod tests {
    use cyclotron_core::spec::{OptimizerSpec, Transform};

    use super::*;
    use crate::data::Normalize;
    use crate::learner::DataBundle;
    use crate::models;

    fn learner() -> Learner {
        tch::manual_seed(0);
        let mut rng = crate::data::SplitMix64::new(5);
        let images: Vec<u8> = (0..40 * 64).map(|_| rng.below(256) as u8).collect();
        let labels: Vec<i64> = (0..40).map(|i| i % 3).collect();
        let ds = Dataset::new(images, (1, 8, 8), labels, vec!["a".into(), "b".into(), "c".into()]);
        let net = models::build("small_resnet", 4, 1, 3, Device::Cpu).unwrap();
        let data = DataBundle {
            norm: Normalize::from_stats(&ds),
            train: ds.clone(),
            valid: ds,
            batch_size: 8,
            prefetch: 2,
        };
        Learner::new(net, &OptimizerSpec::default(), data, Device::Cpu, 1)
    }

    fn aug() -> Arc<Augmenter> {
        Arc::new(Augmenter::new(vec![Transform::FlipH, Transform::CropPad { pad: 2 }]))
    }

    #[test]
    fn zero_views_is_the_plain_prediction() {
        let l = learner();
        let plain = l.predict(&l.data.valid).unwrap();
        for beta in [None, Some(0.25)] {
            let tta = predict(&l, &l.data.valid, &aug(), &TtaSpec { n: 0, beta }, None).unwrap();
            assert!(tta.equal(&plain), "beta {beta:?}");
        }
    }

    #[test]
    fn views_change_the_prediction_and_rows_stay_distributions() {
        let l = learner();
        let plain = l.predict(&l.data.valid).unwrap();
        let spec = TtaSpec { n: 3, beta: Some(0.25) };
        let tta = predict(&l, &l.data.valid, &aug(), &spec, None).unwrap();
        assert_eq!(tta.size(), plain.size());
        assert!(!tta.allclose(&plain, 1e-6, 1e-6, false), "augmented views made no difference");
        let sums = tta.sum_dim_intlist(-1, false, Kind::Float);
        assert!(sums.allclose(&Tensor::ones_like(&sums), 1e-5, 1e-5, false));
        let again = predict(&l, &l.data.valid, &aug(), &spec, Some(plain)).unwrap();
        assert!(again.equal(&tta), "TTA is not deterministic");
    }

    #[test]
    fn combine_lerps_or_averages() {
        let orig = Tensor::from_slice(&[1.0f32, 0.0]);
        let views = [Tensor::from_slice(&[0.0f32, 1.0]), Tensor::from_slice(&[0.5f32, 0.5])];
        let lerp = combine(&orig, &views, Some(0.25));
        // aug mean (0.25, 0.75); 0.75·aug + 0.25·orig
        assert!(lerp.allclose(&Tensor::from_slice(&[0.4375f32, 0.5625]), 1e-6, 1e-6, false));
        let mean = combine(&orig, &views, None);
        assert!(mean.allclose(&Tensor::from_slice(&[0.5f32, 0.5]), 1e-6, 1e-6, false));
    }
}
