//! Bad input: each case exits non-zero with one clear message naming the field or path, never a
//! panic, and loses nothing already written.

use std::path::Path;
use std::time::Duration;

use cyclotron_tests::{fashion_mnist_present, run, tiny_job, Ran};

const GOOD: &str = r#"
name = "bad-input"
[data]
source = "fashion_mnist"
limit_train = 512
limit_eval = 256
batch_size = 64
[model]
arch = "small_resnet"
width = 4
[[stage]]
lr = 0.05
cycles = 1
cycle_len = 1
"#;

fn train(spec: &str, dir: &Path, out: &str) -> Ran {
    std::fs::write(dir.join("job.toml"), spec).unwrap();
    run(&["train", "job.toml", "--out", out], dir, Duration::from_secs(300))
}

fn assert_clear_failure(ran: &Ran, needle: &str) {
    assert_ne!(ran.code, Some(0), "expected a failure mentioning {needle:?}");
    assert!(ran.stderr.contains(needle), "stderr does not mention {needle:?}:\n{}", ran.stderr);
    assert!(!ran.stderr.contains("panicked"), "panic instead of an error:\n{}", ran.stderr);
}

#[test]
fn missing_data_path_names_the_path() {
    let dir = tempfile::tempdir().unwrap();
    let spec = GOOD
        .replace("source = \"fashion_mnist\"", "source = \"fashion_mnist\"\npath = \"/nonexistent/fmnist\"");
    assert_clear_failure(&train(&spec, dir.path(), "out"), "/nonexistent/fmnist");
}

#[test]
fn unknown_model_lists_the_known_ones() {
    let dir = tempfile::tempdir().unwrap();
    let ran = train(&GOOD.replace("small_resnet", "resnet9000"), dir.path(), "out");
    assert_clear_failure(&ran, "model.arch: unknown model \"resnet9000\"; known models: small_resnet");
}

#[test]
fn malformed_toml_names_the_file_and_line() {
    let dir = tempfile::tempdir().unwrap();
    let ran = train(&GOOD.replace("lr = 0.05", "lr = = 0.05"), dir.path(), "out");
    assert_clear_failure(&ran, "job.toml: cannot parse the job spec");
    assert!(ran.stderr.contains("line"), "{}", ran.stderr);
}

#[test]
fn contradictory_specs_name_the_field() {
    let dir = tempfile::tempdir().unwrap();
    let cases = [
        (
            GOOD.replace("cycle_len = 1", "cycle_len = 1\ncycle_mult = 0"),
            "stage 1: cycle_mult must be ≥ 1, got 0",
        ),
        (GOOD.replace("lr = 0.05", "lr = -0.05"), "stage 1: lr must be > 0, got -0.05"),
        (GOOD.replace("lr = 0.05", "lr = 0.0"), "stage 1: lr must be > 0, got 0"),
        (GOOD[..GOOD.find("[[stage]]").unwrap()].to_string(), "the job has no training stages"),
        (GOOD.replace("cycles = 1", "cyclez = 1"), "unknown field `cyclez`"),
        (GOOD.replace("lr = 0.05", "lr = \"auto\""), "needs an LR-range test first"),
    ];
    for (spec, needle) in cases {
        assert_clear_failure(&train(&spec, dir.path(), "out"), needle);
    }
}

#[test]
fn unwritable_output_fails_before_training() {
    let dir = tempfile::tempdir().unwrap();
    let ran = train(GOOD, dir.path(), "/proc/cyclotron-out");
    assert_clear_failure(&ran, "output folder /proc/cyclotron-out");
    let ran = train(
        &GOOD.replace(
            "name = \"bad-input\"",
            "name = \"bad-input\"\noutput = \"file:///proc/cyclotron-store\"",
        ),
        dir.path(),
        "out",
    );
    assert_clear_failure(&ran, "cannot create or write the folder /proc/cyclotron-store");
}

/// Every file under `dir` with its bytes.
fn files(dir: &Path) -> Vec<(std::path::PathBuf, Vec<u8>)> {
    let mut out = vec![];
    for e in std::fs::read_dir(dir).unwrap().flatten() {
        let path = e.path();
        if path.is_dir() {
            out.extend(files(&path));
        } else {
            out.push((path.clone(), std::fs::read(&path).unwrap()));
        }
    }
    out.sort();
    out
}

