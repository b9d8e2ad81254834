//! The user's own model: a TorchScript module (exported with `torch.jit.script` or
//! `torch.jit.trace`) trained as an image [`Net`] or a tabular model
//! ([`super::tabular::TabularModel`]).
//!
//! Its parameters become the VarStore's variables under their PyTorch names (`conv1.weight`,
//! `layer1.0.bn1.bias`: the module's `state_dict` keys), sharing storage with the module, so the
//! learner's optimiser, freezing, gradient averaging, checkpoints and snapshots act on the module
//! itself, and a snapshot's `model.safetensors` loads back into PyTorch with `load_state_dict`.
//!
//! Layer groups: `model.torchscript_groups` (parameter-name prefixes of the early and the late
//! body; the rest is the head), else the last layer (the module holding the last parameter, in
//! the module's order) is the head and the parameters before it split into two halves.
//!
//! What the module must do is checked when it is loaded, on a batch of two blank images of the
//! data's shape: take one tensor [B, C, H, W] and return logits [B, classes] (a tabular module:
//! take `(cats, conts)` — level indices [B, n_cat] int64 and continuous values [B, n_cont] float32
//! — and return [B] or [B, 1] for a regression, logits [B, classes] for a classifier, checked on
//! rows holding each column's first and last level); every later forward checks the output's
//! shape again, so a module that misbehaves fails with an error, never a panic.
//!
//! Buffers (BatchNorm running statistics, anything registered with `register_buffer`) become
//! non-trainable variables under their `state_dict` names too, sharing storage with the module as
//! the built-in models' running statistics do: checkpoints, exact resume, snapshots, the weights
//! restored after an LR-range test and rank 0's broadcast all carry them. tch 0.24 lists a
//! module's parameters only; `csrc/module_buffers.cpp` lists its buffers.
//!
//! Limit, documented: a frozen group's BatchNorm layers keep updating their running statistics
//! in training mode (the built-in models hold them still); the module's own `train()`/`eval()`
//! is all tch can switch.

use std::collections::HashMap;
use std::sync::Mutex;

use cyclotron_core::spec::matches_prefix;
use tch::{nn, CModule, Device, Kind, Tensor};

use crate::error::{Error, Result};

const WHAT: &str = "model.torchscript";

fn invalid(message: impl Into<String>) -> Error {
    Error::Invalid { what: WHAT.into(), message: message.into() }
}

/// The first lines of a libtorch error (TorchScript errors carry a long traceback).
fn brief(e: &tch::TchError) -> String {
    let text = e.to_string();
    let lines: Vec<&str> = text.lines().filter(|l| !l.trim().is_empty()).take(6).collect();
    let mut out = lines.join(" | ");
    if out.len() > 1_200 {
        let cut = (0..=1_200).rev().find(|&i| out.is_char_boundary(i)).unwrap_or(0);
        out.truncate(cut);
        out.push('…');
    }
    out
}

/// A loaded TorchScript module.
pub struct ScriptModule {
    /// The module and whether it is in training mode now (switched only when that changes).
    module: Mutex<(CModule, bool)>,
    /// Logits per item its forward must return.
    num_classes: i64,
}

impl std::fmt::Debug for ScriptModule {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ScriptModule").field("num_classes", &self.num_classes).finish()
    }
}

impl ScriptModule {
    /// The module's forward on `inputs` in training mode when `train` (the mode is switched only
    /// when it changes).
    fn call(&self, inputs: &[&Tensor], train: bool) -> Result<std::result::Result<Tensor, tch::TchError>> {
        let mut guard = self.module.lock().map_err(|_| invalid("the module's lock is poisoned"))?;
        let (module, mode) = &mut *guard;
        if *mode != train {
            if train {
                module.f_set_train()?;
            } else {
                module.f_set_eval()?;
            }
            *mode = train;
        }
        Ok(module.forward_ts(inputs))
    }

    /// Logits [B, classes] of images `xs` [B, C, H, W], in training mode when `train`; an error
    /// naming what was expected when the module fails or returns another shape.
    pub fn forward(&self, xs: &Tensor, train: bool) -> Result<Tensor> {
        let shape = xs.size();
        let out = self.call(&[xs], train)?.map_err(|e| {
            invalid(format!(
                "forward failed on images {shape:?}; it must take one tensor [B, C, H, W] and return logits [B, {}]: {}",
                self.num_classes,
                brief(&e)
            ))
        })?;
        let b = shape.first().copied().unwrap_or(0);
        if out.size() != [b, self.num_classes] {
            return Err(invalid(format!(
                "forward returned {:?} for images {shape:?}, expected [{b}, {n}] logits for {n} classes",
                out.size(),
                n = self.num_classes
            )));
        }
        Ok(out)
    }

