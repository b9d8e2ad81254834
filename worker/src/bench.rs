//! Throughput of the engine's training step on synthetic data, for `make bench`: the same model,
//! batch size, thread count and optimiser as the PyTorch peer (`bench/pytorch_step.py`).

use std::time::Instant;

use cyclotron_core::spec::OptimizerSpec;
use serde::Serialize;
use tch::{Device, Kind, Tensor};

use crate::error::Result;
use crate::learner::train_step;
use crate::models::{self, GROUPS};
use crate::optim::Optimizer;

#[derive(Debug, Clone, Serialize)]
pub struct StepBench {
    pub model: String,
    pub batch_size: i64,
    pub threads: i32,
    pub steps: usize,
    pub device: String,
    pub samples_per_s: f64,
    pub step_ms_median: f64,
}

/// Time `steps` training steps (after `warmup`) of `arch` on random [B, C, S, S] inputs.
pub fn step_throughput(
    arch: &str,
    width: i64,
    batch_size: i64,
    threads: i32,
    steps: usize,
    warmup: usize,
    device: Device,
) -> Result<StepBench> {
    tch::set_num_threads(threads);
    tch::manual_seed(0);
    let (channels, side) = if arch == "small_resnet" { (1, 28) } else { (3, 32) };
    let net = models::build(arch, width, channels, 10, device)?;
    let spec = OptimizerSpec { momentum: 0.9, weight_decay: 5e-4, ..Default::default() };
    let mut opt = Optimizer::new(&spec, net.parameters());
    let x = Tensor::randn([batch_size, channels, side, side], (Kind::Float, device));
    let y = Tensor::randint(10, [batch_size], (Kind::Int64, device));
    let lrs = [0.01; GROUPS];
    for _ in 0..warmup {
        train_step(&net, &mut opt, &x, &y, &lrs);
    }
    let mut times = Vec::with_capacity(steps);
    let started = Instant::now();
    for _ in 0..steps {
        let t = Instant::now();
        train_step(&net, &mut opt, &x, &y, &lrs);
        times.push(t.elapsed().as_secs_f64());
    }
    let total = started.elapsed().as_secs_f64();
    times.sort_by(f64::total_cmp);
    Ok(StepBench {
        model: arch.to_string(),
        batch_size,
        threads,
        steps,
        device: format!("{device:?}").to_lowercase(),
        samples_per_s: (steps as f64 * batch_size as f64) / total,
        step_ms_median: 1000.0 * times[times.len() / 2],
    })
}
