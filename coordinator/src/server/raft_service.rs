//! `RaftService`: raft messages from peers go to the local replica (`Send`); a peer may hand the
//! leader a command to propose (`Forward`; a follower answers `UNAVAILABLE` with the leader).
//!
//! Callers prove the peer credential (the interceptor in `security.rs`), and a message is handed
//! to raft only if it is addressed to this replica and its sender is a configured member
//! (`PERMISSION_DENIED` otherwise): raft itself trusts the `from` field of every message.

use std::sync::Arc;

use cyclotron_proto::v1 as pb;
use cyclotron_proto::ServiceError;
use tonic::{Request, Response, Status};

use super::{propose_error, Shared};
use crate::state::{Command, Outcome};

pub(crate) struct Peers {
    shared: Arc<Shared>,
}

impl Peers {
    pub fn new(shared: Arc<Shared>) -> Self {
        Peers { shared }
    }
}

/// The handlers; the trait impl below times each call.
impl Peers {
    async fn do_send(&self, request: Request<pb::RaftMessage>) -> Result<Response<pb::Ack>, Status> {
        use protobuf::Message as _;
        let message = request.into_inner().message;
        let decoded = raft::eraftpb::Message::parse_from_bytes(&message).map_err(|e| {
            ServiceError::InvalidArgument(format!("malformed raft message ({} bytes): {e}", message.len()))
        })?;
        let config = &self.shared.config;
        let member = |id: u64| id == config.id || config.peers.iter().any(|(p, _)| *p == id);
        if !member(decoded.from) || decoded.to != config.id {
            return Err(ServiceError::PermissionDenied(format!(
                "raft message from {} to {}: this replica is {} and its members are {:?}; messages from non-members are refused",
                decoded.from,
                decoded.to,
                config.id,
                config.peers.iter().map(|(p, _)| *p).collect::<Vec<_>>()
            ))
            .into());
        }
        self.shared.replica.step(&message).map_err(propose_error)?;
        Ok(Response::new(pb::Ack {}))
    }

    async fn do_forward(
        &self,
        request: Request<pb::ForwardRequest>,
    ) -> Result<Response<pb::ForwardResponse>, Status> {
        let cmd: Command = serde_json::from_slice(&request.into_inner().command_json)
            .map_err(|e| ServiceError::InvalidArgument(format!("command_json is not a command: {e}")))?;
        self.shared.require_leader()?;
        let response = match self.shared.propose(cmd).await? {
            Outcome::Applied => pb::ForwardResponse { applied: true, rejected_reason: String::new() },
            Outcome::Rejected { reason } => pb::ForwardResponse { applied: false, rejected_reason: reason },
        };
        Ok(Response::new(response))
    }
}

#[tonic::async_trait]
impl pb::raft_service_server::RaftService for Peers {
    async fn send(&self, request: Request<pb::RaftMessage>) -> Result<Response<pb::Ack>, Status> {
        self.shared.timed("RaftSend", self.do_send(request)).await
    }

    async fn forward(
        &self,
        request: Request<pb::ForwardRequest>,
    ) -> Result<Response<pb::ForwardResponse>, Status> {
        self.shared.timed("RaftForward", self.do_forward(request)).await
    }
}
