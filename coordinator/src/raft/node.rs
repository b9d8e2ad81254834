//! [`RaftNode`]: the handle the services hold. It starts the driver thread (which owns the raft
//! state machine) and talks to it only through a bounded channel; it implements [`Replica`].

use std::sync::mpsc::{self, RecvTimeoutError, SyncSender, TrySendError};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use ::raft::eraftpb::Message;
use protobuf::Message as _;
use tokio::sync::{oneshot, watch};

use super::driver::Driver;
use super::storage::DiskStorage;
use super::{RaftConfig, RaftError, Transport};
use crate::replica::{ProposeError, ProposeFuture, Replica, ReplicaStatus};
use crate::state::{ClusterState, Command, Outcome};

/// Capacity of the driver's inbox; when full, raft messages are dropped (raft retries them) and
/// proposals fail with `Timeout`.
const INBOX: usize = 4096;

/// How long `shutdown` waits for the driver thread to finish.
const SHUTDOWN_DEADLINE: Duration = Duration::from_secs(5);

pub(crate) type Reply = oneshot::Sender<Result<Outcome, ProposeError>>;

pub(crate) enum Input {
    Propose { data: Vec<u8>, deadline: Instant, within: Duration, reply: Reply },
    Step(Box<Message>),
    Shutdown,
}

/// Why the driver stopped, when it stopped on its own (a storage failure).
pub(crate) type Fatal = Arc<Mutex<Option<String>>>;

/// Hands raft messages to a node's driver; cheap to clone (transports keep one per local node).
#[derive(Clone)]
pub struct Mailbox {
    pub(crate) inbox: SyncSender<Input>,
}

impl Mailbox {
    /// Deliver a decoded message; false when the node is stopped or overloaded (message dropped).
    pub fn deliver(&self, message: Message) -> bool {
        self.inbox.try_send(Input::Step(Box::new(message))).is_ok()
    }

    /// Decode a protobuf-2 `eraftpb::Message` and deliver it.
    pub fn step(&self, bytes: &[u8]) -> Result<(), ProposeError> {
        let message = Message::parse_from_bytes(bytes).map_err(|e| {
            let n = bytes.len();
            ProposeError::Stopped(format!(
                "malformed raft message ({n} bytes): {e}; \
                 is the peer a cyclotron coordinator of the same version?"
            ))
        })?;
        match self.inbox.try_send(Input::Step(Box::new(message))) {
            Ok(()) | Err(TrySendError::Full(_)) => Ok(()), // raft tolerates a dropped message
            Err(TrySendError::Disconnected(_)) => {
                Err(ProposeError::Stopped("raft driver has stopped".into()))
            }
        }
    }
}

/// A raft replica of the coordinator state. See the [module docs](super).
pub struct RaftNode {
    id: u64,
    mailbox: Mailbox,
    state: watch::Receiver<Arc<ClusterState>>,
    status: Arc<Mutex<ReplicaStatus>>,
    fatal: Fatal,
    /// Becomes `Some(reason)` when the driver stops on its own (a storage failure).
    died: watch::Receiver<Option<String>>,
    driver: Mutex<Option<(JoinHandle<()>, mpsc::Receiver<()>)>>,
}

impl RaftNode {
    /// Open the storage in `config.data_dir` (recovering log and state), start the driver
    /// thread and return the handle. Messages for peers go to `transport`.
    pub fn start(config: RaftConfig, transport: Arc<dyn Transport>) -> Result<RaftNode, RaftError> {
        config.validate()?;
        let voters: Vec<u64> = config.peers.iter().map(|p| p.id).collect();
        let (storage, recovered) = DiskStorage::open(&config.data_dir, &voters)?;
        if recovered.torn_bytes > 0 {
            tracing::warn!(
                id = config.id,
                torn_bytes = recovered.torn_bytes,
                "raft log had a torn tail (crash mid-write); dropped it"
            );
        }
        let initial = if storage.snapshot_index() > 0 {
            ClusterState::from_bytes(storage.snapshot_data()).map_err(|e| RaftError::Corrupt {
                path: config.data_dir.clone(),
                reason: format!("snapshot does not hold a cluster state: {e}"),
            })?
        } else {
            ClusterState::default()
        };
        let (state_tx, state_rx) = watch::channel(Arc::new(initial.clone()));
        let status = Arc::new(Mutex::new(ReplicaStatus { id: config.id, ..Default::default() }));
        let fatal: Fatal = Arc::new(Mutex::new(None));
        let (inbox_tx, inbox_rx) = mpsc::sync_channel(INBOX);
        let (done_tx, done_rx) = mpsc::channel();
        let id = config.id;
        let driver = Driver::new(config, storage, initial, transport, state_tx, status.clone())?;
        let fatal_slot = fatal.clone();
        let (died_tx, died) = watch::channel(None);
        let handle = std::thread::Builder::new()
            .name(format!("raft-{id}"))
            .spawn(move || {
                // the inbox outlives the run: a proposal that finds it closed also finds the reason
                if let Err(reason) = driver.run(&inbox_rx) {
                    tracing::error!(id, %reason, "raft driver stopped");
                    *fatal_slot.lock().unwrap_or_else(|p| p.into_inner()) = Some(reason.clone());
                    died_tx.send_replace(Some(reason));
                }
                drop(inbox_rx);
                drop(done_tx);
            })
            .map_err(RaftError::Spawn)?;
        Ok(RaftNode {
            id,
            mailbox: Mailbox { inbox: inbox_tx },
            state: state_rx,
            status,
            fatal,
            died,
            driver: Mutex::new(Some((handle, done_rx))),
        })
    }

