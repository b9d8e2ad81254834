//! What a run tells the coordinator, in order: its progress (one coordinator job event per
//! training event) and how it ended.
//!
//! Progress contract (`ProgressReport.progress_json`): one coordinator job event per report,
//! tagged by `type` (`stage_started`, `lr_find`, `epoch`, `snapshot`; see
//! `cyclotron_coordinator::state::JobEvent`), converted from the child's [`TrainEvent`]s; rank 0
//! sends those for the group. Every rank also sends its step summaries (`steps`, about one a
//! second: step, loss, lr, and its seconds per step, data wait and gradient averaging), which the
//! coordinator keeps in memory for the live view and the straggler summary.
//!
//! Result contract (`ResultReport`): success carries `results.json` as written by rank 0 (other
//! ranks report success with an empty `result_json`); a failure carries the reason and the
//! child's last stderr lines in `error`, and `permanent` when a restart cannot help (invalid
//! spec or data, divergence: the child's `failed` event says so); a crash, a lost peer or a
//! signal is transient and the coordinator restarts the group.

use std::time::Duration;

use cyclotron_core::events::TrainEvent;
use cyclotron_proto::limits::truncate;
use cyclotron_proto::v1::worker_service_client::WorkerServiceClient;
use cyclotron_proto::v1::{ProgressReport, ResultReport};
use tokio::sync::mpsc;

use super::client::{Coordinators, Deadlines};
use super::run::RunKey;

/// What the reporter sends, in order.
pub(crate) enum Report {
    Progress(TrainEvent),
    Result { ok: bool, result_json: String, error: String, permanent: bool },
}

pub(crate) fn failure(permanent: bool, message: String, exit: &str, tail: &[String]) -> Report {
    // long lines of a child's stderr must not make the report too big to be accepted
    let tail: Vec<String> = tail.iter().map(|l| truncate(l, 1024)).collect();
    let mut error = truncate(&message, 16 << 10);
    if !exit.is_empty() && !error.contains(exit) {
        error = format!("{error} (training {exit})");
    }
    if !tail.is_empty() {
        error = format!("{error}\nlast lines:\n{}", tail.join("\n"));
    }
    Report::Result { ok: false, result_json: String::new(), error, permanent }
}

/// The coordinator's form of a training event (`None`: not one it records).
pub fn progress_json(e: &TrainEvent) -> Option<String> {
    use serde_json::json;
    let v = match e {
        TrainEvent::StageStarted { stage, name, epochs, .. } => {
            json!({"type": "stage_started", "stage": stage, "name": name, "epochs": epochs})
        }
        TrainEvent::LrFind { stage, lrs, losses, steep, valley, minimum, still_falling } => json!({
            "type": "lr_find", "stage": stage, "lrs": lrs, "losses": losses,
            "steep": steep, "valley": valley, "minimum": minimum, "still_falling": still_falling,
        }),
        TrainEvent::Epoch { stage, epoch, step, train_loss, valid_loss, valid_accuracy, seconds } => json!({
            "type": "epoch", "stage": stage, "epoch": epoch, "step": step, "train_loss": train_loss,
            "valid_loss": valid_loss, "valid_accuracy": valid_accuracy, "seconds": seconds,
        }),
        TrainEvent::Snapshot { index, stage, cycle, url, .. } => json!({
            "type": "snapshot", "index": index, "stage": stage, "cycle": cycle,
            "manifest_url": format!("{url}/MANIFEST.json"),
        }),
        TrainEvent::Steps { stage, step, steps, loss, lr, step_seconds, data_seconds, comm_seconds } => {
            json!({
                "type": "steps", "stage": stage, "step": step, "steps": steps, "loss": finite(*loss),
                "lr": finite(*lr), "step_seconds": step_seconds, "data_seconds": data_seconds,
                "comm_seconds": comm_seconds,
            })
        }
        TrainEvent::Resumed { .. } | TrainEvent::Failed { .. } => return None,
    };
    Some(v.to_string())
}

/// JSON has no NaN: a diverging loss travels as `null`.
fn finite(x: f64) -> Option<f64> {
    x.is_finite().then_some(x)
}

