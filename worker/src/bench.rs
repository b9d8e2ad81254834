//! Throughput of the engine's training step on synthetic data, for `make bench`: the same model,
//! batch size, thread count and optimiser as the PyTorch peer (`bench/pytorch_step.py`); and the
//! cost of Prometheus metrics on the learner's training loop ([`metrics_overhead`]).

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

/// Channels and side of the random images a benchmark feeds `arch`: Fashion-MNIST's 1×28×28 for
/// the small models, 3×32×32 for the torchvision ones.
fn synthetic_input(arch: &str) -> (i64, i64) {
    if arch == "small_resnet" || arch == "small_cnn" {
        (1, 28)
    } else {
        (3, 32)
    }
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
    let (channels, side) = synthetic_input(arch);
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

#[derive(Debug, Clone, Serialize)]
pub struct MetricsOverhead {
    pub model: String,
    pub batch_size: usize,
    pub threads: i32,
    pub steps: u64,
    pub rounds: usize,
    /// Median over rounds of the wall time per step, metrics off and on (ms).
    pub step_ms_off: f64,
    pub step_ms_on: f64,
    /// Median over rounds of (on / off) − 1, each round's pair run back to back.
    pub overhead: f64,
    /// What metrics add to one step, timed alone over many iterations (µs): the learner's
    /// always-on instrumentation (two clock reads, the per-group LR copy, the event) plus
    /// recording the event into the registry.
    pub record_us_per_step: f64,
    /// `record_us_per_step` as a fraction of the step without metrics: the overhead without the
    /// machine's noise.
    pub record_fraction_of_step: f64,
}

/// The cost of metrics on the training step: the real learner (`fit`, data loader included)
/// trains the same model on synthetic data for one epoch of `steps` steps per run, alternately
/// without metrics and recording every event into a [`crate::metrics::WorkerMetrics`] registry
/// (which order goes first alternates too), so drift cancels. One warm-up epoch first.
pub fn metrics_overhead(
    arch: &str,
    width: i64,
    batch_size: usize,
    threads: i32,
    steps: u64,
    rounds: usize,
) -> Result<MetricsOverhead> {
    use crate::learner::{DataBundle, Learner, Quiet};
    use crate::metrics::{synthetic, Metered, WorkerMetrics};
    tch::set_num_threads(threads);
    tch::manual_seed(0);
    let (channels, side) = synthetic_input(arch);
    let train = synthetic(steps as usize * batch_size, channels as usize, side as usize, 1);
    let valid = synthetic(batch_size, channels as usize, side as usize, 2);
    let net = models::build(arch, width, channels, 10, Device::Cpu)?;
    let data = DataBundle {
        norm: crate::data::Normalize::from_stats(&train),
        train,
        valid,
        batch_size,
        prefetch: 2,
    };
    let spec = OptimizerSpec { momentum: 0.9, weight_decay: 5e-4, ..Default::default() };
    let mut l = Learner::new(net, &spec, data, Device::Cpu, 0);
    let registry = WorkerMetrics::new();
    let metrics = registry.job("bench", 0);
    let sched = cyclotron_core::schedule::Constant { lr: 0.01, steps_per_epoch: steps, epochs: 1 };
    let rounds = rounds.max(1);
    let mut epoch = |on: bool| -> Result<f64> {
        let mut quiet = Quiet;
        let mut obs = Metered::new(on.then(|| metrics.clone()), &mut quiet);
        let started = Instant::now();
        l.fit(0, &sched, &[0.01; GROUPS], &mut obs, &mut |_, _| Ok(()))?;
        Ok(1000.0 * started.elapsed().as_secs_f64() / steps as f64)
    };
    epoch(true)?;
    let (mut off, mut on, mut ratios) = (vec![], vec![], vec![]);
    for round in 0..rounds {
        let (a, b) = if round % 2 == 0 {
            let a = epoch(false)?;
            (a, epoch(true)?)
        } else {
            let b = epoch(true)?;
            (epoch(false)?, b)
        };
        off.push(a);
        on.push(b);
        ratios.push(b / a - 1.0);
    }
    // the per-step cost alone, many times over: nothing else runs, so noise averages out
    let iters = 200_000u32;
    let lrs = vec![0.01; GROUPS];
    let mut quiet = Quiet;
    let mut obs = Metered::new(Some(metrics.clone()), &mut quiet);
    let started = Instant::now();
    for i in 0..iters {
        let (waited, stepped) = (Instant::now(), Instant::now());
        let e = crate::learner::Event::Step {
            stage: 0,
            step: u64::from(i),
            loss: 1.0 / f64::from(i + 1),
            lr: 0.01,
            lrs: lrs.clone(),
            samples: batch_size as u64,
            seconds: stepped.elapsed().as_secs_f64(),
            data_seconds: waited.elapsed().as_secs_f64(),
        };
        crate::learner::Observer::on_event(&mut obs, std::hint::black_box(&e));
    }
    let record_us_per_step = 1e6 * started.elapsed().as_secs_f64() / f64::from(iters);
    let median = |mut v: Vec<f64>| {
        v.sort_by(f64::total_cmp);
        v[v.len() / 2]
    };
    let step_ms_off = median(off);
    Ok(MetricsOverhead {
        model: arch.to_string(),
        batch_size,
        threads,
        steps,
        rounds,
        step_ms_off,
        step_ms_on: median(on),
        overhead: median(ratios),
        record_us_per_step,
        record_fraction_of_step: record_us_per_step / (1000.0 * step_ms_off),
    })
}
