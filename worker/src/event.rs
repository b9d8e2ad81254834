//! What training tells the world: the [`Event`]s a learner and a job run emit, and the
//! [`Observer`]s that receive them (progress bars, the event stream to the agent, metrics, the
//! step history for plots). It sits below the learner so that those consumers never import it.

use cyclotron_core::lr_range::LrFindReport;
use cyclotron_core::results::{EpochRecord, Metrics};

/// What the learner tells its observer (progress bars, logs, metrics and the coordinator).
#[derive(Debug, Clone)]
pub enum Event {
    LrFindStart {
        steps: u32,
    },
    LrFindStep {
        i: u32,
        lr: f64,
        loss: f64,
    },
    LrFindEnd {
        report: Box<LrFindReport>,
    },
    EpochStart {
        stage: usize,
        epoch: u32,
        epochs: u32,
        steps: u64,
    },
    /// One optimiser step: `lr` is the schedule's, `lrs` each layer group's; `samples` the items
    /// this rank trained on (images, rows, tokens); `seconds` the step itself, `data_seconds` the
    /// wait for its batch before it, `comm_seconds` the part of the step spent averaging gradients
    /// with the group (which includes waiting for the slowest rank; 0 alone).
    Step {
        stage: usize,
        step: u64,
        loss: f64,
        lr: f64,
        lrs: Vec<f64>,
        samples: u64,
        seconds: f64,
        data_seconds: f64,
        comm_seconds: f64,
    },
    EpochEnd {
        record: EpochRecord,
    },
    /// A long step outside training starts (`done: false`) or ends: "loading data", "uploading
    /// checkpoints".
    Phase {
        what: &'static str,
        done: bool,
    },
    /// From the job run: a stage begins (or continues at `from_epoch` after a resume).
    StageStart {
        stage: usize,
        name: String,
        epochs: u64,
        from_epoch: u32,
    },
    /// From the job run: the job continued from the committed checkpoint `checkpoint`.
    Resumed {
        stage: usize,
        epoch: u32,
        step: u64,
        checkpoint: String,
    },
    /// From the job run: a snapshot was handed to the uploader (`url`: its folder in the store).
    Snapshot {
        index: usize,
        stage: usize,
        cycle: u32,
        epoch: u32,
        /// Its scores on the evaluation split.
        metrics: Metrics,
        url: String,
    },
}

pub trait Observer {
    fn on_event(&mut self, event: &Event);
}

/// An observer that ignores everything.
#[derive(Debug, Default)]
pub struct Quiet;
impl Observer for Quiet {
    fn on_event(&mut self, _: &Event) {}
}

/// Runs `f` between the start and end events of phase `what` (progress spinners).
pub fn phase<T, E>(
    obs: &mut dyn Observer,
    what: &'static str,
    f: impl FnOnce() -> Result<T, E>,
) -> Result<T, E> {
    obs.on_event(&Event::Phase { what, done: false });
    let r = f();
    obs.on_event(&Event::Phase { what, done: true });
    r
}
