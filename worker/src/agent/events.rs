//! The child's side of the event stream: an [`Observer`] that turns learner and job events into
//! [`TrainEvent`] lines (`cyclotron train --events-jsonl PATH|-`), and the classification of a
//! failed run as permanent (a restart cannot help) or transient. Training steps are summarised:
//! one [`TrainEvent::Steps`] about every [`STEPS_EVERY`], and one before each epoch's end.

use std::io::Write;
use std::time::{Duration, Instant};

use cyclotron_core::events::TrainEvent;

use crate::event::{Event, Observer};
use crate::Error;

/// How often the step summary is written.
pub const STEPS_EVERY: Duration = Duration::from_secs(1);

/// Writes one JSON object per line for every stage start, LR-range test, epoch, snapshot and
/// resume, and a summary of the steps about once a second; flushed per line so a reader sees
/// each as it happens.
pub struct EventsJsonl {
    out: Box<dyn Write + Send>,
    stage: usize,
    window: StepWindow,
    every: Duration,
}

/// The steps since the last summary.
struct StepWindow {
    started: Instant,
    stage: usize,
    step: u64,
    steps: u32,
    loss: f64,
    lr: f64,
    seconds: f64,
    data: f64,
    comm: f64,
}

impl StepWindow {
    fn new() -> Self {
        StepWindow {
            started: Instant::now(),
            stage: 0,
            step: 0,
            steps: 0,
            loss: 0.0,
            lr: 0.0,
            seconds: 0.0,
            data: 0.0,
            comm: 0.0,
        }
    }

    /// The summary of the window (`None` when it is empty); the window starts over.
    fn take(&mut self) -> Option<TrainEvent> {
        if self.steps == 0 {
            self.started = Instant::now();
            return None;
        }
        let n = f64::from(self.steps);
        let e = TrainEvent::Steps {
            stage: self.stage,
            step: self.step,
            steps: self.steps,
            loss: self.loss / n,
            lr: self.lr,
            step_seconds: self.seconds / n,
            data_seconds: self.data / n,
            comm_seconds: self.comm / n,
        };
        *self = StepWindow::new();
        Some(e)
    }
}

impl EventsJsonl {
    pub fn new(out: Box<dyn Write + Send>) -> Self {
        EventsJsonl { out, stage: 0, window: StepWindow::new(), every: STEPS_EVERY }
    }

    /// Summarise the steps this often instead of [`STEPS_EVERY`].
    pub fn with_steps_every(mut self, every: Duration) -> Self {
        self.every = every;
        self
    }

    #[cfg(test)]
    fn with_steps_every_zero(&mut self) {
        self.every = Duration::ZERO;
    }

    /// `-` is stdout; anything else a file (created or truncated).
    pub fn open(target: &str) -> std::io::Result<Self> {
        let out: Box<dyn Write + Send> = if target == "-" {
            Box::new(std::io::stdout())
        } else {
            Box::new(std::fs::File::create(target)?)
        };
        Ok(Self::new(out))
    }

    pub fn emit(&mut self, e: &TrainEvent) {
        let line = e.to_line();
        // a reader that went away must not stop training: the agent notices the exit instead
        if let Err(err) = writeln!(self.out, "{line}").and_then(|_| self.out.flush()) {
            tracing::debug!(%err, "event stream closed");
        }
    }

    /// The run failed: say whether a restart could help.
    pub fn failed(&mut self, e: &Error) {
        self.emit(&TrainEvent::Failed { permanent: is_permanent(e), message: e.to_string() });
    }
}

