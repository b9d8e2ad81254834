//! [`CheckpointStore`]: commits and finds checkpoints in any `object_store` backend.
//!
//! `file://PATH` (relative paths are taken from the working directory; the folder is created),
//! `s3://bucket/prefix` (see [`super::s3`]) and `memory://`. All methods are async; a worker thread
//! without a runtime wraps them with a small tokio runtime. The commit protocol is in
//! [`CheckpointStore::commit`]; verified restore with fallback in `restore.rs`.

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use futures::{StreamExt, TryStreamExt};
use object_store::{memory::InMemory, path::Path as ObjPath, ObjectStore, ObjectStoreExt};

use super::manifest::{BlobEntry, CheckpointKind, Manifest, MANIFEST_FILE, MANIFEST_VERSION};
use super::retention::{self, Committed};
use super::s3::{self, S3Options};
use super::transfer;
use crate::error::{Error, Result};

/// How a store moves bytes: multipart sizes, concurrency, retries, timeouts, S3 settings.
#[derive(Debug, Clone)]
pub struct StoreOptions {
    /// Blobs larger than this go up as multipart uploads.
    pub multipart_threshold: usize,
    /// Part size of multipart uploads (S3 wants ≥ 5 MiB for every part but the last).
    pub part_size: usize,
    /// Parts of one blob in flight at once.
    pub part_concurrency: usize,
    /// Blobs of one checkpoint uploaded (or read) at once.
    pub blob_concurrency: usize,
    /// Whole-blob attempts (see `transfer::put`).
    pub attempts: u32,
    /// First backoff between attempts (doubles each time) and of request retries.
    pub backoff: Duration,
    /// Retries of one HTTP request inside object_store.
    pub request_retries: usize,
    /// Timeout of one HTTP request.
    pub request_timeout: Duration,
    pub s3: S3Options,
}

impl Default for StoreOptions {
    fn default() -> Self {
        StoreOptions {
            multipart_threshold: 16 << 20,
            part_size: 8 << 20,
            part_concurrency: 4,
            blob_concurrency: 4,
            attempts: 3,
            backoff: Duration::from_millis(200),
            request_retries: 3,
            request_timeout: Duration::from_secs(60),
            s3: S3Options::default(),
        }
    }
}

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
    /// `<job>/<run>`: the folder of everything the run stores.
    pub fn prefix(&self) -> String {
        format!("{}/{}", self.job, self.run)
    }
    /// Folder of the periodic checkpoint at `step`.
    /// The step of one of this run's checkpoint folders (`<prefix>/ckpt-<step>`).
    pub fn step_of(&self, dir: &str) -> Option<u64> {
        dir.strip_prefix(&format!("{}/ckpt-", self.prefix()))?.parse().ok()
    }

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
    /// Redacted: safe for logs and errors.
    url: String,
    pub(super) store: Arc<dyn ObjectStore>,
    pub(super) options: StoreOptions,
}

impl std::fmt::Debug for CheckpointStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CheckpointStore").field("url", &self.url).finish()
    }
}

impl CheckpointStore {
    /// Open a store by URL: `file://PATH`, a plain path, `s3://bucket/prefix` or `memory://`.
    pub fn open(url: &str) -> Result<Self> {
        Self::open_with(url, &StoreOptions::default())
    }

    /// [`CheckpointStore::open`] with transfer and S3 options.
    pub fn open_with(url: &str, options: &StoreOptions) -> Result<Self> {
        let mut store = Self::open_plain(url, options)?;
        store.options = options.clone();
        Ok(store)
    }

