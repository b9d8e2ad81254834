//! Throughput of the engine's training step on synthetic data, for `make bench`: the learner's own
//! step (the one every training path takes) with the same model, batch size, thread count and
//! optimiser as the PyTorch peer (`bench/pytorch_step.py`); the head-training speed-up of
//! precompute ([`head_throughput`]); and the cost of Prometheus metrics on the learner's training
//! loop ([`metrics_overhead`]).

use std::time::Instant;

use cyclotron_core::spec::{MemoryFormat, OptimizerSpec, Precision};
use serde::Serialize;
use tch::{Device, Kind, Tensor};

use crate::distributed::GroupSpec;
use crate::error::Result;
use crate::event::{Event, Observer, Quiet};
use crate::learner::Learner;
use crate::models::{self, GROUPS};
use crate::task::image::{ImageClassification, ImageData};
use crate::task::Batch;

#[derive(Debug, Clone, Serialize)]
pub struct StepBench {
    pub model: String,
    pub batch_size: i64,
    pub threads: i32,
    pub steps: usize,
    pub device: String,
    pub precision: Precision,
    /// Whether the model's 4-D weights were channels-last (`[runtime] memory_format`).
    pub channels_last: bool,
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

/// A learner of image classification by `arch` on `train` (1 item of validation data), with the
/// benchmarks' SGD (momentum 0.9, weight decay 5e-4), on `device`.
pub(crate) fn bench_learner(
    arch: &str,
    width: i64,
    classes: i64,
    (train, batch_size): (crate::data::Dataset, usize),
    device: Device,
) -> Result<Learner> {
    let net = models::build(arch, width, train.channels as i64, classes, device)?;
    Ok(learner_of(net, (train, batch_size)))
}

/// A learner of `net` on `train` (1 item of validation data) with the benchmarks' SGD.
fn learner_of(net: models::Net, (train, batch_size): (crate::data::Dataset, usize)) -> Learner {
    let valid = train.take(1);
    let task = ImageClassification::new(net, ImageData::new(train, valid, batch_size, 2), 0, None);
    let spec = OptimizerSpec { momentum: 0.9, weight_decay: 5e-4, ..Default::default() };
    Learner::new(Box::new(task), &spec, 0)
}

/// A batch of `b` random `[c, side, side]` images with labels in `0..classes`, on `device`.
pub(crate) fn random_batch(b: i64, (c, side): (i64, i64), classes: i64, device: Device) -> Batch {
    let x = Tensor::randn([b, c, side, side], (Kind::Float, device));
    Batch::of(x, Tensor::randint(classes, [b], (Kind::Int64, device)))
}

/// Time `steps` training steps (after `warmup`) of `arch` on random [B, C, S, S] inputs: the
/// learner's step on the same batch every time.
/// `module`: the bytes of a TorchScript module (`arch` "torchscript") taking [B, 3, 32, 32].
#[allow(clippy::too_many_arguments)]
pub fn step_throughput(
    arch: &str,
    (width, blocks): (i64, i64),
    batch_size: i64,
    threads: i32,
    steps: usize,
    warmup: usize,
    device: Device,
    module: Option<&[u8]>,
    (precision, memory_format): (Precision, MemoryFormat),
) -> Result<StepBench> {
    tch::set_num_threads(threads);
    tch::manual_seed(0);
    let (channels, side) = synthetic_input(arch);
    let items = crate::metrics::synthetic(1, channels as usize, side as usize, 0);
    let net = match module {
        Some(bytes) => {
            models::build_torchscript(bytes, "bench module", None, [channels, side, side], 10, device)?
        }
        None => models::build_with_blocks(arch, (width, blocks), channels, 10, device)?,
    };
    // as `build_learner` does, before the optimiser exists
    let channels_last = memory_format == MemoryFormat::ChannelsLast;
    if channels_last {
        crate::memory_format::to_channels_last(&net)?;
    }
    let mut l = learner_of(net, (items, 1));
    // resolved once, as `build_learner` does: `auto` is a choice per machine, not per forward pass
    let precision = crate::precision::resolve(precision, device).0;
    l.precision = precision;
    let batch = random_batch(batch_size, (channels, side), 10, device);
    let lrs = [0.01; GROUPS];
    for _ in 0..warmup {
        l.step(&batch, &lrs)?;
    }
    let mut times = Vec::with_capacity(steps);
    let started = Instant::now();
    for _ in 0..steps {
        let t = Instant::now();
        l.step(&batch, &lrs)?;
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
        precision,
        channels_last,
        samples_per_s: (steps as f64 * batch_size as f64) / total,
        step_ms_median: 1000.0 * times[times.len() / 2],
    })
}

