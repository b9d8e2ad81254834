//! The child's side of the event stream: an [`Observer`] that turns learner and job events into
//! [`TrainEvent`] lines (`cyclotron train --events-jsonl PATH|-`), and the classification of a
//! failed run as permanent (a restart cannot help) or transient.

use std::io::Write;

use cyclotron_core::events::TrainEvent;

use crate::event::{Event, Observer};
use crate::Error;

/// Writes one JSON object per line for every stage start, LR-range test, epoch, snapshot and
/// resume; flushed per line so a reader sees each as it happens.
pub struct EventsJsonl {
    out: Box<dyn Write + Send>,
    stage: usize,
}

impl EventsJsonl {
    pub fn new(out: Box<dyn Write + Send>) -> Self {
        EventsJsonl { out, stage: 0 }
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
    fn observer_writes_one_event_per_line_and_skips_steps() {
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
        assert_eq!(events.len(), 3, "{text}");
        assert!(matches!(events[0], TrainEvent::StageStarted { stage: 1, .. }));
        assert!(matches!(events[1], TrainEvent::Epoch { stage: 1, epoch: 1, step: 10, .. }));
        assert_eq!(events[2], TrainEvent::Failed { permanent: true, message: "data: no images".into() });
    }

    #[test]
    fn bad_input_is_permanent_and_lost_peers_are_not() {
        assert!(is_permanent(&Error::UnknownModel { arch: "x".into() }));
        assert!(is_permanent(&Error::Diverged { stage: 0, step: 3, loss: f64::NAN }));
        assert!(is_permanent(&Error::Core(cyclotron_core::Error::InvalidSpec {
            problems: vec!["p".into()]
        })));
        assert!(!is_permanent(&Error::Io { what: "socket".into(), source: std::io::Error::other("reset") }));
        assert!(!is_permanent(&Error::Checkpoint { key: "k".into(), message: "m".into() }));
        assert!(!is_permanent(&Error::Cancelled));
    }
}