    /// A tabular module's outputs for rows of categorical indices `cats` [B, n_cat] (int64) and
    /// continuous values `conts` [B, n_cont] (float32): a regression's [B] (the module may return
    /// [B] or [B, 1]), a classifier's logits [B, classes]; an error naming what was expected when
    /// the module fails or returns another shape.
    pub fn forward_rows(&self, cats: &Tensor, conts: &Tensor, train: bool) -> Result<Tensor> {
        let n = self.num_classes;
        // formatted only for an error: this runs every training step
        let wanted =
            || if n == 1 { "[B] or [B, 1] (a regression)".to_string() } else { format!("logits [B, {n}]") };
        let out = self.call(&[cats, conts], train)?.map_err(|e| {
            invalid(format!(
                "forward failed on cats {:?} (int64 level indices) and conts {:?} (float32); it must take (cats, conts) and return {}: {}",
                cats.size(),
                conts.size(),
                wanted(),
                brief(&e)
            ))
        })?;
        let b = cats.size().first().copied().unwrap_or(0);
        match out.size().as_slice() {
            [x] if n == 1 && *x == b => Ok(out),
            [x, 1] if n == 1 && *x == b => Ok(out.squeeze_dim(1)),
            [x, c] if n > 1 && *x == b && *c == n => Ok(out),
            other => Err(invalid(format!(
                "forward returned {other:?} for {b} rows, expected {}",
                wanted().replace('B', &b.to_string())
            ))),
        }
    }

    /// The whole module (parameters and buffers as they are now) in `torch.jit.save`'s format.
    pub fn to_bytes(&self) -> Result<Vec<u8>> {
        let guard = self.module.lock().map_err(|_| invalid("the module's lock is poisoned"))?;
        let dir =
            tempfile::tempdir().map_err(|e| Error::Io { what: "temporary folder".into(), source: e })?;
        let path = dir.path().join("model.pt");
        guard.0.save(&path)?;
        std::fs::read(&path).map_err(|e| Error::Io { what: path.display().to_string(), source: e })
    }
}

/// A module loaded from `bytes` (`what` names them in errors) on `device`: its parameters added
/// to `vs` under their PyTorch names, and the layer group of each.
pub fn load(
    bytes: &[u8],
    what: &str,
    groups: Option<&[Vec<String>]>,
    num_classes: i64,
    vs: &nn::VarStore,
) -> Result<(ScriptModule, HashMap<String, usize>)> {
    let module = CModule::load_data_on_device(&mut &bytes[..], vs.device()).map_err(|e| {
        invalid(format!(
            "{what}: not a TorchScript module this libtorch can load (export it with torch.jit.script or torch.jit.trace, then torch.jit.save): {}",
            brief(&e)
        ))
    })?;
    let params = module.named_parameters()?;
    if params.is_empty() {
        return Err(invalid(format!("{what}: the module has no parameters to train")));
    }
    let names: Vec<String> = params.iter().map(|(n, _)| n.clone()).collect();
    let group_list = layer_groups(&names, groups)?;
    let root = vs.root();
    for (name, t) in params {
        if t.kind() != Kind::Float {
            return Err(invalid(format!(
                "{what}: parameter {name} is {:?}; export the module in float32 (model.float())",
                t.kind()
            )));
        }
        add_var(&root, what, "parameter", &name, t, true)?;
    }
    for (name, t) in
        super::module_buffers::named_buffers(&module).map_err(|m| invalid(format!("{what}: {m}")))?
    {
        add_var(&root, what, "buffer", &name, t, false)?;
    }
    let module = ScriptModule { module: Mutex::new((module, true)), num_classes };
    Ok((module, names.into_iter().zip(group_list).collect()))
}

/// Add `t` (a module's `kind`, "parameter" or "buffer", named `name` as in its `state_dict`) to
/// the VarStore under `root` at that name, sharing its storage.
fn add_var(root: &nn::Path, what: &str, kind: &str, name: &str, t: Tensor, trainable: bool) -> Result<()> {
    let parts: Vec<&str> = name.split('.').collect();
    if parts.iter().any(|p| p.is_empty()) {
        return Err(invalid(format!("{what}: {kind} name {name:?} has an empty part")));
    }
    if let Some((last, modules)) = parts.split_last() {
        let path = modules.iter().fold(root.clone(), |p, m| p.sub(*m));
        let _ = path.add(last, t, trainable);
    }
    Ok(())
}

