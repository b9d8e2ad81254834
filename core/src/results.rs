//! What a training job reports: the schema of `results.json` and of the history that
//! `training.png` draws. Produced by the worker, read by the CLI, the coordinator and plots.

use serde::{Deserialize, Serialize};

use crate::lr_range::LrFindReport;

/// A model's scores on one split: its loss, and the task's own metric — accuracy for a
/// classifier, perplexity for a language model, RMSPE for a regression.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct Metrics {
    pub loss: f64,
    /// Share of items whose most probable class is the right one (0-1); NaN, and absent from
    /// JSON, for tasks without classes.
    #[serde(default = "nan", skip_serializing_if = "is_nan")]
    pub accuracy: f64,
    /// `exp(loss)`, the perplexity of a language model.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub perplexity: Option<f64>,
    /// Root mean square percentage error of a regression, on the target's own scale.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rmspe: Option<f64>,
}

fn nan() -> f64 {
    f64::NAN
}

fn is_nan(v: &f64) -> bool {
    v.is_nan()
}

impl Metrics {
    /// A classifier's log-loss and accuracy.
    pub fn classification(loss: f64, accuracy: f64) -> Metrics {
        Metrics { loss, accuracy, perplexity: None, rmspe: None }
    }

    /// A language model's mean negative log-likelihood per token, and its perplexity.
    pub fn language_model(loss: f64) -> Metrics {
        Metrics { loss, accuracy: f64::NAN, perplexity: Some(loss.exp()), rmspe: None }
    }

    /// A regression's loss and RMSPE.
    pub fn regression(loss: f64, rmspe: f64) -> Metrics {
        Metrics { loss, accuracy: f64::NAN, perplexity: None, rmspe: Some(rmspe) }
    }

    /// The task's own metric, named: `("accuracy", a)`, `("perplexity", p)` or `("rmspe", r)`.
    pub fn headline(&self) -> (&'static str, f64) {
        match (self.perplexity, self.rmspe) {
            (Some(p), _) => ("perplexity", p),
            (_, Some(r)) => ("rmspe", r),
            _ => ("accuracy", self.accuracy),
        }
    }
}

/// One evaluated snapshot (a cycle end). `loss`/`accuracy` are on the evaluation split (the test
/// set when the data has one, else the validation set); `valid` is on the validation split.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SnapshotResult {
    /// Index of the snapshot over the whole job (`snapshots/cycle-<index>/` in the store).
    pub index: usize,
    pub stage: usize,
    /// Cycle within its stage.
    pub cycle: u32,
    /// Epochs completed within its stage when it was taken.
    pub epoch: u32,
    pub loss: f64,
    /// Accuracy on the evaluation split (NaN, absent from JSON, for tasks without classes).
    #[serde(default = "nan", skip_serializing_if = "is_nan")]
    pub accuracy: f64,
    /// Perplexity (language models) or RMSPE (regressions) on the evaluation split.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub perplexity: Option<f64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rmspe: Option<f64>,
    pub valid: Metrics,
    /// With test-time augmentation, on the evaluation split (absent when the job has no `[tta]`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tta: Option<Metrics>,
    /// With test-time augmentation, on the validation split: whether TTA helps, told without the
    /// test set (absent without `[tta]`, and in results written before it was kept).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub valid_tta: Option<Metrics>,
    /// The independent run it belongs to, when the job trains several (`ensemble.runs`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub run: Option<String>,
    /// What the job would have delivered had it stopped here (absent for snapshots scored after
    /// training, and in results written before it existed).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub so_far: Option<SoFar>,
}

/// The ensemble of the snapshots taken so far, chosen on the validation split as the job's final
/// one is, and when it was ready: the job's time to accuracy, one point per snapshot.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SoFar {
    /// Seconds the job had run (range test, epochs, validation and scoring included) when this
    /// snapshot's ensemble was scored; a resumed job goes on from its checkpoint's count, so the
    /// time between a stop and the resume is not counted, and the work redone after it is.
    pub seconds: f64,
    pub ensemble: EnsembleResult,
}

impl SnapshotResult {
    /// Its scores on the evaluation split.
    pub fn metrics(&self) -> Metrics {
        Metrics { loss: self.loss, accuracy: self.accuracy, perplexity: self.perplexity, rmspe: self.rmspe }
    }
}

impl EnsembleResult {
    /// Its scores on the evaluation split.
    pub fn metrics(&self) -> Metrics {
        Metrics { loss: self.loss, accuracy: self.accuracy, perplexity: self.perplexity, rmspe: self.rmspe }
    }
}

/// One of several independent runs of a job (`ensemble.runs`), as the evaluation saw it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RunSummary {
    /// Run id in the store (`<output>/<job>/<run>/`).
    pub run: String,
    pub seed: u64,
    /// Its final model, as the run reported it.
    #[serde(rename = "final")]
    pub final_model: Metrics,
    /// The ensemble of its own snapshots, as the run reported it.
    pub ensemble: Option<EnsembleResult>,
    /// Indices (in the job's `snapshots`) of its snapshots.
    pub snapshots: Vec<usize>,
    pub train_seconds: f64,
}

