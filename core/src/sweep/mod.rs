//! Parallel LR sweeps, as pure functions the coordinator and the workers share.
//!
//! A job's `[lr_find]` can run on the cluster as separate tasks instead of inside the training
//! run (see [`JobSpec::parallel_sweep`]):
//! - **candidates** (`[lr_find.candidates]`): every combination of the listed batch sizes, weight
//!   decays and architectures gets its own sweep on its own worker group; the coordinator
//!   compares them by the lowest (smoothed) loss their sweep reached and trains the best;
//! - **grid** (`grid = K`): instead of one ramp, K log-spaced LRs from `start` to `end`, each
//!   trained `grid_steps` steps at that constant LR from the same initial weights (same seed, same
//!   batches) by its own group; the coordinator merges the points into one loss-vs-LR curve and
//!   suggests from it ([`grid_suggestions`]: the best point, refined by a parabola).
//!
//! Without a grid, a candidate's sweep is one ordinary range test (the ramp). With both, every
//! (candidate, LR) pair is a task. The chosen candidate and its curve go to every training run,
//! whose `lr = "auto"` stages take the curve's suggestion.

use serde::{Deserialize, Serialize};

use crate::lr_range::{suggest, LrFindReport, SuggestionKind, Suggestions};
use crate::spec::{JobSpec, LrFindSpec};

/// Most combinations `[lr_find.candidates]` may expand to, and most grid points.
pub const MAX_POINTS: usize = 64;

/// A grid point has diverged when its loss is not finite or ends above this multiple of its first.
pub const DIVERGE_FACTOR: f64 = 4.0;

/// One candidate config: what it changes in the job spec (`None`: as the spec says).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Candidate {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub batch_size: Option<usize>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub weight_decay: Option<f64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub arch: Option<String>,
}

impl Candidate {
    /// The spec this candidate trains: its values replace the spec's.
    pub fn apply(&self, spec: &mut JobSpec) {
        if let Some(b) = self.batch_size {
            spec.data.batch_size = b;
            // a candidate's batch is the global one when the spec sets the global batch
            if spec.data.global_batch_size.is_some() {
                spec.data.global_batch_size = Some(b);
            }
        }
        if let Some(wd) = self.weight_decay {
            spec.optimizer.weight_decay = wd;
        }
        if let Some(a) = &self.arch {
            spec.model.arch = a.clone();
            // "torchscript" is the spec's own module; a built-in candidate trains without it (and
            // its spec names the module nowhere, candidate lists included, so it validates)
            if a != crate::spec::TORCHSCRIPT_ARCH {
                spec.model.torchscript = None;
                spec.model.torchscript_groups = None;
                if let Some(c) = spec.lr_find.as_mut().and_then(|f| f.candidates.as_mut()) {
                    c.arch.retain(|x| x != crate::spec::TORCHSCRIPT_ARCH);
                }
            }
        }
    }

    /// `batch_size=64 weight_decay=0.0001`, or `as specified` when it changes nothing.
    pub fn label(&self) -> String {
        let mut parts = vec![];
        if let Some(a) = &self.arch {
            parts.push(format!("arch={a}"));
        }
        if let Some(b) = self.batch_size {
            parts.push(format!("batch_size={b}"));
        }
        if let Some(wd) = self.weight_decay {
            parts.push(format!("weight_decay={wd}"));
        }
        if parts.is_empty() {
            "as specified".into()
        } else {
            parts.join(" ")
        }
    }
}

/// Every combination of the candidate lists (an empty list leaves that field as specified); one
/// unchanged candidate without `[lr_find.candidates]`.
pub fn candidates(f: &LrFindSpec) -> Vec<Candidate> {
    let Some(c) = &f.candidates else { return vec![Candidate::default()] };
    let opt = |n: usize| if n == 0 { 1 } else { n };
    let mut out = vec![];
    for ai in 0..opt(c.arch.len()) {
        for bi in 0..opt(c.batch_size.len()) {
            for wi in 0..opt(c.weight_decay.len()) {
                out.push(Candidate {
                    arch: c.arch.get(ai).cloned(),
                    batch_size: c.batch_size.get(bi).copied(),
                    weight_decay: c.weight_decay.get(wi).copied(),
                });
            }
        }
    }
    out
}

/// What one sweep task measures.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "probe", rename_all = "snake_case")]
pub enum Probe {
    /// The ordinary range test: the exponential ramp from `start` to `end`.
    Range,
    /// `steps` steps at constant `lr` from the initial weights.
    Grid { lr: f64, steps: u32 },
}

/// The grid's learning rates: `grid` log-spaced values from `start` to `end`, both included.
pub fn grid_lrs(f: &LrFindSpec) -> Vec<f64> {
    let k = f.grid as usize;
    if k < 2 {
        return vec![f.start; k];
    }
    (0..k).map(|i| f.start * (f.end / f.start).powf(i as f64 / (k - 1) as f64)).collect()
}