/// The layer group of each parameter of `names` (in the module's order): by the prefixes of
/// `groups` (early body, late body; the rest is the head), else the default split (the module
/// of the last parameter is the head, the parameters before it two halves).
pub fn layer_groups(names: &[String], groups: Option<&[Vec<String>]>) -> Result<Vec<usize>> {
    let Some(groups) = groups else {
        let head_module = names.last().map(|n| n.rsplit_once('.').map_or("", |(m, _)| m)).unwrap_or("");
        let body =
            names.iter().position(|n| n.rsplit_once('.').map_or("", |(m, _)| m) == head_module).unwrap_or(0);
        return Ok((0..names.len())
            .map(|i| if i >= body { 2 } else { usize::from(i * 2 >= body) })
            .collect());
    };
    for (g, prefixes) in groups.iter().enumerate() {
        for prefix in prefixes {
            if !names.iter().any(|n| matches_prefix(n, prefix)) {
                let shown: Vec<&str> = names.iter().take(12).map(String::as_str).collect();
                return Err(Error::Invalid {
                    what: format!("model.torchscript_groups[{g}]"),
                    message: format!(
                        "{prefix:?} matches no parameter of the module; its parameters are {}{}",
                        shown.join(", "),
                        if names.len() > shown.len() { ", …" } else { "" }
                    ),
                });
            }
        }
    }
    let of = |n: &String| {
        groups.iter().position(|prefixes| prefixes.iter().any(|p| matches_prefix(n, p))).unwrap_or(2)
    };
    let list: Vec<usize> = names.iter().map(of).collect();
    if !list.contains(&2) {
        return Err(Error::Invalid {
            what: "model.torchscript_groups".into(),
            message:
                "every parameter is in the body groups; leave the head's modules out (they form group 3)"
                    .into(),
        });
    }
    Ok(list)
}

/// Check a tabular module in evaluation mode on two rows: every column's first level (the
/// unknown level, 0) and then its last (`levels[i] - 1`), with `n_cont` continuous values, so a
/// module whose embeddings are too small for the data's levels fails here, naming them.
pub fn probe_rows(
    module: &ScriptModule,
    levels: &[(String, i64)],
    n_cont: i64,
    device: Device,
) -> Result<()> {
    let _guard = tch::no_grad_guard();
    let last: Vec<i64> = levels.iter().map(|(_, n)| (n - 1).max(0)).collect();
    let k = levels.len() as i64;
    let cats = Tensor::cat(
        &[Tensor::zeros([1, k], (Kind::Int64, Device::Cpu)), Tensor::from_slice(&last).view([1, k])],
        0,
    )
    .to_device(device);
    let conts = Tensor::zeros([2, n_cont], (Kind::Float, device));
    module.forward_rows(&cats, &conts, false).map(|_| ()).map_err(|e| {
        let shown: Vec<String> = levels.iter().map(|(name, n)| format!("{name} {n}")).collect();
        Error::Invalid {
            what: WHAT.into(),
            message: format!(
                "{} (the data's categorical columns, in order, with their number of levels counting the unknown level 0: {}; continuous columns: {n_cont})",
                e.to_string().trim_start_matches("model.torchscript: "),
                if shown.is_empty() { "none".to_string() } else { shown.join(", ") }
            ),
        }
    })
}

/// Check the module on two blank images of shape `input` ([C, H, W]) in evaluation mode.
pub fn probe(module: &ScriptModule, input: [i64; 3], device: Device) -> Result<()> {
    let _guard = tch::no_grad_guard();
    let x = Tensor::zeros([2, input[0], input[1], input[2]], (Kind::Float, device));
    module.forward(&x, false).map(|_| ())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn names(v: &[&str]) -> Vec<String> {
        v.iter().map(|s| s.to_string()).collect()
    }

    #[test]
    fn the_default_split_makes_the_last_layer_the_head() {
        let n = names(&[
            "conv1.weight",
            "bn1.weight",
            "bn1.bias",
            "layer1.0.conv1.weight",
            "layer2.0.conv1.weight",
            "layer2.0.conv1.bias",
            "fc.weight",
            "fc.bias",
        ]);
        assert_eq!(layer_groups(&n, None).unwrap(), vec![0, 0, 0, 1, 1, 1, 2, 2]);
        assert_eq!(layer_groups(&names(&["weight", "bias"]), None).unwrap(), vec![2, 2]);
        assert_eq!(layer_groups(&names(&["a.weight", "fc.weight"]), None).unwrap(), vec![0, 2]);
    }

    #[test]
    fn prefixes_choose_the_groups_and_must_match() {
        let n = names(&["conv1.weight", "layer1.0.w", "layer10.w", "fc.weight"]);
        let g = vec![vec!["conv1".to_string()], vec!["layer1".to_string()]];
        assert_eq!(layer_groups(&n, Some(&g)).unwrap(), vec![0, 1, 2, 2]);
        let bad = vec![vec!["conv9".to_string()], vec!["layer1".to_string()]];
        let e = layer_groups(&n, Some(&bad)).unwrap_err().to_string();
        assert!(e.starts_with("model.torchscript_groups[0]: \"conv9\" matches no parameter of the module; its parameters are conv1.weight, layer1.0.w"), "{e}");
        let all = vec![
            vec!["conv1".to_string(), "fc".to_string()],
            vec!["layer1".to_string(), "layer10".to_string()],
        ];
        let e = layer_groups(&n, Some(&all)).unwrap_err().to_string();
        assert!(e.contains("every parameter is in the body groups"), "{e}");
    }

    #[test]
    fn bytes_that_are_no_module_are_refused() {
        let vs = nn::VarStore::new(Device::Cpu);
        let e = load(b"not a zip", "m.pt", None, 10, &vs).unwrap_err().to_string();
        assert!(e.starts_with("model.torchscript: m.pt: not a TorchScript module"), "{e}");
    }
}