/// The stream's event for a learner/job event (`stage` tracks the current stage for LR-range tests).
pub fn to_train_event(e: &Event, stage: &mut usize) -> Option<TrainEvent> {
    Some(match e {
        Event::StageStart { stage: s, name, epochs, from_epoch } => {
            *stage = *s;
            TrainEvent::StageStarted {
                stage: *s,
                name: name.clone(),
                epochs: *epochs,
                from_epoch: *from_epoch,
            }
        }
        Event::LrFindEnd { report } => TrainEvent::LrFind {
            stage: *stage,
            lrs: report.lrs.clone(),
            losses: report.losses.clone(),
            steep: report.suggestion.map(|s| s.steep),
            valley: report.suggestion.map(|s| s.valley),
            minimum: report.suggestion.map(|s| s.minimum),
            still_falling: report.still_falling(),
        },
        Event::EpochEnd { record: r } => TrainEvent::Epoch {
            stage: r.stage,
            epoch: r.epoch,
            step: r.step,
            train_loss: r.train_loss,
            valid_loss: r.valid.loss,
            valid_accuracy: r.valid.accuracy,
            seconds: r.seconds,
        },
        Event::Snapshot { index, stage, cycle, epoch, metrics, url } => TrainEvent::Snapshot {
            index: *index,
            stage: *stage,
            cycle: *cycle,
            epoch: *epoch,
            accuracy: metrics.accuracy,
            url: url.clone(),
        },
        Event::Resumed { stage, epoch, step, checkpoint } => {
            TrainEvent::Resumed { stage: *stage, epoch: *epoch, step: *step, checkpoint: checkpoint.clone() }
        }
        Event::LrFindStart { .. }
        | Event::LrFindStep { .. }
        | Event::EpochStart { .. }
        | Event::Step { .. }
        | Event::Phase { .. } => return None,
    })
}

impl Observer for EventsJsonl {
    fn on_event(&mut self, e: &Event) {
        match e {
            Event::Step { stage, step, loss, lr, seconds, data_seconds, comm_seconds, .. } => {
                let w = &mut self.window;
                w.stage = *stage;
                w.step = *step;
                w.steps += 1;
                w.loss += loss;
                w.lr = *lr;
                w.seconds += seconds;
                w.data += data_seconds;
                w.comm += comm_seconds;
                if w.started.elapsed() >= self.every {
                    if let Some(t) = self.window.take() {
                        self.emit(&t);
                    }
                }
            }
            // the step counter is exact at each epoch's end
            Event::EpochEnd { .. } => {
                if let Some(t) = self.window.take() {
                    self.emit(&t);
                }
            }
            _ => {}
        }
        if let Some(t) = to_train_event(e, &mut self.stage) {
            self.emit(&t);
        }
    }
}

/// Two observers as one (progress bars and the event stream).
pub struct Both<'a>(pub &'a mut dyn Observer, pub &'a mut dyn Observer);

impl Observer for Both<'_> {
    fn on_event(&mut self, e: &Event) {
        self.0.on_event(e);
        self.1.on_event(e);
    }
}

/// Whether a run that failed with `e` would fail the same way again (bad spec or data, an unknown
/// model, divergence); the coordinator fails the job instead of restarting the group.
pub fn is_permanent(e: &Error) -> bool {
    use cyclotron_core::Error as Core;
    match e {
        Error::Data(_)
        | Error::Text(_)
        | Error::UnknownModel { .. }
        | Error::Shape { .. }
        | Error::Invalid { .. }
        | Error::Diverged { .. } => true,
        Error::Core(c) => matches!(
            c,
            Core::SpecParse { .. }
                | Core::InvalidSpec { .. }
                | Core::StoreUrl { .. }
                | Core::StoreNotWritable { .. }
                | Core::Access { .. }
        ),
        Error::Collective(_)
        | Error::Torch(_)
        | Error::Checkpoint { .. }
        | Error::Io { .. }
        | Error::Cancelled
        | Error::Stopped { .. } => false,
    }
}

#[cfg(test)]
mod tests {
    use std::sync::{Arc, Mutex};

    use cyclotron_core::results::{EpochRecord, Metrics};

    use super::*;

