//! Following a job's event stream (`watch`, `local`): a progress bar per stage and one line per
//! epoch, LR-range test, snapshot and restart (stderr), or one JSON object per event (stdout).
//! A broken stream (the coordinator died, a new leader is being elected) is resumed from the
//! next event index on any coordinator; the stream is given up after a minute without one.

use std::io::Write;
use std::time::{Duration, Instant};

use cyclotron_proto::v1 as pb;
use cyclotron_proto::v1::job_event::Event;
use cyclotron_proto::v1::job_service_client::JobServiceClient;
use cyclotron_worker::agent::{client, ClientError, Coordinators};
use indicatif::{ProgressBar, ProgressStyle};
use tonic::Code;

/// How long the stream may stay broken before `watch` gives up.
const RECONNECT_DEADLINE: Duration = Duration::from_secs(60);

#[derive(Debug, Clone, Copy)]
pub enum Mode {
    Json,
    Human { quiet: bool },
}

/// How the job ended (its `JobEnded` event).
#[derive(Debug, Clone)]
pub struct JobEnd {
    pub status: String,
    pub reason: String,
}

impl JobEnd {
    /// Success only when the job succeeded; otherwise an error naming the status and reason.
    pub fn into_result(self, job: &str) -> anyhow::Result<()> {
        if self.status == "succeeded" {
            return Ok(());
        }
        let reason = if self.reason.is_empty() { String::new() } else { format!(": {}", self.reason) };
        anyhow::bail!("job {job} {}{reason}", self.status)
    }
}

/// Stream the job's events from the first until it ends.
pub async fn follow(client: &Coordinators, job: &str, mode: Mode) -> anyhow::Result<JobEnd> {
    let mut display = Display::new(mode);
    let mut next = 0u64;
    let mut broken_since: Option<Instant> = None;
    loop {
        let msg = pb::WatchJobRequest { job_id: job.to_string(), from_index: next };
        let opened = client
            .call(|ch| {
                let m = msg.clone();
                async move { JobServiceClient::new(ch).watch_job(m).await }
            })
            .await;
        let mut stream = match opened {
            Ok(s) => s,
            Err(ClientError::Rejected { code: Code::NotFound, message }) => {
                anyhow::bail!("unknown job {job}: {message}")
            }
            Err(e @ ClientError::Rejected { .. }) => return Err(e.into()),
            Err(e) => {
                let since = *broken_since.get_or_insert_with(Instant::now);
                if since.elapsed() > RECONNECT_DEADLINE {
                    return Err(anyhow::Error::new(e).context(format!("watching job {job}")));
                }
                tokio::time::sleep(Duration::from_millis(500)).await;
                continue;
            }
        };
        loop {
            match stream.message().await {
                Ok(Some(ev)) => {
                    broken_since = None;
                    next = ev.index + 1;
                    if let Some(end) = display.show(&ev) {
                        display.finish();
                        return Ok(end);
                    }
                }
                Ok(None) => break,
                Err(status) => {
                    display.note(&format!(
                        "event stream from {} broke ({}); reconnecting",
                        client::host(&client.current()),
                        status.message()
                    ));
                    broken_since.get_or_insert_with(Instant::now);
                    break;
                }
            }
        }
    }
}

struct Display {
    mode: Mode,
    bar: Option<ProgressBar>,
    /// The task whose stage the bar shows (several runs of one job train at once).
    bar_from: String,
}

impl Display {
    fn new(mode: Mode) -> Self {
        Display { mode, bar: None, bar_from: String::new() }
    }

    fn quiet(&self) -> bool {
        matches!(self.mode, Mode::Human { quiet: true })
    }

    /// A line on stderr (above the bar), in human mode.
    fn note(&self, text: &str) {
        match (&self.mode, &self.bar) {
            (Mode::Json, _) | (Mode::Human { quiet: true }, _) => {}
            (_, Some(bar)) if !bar.is_hidden() => bar.println(text),
            _ => eprintln!("{text}"),
        }
    }

    fn finish(&mut self) {
        if let Some(bar) = self.bar.take() {
            bar.finish_and_clear();
        }
    }

