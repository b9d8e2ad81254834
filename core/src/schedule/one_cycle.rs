//! One-cycle policy (Smith 2018, as fastai v1 runs it): cosine warm-up from `lr_max/div` to
//! `lr_max` over the first `pct_start` of the steps, then cosine annealing down to
//! `lr_max/(div·final_div)`.

use super::{cos_anneal, Schedule, SnapshotPoint};

#[derive(Debug, Clone, PartialEq)]
pub struct OneCycle {
    pub lr_max: f64,
    pub steps_per_epoch: u64,
    pub epochs: u32,
    pub pct_start: f64,
    pub div: f64,
    pub final_div: f64,
}

impl OneCycle {
    pub fn new(lr_max: f64, steps_per_epoch: u64, epochs: u32) -> Self {
        OneCycle { lr_max, steps_per_epoch, epochs, pct_start: 0.25, div: 25.0, final_div: 1e4 }
    }
    fn warm_steps(&self) -> u64 {
        ((self.total_steps() as f64) * self.pct_start).round() as u64
    }
}

impl Schedule for OneCycle {
    fn lr_at(&self, step: u64) -> f64 {
        let total = self.total_steps();
        let step = step.min(total.saturating_sub(1));
        let warm = self.warm_steps();
        let start = self.lr_max / self.div;
        let end = start / self.final_div;
        if step < warm {
            cos_anneal(start, self.lr_max, step as f64 / warm as f64)
        } else {
            cos_anneal(self.lr_max, end, (step - warm) as f64 / (total - warm).max(1) as f64)
        }
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
    fn one_cycle_rises_to_peak_then_falls() {
        let s = OneCycle::new(1.0, 25, 4); // 100 steps, 25 warm
        super::super::contract::check(&s);
        assert!((s.lr_at(0) - 1.0 / 25.0).abs() < 1e-12);
        assert!((s.lr_at(25) - 1.0).abs() < 1e-12);
        assert!((1..=25).all(|i| s.lr_at(i) > s.lr_at(i - 1)));
        assert!((26..100).all(|i| s.lr_at(i) < s.lr_at(i - 1)));
        assert!(s.lr_at(99) < 1e-3);
    }
}
