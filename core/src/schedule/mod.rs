//! Learning-rate schedules: pure functions of the step number.
//!
//! Every schedule answers `lr_at(step)` for its reference (peak) learning rate. Layer groups with
//! discriminative learning rates are scaled the same way: a group whose peak is `g` trains at
//! `g * factor_at(step)`, where `factor_at = lr_at / peak_lr`. Steps are optimiser steps (batches),
//! counted from 0 at the start of a training stage.

mod constant;
mod cosine;
mod one_cycle;
mod sgdr;

pub use constant::Constant;
pub use cosine::Cosine;
pub use one_cycle::OneCycle;
pub use sgdr::Sgdr;

/// A point at which the learner saves a snapshot: after `step` optimiser steps (i.e. when the
/// step counter reaches `step`), which is the end of `cycle` and of epoch `epoch` (1-based count of
/// completed epochs within the stage).
#[derive(Debug, Clone, Copy, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct SnapshotPoint {
    pub cycle: u32,
    pub step: u64,
    pub epoch: u32,
}

/// A learning-rate schedule.
///
/// Contract: `lr_at` is defined for every `step < total_steps()` and is finite and ≥ 0; past the
/// end it returns the value at the last step. `snapshot_points` are sorted by step, strictly
/// increasing, and the last one equals `total_steps()`.
pub trait Schedule: Send + Sync + std::fmt::Debug {
    /// Learning rate of the reference group at `step`.
    fn lr_at(&self, step: u64) -> f64;
    /// The reference (peak) learning rate this schedule scales from.
    fn peak_lr(&self) -> f64;
    /// Number of optimiser steps the schedule covers.
    fn total_steps(&self) -> u64;
    /// Where cycles end: one point per cycle (a single point at the end for acyclic schedules).
    fn snapshot_points(&self) -> Vec<SnapshotPoint>;

    /// Multiplier applied to every layer group's peak learning rate at `step`.
    fn factor_at(&self, step: u64) -> f64 {
        let peak = self.peak_lr();
        if peak > 0.0 {
            self.lr_at(step) / peak
        } else {
            0.0
        }
    }
}

/// Half-cosine from `hi` (at t = 0) to `lo` (at t = 1).
pub(crate) fn cos_anneal(hi: f64, lo: f64, t: f64) -> f64 {
    lo + 0.5 * (hi - lo) * (1.0 + (std::f64::consts::PI * t).cos())
}

#[cfg(test)]
pub(crate) mod contract {
    //! One contract test that every schedule passes.
    use super::Schedule;

    pub fn check(s: &dyn Schedule) {
        let total = s.total_steps();
        assert!(total > 0, "{s:?}: no steps");
        for step in 0..total + 3 {
            let lr = s.lr_at(step);
            assert!(lr.is_finite() && lr >= 0.0, "{s:?}: lr_at({step}) = {lr}");
            assert!(lr <= s.peak_lr() * (1.0 + 1e-12), "{s:?}: lr_at({step}) = {lr} above peak");
        }
        assert_eq!(s.lr_at(total + 2), s.lr_at(total - 1), "{s:?}: past the end");
        let points = s.snapshot_points();
        assert!(!points.is_empty());
        assert!(points.windows(2).all(|w| w[0].step < w[1].step && w[0].cycle < w[1].cycle));
        assert_eq!(points.last().unwrap().step, total, "{s:?}: last snapshot not at the end");
    }
}
