//! Verified restore: read a checkpoint back whole, every blob checked against the manifest, and
//! fall back to the previous checkpoint when one is unusable.
//!
//! ## Fallback contract
//! [`CheckpointStore::latest_valid`] walks a run's periodic checkpoints from the newest down. A
//! checkpoint whose manifest does not parse, or any of whose blobs is missing, truncated or differs
//! from its sha256, is skipped; the first one that reads back whole is returned. If any were
//! skipped, **one** warning names them (and [`Verified::skipped`] lists them with the reason).
//! Errors that a previous checkpoint cannot fix (access denied, store unreachable) are returned.

use bytes::Bytes;
use futures::{StreamExt, TryStreamExt};

use super::manifest::{CheckpointKind, Manifest};
use super::store::{CheckpointStore, RunLocation};
use crate::error::{Error, Result};

/// A checkpoint read back whole, every blob verified.
#[derive(Debug, Clone)]
pub struct Verified {
    pub dir: String,
    pub manifest: Manifest,
    /// Every blob of the manifest, in manifest order.
    pub blobs: Vec<(String, Bytes)>,
    /// Newer checkpoints that were unusable: (folder, why).
    pub skipped: Vec<(String, String)>,
}

impl Verified {
    pub fn blob(&self, name: &str) -> Option<&Bytes> {
        self.blobs.iter().find(|(n, _)| n == name).map(|(_, b)| b)
    }
}

/// Whether an error means "this checkpoint is bad" rather than "the store is".
fn is_bad_checkpoint(e: &Error) -> bool {
    match e {
        Error::Corrupt { .. } | Error::Manifest { .. } => true,
        Error::Store { source, .. } => matches!(**source, object_store::Error::NotFound { .. }),
        _ => false,
    }
}

impl CheckpointStore {
    /// Every blob of the checkpoint in `dir`, fetched concurrently, each verified (size, sha256)
    /// while it downloads.
    pub async fn read_verified(&self, dir: &str, manifest: &Manifest) -> Result<Vec<(String, Bytes)>> {
        let fetches = manifest.blobs.iter().map(|entry| async move {
            let data = self.fetch_verified(&format!("{dir}/{}", entry.name), entry).await?;
            Ok((entry.name.clone(), data))
        });
        futures::stream::iter(fetches).buffered(self.options.blob_concurrency.max(1)).try_collect().await
    }

    /// The newest periodic checkpoint of `run` that reads back whole; see the module docs.
    pub async fn latest_valid(&self, run: &RunLocation) -> Result<Option<Verified>> {
        self.latest_valid_where(run, |_, _| Ok(())).await
    }

    /// [`Self::latest_valid`], also skipping a checkpoint whose blobs verify but that `accept`
    /// refuses (its reason in `Err`), e.g. a training state that is missing or does not parse:
    /// such a checkpoint falls back to the previous one like a bad blob does.
    pub async fn latest_valid_where(
        &self,
        run: &RunLocation,
        accept: impl Fn(&Manifest, &[(String, Bytes)]) -> std::result::Result<(), String>,
    ) -> Result<Option<Verified>> {
        let mut dirs: Vec<String> = self
            .manifest_dirs(&run.prefix())
            .await?
            .into_iter()
            .filter(|d| d.rsplit('/').next().is_some_and(|leaf| leaf.starts_with("ckpt-")))
            .collect();
        // ckpt-<step:010>: the folder order is the step order
        dirs.sort_by(|a, b| b.cmp(a));
        let mut skipped = vec![];
        let mut found = None;
        for dir in dirs {
            let attempt = async {
                let manifest = self.manifest(&dir).await?;
                if manifest.kind != CheckpointKind::Checkpoint {
                    return Err(Error::Corrupt {
                        key: dir.clone(),
                        message: "not a periodic checkpoint".into(),
                    });
                }
                let blobs = self.read_verified(&dir, &manifest).await?;
                accept(&manifest, &blobs).map_err(|message| Error::Corrupt { key: dir.clone(), message })?;
                Ok((manifest, blobs))
            };
            match attempt.await {
                Ok((manifest, blobs)) => {
                    found = Some(Verified { dir, manifest, blobs, skipped: vec![] });
                    break;
                }
                Err(e) if is_bad_checkpoint(&e) => skipped.push((dir, e.to_string())),
                Err(e) => return Err(e),
            }
        }
        if !skipped.is_empty() {
            let names: Vec<&str> = skipped.iter().map(|(d, _)| d.as_str()).collect();
            let reasons: Vec<&str> = skipped.iter().map(|(_, r)| r.as_str()).collect();
            let fallback = found.as_ref().map_or("none (starting over)", |v: &Verified| v.dir.as_str());
            tracing::warn!(
                store = %self.url(),
                bad = %names.join(", "),
                reason = %reasons.join("; "),
                fallback,
                "unusable checkpoint skipped; resuming from the previous one"
            );
        }
        Ok(found.map(|v| Verified { skipped, ..v }))
    }
}
