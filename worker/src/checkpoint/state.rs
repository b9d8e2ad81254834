//! [`TrainState`] (`state.json`) and the capture / restore of a learner's whole training state.

use bytes::Bytes;
use cyclotron_core::checkpoint::{Blob, CheckpointKind, CheckpointStore, RunLocation};
use cyclotron_core::lr_range::LrFindReport;
use cyclotron_core::results::{EpochRecord, SnapshotResult, StepHistory};
use serde::{Deserialize, Serialize};
use tch::{Device, Tensor};

use super::uploader::Pending;
use crate::error::{Error, Result};
use crate::learner::Learner;
use crate::optim::{NamedTensors, StepCounts};
use crate::tensor_io::{from_safetensors, load_into};

pub const STATE_VERSION: u32 = 1;

/// Everything but tensors that a resume needs. Floats round-trip exactly (serde_json's
/// `float_roundtrip`), so a resumed run's history is bit-for-bit the first part's.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TrainState {
    pub version: u32,
    pub seed: u64,
    /// Optimiser steps over the job.
    pub global_step: u64,
    /// Epochs over the job: the shuffle of the next epoch is `epoch_order(seed, epochs_done)`.
    pub epochs_done: u64,
    /// Stage of the epoch just finished, and epochs done within it (the schedule position is
    /// `stage_epochs × steps_per_epoch` steps into that stage's schedule).
    pub stage: usize,
    pub stage_epochs: u32,
    pub steps_per_epoch: u64,
    /// Adam step counts by parameter.
    pub opt_counts: Vec<(String, i64)>,
    pub lr_finds: Vec<(usize, LrFindReport)>,
    pub epochs: Vec<EpochRecord>,
    pub history: StepHistory,
    /// Snapshots taken so far; their predictions are in `ensemble.safetensors`.
    pub snapshots: Vec<SnapshotResult>,
    /// Seconds the job had run when this checkpoint was taken (its processes' time, not the time
    /// between a stop and the resume): a resumed job's clock goes on from here, so its records of
    /// time to accuracy count the whole job. 0 in checkpoints written before it existed.
    #[serde(default)]
    pub seconds: f64,
}

/// A snapshot's predictions, as the ensemble needs them: class probabilities (or the task's
/// prediction tensor) on the validation and the evaluation split, in each split's order.
pub struct SnapshotProbs {
    pub valid: Tensor,
    pub eval: Tensor,
    /// With test-time augmentation (`[tta]`, a task that augments), on the validation split:
    /// what lets the ensemble choose its members on the predictions it delivers. `None` in
    /// checkpoints written before it was kept.
    pub valid_tta: Option<Tensor>,
    /// With test-time augmentation, on the evaluation split.
    pub eval_tta: Option<Tensor>,
}

impl SnapshotProbs {
    /// The same tensors, shared (for a checkpoint of the predictions held in memory).
    pub fn shallow_clone(&self) -> SnapshotProbs {
        let opt = |t: &Option<Tensor>| t.as_ref().map(|t| t.shallow_clone());
        SnapshotProbs {
            valid: self.valid.shallow_clone(),
            eval: self.eval.shallow_clone(),
            valid_tta: opt(&self.valid_tta),
            eval_tta: opt(&self.eval_tta),
        }
    }
}

/// The snapshots' predictions as `ensemble.safetensors` names them: `{i}.valid`, `{i}.eval`,
/// `{i}.tta` (the evaluation split's, the name it had before validation TTA was kept) and
/// `{i}.valid_tta`.
fn probs_to_named(snapshots: &[SnapshotProbs]) -> Vec<(String, Tensor)> {
    let mut named = vec![];
    for (i, p) in snapshots.iter().enumerate() {
        named.push((format!("{i}.valid"), p.valid.shallow_clone()));
        named.push((format!("{i}.eval"), p.eval.shallow_clone()));
        if let Some(t) = &p.eval_tta {
            named.push((format!("{i}.tta"), t.shallow_clone()));
        }
        if let Some(t) = &p.valid_tta {
            named.push((format!("{i}.valid_tta"), t.shallow_clone()));
        }
    }
    named
}

