//! One training stage: what is trainable, at which learning rates, for how long, on which schedule.
//! A stage reads like fastai 0.7's `fit(lr, n_cycle, cycle_len, cycle_mult)`:
//! `epochs = 3` is `fit(lr, 3)` (constant LR), `cycles = 3, cycle_len = 1` is SGDR.

use serde::{Deserialize, Serialize};

use crate::schedule::{Constant, Cosine, OneCycle, Schedule, Sgdr};

/// A learning rate, or `"auto"`: the suggestion of the most recent LR-range test.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(untagged)]
pub enum LrValue {
    Fixed(f64),
    Auto(AutoLr),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum AutoLr {
    Auto,
}

/// Learning rates per layer group (body early, body late, head).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(untagged)]
pub enum GroupLrs {
    /// `"same"`: every group at `lr`; `"thirds"`: `[lr/9, lr/3, lr]`; `"slice"`: geometric from
    /// `lr_low` to `lr` over the groups (fastai's `slice(lr_low, lr)`).
    Named(String),
    /// Explicit peak learning rates, one per group, earliest group first.
    Explicit(Vec<f64>),
}

impl Default for GroupLrs {
    fn default() -> Self {
        GroupLrs::Named("same".into())
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ScheduleKind {
    Constant,
    Cosine,
    Sgdr,
    OneCycle,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StageSpec {
    #[serde(default)]
    pub name: Option<String>,
    /// Run an LR-range test (with this stage's trainable groups) before training; `lr = "auto"` takes its suggestion.
    #[serde(default)]
    pub lr_find: bool,
    /// Train only the head (the last layer group).
    #[serde(default)]
    pub freeze: bool,
    /// Freeze the first N layer groups (alternative to `freeze`).
    #[serde(default)]
    pub freeze_to: Option<usize>,
    /// Peak learning rate of the last group.
    #[serde(default)]
    pub lr: Option<LrValue>,
    #[serde(default)]
    pub group_lrs: GroupLrs,
    /// Lower end of `group_lrs = "slice"`.
    #[serde(default)]
    pub lr_low: Option<f64>,
    /// Floor of cosine schedules.
    #[serde(default)]
    pub lr_min: f64,
    /// Epochs of a constant, cosine or one-cycle schedule.
    #[serde(default)]
    pub epochs: Option<u32>,
    /// SGDR: number of cycles.
    #[serde(default)]
    pub cycles: Option<u32>,
    /// SGDR: epochs of the first cycle.
    #[serde(default)]
    pub cycle_len: Option<u32>,
    /// SGDR: each cycle is this many times longer than the previous.
    #[serde(default = "one")]
    pub cycle_mult: u32,
    /// SGDR warm-up at lr/100 for the first 1/20 of each cycle.
    #[serde(default = "yes")]
    pub warmup: bool,
    /// Defaults to `sgdr` when `cycles` is set, else `constant`.
    #[serde(default)]
    pub schedule: Option<ScheduleKind>,
    /// Save a snapshot at each cycle end (default: on for SGDR, off otherwise).
    #[serde(default)]
    pub snapshot: Option<bool>,
    /// Augment this stage's training batches with `[data.augment]` (default: on when it is set).
    #[serde(default)]
    pub augment: Option<bool>,
    /// Train the head on cached activations of the frozen body (needs `freeze = true`; no
    /// augmentation, as in fastai).
    #[serde(default)]
    pub precompute: bool,
}

fn one() -> u32 {
    1
}
fn yes() -> bool {
    true
}

impl StageSpec {
    pub fn schedule_kind(&self) -> ScheduleKind {
        self.schedule.unwrap_or(if self.cycles.is_some() {
            ScheduleKind::Sgdr
        } else {
            ScheduleKind::Constant
        })
    }

    pub fn snapshots(&self) -> bool {
        self.snapshot.unwrap_or(self.schedule_kind() == ScheduleKind::Sgdr)
    }

    /// Epochs this stage trains for.
    pub fn total_epochs(&self) -> u64 {
        match self.schedule_kind() {
            ScheduleKind::Sgdr => {
                let (n, len, mult) = (self.cycles.unwrap_or(1), self.cycle_len.unwrap_or(1), self.cycle_mult);
                (0..n).map(|i| u64::from(len) * u64::from(mult).pow(i)).sum()
            }
            _ => u64::from(self.epochs.unwrap_or(0)),
        }
    }

    /// Number of frozen layer groups for a model with `groups` groups.
    pub fn frozen_groups(&self, groups: usize) -> usize {
        match (self.freeze_to, self.freeze) {
            (Some(n), _) => n.min(groups.saturating_sub(1)),
            (None, true) => groups.saturating_sub(1),
            (None, false) => 0,
        }
    }

    /// Peak learning rate per group, given the stage's resolved `lr` (the last group's).
    pub fn group_peaks(&self, lr: f64, groups: usize) -> Vec<f64> {
        match &self.group_lrs {
            // the list's last entry is the stage's lr, so a scaled `lr` scales every group alike
            GroupLrs::Explicit(v) => {
                let last = v.last().copied().unwrap_or(lr);
                v.iter().map(|x| x * lr / last).collect()
            }
            GroupLrs::Named(n) if n == "thirds" => {
                (0..groups).map(|g| lr / 3f64.powi((groups - 1 - g) as i32)).collect()
            }
            GroupLrs::Named(n) if n == "slice" => {
                let lo = self.lr_low.unwrap_or(lr);
                if groups == 1 {
                    return vec![lr];
                }
                (0..groups).map(|g| lo * (lr / lo).powf(g as f64 / (groups - 1) as f64)).collect()
            }
            GroupLrs::Named(_) => vec![lr; groups],
        }
    }

    /// The schedule of this stage at peak `lr`, for `steps_per_epoch` batches an epoch.
    pub fn schedule(&self, lr: f64, steps_per_epoch: u64) -> Box<dyn Schedule> {
        let epochs = self.epochs.unwrap_or(1);
        match self.schedule_kind() {
            ScheduleKind::Constant => Box::new(Constant { lr, steps_per_epoch, epochs }),
            ScheduleKind::Cosine => {
                Box::new(Cosine { lr_max: lr, lr_min: self.lr_min, steps_per_epoch, epochs })
            }
            ScheduleKind::OneCycle => Box::new(OneCycle::new(lr, steps_per_epoch, epochs)),
            ScheduleKind::Sgdr => Box::new(Sgdr {
                lr_max: lr,
                lr_min: self.lr_min,
                steps_per_epoch,
                cycles: self.cycles.unwrap_or(1),
                cycle_len: self.cycle_len.unwrap_or(1),
                cycle_mult: self.cycle_mult,
                warmup: self.warmup,
            }),
        }
    }

    /// The fixed learning rate of this stage, if it has one (`None` for "auto" and explicit lists).
    pub fn fixed_lr(&self) -> Option<f64> {
        match (&self.group_lrs, self.lr) {
            (GroupLrs::Explicit(v), _) => v.last().copied(),
            (_, Some(LrValue::Fixed(lr))) => Some(lr),
            _ => None,
        }
    }

    pub fn wants_auto_lr(&self) -> bool {
        matches!(self.lr, Some(LrValue::Auto(_)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn stage(toml_text: &str) -> StageSpec {
        toml::from_str(toml_text).unwrap()
    }

    #[test]
    fn thirds_and_slice() {
        let s = stage("lr = 0.09\ngroup_lrs = \"thirds\"\nepochs = 1");
        let p = s.group_peaks(0.09, 3);
        assert!((p[0] - 0.01).abs() < 1e-15 && (p[1] - 0.03).abs() < 1e-15 && p[2] == 0.09);
        let s = stage("lr = 0.01\ngroup_lrs = \"slice\"\nlr_low = 0.0001\nepochs = 1");
        let p = s.group_peaks(0.01, 3);
        assert!((p[0] - 1e-4).abs() < 1e-15 && (p[1] - 1e-3).abs() < 1e-15 && (p[2] - 1e-2).abs() < 1e-15);
        let s = stage("group_lrs = [0.001, 0.002, 0.004]\nepochs = 1");
        assert_eq!(s.group_peaks(0.004, 3), vec![0.001, 0.002, 0.004]);
        assert_eq!(s.fixed_lr(), Some(0.004));
        // an explicit list scaled for a larger global batch keeps its ratios
        assert_eq!(s.group_peaks(0.008, 3), vec![0.002, 0.004, 0.008]);
    }

    #[test]
    fn auto_lr_parses() {
        let s = stage("lr = \"auto\"\ncycles = 3\ncycle_len = 1");
        assert!(s.wants_auto_lr());
        assert_eq!(s.fixed_lr(), None);
        assert_eq!(s.schedule_kind(), ScheduleKind::Sgdr);
        assert!(s.snapshots());
    }

    #[test]
    fn epochs_for_each_kind() {
        assert_eq!(stage("lr = 0.1\nepochs = 3").total_epochs(), 3);
        assert_eq!(stage("lr = 0.1\ncycles = 3\ncycle_len = 1\ncycle_mult = 2").total_epochs(), 7);
        assert_eq!(stage("lr = 0.1\ncycles = 3\ncycle_len = 2").total_epochs(), 6);
        let s = stage("lr = 0.1\ncycles = 3\ncycle_len = 1\ncycle_mult = 2");
        assert_eq!(s.schedule(0.1, 10).total_steps(), 70);
        assert_eq!(s.schedule(0.1, 10).snapshot_points().len(), 3);
    }

    #[test]
    fn freezing() {
        assert_eq!(stage("freeze = true\nlr = 0.1\nepochs = 1").frozen_groups(3), 2);
        assert_eq!(stage("freeze_to = 1\nlr = 0.1\nepochs = 1").frozen_groups(3), 1);
        assert_eq!(stage("lr = 0.1\nepochs = 1").frozen_groups(3), 0);
    }
}
