//! Exact resume, end to end with real processes: a deterministic CPU run interrupted after a
//! checkpoint and resumed (`--resume`) gives the same per-step losses, LR-range results and
//! snapshots as the same run never interrupted.

use std::path::Path;
use std::time::Duration;

use cyclotron_tests::{fashion_mnist_present, run};

/// Two stages (a constant-LR epoch, then an LR-range test and two SGDR cycles with snapshots):
/// the interruption after epoch 2 falls inside stage 2, after its first snapshot.
const SPEC: &str = r#"
name = "resume"
seed = 11
output = "file://./store"

[data]
source = "fashion_mnist"
batch_size = 64
limit_train = 640
limit_eval = 256

[model]
arch = "small_resnet"
width = 4

[lr_find]
start = 1e-4
end = 1.0
steps = 10

[[stage]]
lr = 0.02
epochs = 1

[[stage]]
lr_find = true
lr = "auto"
cycles = 2
cycle_len = 1
cycle_mult = 2

[ensemble]
members = 2
selection = "last"

[runtime]
threads = 1
device = "cpu"

[checkpoint]
every_epochs = 1
keep_last = 1
"#;

fn read_json(path: &Path) -> serde_json::Value {
    let text = std::fs::read_to_string(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    serde_json::from_str(&text).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

fn train(work: &Path, out: &str, run_name: &str, extra: &[&str]) -> String {
    let mut args = vec!["--quiet", "train", "job.toml", "--out", out, "--run", run_name];
    args.extend_from_slice(extra);
    let ran = run(&args, work, Duration::from_secs(300));
    assert_eq!(ran.code, Some(0), "{args:?}\nstdout:\n{}\nstderr:\n{}", ran.stdout, ran.stderr);
    ran.stdout + &ran.stderr
}

#[test]
fn interrupted_and_resumed_run_matches_the_uninterrupted_one() {
    if !fashion_mnist_present() {
        return;
    }
    let work = tempfile::tempdir().unwrap();
    std::fs::write(work.path().join("job.toml"), SPEC).unwrap();

    train(work.path(), "whole", "whole", &[]);
    let said = train(work.path(), "part", "split", &["--stop-after-epochs", "2"]);
    assert!(said.contains("stopped after 2 epochs"), "{said}");
    let run_dir = work.path().join("store/resume/split");
    let ckpts: Vec<String> = std::fs::read_dir(&run_dir)
        .unwrap()
        .filter_map(|e| e.ok()?.file_name().into_string().ok())
        .filter(|n| n.starts_with("ckpt-") && run_dir.join(n).join("MANIFEST.json").exists())
        .collect();
    // keep_last = 1: the epoch-1 checkpoint was deleted once epoch 2's was committed
    assert_eq!(ckpts, vec!["ckpt-0000000020"], "10 steps per epoch, 2 epochs");
    assert!(run_dir.join("ckpt-0000000020/MANIFEST.json").exists());
    assert!(run_dir.join("snapshots/cycle-0/MANIFEST.json").exists());
    train(work.path(), "resumed", "split", &["--resume"]);

    let whole = read_json(&work.path().join("whole/results.json"));
    let resumed = read_json(&work.path().join("resumed/results.json"));
    let h = |v: &serde_json::Value, k: &str| v["history"][k].clone();
    assert_eq!(h(&whole, "losses").as_array().unwrap().len(), 10 + 30, "every step of the 4 epochs");
    for k in ["steps", "losses", "lrs", "stage_starts", "cycle_ends"] {
        assert_eq!(h(&whole, k), h(&resumed, k), "history.{k} differs after resume");
    }
    assert_eq!(whole["lr_finds"], resumed["lr_finds"]);
    for k in ["snapshots", "ensemble", "final"] {
        assert_eq!(whole[k], resumed[k], "{k} differs after resume");
    }
    let epochs = |v: &serde_json::Value| -> Vec<(u64, f64)> {
        v["epochs"]
            .as_array()
            .unwrap()
            .iter()
            .map(|e| (e["step"].as_u64().unwrap(), e["train_loss"].as_f64().unwrap()))
            .collect()
    };
    assert_eq!(epochs(&whole), epochs(&resumed));
}

#[test]
fn resume_without_a_checkpoint_starts_over_and_corrupt_newest_falls_back() {
    if !fashion_mnist_present() {
        return;
    }
    let work = tempfile::tempdir().unwrap();
    let spec = SPEC.replace("keep_last = 1", "keep_last = 3").replace("cycles = 2", "cycles = 1");
    std::fs::write(work.path().join("job.toml"), spec).unwrap();
    train(work.path(), "a", "r", &["--stop-after-epochs", "2"]);
    // corrupt the newest checkpoint's weights: the resume falls back to epoch 1's, with a warning
    let newest = work.path().join("store/resume/r/ckpt-0000000020/model.safetensors");
    let mut bytes = std::fs::read(&newest).unwrap();
    let n = bytes.len();
    bytes[n - 1] ^= 0xff;
    std::fs::write(&newest, bytes).unwrap();
    let said = train(work.path(), "b", "r", &["--resume"]);
    assert_eq!(said.matches("unusable checkpoint skipped").count(), 1, "{said}");
    assert!(said.contains("ckpt-0000000020"), "{said}");
    assert!(said.contains("resumed") && said.contains("ckpt-0000000010"), "{said}");
    let results = read_json(&work.path().join("b/results.json"));
    assert_eq!(results["history"]["losses"].as_array().unwrap().len(), 10 + 10);
}