/// Head-training throughput of `arch` at `side`×`side` inputs, for `make bench`: samples/s of a
/// step through the frozen network (`full`) and of a step on cached body features (`cached`), and
/// samples/s of the one-off body pass that fills the cache (`precompute`).
#[derive(Debug, Clone, Serialize)]
pub struct HeadBench {
    pub model: String,
    pub side: i64,
    pub batch_size: i64,
    pub threads: i32,
    pub full_samples_per_s: f64,
    pub cached_samples_per_s: f64,
    pub precompute_samples_per_s: f64,
}

/// Time `steps` head-training steps both ways on random data (after one warm-up step each):
/// the learner's step on the image task with the body frozen, then on its precompute task.
pub fn head_throughput(
    arch: &str,
    side: i64,
    batch_size: i64,
    threads: i32,
    steps: usize,
) -> Result<HeadBench> {
    tch::set_num_threads(threads);
    tch::manual_seed(0);
    let items = crate::metrics::synthetic(batch_size as usize, 3, side as usize, 0);
    let mut l = bench_learner(arch, 32, 10, (items, batch_size as usize), Device::Cpu)?;
    l.freeze_to(GROUPS - 1);
    let lrs = [0.01; GROUPS];
    let rate = |t: Instant| (steps as f64 * batch_size as f64) / t.elapsed().as_secs_f64();
    let full_batch = random_batch(batch_size, (3, side), 10, Device::Cpu);
    l.step(&full_batch, &lrs)?;
    let t = Instant::now();
    for _ in 0..steps {
        l.step(&full_batch, &lrs)?;
    }
    let full = rate(t);
    // the body pass that fills a cache, timed on the same batch
    let t = Instant::now();
    let head = l.task.precompute()?;
    for _ in 1..steps {
        drop(l.task.precompute()?);
    }
    let precompute = rate(t);
    let features =
        head.train_batches(0, crate::task::Shard::ALONE)?.next().map(|b| b.inputs[0].shallow_clone());
    let Some(features) = features else {
        return Err(crate::Error::Invalid { what: "bench".into(), message: "no cached batch".into() });
    };
    l.set_task(head);
    let cached_batch = Batch::of(features, full_batch.target.shallow_clone());
    l.step(&cached_batch, &lrs)?;
    let t = Instant::now();
    for _ in 0..steps {
        l.step(&cached_batch, &lrs)?;
    }
    Ok(HeadBench {
        model: arch.into(),
        side,
        batch_size,
        threads,
        full_samples_per_s: full,
        cached_samples_per_s: rate(t),
        precompute_samples_per_s: precompute,
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
    use crate::metrics::{synthetic, Metered, WorkerMetrics};
    tch::set_num_threads(threads);
    tch::manual_seed(0);
    let (channels, side) = synthetic_input(arch);
    let train = synthetic(steps as usize * batch_size, channels as usize, side as usize, 1);
    let valid = synthetic(batch_size, channels as usize, side as usize, 2);
    let net = models::build(arch, width, channels, 10, Device::Cpu)?;
    let task = ImageClassification::new(net, ImageData::new(train, valid, batch_size, 2), 0, None);
    let spec = OptimizerSpec { momentum: 0.9, weight_decay: 5e-4, ..Default::default() };
    let mut l = Learner::new(Box::new(task), &spec, 0);
    let registry = WorkerMetrics::new();
    let metrics = registry.job("bench", 0);
    let sched = cyclotron_core::schedule::Constant { lr: 0.01, steps_per_epoch: steps, epochs: 1 };
    let rounds = rounds.max(1);
    // "on" is what a worker's training child runs: Prometheus metrics, then the event stream to
    // its agent with a step summary about once a second (written to a sink here)
    let mut epoch = |on: bool| -> Result<f64> {
        let mut quiet = Quiet;
        let mut events = crate::agent::events::EventsJsonl::new(Box::new(std::io::sink()));
        let inner: &mut dyn Observer = if on { &mut events } else { &mut quiet };
        let mut obs = Metered::new(on.then(|| metrics.clone()), inner);
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
    let mut events = crate::agent::events::EventsJsonl::new(Box::new(std::io::sink()));
    let mut obs = Metered::new(Some(metrics.clone()), &mut events);
    let started = Instant::now();
    for i in 0..iters {
        let (waited, stepped) = (Instant::now(), Instant::now());
        let e = Event::Step {
            stage: 0,
            step: u64::from(i),
            loss: 1.0 / f64::from(i + 1),
            lr: 0.01,
            lrs: lrs.clone(),
            samples: batch_size as u64,
            seconds: stepped.elapsed().as_secs_f64(),
            data_seconds: waited.elapsed().as_secs_f64(),
            comm_seconds: 0.0,
        };
        Observer::on_event(&mut obs, std::hint::black_box(&e));
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
/// the learner's own step in a group ([`crate::learner::Learner::step`]) with SGD as
/// `bench/pytorch_ddp.py`.
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
    let items = crate::metrics::synthetic(1, 1, 28, 0);
    let mut l = bench_learner(arch, width, 10, (items, 1), device)?;
    l.join(group.join(device)?)?;
    let batch_xy = random_batch(batch, (1, 28), 10, device);
    let lrs = [0.01; GROUPS];
    for _ in 0..warmup {
        l.step(&batch_xy, &lrs)?;
    }
    let mut barrier = [0.0];
    l.grad_average().sum(&mut barrier)?;
    let started = Instant::now();
    for _ in 0..steps {
        l.step(&batch_xy, &lrs)?;
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
        backend: l.grad_average().backend().into(),
        samples_per_s: (steps * world) as f64 * batch as f64 / total,
    })
}

/// Throughput of the language model's training step, for `make bench`: the same model as
/// `bench/pytorch_lm.py` (embedding, `layers` LSTMs, tied decoder, the default dropouts), AdamW with
/// gradient clipping at 0.25, the hidden state carried and detached between windows of `bptt`
/// tokens of a random stream: the learner's own step on the language-model task.
#[derive(Debug, Clone, Serialize)]
pub struct LmBench {
    #[serde(rename = "impl")]
    pub impl_: String,
    pub device: String,
    pub threads: i32,
    pub batch: i64,
    pub bptt: i64,
    pub vocab: i64,
    pub emb: i64,
    pub hidden: i64,
    pub layers: i64,
    pub steps: usize,
    pub tokens_per_s: f64,
    pub step_ms_median: f64,
}

/// Time `steps` language-model steps after `warmup` (see [`LmBench`]).
#[allow(clippy::too_many_arguments)]
pub fn lm_throughput(
    (vocab, emb, hidden, layers): (i64, i64, i64, i64),
    batch: i64,
    bptt: i64,
    threads: i32,
    steps: usize,
    warmup: usize,
    device: Device,
) -> Result<LmBench> {
    use crate::models::lstm::{LanguageModelNet, LstmConfig};
    use crate::task::language_model::{LanguageModel, LmData};
    tch::set_num_threads(threads);
    tch::manual_seed(0);
    let cfg = LstmConfig {
        vocab,
        emb,
        hidden,
        layers,
        embed_dropout: 0.05,
        input_dropout: 0.2,
        hidden_dropout: 0.15,
        output_dropout: 0.25,
    };
    let net = LanguageModelNet::new(tch::nn::VarStore::new(device), cfg);
    let tokenizer = crate::data::text::train_tokenizer(&["a b c".to_string()], 16, 1)?;
    let data = LmData {
        train: std::rc::Rc::new(vec![0; 64]),
        valid: std::rc::Rc::new(vec![0; 64]),
        batch_size: 1,
        bptt: 8,
    };
    let task = LanguageModel::new(net, data, tokenizer, 0);
    let spec = OptimizerSpec {
        kind: cyclotron_core::spec::OptimizerKind::Adamw,
        weight_decay: 0.01,
        clip: Some(0.25),
        ..Default::default()
    };
    let mut l = Learner::new(Box::new(task), &spec, 0);
    let stream = Tensor::randint(vocab, [bptt * (steps + warmup) as i64 + 1, batch], (Kind::Int64, device));
    let lrs = [1e-3; GROUPS];
    let mut times = Vec::with_capacity(steps);
    for i in 0..(warmup + steps) as i64 {
        let t = Instant::now();
        let window = Batch {
            inputs: vec![stream.narrow(0, i * bptt, bptt)],
            target: stream.narrow(0, i * bptt + 1, bptt),
            items: (bptt * batch) as u64,
        };
        l.step(&window, &lrs)?;
        if i >= warmup as i64 {
            times.push(t.elapsed().as_secs_f64());
        }
    }
    let total: f64 = times.iter().sum();
    times.sort_by(f64::total_cmp);
    Ok(LmBench {
        impl_: "cyclotron".into(),
        device: format!("{device:?}").to_lowercase(),
        threads,
        batch,
        bptt,
        vocab,
        emb,
        hidden,
        layers,
        steps,
        tokens_per_s: (steps as i64 * bptt * batch) as f64 / total,
        step_ms_median: 1000.0 * times[times.len() / 2],
    })
}

/// Training throughput of a tabular job (entity embeddings), for `make bench`: the job's own data,
/// model, batch size and optimiser, the learner's step on every batch of whole epochs (batches
/// assembled from the table in the timed loop, as in training), at a constant learning rate. `bench/pytorch_tabular.py`
/// is the peer: it reads this result's `model` and trains the same model on as many rows.
#[derive(Debug, Clone, Serialize)]
pub struct TabularBench {
    #[serde(rename = "impl")]
    pub impl_: String,
    pub threads: i32,
    pub batch_size: usize,
    /// Training rows (an epoch).
    pub rows: usize,
    pub epochs: usize,
    /// What the peer needs to build the same model: embeddings `[rows, width]`, continuous
    /// columns, hidden layers `[width, dropout]`, embedding dropout, outputs, y_range, one_hot,
    /// and the optimiser (kind, weight decay, betas, eps, lr).
    pub model: serde_json::Value,
    /// Rows per second of each timed epoch, median and worst (slowest).
    pub rows_per_s_median: f64,
    pub rows_per_s_worst: f64,
    pub epoch_rows_per_s: Vec<f64>,
}

/// Time `epochs` training epochs of `spec` (a tabular job) after `warmup` untimed ones.
pub fn tabular_throughput(
    spec: &cyclotron_core::spec::JobSpec,
    threads: i32,
    epochs: usize,
    warmup: usize,
    lr: f64,
) -> Result<TabularBench> {
    use crate::task::{Shard, Task};
    let task = crate::task::tabular::build(spec, &mut Quiet)?;
    tch::set_num_threads(threads);
    let Some(builtin) = task.net().builtin() else {
        return Err(crate::error::Error::Invalid {
            what: "model.torchscript".into(),
            message: "bench-tabular times the built-in entity-embedding model against its PyTorch twin; use a job without torchscript".into(),
        });
    };
    let cfg = builtin.config().clone();
    let rows = task.steps_per_epoch(1)? as usize * spec.data.batch_size;
    // Each epoch's batch iterator owns the table and is lazy: batches are assembled in the timed loop.
    let per_epoch: Vec<crate::task::Batches> =
        (0..(warmup + epochs) as u64).map(|e| task.train_batches(e, Shard::ALONE)).collect::<Result<_>>()?;
    let o = &spec.optimizer;
    let model = serde_json::json!({
        "embeddings": cfg.embeddings, "n_cont": cfg.n_cont, "layers": cfg.layers,
        "emb_dropout": cfg.emb_dropout, "outputs": cfg.outputs, "y_range": cfg.y_range,
        "one_hot": cfg.one_hot, "log_target": spec.data.tabular.as_ref().is_some_and(|t| t.log_target),
        "optimizer": { "kind": format!("{:?}", o.kind).to_lowercase(), "weight_decay": o.weight_decay,
                       "betas": o.betas, "eps": o.eps, "momentum": o.momentum, "lr": lr },
    });
    let mut l = Learner::new(Box::new(task), &spec.optimizer, spec.seed);
    let lrs = [lr; GROUPS];
    let mut rates = vec![];
    for (e, batches) in per_epoch.into_iter().enumerate() {
        let started = Instant::now();
        let mut n = 0;
        for b in batches {
            l.step(&b, &lrs)?;
            n += b.items as usize;
        }
        if e >= warmup {
            rates.push(n as f64 / started.elapsed().as_secs_f64());
        }
    }
    let mut sorted = rates.clone();
    sorted.sort_by(f64::total_cmp);
    Ok(TabularBench {
        impl_: "cyclotron".into(),
        threads,
        batch_size: spec.data.batch_size,
        rows,
        epochs,
        model,
        rows_per_s_median: sorted[sorted.len() / 2],
        rows_per_s_worst: sorted[0],
        epoch_rows_per_s: rates,
    })
}
