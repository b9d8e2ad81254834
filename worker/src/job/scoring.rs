//! Scoring snapshots and ensembles: a snapshot's predictions on the validation and evaluation
//! splits (with TTA when the job has `[tta]`), kept for the ensemble; the members chosen on the
//! validation split and their predictions averaged. Shared by a run and by the evaluation of
//! several runs.

use cyclotron_core::results::{EnsembleResult, SnapshotResult};
use cyclotron_core::spec::{EnsembleSpec, Selection, TtaSpec};
use tch::Tensor;

use crate::checkpoint::SnapshotProbs;
use crate::error::Result;
use crate::learner::Learner;
use crate::task::{Split, Task};

/// One snapshot's predictions, kept in memory for the ensemble.
pub(crate) struct Taken {
    pub result: SnapshotResult,
    pub probs: SnapshotProbs,
    /// The optimiser step of the scored weights, when this process trained them (not after a
    /// resume): the final model is this snapshot when training ended on it.
    pub step: Option<u64>,
}

/// Where a snapshot sits in the job: what its [`SnapshotResult`] says besides the scores.
pub(crate) struct SnapshotAt {
    pub index: usize,
    pub stage: usize,
    pub cycle: u32,
    pub epoch: u32,
    pub run: Option<String>,
    /// The learner's optimiser step at the snapshot, when this process trained it.
    pub step: Option<u64>,
}

/// Score the learner's current weights as snapshot `at`: predictions on the validation and the
/// evaluation split, and with TTA on both when `tta` is set and the task augments (the validation
/// split's TTA is what lets the ensemble choose its members on what it delivers).
pub(crate) fn score_snapshot(l: &Learner, tta: Option<&TtaSpec>, at: SnapshotAt) -> Result<Taken> {
    let valid = l.predict(Split::Valid)?;
    let eval = l.predict(Split::Eval)?;
    let m = l.task.metrics(&eval, Split::Eval);
    let (valid_tta, eval_tta) = match tta {
        Some(t) => (
            crate::tta::predict(l, Split::Valid, t, Some(valid.shallow_clone()))?,
            crate::tta::predict(l, Split::Eval, t, Some(eval.shallow_clone()))?,
        ),
        None => (None, None),
    };
    Ok(Taken {
        result: SnapshotResult {
            index: at.index,
            stage: at.stage,
            cycle: at.cycle,
            epoch: at.epoch,
            loss: m.loss,
            accuracy: m.accuracy,
            perplexity: m.perplexity,
            rmspe: m.rmspe,
            valid: l.task.metrics(&valid, Split::Valid),
            tta: eval_tta.as_ref().map(|p| l.task.metrics(p, Split::Eval)),
            valid_tta: valid_tta.as_ref().map(|p| l.task.metrics(p, Split::Valid)),
            run: at.run,
            so_far: None,
        },
        probs: SnapshotProbs { valid, eval, valid_tta, eval_tta },
        step: at.step,
    })
}

/// The ensemble of snapshots `members` (indices into `taken`): their predictions averaged by the
/// task, on the evaluation split, the validation split and (when every member has them) with TTA.
pub(crate) fn average_of(
    task: &dyn Task,
    taken: &[Taken],
    members: Vec<usize>,
    selection: &str,
) -> EnsembleResult {
    let pick = |f: &dyn Fn(&SnapshotProbs) -> &Tensor| -> Tensor {
        task.average(&members.iter().map(|&i| f(&taken[i].probs)).collect::<Vec<_>>())
    };
    // the members' TTA predictions on a split, averaged, when every member has them
    let with_tta = |f: &dyn Fn(&SnapshotProbs) -> Option<&Tensor>| -> Option<Tensor> {
        members
            .iter()
            .map(|&i| f(&taken[i].probs))
            .collect::<Option<Vec<_>>>()
            .filter(|v| !v.is_empty())
            .map(|v| task.average(&v))
    };
    let eval = task.metrics(&pick(&|p| &p.eval), Split::Eval);
    let valid = task.metrics(&pick(&|p| &p.valid), Split::Valid);
    EnsembleResult {
        selection: selection.into(),
        loss: eval.loss,
        accuracy: eval.accuracy,
        perplexity: eval.perplexity,
        rmspe: eval.rmspe,
        valid,
        tta: with_tta(&|p| p.eval_tta.as_ref()).map(|t| task.metrics(&t, Split::Eval)),
        valid_tta: with_tta(&|p| p.valid_tta.as_ref()).map(|t| task.metrics(&t, Split::Valid)),
        members,
    }
}