    /// Resolves with the reason once the driver stopped on its own (a storage failure such as a
    /// failed fsync); never after a requested shutdown. A replica whose driver died must stop
    /// serving: its state no longer advances, and a leader would answer from stale state.
    pub async fn died(&self) -> String {
        let mut died = self.died.clone();
        let reason = match died.wait_for(Option::is_some).await {
            Ok(reason) => reason.clone(),
            Err(_) => None,
        };
        match reason {
            Some(r) => r,
            None => std::future::pending().await,
        }
    }

    pub fn id(&self) -> u64 {
        self.id
    }

    /// A handle that feeds raft messages to this node (for transports).
    pub fn mailbox(&self) -> Mailbox {
        self.mailbox.clone()
    }

    /// Stop the driver (pending proposals fail with `Stopped`) and wait for it, at most 5 s.
    /// Idempotent; also run on drop.
    pub fn shutdown(&self) {
        let Some((handle, done)) = self.driver.lock().unwrap_or_else(|p| p.into_inner()).take() else {
            return;
        };
        // A full inbox is drained by the driver, which then sees Shutdown; retry until the deadline.
        let deadline = Instant::now() + SHUTDOWN_DEADLINE;
        loop {
            match self.mailbox.inbox.try_send(Input::Shutdown) {
                Ok(()) | Err(TrySendError::Disconnected(_)) => break,
                Err(TrySendError::Full(_)) if Instant::now() < deadline => {
                    std::thread::sleep(Duration::from_millis(5))
                }
                Err(TrySendError::Full(_)) => break,
            }
        }
        match done.recv_timeout(deadline.saturating_duration_since(Instant::now())) {
            Err(RecvTimeoutError::Timeout) => {
                tracing::error!(
                    id = self.id,
                    "raft driver did not stop within {SHUTDOWN_DEADLINE:?}; detaching it"
                )
            }
            _ => {
                let _ = handle.join();
            }
        }
    }

    fn stopped(&self) -> ProposeError {
        let why = self.fatal.lock().unwrap_or_else(|p| p.into_inner()).clone();
        ProposeError::Stopped(why.unwrap_or_else(|| "raft driver has stopped".into()))
    }
}

impl Drop for RaftNode {
    fn drop(&mut self) {
        self.shutdown();
    }
}

impl Replica for RaftNode {
    fn propose(&self, cmd: Command, deadline: Duration) -> ProposeFuture {
        let data = match serde_json::to_vec(&cmd) {
            Ok(d) => d,
            Err(e) => {
                return Box::pin(std::future::ready(Err(ProposeError::Stopped(format!(
                    "cannot encode command: {e}"
                )))))
            }
        };
        let (reply, answer) = oneshot::channel();
        let input = Input::Propose { data, deadline: Instant::now() + deadline, within: deadline, reply };
        match self.mailbox.inbox.try_send(input) {
            Ok(()) => {}
            Err(TrySendError::Full(_)) => {
                return Box::pin(std::future::ready(Err(ProposeError::Timeout(deadline))))
            }
            Err(TrySendError::Disconnected(_)) => return Box::pin(std::future::ready(Err(self.stopped()))),
        }
        let fatal = self.fatal.clone();
        Box::pin(async move {
            match answer.await {
                Ok(result) => result,
                Err(_) => Err(ProposeError::Stopped(
                    fatal
                        .lock()
                        .unwrap_or_else(|p| p.into_inner())
                        .clone()
                        .unwrap_or_else(|| "raft driver has stopped".into()),
                )),
            }
        })
    }

    fn state(&self) -> watch::Receiver<Arc<ClusterState>> {
        self.state.clone()
    }

    fn status(&self) -> ReplicaStatus {
        self.status.lock().unwrap_or_else(|p| p.into_inner()).clone()
    }

    fn step(&self, message: &[u8]) -> Result<(), ProposeError> {
        self.mailbox.step(message)
    }
}