/// A run that fails after it has trained and committed a checkpoint (its second stage's
/// LR-range test starts at a rate that diverges at once, so there is no suggestion) leaves the
/// results of the earlier run in the same output folder byte for byte.
#[test]
fn a_run_failing_after_training_keeps_earlier_results() {
    if !fashion_mnist_present() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let good = GOOD.replace("name = \"bad-input\"", "name = \"bad-input\"\noutput = \"file://./store\"");
    let ran = train(&good, dir.path(), "out");
    assert_eq!(ran.code, Some(0), "{}", ran.stderr);
    let before = files(&dir.path().join("out"));
    assert!(before.iter().any(|(p, _)| p.ends_with("results.json")), "{before:?}");

    let failing = good.replace("limit_train = 512", "limit_train = 128").replace(
        "[[stage]]\nlr = 0.05\ncycles = 1\ncycle_len = 1\n",
        "[lr_find]\nstart = 1e30\nend = 1e32\nsteps = 10\n[[stage]]\nlr = 0.05\nepochs = 1\n[[stage]]\nlr_find = true\nlr = \"auto\"\nepochs = 1\n",
    );
    std::fs::write(dir.path().join("job.toml"), &failing).unwrap();
    let ran =
        run(&["train", "job.toml", "--out", "out", "--run", "failing"], dir.path(), Duration::from_secs(300));
    assert_clear_failure(&ran, "stage 2: lr = \"auto\"");
    assert!(ran.stderr.contains("gave no suggestion"), "{}", ran.stderr);
    // it failed after training stage 1: that stage's checkpoint is committed
    let run_dir = dir.path().join("store/bad-input/failing");
    let committed = std::fs::read_dir(&run_dir)
        .unwrap_or_else(|e| panic!("{}: {e}\n{}", run_dir.display(), ran.stderr))
        .flatten()
        .any(|e| e.path().join("MANIFEST.json").exists());
    assert!(committed, "no checkpoint of the failing run in {}", run_dir.display());
    assert_eq!(files(&dir.path().join("out")), before, "the earlier results changed");
}

#[test]
fn a_model_gone_non_finite_fails_as_diverged_instead_of_succeeding() {
    if !fashion_mnist_present() {
        return;
    }
    // at lr 1e5 every batch loss of this epoch stays finite, but the weights and BatchNorm's
    // running statistics do not: the validation loss is NaN. The run used to "succeed" with a
    // NaN model (9.77 % accuracy) and write its results.
    let dir = tempfile::tempdir().unwrap();
    let spec = GOOD
        .replace("limit_train = 512", "limit_train = 128")
        .replace("lr = 0.05\ncycles = 1\ncycle_len = 1", "lr = 1e5\nepochs = 1");
    let ran = train(&spec, dir.path(), "out");
    assert_clear_failure(&ran, "training diverged in stage 1");
    assert!(ran.stderr.contains("the validation loss is NaN; lower that stage's lr"), "{}", ran.stderr);
    assert!(!dir.path().join("out/results.json").exists(), "a diverged run wrote results:\n{}", ran.stderr);
}

#[test]
fn check_accepts_the_examples() {
    let dir = tempfile::tempdir().unwrap();
    for ex in ["quick.toml", "fashion_mnist.toml", "seed_recipe.toml"] {
        let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("../examples").join(ex);
        let ran = run(&["check", path.to_str().unwrap()], dir.path(), Duration::from_secs(60));
        assert_eq!(ran.code, Some(0), "{ex}: {}", ran.stderr);
    }
}

#[test]
fn batch_larger_than_the_data_is_a_clear_error() {
    if !fashion_mnist_present() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let ran = train(&GOOD.replace("batch_size = 64", "batch_size = 4096"), dir.path(), "out");
    assert_clear_failure(&ran, "data.batch_size: 4096 is larger than the training split");
}

/// Two `train` runs of one job started together without `--run` (a script launching variants,
/// parallel CI jobs) each get their own run in the store: the default name used to be the
/// second it started, so both wrote their snapshots and checkpoints into one folder.
#[test]
fn two_runs_of_one_job_started_together_keep_their_own_snapshots() {
    if !fashion_mnist_present() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("job.toml"), tiny_job("twins", 256, 1)).unwrap();
    let (a, b) = std::thread::scope(|s| {
        let a = s.spawn(|| run(&["train", "job.toml", "--out", "a"], dir.path(), Duration::from_secs(300)));
        let b = s.spawn(|| run(&["train", "job.toml", "--out", "b"], dir.path(), Duration::from_secs(300)));
        (a.join().unwrap(), b.join().unwrap())
    });
    assert_eq!(a.code, Some(0), "{}", a.stderr);
    assert_eq!(b.code, Some(0), "{}", b.stderr);
    let runs: Vec<String> = std::fs::read_dir(dir.path().join("store/twins"))
        .unwrap()
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .collect();
    assert_eq!(runs.len(), 2, "one folder per run in the store, got {runs:?}");
    for r in &runs {
        let snapshot = dir.path().join("store/twins").join(r).join("snapshots/cycle-0/MANIFEST.json");
        assert!(snapshot.exists(), "{} missing; runs {runs:?}", snapshot.display());
    }
}
