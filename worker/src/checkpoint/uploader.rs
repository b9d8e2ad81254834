//! The background uploader: the training thread hands a checkpoint off (CPU copies of its tensors)
//! and goes on; one thread with its own tokio runtime serialises, hashes and stores it.
//!
//! ## Protocol
//! - `submit` puts a [`Pending`] checkpoint on a bounded queue (`max_pending`): training waits only
//!   when that many are already waiting, which bounds the memory held by copies. A copy thread
//!   (`state::hand_off`) queues from its own thread; the next hand-off waits for the previous
//!   copy thread to have queued ([`Uploader::track_copy`]), so at most one copy waits outside the queue.
//! - The uploader thread takes them in order; for each it serialises the tensors to safetensors,
//!   commits it ([`CheckpointStore::commit`]: blobs concurrently with multipart and retries, the
//!   manifest last), then applies retention (deletions only after the newer manifest exists).
//! - A checkpoint that fails for good is remembered: the next `submit` or `finish` returns that
//!   error, so a job never goes on (or ends "successfully") without the checkpoints it promised.
//! - `finish(deadline)` closes the queue and waits for the uploads left, at most `deadline`.

use std::sync::mpsc::{sync_channel, SyncSender};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use cyclotron_core::checkpoint::{Blob, CheckpointKind, CheckpointStore, RunLocation};
use tch::Tensor;

use crate::error::{Error, Result};
use crate::tensor_io::to_safetensors;

/// A checkpoint waiting for upload.
pub struct Pending {
    pub dir: String,
    pub kind: CheckpointKind,
    /// (step, stage, epoch, cycle), as the manifest records it.
    pub position: (u64, usize, u32, Option<u32>),
    /// Blobs to serialise as safetensors: (blob name, named CPU tensors).
    pub tensors: Vec<(String, Vec<(String, Tensor)>)>,
    /// Blobs already in bytes.
    pub raw: Vec<Blob>,
    pub state: serde_json::Value,
    /// Retention to apply once committed: the run and how many checkpoints to keep.
    pub retention: Option<(RunLocation, usize)>,
}

/// The uploader thread and its queue.
pub struct Uploader {
    tx: Option<SyncSender<Pending>>,
    thread: Option<JoinHandle<()>>,
    failed: Arc<Mutex<Option<Error>>>,
    committed: Arc<Mutex<Vec<String>>>,
    /// The last copy thread, until it has queued its checkpoint.
    copying: Mutex<Option<JoinHandle<()>>>,
}

impl std::fmt::Debug for Uploader {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Uploader").field("committed", &self.committed()).finish()
    }
}

/// Commits `p`; the folder and the bytes stored.
fn upload(store: &CheckpointStore, rt: &tokio::runtime::Runtime, p: Pending) -> Result<(String, u64)> {
    let mut blobs = Vec::with_capacity(p.tensors.len() + p.raw.len());
    for (name, tensors) in &p.tensors {
        blobs.push(Blob { name: name.clone(), data: to_safetensors(tensors)?.into() });
    }
    blobs.extend(p.raw);
    let bytes = blobs.iter().map(|b| b.data.len() as u64).sum();
    rt.block_on(store.commit(&p.dir, p.kind, p.position, blobs, p.state))?;
    if let Some((run, keep)) = &p.retention {
        rt.block_on(store.apply_retention(run, *keep))?;
    }
    Ok((p.dir, bytes))
}

impl Uploader {
    /// Start the uploader thread for `store`, with room for `max_pending` waiting checkpoints.
    pub fn start(store: CheckpointStore, max_pending: usize) -> Result<Self> {
        Self::start_with_metrics(store, max_pending, None)
    }

    /// [`Uploader::start`], recording bytes, seconds and failures of every commit into `metrics`.
    pub fn start_with_metrics(
        store: CheckpointStore,
        max_pending: usize,
        metrics: Option<crate::metrics::CheckpointMetrics>,
    ) -> Result<Self> {
        let (tx, rx) = sync_channel::<Pending>(max_pending.max(1));
        let failed = Arc::new(Mutex::new(None));
        let committed = Arc::new(Mutex::new(vec![]));
        let (failed2, committed2) = (Arc::clone(&failed), Arc::clone(&committed));
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .thread_name("ckpt-io")
            .enable_all()
            .build()
            .map_err(|e| Error::Io { what: "uploader runtime".into(), source: e })?;
        let thread = std::thread::Builder::new()
            .name("ckpt-uploader".into())
            .spawn(move || {
                for p in rx {
                    // after a failure, drain the queue without uploading: the job is failing
                    if failed2.lock().expect("uploader state").is_some() {
                        continue;
                    }
                    let (dir, started) = (p.dir.clone(), Instant::now());
                    match upload(&store, &rt, p) {
                        Ok((dir, bytes)) => {
                            metrics.iter().for_each(|m| m.committed(bytes, started.elapsed()));
                            committed2.lock().expect("uploader state").push(dir)
                        }
                        Err(e) => {
                            metrics.iter().for_each(|m| m.failed());
                            tracing::error!(checkpoint = %dir, error = %e, "checkpoint upload failed");
                            *failed2.lock().expect("uploader state") = Some(e);
                        }
                    }
                }
                rt.shutdown_timeout(Duration::from_secs(1));
            })
            .map_err(|e| Error::Io { what: "uploader thread".into(), source: e })?;
        Ok(Uploader { tx: Some(tx), thread: Some(thread), failed, committed, copying: Mutex::new(None) })
    }

