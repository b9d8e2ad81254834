//! The communication thread: one OS thread owns the group's [`Collective`] and runs its calls in
//! the order they are queued, so the training thread can flatten bucket `k+1` while bucket `k` is
//! being reduced (bagua's one-thread-per-communicator design).
//!
//! Protocol: the training thread queues `(buffer, op)` requests on a bounded channel and takes the
//! replies `(buffer, result)` back in the same order; the buffer travels with the request, so
//! nothing is shared and nothing is copied. Every wait for a reply is bounded by the collective's
//! deadline plus a margin. Dropping a [`CommThread`] closes the queue and joins the thread.

use std::sync::mpsc::{channel, sync_channel, Receiver, RecvTimeoutError, SyncSender};
use std::sync::{Arc, OnceLock};
use std::thread::JoinHandle;
use std::time::Duration;

use crate::collective::{Collective, CollectiveError, ReduceOp, Result};

/// What the thread does with a buffer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Op {
    Reduce(ReduceOp),
    Broadcast { root: usize },
}

type Request = (Vec<f32>, Op);
type Reply = (Vec<f32>, Result<()>);

/// Requests queued ahead of the thread (the training thread blocks beyond this).
const DEPTH: usize = 64;

pub struct CommThread {
    tx: Option<SyncSender<Request>>,
    rx: Receiver<Reply>,
    thread: Option<JoinHandle<()>>,
    rank: usize,
    world: usize,
    timeout: Duration,
    pending: usize,
    /// Where the thread records all-reduce seconds and bytes, once set.
    metrics: Arc<OnceLock<crate::metrics::CommMetrics>>,
}

impl std::fmt::Debug for CommThread {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CommThread").field("rank", &self.rank).field("world", &self.world).finish()
    }
}

impl CommThread {
    /// Moves `c` onto its own thread; every call gets `timeout` as its deadline.
    pub fn spawn(mut c: Box<dyn Collective>, timeout: Duration) -> Result<CommThread> {
        c.set_timeout(timeout);
        let (rank, world) = (c.rank(), c.world_size());
        let (tx, requests) = sync_channel::<Request>(DEPTH);
        // unbounded: the thread never blocks on replies, so a full request queue cannot deadlock
        let (replies, rx) = channel::<Reply>();
        let metrics = Arc::new(OnceLock::<crate::metrics::CommMetrics>::new());
        let metered = Arc::clone(&metrics);
        let thread = std::thread::Builder::new()
            .name(format!("cyclotron-comm-{rank}"))
            .spawn(move || {
                for (mut buf, op) in requests {
                    let started = std::time::Instant::now();
                    let result = match op {
                        Op::Reduce(r) => c.all_reduce(&mut buf, r),
                        Op::Broadcast { root } => c.broadcast(&mut buf, root),
                    };
                    if let (Op::Reduce(_), Some(m)) = (op, metered.get()) {
                        m.record(started.elapsed(), 4 * buf.len() as u64);
                    }
                    if replies.send((buf, result)).is_err() {
                        return;
                    }
                }
            })
            .map_err(|source| CollectiveError::Io { what: "communication thread".into(), source })?;
        Ok(CommThread { tx: Some(tx), rx, thread: Some(thread), rank, world, timeout, pending: 0, metrics })
    }

    /// Record the seconds and bytes of every all-reduce from now on (the first call wins).
    pub fn set_metrics(&self, m: crate::metrics::CommMetrics) {
        let _ = self.metrics.set(m);
    }

    pub fn rank(&self) -> usize {
        self.rank
    }

    pub fn world_size(&self) -> usize {
        self.world
    }

    fn gone(&self) -> CollectiveError {
        CollectiveError::PeerLost {
            rank: self.rank,
            op: "communication thread",
            peer: self.rank,
            message: "the communication thread ended".into(),
        }
    }

    /// Queues `buf` for `op`.
    pub fn submit(&mut self, buf: Vec<f32>, op: Op) -> Result<()> {
        let tx = self.tx.as_ref().ok_or_else(|| self.gone())?;
        tx.send((buf, op)).map_err(|_| self.gone())?;
        self.pending += 1;
        Ok(())
    }

    /// The reply to the oldest queued request: its buffer, reduced or broadcast.
    pub fn wait(&mut self) -> Result<Vec<f32>> {
        // the collective fails by itself at its deadline; the margin covers queued calls
        let limit = self.timeout * (self.pending.max(1) as u32) + Duration::from_secs(5);
        match self.rx.recv_timeout(limit) {
            Ok((buf, result)) => {
                self.pending -= 1;
                result.map(|()| buf)
            }
            Err(RecvTimeoutError::Timeout) => Err(CollectiveError::Timeout {
                rank: self.rank,
                op: "communication thread",
                peer: self.rank,
                after: limit,
            }),
            Err(RecvTimeoutError::Disconnected) => Err(self.gone()),
        }
    }

    /// Runs one call and waits for it.
    pub fn run(&mut self, buf: Vec<f32>, op: Op) -> Result<Vec<f32>> {
        self.submit(buf, op)?;
        self.wait()
    }
}

impl Drop for CommThread {
    fn drop(&mut self) {
        // the thread finishes the queued calls (each bounded by its deadline), then exits
        self.tx = None;
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}