    fn open_plain(url: &str, options: &StoreOptions) -> Result<Self> {
        if url.starts_with("s3://") {
            return Ok(Self::from_object_store(url, s3::open(url, options)?));
        }
        if url.starts_with("memory://") {
            return Ok(Self::from_object_store(url, Arc::new(InMemory::new())));
        }
        let path = match url.strip_prefix("file://") {
            Some(p) => p,
            None if !url.contains("://") => url,
            None => {
                return Err(Error::StoreUrl {
                    url: s3::redact(url),
                    message: "unsupported scheme; use file://PATH, s3://bucket/prefix or memory://".into(),
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
        // fsync: a manifest on disk promises blobs that survive a power cut, as S3's does;
        // cleanup: deleting a checkpoint (retention) leaves no empty folders behind
        let local = object_store::local::LocalFileSystem::new_with_prefix(path)
            .map_err(|e| Error::StoreUrl { url: url.into(), message: e.to_string() })?
            .with_fsync(true)
            .with_automatic_cleanup(true);
        Ok(Self::from_object_store(url, Arc::new(local)))
    }

    /// Wrap any object store (S3 and friends arrive this way).
    pub fn from_object_store(url: &str, store: Arc<dyn ObjectStore>) -> Self {
        CheckpointStore { url: s3::redact(url), store, options: StoreOptions::default() }
    }

    pub fn options(&self) -> &StoreOptions {
        &self.options
    }

    pub fn url(&self) -> &str {
        &self.url
    }

    pub(super) fn err(&self, op: &'static str, key: &str) -> impl FnOnce(object_store::Error) -> Error + '_ {
        let key = key.to_string();
        move |source| match s3::describe(&self.url, &source) {
            Some(message) => Error::Access { url: self.url.clone(), message },
            None => Error::Store { url: self.url.clone(), op, key, source: Box::new(source) },
        }
    }

    /// Put one blob with multipart and retries (see `transfer::put`).
    pub(super) async fn put_blob(&self, key: &str, data: &Bytes) -> Result<()> {
        transfer::put(self.store.as_ref(), key, data, &self.options).await.map_err(|(source, attempts)| {
            match s3::describe(&self.url, &source) {
                Some(message) => Error::Access { url: self.url.clone(), message },
                None => Error::Upload {
                    url: self.url.clone(),
                    op: "put",
                    key: key.into(),
                    attempts,
                    source: Box::new(source),
                },
            }
        })
    }

    /// Prove the store is reachable and writable now (credentials, bucket), not at the first
    /// checkpoint an hour into training: write and delete a probe object under `prefix`.
    pub async fn check_access(&self, prefix: &str) -> Result<()> {
        // a listing first: some servers create a missing bucket's folder on a put
        let p = ObjPath::from(prefix);
        if let Some(Err(e)) = self.store.list(Some(&p)).next().await {
            return Err(self.err("list", prefix)(e));
        }
        let key = format!("{prefix}/.cyclotron-write-probe");
        self.store
            .put(&ObjPath::from(key.as_str()), Bytes::new().into())
            .await
            .map_err(self.err("put", &key))?;
        self.store.delete(&ObjPath::from(key.as_str())).await.map_err(self.err("delete", &key))?;
        Ok(())
    }

    /// Commit a checkpoint in `dir`.
    ///
    /// **Protocol**: every blob is stored first (concurrently, `blob_concurrency` at a time, each
    /// with multipart and retries); only when all of them are stored is `MANIFEST.json` (sizes and
    /// sha256 of each blob) written, last. Any blob failing for good returns its error and writes
    /// no manifest, so the checkpoint does not exist and readers fall back to the previous one.
    pub async fn commit(
        &self,
        dir: &str,
        kind: CheckpointKind,
        position: (u64, usize, u32, Option<u32>),
        blobs: Vec<Blob>,
        state: serde_json::Value,
    ) -> Result<Manifest> {
        let (step, stage, epoch, cycle) = position;
        let entries: Vec<BlobEntry> = blobs.iter().map(|b| BlobEntry::of(&b.name, &b.data)).collect();
        let mut puts = futures::stream::iter(
            blobs
                .iter()
                .map(|blob| async move { self.put_blob(&format!("{dir}/{}", blob.name), &blob.data).await }),
        )
        .buffer_unordered(self.options.blob_concurrency.max(1));
        while let Some(r) = puts.next().await {
            r?;
        }
        drop(puts);
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
        self.put_blob(&key, &Bytes::from(body)).await?;
        Ok(manifest)
    }

    /// Every committed checkpoint under `prefix` (folders holding a manifest), sorted by folder.
    pub async fn list(&self, prefix: &str) -> Result<Vec<(String, Manifest)>> {
        let dirs = self.manifest_dirs(prefix).await?;
        let mut out = Vec::with_capacity(dirs.len());
        for dir in dirs {
            out.push((dir.clone(), self.manifest(&dir).await?));
        }
        Ok(out)
    }

    /// Folders under `prefix` that hold a `MANIFEST.json`, sorted (without reading the manifests).
    pub async fn manifest_dirs(&self, prefix: &str) -> Result<Vec<String>> {
        Ok(dirs_with_manifest(&self.list_objects(prefix).await?))
    }

    /// Every object under `prefix`.
    async fn list_objects(&self, prefix: &str) -> Result<Vec<object_store::ObjectMeta>> {
        let p = ObjPath::from(prefix);
        self.store.list(Some(&p)).try_collect().await.map_err(self.err("list", prefix))
    }

    /// The manifest of the checkpoint in `dir`, checked ([`Manifest::check`]): a manifest is read
    /// from a store others can write, and names the objects a deletion removes.
    pub async fn manifest(&self, dir: &str) -> Result<Manifest> {
        let key = format!("{dir}/{MANIFEST_FILE}");
        let bytes = self.get(&key).await?;
        Manifest::parse(&bytes, &key)
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

    /// Read one blob of a committed checkpoint, verifying its size and checksum as it downloads.
    pub async fn read_blob(&self, dir: &str, manifest: &Manifest, name: &str) -> Result<Bytes> {
        let key = format!("{dir}/{name}");
        let entry = manifest.blob(name).ok_or_else(|| Error::Corrupt {
            key: key.clone(),
            message: "not listed in the manifest".into(),
        })?;
        self.fetch_verified(&key, entry).await
    }

    /// Fetch `key`, hashing while it downloads, and check it against its manifest entry: the one
    /// verification every read of a committed blob goes through.
    pub(super) async fn fetch_verified(&self, key: &str, entry: &BlobEntry) -> Result<Bytes> {
        let (data, sha) =
            transfer::get_hashed(self.store.as_ref(), key).await.map_err(self.err("get", key))?;
        if data.len() as u64 != entry.size || sha != entry.sha256 {
            return Err(Error::Corrupt {
                key: key.to_string(),
                message: format!(
                    "size or sha256 differs from the manifest ({} bytes expected, {} found)",
                    entry.size,
                    data.len()
                ),
            });
        }
        Ok(data)
    }

    pub(super) async fn get(&self, key: &str) -> Result<Bytes> {
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

    /// Read any object whole, unverified (what a plain object_store get costs; the bench's peer).
    pub async fn read_raw(&self, key: &str) -> Result<Bytes> {
        self.get(key).await
    }

    /// Read one object named by a full URL (`s3://bucket/prefix/file`, `memory://…`), e.g.
    /// pretrained weights that live outside any run. `file://` and plain paths are for the caller
    /// to read directly: opening a local store would create its folder.
    pub async fn read_url(url: &str, options: &StoreOptions) -> Result<Bytes> {
        let (dir, name) = match url.rsplit_once('/') {
            Some((dir, name))
                if !name.is_empty()
                    && dir.contains("://")
                    && !dir.ends_with(':')
                    && !dir.ends_with("://") =>
            {
                (dir, name)
            }
            _ => {
                return Err(Error::StoreUrl {
                    url: s3::redact(url),
                    message: "name an object: scheme://bucket/path/to/file".into(),
                })
            }
        };
        CheckpointStore::open_with(dir, options)?.read_raw(name).await
    }

    /// Write a blob outside any checkpoint (results, reports).
    pub async fn put_raw(&self, key: &str, data: Bytes) -> Result<()> {
        self.put_blob(key, &data).await
    }

    /// Delete the periodic checkpoints of `run` beyond the `keep_last` newest (see
    /// [`retention::to_delete`]); snapshots are kept. Returns the folders deleted.
    pub async fn apply_retention(&self, run: &RunLocation, keep_last: usize) -> Result<Vec<String>> {
        // one listing of the run serves both the committed folders and the orphaned blobs
        let objects = self.list_objects(&run.prefix()).await?;
        let mut committed = vec![];
        for dir in dirs_with_manifest(&objects) {
            // an unreadable old manifest must not stop training: skip it (it is kept, and a
            // resume skips it too, see `latest_valid`)
            match self.manifest(&dir).await {
                Ok(m) => committed.push(Committed { dir, kind: m.kind, step: m.step }),
                Err(e @ (Error::Manifest { .. } | Error::Corrupt { .. })) => {
                    tracing::warn!(dir = %dir, error = %e, "retention skips a checkpoint whose manifest is unreadable");
                }
                Err(e) => return Err(e),
            }
        }
        let mut doomed = retention::to_delete(&committed, keep_last);
        for dir in &doomed {
            self.delete(dir).await?;
        }
        // blobs of checkpoints that never got a manifest (a commit that failed for good, a
        // process killed mid-upload) and are older than a committed one: nothing will finish them
        let newest = committed.iter().filter(|c| c.kind == CheckpointKind::Checkpoint).map(|c| c.step).max();
        if let Some(newest) = newest {
            for (dir, keys) in uncommitted_checkpoint_dirs(run, &objects) {
                if run.step_of(&dir).is_some_and(|step| step < newest) {
                    tracing::info!(dir = %dir, "deleting the blobs of a checkpoint that was never committed");
                    for key in keys {
                        let name = key.to_string();
                        self.store.delete(&key).await.map_err(self.err("delete", &name))?;
                    }
                    doomed.push(dir);
                }
            }
        }
        Ok(doomed)
    }
}

/// The folders among `objects` that hold a `MANIFEST.json`, sorted.
fn dirs_with_manifest(objects: &[object_store::ObjectMeta]) -> Vec<String> {
    let mut dirs: Vec<String> = objects
        .iter()
        .filter(|m| m.location.filename() == Some(MANIFEST_FILE))
        .filter_map(|m| m.location.as_ref().strip_suffix(&format!("/{MANIFEST_FILE}")).map(str::to_string))
        .collect();
    dirs.sort();
    dirs
}

/// Checkpoint folders of `run` among `objects` that hold objects but no manifest, with their keys.
fn uncommitted_checkpoint_dirs(
    run: &RunLocation,
    objects: &[object_store::ObjectMeta],
) -> Vec<(String, Vec<ObjPath>)> {
    let prefix = run.prefix();
    let mut dirs: std::collections::BTreeMap<String, (bool, Vec<ObjPath>)> = Default::default();
    for m in objects {
        let Some(rest) = m.location.as_ref().strip_prefix(&format!("{prefix}/")) else { continue };
        let Some((dir, _)) = rest.split_once('/') else { continue };
        if !dir.starts_with("ckpt-") {
            continue;
        }
        let entry = dirs.entry(format!("{prefix}/{dir}")).or_default();
        entry.0 |= m.location.filename() == Some(MANIFEST_FILE);
        entry.1.push(m.location.clone());
    }
    dirs.into_iter().filter(|(_, (committed, _))| !committed).map(|(dir, (_, keys))| (dir, keys)).collect()
}
