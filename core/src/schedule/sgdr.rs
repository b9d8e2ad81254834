//! SGDR: cosine annealing with warm restarts (Loshchilov & Hutter 2017), as fastai 0.7 ran it.
//!
//! Cycle `i` lasts `T_i = cycle_len · cycle_mult^i` epochs (`T_i · steps_per_epoch` iterations).
//! At iteration `t` of cycle `i`: `lr = lr/100` while `t < T_i/20` (warm-up), else
//! `lr = lr_min + ½(lr_max − lr_min)(1 + cos(π·t/T_i))`. `n` cycles take
//! `Σ_{i<n} cycle_len · cycle_mult^i` epochs. A snapshot is taken at the end of every cycle.

use super::{cos_anneal, Schedule, SnapshotPoint};

#[derive(Debug, Clone, PartialEq)]
pub struct Sgdr {
    pub lr_max: f64,
    pub lr_min: f64,
    pub steps_per_epoch: u64,
    pub cycles: u32,
    pub cycle_len: u32,
    pub cycle_mult: u32,
    /// fastai 0.7 warms up at lr/100 for the first 1/20 of a cycle; `false` turns that off.
    pub warmup: bool,
}

impl Sgdr {
    /// Epochs in cycle `i`.
    pub fn cycle_epochs(&self, i: u32) -> u64 {
        u64::from(self.cycle_len) * u64::from(self.cycle_mult).pow(i)
    }

    /// Total epochs: Σ cycle_len · cycle_mult^i.
    pub fn total_epochs(&self) -> u64 {
        (0..self.cycles).map(|i| self.cycle_epochs(i)).sum()
    }

    /// Which cycle `step` falls in, the step within it, and the cycle's length in steps.
    fn locate(&self, step: u64) -> (u32, u64, u64) {
        let mut start = 0;
        for i in 0..self.cycles {
            let len = self.cycle_epochs(i) * self.steps_per_epoch;
            if step < start + len {
                return (i, step - start, len);
            }
            start += len;
        }
        let last = self.cycles - 1;
        let len = self.cycle_epochs(last) * self.steps_per_epoch;
        (last, len - 1, len)
    }
}

impl Schedule for Sgdr {
    fn lr_at(&self, step: u64) -> f64 {
        let (_, t, len) = self.locate(step);
        // warm-up: t < T/20, compared exactly in integers (20·t < T)
        if self.warmup && 20 * t < len {
            return self.lr_max / 100.0;
        }
        cos_anneal(self.lr_max, self.lr_min, t as f64 / len as f64)
    }
    fn peak_lr(&self) -> f64 {
        self.lr_max
    }
    fn total_steps(&self) -> u64 {
        self.total_epochs() * self.steps_per_epoch
    }
    fn snapshot_points(&self) -> Vec<SnapshotPoint> {
        let mut epoch = 0;
        (0..self.cycles)
            .map(|i| {
                epoch += self.cycle_epochs(i);
                SnapshotPoint { cycle: i, step: epoch * self.steps_per_epoch, epoch: epoch as u32 }
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sgdr(cycles: u32, cycle_len: u32, cycle_mult: u32) -> Sgdr {
        Sgdr { lr_max: 0.01, lr_min: 0.0, steps_per_epoch: 40, cycles, cycle_len, cycle_mult, warmup: true }
    }

    #[test]
    fn total_epochs_is_the_geometric_sum() {
        for (cycles, len, mult, want) in
            [(3, 1, 1, 3), (3, 1, 2, 7), (4, 2, 3, 2 + 6 + 18 + 54), (1, 5, 7, 5)]
        {
            let s = sgdr(cycles, len, mult);
            super::super::contract::check(&s);
            assert_eq!(s.total_epochs(), want, "cycles={cycles} len={len} mult={mult}");
            assert_eq!(s.total_steps(), want * 40);
        }
    }

    #[test]
    fn snapshots_at_every_cycle_end() {
        let s = sgdr(3, 1, 2);
        let pts = s.snapshot_points();
        assert_eq!(
            pts,
            vec![
                SnapshotPoint { cycle: 0, step: 40, epoch: 1 },
                SnapshotPoint { cycle: 1, step: 120, epoch: 3 },
                SnapshotPoint { cycle: 2, step: 280, epoch: 7 },
            ]
        );
    }

    #[test]
    fn warmup_is_lr_over_100_for_the_first_twentieth_of_each_cycle() {
        let s = sgdr(3, 1, 2); // cycles of 40, 80, 160 steps
        for (start, len) in [(0u64, 40u64), (40, 80), (120, 160)] {
            for t in 0..len {
                let lr = s.lr_at(start + t);
                if 20 * t < len {
                    assert_eq!(lr, 0.0001, "step {}", start + t);
                } else {
                    let want = 0.5 * 0.01 * (1.0 + (std::f64::consts::PI * t as f64 / len as f64).cos());
                    assert!((lr - want).abs() < 1e-15, "step {}: {lr} vs {want}", start + t);
                }
            }
        }
    }

    #[test]
    fn restarts_jump_back_up() {
        let s = sgdr(2, 1, 1);
        let mut s = s;
        s.warmup = false;
        assert_eq!(s.lr_at(0), 0.01);
        assert!(s.lr_at(39) < 0.0001);
        assert_eq!(s.lr_at(40), 0.01);
        assert!((1..40).all(|t| s.lr_at(t) < s.lr_at(t - 1)));
    }

    #[test]
    fn group_factor_is_shared() {
        let s = sgdr(2, 1, 2);
        for step in [0, 3, 17, 39, 40, 90, 119] {
            assert!((s.factor_at(step) * 0.01 - s.lr_at(step)).abs() < 1e-15);
        }
    }
}
