//! Pretrained weights: a safetensors file with torchvision's parameter names (or a Cyclotron
//! snapshot's `model.safetensors`), loaded into a freshly built [`Net`].
//!
//! Rules: every variable of the model must be in the file with the same shape, and every tensor
//! of the file must be a variable of the model — except the head's (layer group 2) tensors whose
//! shape differs (another number of classes: the head keeps its fresh initialisation) and
//! torchvision's `num_batches_tracked` counters (Cyclotron's BatchNorm keeps none). Anything else
//! is an error listing the missing, unexpected and mis-shaped keys.

use cyclotron_core::checkpoint::{CheckpointStore, StoreOptions};
use tch::Tensor;

use super::{Model, Net};
use crate::error::{Error, Result};
use crate::tensor_io::{from_safetensors, load_into};

/// Read the bytes at a weights URL: `file://PATH`, a plain path, or `s3://bucket/key` (through
/// the object store, with the job's S3 settings in `options`).
pub fn read_weights(url: &str, options: &StoreOptions) -> Result<Vec<u8>> {
    read_model_file("model.pretrained", url, options)
}

/// [`read_weights`] for the spec setting `field` (named in errors).
pub fn read_model_file(field: &str, url: &str, options: &StoreOptions) -> Result<Vec<u8>> {
    let path = match url.split_once("://") {
        None => url,
        Some(("file", rest)) => rest,
        Some(("s3", _)) => {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .map_err(|e| Error::Io { what: "tokio runtime".into(), source: e })?;
            return Ok(rt.block_on(CheckpointStore::read_url(url, options))?.to_vec());
        }
        Some((scheme, _)) => {
            return Err(Error::Invalid {
                what: field.into(),
                message: format!(
                    "{url:?}: {scheme}:// is not supported; use file://PATH, a plain path or s3://bucket/key"
                ),
            })
        }
    };
    std::fs::read(path).map_err(|e| Error::Io { what: format!("{field} {path}"), source: e })
}

/// Load the weights at `url` into `net`; returns the names of head tensors left at their fresh
/// initialisation because their shape differs.
pub fn load_pretrained(net: &Net, url: &str, options: &StoreOptions) -> Result<Vec<String>> {
    let bytes = read_weights(url, options)?;
    load_named(net, from_safetensors(&bytes, url)?, url)
}

/// [`load_pretrained`] on tensors already in memory; `what` names them in errors.
pub fn load_named(net: &Net, src: Vec<(String, Tensor)>, what: &str) -> Result<Vec<String>> {
    let vars = net.vs.variables();
    let mut kept = Vec::with_capacity(src.len());
    let mut skipped = vec![];
    for (name, t) in src {
        if name.ends_with("num_batches_tracked") && !vars.contains_key(&name) {
            continue;
        }
        match vars.get(&name) {
            Some(v) if net.group_of(&name) == 2 && v.size() != t.size() => {
                // a new head: keep the model's own fresh values
                kept.push((name.clone(), v.detach().copy()));
                skipped.push(name);
            }
            _ => kept.push((name, t)),
        }
    }
    load_into(&net.vs, &kept, what)?;
    skipped.sort();
    Ok(skipped)
}

#[cfg(test)]
mod tests {
    use tch::Device;

    use super::*;
    use crate::models::build;
    use crate::tensor_io::{clone_vars, to_safetensors};

    #[test]
    fn a_head_of_another_size_is_skipped_and_the_body_loads() {
        let a = build("small_resnet", 4, 1, 5, Device::Cpu).unwrap();
        let b = build("small_resnet", 4, 1, 3, Device::Cpu).unwrap();
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("m.safetensors");
        let mut named = clone_vars(&a.vs);
        named.push(("bn.num_batches_tracked".into(), Tensor::from_slice(&[3i64])));
        std::fs::write(&path, to_safetensors(&named).unwrap()).unwrap();
        let skipped =
            load_pretrained(&b, &format!("file://{}", path.display()), &StoreOptions::default()).unwrap();
        assert_eq!(skipped, vec!["head.fc.bias".to_string(), "head.fc.weight".to_string()]);
        let w = |n: &Net| n.vs.variables()["stem.conv.weight"].shallow_clone();
        assert!(w(&a).equal(&w(&b)));
    }

    #[test]
    fn a_body_mismatch_lists_the_keys() {
        let a = build("small_resnet", 4, 1, 5, Device::Cpu).unwrap();
        let b = build("small_resnet", 8, 1, 5, Device::Cpu).unwrap();
        let mut named = clone_vars(&a.vs);
        named.retain(|(n, _)| n != "stem.bn.bias");
        named.push(("extra.weight".into(), Tensor::zeros([1], (tch::Kind::Float, Device::Cpu))));
        let e = load_named(&b, named, "w.safetensors").unwrap_err().to_string();
        assert!(
            e.starts_with(
                "checkpoint w.safetensors: missing keys: stem.bn.bias; unexpected keys: extra.weight"
            ),
            "{e}"
        );
        assert!(
            e.contains("stem.conv.weight: shape [4, 1, 3, 3] in the file, [8, 1, 3, 3] in the model"),
            "{e}"
        );
        let e = read_weights("ftp://b/k", &StoreOptions::default()).unwrap_err().to_string();
        assert_eq!(
            e,
            "model.pretrained: \"ftp://b/k\": ftp:// is not supported; use file://PATH, a plain path or s3://bucket/key"
        );
    }

    #[test]
    fn weights_load_from_an_s3_store() {
        use cyclotron_core::checkpoint::test_server::S3TestServer;
        let dir = tempfile::tempdir().unwrap();
        let server = S3TestServer::start(dir.path(), &["models"], "key-id", "secret-key").unwrap();
        let options = StoreOptions { s3: server.options("key-id", "secret-key"), ..Default::default() };
        let a = build("small_resnet", 4, 1, 5, Device::Cpu).unwrap();
        let b = build("small_resnet", 4, 1, 5, Device::Cpu).unwrap();
        let bytes = to_safetensors(&clone_vars(&a.vs)).unwrap();
        let store = CheckpointStore::open_with("s3://models/zoo", &options).unwrap();
        let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
        rt.block_on(store.put_raw("small/model.safetensors", bytes.into())).unwrap();
        let skipped = load_pretrained(&b, "s3://models/zoo/small/model.safetensors", &options).unwrap();
        assert!(skipped.is_empty());
        let w = |n: &Net| n.vs.variables()["stem.conv.weight"].shallow_clone();
        assert!(w(&a).equal(&w(&b)));
        let e = load_pretrained(&b, "s3://models/zoo/none.safetensors", &options).unwrap_err().to_string();
        assert!(e.contains("none.safetensors"), "{e}");
    }
}
