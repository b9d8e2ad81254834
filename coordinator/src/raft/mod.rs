//! The raft node: [`RaftNode`] implements [`crate::replica::Replica`] with tikv raft-rs, storage
//! on disk and a pluggable [`Transport`].
//!
//! # Design
//!
//! One OS thread (the *driver*, `driver.rs`) owns the `RawNode` and the
//! [`ClusterState`](crate::state::ClusterState). Everything reaches it through one bounded
//! channel: proposals (the command as JSON in the entry data, a proposal key in the entry
//! context), raft messages from peers (`Replica::step` decodes the protobuf-2 bytes) and
//! shutdown. Between messages it ticks every `tick` and runs the Ready loop
//! in raft-rs' documented order:
//!
//! 1. send the leader's ordinary messages (a leader may send before persisting, raft thesis 10.2.1);
//! 2. install an incoming snapshot: persist it, replace the log, restore `ClusterState::from_bytes`;
//! 3. apply committed entries;
//! 4. append new entries (fdatasync) and persist the hard state if term or vote changed (fsync);
//! 5. only then send the *persisted* messages (votes, append responses: they acknowledge step 4);
//! 6. `advance`, then handle the light ready (commit index, messages, more committed entries)
//!    and `advance_apply`.
//!
//! Applying an entry runs `ClusterState::apply(index, &command)`; after each batch the new state is
//! published on a `tokio::sync::watch` channel. The replica that proposed an entry completes the
//! proposer's oneshot with the `Outcome`; the key in the context (node id, incarnation, sequence)
//! makes sure no other replica, and no later incarnation of this one, completes it. A pending
//! proposal ends in exactly one of: its entry applied (the outcome), another entry applied at
//! its index (`NotLeader`: it was overwritten after a leadership change, so it never applied), its
//! deadline (`Timeout`: it may still commit later, as with any consensus system), or shutdown
//! (`Stopped`). A proposal on a follower fails at once with `NotLeader` and the leader's address.
//! Empty entries (a new leader's) only advance the applied index; conf changes are applied to
//! raft and persisted (membership is static from the config, but a committed change is honoured).
//!
//! A single-replica cluster campaigns as soon as it starts. Elections use pre-vote and
//! check-quorum: a leader cut off from a majority steps down within an election timeout, and a
//! rejoining replica does not disrupt the cluster. Every `snapshot_every` applied entries the
//! driver snapshots `ClusterState::to_bytes()` and compacts the log; a follower whose next entry
//! was compacted receives that snapshot.
//!
//! # On disk (`data_dir`), durability rules
//!
//! See [`storage`]: `raft-log` (append-only, length-prefixed, CRC-32 framed `Entry` records,
//! fdatasync after every append, a conflicting suffix truncated before it is replaced),
//! `raft-state` (`HardState` + `ConfState`, tmp + fsync + rename + directory fsync) and
//! `raft-snapshot` (the latest `Snapshot` with `ClusterState` bytes, written the same way).
//! Entries, a changed term/vote and snapshots are durable before any message acknowledging them
//! leaves. The commit index is written lazily (at compactions and shutdown); raft re-learns it.
//! On restart the node rebuilds `ClusterState` from the snapshot and re-applies the committed log.
//! A torn last record (crash mid-append) is detected by length/checksum and dropped.
//!
//! # Using it
//!
//! ```no_run
//! # use std::sync::Arc;
//! use cyclotron_coordinator::raft::{Peer, RaftConfig, RaftNode, Transport};
//! # fn f(transport: Arc<dyn Transport>) -> Result<(), Box<dyn std::error::Error>> {
//! let peers = vec![Peer { id: 1, addr: "http://10.0.0.1:7000".into() }];
//! let node = RaftNode::start(RaftConfig::new(1, peers, "/var/lib/cyclotron/raft".into()), transport)?;
//! // node implements crate::replica::Replica: propose, state, status, step
//! node.shutdown();
//! # Ok(()) }
//! ```

mod driver;
mod logger;
mod network_mem;
mod node;
mod record;
pub mod storage;

pub use network_mem::{LinkConfig, MemNetwork, NetStats};
pub use node::{Mailbox, RaftNode};

use std::path::PathBuf;
use std::time::Duration;

pub use ::raft::eraftpb::Message as RaftMessage;

use crate::replica::Replica;

