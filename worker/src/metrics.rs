//! The worker's Prometheus registry and the hooks that fill it.
//!
//! [`WorkerMetrics`] owns one registry per process (no global registry, so tests and several
//! jobs in one process never fight over it). [`WorkerMetrics::job`] resolves the labels of one
//! job on one rank once, into a [`JobMetrics`] whose handles record without a label lookup;
//! it is handed to the training job in `TrainOptions::metrics`, which records:
//! - through [`Metered`], an [`Observer`] in front of the job's own: loss, per-group learning
//!   rates, samples, steps, step time, data-loading wait, epochs, validation metrics, LR-range
//!   test progress;
//! - through [`CommMetrics`], on the communication thread: seconds and bytes of gradient
//!   all-reduces;
//! - through [`CheckpointMetrics`], on the uploader thread: bytes, seconds and failures of
//!   checkpoint and snapshot commits.
//!
//! Serve the registry with `cyclotron_core::metrics::serve_metrics`.

use std::time::Duration;

use cyclotron_core::metrics::names::{self, LABEL_GROUP, LABEL_JOB, LABEL_RANK};
use prometheus::{
    Counter, CounterVec, Gauge, GaugeVec, Histogram, HistogramOpts, HistogramVec, IntCounter, IntCounterVec,
    IntGauge, IntGaugeVec, Opts, Registry,
};

use crate::event::{Event, Observer};
use crate::models::GROUP_NAMES;

/// Step-time buckets, seconds: a small CPU model's millisecond to a large model's many seconds.
const STEP_BUCKETS: &[f64] =
    &[0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0];
/// Checkpoint-commit buckets, seconds.
const CHECKPOINT_BUCKETS: &[f64] =
    &[0.01, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0];

/// Every worker metric, labelled by job and rank (and group for learning rates).
#[derive(Clone)]
pub struct WorkerMetrics {
    registry: Registry,
    train_loss: GaugeVec,
    learning_rate: GaugeVec,
    samples: IntCounterVec,
    steps: IntCounterVec,
    step_seconds: HistogramVec,
    data_wait_seconds: CounterVec,
    epochs: IntCounterVec,
    valid_loss: GaugeVec,
    valid_accuracy: GaugeVec,
    lr_find_done: IntGaugeVec,
    lr_find_planned: IntGaugeVec,
    allreduce_seconds: CounterVec,
    allreduce_bytes: IntCounterVec,
    checkpoint_bytes: IntCounterVec,
    checkpoint_seconds: HistogramVec,
    checkpoints: IntCounterVec,
    checkpoint_failures: IntCounterVec,
}

impl std::fmt::Debug for WorkerMetrics {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("WorkerMetrics").finish_non_exhaustive()
    }
}

impl Default for WorkerMetrics {
    fn default() -> Self {
        Self::new()
    }
}

/// Registers `c` in `r`. The registry is fresh and every name a distinct constant, so a failure
/// is a programming error (a duplicated or malformed name), caught by the unit tests.
fn register<C: prometheus::core::Collector + Clone + 'static>(r: &Registry, c: C) -> C {
    r.register(Box::new(c.clone())).expect("metric names are distinct constants");
    c
}