/// The sweep's tasks: (candidate index, candidate, probe), candidate-major.
pub fn points(f: &LrFindSpec) -> Vec<(usize, Candidate, Probe)> {
    let probes: Vec<Probe> = if f.grid > 0 {
        grid_lrs(f).into_iter().map(|lr| Probe::Grid { lr, steps: f.grid_steps }).collect()
    } else {
        vec![Probe::Range]
    };
    let mut out = vec![];
    for (ci, c) in candidates(f).into_iter().enumerate() {
        for p in &probes {
            out.push((ci, c.clone(), p.clone()));
        }
    }
    out
}

/// One grid point's measurement.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct GridPoint {
    pub lr: f64,
    /// Steps it trained (fewer than asked when it diverged).
    pub steps: usize,
    /// Mean loss of the last quarter of the steps (at least one): the point's value on the curve.
    #[serde(with = "crate::serde_nan")]
    pub loss: f64,
    pub diverged: bool,
    /// sha256 of the weights the point started from: every point of a candidate must start from
    /// the same ones (checked when the sweep is concluded).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub init: Option<String>,
}

impl GridPoint {
    /// Summarise the losses of a point trained at `lr` (`stopped`: training stopped on divergence).
    pub fn from_losses(lr: f64, losses: &[f64], stopped: bool) -> GridPoint {
        let tail = (losses.len() / 4).max(1).min(losses.len());
        let loss = if losses.is_empty() {
            f64::NAN
        } else {
            losses[losses.len() - tail..].iter().sum::<f64>() / tail as f64
        };
        let diverged = stopped || losses.first().is_some_and(|first| grid_diverged(*first, loss));
        let steps = losses.len();
        GridPoint { lr, steps, loss: if diverged { f64::NAN } else { loss }, diverged, init: None }
    }
}

/// Whether a grid point's training has diverged: its loss is not finite or above
/// [`DIVERGE_FACTOR`] times its first loss.
pub fn grid_diverged(first: f64, loss: f64) -> bool {
    !loss.is_finite() || loss > DIVERGE_FACTOR * first
}

/// What a sweep task reports (its `results.json`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "probe", rename_all = "snake_case")]
pub enum PointReport {
    Range { report: LrFindReport },
    Grid { point: GridPoint },
}

/// One loss-vs-LR curve from grid points (any order): sorted by LR, a diverged point's loss is
/// NaN, and the suggestions read the curve up to the first diverged point ([`grid_suggestions`]).
pub fn merge_grid(points: &[GridPoint]) -> LrFindReport {
    let mut pts: Vec<&GridPoint> = points.iter().collect();
    pts.sort_by(|a, b| a.lr.total_cmp(&b.lr));
    let lrs: Vec<f64> = pts.iter().map(|p| p.lr).collect();
    let losses: Vec<f64> = pts.iter().map(|p| if p.diverged { f64::NAN } else { p.loss }).collect();
    let usable = losses.iter().position(|l| !l.is_finite()).unwrap_or(losses.len());
    LrFindReport {
        suggestion: grid_suggestions(&lrs[..usable], &losses[..usable]),
        raw_losses: losses.clone(),
        lrs,
        losses,
        diverged: pts.iter().any(|p| p.diverged),
    }
}

/// Suggestions from a grid curve (`lrs` increasing, all finite). A ramp's loss at an LR carries the
/// history of every smaller LR and bottoms out just before divergence, hence its `minimum` and
/// `valley` rules; a grid point trained at its own LR from the start, so its loss measures that LR
/// directly. So on a grid: `minimum` is the best point's LR itself, `valley` refines it with the
/// vertex of a parabola through it and its neighbours (in log LR; the best point when it lies at
/// an end of the curve), and `steep` is the ramp's rule. `None` with fewer than 3 points.
pub fn grid_suggestions(lrs: &[f64], losses: &[f64]) -> Option<Suggestions> {
    let ramp = suggest(lrs, losses, losses)?;
    let n = lrs.len().min(losses.len());
    let best = (0..n).min_by(|&a, &b| losses[a].total_cmp(&losses[b]))?;
    let valley = if best == 0 || best + 1 == n {
        lrs[best]
    } else {
        let (x0, x1, x2) = (lrs[best - 1].ln(), lrs[best].ln(), lrs[best + 1].ln());
        let (y0, y1, y2) = (losses[best - 1], losses[best], losses[best + 1]);
        // vertex of the parabola through the three points (x need not be evenly spaced)
        let num = (x1 - x0).powi(2) * (y1 - y2) - (x1 - x2).powi(2) * (y1 - y0);
        let den = (x1 - x0) * (y1 - y2) - (x1 - x2) * (y1 - y0);
        let x = if den.abs() > f64::EPSILON { x1 - 0.5 * num / den } else { x1 };
        x.clamp(x0, x2).exp()
    };
    Some(Suggestions { steep: ramp.steep, valley, minimum: lrs[best] })
}

