//! What the pages show, as named sections of HTML: the same functions render a whole page and
//! each live update (the stream sends the sections again, the page's script swaps them in).
//!
//! Cluster page: workers (state, data-plane address, task, last heartbeat) and jobs (state,
//! progress, straggler). Job page: summary with the step counter, tasks (restarts, failure
//! reasons), each running group's ranks with the straggler named, the LR-range curves with the
//! chosen rate marked, loss and learning rate per step with the SGDR snapshots marked,
//! validation per epoch, the snapshot / ensemble / TTA table, and the event log.

use std::collections::HashMap;
use std::fmt::Write as _;

use serde_json::Value;

use super::chart::{Chart, Marker, Series};
use super::html::{badge, esc, num, sci, url_segment};
use crate::live::TaskLive;
use crate::state::{ClusterState, JobEvent, JobState, TaskStatus, WorkerStatus};

/// A named section: its element id and inner HTML.
pub type Section = (&'static str, String);

/// Events shown in the log (the newest).
const LOG_EVENTS: usize = 300;

/// Wrap sections for a whole page.
pub fn sections_html(sections: &[Section], titles: &[(&str, &str)]) -> String {
    let mut out = String::new();
    for (id, html) in sections {
        let title = titles.iter().find(|(i, _)| i == id).map(|(_, t)| *t).unwrap_or("");
        if !title.is_empty() {
            let _ = write!(out, "<h2>{}</h2>", esc(title));
        }
        let _ = write!(out, r#"<section id="{id}">{html}</section>"#);
    }
    out
}

/// What the cluster page needs beyond the state: each worker's last heartbeat, ms ago (the
/// leader's memory; empty elsewhere).
pub fn cluster_sections(state: &ClusterState, heartbeat_ago_ms: &HashMap<String, u64>) -> Vec<Section> {
    let mut w = String::from(
        "<table><tr><th>worker</th><th>state</th><th>device</th><th>data plane</th><th>task</th><th class=num>last heartbeat</th></tr>",
    );
    if state.workers.is_empty() {
        w.push_str(r#"<tr><td colspan=6 class=muted>no worker has registered</td></tr>"#);
    }
    for (id, r) in &state.workers {
        let task = match &r.task {
            Some((job, t, g)) if r.status != WorkerStatus::Dead => {
                format!(r#"<a href="/jobs/{}">{}</a> task {t} gen {g}"#, url_segment(job), esc(job))
            }
            _ => String::new(),
        };
        let hb =
            heartbeat_ago_ms.get(id).map_or("–".to_string(), |ms| format!("{:.1} s ago", *ms as f64 / 1e3));
        let device = match r.gpus {
            0 => "CPU".to_string(),
            1 => "1 GPU".to_string(),
            n => format!("{n} GPUs"),
        };
        // port 0: the worker picks a port per run
        let addr = match r.addr.strip_suffix(":0") {
            Some(host) => format!("{host} (a port per run)"),
            None => r.addr.clone(),
        };
        let _ = write!(
            w,
            "<tr><td>{}</td><td>{}</td><td>{device}</td><td>{}</td><td>{task}</td><td class=num>{hb}</td></tr>",
            esc(id),
            badge(r.status.name()),
            esc(&addr)
        );
    }
    w.push_str("</table>");
    let mut j = String::from(
        "<table><tr><th>job</th><th>state</th><th>tasks done</th><th>latest</th><th>straggler</th></tr>",
    );
    if state.jobs.is_empty() {
        j.push_str(
            r#"<tr><td colspan=5 class=muted>no jobs yet: <code>cyclotron submit JOB.toml</code></td></tr>"#,
        );
    }
    for (id, job) in state.jobs.iter().rev() {
        let done = job.tasks.iter().filter(|t| t.status == TaskStatus::Done).count();
        let latest = latest_epoch(job).unwrap_or_default();
        let straggler = stragglers(job).into_iter().map(|(_, s)| esc(&s)).collect::<Vec<_>>().join("<br>");
        let _ = write!(
            j,
            r#"<tr><td><a href="/jobs/{}">{}</a></td><td>{} <span class=muted>{}</span></td><td class=num>{done}/{}</td><td>{}</td><td>{straggler}</td></tr>"#,
            url_segment(id),
            esc(id),
            badge(job.status.name()),
            esc(job.status.reason()),
            job.tasks.len(),
            esc(&latest)
        );
    }
    j.push_str("</table>");
    vec![("workers", w), ("jobs", j)]
}

/// The cluster page's submit form (not live: an update must not wipe what is being typed).
pub fn submit_form(secret: &str, request: &str) -> String {
    format!(
        r#"<h2>Submit a job</h2><form method=post action="/submit" class=submit><input type=hidden name=secret value="{}"><input type=hidden name=request value="{}"><textarea name=spec rows=10 cols=80 placeholder="the job spec (TOML), as cyclotron submit takes it" required></textarea><br><label>workers per run <input type=number name=workers_per_run value=1 min=1 max=1024></label> <label>max restarts (0: default) <input type=number name=max_restarts value=0 min=0 max=100></label> <button type=submit class=go>Submit</button></form>"#,
        esc(secret),
        esc(request)
    )
}

pub const CLUSTER_TITLES: &[(&str, &str)] = &[("workers", "Workers"), ("jobs", "Jobs")];

pub const JOB_TITLES: &[(&str, &str)] = &[
    ("summary", ""),
    ("tasks", "Tasks"),
    ("ranks", "Ranks (mean per step over the last seconds)"),
    ("charts", "Training"),
    ("results", "Snapshots, ensemble and TTA"),
    ("events", "Events"),
];

/// "stage 2 epoch 3: valid loss 0.41, accuracy 86.2%" of the job's last epoch event.
fn latest_epoch(job: &JobState) -> Option<String> {
    job.events.iter().rev().find_map(|e| match e {
        JobEvent::Epoch { stage, epoch, valid_loss, valid_accuracy, from, .. } => Some(format!(
            "{}stage {} epoch {epoch}: valid loss {}{}",
            from.as_ref().map(|f| format!("{f}, ")).unwrap_or_default(),
            stage + 1,
            num(*valid_loss, 4),
            if valid_accuracy.is_finite() {
                format!(", accuracy {:.2}%", 100.0 * valid_accuracy)
            } else {
                String::new()
            }
        )),
        _ => None,
    })
}

/// (task, summary) of each running task whose straggler is named.
fn stragglers(job: &JobState) -> Vec<(usize, String)> {
    job.tasks
        .iter()
        .enumerate()
        .filter(|(_, t)| matches!(t.status, TaskStatus::Running { .. }))
        .filter_map(|(i, t)| match &t.straggler {
            Some(JobEvent::Straggler { rank: Some(_), summary, .. }) => Some((i, summary.clone())),
            _ => None,
        })
        .collect()
}

/// One line of the event log.
pub fn event_line(e: &JobEvent) -> String {
    let from = e.from().map(|f| format!("[{f}] ")).unwrap_or_default();
    let text = match e {
        JobEvent::StageStarted { stage, name, epochs, .. } => {
            format!("stage {} ({name}) started: {epochs} epochs", stage + 1)
        }
        JobEvent::LrFind { stage, valley, steep, .. } => {
            format!(
                "LR-range test before stage {}: valley {}, steep {}",
                stage + 1,
                sci(*valley),
                sci(*steep)
            )
        }
        JobEvent::Epoch { stage, epoch, step, train_loss, valid_loss, valid_accuracy, seconds, .. } => {
            format!(
                "stage {} epoch {epoch} (step {step}): train loss {}, valid loss {}{} in {:.1} s",
                stage + 1,
                num(*train_loss, 4),
                num(*valid_loss, 4),
                if valid_accuracy.is_finite() {
                    format!(", accuracy {:.2}%", 100.0 * valid_accuracy)
                } else {
                    String::new()
                },
                seconds
            )
        }
        JobEvent::Snapshot { index, stage, cycle, .. } => {
            format!("snapshot {index} saved (stage {}, cycle {})", stage + 1, cycle + 1)
        }
        JobEvent::SweepConcluded { chosen, lr, .. } => {
            format!("sweep concluded: {chosen} at lr {}", sci(*lr))
        }
        JobEvent::TaskStarted { task, generation, workers } => {
            format!("task {task} started (generation {generation}) on {}", workers.join(", "))
        }
        JobEvent::TaskRestarted { task, generation, reason } => {
            format!("task {task} generation {generation} torn down: {reason}")
        }
        JobEvent::Straggler { task, summary, rank, .. } => match rank {
            Some(_) => format!("task {task}: {summary}"),
            None => format!("task {task}: {summary}"),
        },
        JobEvent::Ended { status, reason } if reason.is_empty() => format!("job {status}"),
        JobEvent::Ended { status, reason } => format!("job {status}: {reason}"),
    };
    format!("{from}{text}")
}

/// The newest live point of the job's tasks: (step, loss, lr).
fn latest_point(live: &[(usize, TaskLive)]) -> Option<(u64, f64, f64)> {
    live.iter().filter_map(|(_, t)| t.points.back()).max_by_key(|p| p.step).map(|p| (p.step, p.loss, p.lr))
}

/// Every section of job `id`'s page; `live`: the leader's step summaries of its tasks; `secret`:
/// the server's form secret, which the cancel form carries.
pub fn job_sections(
    id: &str,
    job: &JobState,
    live: &[(usize, TaskLive)],
    leader: bool,
    secret: &str,
) -> Vec<Section> {
    let results: Option<Value> = job.results();
    vec![
        ("summary", summary(id, job, live, leader, secret)),
        ("tasks", tasks(job)),
        ("ranks", ranks(job, live, leader)),
        ("charts", charts(job, live, results.as_ref())),
        ("results", results_table(results.as_ref())),
        ("events", events(job)),
    ]
}

fn summary(id: &str, job: &JobState, live: &[(usize, TaskLive)], leader: bool, secret: &str) -> String {
    let mut s = String::new();
    let _ = write!(
        s,
        r#"<h1>{} {}</h1><div class=kv><div><span>spec</span>{}</div><div><span>workers per run</span>{}</div><div><span>max restarts</span>{}</div></div>"#,
        esc(id),
        badge(job.status.name()),
        esc(&job.spec.name),
        job.workers_per_run,
        job.max_restarts
    );
    if !job.status.reason().is_empty() {
        let _ = write!(s, r#"<p class=reason>{}</p>"#, esc(job.status.reason()));
    }
    let (step, loss, lr) = latest_point(live).unwrap_or_else(|| {
        job.events
            .iter()
            .rev()
            .find_map(|e| match e {
                JobEvent::Epoch { step, train_loss, .. } => Some((*step, *train_loss, f64::NAN)),
                _ => None,
            })
            .unwrap_or((0, f64::NAN, f64::NAN))
    });
    let epochs = job.events.iter().filter(|e| matches!(e, JobEvent::Epoch { .. })).count();
    let snapshots = job.events.iter().filter(|e| matches!(e, JobEvent::Snapshot { .. })).count();
    let _ = write!(
        s,
        r#"<div class=kv><div><span>step</span><b id="step">{step}</b></div><div><span>loss</span><b id="loss">{}</b></div><div><span>lr</span><b id="lr">{}</b></div><div><span>epochs done</span>{epochs}</div><div><span>snapshots</span>{snapshots}</div><div><span>latest</span>{}</div></div>"#,
        num(loss, 4),
        sci(lr),
        esc(&latest_epoch(job).unwrap_or_else(|| "–".into()))
    );
    for (task, text) in stragglers(job) {
        let _ = write!(
            s,
            r#"<div class=straggler id="straggler-{task}"><b>Straggler</b> in task {task}: {}</div>"#,
            esc(&text)
        );
    }
    if !leader && !job.status.is_terminal() {
        s.push_str(r#"<p class=muted>Per-step figures live in the raft leader's memory: open the leader's web view for them.</p>"#);
    }
    if !job.status.is_terminal() {
        let _ = write!(
            s,
            r#"<form class=inline method=post action="/jobs/{}/cancel"><input type=hidden name=secret value="{}"><button type=submit>Cancel job</button></form>"#,
            url_segment(id),
            esc(secret)
        );
    }
    s
}

fn tasks(job: &JobState) -> String {
    let mut s = String::from(
        "<table><tr><th>#</th><th>kind</th><th>state</th><th>workers (rank order)</th><th class=num>generation</th><th class=num>restarts</th><th>why it restarted</th></tr>",
    );
    for (i, t) in job.tasks.iter().enumerate() {
        let (workers, generation) = match &t.status {
            TaskStatus::Running { workers, generation } => (workers.join(", "), generation.to_string()),
            _ => (String::new(), String::new()),
        };
        let reasons: Vec<String> = job
            .events
            .iter()
            .filter_map(|e| match e {
                JobEvent::TaskRestarted { task, generation, reason } if *task as usize == i => {
                    Some(format!("gen {generation}: {}", esc(reason)))
                }
                _ => None,
            })
            .collect();
        let label = job.task_label(i).unwrap_or_else(|| t.task.kind().to_string());
        let _ = write!(
            s,
            "<tr><td>{i}</td><td>{}</td><td>{}</td><td>{}</td><td class=num>{generation}</td><td class=num>{}</td><td>{}</td></tr>",
            esc(&label),
            badge(t.status.name()),
            esc(&workers),
            t.restarts,
            reasons.join("<br>")
        );
    }
    s.push_str("</table>");
    s
}

fn ranks(job: &JobState, live: &[(usize, TaskLive)], leader: bool) -> String {
    let mut s = String::new();
    for (task, t) in live {
        let running = matches!(job.tasks.get(*task).map(|r| &r.status), Some(TaskStatus::Running { generation, .. }) if *generation == t.generation);
        if !running {
            continue;
        }
        let named = match job.tasks.get(*task).and_then(|r| r.straggler.as_ref()) {
            Some(JobEvent::Straggler { rank: Some(r), .. }) => Some(*r),
            _ => None,
        };
        let _ = write!(
            s,
            "<table class=ranks data-task={task}><tr><th>task {task} rank</th><th>worker</th><th class=num>step</th><th class=num>step ms</th><th class=num>data wait ms</th><th class=num>all-reduce ms</th><th class=num>busy ms</th><th></th></tr>"
        );
        for r in t.stats() {
            let slow = named == Some(r.rank);
            let _ = write!(
                s,
                r#"<tr{}><td>{}</td><td>{}</td><td class=num>{}</td><td class=num>{:.1}</td><td class=num>{:.1}</td><td class=num>{:.1}</td><td class=num>{:.1}</td><td>{}</td></tr>"#,
                if slow { " class=slow" } else { "" },
                r.rank,
                esc(&r.worker),
                r.step,
                r.step_s * 1e3,
                r.data_s * 1e3,
                r.comm_s * 1e3,
                r.busy_s * 1e3,
                if slow { "straggler" } else { "" }
            );
        }
        s.push_str("</table>");
    }
    if s.is_empty() {
        s = if !job.tasks.iter().any(|t| matches!(t.status, TaskStatus::Running { .. })) {
            r#"<p class=muted>No group is running.</p>"#.into()
        } else if leader {
            r#"<p class=muted>No running group has reported its steps yet.</p>"#.into()
        } else {
            r#"<p class=muted>Step times are kept by the raft leader.</p>"#.into()
        };
    }
    s
}

fn charts(job: &JobState, live: &[(usize, TaskLive)], results: Option<&Value>) -> String {
    let mut cards = vec![];
    // LR-range curves, the chosen rate marked
    let mut lr = Chart::new("LR-range test", "learning rate", "loss");
    lr.log_x = true;
    let kind = job.spec.lr_find.clone().unwrap_or_default().suggestion;
    for e in &job.events {
        if let JobEvent::LrFind { stage, lrs, losses, steep, valley, minimum, still_falling, from } = e {
            let name =
                format!("{}stage {}", from.as_ref().map(|f| format!("{f} ")).unwrap_or_default(), stage + 1);
            lr.series.push(Series {
                name: name.clone(),
                points: lrs.iter().copied().zip(losses.iter().copied()).collect(),
            });
            let s =
                cyclotron_core::lr_range::Suggestions { steep: *steep, valley: *valley, minimum: *minimum };
            let chosen = match still_falling {
                Some(falling) => cyclotron_core::lr_range::pick(kind, &s, *falling),
                None => cyclotron_core::lr_range::choose(kind, &s, lrs, losses),
            };
            if chosen.is_finite() && !job.events.iter().any(|e| matches!(e, JobEvent::SweepConcluded { .. }))
            {
                lr.markers.push(Marker { x: chosen, label: format!("{name}: {kind} {}", sci(chosen)) });
            }
        }
        if let JobEvent::SweepConcluded { chosen, lr: rate, .. } = e {
            if rate.is_finite() {
                lr.markers.push(Marker { x: *rate, label: format!("chosen: {chosen} at {}", sci(*rate)) });
            }
        }
    }
    if !lr.series.is_empty() {
        cards.push(("lrfind", lr.svg()));
    }
    // loss and learning rate per step: the whole history once done, else the live points
    let mut loss = Chart::new("training loss per step", "step", "loss");
    let mut rate = Chart::new("learning rate per step (SGDR)", "step", "learning rate");
    let history = results
        .and_then(|r| r.get("history"))
        .filter(|h| h.get("steps").is_some_and(|s| s.as_array().is_some_and(|a| !a.is_empty())));
    if let Some(h) = history {
        let col = |k: &str| -> Vec<f64> {
            h.get(k)
                .and_then(Value::as_array)
                .map(|a| a.iter().map(|v| v.as_f64().unwrap_or(f64::NAN)).collect())
                .unwrap_or_default()
        };
        let (steps, losses, lrs) = (col("steps"), col("losses"), col("lrs"));
        loss.series.push(Series { name: "loss".into(), points: steps.iter().copied().zip(losses).collect() });
        rate.series.push(Series { name: "lr".into(), points: steps.iter().copied().zip(lrs).collect() });
    } else {
        for (task, t) in live {
            let name = job.task_label(*task).unwrap_or_else(|| "run".into());
            loss.series.push(Series {
                name: name.clone(),
                points: t.points.iter().map(|p| (p.step as f64, p.loss)).collect(),
            });
            rate.series
                .push(Series { name, points: t.points.iter().map(|p| (p.step as f64, p.lr)).collect() });
        }
    }
    // snapshots at the step of the epoch that ended their cycle
    let mut last_step: HashMap<Option<String>, u64> = HashMap::new();
    for e in &job.events {
        match e {
            JobEvent::Epoch { step, from, .. } => {
                last_step.insert(from.clone(), *step);
            }
            JobEvent::Snapshot { index, from, .. } => {
                if let Some(step) = last_step.get(from) {
                    let m = Marker { x: *step as f64, label: format!("snapshot {index}") };
                    loss.markers.push(m.clone());
                    rate.markers.push(m);
                }
            }
            _ => {}
        }
    }
    cards.push(("loss", loss.svg()));
    cards.push(("lr", rate.svg()));
    // validation per epoch
    let mut valid = Chart::new("validation per epoch", "step", "loss / accuracy");
    // (task label, valid losses, accuracies) by step
    type Curves = (String, Vec<(f64, f64)>, Vec<(f64, f64)>);
    let mut by_task: Vec<Curves> = vec![];
    for e in &job.events {
        if let JobEvent::Epoch { step, valid_loss, valid_accuracy, from, .. } = e {
            let name = from.clone().unwrap_or_default();
            let i = match by_task.iter().position(|(n, _, _)| *n == name) {
                Some(i) => i,
                None => {
                    by_task.push((name, vec![], vec![]));
                    by_task.len() - 1
                }
            };
            by_task[i].1.push((*step as f64, *valid_loss));
            by_task[i].2.push((*step as f64, *valid_accuracy));
        }
    }
    for (name, losses, accs) in by_task {
        let prefix = if name.is_empty() { String::new() } else { format!("{name} ") };
        valid.series.push(Series { name: format!("{prefix}valid loss"), points: losses });
        if accs.iter().any(|(_, a)| a.is_finite()) {
            valid.series.push(Series { name: format!("{prefix}accuracy"), points: accs });
        }
    }
    cards.push(("validation", valid.svg()));
    let mut s = String::from("<div class=grid2>");
    for (id, svg) in cards {
        let _ = write!(s, r#"<div class=card id="chart-{id}">{svg}</div>"#);
    }
    s.push_str("</div>");
    s
}

fn metric(v: Option<&Value>, key: &str) -> f64 {
    v.and_then(|v| v.get(key)).and_then(Value::as_f64).unwrap_or(f64::NAN)
}

fn pct(x: f64) -> String {
    if x.is_finite() {
        format!("{:.2}%", 100.0 * x)
    } else {
        "–".into()
    }
}

fn results_table(results: Option<&Value>) -> String {
    let Some(r) = results else {
        return r#"<p class=muted>Once the job is done: each snapshot's score, the ensemble's and what TTA added.</p>"#.into();
    };
    let mut s = String::from(
        "<table><tr><th>model</th><th class=num>loss</th><th class=num>accuracy</th><th class=num>with TTA</th><th>note</th></tr>",
    );
    let row = |s: &mut String, name: &str, v: Option<&Value>, note: &str| {
        let tta = v.and_then(|v| v.get("tta")).filter(|t| !t.is_null());
        let _ = write!(
            s,
            "<tr><td>{}</td><td class=num>{}</td><td class=num>{}</td><td class=num>{}</td><td>{}</td></tr>",
            esc(name),
            num(metric(v, "loss"), 4),
            pct(metric(v, "accuracy")),
            if tta.is_some() { pct(metric(tta, "accuracy")) } else { "–".into() },
            esc(note)
        );
    };
    let members: Vec<u64> = r
        .pointer("/ensemble/members")
        .and_then(Value::as_array)
        .map(|a| a.iter().filter_map(Value::as_u64).collect())
        .unwrap_or_default();
    for snap in r.get("snapshots").and_then(Value::as_array).into_iter().flatten() {
        let index = snap.get("index").and_then(Value::as_u64).unwrap_or(0);
        let name = format!(
            "snapshot {index} (stage {}, cycle {}, epoch {})",
            snap.get("stage").and_then(Value::as_u64).unwrap_or(0) + 1,
            snap.get("cycle").and_then(Value::as_u64).unwrap_or(0) + 1,
            snap.get("epoch").and_then(Value::as_u64).unwrap_or(0)
        );
        row(&mut s, &name, Some(snap), if members.contains(&index) { "in the ensemble" } else { "" });
    }
    if let Some(e) = r.get("ensemble").filter(|e| !e.is_null()) {
        let how = e.get("selection").and_then(Value::as_str).unwrap_or("");
        row(&mut s, &format!("ensemble of {:?}", members), Some(e), how);
    }
    if let Some(f) = r.get("final") {
        let mut f = f.clone();
        if let (Some(o), Some(t)) = (f.as_object_mut(), r.get("final_tta")) {
            o.insert("tta".into(), t.clone());
        }
        row(&mut s, "final weights", Some(&f), "");
    }
    s.push_str("</table>");
    s
}

fn events(job: &JobState) -> String {
    let start = job.events.len().saturating_sub(LOG_EVENTS);
    let mut s = String::from(r#"<div class=log>"#);
    if start > 0 {
        let _ = writeln!(s, "… {start} earlier events (cyclotron watch JOB shows them all)");
    }
    for (i, e) in job.events.iter().enumerate().skip(start) {
        let _ = writeln!(s, "{i:>5}  {}", esc(&event_line(e)));
    }
    s.push_str("</div>");
    s
}
