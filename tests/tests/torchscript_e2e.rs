//! A user's own model, end to end: a small CNN with a BatchNorm scripted at test time by the venv's torch
//! (tests/fixtures/torchscript_fixtures.py; `make setup` installs torch, so the test requires it)
//! trains with `cyclotron train` on Fashion-MNIST (a frozen-body stage, then SGDR with
//! discriminative LRs, snapshots and an ensemble), then goes back to PyTorch: `torch.jit.load` of
//! the exported module + `load_state_dict` of a snapshot's `model.safetensors` (its BatchNorm
//! running statistics included: no key missing) and the snapshot's own `model.pt` give the same
//! probabilities as `cyclotron predict` on the same test images.
//! A module returning 7 logits for 10 classes is refused with what was expected. The same module
//! resumes exactly from a checkpoint, and two data-parallel ranks train it like one process.

use std::io::Read;
use std::path::Path;
use std::process::Command;
use std::time::Duration;

use cyclotron_tests::{
    cyclotron_bin, fashion_mnist_present, run, torchscript_fixtures, without_seconds, Proc,
};

const TEST_IMAGES: &str = "/usr/share/datasets/fashion-mnist/t10k-images-idx3-ubyte.gz";
/// Test images compared between Cyclotron and PyTorch.
const N: usize = 40;

fn job(module: &Path) -> String {
    format!(
        r#"name = "torchscript-e2e"
seed = 5
output = "file://./store"
[data]
source = "fashion_mnist"
batch_size = 64
limit_train = 4000
limit_eval = 200
[model]
arch = "torchscript"
torchscript = "file://{}"
[optimizer]
kind = "sgd"
momentum = 0.9
[[stage]]
name = "head"
freeze = true
lr = 0.2
epochs = 1
snapshot = false
[[stage]]
name = "all"
lr = 0.2
group_lrs = "thirds"
cycles = 2
cycle_len = 2
[ensemble]
members = 2
selection = "last"
[runtime]
threads = 1
device = "cpu"
"#,
        module.display()
    )
}

/// A work folder with the fixtures scripted into `modules/`; `None` without Fashion-MNIST.
fn work_with_modules() -> Option<tempfile::TempDir> {
    if !fashion_mnist_present() {
        return None;
    }
    let work = tempfile::tempdir().unwrap();
    torchscript_fixtures(&["make", work.path().join("modules").to_str().unwrap()], work.path());
    Some(work)
}

/// The first `n` images of the test set as an idx file.
fn first_test_images(n: usize) -> Vec<u8> {
    let mut all = vec![];
    flate2::read::GzDecoder::new(std::fs::File::open(TEST_IMAGES).expect("test images"))
        .read_to_end(&mut all)
        .unwrap();
    let mut out = all[..16].to_vec();
    out[4..8].copy_from_slice(&(n as u32).to_be_bytes());
    out.extend_from_slice(&all[16..16 + n * 784]);
    out
}

#[test]
fn a_scripted_cnn_trains_and_loads_back_into_pytorch() {
    let Some(work) = work_with_modules() else { return };
    let dir = work.path();
    let module = dir.join("modules/bn_cnn.pt");
    std::fs::write(dir.join("job.toml"), job(&module)).unwrap();
    let ran = run(&["train", "job.toml", "--out", "out", "--run", "r1"], dir, Duration::from_secs(900));
    assert_eq!(ran.code, Some(0), "stdout:\n{}\nstderr:\n{}", ran.stdout, ran.stderr);
    let results: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(dir.join("out/results.json")).unwrap()).unwrap();
    let snapshots = results["snapshots"].as_array().unwrap();
    assert_eq!(snapshots.len(), 2, "{results}");
    let acc = snapshots[1]["accuracy"].as_f64().unwrap();
    assert!(acc > 0.4, "the module learned too little: accuracy {acc} (10 classes)");
    assert_eq!(results["ensemble"]["members"].as_array().unwrap().len(), 2, "{results}");

    // Cyclotron's probabilities of the first N test images, snapshot 1 alone
    std::fs::write(dir.join("eval-idx3-ubyte"), first_test_images(N)).unwrap();
    let args = ["predict", "out", "eval-idx3-ubyte", "--json", "--top", "10", "--no-tta", "--snapshot", "1"];
    let ran = run(&args, dir, Duration::from_secs(300));
    assert_eq!(ran.code, Some(0), "stdout:\n{}\nstderr:\n{}", ran.stdout, ran.stderr);
    let ours: serde_json::Value = serde_json::from_str(&ran.stdout).unwrap();

    // PyTorch's, from the exported module + the snapshot's parameters, and the snapshot's model.pt
    let snapshot = dir.join("store/torchscript-e2e/r1/snapshots/cycle-1");
    let card: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(snapshot.join("image.json")).unwrap()).unwrap();
    let classes: Vec<&str> =
        card["classes"].as_array().unwrap().iter().map(|c| c.as_str().unwrap()).collect();
    let n = N.to_string();
    let theirs = torchscript_fixtures(
        &["check", module.to_str().unwrap(), snapshot.to_str().unwrap(), "eval-idx3-ubyte", &n],
        dir,
    );
    assert_eq!(theirs["missing"], serde_json::json!([]), "{}", theirs["missing"]);
    assert_eq!(theirs["unexpected"], serde_json::json!([]), "{}", theirs["unexpected"]);
    let mut worst = 0.0f64;
    for (i, p) in ours["predictions"].as_array().unwrap().iter().enumerate() {
        let top = p["top"].as_array().unwrap();
        assert_eq!(top.len(), 10);
        for t in top {
            let c = classes.iter().position(|&name| name == t["class"].as_str().unwrap()).unwrap();
            let mine = t["probability"].as_f64().unwrap();
            for key in ["state_dict", "model_pt"] {
                let torch = theirs[key][i][c].as_f64().unwrap();
                worst = worst.max((mine - torch).abs());
            }
        }
    }
    assert_eq!(ours["predictions"].as_array().unwrap().len(), N);
    assert!(worst < 1e-4, "Cyclotron and PyTorch differ by {worst} in a probability");

    // a module with the wrong output is refused before training, naming what was expected
    std::fs::write(dir.join("seven.toml"), job(&dir.join("modules/seven.pt"))).unwrap();
    let ran = run(&["train", "seven.toml", "--out", "out7", "--run", "r1"], dir, Duration::from_secs(300));
    assert_ne!(ran.code, Some(0));
    assert!(
        ran.stderr.contains(
            "model.torchscript: forward returned [2, 7] for images [2, 1, 28, 28], expected [2, 10] logits for 10 classes"
        ),
        "{}",
        ran.stderr
    );

    // the example spec is valid as written
    let example = Path::new(env!("CARGO_MANIFEST_DIR")).join("../examples/torchscript.toml");
    let ran = run(&["check", example.to_str().unwrap()], dir, Duration::from_secs(60));
    assert_eq!(ran.code, Some(0), "{}", ran.stderr);
}

