//! The hidden commands a worker agent starts for the coordinator's tasks besides `train`:
//! `sweep-point` (one point of a parallel LR sweep) and `evaluate-runs` (every snapshot of several
//! independent runs), and the task settings they and `train` take (`--seed`, `--candidate`).

use std::path::Path;

use anyhow::Context;
use cyclotron_core::spec::JobSpec;
use cyclotron_core::sweep::{Candidate, Probe};
use cyclotron_worker::agent::events::{Both, EventsJsonl};
use cyclotron_worker::event::Observer;

use crate::{output, progress};

/// What a coordinator task changes in the job spec.
#[derive(clap::Args, Default)]
pub struct TaskArgs {
    /// Train with this seed instead of the spec's (one of several independent runs); the
    /// validation split keeps the spec's seed.
    #[arg(long, hide = true)]
    pub seed: Option<u64>,
    /// A sweep candidate's settings as JSON (`{"batch_size":64}`), applied to the spec.
    #[arg(long, hide = true)]
    pub candidate: Option<String>,
    /// Train this one run only: the cluster runs the job's sweep and its other runs as tasks of
    /// their own (without it, `train` runs all of a sweep/several-runs job in turn).
    #[arg(long, hide = true)]
    pub one_run: bool,
}

impl TaskArgs {
    /// The spec at `path`, loaded and validated, with this task's settings applied.
    pub fn load(&self, path: &Path) -> anyhow::Result<JobSpec> {
        let mut spec = JobSpec::load(path)?;
        if let Some(json) = &self.candidate {
            let c: Candidate = serde_json::from_str(json).with_context(|| format!("--candidate {json}"))?;
            c.apply(&mut spec);
        }
        if let Some(seed) = self.seed {
            spec = spec.with_seed(seed);
        }
        spec.validate()?;
        Ok(spec)
    }
}

/// `--events-jsonl TARGET` opened, and `f` run with the progress bars plus (when given) the event
/// stream as its observer; a failure is reported on the stream (permanent or not) before returning.
pub fn with_events<T>(
    events_jsonl: Option<&str>,
    quiet: bool,
    f: impl FnOnce(&mut dyn Observer) -> cyclotron_worker::Result<T>,
) -> anyhow::Result<T> {
    let mut events = match events_jsonl {
        Some(target) => Some(EventsJsonl::open(target).with_context(|| format!("--events-jsonl {target}"))?),
        None => None,
    };
    let mut bars = progress::Progress::new(quiet);
    let r = match &mut events {
        Some(ev) => f(&mut Both(&mut bars, ev)),
        None => f(&mut bars),
    };
    r.map_err(|e| {
        events.iter_mut().for_each(|ev| ev.failed(&e));
        e.into()
    })
}

/// `cyclotron sweep-point`: run one point, write `OUT/results.json` (rank 0).
pub fn sweep_point(
    job: &Path,
    out: &Path,
    probe: &str,
    task: &TaskArgs,
    events_jsonl: Option<&str>,
    group: Option<cyclotron_worker::distributed::GroupSpec>,
    quiet: bool,
) -> anyhow::Result<()> {
    let probe: Probe = serde_json::from_str(probe).with_context(|| format!("--probe {probe}"))?;
    let writer = group.as_ref().is_none_or(|g| g.is_writer());
    let opts = cyclotron_worker::job::TrainOptions { group, ..Default::default() };
    let report = with_events(events_jsonl, quiet, |obs| {
        let spec = task.load(job).map_err(|e| cyclotron_worker::Error::Invalid {
            what: job.display().to_string(),
            message: crate::error_text::error_chain(&e),
        })?;
        cyclotron_worker::sweep::run_sweep_point(&spec, &probe, &opts, obs)
    })?;
    if writer {
        output::prepare_dir(out)?;
        output::write_json(&out.join("results.json"), &report)?;
    }
    Ok(())
}

/// `cyclotron evaluate-runs`: `--runs id:seed,…`; writes `OUT/results.json` and prints the table.
pub fn evaluate_runs(
    job: &Path,
    out: &Path,
    run: &str,
    runs: &[String],
    task: &TaskArgs,
    events_jsonl: Option<&str>,
    quiet: bool,
) -> anyhow::Result<()> {
    let runs: Vec<(String, u64)> = runs
        .iter()
        .map(|r| {
            let (id, seed) = r.rsplit_once(':').with_context(|| format!("--runs: {r:?} is not RUN:SEED"))?;
            Ok((id.to_string(), seed.parse().with_context(|| format!("--runs: seed of {r:?}"))?))
        })
        .collect::<anyhow::Result<_>>()?;
    let spec = task.load(job)?;
    output::prepare_dir(out)?;
    let results = with_events(events_jsonl, quiet, |obs| {
        cyclotron_worker::evaluate::evaluate_runs(&spec, run, &runs, obs)
    })?;
    crate::cluster_cmd::write_run_dir(out, &results, &spec.output, run)?;
    output::print_results(&results, &spec.output, &spec.name, run);
    Ok(())
}
