//! `cyclotron train` and `cyclotron lr-find` on real Fashion-MNIST, end to end, as a user runs them.

use std::path::{Path, PathBuf};
use std::time::Duration;

use cyclotron_tests::{fashion_mnist_present, run};

fn example(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../examples")
        .join(name)
        .canonicalize()
        .expect("example exists")
}

fn read_json(path: &Path) -> serde_json::Value {
    let text = std::fs::read_to_string(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    serde_json::from_str(&text).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

fn assert_png(path: &Path) {
    let bytes = std::fs::read(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    assert!(bytes.len() > 1000 && bytes.starts_with(b"\x89PNG"), "{} is not a PNG", path.display());
}

#[test]
fn quick_example_trains_snapshots_and_ensembles() {
    if !fashion_mnist_present() {
        return;
    }
    let work = tempfile::tempdir().unwrap();
    let spec = example("quick.toml");
    let ran = run(
        &["train", spec.to_str().unwrap(), "--out", "out", "--run", "e2e"],
        work.path(),
        Duration::from_secs(600),
    );
    assert_eq!(ran.code, Some(0), "stdout:\n{}\nstderr:\n{}", ran.stdout, ran.stderr);

    let out = work.path().join("out");
    let results = read_json(&out.join("results.json"));
    let snaps = results["snapshots"].as_array().expect("snapshots");
    assert_eq!(snaps.len(), 2, "one snapshot per SGDR cycle");
    for (i, s) in snaps.iter().enumerate() {
        assert_eq!(s["cycle"], i);
        assert_eq!(s["epoch"], i + 1);
        assert!(s["loss"].as_f64().unwrap().is_finite());
    }
    let ens = &results["ensemble"];
    let acc = ens["accuracy"].as_f64().expect("ensemble accuracy");
    // ten classes: chance is 10%
    assert!(acc > 0.5, "ensemble accuracy {acc} is not far above chance");
    assert!(!ens["members"].as_array().unwrap().is_empty());
    assert_eq!(results["eval_split"], "test");
    // time to accuracy: after each snapshot, the ensemble of the snapshots so far and when; the
    // last is the job's ensemble
    let so_far: Vec<&serde_json::Value> = snaps.iter().map(|s| &s["so_far"]).collect();
    assert_eq!(so_far[0]["ensemble"]["members"], serde_json::json!([0]), "{}", so_far[0]);
    assert_eq!(so_far[1]["ensemble"], *ens);
    let seconds: Vec<f64> = so_far.iter().map(|f| f["seconds"].as_f64().unwrap()).collect();
    assert!(seconds[0] > 0.0 && seconds[1] > seconds[0], "{seconds:?}");
    assert!(ran.stdout.contains("so far"), "{}", ran.stdout);

    let lr = read_json(&out.join("lr_find.json"));
    let (lrs, losses) = (lr["lrs"].as_array().unwrap(), lr["losses"].as_array().unwrap());
    assert!(lrs.len() >= 10 && lrs.len() == losses.len());
    assert!(lrs.windows(2).all(|w| w[0].as_f64() < w[1].as_f64()), "lrs increase");
    for k in ["steep", "valley", "minimum"] {
        let v = lr["suggestion"][k].as_f64().unwrap_or_else(|| panic!("suggestion.{k}"));
        assert!(v > 0.0 && v < 10.0, "{k} = {v}");
    }
    for png in ["lr_find.png", "training.png", "ensemble.png"] {
        assert_png(&out.join(png));
    }
    // the table is printed, and snapshots are committed in the default file:// store
    assert!(ran.stdout.contains("ensemble") && ran.stdout.contains("snapshot 1"), "{}", ran.stdout);
    for i in 0..2 {
        let manifest =
            work.path().join(format!("runs/fashion-mnist-quick/e2e/snapshots/cycle-{i}/MANIFEST.json"));
        assert!(manifest.exists(), "{} missing", manifest.display());
        assert!(read_json(&manifest)["blobs"]
            .as_array()
            .unwrap()
            .iter()
            .any(|b| b["name"] == "model.safetensors"));
    }
}

#[test]
fn lr_find_command_writes_the_curve_and_the_plot() {
    if !fashion_mnist_present() {
        return;
    }
    let work = tempfile::tempdir().unwrap();
    let spec = example("quick.toml");
    let ran = run(&["lr-find", spec.to_str().unwrap(), "--out", "lr"], work.path(), Duration::from_secs(300));
    assert_eq!(ran.code, Some(0), "{}", ran.stderr);
    let lr = read_json(&work.path().join("lr/lr_find.json"));
    assert!(lr["suggestion"]["valley"].as_f64().is_some());
    assert_png(&work.path().join("lr/lr_find.png"));
    assert!(ran.stdout.contains("suggested learning rates"), "{}", ran.stdout);
}

#[test]
fn lr_find_with_a_grid_and_candidates_sweeps_every_point_and_compares_them() {
    if !fashion_mnist_present() {
        return;
    }
    let work = tempfile::tempdir().unwrap();
    let text = std::fs::read_to_string(example("quick.toml")).unwrap().replace(
        "steps = 60\n",
        "steps = 60\ngrid = 4\ngrid_steps = 8\n[lr_find.candidates]\nweight_decay = [0.0, 0.01]\n",
    );
    let text = text.replace("limit_train = 8000", "limit_train = 2000");
    std::fs::write(work.path().join("job.toml"), text).unwrap();
    let ran = run(&["lr-find", "job.toml", "--out", "lr"], work.path(), Duration::from_secs(300));
    assert_eq!(ran.code, Some(0), "{}", ran.stderr);
    let sweep = read_json(&work.path().join("lr/sweep.json"));
    assert_eq!(sweep["candidates"].as_array().map(Vec::len), Some(2), "{sweep}");
    assert_eq!(sweep["grid"], 4);
    let chosen = sweep["chosen"].as_u64().unwrap() as usize;
    // lr_find.json is the chosen candidate's merged curve: 4 points, 1e-5 … 10
    let lr = read_json(&work.path().join("lr/lr_find.json"));
    assert_eq!(lr, sweep["candidates"][chosen]["report"]);
    assert_eq!(lr["lrs"].as_array().map(Vec::len), Some(4));
    assert_png(&work.path().join("lr/sweep.png"));
    assert!(
        ran.stdout.contains("weight_decay=0.01") && ran.stdout.contains("best: weight_decay="),
        "{}",
        ran.stdout
    );
}