/// `checkpoint_resume.rs`'s job (an LR-range test, a constant-LR epoch, SGDR with snapshots) on
/// the scripted CNN with a BatchNorm: a run stopped after 2 epochs and resumed gives the
/// uninterrupted run's losses, LR-range results and snapshots exactly (the checkpoint carries the
/// module's running statistics; without them the resumed run's evaluations differ).
#[test]
fn a_scripted_cnn_resumes_exactly() {
    let Some(work) = work_with_modules() else { return };
    let dir = work.path();
    let spec = format!(
        r#"name = "ts-resume"
seed = 11
output = "file://./store"
[data]
source = "fashion_mnist"
batch_size = 64
limit_train = 640
limit_eval = 256
[model]
arch = "torchscript"
torchscript = "file://{}"
[lr_find]
start = 1e-4
end = 1.0
steps = 10
[[stage]]
lr = 0.05
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
"#,
        dir.join("modules/bn_cnn.pt").display()
    );
    std::fs::write(dir.join("job.toml"), spec).unwrap();
    let train = |out: &str, run_name: &str, extra: &[&str]| {
        let mut args = vec!["--quiet", "train", "job.toml", "--out", out, "--run", run_name];
        args.extend_from_slice(extra);
        let ran = run(&args, dir, Duration::from_secs(300));
        assert_eq!(ran.code, Some(0), "{args:?}\nstdout:\n{}\nstderr:\n{}", ran.stdout, ran.stderr);
        ran.stdout + &ran.stderr
    };
    train("whole", "whole", &[]);
    let said = train("part", "split", &["--stop-after-epochs", "2"]);
    assert!(said.contains("stopped after 2 epochs"), "{said}");
    train("resumed", "split", &["--resume"]);
    let read = |p: &str| -> serde_json::Value {
        serde_json::from_str(&std::fs::read_to_string(dir.join(p)).unwrap()).unwrap()
    };
    let (whole, resumed) = (read("whole/results.json"), read("resumed/results.json"));
    assert_eq!(whole["history"]["losses"].as_array().unwrap().len(), 40, "every step of the 4 epochs");
    for k in ["history", "lr_finds", "snapshots", "ensemble", "final"] {
        assert_eq!(without_seconds(&whole, k), without_seconds(&resumed, k), "{k} differs after resume");
    }
}

