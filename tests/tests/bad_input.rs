//! Bad input: each case exits non-zero with one clear message naming the field or path, never a
//! panic, and loses nothing already written.

use std::path::Path;
use std::time::Duration;

use cyclotron_tests::{fashion_mnist_present, run, Ran};

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

#[test]
fn a_failed_run_keeps_earlier_results() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::create_dir_all(dir.path().join("out")).unwrap();
    std::fs::write(dir.path().join("out/results.json"), "{\"earlier\": true}").unwrap();
    let spec =
        GOOD.replace("source = \"fashion_mnist\"", "source = \"fashion_mnist\"\npath = \"/nonexistent\"");
    assert_ne!(train(&spec, dir.path(), "out").code, Some(0));
    assert_eq!(std::fs::read_to_string(dir.path().join("out/results.json")).unwrap(), "{\"earlier\": true}");
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
