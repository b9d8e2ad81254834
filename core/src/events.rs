//! Training progress as a stream of events: what `cyclotron train --events-jsonl` writes (one JSON
//! object per line), what a worker forwards to the coordinator as `ProgressReport.progress_json`
//! (one event per report), and what the coordinator turns into `JobEvent`s for `watch`.
//!
//! The wire form is internally tagged: `{"type":"epoch","stage":0,"epoch":1,...}`. Stages,
//! epochs and snapshot indices are 0-based here, as in `results.json`; printing adds one.

use serde::{Deserialize, Serialize};

/// One thing that happened in a training run.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum TrainEvent {
    /// A stage begins (or, after a resume, continues at epoch `from_epoch`).
    StageStarted { stage: usize, name: String, epochs: u64, from_epoch: u32 },
    /// An LR-range test ended (`stage`: the stage it runs before).
    LrFind {
        stage: usize,
        lrs: Vec<f64>,
        losses: Vec<f64>,
        /// Suggestions; absent when the test diverged at once.
        steep: Option<f64>,
        valley: Option<f64>,
        minimum: Option<f64>,
        /// Whether the loss was still falling at the range's end (`minimum_or_valley` then takes
        /// `valley`), judged by the worker on the raw losses this event does not carry.
        #[serde(default)]
        still_falling: bool,
    },
    /// An epoch ended (`epoch`: epochs completed within its stage; `step`: global step).
    Epoch {
        stage: usize,
        epoch: u32,
        step: u64,
        #[serde(with = "crate::serde_nan")]
        train_loss: f64,
        #[serde(with = "crate::serde_nan")]
        valid_loss: f64,
        /// NaN (`null`) for tasks without classes (a language model).
        #[serde(with = "crate::serde_nan")]
        valid_accuracy: f64,
        seconds: f64,
    },
    /// A snapshot was handed to the checkpoint uploader (`url`: its folder, the store URL joined
    /// with the key; committed once `url/MANIFEST.json` exists).
    Snapshot {
        index: usize,
        stage: usize,
        cycle: u32,
        epoch: u32,
        /// NaN (`null`) for tasks without classes.
        #[serde(with = "crate::serde_nan")]
        accuracy: f64,
        url: String,
    },
    /// The training steps since the previous summary (about one a second, every rank): the global
    /// step reached, how many steps the window held, their mean loss, the schedule's last learning
    /// rate, and this rank's mean seconds per step: the whole step, the wait for its batch before
    /// it, and gradient averaging within it (waiting for the slowest peer shows up there). What
    /// the coordinator's live view and straggler summary are made of; not committed.
    Steps {
        stage: usize,
        step: u64,
        steps: u32,
        #[serde(with = "crate::serde_nan")]
        loss: f64,
        lr: f64,
        step_seconds: f64,
        data_seconds: f64,
        comm_seconds: f64,
    },
    /// The run continued from a committed checkpoint instead of starting over.
    Resumed { stage: usize, epoch: u32, step: u64, checkpoint: String },
    /// The run failed; `permanent` when a restart cannot help (invalid spec or data, divergence).
    Failed { permanent: bool, message: String },
}

impl TrainEvent {
    /// One line of the event stream (no newline).
    pub fn to_line(&self) -> String {
        // serialising plain data into a String cannot fail; non-finite floats become null
        serde_json::to_string(self).unwrap_or_else(|e| format!(r#"{{"type":"invalid","message":"{e}"}}"#))
    }

    /// Parse one line; `None` for lines that are not events (a child's other output).
    pub fn from_line(line: &str) -> Option<TrainEvent> {
        let line = line.trim();
        if !line.starts_with('{') {
            return None;
        }
        serde_json::from_str(line).ok()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn events_round_trip_through_one_tagged_line() {
        let events = vec![
            TrainEvent::StageStarted { stage: 1, name: "sgdr".into(), epochs: 3, from_epoch: 0 },
            TrainEvent::LrFind {
                stage: 0,
                lrs: vec![1e-5, 1e-1],
                losses: vec![2.3, 1.9],
                steep: Some(1e-3),
                valley: None,
                minimum: Some(1e-2),
                still_falling: true,
            },
            TrainEvent::Epoch {
                stage: 0,
                epoch: 2,
                step: 40,
                train_loss: 0.5,
                valid_loss: 0.6,
                valid_accuracy: 0.8,
                seconds: 1.5,
            },
            TrainEvent::Snapshot {
                index: 0,
                stage: 0,
                cycle: 0,
                epoch: 1,
                accuracy: 0.7,
                url: "file:///s/0".into(),
            },
            TrainEvent::Resumed { stage: 0, epoch: 1, step: 20, checkpoint: "ckpt".into() },
            TrainEvent::Failed { permanent: true, message: "bad".into() },
        ];
        for e in events {
            let line = e.to_line();
            assert!(!line.contains('\n'), "{line}");
            assert_eq!(TrainEvent::from_line(&line), Some(e));
        }
        assert!(TrainEvent::to_line(&TrainEvent::Failed { permanent: false, message: "x".into() })
            .starts_with(r#"{"type":"failed""#));
    }

    #[test]
    fn other_lines_are_not_events() {
        assert_eq!(TrainEvent::from_line("stage 1 epoch 1: train loss 0.5"), None);
        assert_eq!(TrainEvent::from_line(""), None);
        assert_eq!(TrainEvent::from_line(r#"{"type":"unheard_of"}"#), None);
        assert_eq!(TrainEvent::from_line(r#"{"not":"an event"}"#), None);
    }
}
