//! One point of a parallel LR sweep, as a worker group runs it (`cyclotron sweep-point`): the
//! job's data and model from the job's seed, so every point of the sweep starts from the same
//! weights and sees the same batches; stage 1's frozen groups and augmentation; then either the
//! whole range test (the ramp) or `steps` steps at one constant LR. The coordinator merges and
//! compares the points ([`cyclotron_core::sweep`]).

use cyclotron_core::lr_range::LrRange;
use cyclotron_core::results::TrainResults;
use cyclotron_core::spec::JobSpec;
use cyclotron_core::sweep::{self, GridPoint, PointReport, Probe};

use crate::error::{Error, Result};
use crate::event::Observer;
use crate::job::{build_learner, join_group, run_train_with, TrainOptions};
use crate::models::GROUPS;

/// Run `probe` on `spec` (a candidate's settings already applied); `opts.group` makes it one rank
/// of a data-parallel group.
pub fn run_sweep_point(
    spec: &JobSpec,
    probe: &Probe,
    opts: &TrainOptions,
    obs: &mut dyn Observer,
) -> Result<PointReport> {
    let spec = &crate::job::rank_spec(spec, opts)?;
    let mut l = build_learner(spec, obs)?;
    join_group(spec, &mut l, opts)?;
    if let Some(first) = spec.stages.first() {
        l.freeze_to(first.frozen_groups(GROUPS));
        l.task.set_augment(first.augment.unwrap_or(true));
    }
    match probe {
        Probe::Range => {
            let f = spec.lr_find.clone().unwrap_or_default();
            let report = l.lr_find(LrRange { start: f.start, end: f.end, steps: f.steps }, obs)?;
            Ok(PointReport::Range { report })
        }
        Probe::Grid { lr, steps } => {
            let init = weights_sha256(&l)?;
            let (losses, stopped) = l.lr_probe(*lr, *steps, obs)?;
            let point = GridPoint { init: Some(init), ..GridPoint::from_losses(*lr, &losses, stopped) };
            Ok(PointReport::Grid { point })
        }
    }
}

/// sha256 of the learner's weights (every variable, by name), as the sweep compares them.
fn weights_sha256(l: &crate::learner::Learner) -> Result<String> {
    let bytes = crate::tensor_io::to_safetensors(&crate::tensor_io::clone_vars(l.model().vs()))?;
    Ok(cyclotron_core::checkpoint::sha256_hex(&bytes))
}

/// Whether `cyclotron train` must run `spec` as [`train_in_order`]: its sweep or its independent
/// runs are separate tasks on a cluster.
pub fn needs_tasks(spec: &JobSpec) -> bool {
    spec.parallel_sweep() || spec.ensemble.runs > 1
}

/// The job's LR sweep on this process, point after point (what a cluster runs in parallel), then
/// concluded as the coordinator does. One range test of the spec as it is without a grid or
/// candidates.
pub fn sweep_in_order(spec: &JobSpec, obs: &mut dyn Observer) -> Result<sweep::SweepOutcome> {
    let f = spec.lr_find.clone().unwrap_or_default();
    let mut reports = vec![];
    for (ci, candidate, probe) in sweep::points(&f) {
        let mut s = spec.clone();
        candidate.apply(&mut s);
        tracing::info!(candidate = %candidate.label(), ?probe, "LR sweep point");
        reports.push((ci, run_sweep_point(&s, &probe, &TrainOptions::default(), obs)?));
    }
    sweep::conclude(&f, &reports, spec.needs_lr())
        .map_err(|message| Error::Invalid { what: "lr_find".into(), message })
}

/// The whole job on this process, its tasks one after another: what a cluster runs in parallel
/// (the sweep's points, then the independent runs, then their evaluation). `run` names the job
/// run in the store; the runs are `<run>-r<i>`.
pub fn train_in_order(
    spec: &JobSpec,
    run: &str,
    opts: &TrainOptions,
    obs: &mut dyn Observer,
) -> Result<TrainResults> {
    if opts.group.is_some() {
        return Err(Error::Invalid {
            what: "--world-size".into(),
            message: "a job with a parallel LR sweep or several runs (lr_find.grid, lr_find.candidates, ensemble.runs) runs its tasks on a cluster: use `cyclotron local --workers N` or `cyclotron submit`".into(),
        });
    }
    let mut chosen = spec.clone();
    let outcome = if spec.parallel_sweep() { Some(sweep_in_order(spec, obs)?) } else { None };
    if let Some(o) = &outcome {
        o.chosen().candidate.apply(&mut chosen);
    }
    let lr_find = outcome.as_ref().map(|o| o.chosen().report.clone());
    let runs = spec.ensemble.runs.max(1);
    let mut results = if runs == 1 {
        run_train_with(&chosen, run, &TrainOptions { lr_find, ..opts.clone() }, obs)?
    } else {
        let ids: Vec<(String, u64)> =
            (0..runs).map(|i| (sweep::run_id(run, i, runs), spec.seed + i as u64)).collect();
        for (id, seed) in &ids {
            let s = chosen.clone().with_seed(*seed);
            run_train_with(&s, id, &TrainOptions { lr_find: lr_find.clone(), ..opts.clone() }, obs)?;
        }
        crate::evaluate::evaluate_runs(&chosen, run, &ids, obs)?
    };
    results.sweep = outcome;
    Ok(results)
}
