//! [`CheckpointStore`]: commits and finds checkpoints in any `object_store` backend.
//!
//! `file://PATH` (relative paths are taken from the working directory; the folder is created) and
//! `memory://` are built in. All methods are async; a worker thread without a runtime wraps them
//! with a small current-thread tokio runtime.

use std::sync::Arc;

use bytes::Bytes;
use futures::TryStreamExt;
use object_store::{memory::InMemory, path::Path as ObjPath, ObjectStore, ObjectStoreExt, PutPayload};

use super::manifest::{BlobEntry, CheckpointKind, Manifest, MANIFEST_FILE, MANIFEST_VERSION};
use crate::error::{Error, Result};

/// A named blob to store in a checkpoint.
#[derive(Debug, Clone)]
pub struct Blob {
    pub name: String,
    pub data: Bytes,
}

/// Where one run's checkpoints live: `<job>/<run>` under the store's root.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RunLocation {
    pub job: String,
    pub run: String,
}

impl RunLocation {
    pub fn new(job: &str, run: &str) -> Self {
        RunLocation { job: job.into(), run: run.into() }
    }
    fn prefix(&self) -> String {
        format!("{}/{}", self.job, self.run)
    }
    /// Folder of the periodic checkpoint at `step`.
    pub fn checkpoint_dir(&self, step: u64) -> String {
        format!("{}/ckpt-{step:010}", self.prefix())
    }
    /// Folder of snapshot `index` (counted over the job).
    pub fn snapshot_dir(&self, index: usize) -> String {
        format!("{}/snapshots/cycle-{index}", self.prefix())
    }
}

#[derive(Clone)]
pub struct CheckpointStore {
    url: String,
    store: Arc<dyn ObjectStore>,
}

impl std::fmt::Debug for CheckpointStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CheckpointStore").field("url", &self.url).finish()
    }
}

impl CheckpointStore {
    /// Open a store by URL: `file://PATH`, a plain path, or `memory://`.
    pub fn open(url: &str) -> Result<Self> {
        if url.starts_with("memory://") {
            return Ok(Self::from_object_store(url, Arc::new(InMemory::new())));
        }
        let path = match url.strip_prefix("file://") {
            Some(p) => p,
            None if !url.contains("://") => url,
            None => {
                return Err(Error::StoreUrl {
                    url: url.into(),
                    message: "unsupported scheme; use file://PATH or memory://".into(),
                })
            }
        };
        if path.is_empty() {
            return Err(Error::StoreUrl { url: url.into(), message: "the path is empty".into() });
        }
        let not_writable =
            |e: std::io::Error| Error::StoreNotWritable { url: url.into(), path: path.into(), source: e };
        std::fs::create_dir_all(path).map_err(not_writable)?;
        // create_dir_all succeeds on an existing read-only folder: prove we can write there now,
        // not at the first checkpoint an hour into training
        let probe = std::path::Path::new(path).join(".cyclotron-write-probe");
        std::fs::write(&probe, b"").map_err(not_writable)?;
        let _ = std::fs::remove_file(&probe);
        let local = object_store::local::LocalFileSystem::new_with_prefix(path)
            .map_err(|e| Error::StoreUrl { url: url.into(), message: e.to_string() })?;
        Ok(Self::from_object_store(url, Arc::new(local)))
    }

    /// Wrap any object store (S3 and friends arrive this way).
    pub fn from_object_store(url: &str, store: Arc<dyn ObjectStore>) -> Self {
        CheckpointStore { url: url.to_string(), store }
    }

    pub fn url(&self) -> &str {
        &self.url
    }