    #[derive(Clone, Default)]
    struct Buf(Arc<Mutex<Vec<u8>>>);
    impl Write for Buf {
        fn write(&mut self, b: &[u8]) -> std::io::Result<usize> {
            self.0.lock().unwrap().extend_from_slice(b);
            Ok(b.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }

    #[test]
    fn observer_writes_one_event_per_line_and_summarises_steps_at_the_epoch_end() {
        let buf = Buf::default();
        let mut s = EventsJsonl::new(Box::new(buf.clone()));
        s.on_event(&Event::StageStart { stage: 1, name: "sgdr".into(), epochs: 2, from_epoch: 0 });
        s.on_event(&Event::EpochStart { stage: 1, epoch: 0, epochs: 2, steps: 10 });
        s.on_event(&Event::Step {
            stage: 1,
            step: 1,
            loss: 2.0,
            lr: 0.1,
            lrs: vec![0.1],
            samples: 32,
            seconds: 0.01,
            data_seconds: 0.0,
            comm_seconds: 0.0,
        });
        s.on_event(&Event::Phase { what: "loading data", done: false });
        s.on_event(&Event::EpochEnd {
            record: EpochRecord {
                stage: 1,
                epoch: 1,
                step: 10,
                train_loss: 1.5,
                valid: Metrics::classification(1.2, 0.6),
                seconds: 0.5,
            },
        });
        s.failed(&Error::Invalid { what: "data".into(), message: "no images".into() });
        let text = String::from_utf8(buf.0.lock().unwrap().clone()).unwrap();
        let events: Vec<TrainEvent> = text.lines().map(|l| TrainEvent::from_line(l).unwrap()).collect();
        assert_eq!(events.len(), 4, "{text}");
        assert!(matches!(events[0], TrainEvent::StageStarted { stage: 1, .. }));
        assert!(matches!(events[1], TrainEvent::Steps { stage: 1, step: 1, steps: 1, .. }), "{text}");
        assert!(matches!(events[2], TrainEvent::Epoch { stage: 1, epoch: 1, step: 10, .. }));
        assert_eq!(events[3], TrainEvent::Failed { permanent: true, message: "data: no images".into() });
    }

    fn step(step: u64, loss: f64, seconds: f64, comm_seconds: f64) -> Event {
        Event::Step {
            stage: 0,
            step,
            loss,
            lr: 0.01 * step as f64,
            lrs: vec![0.1],
            samples: 8,
            seconds,
            data_seconds: 0.5 * seconds,
            comm_seconds,
        }
    }

    #[test]
    fn step_summaries_average_their_window_and_start_over() {
        let buf = Buf::default();
        let mut s = EventsJsonl::new(Box::new(buf.clone())).with_steps_every(Duration::from_secs(3600));
        s.on_event(&step(1, 2.0, 0.2, 0.1));
        s.on_event(&step(2, 1.0, 0.4, 0.0));
        assert!(buf.0.lock().unwrap().is_empty(), "summaries wait for their interval");
        s.with_steps_every_zero();
        s.on_event(&step(3, 4.0, 0.6, 0.2));
        s.on_event(&step(4, 6.0, 0.2, 0.1));
        let text = String::from_utf8(buf.0.lock().unwrap().clone()).unwrap();
        let events: Vec<TrainEvent> = text.lines().map(|l| TrainEvent::from_line(l).unwrap()).collect();
        let TrainEvent::Steps { step, steps, loss, lr, step_seconds, data_seconds, comm_seconds, .. } =
            events[0]
        else {
            panic!("{text}")
        };
        assert_eq!((step, steps), (3, 3), "{text}");
        assert!((loss - 7.0 / 3.0).abs() < 1e-12 && (lr - 0.03).abs() < 1e-12, "{text}");
        assert!((step_seconds - 0.4).abs() < 1e-12 && (data_seconds - 0.2).abs() < 1e-12, "{text}");
        assert!((comm_seconds - 0.1).abs() < 1e-12, "{text}");
        assert!(matches!(events[1], TrainEvent::Steps { step: 4, steps: 1, .. }), "{text}");
        assert_eq!(events.len(), 2, "{text}");
    }

    #[test]
    fn bad_input_is_permanent_and_lost_peers_are_not() {
        assert!(is_permanent(&Error::UnknownModel { arch: "x".into() }));
        assert!(is_permanent(&Error::Diverged { stage: 0, step: 3, loss: f64::NAN, split: "training" }));
        assert!(is_permanent(&Error::Core(cyclotron_core::Error::InvalidSpec {
            problems: vec!["p".into()]
        })));
        assert!(!is_permanent(&Error::Io { what: "socket".into(), source: std::io::Error::other("reset") }));
        assert!(!is_permanent(&Error::Checkpoint { key: "k".into(), message: "m".into() }));
        assert!(!is_permanent(&Error::Cancelled));
    }
}