impl WorkerMetrics {
    /// A fresh registry holding every worker metric (no series until a job records).
    pub fn new() -> Self {
        let r = Registry::new();
        let jr = &[LABEL_JOB, LABEL_RANK][..];
        let gauge = |name: &str, help: &str, labels: &[&str]| {
            register(&r, GaugeVec::new(Opts::new(name, help), labels).expect("valid metric"))
        };
        let int_gauge = |name: &str, help: &str| {
            register(&r, IntGaugeVec::new(Opts::new(name, help), jr).expect("valid metric"))
        };
        let counter = |name: &str, help: &str| {
            register(&r, CounterVec::new(Opts::new(name, help), jr).expect("valid metric"))
        };
        let int_counter = |name: &str, help: &str| {
            register(&r, IntCounterVec::new(Opts::new(name, help), jr).expect("valid metric"))
        };
        let histogram = |name: &str, help: &str, buckets: &[f64]| {
            let opts = HistogramOpts::new(name, help).buckets(buckets.to_vec());
            register(&r, HistogramVec::new(opts, jr).expect("valid metric"))
        };
        WorkerMetrics {
            train_loss: gauge(names::TRAIN_LOSS, "Training batch loss at the latest step.", jr),
            learning_rate: gauge(
                names::LEARNING_RATE,
                "Learning rate of each layer group at the latest step.",
                &[LABEL_JOB, LABEL_RANK, LABEL_GROUP],
            ),
            samples: int_counter(names::SAMPLES, "Training samples processed by this rank."),
            steps: int_counter(names::STEPS, "Optimiser steps taken by this rank."),
            step_seconds: histogram(
                names::STEP_SECONDS,
                "Time of one training step (forward, backward, gradient sync, update), seconds.",
                STEP_BUCKETS,
            ),
            data_wait_seconds: counter(
                names::DATA_WAIT_SECONDS,
                "Time the training loop waited for its next batch, seconds.",
            ),
            epochs: int_counter(names::EPOCHS, "Training epochs finished."),
            valid_loss: gauge(names::VALID_LOSS, "Validation loss at the latest epoch end.", jr),
            valid_accuracy: gauge(
                names::VALID_ACCURACY,
                "Validation accuracy (0-1) at the latest epoch end.",
                jr,
            ),
            lr_find_done: int_gauge(names::LR_FIND_STEPS_DONE, "Steps done by the latest LR-range test."),
            lr_find_planned: int_gauge(
                names::LR_FIND_STEPS_PLANNED,
                "Steps the latest LR-range test plans at most (it may stop early on divergence).",
            ),
            allreduce_seconds: counter(
                names::ALLREDUCE_SECONDS,
                "Time spent in gradient all-reduce calls, seconds.",
            ),
            allreduce_bytes: int_counter(names::ALLREDUCE_BYTES, "Gradient bytes all-reduced by this rank."),
            checkpoint_bytes: int_counter(
                names::CHECKPOINT_BYTES,
                "Bytes of committed checkpoints and snapshots.",
            ),
            checkpoint_seconds: histogram(
                names::CHECKPOINT_SECONDS,
                "Time to serialise and commit one checkpoint or snapshot, seconds.",
                CHECKPOINT_BUCKETS,
            ),
            checkpoints: int_counter(names::CHECKPOINTS, "Checkpoints and snapshots committed."),
            checkpoint_failures: int_counter(
                names::CHECKPOINT_FAILURES,
                "Checkpoint or snapshot commits that failed after retries.",
            ),
            registry: r,
        }
    }

    /// The registry to serve.
    pub fn registry(&self) -> &Registry {
        &self.registry
    }

    /// The handles of job `job` on rank `rank`; its series appear (at 0) in the exposition now.
    pub fn job(&self, job: &str, rank: usize) -> JobMetrics {
        let rank = rank.to_string();
        let jr = [job, rank.as_str()];
        JobMetrics {
            train_loss: self.train_loss.with_label_values(&jr),
            learning_rates: GROUP_NAMES
                .iter()
                .map(|g| self.learning_rate.with_label_values(&[job, rank.as_str(), g]))
                .collect(),
            samples: self.samples.with_label_values(&jr),
            steps: self.steps.with_label_values(&jr),
            step_seconds: self.step_seconds.with_label_values(&jr),
            data_wait_seconds: self.data_wait_seconds.with_label_values(&jr),
            epochs: self.epochs.with_label_values(&jr),
            valid_loss: self.valid_loss.with_label_values(&jr),
            valid_accuracy: self.valid_accuracy.with_label_values(&jr),
            lr_find_done: self.lr_find_done.with_label_values(&jr),
            lr_find_planned: self.lr_find_planned.with_label_values(&jr),
            comm: CommMetrics {
                seconds: self.allreduce_seconds.with_label_values(&jr),
                bytes: self.allreduce_bytes.with_label_values(&jr),
            },
            checkpoint: CheckpointMetrics {
                bytes: self.checkpoint_bytes.with_label_values(&jr),
                seconds: self.checkpoint_seconds.with_label_values(&jr),
                committed: self.checkpoints.with_label_values(&jr),
                failures: self.checkpoint_failures.with_label_values(&jr),
            },
        }
    }
}

