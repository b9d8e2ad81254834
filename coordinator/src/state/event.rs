//! A job's event log: what `WatchJob` streams. Workers send the training events (stage started,
//! LR-range curve, epoch metrics, snapshot saved) as `ProgressReport.progress_json`, one
//! [`JobEvent`] tagged by `type`, e.g. `{"type":"epoch","stage":1,"epoch":2,"step":900,
//! "train_loss":0.41,"valid_loss":0.38,"valid_accuracy":0.86,"seconds":12.5}`; the state machine
//! adds task started / restarted and the final `ended` event itself. Events are committed, so a
//! new leader streams the same log.
//!
//! Floats that are not finite (a diverged LR-range test) travel as JSON `null` and read back as
//! NaN: raft entries are JSON, which has no NaN.

use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case", deny_unknown_fields)]
pub enum JobEvent {
    StageStarted {
        stage: u32,
        #[serde(default)]
        name: String,
        epochs: u64,
        /// Which task reported it, when the job runs several (`run 1`, `sweep 3`); set by the
        /// state machine.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        from: Option<String>,
    },
    LrFind {
        stage: u32,
        lrs: Vec<f64>,
        #[serde(with = "cyclotron_core::serde_nan::vec")]
        losses: Vec<f64>,
        #[serde(with = "cyclotron_core::serde_nan")]
        steep: f64,
        #[serde(with = "cyclotron_core::serde_nan")]
        valley: f64,
        #[serde(with = "cyclotron_core::serde_nan")]
        minimum: f64,
        /// The worker's judgement of whether the loss was still falling at the range's end (on the
        /// raw losses, which the event does not carry); `None` in events of older workers, whose
        /// `losses` are judged instead.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        still_falling: Option<bool>,
        /// Which task reported it, when the job runs several (`run 1`, `sweep 3`); set by the
        /// state machine.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        from: Option<String>,
    },
    Epoch {
        stage: u32,
        epoch: u32,
        step: u64,
        #[serde(with = "cyclotron_core::serde_nan")]
        train_loss: f64,
        #[serde(with = "cyclotron_core::serde_nan")]
        valid_loss: f64,
        #[serde(with = "cyclotron_core::serde_nan")]
        valid_accuracy: f64,
        #[serde(with = "cyclotron_core::serde_nan")]
        seconds: f64,
        /// Which task reported it, when the job runs several (`run 1`, `sweep 3`); set by the
        /// state machine.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        from: Option<String>,
    },
    Snapshot {
        index: u32,
        stage: u32,
        cycle: u32,
        manifest_url: String,
        /// Which task reported it, when the job runs several (`run 1`, `sweep 3`); set by the
        /// state machine.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        from: Option<String>,
    },
    /// Added by the state machine when the last point of a parallel LR sweep is done: which
    /// candidate trains, at which LR (NaN when no stage takes it), and one line per candidate.
    SweepConcluded {
        chosen: String,
        #[serde(with = "cyclotron_core::serde_nan")]
        lr: f64,
        candidates: Vec<String>,
    },
    /// Added by the state machine when a group starts a task.
    TaskStarted { task: u32, generation: u64, workers: Vec<String> },
    /// Added by the state machine when a group is torn down and the task waits to run again.
    TaskRestarted { task: u32, generation: u64, reason: String },
    /// Added by the state machine when the leader's straggler rule (see `crate::live`) names a
    /// rank of a running group, names another, or no longer names one (`rank: None`).
    Straggler {
        task: u32,
        generation: u64,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        rank: Option<u32>,
        #[serde(default)]
        worker: String,
        /// `compute` or `data`; empty when nobody is named.
        #[serde(default)]
        bound: String,
        summary: String,
    },
    /// The last event of every job: `succeeded`, `failed` or `cancelled`, with the reason.
    Ended { status: String, reason: String },
}

impl JobEvent {
    /// Which task reported it (worker events of a job with several tasks running at once).
    pub fn from(&self) -> Option<&str> {
        match self {
            JobEvent::StageStarted { from, .. }
            | JobEvent::LrFind { from, .. }
            | JobEvent::Epoch { from, .. }
            | JobEvent::Snapshot { from, .. } => from.as_deref(),
            _ => None,
        }
    }

    /// Say which task reported it (no effect on the state machine's own events).
    pub fn set_from(&mut self, label: Option<String>) {
        match self {
            JobEvent::StageStarted { from, .. }
            | JobEvent::LrFind { from, .. }
            | JobEvent::Epoch { from, .. }
            | JobEvent::Snapshot { from, .. } => *from = label,
            _ => {}
        }
    }

    /// Whether a worker may report this event (the others are the state machine's own).
    pub fn is_worker_event(&self) -> bool {
        matches!(
            self,
            JobEvent::StageStarted { .. }
                | JobEvent::LrFind { .. }
                | JobEvent::Epoch { .. }
                | JobEvent::Snapshot { .. }
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn events_parse_from_the_worker_json_and_non_finite_floats_survive_as_null() {
        let e: JobEvent = serde_json::from_str(
            r#"{"type":"lr_find","stage":0,"lrs":[1e-5,1.0],"losses":[2.3,null],"steep":0.01,"valley":0.003,"minimum":null}"#,
        )
        .unwrap();
        let JobEvent::LrFind { losses, minimum, still_falling, .. } = &e else { panic!("{e:?}") };
        assert!(losses[1].is_nan() && minimum.is_nan());
        assert_eq!(*still_falling, None, "an older worker's event has no judgement");
        let text = serde_json::to_string(&e).unwrap();
        assert!(text.contains(r#""losses":[2.3,null]"#), "{text}");
        assert!(serde_json::from_str::<JobEvent>(&text).is_ok());
        assert!(e.is_worker_event());
        let bad = serde_json::from_str::<JobEvent>(r#"{"type":"epoch","stage":0}"#).unwrap_err();
        assert!(bad.to_string().contains("missing field"), "{bad}");
    }
}
