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

    /// LR-range test: train at exponentially increasing learning rates (every trainable group at
    /// the same lr) until divergence or `range.steps` steps. Like fastai's `lr_find(num_it=100)`,
    /// a small training split is walked more than once (each pass in the next epoch's order), so
    /// the curve always has its `steps` points. Model weights and optimiser state are restored
    /// afterwards.
    pub fn lr_find(&mut self, range: LrRange, obs: &mut dyn Observer) -> Result<LrFindReport> {
        let steps = range.steps;
        let (finder, diverged) = self.with_scratch_optimiser("weights saved before lr_find", |l| {
            obs.on_event(&Event::LrFindStart { steps });
            let mut finder = LrFinder::default();
            let mut epoch = l.epochs_done;
            let mut i = 0;
            l.task.start_sequence();
            while i < steps {
                let before = i;
                for batch in l.task.train_batches(epoch, l.shard())? {
                    if i >= steps {
                        break;
                    }
                    l.check_abort()?;
                    let lr = range.lr_at(i);
                    let loss = l.step(&batch, &[lr; GROUPS])?;
                    obs.on_event(&Event::LrFindStep { i, lr, loss });
                    i += 1;
                    if finder.record(lr, loss) == Verdict::Diverged {
                        return Ok((finder, true));
                    }
                }
                if i == before {
                    return Err(no_batch());
                }
                epoch += 1;
            }
            Ok((finder, false))
        })?;
        let report = LrFindReport::from_finder(finder, diverged);
        obs.on_event(&Event::LrFindEnd { report: Box::new(report.clone()) });
        Ok(report)
    }

    /// One grid point of a parallel LR sweep: `steps` steps (at most one epoch's worth of batches
    /// per pass, continuing into the next epoch's order) at the constant `lr` on every unfrozen
    /// group, with a fresh optimiser; stops early once the loss diverges (not finite, or above
    /// [`cyclotron_core::sweep::DIVERGE_FACTOR`] × the first). The weights are restored afterwards.
    /// Returns the losses and whether it stopped on divergence.
    pub fn lr_probe(&mut self, lr: f64, steps: u32, obs: &mut dyn Observer) -> Result<(Vec<f64>, bool)> {
        self.with_scratch_optimiser("weights saved before the LR probe", |l| {
            obs.on_event(&Event::LrFindStart { steps });
            let mut losses = Vec::with_capacity(steps as usize);
            let mut epoch = l.epochs_done;
            l.task.start_sequence();
            while losses.len() < steps as usize {
                let before = losses.len();
                for batch in l.task.train_batches(epoch, l.shard())? {
                    if losses.len() >= steps as usize {
                        break;
                    }
                    l.check_abort()?;
                    let loss = l.step(&batch, &[lr; GROUPS])?;
                    obs.on_event(&Event::LrFindStep { i: losses.len() as u32, lr, loss });
                    losses.push(loss);
                    if cyclotron_core::sweep::grid_diverged(losses[0], loss) {
                        return Ok((losses, true));
                    }
                }
                if losses.len() == before {
                    return Err(no_batch());
                }
                epoch += 1;
            }
            Ok((losses, false))
        })
    }
}

fn no_batch() -> Error {
    Error::Invalid {
        what: "data".into(),
        message: "the training split gives no batch; lower data.batch_size".into(),
    }
}
