//! What the CLI writes and prints: the output folder, JSON files (written atomically, so a failed
//! run never leaves half a file or destroys an earlier one), and the results table.

use std::path::{Path, PathBuf};

use anyhow::Context;
use cyclotron_core::lr_range::LrFindReport;
use cyclotron_core::results::TrainResults;

/// Create `dir` and prove it is writable, before any training starts.
pub fn prepare_dir(dir: &Path) -> anyhow::Result<()> {
    std::fs::create_dir_all(dir).with_context(|| {
        format!("output folder {}: cannot create it; choose another --out", dir.display())
    })?;
    let probe = dir.join(".cyclotron-write-probe");
    std::fs::write(&probe, b"")
        .with_context(|| format!("output folder {}: not writable; choose another --out", dir.display()))?;
    let _ = std::fs::remove_file(probe);
    Ok(())
}

/// Write JSON to a temporary file next to `path`, then rename it into place.
pub fn write_json<T: serde::Serialize>(path: &Path, value: &T) -> anyhow::Result<()> {
    let tmp: PathBuf = path.with_extension("json.tmp");
    let body = serde_json::to_vec_pretty(value)?;
    std::fs::write(&tmp, body).with_context(|| format!("writing {}", tmp.display()))?;
    std::fs::rename(&tmp, path).with_context(|| format!("writing {}", path.display()))?;
    Ok(())
}

/// A store URL made independent of the current folder: a relative `file://` or plain path is
/// joined to it; anything else is returned as it is.
pub fn absolute_store(store: &str) -> String {
    let (scheme, path) = match store.split_once("://") {
        Some(("file", p)) => ("file://", p),
        Some(_) => return store.to_string(),
        None => ("", store),
    };
    let p = Path::new(path);
    if p.is_absolute() {
        return store.to_string();
    }
    match std::env::current_dir() {
        Ok(cwd) => {
            let joined = cwd.join(p.strip_prefix("./").unwrap_or(p));
            format!("{scheme}{}", joined.display())
        }
        Err(_) => store.to_string(),
    }
}

/// The run name `train` uses without `--run`: `run-<unix time>-<pid>` for a process alone, so two
/// runs of one job started in the same second get their own folders in the store (with the time
/// alone they shared one and overwrote each other's snapshots); `run-<unix time>` for a rank of
/// a hand-launched group, whose ranks must agree on it (give them `--run` to be sure).
pub fn default_run_id(alone: bool) -> String {
    let secs = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_secs());
    if alone {
        format!("run-{secs}-{}", std::process::id())
    } else {
        format!("run-{secs}")
    }
}

pub fn print_lr_find(r: &LrFindReport) {
    match r.suggestion {
        Some(_) if r.never_fell() => println!("no suggestion: {}", cyclotron_core::lr_range::NEVER_FELL),
        Some(s) => println!(
            "suggested learning rates: steep {:.3e}  valley {:.3e}  {} {:.3e}",
            s.steep,
            s.valley,
            r.minimum_label(),
            s.minimum
        ),
        None => println!("no suggestion: the loss diverged at once; lower lr_find.start"),
    }
}

/// Accuracy with test-time augmentation, beside the plain one, when the job ran TTA; and the
/// validation log-loss of each, which tells whether TTA helps without looking at the test set.
fn print_tta(r: &TrainResults) {
    use cyclotron_core::results::Metrics;
    type Row = (String, f64, f64, Option<(Metrics, Metrics)>);
    let valid = |plain: Metrics, tta: Option<Metrics>| tta.map(|t| (plain, t));
    let mut rows: Vec<Row> = r
        .snapshots
        .iter()
        .filter_map(|s| {
            s.tta.map(|t| (snapshot_name(r, s), s.accuracy, t.accuracy, valid(s.valid, s.valid_tta)))
        })
        .collect();
    if let Some((e, t)) = r.ensemble.as_ref().and_then(|e| e.tta.map(|t| (e, t))) {
        rows.push(("ensemble".into(), e.accuracy, t.accuracy, valid(e.valid, e.valid_tta)));
    }
    if let Some((e, t)) = r.all_snapshots.as_ref().and_then(|e| e.tta.map(|t| (e, t))) {
        rows.push(("all averaged".into(), e.accuracy, t.accuracy, valid(e.valid, e.valid_tta)));
    }
    if let Some(t) = r.final_tta {
        rows.push(("final".into(), r.final_model.accuracy, t.accuracy, None));
    }
    if rows.is_empty() {
        return;
    }
    println!();
    println!("{:<12} {:>10} {:>10} {:>12} {:>10}", "TTA", "plain", "with TTA", "valid loss", "with TTA");
    for (name, plain, tta, valid) in rows {
        let (vp, vt) = valid
            .map_or(("-".into(), "-".into()), |(p, t)| (format!("{:.4}", p.loss), format!("{:.4}", t.loss)));
        println!("{name:<12} {:>9.2}% {:>9.2}% {vp:>12} {vt:>10}", 100.0 * plain, 100.0 * tta);
    }
}

