//! [`JobRun`]: one run of a job spec on this process, in the order it happens: `start` (store,
//! task and learner, the data-parallel group, the checkpoint uploader), `resume` (from the newest
//! valid checkpoint), `run_stage` for each stage (LR-range test, schedule, epochs; a `snapshot`
//! at every cycle end and a `checkpoint` at epoch ends), and `finish` (uploads awaited, the final
//! model, the ensemble, `results.json`).
//!
//! A precompute stage trains the head task ([`crate::task::Task::precompute`]) while the full
//! task waits in `full`; consecutive precompute stages share one cache; anything else (an
//! LR-range test, a later stage, the final scores) runs on the full task.

use std::time::{Duration, Instant};

use cyclotron_core::checkpoint::{Blob, CheckpointKind, CheckpointStore, RunLocation};
use cyclotron_core::lr_range::LrFindReport;
use cyclotron_core::results::{EpochRecord, SoFar, StepHistory, TrainResults};
use cyclotron_core::schedule::SnapshotPoint;
use cyclotron_core::spec::{JobSpec, StageSpec};

use super::scoring::{ensemble, score_snapshot, SnapshotAt, Taken};
use super::{build_learner, join_group, open_store, range_of, TrainOptions};
use crate::checkpoint::{self, Pending, TrainState, Uploader};
use crate::error::{Error, Result};
use crate::event::{phase, Event, Observer};
use crate::learner::{cycle_ends_in, Learner};
use crate::metrics::Metered;
use crate::models::GROUPS;
use crate::task::{Split, Task};

/// The name of the job spec a snapshot keeps beside its weights (JSON).
pub const JOB_SPEC: &str = "job.json";

/// Records the step history for plots, then passes events on (to the metrics, then the caller).
struct Recorder<'o> {
    inner: Metered<'o>,
    history: StepHistory,
}

impl Observer for Recorder<'_> {
    fn on_event(&mut self, e: &Event) {
        if let Event::Step { step, loss, lr, .. } = e {
            self.history.steps.push(*step);
            self.history.losses.push(*loss);
            self.history.lrs.push(*lr);
        }
        self.inner.on_event(e);
    }
}

/// Where a resumed run continues: epochs done in stage `stage`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Position {
    pub stage: usize,
    pub epochs: u32,
}

/// How a stage ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StageEnd {
    Done,
    /// The process trained as many epochs as `stop_after_epochs` asked: [`JobRun::stop`].
    Stopped,
}

/// One run of a job on this process; see the module docs for its life.
pub struct JobRun<'a> {
    spec: &'a JobSpec,
    opts: &'a TrainOptions,
    started: Instant,
    run: RunLocation,
    store: CheckpointStore,
    rt: tokio::runtime::Runtime,
    l: Learner,
    rec: Recorder<'a>,
    uploader: Uploader,
    lr_finds: Vec<(usize, LrFindReport)>,
    epochs: Vec<EpochRecord>,
    taken: Vec<Taken>,
    /// The full task while a precompute stage trains the head on cached features.
    full: Option<Box<dyn Task>>,
    /// The head task of the last precompute stage, kept for a following one (same cache).
    head: Option<Box<dyn Task>>,
    epochs_this_process: u64,
}

impl<'a> JobRun<'a> {
    /// Open the store (an unwritable output fails before an hour of training), build the task and
    /// its learner, join the group, start the uploader.
    pub fn start(
        spec: &'a JobSpec,
        run_id: &str,
        opts: &'a TrainOptions,
        obs: &'a mut dyn Observer,
    ) -> Result<Self> {
        let started = Instant::now();
        // only rank 0 of a data-parallel group writes; the others' writes go to a dropped memory store
        let store = match &opts.group {
            Some(g) if !g.is_writer() => CheckpointStore::open("memory://")?,
            _ => open_store(spec)?,
        };
        let run = RunLocation::new(&spec.name, run_id);
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .map_err(|e| Error::Io { what: "tokio runtime".into(), source: e })?;
        rt.block_on(store.check_access(&run.prefix()))?;
        let mut rec =
            Recorder { inner: Metered::new(opts.metrics.clone(), obs), history: StepHistory::default() };
        let mut l = build_learner(spec, &mut rec)?;
        join_group(spec, &mut l, opts)?;
        let uploader = Uploader::start_with_metrics(
            store.clone(),
            spec.checkpoint.max_pending,
            opts.metrics.as_ref().map(|m| m.checkpoint.clone()),
        )?;
        Ok(JobRun {
            spec,
            opts,
            started,
            run,
            store,
            rt,
            l,
            rec,
            uploader,
            lr_finds: vec![],
            epochs: vec![],
            taken: vec![],
            full: None,
            head: None,
            epochs_this_process: 0,
        })
    }