/// The lowest finite loss of a curve before its first non-finite point (NaN when none).
pub fn best_loss(report: &LrFindReport) -> f64 {
    report.losses.iter().take_while(|l| l.is_finite()).copied().fold(f64::NAN, f64::min)
}

/// One candidate's sweep, concluded.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct CandidateOutcome {
    pub candidate: Candidate,
    pub label: String,
    /// The range test, or the grid merged into one curve.
    pub report: LrFindReport,
    /// What candidates are compared by (lower wins): [`best_loss`] of the curve.
    #[serde(with = "crate::serde_nan")]
    pub best_loss: f64,
    /// The LR its curve suggests (the spec's `suggestion`), if any.
    #[serde(default)]
    pub lr: Option<f64>,
}

/// The whole sweep, concluded by the coordinator.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SweepOutcome {
    pub candidates: Vec<CandidateOutcome>,
    /// Index of the candidate that trains.
    pub chosen: usize,
    /// Which suggestion the LR is.
    pub suggestion: SuggestionKind,
    /// Grid points per candidate (0: each candidate ran the ramp).
    pub grid: u32,
}

impl SweepOutcome {
    pub fn chosen(&self) -> &CandidateOutcome {
        &self.candidates[self.chosen]
    }

    /// What the training runs take from it.
    pub fn choice(&self) -> SweepChoice {
        SweepChoice { candidate: self.chosen().candidate.clone(), report: self.chosen().report.clone() }
    }
}

/// Conclude a sweep from its tasks' reports, `(candidate index, report)`. The candidate with the
/// lowest best loss wins (ties: the first), among those whose curve gives a suggestion when the
/// job needs an LR from it (`need_lr`: some stage has `lr = "auto"`); when none can, an error says
/// what to change.
pub fn conclude(
    f: &LrFindSpec,
    reports: &[(usize, PointReport)],
    need_lr: bool,
) -> Result<SweepOutcome, String> {
    let cands = candidates(f);
    let mut outcomes = vec![];
    for (ci, candidate) in cands.into_iter().enumerate() {
        let mine: Vec<&PointReport> = reports.iter().filter(|(c, _)| *c == ci).map(|(_, r)| r).collect();
        let report = if f.grid > 0 {
            let pts: Vec<GridPoint> = mine
                .iter()
                .filter_map(|r| match r {
                    PointReport::Grid { point } => Some(point.clone()),
                    PointReport::Range { .. } => None,
                })
                .collect();
            let inits: std::collections::BTreeSet<&str> =
                pts.iter().filter_map(|p| p.init.as_deref()).collect();
            if inits.len() > 1 {
                return Err(format!(
                    "candidate {ci} ({}): its grid points started from {} different initial weights, so their losses do not make one curve; the workers differ (device type or libtorch build): run the sweep on identical workers, or use the ramp (lr_find.grid = 0)",
                    candidate.label(),
                    inits.len()
                ));
            }
            if pts.len() != f.grid as usize {
                return Err(format!(
                    "candidate {ci} ({}): {} of {} grid points reported",
                    candidate.label(),
                    pts.len(),
                    f.grid
                ));
            }
            merge_grid(&pts)
        } else {
            match mine.as_slice() {
                [PointReport::Range { report }] => report.clone(),
                _ => return Err(format!("candidate {ci} ({}): no range test reported", candidate.label())),
            }
        };
        outcomes.push(CandidateOutcome {
            label: candidate.label(),
            candidate,
            best_loss: best_loss(&report),
            lr: report.lr(f.suggestion),
            report,
        });
    }
    let chosen = outcomes
        .iter()
        .enumerate()
        .filter(|(_, o)| (o.lr.is_some() || !need_lr) && o.best_loss.is_finite())
        .min_by(|a, b| a.1.best_loss.total_cmp(&b.1.best_loss))
        .map(|(i, _)| i)
        .ok_or_else(|| {
            "no LR sweep gave a usable curve (every curve diverged at once, has fewer than 3 usable points, or never fell below its first values); lower lr_find.start, raise lr_find.grid, or set the stages' lr explicitly".to_string()
        })?;
    Ok(SweepOutcome { candidates: outcomes, chosen, suggestion: f.suggestion, grid: f.grid })
}

/// Run id (folder in the store) of run `i` of `runs` independent runs of the job run `job_run`:
/// the job run itself when it is the only one, else `<job_run>-r<i>`.
pub fn run_id(job_run: &str, i: usize, runs: usize) -> String {
    if runs <= 1 {
        job_run.to_string()
    } else {
        format!("{job_run}-r{i}")
    }
}

/// What a training run takes from a concluded sweep: the chosen candidate and its curve (the
/// run's first LR-range test, whose suggestion its `lr = "auto"` stages use).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SweepChoice {
    pub candidate: Candidate,
    pub report: LrFindReport,
}

#[cfg(test)]
mod tests;