/// Sends raft messages to peers. Fire-and-forget: raft retries what is lost, so an
/// implementation may drop a message it cannot deliver. `send` runs on the driver thread: it
/// must not block (queue the message, e.g. per peer, and return); a slow `send` delays every
/// commit and heartbeat of this replica.
pub trait Transport: Send + Sync + 'static {
    fn send(&self, to: u64, message: RaftMessage);
}

/// A member of the raft cluster.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Peer {
    /// Raft id, non-zero, unique in the cluster.
    pub id: u64,
    /// The peer's gRPC address: where raft messages go, and where clients are redirected when
    /// this peer leads.
    pub addr: String,
}

/// Applied entries between snapshots unless configured.
pub const DEFAULT_SNAPSHOT_EVERY: u64 = 1000;

/// Configuration of one replica; [`RaftConfig::new`] fills the defaults.
#[derive(Debug, Clone)]
pub struct RaftConfig {
    /// This replica's id (must be in `peers`).
    pub id: u64,
    /// Every member, this one included (a static list, as a StatefulSet gives).
    pub peers: Vec<Peer>,
    /// Where the log, hard state and snapshots live (created if missing).
    pub data_dir: PathBuf,
    /// Logical clock period (default 100 ms).
    pub tick: Duration,
    /// Ticks without a leader before campaigning (randomised in `[n, 2n)`; default 10 → 1–2 s).
    pub election_ticks: usize,
    /// Ticks between leader heartbeats (default 2 → 200 ms).
    pub heartbeat_ticks: usize,
    /// Applied entries between log-compacting snapshots (default 1000).
    pub snapshot_every: u64,
}

impl RaftConfig {
    pub fn new(id: u64, peers: Vec<Peer>, data_dir: PathBuf) -> Self {
        RaftConfig {
            id,
            peers,
            data_dir,
            tick: Duration::from_millis(100),
            election_ticks: 10,
            heartbeat_ticks: 2,
            snapshot_every: DEFAULT_SNAPSHOT_EVERY,
        }
    }

    /// Check the config; the message says what to fix.
    pub fn validate(&self) -> Result<(), RaftError> {
        let bad = |m: String| Err(RaftError::Config(m));
        if self.id == 0 {
            return bad("raft id must be ≥ 1, got 0".into());
        }
        if self.peers.is_empty() {
            return bad("raft peers is empty; list every replica, this one included".into());
        }
        let mut ids: Vec<u64> = self.peers.iter().map(|p| p.id).collect();
        ids.sort_unstable();
        if ids[0] == 0 {
            return bad("raft peer ids must be ≥ 1, got a peer with id 0".into());
        }
        if let Some(w) = ids.windows(2).find(|w| w[0] == w[1]) {
            return bad(format!("raft peer id {} appears twice in peers", w[0]));
        }
        if !ids.contains(&self.id) {
            return bad(format!("raft id {} is not in peers {ids:?}; list this replica too", self.id));
        }
        if self.tick.is_zero() {
            return bad("raft tick must be > 0".into());
        }
        if self.heartbeat_ticks == 0 || self.election_ticks <= self.heartbeat_ticks {
            return bad(format!(
                "raft election_ticks ({}) must exceed heartbeat_ticks ({}), which must be ≥ 1",
                self.election_ticks, self.heartbeat_ticks
            ));
        }
        if self.snapshot_every == 0 {
            return bad("raft snapshot_every must be ≥ 1".into());
        }
        Ok(())
    }

    pub(crate) fn addr_of(&self, id: u64) -> Option<String> {
        self.peers.iter().find(|p| p.id == id).map(|p| p.addr.clone())
    }
}

#[derive(Debug, thiserror::Error)]
pub enum RaftError {
    #[error("invalid raft config: {0}")]
    Config(String),
    #[error("raft storage: cannot {what} {}: {source}", path.display())]
    Storage { path: PathBuf, what: String, source: std::io::Error },
    #[error(
        "raft storage {} is corrupt: {reason}; move the data directory away to start this \
         replica empty (it then catches up from the others)",
        path.display()
    )]
    Corrupt { path: PathBuf, reason: String },
    #[error("raft: {0}")]
    Raft(#[from] ::raft::Error),
    #[error("cannot start the raft driver thread: {0}")]
    Spawn(std::io::Error),
}

// The node is the replica the services use.
const _: fn() = || {
    fn is_replica<R: Replica>() {}
    is_replica::<RaftNode>();
};

#[cfg(test)]
mod tests;
