//! Scoring snapshots and ensembles: a snapshot's predictions on the validation and evaluation
//! splits (with TTA when the job has `[tta]`), kept for the ensemble; the members chosen on the
//! validation split and their predictions averaged. Shared by a run and by the evaluation of
//! several runs.

use cyclotron_core::results::{EnsembleResult, SnapshotResult};
use cyclotron_core::spec::{EnsembleSpec, TtaSpec};
use tch::Tensor;

use crate::error::Result;
use crate::learner::Learner;
use crate::task::{Split, Task};

/// One snapshot's predictions, kept in memory for the ensemble.
pub(crate) struct Taken {
    pub result: SnapshotResult,
    pub valid_probs: Tensor,
    pub eval_probs: Tensor,
    /// With test-time augmentation, when the job has `[tta]`.
    pub eval_tta: Option<Tensor>,
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
/// evaluation split, and with TTA when `tta` is set and the task augments.
pub(crate) fn score_snapshot(l: &Learner, tta: Option<&TtaSpec>, at: SnapshotAt) -> Result<Taken> {
    let valid_probs = l.predict(Split::Valid)?;
    let eval_probs = l.predict(Split::Eval)?;
    let m = l.task.metrics(&eval_probs, Split::Eval);
    let eval_tta = match tta {
        Some(t) => crate::tta::predict(l, Split::Eval, t, Some(eval_probs.shallow_clone()))?,
        None => None,
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
            valid: l.task.metrics(&valid_probs, Split::Valid),
            tta: eval_tta.as_ref().map(|p| l.task.metrics(p, Split::Eval)),
            run: at.run,
            so_far: None,
        },
        valid_probs,
        eval_probs,
        eval_tta,
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
    let pick = |f: &dyn Fn(&Taken) -> &Tensor| -> Tensor {
        task.average(&members.iter().map(|&i| f(&taken[i])).collect::<Vec<_>>())
    };
    let eval = task.metrics(&pick(&|t| &t.eval_probs), Split::Eval);
    let valid = task.metrics(&pick(&|t| &t.valid_probs), Split::Valid);
    let tta = members
        .iter()
        .map(|&i| taken[i].eval_tta.as_ref())
        .collect::<Option<Vec<_>>>()
        .filter(|v| !v.is_empty())
        .map(|v| task.metrics(&task.average(&v), Split::Eval));
    EnsembleResult {
        members,
        selection: selection.into(),
        loss: eval.loss,
        accuracy: eval.accuracy,
        perplexity: eval.perplexity,
        rmspe: eval.rmspe,
        valid,
        tta,
    }
}

/// The `[ensemble]` of `taken`: members chosen on the validation split, then averaged; `None`
/// when the ensemble is off or there is no snapshot.
pub(crate) fn ensemble(task: &dyn Task, taken: &[Taken], spec: &EnsembleSpec) -> Option<EnsembleResult> {
    if spec.members == 0 || taken.is_empty() {
        return None;
    }
    let valid_loss = |members: &[usize]| {
        let probs: Vec<&Tensor> = members.iter().map(|&i| &taken[i].valid_probs).collect();
        task.metrics(&task.average(&probs), Split::Valid).loss
    };
    let members = crate::ensemble::select(spec.selection, taken.len(), spec.members, &valid_loss);
    let selection = format!("{:?}", spec.selection).to_lowercase();
    Some(average_of(task, taken, members, &selection))
}
