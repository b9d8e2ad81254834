//! Data-parallel benchmarks for `make bench`, one process per rank: all-reduce bus bandwidth of
//! the TCP ring (peer: `bench/gloo_allreduce.py`) and data-parallel training throughput (peer:
//! `bench/pytorch_ddp.py`), on the same sizes, model, batch and threads as the peers.
//!
//! Bus bandwidth is NCCL-tests' definition: `busbw = algbw · 2(n−1)/n` with `algbw = bytes / time`,
//! which makes ring all-reduces of any world size comparable with the link speed.

use std::time::Instant;

use cyclotron_core::spec::OptimizerSpec;
use serde::Serialize;
use tch::{Device, Kind, Tensor};

use super::GroupSpec;
use crate::collective::{Collective, Local, ReduceOp, Ring, RingConfig};
use crate::error::Result;
use crate::models::{self, GROUPS};
use crate::optim::Optimizer;

#[derive(Debug, Clone, Serialize)]
pub struct AllReduceRow {
    pub mb: usize,
    pub world_size: usize,
    pub iters: usize,
    /// Median seconds per all-reduce.
    pub seconds: f64,
    pub algbw_gb_s: f64,
    pub busbw_gb_s: f64,
}

fn connect(group: &GroupSpec) -> Result<Box<dyn Collective>> {
    group.validate()?;
    if group.world_size == 1 {
        return Ok(Box::new(Local::new()));
    }
    let cfg = RingConfig {
        rank: group.rank,
        world_size: group.world_size,
        peers: group.peers.clone(),
        generation: group.generation,
        timeout: group.timeout,
    };
    Ok(Box::new(Ring::connect(cfg)?))
}

/// Median time of `iters` in-place sum all-reduces of `mb` MiB of f32, for each size.
pub fn allreduce_bandwidth(group: &GroupSpec, sizes_mb: &[usize], iters: usize) -> Result<Vec<AllReduceRow>> {
    let mut c = connect(group)?;
    let n = group.world_size;
    let mut rows = vec![];
    for &mb in sizes_mb {
        let len = (mb << 20) / 4;
        let mut buf: Vec<f32> = (0..len).map(|i| (i % 7) as f32).collect();
        for _ in 0..3 {
            c.all_reduce(&mut buf, ReduceOp::Sum)?;
        }
        let mut times = Vec::with_capacity(iters);
        for _ in 0..iters.max(1) {
            c.barrier()?;
            let t = Instant::now();
            c.all_reduce(&mut buf, ReduceOp::Sum)?;
            times.push(t.elapsed().as_secs_f64());
        }
        times.sort_by(f64::total_cmp);
        let seconds = times[times.len() / 2];
        let algbw = (len * 4) as f64 / seconds / 1e9;
        let busbw = algbw * 2.0 * (n as f64 - 1.0) / n as f64;
        rows.push(AllReduceRow { mb, world_size: n, iters, seconds, algbw_gb_s: algbw, busbw_gb_s: busbw });
    }
    Ok(rows)
}

#[derive(Debug, Clone, Serialize)]
pub struct DdpBench {
    pub model: String,
    pub world_size: usize,
    pub batch_per_rank: i64,
    pub threads: i32,
    pub steps: usize,
    pub device: String,
    /// "ring" or "nccl".
    pub backend: String,
    /// Samples per second over the whole group.
    pub samples_per_s: f64,
}

/// Time `steps` data-parallel training steps (after `warmup`) of `arch` on random 28×28 inputs:
/// the learner's own step ([`super::GradSync::train_step`]) with SGD as `bench/pytorch_ddp.py`.
pub fn ddp_throughput(
    group: &GroupSpec,
    (arch, width): (&str, i64),
    batch: i64,
    threads: i32,
    (steps, warmup): (usize, usize),
    device: Device,
) -> Result<DdpBench> {
    tch::set_num_threads(threads);
    tch::manual_seed(group.rank as i64);
    let net = models::build(arch, width, 1, 10, device)?;
    let spec = OptimizerSpec { momentum: 0.9, weight_decay: 5e-4, ..Default::default() };
    let mut opt = Optimizer::new(&spec, net.parameters());
    let mut sync = group.join(device)?;
    sync.broadcast_model(&net)?;
    let x = Tensor::randn([batch, 1, 28, 28], (Kind::Float, device));
    let y = Tensor::randint(10, [batch], (Kind::Int64, device));
    let lrs = [0.01; GROUPS];
    for _ in 0..warmup {
        sync.train_step(&net, &mut opt, &x, &y, &lrs)?;
    }
    let mut barrier = [0.0];
    sync.sum(&mut barrier)?;
    let started = Instant::now();
    for _ in 0..steps {
        sync.train_step(&net, &mut opt, &x, &y, &lrs)?;
    }
    let total = started.elapsed().as_secs_f64();
    let world = group.world_size;
    Ok(DdpBench {
        model: arch.to_string(),
        world_size: world,
        batch_per_rank: batch,
        threads,
        steps,
        device: format!("{device:?}").to_lowercase(),
        backend: sync.backend().into(),
        samples_per_s: (steps * world) as f64 * batch as f64 / total,
    })
}
