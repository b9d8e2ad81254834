//! The coordinator's parallel tasks, with real processes: a job whose `[lr_find]` is a grid of 4
//! LRs for each of 2 candidate batch sizes (8 sweep points on separate workers), then 2
//! independent runs (seeds 5 and 6) in parallel, then the evaluation of every snapshot of both.
//! `cyclotron local` runs it on 2 workers; `cyclotron train` runs the same tasks one after another
//! on one process. On CPU with one thread both are deterministic, so the cluster must reach
//! exactly the same sweep, the same choice and the same snapshots as the single process.

use std::time::Duration;

use cyclotron_tests::{fashion_mnist_present, new_tag, read, run, run_tagged};

const JOB: &str = r#"name = "sweep"
seed = 5
output = "file://./store"
[data]
source = "fashion_mnist"
batch_size = 32
limit_train = 1024
limit_eval = 200
[model]
arch = "small_cnn"
width = 8
[optimizer]
kind = "sgd"
momentum = 0.9
[lr_find]
start = 1e-3
end = 3.0
grid = 4
grid_steps = 12
[lr_find.candidates]
batch_size = [32, 64]
[[stage]]
name = "sgdr"
lr = "auto"
cycles = 2
cycle_len = 1
[ensemble]
members = 2
runs = 2
[runtime]
threads = 1
device = "cpu"
"#;

fn results(dir: &std::path::Path) -> serde_json::Value {
    let path = dir.join("out/results.json");
    serde_json::from_str(&read(&path)).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

fn accuracies(r: &serde_json::Value) -> Vec<f64> {
    r["snapshots"].as_array().unwrap().iter().map(|s| s["accuracy"].as_f64().unwrap()).collect()
}

#[test]
fn a_grid_sweep_over_candidates_and_two_runs_match_one_process_doing_the_same_in_order() {
    if !fashion_mnist_present() {
        return;
    }
    let cluster = tempfile::tempdir().unwrap();
    let alone = tempfile::tempdir().unwrap();
    for d in [&cluster, &alone] {
        std::fs::write(d.path().join("job.toml"), JOB).unwrap();
    }
    let tag = new_tag();
    let ran = run_tagged(
        // no --workers-per-run: a job of 2 runs on 2 workers gets 1 worker per run by default
        &["local", "--workers", "2", "job.toml", "--out", "out"],
        cluster.path(),
        Duration::from_secs(300),
        &tag,
    );
    assert_eq!(ran.code, Some(0), "stdout:\n{}\nstderr:\n{}", ran.stdout, ran.stderr);
    assert!(ran.stderr.contains("2 workers (1 per run, 1 thread each)"), "{}", ran.stderr);

    // the sweep's points ran on both workers, the runs too, then one evaluation (which worker
    // takes which task depends on the order they registered in)
    let worker_of = |task: usize| -> String {
        let at = format!("task {task} started on ");
        let line = ran.stderr.lines().find(|l| l.contains(&at));
        let line = line.unwrap_or_else(|| panic!("task {task} never started:\n{}", ran.stderr));
        line.split(&at).nth(1).and_then(|r| r.split_whitespace().next()).unwrap_or_default().to_string()
    };
    let sweepers: std::collections::BTreeSet<String> = (0..8).map(worker_of).collect();
    assert_eq!(sweepers.len(), 2, "sweep points on both workers: {sweepers:?}");
    assert_ne!(worker_of(8), worker_of(9), "the two runs on separate workers");
    worker_of(10);
    assert!(ran.stderr.contains("LR sweep done: training batch_size="), "{}", ran.stderr);
    // the two runs' progress, told apart
    for line in ["run 0: stage 1 epoch 2:", "run 1: stage 1 epoch 2:", "run 1: snapshot 1 saved"] {
        assert!(ran.stderr.contains(line), "{line:?} missing:\n{}", ran.stderr);
    }
    let r = results(cluster.path());
    let sweep = &r["sweep"];
    assert_eq!(sweep["grid"], 4);
    assert_eq!(sweep["candidates"].as_array().map(Vec::len), Some(2), "{sweep}");
    let chosen = sweep["chosen"].as_u64().unwrap() as usize;
    let best: Vec<f64> =
        sweep["candidates"].as_array().unwrap().iter().map(|c| c["best_loss"].as_f64().unwrap()).collect();
    assert!(best[chosen] <= best[1 - chosen], "the lower loss wins: {best:?}");
    // the merged curve is the runs' first LR-range test, and its suggestion their LR
    let curve = &r["lr_finds"][0][1];
    assert_eq!(curve["lrs"].as_array().map(Vec::len), Some(4), "{curve}");
    assert_eq!(curve["lrs"][0], 1e-3);
    // both runs, every snapshot of each, alone and averaged
    let runs = r["runs"].as_array().unwrap();
    assert_eq!(runs.len(), 2);
    assert_eq!((runs[0]["seed"].as_u64(), runs[1]["seed"].as_u64()), (Some(5), Some(6)));
    assert_eq!(r["snapshots"].as_array().map(Vec::len), Some(4));
    assert_eq!(r["all_snapshots"]["members"], serde_json::json!([0, 1, 2, 3]));
    assert_ne!(runs[0]["final"], runs[1]["final"], "different seeds train different models");
    for run in runs {
        let id = run["run"].as_str().unwrap();
        assert!(
            cluster.path().join("store/sweep").join(id).join("snapshots/cycle-1/MANIFEST.json").exists(),
            "{id}"
        );
    }
    assert!(ran.stdout.contains("all averaged") && ran.stdout.contains("run 1 snap 1"), "{}", ran.stdout);
    assert!(cluster.path().join("out/sweep.png").exists(), "no sweep plot");

    // one process, the same tasks in order: the same numbers
    let seq = run(&["--quiet", "train", "job.toml", "--out", "out"], alone.path(), Duration::from_secs(300));
    assert_eq!(seq.code, Some(0), "stdout:\n{}\nstderr:\n{}", seq.stdout, seq.stderr);
    let s = results(alone.path());
    assert_eq!(s["sweep"]["chosen"], sweep["chosen"]);
    for (a, b) in
        s["sweep"]["candidates"].as_array().unwrap().iter().zip(sweep["candidates"].as_array().unwrap())
    {
        assert_eq!(a["best_loss"], b["best_loss"], "the same sweep point losses");
        assert_eq!(a["lr"], b["lr"]);
    }
    assert_eq!(accuracies(&s), accuracies(&r), "the same snapshots");
    assert_eq!(s["all_snapshots"]["accuracy"], r["all_snapshots"]["accuracy"]);
}