/// The predictions of snapshots `0..n` back from [`probs_to_named`]'s names; a snapshot without
/// its plain predictions is an error (the TTA ones are optional).
fn probs_from_named(named: &[(String, Tensor)], n: usize) -> std::result::Result<Vec<SnapshotProbs>, String> {
    let get = |k: String| named.iter().find(|(name, _)| *name == k).map(|(_, t)| t.shallow_clone());
    (0..n)
        .map(|i| match (get(format!("{i}.valid")), get(format!("{i}.eval"))) {
            (Some(valid), Some(eval)) => Ok(SnapshotProbs {
                valid,
                eval,
                valid_tta: get(format!("{i}.valid_tta")),
                eval_tta: get(format!("{i}.tta")),
            }),
            _ => Err(format!("predictions of snapshot {i} are missing")),
        })
        .collect()
}

/// A CPU copy that later training steps cannot change.
fn cpu_copy(t: &Tensor) -> Tensor {
    let t = t.detach();
    if t.device() == Device::Cpu {
        t.copy()
    } else {
        t.to_device(Device::Cpu)
    }
}

/// What a checkpoint or snapshot takes of the weights: buffers and frozen weights copied now,
/// trainable parameters shared for [`hand_off`]'s copy thread (see [`share_weights_and_optimiser`]).
pub fn share_weights(vs: &tch::nn::VarStore) -> NamedTensors {
    let _guard = tch::no_grad_guard();
    let mut model: Vec<_> = vs
        .variables()
        .into_iter()
        // detach: a new handle on the same storage, so the copy thread never touches the autograd
        // state that training (freeze_to, backward) changes
        .map(|(n, t)| if t.requires_grad() { (n, t.detach()) } else { (n, cpu_copy(&t)) })
        .collect();
    model.sort_by(|a, b| a.0.cmp(&b.0));
    model
}

/// What a checkpoint takes of the weights and optimiser: buffers (BatchNorm statistics, frozen
/// weights, which a forward pass may change) copied now; trainable parameters and optimiser state
/// shared, to be copied by [`hand_off`]'s thread before the next update changes them.
pub fn share_weights_and_optimiser(
    vs: &tch::nn::VarStore,
    opt: &crate::optim::Optimizer,
) -> (NamedTensors, NamedTensors, StepCounts) {
    let _guard = tch::no_grad_guard();
    let model = share_weights(vs);
    let (optim, counts) = opt.state();
    let optim = optim.into_iter().map(|(n, t)| (n, t.detach())).collect();
    (model, optim, counts)
}

/// Hand a captured checkpoint to the uploader without waiting for its copy: a thread makes the CPU
/// copies of the shared tensors while training goes on (forward and backward only read them),
/// tells `opt` it is done reading, then queues the copies for upload. `opt`'s next update waits
/// only for the copy, never for the queue: when uploads fall behind, it is the *next* hand-off that
/// waits for this one to be queued ([`super::Uploader::track_copy`]), which bounds the copies held
/// in memory to the queue plus one. The stall of a checkpoint on the training thread is this call,
/// plus any wait of the next update for the copy.
pub fn hand_off(opt: &mut crate::optim::Optimizer, p: Pending, uploader: &super::Uploader) -> Result<()> {
    let tx = uploader.sender()?;
    let (copied, copied_rx) = std::sync::mpsc::channel::<()>();
    let copier = std::thread::Builder::new()
        .name("ckpt-copy".into())
        .spawn(move || {
            let mut p = p;
            {
                let _guard = tch::no_grad_guard();
                for (name, tensors) in &mut p.tensors {
                    if name != "ensemble.safetensors" {
                        for (_, t) in tensors.iter_mut() {
                            *t = cpu_copy(t);
                        }
                    }
                }
            }
            let _ = copied.send(());
            // a closed queue means the job is already failing; the uploader reports why
            let _ = tx.send(p);
        })
        .map_err(|e| Error::Io { what: "checkpoint copy thread".into(), source: e })?;
    opt.add_reader(copied_rx);
    uploader.track_copy(copier);
    Ok(())
}

