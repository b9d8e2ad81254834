//! A committed snapshot read back by URL, for a model that starts from another job's snapshot
//! (a text classifier from a language model's encoder): the manifest first, then each blob,
//! checked against the manifest's size and sha256 as the store's own reads are.
//!
//! The URL names the snapshot's folder (`file://runs/text-lm/lm/snapshots/cycle-2`, a plain path,
//! or `s3://bucket/prefix/…/cycle-2`), or a whole run (`file://runs/text-lm/lm`): then the run's
//! snapshot with the lowest validation loss in its `results.json`.

use cyclotron_core::checkpoint::{sha256_hex, Manifest, StoreOptions};
use cyclotron_core::results::TrainResults;

use crate::error::{Error, Result};
use crate::models::pretrained::read_weights;

/// The files of one snapshot, verified.
#[derive(Debug)]
pub struct SnapshotFiles {
    /// Where they were read from (the snapshot's folder).
    pub url: String,
    pub manifest: Manifest,
    blobs: Vec<(String, Vec<u8>)>,
}

impl SnapshotFiles {
    /// A blob by name (`model.safetensors`, `tokenizer.json`, `state.json`).
    pub fn blob(&self, name: &str) -> Option<&[u8]> {
        self.blobs.iter().find(|(n, _)| n == name).map(|(_, b)| b.as_slice())
    }
}

fn missing(url: &str, what: &str) -> Error {
    Error::Checkpoint { key: url.to_string(), message: what.to_string() }
}

/// Read the snapshot at `url` (or the best one of the run at `url`); `what` names the setting
/// in errors (`model.encoder`).
pub fn read_snapshot(url: &str, options: &StoreOptions, what: &str) -> Result<SnapshotFiles> {
    let base = url.trim_end_matches('/');
    let manifest_bytes = match read_weights(&format!("{base}/MANIFEST.json"), options) {
        Ok(b) => b,
        Err(first) => {
            // a run: its results name the snapshots
            let Ok(results) = read_weights(&format!("{base}/results.json"), options) else {
                return Err(Error::Invalid {
                    what: what.into(),
                    message: format!(
                        "{url} is neither a committed snapshot (no MANIFEST.json: {first}) nor a finished run (no results.json)"
                    ),
                });
            };
            let results: TrainResults = serde_json::from_slice(&results).map_err(|e| Error::Invalid {
                what: what.into(),
                message: format!("{base}/results.json: {e}"),
            })?;
            let best = results
                .snapshots
                .iter()
                .filter(|s| s.valid.loss.is_finite())
                .min_by(|a, b| a.valid.loss.total_cmp(&b.valid.loss))
                .ok_or_else(|| Error::Invalid {
                    what: what.into(),
                    message: format!("the run at {url} took no snapshot; name a snapshot folder"),
                })?;
            return read_snapshot(&format!("{base}/snapshots/cycle-{}", best.index), options, what);
        }
    };
    let manifest: Manifest = serde_json::from_slice(&manifest_bytes)
        .map_err(|e| missing(&format!("{base}/MANIFEST.json"), &format!("not a manifest: {e}")))?;
    let mut blobs = vec![];
    for entry in &manifest.blobs {
        let key = format!("{base}/{}", entry.name);
        let data = read_weights(&key, options)?;
        if data.len() as u64 != entry.size || sha256_hex(&data) != entry.sha256 {
            return Err(missing(
                &key,
                &format!(
                    "size or sha256 differs from the manifest ({} bytes expected, {} found)",
                    entry.size,
                    data.len()
                ),
            ));
        }
        blobs.push((entry.name.clone(), data));
    }
    Ok(SnapshotFiles { url: base.to_string(), manifest, blobs })
}
