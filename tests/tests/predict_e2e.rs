//! `cyclotron predict` on a run trained here, as a user runs it: the ensemble with TTA applied to
//! the run's own test images gives exactly the accuracy the run reported (the same members, the
//! same views, read back from the store); a PNG of one test image gets that image's
//! probabilities; inputs of the wrong shape are refused with what the model takes.

use std::io::Read;
use std::path::Path;
use std::time::Duration;

use cyclotron_tests::{fashion_mnist_present, run, Ran};

const TEST_IMAGES: &str = "/usr/share/datasets/fashion-mnist/t10k-images-idx3-ubyte.gz";
const TEST_LABELS: &str = "/usr/share/datasets/fashion-mnist/t10k-labels-idx1-ubyte.gz";
/// The run's evaluation split: the first `EVAL` test images (`limit_eval`).
const EVAL: usize = 300;

const JOB: &str = r#"name = "predict-e2e"
seed = 11
output = "file://./store"
[data]
source = "fashion_mnist"
batch_size = 64
limit_train = 1500
limit_eval = 300
[data.augment]
transforms = ["flip_h", "crop_pad:2"]
[model]
arch = "small_cnn"
width = 8
[optimizer]
kind = "sgd"
momentum = 0.9
[[stage]]
name = "sgdr"
lr = 0.05
cycles = 2
cycle_len = 1
[ensemble]
members = 2
selection = "last"
[tta]
n = 2
beta = 0.25
[runtime]
threads = 1
device = "cpu"
"#;

fn gunzip(path: &str) -> Vec<u8> {
    let mut out = vec![];
    flate2::read::GzDecoder::new(std::fs::File::open(path).expect("test file"))
        .read_to_end(&mut out)
        .unwrap();
    out
}

/// The first `n` items of an idx file (its first dimension rewritten).
fn head_of_idx(bytes: &[u8], ndims: usize, n: usize) -> Vec<u8> {
    let header = 4 + 4 * ndims;
    let item: usize = (1..ndims)
        .map(|d| u32::from_be_bytes(bytes[4 + 4 * d..8 + 4 * d].try_into().unwrap()) as usize)
        .product();
    let mut out = bytes[..header].to_vec();
    out[4..8].copy_from_slice(&(n as u32).to_be_bytes());
    out.extend_from_slice(&bytes[header..header + n * item]);
    out
}

fn json(ran: &Ran) -> serde_json::Value {
    assert_eq!(ran.code, Some(0), "stdout:\n{}\nstderr:\n{}", ran.stdout, ran.stderr);
    serde_json::from_str(&ran.stdout).unwrap_or_else(|e| panic!("{e}: {}", ran.stdout))
}

fn predict(dir: &Path, args: &[&str]) -> Ran {
    let mut all = vec!["predict"];
    all.extend_from_slice(args);
    run(&all, dir, Duration::from_secs(300))
}

fn close(a: f64, b: f64, what: &str) {
    assert!((a - b).abs() < 1e-6, "{what}: predict gave {a}, the run reported {b}");
}

/// A mean loss over the items: float32 sums in another batching or thread order differ in the
/// last digits (CI saw 2.139101 against 2.139095), so relative 1e-5; accuracies stay exact.
fn close_loss(a: f64, b: f64, what: &str) {
    assert!((a - b).abs() <= 1e-5 * b.abs().max(1.0), "{what}: predict gave {a}, the run reported {b}");
}

