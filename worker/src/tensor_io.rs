//! Named tensors ↔ safetensors bytes, for checkpoints in any store (no temporary files).

use std::borrow::Cow;

use safetensors::tensor::{Dtype, SafeTensors, View};
use tch::{Device, Tensor};

use crate::error::{Error, Result};

struct CpuView {
    dtype: Dtype,
    shape: Vec<usize>,
    bytes: Vec<u8>,
}

impl View for &CpuView {
    fn dtype(&self) -> Dtype {
        self.dtype
    }
    fn shape(&self) -> &[usize] {
        &self.shape
    }
    fn data(&self) -> Cow<'_, [u8]> {
        Cow::Borrowed(&self.bytes)
    }
    fn data_len(&self) -> usize {
        self.bytes.len()
    }
}

fn view_of(t: &Tensor) -> Result<CpuView> {
    let t = t.detach().to_device(Device::Cpu).contiguous();
    let dtype = Dtype::try_from(t.kind())?;
    let numel = t.numel();
    let mut bytes = vec![0u8; numel * t.kind().elt_size_in_bytes()];
    t.f_copy_data_u8(&mut bytes, numel)?;
    Ok(CpuView { dtype, shape: t.size().iter().map(|&d| d as usize).collect(), bytes })
}

/// Serialise named tensors (any device) into safetensors bytes.
pub fn to_safetensors(named: &[(String, Tensor)]) -> Result<Vec<u8>> {
    let views: Vec<(String, CpuView)> =
        named.iter().map(|(n, t)| Ok((n.clone(), view_of(t)?))).collect::<Result<_>>()?;
    safetensors::tensor::serialize(views.iter().map(|(n, v)| (n.as_str(), v)), &None)
        .map_err(|e| Error::Checkpoint { key: "safetensors".into(), message: e.to_string() })
}

/// Parse safetensors bytes into CPU tensors.
pub fn from_safetensors(bytes: &[u8], what: &str) -> Result<Vec<(String, Tensor)>> {
    let st = SafeTensors::deserialize(bytes).map_err(|e| Error::Checkpoint {
        key: what.into(),
        message: format!("not a safetensors file: {e}"),
    })?;
    st.tensors()
        .into_iter()
        .map(|(name, view)| {
            // libtorch's sizes and strides are i64 (a zero-sized dimension still has strides)
            let strides = view
                .shape()
                .iter()
                .filter(|&&d| d != 0)
                .try_fold(1i64, |acc, &d| acc.checked_mul(i64::try_from(d).ok()?));
            if strides.is_none() {
                return Err(Error::Checkpoint {
                    key: what.into(),
                    message: format!(
                        "tensor {name}: shape {:?} is larger than libtorch allows",
                        view.shape()
                    ),
                });
            }
            Ok((name, Tensor::try_from(view)?))
        })
        .collect()
}

/// Copy `src` tensors into the variables of `vs` by name. Every variable must be present with the
/// same shape; otherwise the error lists what is missing, unexpected or mis-shaped.
pub fn load_into(vs: &tch::nn::VarStore, src: &[(String, Tensor)], what: &str) -> Result<()> {
    load_into_keeping(vs, src, what, &|_| false)
}

/// [`load_into`], except that variables missing from `src` for which `keep` holds keep their
/// values (a TorchScript snapshot written before its buffers were saved beside its parameters:
/// the module it was built from, the snapshot's own `model.pt`, holds them).
pub fn load_into_keeping(
    vs: &tch::nn::VarStore,
    src: &[(String, Tensor)],
    what: &str,
    keep: &dyn Fn(&str) -> bool,
) -> Result<()> {
    let vars = vs.variables();
    let missing: Vec<_> =
        vars.keys().filter(|k| !keep(k) && !src.iter().any(|(n, _)| n == *k)).cloned().collect();
    let unexpected: Vec<_> =
        src.iter().filter(|(n, _)| !vars.contains_key(n)).map(|(n, _)| n.clone()).collect();
    let mut problems = vec![];
    if !missing.is_empty() {
        problems.push(format!("missing keys: {}", missing.join(", ")));
    }
    if !unexpected.is_empty() {
        problems.push(format!("unexpected keys: {}", unexpected.join(", ")));
    }
    for (name, t) in src {
        if let Some(v) = vars.get(name) {
            if v.size() != t.size() {
                problems.push(format!(
                    "{name}: shape {:?} in the file, {:?} in the model",
                    t.size(),
                    v.size()
                ));
            }
        }
    }
    if !problems.is_empty() {
        return Err(Error::Checkpoint { key: what.into(), message: problems.join("; ") });
    }
    let _guard = tch::no_grad_guard();
    for (name, t) in src {
        let mut v = vars[name].shallow_clone();
        let t = if t.kind() == v.kind() { t.shallow_clone() } else { t.to_kind(v.kind()) };
        v.copy_(&t.to_device(v.device()));
    }
    Ok(())
}

/// Copies of every variable (for restoring after an LR-range test, or for snapshots in memory).
pub fn clone_vars(vs: &tch::nn::VarStore) -> Vec<(String, Tensor)> {
    let _guard = tch::no_grad_guard();
    let mut v: Vec<_> = vs.variables().into_iter().map(|(n, t)| (n, t.detach().copy())).collect();
    v.sort_by(|a, b| a.0.cmp(&b.0));
    v
}

#[cfg(test)]
mod tests {
    use super::*;
    use tch::Kind;

    #[test]
    fn round_trip_keeps_names_kinds_and_values() {
        let a = Tensor::randn([3, 4], (Kind::Float, Device::Cpu));
        let b = Tensor::from_slice(&[1i64, 2, 3]);
        let bytes =
            to_safetensors(&[("a".into(), a.shallow_clone()), ("b.c".into(), b.shallow_clone())]).unwrap();
        let back = from_safetensors(&bytes, "t").unwrap();
        let get = |n: &str| back.iter().find(|(k, _)| k == n).unwrap().1.shallow_clone();
        assert!(get("a").equal(&a));
        assert!(get("b.c").equal(&b));
        assert!(from_safetensors(b"garbage", "x.safetensors")
            .unwrap_err()
            .to_string()
            .contains("x.safetensors"));
    }

    #[test]
    fn load_into_names_missing_and_unexpected_keys() {
        let vs = tch::nn::VarStore::new(Device::Cpu);
        let _w = vs.root().zeros("w", &[2]);
        let _v = vs.root().zeros("v", &[2]);
        let src = vec![
            ("w".to_string(), Tensor::ones([2], (Kind::Float, Device::Cpu))),
            ("zz".to_string(), Tensor::ones([1], (Kind::Float, Device::Cpu))),
        ];
        let e = load_into(&vs, &src, "m").unwrap_err().to_string();
        assert!(e.contains("missing keys: v") && e.contains("unexpected keys: zz"), "{e}");
        let src = vec![
            ("w".to_string(), Tensor::ones([2], (Kind::Float, Device::Cpu))),
            ("v".to_string(), Tensor::ones([2], (Kind::Float, Device::Cpu))),
        ];
        load_into(&vs, &src, "m").unwrap();
        assert_eq!(vs.variables()["w"].sum(Kind::Float).double_value(&[]), 2.0);
    }
}