/// One job's metrics on one rank, labels resolved (cheap to clone: shared handles).
#[derive(Clone)]
pub struct JobMetrics {
    train_loss: Gauge,
    /// One per layer group, in [`GROUP_NAMES`] order.
    learning_rates: Vec<Gauge>,
    samples: IntCounter,
    steps: IntCounter,
    step_seconds: Histogram,
    data_wait_seconds: Counter,
    epochs: IntCounter,
    valid_loss: Gauge,
    valid_accuracy: Gauge,
    lr_find_done: IntGauge,
    lr_find_planned: IntGauge,
    /// For the communication thread of a data-parallel rank.
    pub comm: CommMetrics,
    /// For the checkpoint uploader.
    pub checkpoint: CheckpointMetrics,
}

impl std::fmt::Debug for JobMetrics {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("JobMetrics").finish_non_exhaustive()
    }
}

impl JobMetrics {
    /// Records one learner event.
    pub fn record(&self, e: &Event) {
        match e {
            Event::Step { loss, lrs, samples, seconds, data_seconds, .. } => {
                self.train_loss.set(*loss);
                for (g, lr) in self.learning_rates.iter().zip(lrs) {
                    g.set(*lr);
                }
                self.samples.inc_by(*samples);
                self.steps.inc();
                self.step_seconds.observe(*seconds);
                self.data_wait_seconds.inc_by(data_seconds.max(0.0));
            }
            Event::EpochEnd { record } => {
                self.epochs.inc();
                self.valid_loss.set(record.valid.loss);
                self.valid_accuracy.set(record.valid.accuracy);
            }
            Event::LrFindStart { steps } => {
                self.lr_find_planned.set(i64::from(*steps));
                self.lr_find_done.set(0);
            }
            Event::LrFindStep { i, .. } => self.lr_find_done.set(i64::from(*i) + 1),
            Event::LrFindEnd { .. }
            | Event::EpochStart { .. }
            | Event::Phase { .. }
            | Event::StageStart { .. }
            | Event::Resumed { .. }
            | Event::Snapshot { .. } => {}
        }
    }
}

/// Seconds and bytes of gradient all-reduces (recorded by the communication thread).
#[derive(Clone)]
pub struct CommMetrics {
    seconds: Counter,
    bytes: IntCounter,
}

impl std::fmt::Debug for CommMetrics {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CommMetrics").finish_non_exhaustive()
    }
}

impl CommMetrics {
    /// One all-reduce of `bytes` that took `took`.
    pub fn record(&self, took: Duration, bytes: u64) {
        self.seconds.inc_by(took.as_secs_f64());
        self.bytes.inc_by(bytes);
    }
}

/// Commits and failures of checkpoints and snapshots (recorded by the uploader thread).
#[derive(Clone)]
pub struct CheckpointMetrics {
    bytes: IntCounter,
    seconds: Histogram,
    committed: IntCounter,
    failures: IntCounter,
}

impl std::fmt::Debug for CheckpointMetrics {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CheckpointMetrics").finish_non_exhaustive()
    }
}

impl CheckpointMetrics {
    /// One checkpoint of `bytes` committed in `took` (serialisation included).
    pub fn committed(&self, bytes: u64, took: Duration) {
        self.bytes.inc_by(bytes);
        self.seconds.observe(took.as_secs_f64());
        self.committed.inc();
    }

    /// One checkpoint that failed for good.
    pub fn failed(&self) {
        self.failures.inc();
    }
}

/// An [`Observer`] that records every event into a job's metrics (when it has some), then hands
/// it to `inner`. With `None` it only forwards.
pub struct Metered<'a> {
    metrics: Option<JobMetrics>,
    inner: &'a mut dyn Observer,
}

impl<'a> Metered<'a> {
    pub fn new(metrics: Option<JobMetrics>, inner: &'a mut dyn Observer) -> Self {
        Metered { metrics, inner }
    }
}

impl Observer for Metered<'_> {
    fn on_event(&mut self, e: &Event) {
        if let Some(m) = &self.metrics {
            m.record(e);
        }
        self.inner.on_event(e);
    }
}

/// A synthetic data set of `n` random `channels × side × side` images in 10 classes (tests and
/// the metrics-overhead bench).
pub fn synthetic(n: usize, channels: usize, side: usize, seed: u64) -> crate::data::Dataset {
    let mut rng = crate::data::SplitMix64::new(seed);
    let images = (0..n * channels * side * side).map(|_| rng.below(256) as u8).collect();
    let labels = (0..n).map(|_| rng.below(10) as i64).collect();
    let classes = (0..10).map(|c| format!("c{c}")).collect();
    crate::data::Dataset::new(images, (channels, side, side), labels, classes)
}

#[cfg(test)]
mod tests;