    fn take_failure(&self) -> Result<()> {
        match self.failed.lock().expect("uploader state").take() {
            Some(e) => Err(e),
            None => Ok(()),
        }
    }

    /// A sender for another thread (a checkpoint's copy thread) to queue on; fails with the reason
    /// if an earlier upload failed for good.
    pub fn sender(&self) -> Result<SyncSender<Pending>> {
        self.take_failure()?;
        Ok(self.tx.as_ref().expect("sender after finish").clone())
    }

    /// Track a copy thread that will queue a checkpoint: first waits for the previous one to have
    /// queued its own (backpressure when uploads fall behind, bounding the copies in memory).
    pub fn track_copy(&self, copier: JoinHandle<()>) {
        let previous = self.copying.lock().expect("uploader state").replace(copier);
        if let Some(t) = previous {
            let _ = t.join();
        }
    }

    /// Queue a checkpoint (waits while the queue is full). Fails with the reason if an earlier
    /// upload failed for good.
    pub fn submit(&self, p: Pending) -> Result<()> {
        self.take_failure()?;
        let tx = self.tx.as_ref().expect("submit after finish");
        tx.send(p).map_err(|_| Error::Checkpoint {
            key: "uploader".into(),
            message: "the uploader thread is gone".into(),
        })
    }

    /// Folders committed so far, in order.
    pub fn committed(&self) -> Vec<String> {
        self.committed.lock().expect("uploader state").clone()
    }

    /// Wait (at most `deadline`) for every queued upload; the first failure, if any.
    pub fn finish(mut self, deadline: Duration) -> Result<Vec<String>> {
        drop(self.tx.take());
        // the last copy thread holds a sender until it has queued; the uploader drains it
        drop(self.copying.lock().expect("uploader state").take());
        let started = Instant::now();
        if let Some(t) = self.thread.take() {
            while !t.is_finished() {
                if started.elapsed() > deadline {
                    return Err(Error::Checkpoint {
                        key: "uploader".into(),
                        message: format!(
                            "uploads still pending after {}s; the store is too slow or unreachable",
                            deadline.as_secs()
                        ),
                    });
                }
                std::thread::sleep(Duration::from_millis(5));
            }
            let _ = t.join();
        }
        self.take_failure()?;
        Ok(self.committed())
    }
}

impl Drop for Uploader {
    fn drop(&mut self) {
        // an uploader dropped without finish (an error path) stops taking work; its thread ends
        // after the upload in progress
        drop(self.tx.take());
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use cyclotron_core::checkpoint::StoreOptions;
    use tch::{Device, Kind};

    use super::*;

    fn pending(run: &RunLocation, step: u64) -> Pending {
        let w = Tensor::full([4, 4], step as f64, (Kind::Float, Device::Cpu));
        Pending {
            dir: run.checkpoint_dir(step),
            kind: CheckpointKind::Checkpoint,
            position: (step, 0, step as u32, None),
            tensors: vec![("model.safetensors".into(), vec![("w".into(), w)])],
            raw: vec![Blob { name: "state.json".into(), data: bytes::Bytes::from("{}") }],
            state: serde_json::Value::Null,
            retention: Some((run.clone(), 2)),
        }
    }

    #[test]
    fn uploads_in_order_and_applies_retention() {
        let store = CheckpointStore::open("memory://").unwrap();
        let run = RunLocation::new("j", "r");
        let up = Uploader::start(store.clone(), 1).unwrap();
        for step in 1..=3 {
            up.submit(pending(&run, step)).unwrap();
        }
        let done = up.finish(Duration::from_secs(30)).unwrap();
        assert_eq!(done, (1..=3).map(|s| run.checkpoint_dir(s)).collect::<Vec<_>>());
        let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
        let left: Vec<u64> = rt.block_on(store.list("j/r")).unwrap().iter().map(|(_, m)| m.step).collect();
        assert_eq!(left, vec![2, 3]);
        let v = rt.block_on(store.latest_valid(&run)).unwrap().unwrap();
        let w = crate::tensor_io::from_safetensors(v.blob("model.safetensors").unwrap(), "m").unwrap();
        assert_eq!(w[0].1.double_value(&[0, 0]), 3.0);
    }

    #[test]
    fn an_upload_that_keeps_failing_fails_the_job_with_the_reason() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path().join("runs");
        let options = StoreOptions { attempts: 2, backoff: Duration::from_millis(5), ..Default::default() };
        let store = CheckpointStore::open_with(&format!("file://{}", root.display()), &options).unwrap();
        // the store's folder becomes a file: every put fails, whatever the retries
        std::fs::remove_dir_all(&root).unwrap();
        std::fs::write(&root, b"not a folder").unwrap();
        let run = RunLocation::new("j", "r");
        let up = Uploader::start(store, 2).unwrap();
        up.submit(pending(&run, 1)).unwrap();
        let e = up.finish(Duration::from_secs(30)).unwrap_err().to_string();
        assert!(e.contains("j/r/ckpt-0000000001/") && e.contains("failed after"), "{e}");
    }
}
