//! Exact resume, end to end with real processes: a deterministic CPU run interrupted after a
//! checkpoint and resumed (`--resume`) gives the same per-step losses, LR-range results and
//! snapshots as the same run never interrupted.

use std::path::Path;
use std::time::Duration;

use cyclotron_tests::{fashion_mnist_present, run_with, without_seconds};

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
    train_with(work, out, run_name, extra, &[])
}

fn train_with(work: &Path, out: &str, run_name: &str, extra: &[&str], env: &[(&str, &str)]) -> String {
    let mut args = vec!["--quiet", "train", "job.toml", "--out", out, "--run", run_name];
    args.extend_from_slice(extra);
    let ran = run_with(&args, work, Duration::from_secs(300), env);
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
    // the first part is made slow (300 ms a step, 6 s over its 20 steps) so that its seconds
    // outweigh the resumed part's: the job's clock must go on from them, not start again
    let slow = [("CYCLOTRON_FAULT_SLOW_RANK", "0:300")];
    let said = train_with(work.path(), "part", "split", &["--stop-after-epochs", "2"], &slow);
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
    let before = read_json(&run_dir.join("ckpt-0000000020/state.json"))["seconds"].as_f64().unwrap();
    assert!(before >= 6.0, "the checkpoint counts the first part's seconds: {before}");
    let resuming = std::time::Instant::now();
    train(work.path(), "resumed", "split", &["--resume"]);
    let resumed_wall = resuming.elapsed().as_secs_f64();

    let whole = read_json(&work.path().join("whole/results.json"));
    let resumed = read_json(&work.path().join("resumed/results.json"));
    let h = |v: &serde_json::Value, k: &str| v["history"][k].clone();
    assert_eq!(h(&whole, "losses").as_array().unwrap().len(), 10 + 30, "every step of the 4 epochs");
    for k in ["steps", "losses", "lrs", "stage_starts", "cycle_ends"] {
        assert_eq!(h(&whole, k), h(&resumed, k), "history.{k} differs after resume");
    }
    assert_eq!(whole["lr_finds"], resumed["lr_finds"]);
    for k in ["snapshots", "ensemble", "final"] {
        assert_eq!(without_seconds(&whole, k), without_seconds(&resumed, k), "{k} differs after resume");
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

    // time to accuracy counts the whole job: the snapshot taken after the resume, and the job's
    // total, go on from the checkpoint's seconds (plus at most the resumed process's wall time)
    let seconds = |v: &serde_json::Value| v["snapshots"][1]["so_far"]["seconds"].as_f64().unwrap();
    let total = resumed["train_seconds"].as_f64().unwrap();
    assert!(
        before < seconds(&resumed) && seconds(&resumed) <= total,
        "{before} {} {total}",
        seconds(&resumed)
    );
    assert!(total <= before + resumed_wall, "{total} > {before} + {resumed_wall}");
    assert!(resumed_wall < before, "the resumed part ({resumed_wall} s) must be the shorter for this check");
}

/// `--resume` of a run that never committed a checkpoint trains from the start, says so, and
/// gives the losses of a run started without `--resume`.
#[test]
fn resume_without_a_checkpoint_starts_over() {
    if !fashion_mnist_present() {
        return;
    }
    let work = tempfile::tempdir().unwrap();
    let spec = SPEC.replace("cycles = 2", "cycles = 1");
    std::fs::write(work.path().join("job.toml"), spec).unwrap();
    let said = train(work.path(), "resumed", "never-run", &["--resume"]);
    assert!(said.contains("no checkpoint to resume from; starting at the beginning"), "{said}");
    assert!(!said.contains("resumed from"), "{said}");
    train(work.path(), "fresh", "fresh", &[]);
    let losses =
        |out: &str| read_json(&work.path().join(out).join("results.json"))["history"]["losses"].clone();
    assert_eq!(losses("resumed").as_array().map(Vec::len), Some(10 + 10), "every step of both stages");
    assert_eq!(losses("resumed"), losses("fresh"));
}

/// A corrupt newest checkpoint is skipped with one warning naming it, and the run resumes from the
/// one before (keep_last = 3 keeps it).
#[test]
fn a_corrupt_newest_checkpoint_falls_back_to_the_one_before() {
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

/// One stage of 4 epochs of 40 steps: long enough to be killed in the middle of an epoch.
const LONG: &str = r#"
name = "killed"
seed = 13
output = "file://./store"

[data]
source = "fashion_mnist"
batch_size = 32
limit_train = 1280
limit_eval = 128

[model]
arch = "small_resnet"
width = 8

[[stage]]
lr = 0.02
epochs = 4

[runtime]
threads = 1
device = "cpu"

[checkpoint]
every_epochs = 1
keep_last = 1
"#;

const STEPS_PER_EPOCH: u64 = 40;

/// `cyclotron_steps_total` of the run serving metrics on `port` (None while nothing answers).
fn steps_done(port: u16) -> Option<u64> {
    use std::io::{Read, Write};
    let mut s = std::net::TcpStream::connect(("127.0.0.1", port)).ok()?;
    s.set_read_timeout(Some(Duration::from_secs(5))).ok()?;
    s.write_all(b"GET /metrics HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n").ok()?;
    let mut text = String::new();
    s.read_to_string(&mut text).ok()?;
    let line = text.lines().find(|l| l.starts_with("cyclotron_steps_total{"))?;
    line.rsplit(' ').next()?.parse::<f64>().ok().map(|v| v as u64)
}

/// The steps of the run's committed checkpoints (those with a MANIFEST).
fn committed(run_dir: &Path) -> Vec<u64> {
    let mut steps: Vec<u64> = std::fs::read_dir(run_dir)
        .into_iter()
        .flatten()
        .filter_map(|e| e.ok()?.file_name().into_string().ok())
        .filter(|n| run_dir.join(n).join("MANIFEST.json").exists())
        .filter_map(|n| n.strip_prefix("ckpt-")?.parse().ok())
        .collect();
    steps.sort_unstable();
    steps
}

/// SIGKILL in the middle of an epoch (no clean stop, steps after the last checkpoint lost), then
/// `--resume`: the run continues from the last committed checkpoint, and every step's loss from
/// there on is the uninterrupted run's.
#[test]
fn killed_mid_epoch_resumes_from_the_last_checkpoint_exactly() {
    if !fashion_mnist_present() {
        return;
    }
    let work = tempfile::tempdir().unwrap();
    std::fs::write(work.path().join("job.toml"), LONG).unwrap();
    let run_dir = work.path().join("store/killed/split");
    let port = cyclotron_tests::free_ports(1)[0];
    let addr = format!("127.0.0.1:{port}");
    let log = work.path().join("split.log");
    let tag = cyclotron_tests::new_tag();
    let args = ["--quiet", "train", "job.toml", "--out", "part", "--run", "split", "--metrics-addr", &addr];
    let mut victim = cyclotron_tests::spawn_logged(&args, work.path(), &log, &tag);
    // kill once an epoch's checkpoint is committed and the next epoch is a quarter to half done
    // (at least 20 steps before the next checkpoint)
    let mut killed_at = None;
    cyclotron_tests::wait_until(
        "a checkpoint and the middle of the next epoch",
        Duration::from_secs(240),
        || {
            let Some(done) = steps_done(port) else { return false };
            let (epoch, into) = (done / STEPS_PER_EPOCH, done % STEPS_PER_EPOCH);
            let mid = (STEPS_PER_EPOCH / 4..STEPS_PER_EPOCH / 2).contains(&into);
            if (1..4).contains(&epoch) && mid && committed(&run_dir).contains(&(epoch * STEPS_PER_EPOCH)) {
                cyclotron_tests::signal(victim.pid(), "KILL");
                killed_at = Some(done);
                return true;
            }
            assert!(
                victim.exited().is_none(),
                "the run ended before it could be killed:\n{}",
                cyclotron_tests::read(&log)
            );
            false
        },
        || cyclotron_tests::read(&log),
    );
    assert_eq!(victim.wait(Duration::from_secs(30), "the killed run"), None, "killed by a signal");
    let killed_at = killed_at.unwrap();
    let last = *committed(&run_dir).last().expect("a committed checkpoint");
    assert!(
        last < killed_at && killed_at < last + STEPS_PER_EPOCH,
        "killed at step {killed_at}, last checkpoint {last}"
    );
    assert!(!work.path().join("part/results.json").exists(), "a killed run writes no results");

    let said = train(work.path(), "resumed", "split", &["--resume"]);
    assert!(said.contains(&format!("ckpt-{last:010}")), "resumed from the last checkpoint:\n{said}");
    train(work.path(), "whole", "whole", &[]);
    let losses = |out: &str| -> Vec<f64> {
        let v = read_json(&work.path().join(out).join("results.json"));
        v["history"]["losses"].as_array().unwrap().iter().map(|l| l.as_f64().unwrap()).collect()
    };
    let (whole, resumed) = (losses("whole"), losses("resumed"));
    assert_eq!(whole.len() as u64, 4 * STEPS_PER_EPOCH);
    let from = last as usize;
    assert_eq!(resumed[from..], whole[from..], "per-step losses from the last checkpoint (step {last}) on");
    assert_eq!(resumed, whole, "and the history before it, restored from the checkpoint");
}
