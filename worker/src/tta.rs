//! Test-time augmentation: predict the original view of every item and `n` augmented views
//! (the training transforms of `[data.augment]`), then combine the softmax outputs:
//!
//! - `beta = Some(β)` (fastai v2, β = 0.25): `lerp(mean of augmented, original, β)`
//!   = `(1 − β)·aug_mean + β·original`;
//! - `beta = None` (fastai 0.7): the plain mean of the original and the `n` augmented views.
//!
//! View `k` takes the `(k + 1)`-th of the training pipeline's flips and right-angle rotations for
//! every item ([`crate::data::Augmenter::tta_view`]: with flips only, view 0 is the mirror image,
//! so `n = 1` is the classic flip TTA) and draws its other transforms from the task's seed with the
//! reserved epoch [`crate::data::augment::TTA_EPOCH`]` + k`, so every snapshot sees the same views
//! and a rerun repeats them.
//! With `n = 0` the result is exactly the plain prediction.

use cyclotron_core::spec::TtaSpec;
use tch::Tensor;

use crate::error::Result;
use crate::learner::Learner;
use crate::task::Split;

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

/// TTA predictions of `l`'s model on `split` ([N, classes] on the CPU, in the split's order), or
/// `None` when its task has no augmentation. `original` may pass the plain prediction when the
/// caller has it already.
pub fn predict(
    l: &Learner,
    split: Split,
    spec: &TtaSpec,
    original: Option<Tensor>,
) -> Result<Option<Tensor>> {
    if !l.task.has_augmentation() {
        return Ok(None);
    }
    let views = (0..spec.n as u64).map(|k| l.predict_augmented(split, k)).collect::<Result<Vec<_>>>()?;
    let original = match original {
        Some(p) => p,
        None => l.predict(split)?,
    };
    Ok(Some(combine(&original, &views, spec.beta)))
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use cyclotron_core::spec::Transform;
    use tch::Kind;

    use super::*;
    use crate::data::Augmenter;

    fn aug() -> Arc<Augmenter> {
        Arc::new(Augmenter::new(vec![Transform::FlipH, Transform::CropPad { pad: 2 }]))
    }

    fn learner_with(augmenter: Option<Arc<Augmenter>>) -> Learner {
        crate::test_support::tiny_image_learner(40, 5, augmenter)
    }

    fn learner() -> Learner {
        learner_with(Some(aug()))
    }

    #[test]
    fn zero_views_is_the_plain_prediction() {
        let l = learner();
        let plain = l.predict(Split::Valid).unwrap();
        for beta in [None, Some(0.25)] {
            let tta = predict(&l, Split::Valid, &TtaSpec { n: 0, beta }, None).unwrap().unwrap();
            assert!(tta.equal(&plain), "beta {beta:?}");
        }
        let plain_task = learner_with(None);
        assert!(predict(&plain_task, Split::Valid, &TtaSpec { n: 2, beta: None }, None).unwrap().is_none());
    }

    #[test]
    fn views_change_the_prediction_and_rows_stay_distributions() {
        let l = learner();
        let plain = l.predict(Split::Valid).unwrap();
        let spec = TtaSpec { n: 3, beta: Some(0.25) };
        let tta = predict(&l, Split::Valid, &spec, None).unwrap().unwrap();
        assert_eq!(tta.size(), plain.size());
        assert!(!tta.allclose(&plain, 1e-6, 1e-6, false), "augmented views made no difference");
        let sums = tta.sum_dim_intlist(-1, false, Kind::Float);
        assert!(sums.allclose(&Tensor::ones_like(&sums), 1e-5, 1e-5, false));
        let again = predict(&l, Split::Valid, &spec, Some(plain)).unwrap().unwrap();
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