/// Capture the learner's state for an upload (see [`share_weights_and_optimiser`]); give the
/// result to [`hand_off`].
pub fn capture(
    l: &Learner,
    run: &RunLocation,
    mut state: TrainState,
    snapshots: &[SnapshotProbs],
    keep_last: usize,
) -> Pending {
    let (model, optim, counts) = share_weights_and_optimiser(l.model().vs(), &l.opt);
    let ensemble = probs_to_named(snapshots);
    state.opt_counts = counts;
    let position = (state.global_step, state.stage, state.stage_epochs, None);
    Pending {
        dir: run.checkpoint_dir(state.global_step),
        kind: CheckpointKind::Checkpoint,
        position,
        tensors: vec![
            ("model.safetensors".into(), model),
            ("optim.safetensors".into(), optim),
            ("ensemble.safetensors".into(), ensemble),
        ],
        raw: vec![Blob {
            name: "state.json".into(),
            data: Bytes::from(serde_json::to_vec(&state).expect("TrainState serialises")),
        }],
        state: serde_json::json!({
            "global_step": state.global_step, "epochs_done": state.epochs_done,
            "stage": state.stage, "stage_epochs": state.stage_epochs, "seed": state.seed,
        }),
        retention: Some((run.clone(), keep_last)),
    }
}

/// What a resume restored besides the learner itself.
pub struct Restored {
    pub dir: String,
    pub state: TrainState,
    pub snapshots: Vec<SnapshotProbs>,
}