    fn err(&self, op: &'static str, key: &str) -> impl FnOnce(object_store::Error) -> Error + '_ {
        let key = key.to_string();
        move |source| Error::Store { url: self.url.clone(), op, key, source: Box::new(source) }
    }

    /// Commit a checkpoint in `dir`: every blob, then the manifest.
    pub async fn commit(
        &self,
        dir: &str,
        kind: CheckpointKind,
        position: (u64, usize, u32, Option<u32>),
        blobs: Vec<Blob>,
        state: serde_json::Value,
    ) -> Result<Manifest> {
        let (step, stage, epoch, cycle) = position;
        let mut entries = Vec::with_capacity(blobs.len());
        for blob in blobs {
            entries.push(BlobEntry::of(&blob.name, &blob.data));
            let key = format!("{dir}/{}", blob.name);
            self.store
                .put(&ObjPath::from(key.as_str()), PutPayload::from(blob.data))
                .await
                .map_err(self.err("put", &key))?;
        }
        let manifest = Manifest {
            version: MANIFEST_VERSION,
            kind,
            step,
            stage,
            epoch,
            cycle,
            blobs: entries,
            state,
            created_unix_ms: std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map(|d| d.as_millis() as u64)
                .unwrap_or(0),
        };
        let key = format!("{dir}/{MANIFEST_FILE}");
        let body = serde_json::to_vec_pretty(&manifest)
            .map_err(|e| Error::Manifest { key: key.clone(), source: e })?;
        self.store
            .put(&ObjPath::from(key.as_str()), PutPayload::from(body))
            .await
            .map_err(self.err("put", &key))?;
        Ok(manifest)
    }

    /// Every committed checkpoint under `prefix` (folders holding a manifest), sorted by folder.
    pub async fn list(&self, prefix: &str) -> Result<Vec<(String, Manifest)>> {
        let p = ObjPath::from(prefix);
        let metas: Vec<_> =
            self.store.list(Some(&p)).try_collect().await.map_err(self.err("list", prefix))?;
        let mut dirs: Vec<String> = metas
            .iter()
            .filter(|m| m.location.filename() == Some(MANIFEST_FILE))
            .filter_map(|m| {
                m.location.as_ref().strip_suffix(&format!("/{MANIFEST_FILE}")).map(str::to_string)
            })
            .collect();
        dirs.sort();
        let mut out = Vec::with_capacity(dirs.len());
        for dir in dirs {
            out.push((dir.clone(), self.manifest(&dir).await?));
        }
        Ok(out)
    }

    /// The manifest of the checkpoint in `dir`.
    pub async fn manifest(&self, dir: &str) -> Result<Manifest> {
        let key = format!("{dir}/{MANIFEST_FILE}");
        let bytes = self.get(&key).await?;
        serde_json::from_slice(&bytes).map_err(|e| Error::Manifest { key, source: e })
    }

    /// The periodic checkpoint with the highest step of a run.
    pub async fn latest(&self, run: &RunLocation) -> Result<Option<(String, Manifest)>> {
        let all = self.list(&run.prefix()).await?;
        Ok(all.into_iter().filter(|(_, m)| m.kind == CheckpointKind::Checkpoint).max_by_key(|(_, m)| m.step))
    }

    /// The snapshots of a run, in the order they were taken.
    pub async fn snapshots(&self, run: &RunLocation) -> Result<Vec<(String, Manifest)>> {
        let mut all: Vec<_> = self
            .list(&format!("{}/snapshots", run.prefix()))
            .await?
            .into_iter()
            .filter(|(_, m)| m.kind == CheckpointKind::Snapshot)
            .collect();
        all.sort_by_key(|(_, m)| m.step);
        Ok(all)
    }

    /// Read one blob of a committed checkpoint, verifying its size and checksum.
    pub async fn read_blob(&self, dir: &str, manifest: &Manifest, name: &str) -> Result<Bytes> {
        let key = format!("{dir}/{name}");
        let entry = manifest.blob(name).ok_or_else(|| Error::Corrupt {
            key: key.clone(),
            message: "not listed in the manifest".into(),
        })?;
        let data = self.get(&key).await?;
        if !entry.matches(&data) {
            return Err(Error::Corrupt {
                key,
                message: format!(
                    "size or sha256 differs from the manifest ({} bytes expected, {} found)",
                    entry.size,
                    data.len()
                ),
            });
        }
        Ok(data)
    }

    async fn get(&self, key: &str) -> Result<Bytes> {
        let r = self.store.get(&ObjPath::from(key)).await.map_err(self.err("get", key))?;
        r.bytes().await.map_err(self.err("get", key))
    }

    /// Delete a checkpoint: the manifest first (so it stops existing), then its blobs.
    pub async fn delete(&self, dir: &str) -> Result<()> {
        let manifest = self.manifest(dir).await?;
        let key = format!("{dir}/{MANIFEST_FILE}");
        self.store.delete(&ObjPath::from(key.as_str())).await.map_err(self.err("delete", &key))?;
        for b in manifest.blobs {
            let key = format!("{dir}/{}", b.name);
            self.store.delete(&ObjPath::from(key.as_str())).await.map_err(self.err("delete", &key))?;
        }
        Ok(())
    }

    /// Write a blob outside any checkpoint (results, reports).
    pub async fn put_raw(&self, key: &str, data: Bytes) -> Result<()> {
        self.store.put(&ObjPath::from(key), PutPayload::from(data)).await.map_err(self.err("put", key))?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    //! One suite, run on every backend.
    use super::*;

    fn rt() -> tokio::runtime::Runtime {
        tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap()
    }

    fn blobs(tag: &str) -> Vec<Blob> {
        vec![
            Blob { name: "model.safetensors".into(), data: Bytes::from(format!("weights-{tag}")) },
            Blob { name: "state.json".into(), data: Bytes::from("{}") },
        ]
    }

    async fn suite(store: CheckpointStore) {
        let run = RunLocation::new("job", "run-1");
        assert!(store.latest(&run).await.unwrap().is_none());
        for step in [10u64, 30, 20] {
            store
                .commit(
                    &run.checkpoint_dir(step),
                    CheckpointKind::Checkpoint,
                    (step, 0, 1, None),
                    blobs(&step.to_string()),
                    serde_json::json!({"step": step}),
                )
                .await
                .unwrap();
        }
        store
            .commit(
                &run.snapshot_dir(0),
                CheckpointKind::Snapshot,
                (15, 0, 1, Some(0)),
                blobs("s0"),
                serde_json::Value::Null,
            )
            .await
            .unwrap();
        store
            .commit(
                &run.snapshot_dir(1),
                CheckpointKind::Snapshot,
                (25, 0, 2, Some(1)),
                blobs("s1"),
                serde_json::Value::Null,
            )
            .await
            .unwrap();

        let (dir, latest) = store.latest(&run).await.unwrap().unwrap();
        assert_eq!(latest.step, 30);
        assert_eq!(dir, "job/run-1/ckpt-0000000030");
        assert_eq!(
            store.read_blob(&dir, &latest, "model.safetensors").await.unwrap(),
            Bytes::from("weights-30")
        );
        assert_eq!(latest.state["step"], 30);

        let snaps = store.snapshots(&run).await.unwrap();
        assert_eq!(snaps.iter().map(|(_, m)| m.cycle).collect::<Vec<_>>(), vec![Some(0), Some(1)]);
        assert_eq!(snaps[1].0, "job/run-1/snapshots/cycle-1");

        // blobs without a manifest do not make a checkpoint
        store.put_raw("job/run-1/ckpt-0000000099/model.safetensors", Bytes::from("partial")).await.unwrap();
        assert_eq!(store.latest(&run).await.unwrap().unwrap().1.step, 30);

        // a corrupted blob is detected
        store.put_raw(&format!("{dir}/model.safetensors"), Bytes::from("weights-3X")).await.unwrap();
        let err = store.read_blob(&dir, &latest, "model.safetensors").await.unwrap_err().to_string();
        assert!(err.contains("sha256 differs"), "{err}");

        // delete removes the manifest, so the previous one becomes latest
        store.delete(&dir).await.unwrap();
        assert_eq!(store.latest(&run).await.unwrap().unwrap().1.step, 20);
    }

    #[test]
    fn memory_backend_passes_the_suite() {
        rt().block_on(suite(CheckpointStore::open("memory://").unwrap()));
    }

    #[test]
    fn file_backend_passes_the_suite() {
        let dir = tempfile::tempdir().unwrap();
        let url = format!("file://{}/runs", dir.path().display());
        rt().block_on(suite(CheckpointStore::open(&url).unwrap()));
        assert!(dir.path().join("runs/job/run-1/ckpt-0000000020/MANIFEST.json").exists());
    }

    #[test]
    fn unsupported_scheme_and_unwritable_folder_are_clear_errors() {
        let e = CheckpointStore::open("gopher://x").unwrap_err().to_string();
        assert!(e.contains("unsupported scheme"), "{e}");
        let e = CheckpointStore::open("file:///proc/cyclotron-cannot-be-here").unwrap_err().to_string();
        assert!(e.contains("cannot create or write the folder /proc/cyclotron-cannot-be-here"), "{e}");
    }
}
