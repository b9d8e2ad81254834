//! A user's TorchScript module as an image `Net`: modules scripted at test time by the venv's
//! torch (tests/fixtures/torchscript_fixtures.py; `make setup` installs torch, so these tests
//! require it). Parameters keep their PyTorch names and share storage with the module, layer
//! groups follow the default split or the spec's prefixes, freezing stops gradients, the saved
//! module carries the trained values, a module's buffers (BatchNorm running statistics) are
//! non-trainable variables sharing its storage, and a module of the wrong signature or output
//! shape is an error naming what was expected.

use std::path::{Path, PathBuf};
use std::process::Command;

use cyclotron_worker::models::{self, Model, Net};
use tch::{Device, Kind, Tensor};

fn python() -> PathBuf {
    let venv = std::env::var_os("CYCLOTRON_VENV").map(PathBuf::from).unwrap_or_else(|| {
        PathBuf::from(std::env::var_os("HOME").unwrap_or_default()).join(".cache/cyclotron/torch-2.11.0")
    });
    venv.join("bin/python")
}

/// The fixtures, scripted into `dir`.
fn fixtures(dir: &Path) {
    let script = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../tests/fixtures/torchscript_fixtures.py");
    let out =
        Command::new(python()).arg(&script).arg("make").arg(dir).output().unwrap_or_else(|e| {
            panic!("{}: {e} (make setup creates the venv with torch)", python().display())
        });
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
}

fn build(
    dir: &Path,
    name: &str,
    groups: Option<&[Vec<String>]>,
    classes: i64,
) -> cyclotron_worker::Result<Net> {
    let bytes = std::fs::read(dir.join(name)).unwrap();
    models::build_torchscript(&bytes, name, groups, [1, 28, 28], classes, Device::Cpu)
}

#[test]
fn a_scripted_cnn_trains_as_a_net() {
    let dir = tempfile::tempdir().unwrap();
    fixtures(dir.path());
    let net = build(dir.path(), "cnn.pt", None, 10).unwrap();
    let groups: Vec<(String, usize)> = net.named_groups().into_iter().map(|(n, g, _)| (n, g)).collect();
    let want = [
        ("fc.bias", 2),
        ("fc.weight", 2),
        ("features.0.bias", 0),
        ("features.0.weight", 0),
        ("features.4.bias", 1),
        ("features.4.weight", 1),
    ];
    assert_eq!(groups, want.iter().map(|(n, g)| (n.to_string(), *g)).collect::<Vec<_>>());

    // the spec's prefixes
    let by_prefix = vec![vec!["features.0".to_string()], vec!["features.4".into(), "fc".into()]];
    let e = build(dir.path(), "cnn.pt", Some(&by_prefix), 10).unwrap_err().to_string();
    assert!(e.contains("every parameter is in the body groups"), "{e}");
    let by_prefix = vec![vec!["features.0".to_string()], vec!["features.4".into()]];
    let net2 = build(dir.path(), "cnn.pt", Some(&by_prefix), 10).unwrap();
    assert_eq!(net2.group_of("features.4.weight"), 1);
    assert_eq!(net2.group_of("fc.weight"), 2);

    // frozen groups get no gradient; the VarStore's variables are the module's parameters
    net.freeze_to(2);
    let x = Tensor::randn([4, 1, 28, 28], (Kind::Float, Device::Cpu));
    let y = Tensor::from_slice(&[0i64, 1, 2, 3]);
    net.forward_t(&x, true).unwrap().cross_entropy_for_logits(&y).backward();
    for (name, g, t) in net.parameters() {
        assert_eq!(t.grad().defined(), g == 2, "{name} (group {g})");
    }
    let before = net.forward_t(&x, false).unwrap();
    tch::no_grad(|| {
        for (_, _, mut t) in net.parameters() {
            let _ = t.g_add_scalar_(0.01);
        }
    });
    let after = net.forward_t(&x, false).unwrap();
    assert!(!before.allclose(&after, 1e-6, 1e-6, false), "changing the variables changes the module");

    // the saved module carries the changed values
    let saved = net.script_bytes().unwrap().unwrap();
    let back = models::build_torchscript(&saved, "saved", None, [1, 28, 28], 10, Device::Cpu).unwrap();
    assert!(back.forward_t(&x, false).unwrap().allclose(&after, 1e-6, 1e-6, false));
}

#[test]
fn a_modules_buffers_are_variables_sharing_its_storage_and_never_trained() {
    let dir = tempfile::tempdir().unwrap();
    fixtures(dir.path());
    let net = build(dir.path(), "bn_cnn.pt", None, 10).unwrap();
    let buffers = ["features.1.num_batches_tracked", "features.1.running_mean", "features.1.running_var"];
    let vars = net.vs.variables();
    for b in buffers {
        assert!(vars.contains_key(b), "{b} is not a variable: {:?}", vars.keys().collect::<Vec<_>>());
        assert!(!net.is_parameter(b), "{b} counted as a parameter");
    }
    let params: Vec<String> = net.parameters().into_iter().map(|(n, _, _)| n).collect();
    assert!(params.contains(&"features.1.weight".to_string()), "{params:?}");
    assert!(params.iter().all(|n| !buffers.contains(&n.as_str())), "{params:?}");
    assert_eq!(net.vs.trainable_variables().len(), params.len(), "buffers are not trainable");
    assert!(!vars["features.1.running_var"].requires_grad());

    // a forward in training mode updates the module's running statistics: the variables see it
    let mean = vars["features.1.running_mean"].shallow_clone();
    let before = mean.copy();
    let x = Tensor::randn([8, 1, 28, 28], (Kind::Float, Device::Cpu)) * 3.0 + 1.0;
    let _ = tch::no_grad(|| net.forward_t(&x, true).unwrap());
    assert!(!mean.allclose(&before, 1e-6, 1e-6, false), "the variable does not share the module's buffer");
    assert_eq!(vars["features.1.num_batches_tracked"].int64_value(&[]), 1);

    // writing the variables (a checkpoint restored) changes what the module computes in eval mode
    let out = net.forward_t(&x, false).unwrap();
    tch::no_grad(|| {
        let _ = vars["features.1.running_var"].shallow_clone().fill_(100.0);
    });
    let changed = net.forward_t(&x, false).unwrap();
    assert!(!out.allclose(&changed, 1e-4, 1e-4, false), "the module does not read the variable");
}

#[test]
fn a_wrong_signature_or_output_is_an_error_naming_what_was_expected() {
    let dir = tempfile::tempdir().unwrap();
    fixtures(dir.path());
    let e = build(dir.path(), "seven.pt", None, 10).unwrap_err().to_string();
    assert_eq!(
        e,
        "model.torchscript: forward returned [2, 7] for images [2, 1, 28, 28], expected [2, 10] logits for 10 classes"
    );
    for name in ["two_inputs.pt", "tuple_out.pt"] {
        let e = build(dir.path(), name, None, 10).unwrap_err().to_string();
        assert!(
            e.starts_with(
                "model.torchscript: forward failed on images [2, 1, 28, 28]; it must take one tensor [B, C, H, W] and return logits [B, 10]: "
            ),
            "{name}: {e}"
        );
    }
    // 3-channel images into a 1-channel module
    let bytes = std::fs::read(dir.path().join("cnn.pt")).unwrap();
    let e = models::build_torchscript(&bytes, "cnn.pt", None, [3, 28, 28], 10, Device::Cpu)
        .unwrap_err()
        .to_string();
    assert!(e.starts_with("model.torchscript: forward failed on images [2, 3, 28, 28]"), "{e}");
}
