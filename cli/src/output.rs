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

pub fn default_run_id() -> String {
    let secs = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_secs());
    format!("run-{secs}")
}

pub fn print_lr_find(r: &LrFindReport) {
    match r.suggestion {
        Some(s) => println!(
            "suggested learning rates: steep {:.3e}  valley {:.3e}  minimum/10 {:.3e}",
            s.steep, s.valley, s.minimum
        ),
        None => println!("no suggestion: the loss diverged at once; lower lr_find.start"),
    }
}

/// Accuracy with test-time augmentation, beside the plain one, when the job ran TTA.
fn print_tta(r: &TrainResults) {
    let mut rows: Vec<(String, f64, f64)> = r
        .snapshots
        .iter()
        .filter_map(|s| s.tta.map(|t| (format!("snapshot {}", s.index), s.accuracy, t.accuracy)))
        .collect();
    if let Some((e, t)) = r.ensemble.as_ref().and_then(|e| e.tta.map(|t| (e, t))) {
        rows.push(("ensemble".into(), e.accuracy, t.accuracy));
    }
    if let Some(t) = r.final_tta {
        rows.push(("final".into(), r.final_model.accuracy, t.accuracy));
    }
    if rows.is_empty() {
        return;
    }
    println!();
    println!("{:<12} {:>10} {:>10}", "TTA", "plain", "with TTA");
    for (name, plain, tta) in rows {
        println!("{name:<12} {:>9.2}% {:>9.2}%", 100.0 * plain, 100.0 * tta);
    }
}

pub fn print_results(r: &TrainResults, store: &str, job: &str, run: &str) {
    let split = &r.eval_split;
    println!();
    println!(
        "{:<12} {:>5} {:>5} {:>5} {:>10} {:>10} {:>12}",
        "model", "stage", "cycle", "epoch", "loss", "accuracy", "valid acc"
    );
    for s in &r.snapshots {
        println!(
            "{:<12} {:>5} {:>5} {:>5} {:>10.4} {:>9.2}% {:>11.2}%",
            format!("snapshot {}", s.index),
            s.stage + 1,
            s.cycle,
            s.epoch,
            s.loss,
            100.0 * s.accuracy,
            100.0 * s.valid.accuracy
        );
    }
    if r.ensemble.is_none() {
        println!("{:<12} (no snapshots were taken, or ensemble.members = 0)", "ensemble");
    }
    if let Some(e) = &r.ensemble {
        let members: Vec<String> = e.members.iter().map(|m| m.to_string()).collect();
        println!(
            "{:<12} {:>17} {:>10.4} {:>9.2}% {:>11.2}%",
            "ensemble",
            format!("[{}] {}", members.join(","), e.selection),
            e.loss,
            100.0 * e.accuracy,
            100.0 * e.valid.accuracy
        );
    }
    println!(
        "{:<12} {:>17} {:>10.4} {:>9.2}%",
        "final",
        "",
        r.final_model.loss,
        100.0 * r.final_model.accuracy
    );
    print_tta(r);
    println!();
    println!("loss and accuracy on the {split} split; {:.0}s of training; snapshots in {store}/{job}/{run}/snapshots/", r.train_seconds);
}
