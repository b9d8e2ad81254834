//! Test-only: a one-replica [`Replica`] that applies each proposal at once, for service tests
//! that do not need consensus.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::sync::watch;

use crate::replica::{ProposeError, ProposeFuture, Replica, ReplicaStatus};
use crate::state::{ClusterState, Command};

pub struct LocalReplica {
    state: Mutex<ClusterState>,
    tx: watch::Sender<Arc<ClusterState>>,
    pub addr: Mutex<Option<String>>,
}

impl LocalReplica {
    pub fn new() -> Arc<Self> {
        let (tx, _) = watch::channel(Arc::new(ClusterState::default()));
        Arc::new(LocalReplica { state: Mutex::new(ClusterState::default()), tx, addr: Mutex::new(None) })
    }
}

impl Replica for LocalReplica {
    fn propose(&self, cmd: Command, _deadline: Duration) -> ProposeFuture {
        let mut s = self.state.lock().unwrap();
        let index = s.applied_index + 1;
        let out = s.apply(index, &cmd);
        self.tx.send_replace(Arc::new(s.clone()));
        Box::pin(async move { Ok(out) })
    }
    fn state(&self) -> watch::Receiver<Arc<ClusterState>> {
        self.tx.subscribe()
    }
    fn status(&self) -> ReplicaStatus {
        let s = self.state.lock().unwrap();
        ReplicaStatus {
            id: 1,
            term: 1,
            leader_id: Some(1),
            leader_addr: self.addr.lock().unwrap().clone(),
            is_leader: true,
            commit_index: s.applied_index,
            applied_index: s.applied_index,
        }
    }
    fn step(&self, _message: &[u8]) -> Result<(), ProposeError> {
        Err(ProposeError::Stopped("a local replica has no peers".into()))
    }
}
