//! The evaluation of several independent runs of a job (`ensemble.runs = k`, `cyclotron
//! evaluate-runs`): every snapshot of every run is read back from the store (checksums verified),
//! scored alone on the evaluation split (with TTA when the job has it), and the snapshots are
//! averaged — all of them, and the members the job's `[ensemble]` selection picks among all runs
//! on the validation split. The runs share the validation split (`data.split_seed`), so members
//! are never chosen on images a run trained on.

use std::time::Instant;

use cyclotron_core::checkpoint::RunLocation;
use cyclotron_core::results::{RunSummary, TrainResults};
use cyclotron_core::spec::JobSpec;

use crate::error::{Error, Result};
use crate::event::Observer;
use crate::job::scoring::{average_of, ensemble, score_snapshot, SnapshotAt, Taken};
use crate::job::{build_learner, open_store};
use crate::tensor_io::{from_safetensors, load_into};

/// Evaluate the runs `(run id, seed)` of `spec` (a run's results must be in the store: its
/// `results.json`, written when it finished); the job's results go to `<job>/<job_run>/results.json`.
pub fn evaluate_runs(
    spec: &JobSpec,
    job_run: &str,
    runs: &[(String, u64)],
    obs: &mut dyn Observer,
) -> Result<TrainResults> {
    let started = Instant::now();
    let store = open_store(spec)?;
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| Error::Io { what: "tokio runtime".into(), source: e })?;
    let mut reported: Vec<TrainResults> = vec![];
    for (run, _) in runs {
        let key = format!("{}/{run}/results.json", spec.name);
        let bytes = rt.block_on(store.read_raw(&key))?;
        let r: TrainResults = serde_json::from_slice(&bytes).map_err(|e| Error::Invalid {
            what: key.clone(),
            message: format!("not a run's results ({e}); the run may not have finished"),
        })?;
        reported.push(r);
    }
    let l = build_learner(spec, obs)?;

    let mut taken: Vec<Taken> = vec![];
    let mut summaries = vec![];
    for ((run, seed), r) in runs.iter().zip(&reported) {
        let loc = RunLocation::new(&spec.name, run);
        let first = taken.len();
        for s in &r.snapshots {
            let dir = loc.snapshot_dir(s.index);
            let weights = rt.block_on(async {
                let m = store.manifest(&dir).await?;
                store.read_blob(&dir, &m, "model.safetensors").await
            })?;
            load_into(l.model().vs(), &from_safetensors(&weights, &dir)?, &dir)?;
            let at = SnapshotAt {
                index: taken.len(),
                stage: s.stage,
                cycle: s.cycle,
                epoch: s.epoch,
                run: Some(run.clone()),
                step: None,
            };
            let t = score_snapshot(&l, spec.tta.as_ref(), at)?;
            tracing::info!(run = %run, snapshot = s.index, accuracy = t.result.accuracy, "snapshot evaluated");
            taken.push(t);
        }
        summaries.push(RunSummary {
            run: run.clone(),
            seed: *seed,
            final_model: r.final_model,
            ensemble: r.ensemble.clone(),
            snapshots: (first..taken.len()).collect(),
            train_seconds: r.train_seconds,
        });
    }
    let task = l.task.as_ref();
    let all_snapshots =
        (!taken.is_empty()).then(|| average_of(task, &taken, (0..taken.len()).collect(), "all"));
    let ensemble = ensemble(task, &taken, &spec.ensemble);
    let Some(first) = reported.into_iter().next() else {
        return Err(Error::Invalid { what: "evaluate".into(), message: "no runs to evaluate".into() });
    };
    let results = TrainResults {
        job: spec.name.clone(),
        eval_split: task.eval_split().into(),
        snapshots: taken.into_iter().map(|t| t.result).collect(),
        ensemble,
        final_model: first.final_model,
        final_tta: first.final_tta,
        epochs: first.epochs,
        lr_finds: first.lr_finds,
        history: first.history,
        train_seconds: summaries.iter().map(|s| s.train_seconds).sum::<f64>()
            + started.elapsed().as_secs_f64(),
        sweep: None,
        runs: summaries,
        all_snapshots,
    };
    let body = serde_json::to_vec_pretty(&results)
        .map_err(|e| Error::Invalid { what: "results".into(), message: e.to_string() })?;
    rt.block_on(store.put_raw(&format!("{}/{job_run}/results.json", spec.name), body.into()))?;
    Ok(results)
}
