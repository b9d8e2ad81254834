//! The seam between the gRPC services and consensus: a [`Replica`] accepts commands, replicates
//! them, applies committed ones to the pure [`ClusterState`] and publishes each new state.
//!
//! `raft::RaftNode` (tikv raft-rs, storage on disk, one driver thread) is the implementation; a
//! one-replica cluster is the default, three replicas tolerate one loss. Services never touch the
//! state directly: they read the latest published state and propose commands.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use crate::state::{ClusterState, Command, Outcome};

/// Why a proposal did not commit.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ProposeError {
    /// This replica is not the leader; `leader` is the leader's client (gRPC) address when known.
    #[error("this coordinator is not the raft leader (leader: {})", leader.as_deref().unwrap_or("unknown, election in progress"))]
    NotLeader { leader: Option<String> },
    /// Not committed and applied before the deadline (no quorum, or an election in progress).
    #[error("proposal not committed within {0:?}; is a majority of coordinators up?")]
    Timeout(Duration),
    /// The replica is shutting down or its storage failed.
    #[error("coordinator replica stopped: {0}")]
    Stopped(String),
}

/// A replica's view of consensus (for `status`, metrics and leader redirects).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ReplicaStatus {
    pub id: u64,
    pub term: u64,
    pub leader_id: Option<u64>,
    /// The leader's client (gRPC) address, when known.
    pub leader_addr: Option<String>,
    pub is_leader: bool,
    pub commit_index: u64,
    pub applied_index: u64,
}

pub type ProposeFuture = Pin<Box<dyn Future<Output = Result<Outcome, ProposeError>> + Send>>;

pub trait Replica: Send + Sync + 'static {
    /// Propose `cmd`; resolves once it is committed and applied (with the state machine's
    /// outcome), or with an error by `deadline`.
    fn propose(&self, cmd: Command, deadline: Duration) -> ProposeFuture;
    /// The latest applied state; `changed()` wakes on every apply.
    fn state(&self) -> tokio::sync::watch::Receiver<Arc<ClusterState>>;
    fn status(&self) -> ReplicaStatus;
    /// Hand in a raft message from a peer (raft-rs `eraftpb::Message`, protobuf-2 encoded).
    fn step(&self, message: &[u8]) -> Result<(), ProposeError>;
}
