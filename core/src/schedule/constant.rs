//! A constant learning rate (fastai 0.7's `fit(lr, n)` without `cycle_len`).

use super::{Schedule, SnapshotPoint};

#[derive(Debug, Clone, PartialEq)]
pub struct Constant {
    pub lr: f64,
    pub steps_per_epoch: u64,
    pub epochs: u32,
}

impl Schedule for Constant {
    fn lr_at(&self, _step: u64) -> f64 {
        self.lr
    }
    fn peak_lr(&self) -> f64 {
        self.lr
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
    fn constant_is_flat_and_ends_in_one_snapshot() {
        let s = Constant { lr: 0.1, steps_per_epoch: 7, epochs: 3 };
        super::super::contract::check(&s);
        assert_eq!(s.total_steps(), 21);
        assert!((0..21).all(|i| s.lr_at(i) == 0.1));
        assert_eq!(s.snapshot_points(), vec![SnapshotPoint { cycle: 0, step: 21, epoch: 3 }]);
        assert_eq!(s.factor_at(5), 1.0);
    }
}