    /// Continue from the run's newest valid checkpoint: every rank of a group restores the same
    /// one (only rank 0 writes to the store). Returns where training continues.
    pub fn resume(&mut self) -> Result<Position> {
        let read_store = match &self.opts.group {
            Some(g) if !g.is_writer() => open_store(self.spec)?,
            _ => self.store.clone(),
        };
        let Some(r) = checkpoint::restore_latest(&read_store, &self.run, &self.rt, &mut self.l)? else {
            tracing::info!(run = %self.run.prefix(), "no checkpoint to resume from; starting at the beginning");
            return Ok(Position::default());
        };
        self.rec.on_event(&Event::Resumed {
            stage: r.state.stage,
            epoch: r.state.stage_epochs,
            step: r.state.global_step,
            checkpoint: r.dir.clone(),
        });
        self.rec.history = r.state.history;
        self.lr_finds = r.state.lr_finds;
        self.epochs = r.state.epochs;
        self.taken = r
            .state
            .snapshots
            .into_iter()
            .zip(r.snapshots)
            .map(|(result, probs)| Taken { result, probs, step: None })
            .collect();
        // the job's clock goes on from the checkpoint's: its records of time to accuracy count the
        // processes before the stop too (this one's start-up included, the time stopped not)
        let before = Duration::from_secs_f64(r.state.seconds.max(0.0));
        self.started = self.started.checked_sub(before).unwrap_or(self.started);
        Ok(Position { stage: r.state.stage, epochs: r.state.stage_epochs })
    }

    /// Back on the full task (after a precompute stage); its head task is kept for a next one.
    fn restore_full_task(&mut self) {
        if let Some(full) = self.full.take() {
            self.head = Some(self.l.set_task(full));
        }
    }

    /// Train stage `si` from its epoch `from_epoch` (0-based) to its end, or until this process
    /// has trained `stop_after_epochs` epochs.
    pub fn run_stage(&mut self, si: usize, from_epoch: u32) -> Result<StageEnd> {
        let stage: &StageSpec = &self.spec.stages[si];
        if u64::from(from_epoch) >= stage.total_epochs() {
            return Ok(StageEnd::Done);
        }
        self.rec.on_event(&Event::StageStart {
            stage: si,
            name: stage.name.clone().unwrap_or_default(),
            epochs: stage.total_epochs(),
            from_epoch,
        });
        self.restore_full_task();
        if !stage.precompute {
            self.head = None;
        }
        self.l.freeze_to(stage.frozen_groups(GROUPS));
        self.l.task.set_augment(stage.augment.unwrap_or(true) && !stage.precompute);
        if from_epoch == 0 && (stage.lr_find || (si == 0 && self.spec.lr_find.is_some())) {
            // the LR-range test trains through the whole network, never on a cache
            let report = match &self.opts.lr_find {
                Some(swept) if si == 0 && self.spec.lr_find.is_some() => swept.clone(),
                _ => self.l.lr_find(range_of(self.spec).0, &mut self.rec)?,
            };
            self.lr_finds.push((si, report));
        }
        let lr = self.stage_lr(si, stage)?;
        // after the LR-range test, which trains (and restores) the whole frozen network
        if stage.precompute {
            let head = match self.head.take() {
                Some(head) => head,
                None => self.l.task.precompute()?,
            };
            self.full = Some(self.l.set_task(head));
        }
        let spe = self.l.steps_per_epoch()?;
        let peaks = stage.group_peaks(lr, GROUPS);
        let schedule = stage.schedule(lr, spe);
        if from_epoch == 0 {
            self.rec.history.stage_starts.push(self.l.global_step);
        }
        let stage_epochs = schedule.total_steps().div_ceil(spe) as u32;
        for epoch in from_epoch..stage_epochs {
            let record = self.l.train_epoch(si, schedule.as_ref(), &peaks, epoch, &mut self.rec)?;
            self.epochs.push(record);
            let taken_before = self.taken.len();
            for p in cycle_ends_in(schedule.as_ref(), spe, epoch) {
                self.snapshot(si, stage.snapshots(), p)?;
            }
            for t in &self.taken[taken_before..] {
                let s = &t.result;
                let url =
                    format!("{}/{}", self.spec.output.trim_end_matches('/'), self.run.snapshot_dir(s.index));
                self.rec.on_event(&Event::Snapshot {
                    index: s.index,
                    stage: s.stage,
                    cycle: s.cycle,
                    epoch: s.epoch,
                    metrics: s.metrics(),
                    url,
                });
            }
            let every = self.spec.checkpoint.every_epochs;
            if every > 0 && self.l.epochs_done.is_multiple_of(every) {
                self.checkpoint(si, epoch + 1, spe)?;
            }
            self.epochs_this_process += 1;
            if self.opts.stop_after_epochs.is_some_and(|n| self.epochs_this_process >= n) {
                return Ok(StageEnd::Stopped);
            }
        }
        Ok(StageEnd::Done)
    }

