//! The raft transport over gRPC: one background task per peer drains a bounded queue of encoded
//! raft messages into `RaftService.Send`. Sending never blocks the raft driver thread: a full
//! queue drops the message (raft retransmits), a failed call drops it and reconnects with
//! exponential backoff (50 ms → 1 s). Every call carries the peer credential and, with TLS, goes
//! over TLS verified against `--tls-ca` (presenting this replica's certificate for mutual TLS).

use std::collections::HashMap;
use std::time::Duration;

use cyclotron_proto::auth::AttachToken;
use cyclotron_proto::limits::{MAX_RAFT_MESSAGE, MAX_RESPONSE};
use cyclotron_proto::tls::ClientSecurity;
use cyclotron_proto::v1 as pb;
use pb::raft_service_client::RaftServiceClient;
use protobuf::Message as _;
use tokio::sync::mpsc;
use tonic::service::interceptor::InterceptedService;
use tonic::transport::{Channel, Endpoint};

type PeerClient = RaftServiceClient<InterceptedService<Channel, AttachToken>>;

/// Messages queued per peer before new ones are dropped.
pub const QUEUE_DEPTH: usize = 4096;
/// Deadline of one `Send` call.
const SEND_TIMEOUT: Duration = Duration::from_secs(2);

#[derive(Debug)]
pub struct GrpcTransport {
    peers: HashMap<u64, mpsc::Sender<Vec<u8>>>,
}

impl GrpcTransport {
    /// Start one sender task per peer other than `self_id` on the current tokio runtime.
    pub fn start(self_id: u64, peers: &[(u64, String)], security: ClientSecurity) -> Self {
        let mut senders = HashMap::new();
        for (id, addr) in peers {
            if *id == self_id {
                continue;
            }
            let (tx, rx) = mpsc::channel(QUEUE_DEPTH);
            tokio::spawn(peer_loop(*id, addr.clone(), rx, security.clone()));
            senders.insert(*id, tx);
        }
        GrpcTransport { peers: senders }
    }

    /// Queue `message` for peer `to`; drops it when the queue is full or the peer unknown.
    pub fn send_message(&self, to: u64, message: &raft::eraftpb::Message) {
        let Some(tx) = self.peers.get(&to) else {
            tracing::warn!(to, "raft message for an unknown peer dropped");
            return;
        };
        let bytes = match message.write_to_bytes() {
            Ok(b) => b,
            Err(e) => {
                tracing::error!(to, error = %e, "cannot encode a raft message");
                return;
            }
        };
        if tx.try_send(bytes).is_err() {
            tracing::debug!(to, "raft queue full or closed; message dropped (raft retransmits)");
        }
    }
}

impl crate::raft::Transport for GrpcTransport {
    fn send(&self, to: u64, message: crate::raft::RaftMessage) {
        self.send_message(to, &message);
    }
}

/// `host:port` or a URL with its scheme (`https` when TLS is configured).
async fn connect(addr: &str, security: &ClientSecurity) -> Result<PeerClient, tonic::transport::Error> {
    let host = addr.split_once("://").map_or(addr, |(_, h)| h);
    let url = format!("{}://{host}", security.scheme());
    let mut endpoint = Endpoint::from_shared(url)?
        .connect_timeout(Duration::from_secs(1))
        .timeout(SEND_TIMEOUT)
        .tcp_nodelay(true);
    if let Some(tls) = &security.tls {
        endpoint = endpoint.tls_config(tls.clone())?;
    }
    let channel = endpoint.connect().await?;
    let auth = AttachToken::new(security.token.as_ref());
    Ok(RaftServiceClient::with_interceptor(channel, auth)
        .max_encoding_message_size(MAX_RAFT_MESSAGE)
        .max_decoding_message_size(MAX_RESPONSE))
}

async fn peer_loop(to: u64, addr: String, mut rx: mpsc::Receiver<Vec<u8>>, security: ClientSecurity) {
    let mut backoff = Duration::from_millis(50);
    let mut client: Option<PeerClient> = None;
    while let Some(message) = rx.recv().await {
        if client.is_none() {
            match connect(&addr, &security).await {
                Ok(c) => {
                    client = Some(c);
                    backoff = Duration::from_millis(50);
                }
                Err(e) => {
                    tracing::debug!(to, %addr, error = %e, "raft peer unreachable; retrying");
                    tokio::time::sleep(backoff).await;
                    backoff = (backoff * 2).min(Duration::from_secs(1));
                    // drop what queued up meanwhile: raft resends what still matters
                    while rx.try_recv().is_ok() {}
                    continue;
                }
            }
        }
        let Some(c) = client.as_mut() else { continue };
        if let Err(e) = c.send(pb::RaftMessage { message }).await {
            if e.code() == tonic::Code::Unauthenticated {
                // not a transient fault: say it loudly, once per reconnection
                tracing::error!(to, %addr, "raft peer refused this replica: {}", e.message());
            } else {
                tracing::debug!(to, %addr, error = %e, "raft send failed; reconnecting");
            }
            client = None;
        }
    }
}