    /// Show one event; `Some` for the job's end.
    fn show(&mut self, ev: &pb::JobEvent) -> Option<JobEnd> {
        let Some(event) = &ev.event else { return None };
        if let Mode::Json = self.mode {
            let mut json = event_json(ev.index, event);
            if !ev.from.is_empty() {
                json["from"] = ev.from.clone().into();
            }
            let line = json.to_string();
            let mut out = std::io::stdout().lock();
            let _ = writeln!(out, "{line}").and_then(|_| out.flush());
        }
        let who = if ev.from.is_empty() { String::new() } else { format!("{}: ", ev.from) };
        match event {
            Event::StageStarted(s) => {
                self.finish();
                self.bar_from = ev.from.clone();
                if !matches!(self.mode, Mode::Json) && !self.quiet() {
                    let bar = ProgressBar::new(s.epochs);
                    bar.set_style(
                        ProgressStyle::with_template(
                            "{prefix:>22} [{bar:30}] {pos}/{len} epochs {msg} ({elapsed})",
                        )
                        .unwrap_or_else(|_| ProgressStyle::default_bar())
                        .progress_chars("=> "),
                    );
                    bar.set_prefix(format!("{who}stage {} {}", s.stage + 1, s.name));
                    self.bar = Some(bar);
                }
                let name = if s.name.is_empty() { String::new() } else { format!(" ({})", s.name) };
                self.note(&format!("{who}stage {}{name}: {} epochs", s.stage + 1, s.epochs));
            }
            Event::LrFind(l) => self.note(&format!(
                "{who}lr_find before stage {}: {} points; steep {:.2e}, valley {:.2e}, minimum {:.2e}",
                l.stage + 1,
                l.lrs.len(),
                l.steep,
                l.valley,
                l.minimum
            )),
            Event::Epoch(e) => {
                if let Some(bar) = self.bar.as_ref().filter(|_| self.bar_from == ev.from) {
                    bar.set_position(u64::from(e.epoch));
                    bar.set_message(format!("valid accuracy {:.2}%", 100.0 * e.valid_accuracy));
                }
                self.note(&format!(
                    "{who}stage {} epoch {}: train loss {:.4}  valid loss {:.4}  valid accuracy {:.2}%  ({:.1}s)",
                    e.stage + 1,
                    e.epoch,
                    e.train_loss,
                    e.valid_loss,
                    100.0 * e.valid_accuracy,
                    e.seconds
                ));
            }
            Event::Snapshot(s) => self.note(&format!(
                "{who}snapshot {} saved (stage {}, cycle {}): {}",
                s.index,
                s.stage + 1,
                s.cycle + 1,
                s.manifest_url
            )),
            Event::TaskStarted(t) => self.note(&format!(
                "task {} started on {} (generation {})",
                t.task,
                t.workers.join(", "),
                t.generation
            )),
            Event::TaskRestarted(t) => self.note(&format!(
                "task {} torn down (generation {}): {}; it restarts (a run from its last checkpoint)",
                t.task, t.generation, t.reason
            )),
            Event::Straggler(s) => self.note(&format!("task {}: {}", s.task, s.summary)),
            Event::SweepConcluded(c) => {
                for line in &c.candidates {
                    self.note(&format!("  swept {line}"));
                }
                let lr = if c.lr.is_finite() { format!(" at lr {:.3e}", c.lr) } else { String::new() };
                self.note(&format!("LR sweep done: training {}{lr}", c.chosen));
            }
            Event::Ended(e) => {
                self.finish();
                let reason = if e.reason.is_empty() { String::new() } else { format!(": {}", e.reason) };
                self.note(&format!("job {}{reason}", e.status));
                return Some(JobEnd { status: e.status.clone(), reason: e.reason.clone() });
            }
        }
        None
    }
}

/// Non-finite floats (a diverged LR-range test) become null.
fn num(x: f64) -> serde_json::Value {
    serde_json::Number::from_f64(x).map_or(serde_json::Value::Null, serde_json::Value::Number)
}

/// One event as `watch --json` prints it: `{"index": n, "type": "...", ...fields}`.
pub fn event_json(index: u64, e: &Event) -> serde_json::Value {
    use serde_json::json;
    match e {
        Event::StageStarted(s) => {
            json!({"index": index, "type": "stage_started", "stage": s.stage, "name": s.name, "epochs": s.epochs})
        }
        Event::LrFind(l) => json!({
            "index": index, "type": "lr_find", "stage": l.stage,
            "lrs": l.lrs.iter().map(|x| num(*x)).collect::<Vec<_>>(),
            "losses": l.losses.iter().map(|x| num(*x)).collect::<Vec<_>>(),
            "steep": num(l.steep), "valley": num(l.valley), "minimum": num(l.minimum),
        }),
        Event::Epoch(e) => json!({
            "index": index, "type": "epoch", "stage": e.stage, "epoch": e.epoch, "step": e.step,
            "train_loss": num(e.train_loss), "valid_loss": num(e.valid_loss),
            "valid_accuracy": num(e.valid_accuracy), "seconds": num(e.seconds),
        }),
        Event::Snapshot(s) => json!({
            "index": index, "type": "snapshot", "snapshot": s.index, "stage": s.stage, "cycle": s.cycle,
            "manifest_url": s.manifest_url,
        }),
        Event::TaskStarted(t) => json!({
            "index": index, "type": "task_started", "task": t.task, "generation": t.generation, "workers": t.workers,
        }),
        Event::TaskRestarted(t) => json!({
            "index": index, "type": "task_restarted", "task": t.task, "generation": t.generation, "reason": t.reason,
        }),
        Event::Straggler(s) => json!({
            "index": index, "type": "straggler", "task": s.task, "generation": s.generation,
            "named": s.named, "rank": s.named.then_some(s.rank), "worker": s.worker, "bound": s.bound,
            "summary": s.summary,
        }),
        Event::SweepConcluded(c) => json!({
            "index": index, "type": "sweep_concluded", "chosen": c.chosen, "lr": num(c.lr), "candidates": c.candidates,
        }),
        Event::Ended(e) => json!({"index": index, "type": "ended", "status": e.status, "reason": e.reason}),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn events_print_as_tagged_json_and_only_success_is_ok() {
        let e = Event::Epoch(pb::EpochMetrics {
            stage: 0,
            epoch: 2,
            step: 40,
            train_loss: 0.5,
            valid_loss: f64::NAN,
            valid_accuracy: 0.8,
            seconds: 1.0,
        });
        let v = event_json(7, &e);
        assert_eq!(v["index"], 7);
        assert_eq!(v["type"], "epoch");
        assert!(v["valid_loss"].is_null());
        let end = Event::Ended(pb::JobEnded { status: "cancelled".into(), reason: "by the user".into() });
        assert_eq!(event_json(9, &end)["status"], "cancelled");

        assert!(JobEnd { status: "succeeded".into(), reason: String::new() }.into_result("j").is_ok());
        let e = JobEnd { status: "failed".into(), reason: "rank 0: bad data".into() }
            .into_result("j-1")
            .unwrap_err();
        assert_eq!(e.to_string(), "job j-1 failed: rank 0: bad data");
    }
}