    /// Stopped as asked (`stop_after_epochs`): the checkpoints committed, then
    /// [`Error::Stopped`].
    pub fn stop(self) -> Error {
        match self.uploader.finish(Duration::from_secs(self.spec.checkpoint.upload_deadline_s)) {
            Ok(_) => Error::Stopped { epochs: self.epochs_this_process },
            Err(e) => e,
        }
    }

    /// The stage's peak learning rate: its own (scaled for the global batch by
    /// `optimizer.lr_scaling` unless `data.global_batch_size` fixes that batch), or the suggestion of the latest LR-range test (which ran at the
    /// global batch, so it is used as it is).
    fn stage_lr(&self, si: usize, stage: &StageSpec) -> Result<f64> {
        if let Some(lr) = stage.fixed_lr() {
            return Ok(lr * self.spec.fixed_lr_scale(self.l.shard().world));
        }
        let no_test = || Error::Invalid {
            what: format!("stage {}: lr = \"auto\"", si + 1),
            message: "no LR-range test ran before this stage; add [lr_find] or lr_find = true".into(),
        };
        let (_, report) = self.lr_finds.last().ok_or_else(no_test)?;
        report.lr(range_of(self.spec).1.suggestion).ok_or_else(|| Error::Invalid {
            what: format!("stage {}: lr = \"auto\"", si + 1),
            message: format!("the LR-range test gave no suggestion: {}", report.why_no_suggestion()),
        })
    }

    /// A cycle ended at `p`: with snapshots on, commit the weights as snapshot `index` (the same
    /// path as checkpoints: copied off the training thread, uploaded in order, manifest last,
    /// never deleted by retention) and score them.
    fn snapshot(&mut self, si: usize, snapshots_on: bool, p: SnapshotPoint) -> Result<()> {
        self.rec.history.cycle_ends.push((self.l.global_step, snapshots_on));
        if !snapshots_on {
            return Ok(());
        }
        let index = self.taken.len();
        // the validated spec the snapshot was trained with, so it can be used without the job file
        let job = serde_json::to_vec_pretty(self.spec)
            .map_err(|e| Error::Invalid { what: JOB_SPEC.into(), message: e.to_string() })?;
        let state = serde_json::json!({
            "stage": si, "cycle": p.cycle, "epoch": p.epoch, "step": self.l.global_step,
            "seed": self.l.seed, "epochs_done": self.l.epochs_done, "arch": self.spec.model.arch,
        });
        let pending = Pending {
            dir: self.run.snapshot_dir(index),
            kind: CheckpointKind::Snapshot,
            position: (self.l.global_step, si, p.epoch, Some(p.cycle)),
            tensors: vec![("model.safetensors".into(), checkpoint::share_weights(self.l.model().vs()))],
            raw: [("state.json".to_string(), state.to_string().into_bytes()), (JOB_SPEC.to_string(), job)]
                .into_iter()
                .chain(self.l.task.artifacts()?)
                .map(|(name, data)| Blob { name, data: data.into() })
                .collect(),
            state,
            retention: None,
        };
        checkpoint::hand_off(&mut self.l.opt, pending, &self.uploader)?;
        let at = SnapshotAt {
            index,
            stage: si,
            cycle: p.cycle,
            epoch: p.epoch,
            run: None,
            step: Some(self.l.global_step),
        };
        self.taken.push(score_snapshot(&self.l, self.spec.tta.as_ref(), at)?);
        // what the job would deliver if it stopped now: its time to accuracy, point by point
        if let Some(ensemble) = ensemble(self.l.task.as_ref(), &self.taken, &self.spec.ensemble) {
            let seconds = self.started.elapsed().as_secs_f64();
            if let Some(last) = self.taken.last_mut() {
                last.result.so_far = Some(SoFar { seconds, ensemble });
            }
        }
        Ok(())
    }

