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
    pub step_ms_median: f64,
    /// Median step while uploads run in the background.
    pub step_ms_uploading: f64,
    pub stall_ms_median: f64,
    pub stall_fraction_of_step: f64,
    /// Verified restore: list, manifest, every blob fetched and checked against its sha256.
    pub restore_mb_s: f64,
    pub raw_get_mb_s: f64,
    pub restore_ratio: f64,
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

/// Train `arch` (1000 classes, `side`² inputs) and checkpoint it `checkpoints` times, every
/// `steps_between` steps, to `store`; then time restores against raw gets.
#[allow(clippy::too_many_arguments)]
pub fn run(
    store: &CheckpointStore,
    arch: &str,
    batch_size: i64,
    side: i64,
    threads: i32,
    checkpoints: usize,
    steps_between: usize,
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
    let quiet: Vec<f64> = (0..steps_between.max(3)).map(|_| timed_step(&mut l)).collect::<Result<_>>()?;
    let run = RunLocation::new("bench", "checkpoint");
    let uploader = Uploader::start(store.clone(), 2)?;
    let (mut stalls, mut busy, mut bytes) = (vec![], vec![], 0usize);
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
    // alternate raw and verified reads, best of three each, so neither gets the warm cache alone
    let (mut raw_best, mut restore_best) = (f64::MAX, f64::MAX);
    for _ in 0..3 {
        let t = Instant::now();
        let v = rt.block_on(store.latest_valid(&run))?.expect("the checkpoint just committed");
        restore_best = restore_best.min(t.elapsed().as_secs_f64());
        bytes = v.blobs.iter().map(|(_, b)| b.len()).sum();
        let t = Instant::now();
        for (name, _) in &v.blobs {
            rt.block_on(store.read_raw(&format!("{}/{name}", v.dir)))?;
        }
        raw_best = raw_best.min(t.elapsed().as_secs_f64());
    }
    let mb = bytes as f64 / 1e6;
    let (step, stall) = (median(quiet), median(stalls));
    Ok(CheckpointBench {
        model: arch.into(),
        store: store.url().into(),
        checkpoint_mb: mb,
        step_ms_median: step,
        step_ms_uploading: median(busy),
        stall_ms_median: stall,
        stall_fraction_of_step: stall / step,
        restore_mb_s: mb / restore_best,
        raw_get_mb_s: mb / raw_best,
        restore_ratio: raw_best / restore_best,
    })
}