/// Sends progress and the result in order. Progress is best-effort (bounded retries); the
/// result is retried until acknowledged, refused as stale, or its deadline.
pub(crate) async fn reporter(
    client: Coordinators,
    worker: String,
    session: super::Session,
    key: RunKey,
    mut rx: mpsc::UnboundedReceiver<Report>,
) {
    let progress_client =
        client.with_deadlines(Deadlines::new(Duration::from_secs(5), Duration::from_secs(15)));
    let result_client =
        client.with_deadlines(Deadlines::new(Duration::from_secs(5), Duration::from_secs(120)));
    while let Some(r) = rx.recv().await {
        match r {
            Report::Progress(e) => {
                let Some(progress_json) = progress_json(&e) else { continue };
                let msg = ProgressReport {
                    worker_id: worker.clone(),
                    job_id: key.job.clone(),
                    task: key.task,
                    generation: key.generation,
                    progress_json,
                    session: super::session_of(&session),
                };
                let sent = progress_client
                    .call(|ch| {
                        let req = super::request(msg.clone(), Duration::from_secs(5));
                        async move { WorkerServiceClient::new(ch).report_progress(req).await }
                    })
                    .await;
                if let Err(err) = sent {
                    tracing::warn!(run = %key, "progress report lost: {err}");
                }
            }
            Report::Result { ok, result_json, error, permanent } => {
                let msg = ResultReport {
                    worker_id: worker.clone(),
                    job_id: key.job.clone(),
                    task: key.task,
                    generation: key.generation,
                    ok,
                    result_json,
                    error,
                    permanent,
                    session: super::session_of(&session),
                };
                let sent = result_client
                    .call(|ch| {
                        let req = super::request(msg.clone(), Duration::from_secs(5));
                        async move { WorkerServiceClient::new(ch).report_result(req).await }
                    })
                    .await;
                match sent {
                    Ok(_) => tracing::info!(run = %key, ok, "result reported"),
                    Err(err) => tracing::warn!(run = %key, "result not reported: {err}"),
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn failures_carry_permanence_and_the_last_lines() {
        let Report::Result { ok, result_json, error, permanent } =
            failure(true, "invalid job spec".into(), "exited with status 1", &["line a".into()])
        else {
            panic!("not a result")
        };
        assert!(!ok && permanent && result_json.is_empty());
        assert_eq!(error, "invalid job spec (training exited with status 1)\nlast lines:\nline a");
    }

    #[test]
    fn progress_goes_to_the_coordinator_in_its_event_form() {
        let epoch = TrainEvent::Epoch {
            stage: 0,
            epoch: 1,
            step: 9,
            train_loss: 1.0,
            valid_loss: 1.5,
            valid_accuracy: 0.5,
            seconds: 2.0,
        };
        let v: serde_json::Value = serde_json::from_str(&progress_json(&epoch).unwrap()).unwrap();
        assert_eq!(v["type"], "epoch");
        assert_eq!(v["step"], 9);
        let snap = TrainEvent::Snapshot {
            index: 1,
            stage: 0,
            cycle: 1,
            epoch: 2,
            accuracy: 0.5,
            url: "file:///r/s1".into(),
        };
        let v: serde_json::Value = serde_json::from_str(&progress_json(&snap).unwrap()).unwrap();
        assert_eq!(v["manifest_url"], "file:///r/s1/MANIFEST.json");
        assert!(v.get("accuracy").is_none(), "the coordinator's events have no extra fields");
        let lr = TrainEvent::LrFind {
            stage: 0,
            lrs: vec![1e-3],
            losses: vec![2.0],
            steep: None,
            valley: None,
            minimum: None,
            still_falling: true,
        };
        let v: serde_json::Value = serde_json::from_str(&progress_json(&lr).unwrap()).unwrap();
        assert!(v["steep"].is_null(), "no suggestion travels as null");
        assert_eq!(v["still_falling"], true);
        assert_eq!(progress_json(&TrainEvent::Failed { permanent: true, message: "m".into() }), None);
    }
}
