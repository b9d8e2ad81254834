//! `make bench`'s checkpoint section: the training stall per checkpoint as a fraction of a step,
//! and restore throughput against raw object_store gets from the same store in the same run.
//!
//! The stall is what the training thread spends per checkpoint: sharing the tensors and handing
//! them off ([`hand_off`]), plus any wait of the next update for the copy thread; copying,
//! serialising, hashing and uploading run on other threads while training goes on (their
//! interference shows as `step_ms_uploading`).

use std::time::Instant;

use cyclotron_core::checkpoint::{Blob, CheckpointKind, CheckpointStore, RunLocation};
use cyclotron_core::spec::OptimizerSpec;
use serde::Serialize;
use tch::Device;

use super::state::{hand_off, share_weights_and_optimiser};
use super::uploader::{Pending, Uploader};
use crate::error::Result;
use crate::learner::Learner;
use crate::models::GROUPS;

#[derive(Debug, Clone, Serialize)]
pub struct CheckpointBench {
    pub model: String,
    pub store: String,
    pub checkpoint_mb: f64,
    /// Blobs fetched at once, by restore and by the raw gets alike.
    pub concurrency: usize,
    /// Steps without checkpoints (ms).
    pub step_ms: Vec<f64>,
    /// Steps while uploads run in the background (ms).
    pub step_ms_uploading: Vec<f64>,
    /// Training stall of each checkpoint (ms).
    pub stall_ms: Vec<f64>,
    /// Verified restores per round: list, manifest, every blob fetched and checked against its
    /// sha256 (MB/s).
    pub restore_mb_s: Vec<f64>,
    /// Raw gets of the same blobs per round, as many at once as restore fetches (MB/s).
    pub raw_get_mb_s: Vec<f64>,
    /// restore / raw get, per round.
    pub restore_ratio: Vec<f64>,
}

/// Train `arch` (1000 classes, `side`² inputs) and checkpoint it `checkpoints` times, every
/// `steps_between` steps, to `store`; then `rounds` rounds of a verified restore and raw gets of
/// the same blobs with the same `concurrency`, which goes first alternating round by round.
#[allow(clippy::too_many_arguments)]
pub fn run(
    store: &CheckpointStore,
    arch: &str,
    batch_size: i64,
    side: i64,
    threads: i32,
    checkpoints: usize,
    steps_between: usize,
    (rounds, concurrency): (usize, usize),
) -> Result<CheckpointBench> {
    tch::set_num_threads(threads);
    tch::manual_seed(0);
    let items = crate::metrics::synthetic(1, 3, side as usize, 0);
    let mut l = crate::bench::bench_learner(arch, 64, 1000, (items, 1), Device::Cpu)?;
    l.opt = crate::optim::Optimizer::new(&OptimizerSpec::default(), l.model().parameters());
    let batch = crate::bench::random_batch(batch_size, (3, side), 1000, Device::Cpu);
    let lrs = [0.01; GROUPS];
    let timed_step = |l: &mut Learner| -> Result<f64> {
        let t = Instant::now();
        l.step(&batch, &lrs)?;
        Ok(t.elapsed().as_secs_f64() * 1000.0)
    };
    for _ in 0..2 {
        timed_step(&mut l)?;
    }
    let quiet: Vec<f64> = (0..steps_between.max(5)).map(|_| timed_step(&mut l)).collect::<Result<_>>()?;
    let run = RunLocation::new("bench", "checkpoint");
    let uploader = Uploader::start(store.clone(), 2)?;
    let (mut stalls, mut busy) = (vec![], vec![]);
    for i in 0..checkpoints {
        let t = Instant::now();
        let (model, optim, _) = share_weights_and_optimiser(l.model().vs(), &l.opt);
        let pending = Pending {
            dir: run.checkpoint_dir(i as u64 + 1),
            kind: CheckpointKind::Checkpoint,
            position: (i as u64 + 1, 0, i as u32, None),
            tensors: vec![("model.safetensors".into(), model), ("optim.safetensors".into(), optim)],
            raw: vec![Blob { name: "state.json".into(), data: bytes::Bytes::from("{}") }],
            state: serde_json::Value::Null,
            retention: Some((run.clone(), 1)),
        };
        hand_off(&mut l.opt, pending, &uploader)?;
        let handed = t.elapsed().as_secs_f64() * 1000.0;
        // the next update waits for the copy thread if it has not finished: that wait is stall too
        let waited = l.opt.reader_wait();
        for _ in 0..steps_between {
            busy.push(timed_step(&mut l)?);
        }
        stalls.push(handed + (l.opt.reader_wait() - waited).as_secs_f64() * 1000.0);
    }
    uploader.finish(std::time::Duration::from_secs(600))?;
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .map_err(|e| crate::error::Error::Io { what: "tokio runtime".into(), source: e })?;
    let (mut restore_s, mut raw_s, mut bytes) = (vec![], vec![], 0usize);
    let restore = || -> Result<(f64, Vec<String>, usize)> {
        let t = Instant::now();
        let v = rt.block_on(store.latest_valid(&run))?.ok_or_else(|| crate::error::Error::Checkpoint {
            key: run.prefix(),
            message: "the checkpoint just committed is not there".into(),
        })?;
        let keys = v.blobs.iter().map(|(name, _)| format!("{}/{name}", v.dir)).collect();
        Ok((t.elapsed().as_secs_f64(), keys, v.blobs.iter().map(|(_, b)| b.len()).sum()))
    };
    let (_, keys, _) = restore()?;
    let raw = |keys: &[String]| -> Result<f64> {
        let t = Instant::now();
        rt.block_on(raw_gets(store, keys, concurrency))?;
        Ok(t.elapsed().as_secs_f64())
    };
    for round in 0..rounds.max(1) {
        if round % 2 == 0 {
            let (s, _, n) = restore()?;
            restore_s.push(s);
            bytes = n;
            raw_s.push(raw(&keys)?);
        } else {
            raw_s.push(raw(&keys)?);
            let (s, _, n) = restore()?;
            restore_s.push(s);
            bytes = n;
        }
    }
    let mb = bytes as f64 / 1e6;
    Ok(CheckpointBench {
        model: arch.into(),
        store: store.url().into(),
        checkpoint_mb: mb,
        concurrency,
        step_ms: quiet,
        step_ms_uploading: busy,
        stall_ms: stalls,
        restore_mb_s: restore_s.iter().map(|s| mb / s).collect(),
        raw_get_mb_s: raw_s.iter().map(|s| mb / s).collect(),
        restore_ratio: raw_s.iter().zip(&restore_s).map(|(raw, restore)| raw / restore).collect(),
    })
}

/// Fetch `keys` unverified, `concurrency` at a time (as restore fetches a checkpoint's blobs).
async fn raw_gets(store: &CheckpointStore, keys: &[String], concurrency: usize) -> Result<()> {
    for window in keys.chunks(concurrency.max(1)) {
        let mut set = tokio::task::JoinSet::new();
        for key in window {
            let (store, key) = (store.clone(), key.clone());
            set.spawn(async move { store.read_raw(&key).await.map(|b| b.len()) });
        }
        while let Some(done) = set.join_next().await {
            done.map_err(|e| crate::error::Error::Checkpoint {
                key: "raw get".into(),
                message: e.to_string(),
            })??;
        }
    }
    Ok(())
}
