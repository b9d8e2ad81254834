//! Transfer learning end to end on a small slice of Fashion-MNIST: pretrain on classes 0–2, then
//! fine-tune on classes 3–5 from that snapshot (`model.pretrained`) with a precomputed head stage,
//! an augmented unfrozen stage and TTA, as `examples/transfer_*.toml` do at full size; the
//! fine-tuned body starts as the pretrained snapshot, byte for byte.

use std::path::Path;
use std::time::Duration;

use cyclotron_tests::{fashion_mnist_present, run};

const PRETRAIN: &str = r#"
name = "tl-pre"
seed = 3
[data]
source = "fashion_mnist"
classes = [0, 1, 2]
batch_size = 64
limit_train = 640
limit_eval = 300
[model]
arch = "small_resnet"
width = 8
[[stage]]
lr = 0.1
cycles = 1
cycle_len = 2
"#;

const FINETUNE: &str = r#"
name = "tl-ft"
seed = 3
[data]
source = "fashion_mnist"
classes = [3, 4, 5]
batch_size = 64
limit_train = 640
limit_eval = 300
[data.augment]
transforms = ["flip_h", "crop_pad:2"]
[model]
arch = "small_resnet"
width = 8
pretrained = "runs/tl-pre/pre/snapshots/cycle-0/model.safetensors"
[[stage]]
freeze = true
precompute = true
lr = 0.1
epochs = 1
[[stage]]
lr = 0.1
cycles = 1
cycle_len = 2
[tta]
n = 2
[checkpoint]
keep_last = 3
"#;

/// The tensors of a safetensors file: name → (dtype, shape, raw bytes).
fn safetensors(path: &Path) -> std::collections::BTreeMap<String, (String, Vec<u64>, Vec<u8>)> {
    let bytes = std::fs::read(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    let n = u64::from_le_bytes(bytes[..8].try_into().unwrap()) as usize;
    let header: serde_json::Value = serde_json::from_slice(&bytes[8..8 + n]).unwrap();
    let data = &bytes[8 + n..];
    header
        .as_object()
        .unwrap()
        .iter()
        .filter(|(k, _)| *k != "__metadata__")
        .map(|(k, v)| {
            let range: Vec<usize> =
                v["data_offsets"].as_array().unwrap().iter().map(|o| o.as_u64().unwrap() as usize).collect();
            let shape = v["shape"].as_array().unwrap().iter().map(|d| d.as_u64().unwrap()).collect();
            (k.clone(), (v["dtype"].as_str().unwrap().to_string(), shape, data[range[0]..range[1]].to_vec()))
        })
        .collect()
}

fn read_json(path: &Path) -> serde_json::Value {
    let text = std::fs::read_to_string(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    serde_json::from_str(&text).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

#[test]
fn pretrain_then_fine_tune_with_precompute_augmentation_and_tta() {
    if !fashion_mnist_present() {
        return;
    }
    let work = tempfile::tempdir().unwrap();
    std::fs::write(work.path().join("pre.toml"), PRETRAIN).unwrap();
    std::fs::write(work.path().join("ft.toml"), FINETUNE).unwrap();
    let deadline = Duration::from_secs(600);
    let ran = run(&["train", "pre.toml", "--out", "out-pre", "--run", "pre"], work.path(), deadline);
    assert_eq!(ran.code, Some(0), "stdout:\n{}\nstderr:\n{}", ran.stdout, ran.stderr);
    let ran = run(&["train", "ft.toml", "--out", "out-ft", "--run", "ft"], work.path(), deadline);
    assert_eq!(ran.code, Some(0), "stdout:\n{}\nstderr:\n{}", ran.stdout, ran.stderr);

    // the pretrained weights were loaded: after the frozen, precomputed first epoch (10 steps),
    // every body tensor (weights and BatchNorm statistics) is the pretrained snapshot's, byte for
    // byte, and the head was trained
    let pre = safetensors(&work.path().join("runs/tl-pre/pre/snapshots/cycle-0/model.safetensors"));
    let after_head = safetensors(&work.path().join("runs/tl-ft/ft/ckpt-0000000010/model.safetensors"));
    let body: Vec<&String> = pre.keys().filter(|k| !k.starts_with("head.")).collect();
    assert!(body.len() > 10, "{:?}", pre.keys());
    for name in body {
        assert_eq!(after_head.get(name), pre.get(name), "{name}: not the pretrained tensor");
    }
    assert_ne!(after_head.get("head.fc.weight"), pre.get("head.fc.weight"), "the head did not train");

    let results = read_json(&work.path().join("out-ft/results.json"));
    let epochs = results["epochs"].as_array().unwrap();
    assert_eq!(epochs.len(), 3, "one precomputed epoch, two unfrozen");
    let snap = &results["snapshots"][0];
    let (plain, tta) = (snap["accuracy"].as_f64().unwrap(), snap["tta"]["accuracy"].as_f64().unwrap());
    // three classes: chance is 33%
    assert!(plain > 0.4 && tta > 0.4, "plain {plain}, with TTA {tta}");
    assert!(results["ensemble"]["tta"]["accuracy"].as_f64().is_some());
    assert!(results["final_tta"]["accuracy"].as_f64().is_some());
    assert!(ran.stdout.contains("with TTA"), "{}", ran.stdout);

    // a pretrained file that is not there fails before training, naming the field
    let missing = FINETUNE.replace("runs/tl-pre/pre", "runs/nowhere");
    std::fs::write(work.path().join("bad.toml"), missing).unwrap();
    let ran = run(&["train", "bad.toml", "--out", "out-bad"], work.path(), deadline);
    assert_ne!(ran.code, Some(0));
    assert!(ran.stderr.contains("model.pretrained runs/nowhere"), "{}", ran.stderr);
}
