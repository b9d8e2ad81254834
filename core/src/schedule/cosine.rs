//! One cosine annealing from `lr_max` to `lr_min` over the whole stage, without restarts.

use super::{cos_anneal, Schedule, SnapshotPoint};

#[derive(Debug, Clone, PartialEq)]
pub struct Cosine {
    pub lr_max: f64,
    pub lr_min: f64,
    pub steps_per_epoch: u64,
    pub epochs: u32,
}

impl Schedule for Cosine {
    fn lr_at(&self, step: u64) -> f64 {
        let total = self.total_steps();
        let step = step.min(total.saturating_sub(1));
        cos_anneal(self.lr_max, self.lr_min, step as f64 / total as f64)
    }
    fn peak_lr(&self) -> f64 {
        self.lr_max
    }
    fn total_steps(&self) -> u64 {
        self.steps_per_epoch * u64::from(self.epochs)
    }
    fn snapshot_points(&self) -> Vec<SnapshotPoint> {
        vec![SnapshotPoint { cycle: 0, step: self.total_steps(), epoch: self.epochs }]
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cosine_starts_at_max_halves_at_middle_and_decreases() {
        let s = Cosine { lr_max: 1.0, lr_min: 0.0, steps_per_epoch: 50, epochs: 2 };
        super::super::contract::check(&s);
        assert_eq!(s.lr_at(0), 1.0);
        assert!((s.lr_at(50) - 0.5).abs() < 1e-12);
        assert!((0..99).all(|i| s.lr_at(i + 1) < s.lr_at(i)));
        // the closed form at an arbitrary point
        let t = 37.0 / 100.0;
        let want = 0.5 * (1.0 + (std::f64::consts::PI * t).cos());
        assert!((s.lr_at(37) - want).abs() < 1e-12);
    }

    #[test]
    fn cosine_respects_lr_min() {
        let s = Cosine { lr_max: 0.1, lr_min: 0.01, steps_per_epoch: 10, epochs: 1 };
        super::super::contract::check(&s);
        assert!((0..10).all(|i| s.lr_at(i) > 0.01 && s.lr_at(i) <= 0.1));
    }
}
