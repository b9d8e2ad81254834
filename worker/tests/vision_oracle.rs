//! Cross-framework oracle: torchvision builds `resnet34`, `resnext50_32x4d` and `vgg16_bn` with
//! seeded random weights (tests/fixtures/make_torchvision_oracle.py); each state dict, loaded by
//! torchvision name into Cyclotron's model, must give the same evaluation-mode logits on the same
//! input within 1e-4 relative error. Skips with a message when the venv's python lacks
//! torchvision (`make setup` installs it).

use std::path::PathBuf;
use std::process::Command;

use cyclotron_worker::models::{self, pretrained};
use cyclotron_worker::tensor_io::from_safetensors;
use tch::Device;

fn python() -> PathBuf {
    let venv = std::env::var_os("CYCLOTRON_VENV").map(PathBuf::from).unwrap_or_else(|| {
        PathBuf::from(std::env::var_os("HOME").unwrap_or_default()).join(".cache/cyclotron/torch-2.11.0")
    });
    venv.join("bin/python")
}

#[test]
fn torchvision_weights_give_torchvision_logits() {
    let script =
        PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../tests/fixtures/make_torchvision_oracle.py");
    let dir = tempfile::tempdir().expect("temp dir");
    let archs = ["resnet34", "resnext50_32x4d", "vgg16_bn"];
    let out = match Command::new(python()).arg(&script).arg(dir.path()).args(archs).output() {
        Ok(o) => o,
        Err(e) => {
            eprintln!("skipping: cannot run {}: {e} (make setup creates the venv)", python().display());
            return;
        }
    };
    if out.status.code() == Some(3) {
        eprintln!(
            "skipping: {} (make setup installs torchvision==0.26.0)",
            String::from_utf8_lossy(&out.stderr).trim()
        );
        return;
    }
    assert!(out.status.success(), "oracle script failed: {}", String::from_utf8_lossy(&out.stderr));
    let io = from_safetensors(&std::fs::read(dir.path().join("io.safetensors")).unwrap(), "io").unwrap();
    let get = |name: &str| io.iter().find(|(n, _)| n == name).map(|(_, t)| t.shallow_clone()).unwrap();
    let x = get("input");
    for arch in archs {
        let net = models::build(arch, 0, 3, 10, Device::Cpu).unwrap();
        let path = dir.path().join(format!("{arch}.safetensors"));
        let skipped = pretrained::load_pretrained(&net, path.to_str().unwrap(), &Default::default()).unwrap();
        assert!(skipped.is_empty(), "{arch}: head skipped although the class count matches: {skipped:?}");
        let want = get(&format!("logits.{arch}"));
        let got = tch::no_grad(|| net.forward_t(&x, false)).unwrap();
        assert_eq!(got.size(), want.size(), "{arch}");
        let err = (&got - &want).abs().max().double_value(&[]);
        let scale = want.abs().max().double_value(&[]);
        assert!(scale > 1e-3, "{arch}: the reference logits are all ~0 ({scale:e}): a vacuous comparison");
        assert!(err / scale < 1e-4, "{arch}: max |Δ| {err:e} against max |logit| {scale:e}");
        eprintln!("{arch}: max |logit| {scale:.3e}, relative error {:.2e}", err / scale);
    }
}