    /// A periodic checkpoint after `stage_epochs` epochs of stage `si`: CPU copies handed to the
    /// uploader.
    fn checkpoint(&mut self, si: usize, stage_epochs: u32, steps_per_epoch: u64) -> Result<()> {
        let state = TrainState {
            version: checkpoint::state::STATE_VERSION,
            seed: self.l.seed,
            global_step: self.l.global_step,
            epochs_done: self.l.epochs_done,
            stage: si,
            stage_epochs,
            steps_per_epoch,
            opt_counts: vec![],
            lr_finds: self.lr_finds.clone(),
            epochs: self.epochs.clone(),
            history: self.rec.history.clone(),
            snapshots: self.taken.iter().map(|t| t.result.clone()).collect(),
            seconds: self.started.elapsed().as_secs_f64(),
        };
        let probs: Vec<_> = self.taken.iter().map(|t| t.probs.shallow_clone()).collect();
        let pending = checkpoint::capture(&self.l, &self.run, state, &probs, self.spec.checkpoint.keep_last);
        checkpoint::hand_off(&mut self.l.opt, pending, &self.uploader)
    }

    /// Training is over: wait for the uploads (a failure fails the job), score the final model
    /// and the ensemble, write `results.json` to the store.
    pub fn finish(mut self) -> Result<TrainResults> {
        let deadline = Duration::from_secs(self.spec.checkpoint.upload_deadline_s);
        self.restore_full_task();
        let uploader = self.uploader;
        phase(&mut self.rec, "uploading checkpoints", || uploader.finish(deadline))?;
        let l = &self.l;
        // training ended on a snapshot (an SGDR stage's last cycle end): the final model is that
        // snapshot, scored already; otherwise predict (and TTA) the weights now
        let (final_model, final_tta) = match self.taken.last().filter(|t| t.step == Some(l.global_step)) {
            Some(last) => (last.result.metrics(), last.result.tta),
            None => {
                let final_probs = l.predict(Split::Eval)?;
                let metrics = l.task.metrics(&final_probs, Split::Eval);
                let tta = match &self.spec.tta {
                    Some(t) => crate::tta::predict(l, Split::Eval, t, Some(final_probs))?
                        .map(|p| l.task.metrics(&p, Split::Eval)),
                    None => None,
                };
                (metrics, tta)
            }
        };
        let ensemble = ensemble(l.task.as_ref(), &self.taken, &self.spec.ensemble);
        let results = TrainResults {
            job: self.spec.name.clone(),
            eval_split: l.task.eval_split().into(),
            snapshots: self.taken.into_iter().map(|t| t.result).collect(),
            ensemble,
            final_model,
            final_tta,
            epochs: self.epochs,
            lr_finds: self.lr_finds,
            history: self.rec.history,
            train_seconds: self.started.elapsed().as_secs_f64(),
            sweep: None,
            runs: vec![],
            all_snapshots: None,
        };
        let body = serde_json::to_vec_pretty(&results)
            .map_err(|e| Error::Invalid { what: "results".into(), message: e.to_string() })?;
        let key = format!("{}/{}/results.json", self.spec.name, self.run.run);
        self.rt.block_on(self.store.put_raw(&key, body.into()))?;
        Ok(results)
    }
}