/// Restore `l` from the newest valid checkpoint of `run` (falling back past corrupt ones with one
/// warning); `None` when the run has none. Weights, optimiser state, step and epoch counters are
/// set on the learner; the rest is returned for the job loop.
pub fn restore_latest(
    store: &CheckpointStore,
    run: &RunLocation,
    rt: &tokio::runtime::Runtime,
    l: &mut Learner,
) -> Result<Option<Restored>> {
    let Some(v) = rt.block_on(store.latest_valid(run))? else { return Ok(None) };
    let blob = |name: &str| {
        v.blob(name).ok_or_else(|| Error::Checkpoint {
            key: format!("{}/{name}", v.dir),
            message: "missing from the manifest".into(),
        })
    };
    let state: TrainState = serde_json::from_slice(blob("state.json")?)
        .map_err(|e| Error::Checkpoint { key: format!("{}/state.json", v.dir), message: e.to_string() })?;
    if state.version != STATE_VERSION || state.seed != l.seed {
        return Err(Error::Checkpoint {
            key: format!("{}/state.json", v.dir),
            message: format!(
                "written by state version {} with seed {}; this job has version {STATE_VERSION} and seed {}",
                state.version, state.seed, l.seed
            ),
        });
    }
    let model = from_safetensors(blob("model.safetensors")?, "model.safetensors")?;
    load_into(l.model().vs(), &model, &format!("{}/model.safetensors", v.dir))?;
    let optim = from_safetensors(blob("optim.safetensors")?, "optim.safetensors")?;
    let device = l.device();
    let optim: Vec<(String, Tensor)> = optim.into_iter().map(|(n, t)| (n, t.to_device(device))).collect();
    l.opt.load_state(&optim, &state.opt_counts);
    l.global_step = state.global_step;
    l.epochs_done = state.epochs_done;
    let ens = from_safetensors(blob("ensemble.safetensors")?, "ensemble.safetensors")?;
    let snapshots = probs_from_named(&ens, state.snapshots.len())
        .map_err(|message| Error::Checkpoint { key: format!("{}/ensemble.safetensors", v.dir), message })?;
    tracing::info!(checkpoint = %v.dir, step = state.global_step, epochs = state.epochs_done, "resumed");
    Ok(Some(Restored { dir: v.dir, state, snapshots }))
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use cyclotron_core::spec::OptimizerSpec;
    use tch::Kind;

    use super::*;
    use crate::checkpoint::Uploader;
    use crate::optim::Optimizer;

    #[test]
    fn snapshot_predictions_round_trip_with_and_without_tta() {
        let t = |v: f32| Tensor::from_slice(&[v, 1.0 - v]).view([1, 2]);
        let with =
            SnapshotProbs { valid: t(0.1), eval: t(0.2), valid_tta: Some(t(0.3)), eval_tta: Some(t(0.4)) };
        let without = SnapshotProbs { valid: t(0.5), eval: t(0.6), valid_tta: None, eval_tta: None };
        let named = probs_to_named(&[with, without]);
        let back = probs_from_named(&named, 2).unwrap();
        let first = |o: &Option<Tensor>| o.as_ref().map(|t| t.double_value(&[0, 0]));
        assert_eq!(back[0].valid.double_value(&[0, 0]), t(0.1).double_value(&[0, 0]));
        assert_eq!(back[0].eval.double_value(&[0, 0]), t(0.2).double_value(&[0, 0]));
        assert_eq!(first(&back[0].valid_tta), Some(t(0.3).double_value(&[0, 0])));
        assert_eq!(first(&back[0].eval_tta), Some(t(0.4).double_value(&[0, 0])));
        assert_eq!((first(&back[1].valid_tta), first(&back[1].eval_tta)), (None, None));
        // a checkpoint written before validation TTA was kept: `{i}.tta` is the evaluation split's
        let old: Vec<_> = named.into_iter().filter(|(n, _)| !n.ends_with("valid_tta")).collect();
        let back = probs_from_named(&old, 2).unwrap();
        assert_eq!(first(&back[0].valid_tta), None);
        assert_eq!(first(&back[0].eval_tta), Some(t(0.4).double_value(&[0, 0])));
        let err = probs_from_named(&old, 3).err().unwrap();
        assert!(err.contains("snapshot 2"), "{err}");
    }

    #[test]
    fn handed_off_checkpoint_holds_the_weights_before_the_next_update() {
        let vs = tch::nn::VarStore::new(Device::Cpu);
        let w = vs.root().ones("w", &[1000]);
        let _bn = vs.root().zeros_no_train("running_mean", &[4]);
        let spec = OptimizerSpec { momentum: 0.9, weight_decay: 0.0, ..Default::default() };
        let mut opt = Optimizer::new(&spec, vec![("w".into(), 0, w.shallow_clone())]);
        let store = CheckpointStore::open("memory://").unwrap();
        let uploader = Uploader::start(store.clone(), 1).unwrap();
        let run = RunLocation::new("j", "r");
        for step in 1..=2u64 {
            let (model, optim, _) = share_weights_and_optimiser(&vs, &opt);
            let p = Pending {
                dir: run.checkpoint_dir(step),
                kind: CheckpointKind::Checkpoint,
                position: (step, 0, 0, None),
                tensors: vec![("model.safetensors".into(), model), ("optim.safetensors".into(), optim)],
                raw: vec![],
                state: serde_json::Value::Null,
                retention: None,
            };
            hand_off(&mut opt, p, &uploader).unwrap();
            // the update right after the hand-off changes w: it must wait for the copy
            opt.zero_grad();
            w.sum(Kind::Float).backward();
            opt.step(&[0.5]);
        }
        uploader.finish(Duration::from_secs(30)).unwrap();
        let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
        let read = |step: u64, blob: &str| {
            let dir = run.checkpoint_dir(step);
            let m = rt.block_on(store.manifest(&dir)).unwrap();
            from_safetensors(&rt.block_on(store.read_blob(&dir, &m, blob)).unwrap(), blob).unwrap()
        };
        let w1 = read(1, "model.safetensors");
        let w1 = &w1.iter().find(|(n, _)| n == "w").unwrap().1;
        assert!(
            w1.equal(&Tensor::ones([1000], (Kind::Float, Device::Cpu))),
            "checkpoint 1 saw a later update"
        );
        let w2 = read(2, "model.safetensors");
        let w2 = &w2.iter().find(|(n, _)| n == "w").unwrap().1;
        assert!(w2.equal(&Tensor::full([1000], 0.5, (Kind::Float, Device::Cpu))), "1 − 0.5·1");
        // momentum after one step (buffer = gradient = 1) is in checkpoint 2, not the later 1.9
        let m2 = read(2, "optim.safetensors");
        assert!(m2[0].1.equal(&Tensor::ones([1000], (Kind::Float, Device::Cpu))), "{:?}", m2[0].0);
        assert_eq!(read(1, "optim.safetensors").len(), 0, "no momentum before the first update");
    }
}