/// Time to accuracy: after each snapshot, the ensemble the job would have delivered had it
/// stopped there, and when (with more than one snapshot; runs that recorded it).
fn print_so_far(r: &TrainResults) {
    let points: Vec<_> = r.snapshots.iter().filter_map(|s| s.so_far.as_ref().map(|f| (s, f))).collect();
    if points.len() < 2 {
        return;
    }
    let (metric, _) = metric_titles(&r.final_model);
    println!();
    println!(
        "{:<12} {:>5} {:>8} {:>10} {:>10} {:>10}",
        "so far", "epoch", "seconds", "members", metric, "with TTA"
    );
    for (s, f) in points {
        let members: Vec<String> = f.ensemble.members.iter().map(|m| m.to_string()).collect();
        println!(
            "{:<12} {:>5} {:>8.0} {:>10} {:>10} {:>10}",
            format!("snapshot {}", s.index),
            s.epoch,
            f.seconds,
            format!("[{}]", members.join(",")),
            metric_cell(&f.ensemble.metrics()),
            f.ensemble.tta.as_ref().map_or("-".into(), metric_cell)
        );
    }
}

/// How the tables and `ensemble.png` name snapshot `s` of `r`: `snapshot i`, or `run k snap j` (the
/// j-th snapshot of run k) in the results of several independent runs (`ensemble.runs`).
pub fn snapshot_name(r: &TrainResults, s: &cyclotron_core::results::SnapshotResult) -> String {
    match s.run.as_ref().and_then(|run| r.runs.iter().position(|x| &x.run == run)) {
        Some(ri) => {
            let within = r.runs[ri].snapshots.iter().position(|&i| i == s.index).unwrap_or(0);
            format!("run {ri} snap {within}")
        }
        None => format!("snapshot {}", s.index),
    }
}

/// A task's headline metric for a table cell: accuracy in percent, perplexity, or RMSPE.
pub fn metric_cell(m: &cyclotron_core::results::Metrics) -> String {
    match m.headline() {
        ("accuracy", a) => format!("{:.2}%", 100.0 * a),
        ("perplexity", p) => format!("{p:.2}"),
        (_, v) => format!("{v:.4}"),
    }
}

/// The column titles of a task's headline metric: on the evaluation split and on validation.
fn metric_titles(m: &cyclotron_core::results::Metrics) -> (&'static str, &'static str) {
    match m.headline().0 {
        "accuracy" => ("accuracy", "valid acc"),
        "perplexity" => ("perplexity", "valid ppl"),
        _ => ("rmspe", "valid rmspe"),
    }
}

pub fn print_results(r: &TrainResults, store: &str, job: &str, run: &str) {
    let split = &r.eval_split;
    let (metric, valid_metric) = metric_titles(&r.final_model);
    println!();
    if let Some(sweep) = &r.sweep {
        for c in &sweep.candidates {
            let lr = c.lr.map_or("no suggestion".into(), |l| format!("lr {l:.3e}"));
            println!("lr sweep     {:<40} best loss {:.4}  {lr}", c.label, c.best_loss);
        }
        let how =
            if sweep.grid > 0 { format!("a grid of {} LRs", sweep.grid) } else { "a range test".into() };
        let lr =
            sweep.chosen().lr.map_or(String::new(), |l| format!(" at lr {l:.3e} ({})", sweep.suggestion));
        println!("lr sweep     trained: {}{lr}; each candidate swept by {how}", sweep.chosen().label);
        println!();
    }
    println!(
        "{:<12} {:>5} {:>5} {:>5} {:>10} {:>10} {:>12}",
        "model", "stage", "cycle", "epoch", "loss", metric, valid_metric
    );
    for s in &r.snapshots {
        let name = snapshot_name(r, s);
        println!(
            "{:<12} {:>5} {:>5} {:>5} {:>10.4} {:>10} {:>12}",
            name,
            s.stage + 1,
            s.cycle,
            s.epoch,
            s.loss,
            metric_cell(&s.metrics()),
            metric_cell(&s.valid)
        );
    }
    if r.ensemble.is_none() {
        println!("{:<12} (no snapshots were taken, or ensemble.members = 0)", "ensemble");
    }
    if let Some(e) = &r.ensemble {
        let members: Vec<String> = e.members.iter().map(|m| m.to_string()).collect();
        println!(
            "{:<12} {:>17} {:>10.4} {:>10} {:>12}",
            "ensemble",
            format!("[{}] {}", members.join(","), e.selection),
            e.loss,
            metric_cell(&e.metrics()),
            metric_cell(&e.valid)
        );
    }
    if let Some(a) = &r.all_snapshots {
        println!(
            "{:<12} {:>17} {:>10.4} {:>10} {:>12}",
            "all averaged",
            format!("{} snapshots", a.members.len()),
            a.loss,
            metric_cell(&a.metrics()),
            metric_cell(&a.valid)
        );
    }
    for (ri, run) in r.runs.iter().enumerate() {
        if let Some(e) = &run.ensemble {
            println!(
                "{:<12} {:>17} {:>10.4} {:>10} {:>12}",
                format!("run {ri} ens."),
                format!("seed {}", run.seed),
                e.loss,
                metric_cell(&e.metrics()),
                metric_cell(&e.valid)
            );
        }
    }
    println!(
        "{:<12} {:>17} {:>10.4} {:>10}",
        if r.runs.is_empty() { "final" } else { "final run 0" },
        "",
        r.final_model.loss,
        metric_cell(&r.final_model)
    );
    print_tta(r);
    print_so_far(r);
    println!();
    if r.runs.is_empty() {
        println!("loss and {metric} on the {split} split; {:.0}s of training; snapshots in {store}/{job}/{run}/snapshots/", r.train_seconds);
    } else {
        println!(
            "loss and {metric} on the {split} split; {} independent runs, {:.0}s of training in all; snapshots in {store}/{job}/<run>/snapshots/ (runs {})",
            r.runs.len(),
            r.train_seconds,
            r.runs.iter().map(|x| x.run.as_str()).collect::<Vec<_>>().join(", ")
        );
    }
}
