//! One point of a parallel LR sweep, as a worker group runs it (`cyclotron sweep-point`): the
//! job's data and model from the job's seed, so every point of the sweep starts from the same
//! weights and sees the same batches; stage 1's frozen groups and augmentation; then either the
//! whole range test (the ramp) or `steps` steps at one constant LR. The coordinator merges and
//! compares the points ([`cyclotron_core::sweep`]).

use cyclotron_core::lr_range::LrRange;
use cyclotron_core::spec::JobSpec;
use cyclotron_core::sweep::{GridPoint, PointReport, Probe};

use crate::error::Result;
use crate::job::{join_group, learner, load_data, TrainOptions};
use crate::learner::{Event, Observer};
use crate::models::GROUPS;

/// Run `probe` on `spec` (a candidate's settings already applied); `opts.group` makes it one rank
/// of a data-parallel group.
pub fn run_sweep_point(
    spec: &JobSpec,
    probe: &Probe,
    opts: &TrainOptions,
    obs: &mut dyn Observer,
) -> Result<PointReport> {
    obs.on_event(&Event::Phase { what: "loading data", done: false });
    let data = load_data(spec);
    obs.on_event(&Event::Phase { what: "loading data", done: true });
    let data = data?;
    let mut l = learner(spec, &data)?;
    join_group(spec, &mut l, opts)?;
    if let Some(first) = spec.stages.first() {
        l.freeze_to(first.frozen_groups(GROUPS));
        l.augment_train = l.augmenter.is_some() && first.augment.unwrap_or(true);
    }
    match probe {
        Probe::Range => {
            let f = spec.lr_find.clone().unwrap_or_default();
            let report = l.lr_find(LrRange { start: f.start, end: f.end, steps: f.steps }, obs)?;
            Ok(PointReport::Range { report })
        }
        Probe::Grid { lr, steps } => {
            let (losses, stopped) = l.lr_probe(*lr, *steps, obs)?;
            Ok(PointReport::Grid { point: GridPoint::from_losses(*lr, losses, stopped) })
        }
    }
}

