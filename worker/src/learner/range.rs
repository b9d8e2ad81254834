//! The learner's LR-range test (Smith 2015) and the constant-LR probes of a parallel grid sweep:
//! both train with a fresh optimiser on the task's own batches (this rank's part, so a group
//! tests the global batch it will train), then restore the weights and the real optimiser.

use cyclotron_core::lr_range::{LrFindReport, LrFinder, LrRange, Verdict};

use super::Learner;
use crate::error::{Error, Result};
use crate::event::{Event, Observer};
use crate::models::GROUPS;
use crate::optim::Optimizer;
use crate::tensor_io::{clone_vars, load_into};

impl Learner {
    /// Runs `probe` with a fresh optimiser, then puts the weights and the real optimiser back,
    /// whatever `probe` returned.
    fn with_scratch_optimiser<T>(
        &mut self,
        what: &str,
        probe: impl FnOnce(&mut Learner) -> Result<T>,
    ) -> Result<T> {
        // a checkpoint may still be copying the weights the probe is about to change
        self.opt.wait_for_readers();
        let saved = clone_vars(self.task.model().vs());
        let scratch = Optimizer::new(&self.opt_spec, self.task.model().parameters());
        let real = std::mem::replace(&mut self.opt, scratch);
        let result = probe(self);
        self.opt = real;
        load_into(self.task.model().vs(), &saved, what)?;
        result
    }

    /// Trains up to `steps` steps at `lr_at(i)` on every unfrozen group, starting at the current
    /// epoch's order and walking the training split again (the next epoch's order) while steps
    /// remain; reports each step to `obs` and hands its loss to `stop`, which ends the walk by
    /// returning true. Returns whether `stop` ended it. The caller restores the weights.
    fn walk_steps(
        &mut self,
        steps: u32,
        lr_at: impl Fn(u32) -> f64,
        obs: &mut dyn Observer,
        mut stop: impl FnMut(f64, f64) -> bool,
    ) -> Result<bool> {
        obs.on_event(&Event::LrFindStart { steps });
        let mut epoch = self.epochs_done;
        let mut i = 0;
        self.task.start_sequence();
        while i < steps {
            let before = i;
            for batch in self.task.train_batches(epoch, self.shard())? {
                if i >= steps {
                    break;
                }
                self.check_abort()?;
                let lr = lr_at(i);
                let loss = self.step(&batch, &[lr; GROUPS])?;
                obs.on_event(&Event::LrFindStep { i, lr, loss });
                i += 1;
                if stop(lr, loss) {
                    return Ok(true);
                }
            }
            if i == before {
                return Err(Error::Invalid {
                    what: "data".into(),
                    message: "the training split gives no batch; lower data.batch_size".into(),
                });
            }
            epoch += 1;
        }
        Ok(false)
    }

    /// LR-range test: train at exponentially increasing learning rates (every trainable group at
    /// the same lr) until divergence or `range.steps` steps. Like fastai's `lr_find(num_it=100)`,
    /// a small training split is walked more than once (each pass in the next epoch's order), so
    /// the curve always has its `steps` points. Model weights and optimiser state are restored
    /// afterwards.
    pub fn lr_find(&mut self, range: LrRange, obs: &mut dyn Observer) -> Result<LrFindReport> {
        let (finder, diverged) = self.with_scratch_optimiser("weights saved before lr_find", |l| {
            let mut finder = LrFinder::default();
            let diverged = l.walk_steps(
                range.steps,
                |i| range.lr_at(i),
                obs,
                |lr, loss| finder.record(lr, loss) == Verdict::Diverged,
            )?;
            Ok((finder, diverged))
        })?;
        let report = LrFindReport::from_finder(finder, diverged);
        obs.on_event(&Event::LrFindEnd { report: Box::new(report.clone()) });
        Ok(report)
    }

    /// One grid point of a parallel LR sweep: `steps` steps (walking the training split again in
    /// the next epoch's order while steps remain) at the constant `lr` on every unfrozen group,
    /// with a fresh optimiser; stops early once the loss diverges (not finite, or above
    /// [`cyclotron_core::sweep::DIVERGE_FACTOR`] × the first). The weights are restored afterwards.
    /// Returns the losses and whether it stopped on divergence.
    pub fn lr_probe(&mut self, lr: f64, steps: u32, obs: &mut dyn Observer) -> Result<(Vec<f64>, bool)> {
        self.with_scratch_optimiser("weights saved before the LR probe", |l| {
            let mut losses = Vec::with_capacity(steps as usize);
            let diverged = l.walk_steps(
                steps,
                |_| lr,
                obs,
                |_, loss| {
                    losses.push(loss);
                    cyclotron_core::sweep::grid_diverged(losses[0], loss)
                },
            )?;
            Ok((losses, diverged))
        })
    }
}