/// The ensemble: average of the members' softmax outputs.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct EnsembleResult {
    /// Snapshot indices averaged (chosen on the validation split, never the test set).
    pub members: Vec<usize>,
    /// How members were chosen: `last` or `greedy`.
    pub selection: String,
    pub loss: f64,
    #[serde(default = "nan", skip_serializing_if = "is_nan")]
    pub accuracy: f64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub perplexity: Option<f64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rmspe: Option<f64>,
    pub valid: Metrics,
    /// Average of the members' TTA probabilities, on the evaluation split (absent without `[tta]`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tta: Option<Metrics>,
    /// The same on the validation split, where the members were chosen (absent without `[tta]`,
    /// and in results written before it was kept).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub valid_tta: Option<Metrics>,
}

/// Per-epoch record of one stage.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct EpochRecord {
    pub stage: usize,
    pub epoch: u32,
    /// Global step (over the whole job) at the end of the epoch.
    pub step: u64,
    pub train_loss: f64,
    pub valid: Metrics,
    pub seconds: f64,
}

/// Step-level history for plots: global step, loss of that batch, reference LR.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct StepHistory {
    pub steps: Vec<u64>,
    pub losses: Vec<f64>,
    pub lrs: Vec<f64>,
    /// Global steps at which a stage started (the first is 0).
    pub stage_starts: Vec<u64>,
    /// Global steps at which a cycle ended, and whether a snapshot was saved there.
    pub cycle_ends: Vec<(u64, bool)>,
}

/// Everything `cyclotron train` writes to `results.json`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TrainResults {
    pub job: String,
    /// Which split `loss`/`accuracy` of snapshots and ensemble refer to: `test` or `valid`.
    pub eval_split: String,
    pub snapshots: Vec<SnapshotResult>,
    pub ensemble: Option<EnsembleResult>,
    /// The model as it stands at the end of the last stage.
    #[serde(rename = "final")]
    pub final_model: Metrics,
    /// The final model with test-time augmentation (absent without `[tta]`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub final_tta: Option<Metrics>,
    pub epochs: Vec<EpochRecord>,
    /// LR-range tests run during the job (stage index, report).
    pub lr_finds: Vec<(usize, LrFindReport)>,
    pub history: StepHistory,
    /// Seconds the job ran, from its start to its results (a resumed job's count goes on from its
    /// checkpoint's, as [`SoFar::seconds`] does).
    pub train_seconds: f64,
    /// The parallel LR sweep the coordinator ran before training (candidates compared, the grid's
    /// merged curve); absent when the run did its own range test.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sweep: Option<crate::sweep::SweepOutcome>,
    /// With several independent runs (`ensemble.runs`): each run; the job's `snapshots` are then
    /// every snapshot of every run, `ensemble` is chosen among all of them, and `epochs`,
    /// `history` and `final` are the first run's.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub runs: Vec<RunSummary>,
    /// Every snapshot of every run averaged (with several runs).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub all_snapshots: Option<EnsembleResult>,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn results_without_tta_fields_still_parse() {
        let old = r#"{"index":0,"stage":0,"cycle":0,"epoch":1,"loss":0.3,"accuracy":0.9,"valid":{"loss":0.3,"accuracy":0.9}}"#;
        let s: SnapshotResult = serde_json::from_str(old).unwrap();
        assert_eq!(s.tta, None);
        let back = serde_json::to_string(&s).unwrap();
        assert!(!back.contains("tta"), "{back}");
        let with = SnapshotResult { tta: Some(Metrics::classification(0.2, 0.95)), ..s };
        let again: SnapshotResult = serde_json::from_str(&serde_json::to_string(&with).unwrap()).unwrap();
        assert_eq!(again, with);
        let old = r#"{"members":[1],"selection":"last","loss":0.3,"accuracy":0.9,"valid":{"loss":0.3,"accuracy":0.9}}"#;
        assert_eq!(serde_json::from_str::<EnsembleResult>(old).unwrap().tta, None);
    }

    #[test]
    fn a_language_model_reports_perplexity_and_no_accuracy() {
        let m = Metrics::language_model(2f64.ln() * 3.0);
        assert!((m.perplexity.unwrap() - 8.0).abs() < 1e-9);
        let json = serde_json::to_string(&m).unwrap();
        assert!(!json.contains("accuracy") && json.contains("perplexity"), "{json}");
        let back: Metrics = serde_json::from_str(&json).unwrap();
        assert!(back.accuracy.is_nan() && back.perplexity == m.perplexity);
        assert_eq!(m.headline().0, "perplexity");
        assert_eq!(Metrics::classification(0.3, 0.9).headline(), ("accuracy", 0.9));
    }
}