/// The `[ensemble]` of `taken`: members chosen on the validation split, then averaged; `None`
/// when the ensemble is off or there is no snapshot. With TTA the members are chosen on their
/// TTA predictions of the validation split, which is what the job (and `predict`) delivers;
/// snapshots restored from a checkpoint written before those were kept make it choose on the
/// plain predictions, as it did then.
pub(crate) fn ensemble(task: &dyn Task, taken: &[Taken], spec: &EnsembleSpec) -> Option<EnsembleResult> {
    if spec.members == 0 || taken.is_empty() {
        return None;
    }
    let on_tta = taken.iter().all(|t| t.probs.valid_tta.is_some());
    let valid_loss = |members: &[usize]| {
        let probs: Vec<&Tensor> = members
            .iter()
            .map(|&i| match &taken[i].probs.valid_tta {
                Some(tta) if on_tta => tta,
                _ => &taken[i].probs.valid,
            })
            .collect();
        task.metrics(&task.average(&probs), Split::Valid).loss
    };
    let members = crate::ensemble::select(spec.selection, taken.len(), spec.members, &valid_loss);
    let selection = match spec.selection {
        Selection::Greedy if on_tta => "greedy on TTA".to_string(),
        s => format!("{s:?}").to_lowercase(),
    };
    Some(average_of(task, taken, members, &selection))
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use cyclotron_core::spec::Transform;

    use super::*;
    use crate::data::Augmenter;

    /// A tiny image task of 30 items in 3 classes (label `i % 3`), trained on and validated on the
    /// same items, with flips as its augmentation.
    fn learner() -> Learner {
        let flips = Arc::new(Augmenter::new(vec![Transform::FlipH]));
        crate::test_support::tiny_image_learner(30, 3, Some(flips))
    }

    /// Probabilities for the 30 items: `sure` on the true class (`i % 3`), the rest shared.
    fn probs(sure: f64) -> Tensor {
        let rows: Vec<f32> = (0..30)
            .flat_map(|i| (0..3).map(move |c| if c == i % 3 { sure } else { (1.0 - sure) / 2.0 }))
            .map(|p| p as f32)
            .collect();
        Tensor::from_slice(&rows).view([30, 3])
    }

    fn taken(index: usize, plain: f64, tta: Option<f64>) -> Taken {
        let at = SnapshotAt { index, stage: 0, cycle: index as u32, epoch: 1, run: None, step: None };
        let l = learner();
        let mut t = score_snapshot(&l, None, at).unwrap();
        t.probs = SnapshotProbs {
            valid: probs(plain),
            eval: probs(plain),
            valid_tta: tta.map(probs),
            eval_tta: tta.map(probs),
        };
        t
    }

    #[test]
    fn a_snapshot_with_tta_keeps_its_validation_tta_too() {
        let l = learner();
        let at = SnapshotAt { index: 0, stage: 0, cycle: 0, epoch: 1, run: None, step: None };
        let t = score_snapshot(&l, Some(&TtaSpec { n: 1, beta: None }), at).unwrap();
        let valid_tta = t.probs.valid_tta.as_ref().expect("validation TTA");
        let expect =
            crate::tta::predict(&l, Split::Valid, &TtaSpec { n: 1, beta: None }, None).unwrap().unwrap();
        assert!(valid_tta.equal(&expect));
        assert!(!valid_tta.allclose(&t.probs.valid, 1e-6, 1e-6, false), "the flip made no difference");
        assert_eq!(t.result.valid_tta, Some(l.task.metrics(valid_tta, Split::Valid)));
        let none = score_snapshot(
            &l,
            None,
            SnapshotAt { index: 1, stage: 0, cycle: 1, epoch: 2, run: None, step: None },
        )
        .unwrap();
        assert!(none.probs.valid_tta.is_none() && none.result.valid_tta.is_none());
    }

    #[test]
    fn members_are_chosen_on_what_the_ensemble_delivers() {
        let l = learner();
        let spec = EnsembleSpec { members: 1, selection: Selection::Greedy, runs: 1 };
        // snapshot 0 is the better plain; snapshot 1 the better with TTA
        let both = [taken(0, 0.9, Some(0.5)), taken(1, 0.6, Some(0.95))];
        let e = ensemble(l.task.as_ref(), &both, &spec).unwrap();
        assert_eq!((e.members.clone(), e.selection.as_str()), (vec![1], "greedy on TTA"));
        let valid_tta = e.valid_tta.expect("the ensemble's validation TTA");
        assert!(valid_tta.loss < e.valid.loss, "{valid_tta:?} vs {:?}", e.valid);
        // a snapshot restored from a checkpoint that kept no validation TTA: chosen on the plain ones
        let old = [taken(0, 0.9, Some(0.5)), taken(1, 0.6, None)];
        let e = ensemble(l.task.as_ref(), &old, &spec).unwrap();
        assert_eq!((e.members, e.selection.as_str()), (vec![0], "greedy"));
        // without TTA at all, as before
        let plain = [taken(0, 0.9, None), taken(1, 0.6, None)];
        assert_eq!(ensemble(l.task.as_ref(), &plain, &spec).unwrap().members, vec![0]);
    }
}