#[test]
fn predict_repeats_the_runs_scores_and_refuses_wrong_inputs() {
    if !fashion_mnist_present() {
        return;
    }
    let work = tempfile::tempdir().unwrap();
    let dir = work.path();
    std::fs::write(dir.join("job.toml"), JOB).unwrap();
    let ran = run(&["train", "job.toml", "--out", "out", "--run", "r1"], dir, Duration::from_secs(900));
    assert_eq!(ran.code, Some(0), "stdout:\n{}\nstderr:\n{}", ran.stdout, ran.stderr);
    let results: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(dir.join("out/results.json")).unwrap()).unwrap();
    let ens = &results["ensemble"];
    assert_eq!(ens["members"].as_array().unwrap().len(), 2, "{ens}");

    let images = head_of_idx(&gunzip(TEST_IMAGES), 3, EVAL);
    let labels = head_of_idx(&gunzip(TEST_LABELS), 1, EVAL);
    std::fs::write(dir.join("eval-idx3-ubyte"), &images).unwrap();
    std::fs::write(dir.join("eval-labels-idx1-ubyte"), &labels).unwrap();

    // the ensemble with TTA, from the --out folder: the run's own figure
    let with_tta =
        json(&predict(dir, &["out", "eval-idx3-ubyte", "--labels", "eval-labels-idx1-ubyte", "--json"]));
    assert_eq!(with_tta["tta"], true);
    assert_eq!(with_tta["members"].as_array().unwrap().len(), 2);
    assert_eq!(with_tta["predictions"].as_array().unwrap().len(), EVAL);
    close(with_tta["accuracy"].as_f64().unwrap(), ens["tta"]["accuracy"].as_f64().unwrap(), "ensemble + TTA");
    close_loss(
        with_tta["loss"].as_f64().unwrap(),
        ens["tta"]["loss"].as_f64().unwrap(),
        "ensemble + TTA loss",
    );

    // without TTA, from the run's folder in the store
    let store_run = dir.join("store/predict-e2e/r1");
    let plain = json(&predict(
        dir,
        &[
            store_run.to_str().unwrap(),
            "eval-idx3-ubyte",
            "--labels",
            "eval-labels-idx1-ubyte",
            "--json",
            "--no-tta",
        ],
    ));
    assert_eq!(plain["tta"], false);
    close(plain["accuracy"].as_f64().unwrap(), ens["accuracy"].as_f64().unwrap(), "ensemble");

    // one snapshot alone
    let snap = json(&predict(
        dir,
        &[
            "out",
            "eval-idx3-ubyte",
            "--labels",
            "eval-labels-idx1-ubyte",
            "--json",
            "--no-tta",
            "--snapshot",
            "1",
        ],
    ));
    close(
        snap["accuracy"].as_f64().unwrap(),
        results["snapshots"][1]["accuracy"].as_f64().unwrap(),
        "snapshot 1",
    );
    assert_eq!(snap["members"].as_array().unwrap().len(), 1);

    // a PNG of test image 7 gets image 7's probabilities (without TTA: a view's random draw
    // depends on the item's position among the inputs)
    let pixels = images[16 + 7 * 784..16 + 8 * 784].to_vec();
    image::GrayImage::from_raw(28, 28, pixels).unwrap().save(dir.join("seven.png")).unwrap();
    let png = json(&predict(dir, &["out", "seven.png", "--json", "--top", "10", "--no-tta"]));
    let (a, b) = (&png["predictions"][0]["top"], &plain["predictions"][7]["top"]);
    assert_eq!(a[0]["class"], b[0]["class"], "{a} vs {b}");
    close(a[0]["probability"].as_f64().unwrap(), b[0]["probability"].as_f64().unwrap(), "image 7");
    assert_eq!(a.as_array().unwrap().len(), 10);
    let total: f64 = a.as_array().unwrap().iter().map(|t| t["probability"].as_f64().unwrap()).sum();
    assert!((total - 1.0).abs() < 1e-4, "probabilities of all classes sum to {total}");

    // the table and CSV forms
    let table = predict(dir, &["out", "seven.png"]);
    assert_eq!(table.code, Some(0), "{}", table.stderr);
    assert!(
        table.stdout.contains("ensemble of 2 snapshots, with test-time augmentation"),
        "{}",
        table.stdout
    );
    assert!(table.stdout.contains("seven.png") && table.stdout.contains('%'), "{}", table.stdout);
    let csv = predict(dir, &["out", "eval-idx3-ubyte", "--csv", "--top", "2"]);
    assert_eq!(csv.code, Some(0), "{}", csv.stderr);
    let lines: Vec<&str> = csv.stdout.lines().collect();
    assert_eq!(lines[0], "input,rank,class,probability");
    assert_eq!(lines.len(), 1 + 2 * EVAL);

    // a colour image, a wrong size, a run that is not there: refused, saying what to do
    image::RgbImage::from_pixel(28, 28, image::Rgb([200, 30, 30])).save(dir.join("red.png")).unwrap();
    let red = predict(dir, &["out", "red.png"]);
    assert_ne!(red.code, Some(0));
    assert!(
        red.stderr.contains("is a colour 28×28 image; the model takes 1-channel (grayscale) 28×28 images")
            && red.stderr.contains("--resize"),
        "{}",
        red.stderr
    );
    image::GrayImage::from_pixel(32, 32, image::Luma([0])).save(dir.join("big.png")).unwrap();
    let big = predict(dir, &["out", "big.png"]);
    assert!(big.code != Some(0) && big.stderr.contains("is a grayscale 32×32 image"), "{}", big.stderr);
    let resized = predict(dir, &["out", "big.png", "red.png", "--resize", "--json"]);
    assert_eq!(json(&resized)["predictions"].as_array().unwrap().len(), 2);
    let nowhere = predict(dir, &["no-such-run", "seven.png"]);
    assert!(
        nowhere.code != Some(0) && nowhere.stderr.contains("is not a run: no results.json there"),
        "{}",
        nowhere.stderr
    );
    let bad_snapshot = predict(dir, &["out", "seven.png", "--snapshot", "5"]);
    assert!(
        bad_snapshot.stderr.contains("5 is not a snapshot of this run: it took 2"),
        "{}",
        bad_snapshot.stderr
    );
}