/// The data-parallel oracle on the scripted CNN (no batch statistics): two ranks with batch 32
/// (TCP ring on loopback) take the per-step losses of one process with batch 64.
#[test]
fn two_ranks_train_a_scripted_cnn_like_one_process_with_twice_the_batch() {
    let Some(work) = work_with_modules() else { return };
    let dir = work.path();
    // the pair's lr 0.05 is scaled by 2 for its global batch (SGD's linear rule)
    let spec = |batch: usize, lr: f64| {
        let text = format!(
            "name = \"ts-dp\"\nseed = 3\noutput = \"file://./store\"\n[data]\nsource = \"fashion_mnist\"\n\
             batch_size = {batch}\nlimit_train = 512\nlimit_eval = 200\n[model]\narch = \"torchscript\"\n\
             torchscript = \"file://{}\"\n[[stage]]\nlr = {lr}\ncycles = 1\ncycle_len = 1\n[ensemble]\nmembers = 1\n\
             [runtime]\nthreads = 1\ndevice = \"cpu\"\n",
            dir.join("modules/cnn.pt").display()
        );
        let path = dir.join(format!("dp-{batch}.toml"));
        std::fs::write(&path, text).unwrap();
        path.to_string_lossy().into_owned()
    };
    let one = spec(64, 0.1);
    let ran =
        run(&["--quiet", "train", &one, "--out", "single", "--run", "s"], dir, Duration::from_secs(300));
    assert_eq!(ran.code, Some(0), "single process failed:\n{}", ran.stderr);

    let two = spec(32, 0.05);
    let listeners: Vec<_> = (0..2).map(|_| std::net::TcpListener::bind("127.0.0.1:0").unwrap()).collect();
    let peers: Vec<String> = listeners.iter().map(|l| l.local_addr().unwrap().to_string()).collect();
    drop(listeners);
    let mut ranks: Vec<Proc> = (0..2)
        .map(|r| {
            let log = |ext: &str| std::fs::File::create(dir.join(format!("rank-{r}.{ext}"))).unwrap();
            let child = Command::new(cyclotron_bin())
                .args(["--quiet", "train", &two, "--out", "pair", "--run", "p"])
                .args(["--rank", &r.to_string(), "--world-size", "2", "--peers", &peers.join(",")])
                .current_dir(dir)
                .stdin(std::process::Stdio::null())
                .stdout(log("out"))
                .stderr(log("err"))
                .spawn()
                .expect("spawn cyclotron");
            Proc(Some(child))
        })
        .collect();
    for (r, p) in ranks.iter_mut().enumerate() {
        let started = std::time::Instant::now();
        let code = loop {
            if let Some(status) = p.0.as_mut().unwrap().try_wait().unwrap() {
                p.0 = None;
                break status.code();
            }
            assert!(started.elapsed() < Duration::from_secs(300), "rank {r} did not finish in 300 s");
            std::thread::sleep(Duration::from_millis(50));
        };
        let err = std::fs::read_to_string(dir.join(format!("rank-{r}.err"))).unwrap_or_default();
        assert_eq!(code, Some(0), "rank {r} failed:\n{err}");
    }
    let losses = |out: &str| -> Vec<f64> {
        let v: serde_json::Value =
            serde_json::from_str(&std::fs::read_to_string(dir.join(out).join("results.json")).unwrap())
                .unwrap();
        v["history"]["losses"].as_array().unwrap().iter().map(|l| l.as_f64().unwrap()).collect()
    };
    let (l1, l2) = (losses("single"), losses("pair"));
    assert_eq!((l1.len(), l2.len()), (8, 8), "512 items, global batch 64");
    for (i, (p, q)) in l1.iter().zip(&l2).enumerate() {
        assert!((p - q).abs() <= 1e-4 * p.abs().max(1.0), "step {i}: loss {p} alone vs {q} on two ranks");
    }
    assert!(l1.first() != l1.last(), "training did not change the loss");
}

/// `lr_find.candidates.arch = ["torchscript", "small_cnn"]`: the user's module (the spec's own)
/// and a built-in model each get a range test, and the one with the lower loss trains.
#[test]
fn a_users_module_and_a_built_in_model_compete_in_one_lr_sweep() {
    let Some(work) = work_with_modules() else { return };
    let dir = work.path();
    let spec = format!(
        "name = \"ts-sweep\"\noutput = \"file://./store\"\n[data]\nsource = \"fashion_mnist\"\nlimit_train = 512\n\
         limit_eval = 256\nbatch_size = 64\n[model]\narch = \"torchscript\"\ntorchscript = \"file://{}\"\n\
         [lr_find]\nstart = 1e-4\nend = 10\nsteps = 20\n[lr_find.candidates]\narch = [\"torchscript\", \"small_cnn\"]\n\
         [[stage]]\nlr = \"auto\"\nepochs = 1\n[runtime]\nthreads = 1\n",
        dir.join("modules/bn_cnn.pt").display()
    );
    std::fs::write(dir.join("job.toml"), spec).unwrap();
    let ran = run(&["train", "job.toml", "--out", "out"], dir, Duration::from_secs(300));
    assert_eq!(ran.code, Some(0), "stdout:\n{}\nstderr:\n{}", ran.stdout, ran.stderr);
    let results: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(dir.join("out/results.json")).unwrap()).unwrap();
    let swept: Vec<&str> = results["sweep"]["candidates"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c["label"].as_str().unwrap())
        .collect();
    assert_eq!(swept, ["arch=torchscript", "arch=small_cnn"], "{}", results["sweep"]);
    for c in results["sweep"]["candidates"].as_array().unwrap() {
        assert_eq!(c["report"]["lrs"].as_array().unwrap().len(), 20, "{} had no range test", c["label"]);
    }
    assert!(ran.stdout.contains("lr sweep     trained: arch="), "{}", ran.stdout);
}
