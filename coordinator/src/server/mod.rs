//! The coordinator's gRPC server: [`JobService`](job_service) for users, [`WorkerService`]
//! (worker_service) for workers and [`RaftService`](raft_service) for the other replicas, on one
//! tonic server, plus the [leader loop](leader_loop) that turns the scheduler's decisions into
//! proposals.
//!
//! Leader-only work and redirects: every call that writes (submit, cancel, register, heartbeat,
//! progress, result) or needs the leader's memory (leases, rendezvous) is served by the raft
//! leader only. A follower answers `UNAVAILABLE` with metadata `cyclotron-leader: ADDR` (when it
//! knows the leader) and the client retries there; clients are given every coordinator's address
//! and try the next one when no leader is named. Reads (`GetJob`, `ListJobs`, `WatchJob`) are
//! served by any replica from its applied state, which may lag the leader by a few entries.
//! `RaftService.Forward` lets a peer hand the leader a command (used by tools, not by the
//! services themselves).

mod events;
mod health;
mod job_service;
pub mod leader_loop;
mod raft_service;
mod rendezvous;
pub mod security;
#[cfg(test)]
mod security_tests;
#[cfg(test)]
mod tests;
pub mod transport;
mod worker_service;

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use cyclotron_proto::limits::{MAX_JOB_REQUEST, MAX_RAFT_MESSAGE, MAX_RESPONSE, MAX_WORKER_REQUEST};
use cyclotron_proto::v1::job_service_server::JobServiceServer;
use cyclotron_proto::v1::raft_service_server::RaftServiceServer;
use cyclotron_proto::v1::worker_service_server::WorkerServiceServer;
use cyclotron_proto::ServiceError;
use tokio::net::TcpListener;
use tokio::sync::watch;
use tokio::task::JoinHandle;
use tonic::service::interceptor::InterceptedService;

use crate::leases::Leases;
use crate::live::Live;
use crate::raft::{Peer, RaftConfig, RaftNode};
use crate::replica::{ProposeError, Replica, ReplicaStatus};
use crate::state::{ClusterState, Command, Outcome};
pub use security::Security;

/// Longest a shutdown waits for in-flight calls.
const SHUTDOWN_DEADLINE: Duration = Duration::from_secs(5);

/// Default worker lease.
pub const DEFAULT_LEASE_MS: u64 = 10_000;

/// Sees every RPC's duration and outcome, and every leader-loop round (method `LeaderLoop`):
/// the hook for metrics (latency histograms by method).
pub trait RpcObserver: Send + Sync + std::fmt::Debug + 'static {
    fn observe(&self, method: &'static str, seconds: f64, code: tonic::Code);
}

/// How one coordinator replica runs.
#[derive(Debug, Clone)]
pub struct CoordinatorConfig {
    /// gRPC address (users, workers and peers); port 0 picks one (one replica only).
    pub listen: SocketAddr,
    /// Raft log, hard state and snapshots.
    pub data_dir: PathBuf,
    /// This replica's raft id (≥ 1).
    pub id: u64,
    /// Every replica (this one included) as (id, gRPC address); empty: a one-replica cluster.
    pub peers: Vec<(u64, String)>,
    /// Worker lease granted at registration and renewed by each heartbeat.
    pub lease_ms: u64,
    /// Longest a rendezvous call waits for the other ranks (a client deadline may cut it shorter).
    pub rendezvous_timeout: Duration,
    /// Longest a proposal waits to commit.
    pub propose_timeout: Duration,
    /// How often the leader runs the scheduler.
    pub schedule_every: Duration,
    /// Told about every RPC (metrics); none by default.
    pub observer: Option<Arc<dyn RpcObserver>>,
    /// Credentials and TLS (see [`security`]); none by default: loopback only.
    pub security: Security,
    /// A second, plaintext address serving only the gRPC health service (Kubernetes probes
    /// cannot speak TLS); none by default (the health service is on `listen` too).
    pub health_listen: Option<SocketAddr>,
    /// Applied raft entries between snapshots (log compaction).
    pub snapshot_every: u64,
}

impl CoordinatorConfig {
    pub fn new(listen: SocketAddr, data_dir: PathBuf) -> Self {
        CoordinatorConfig {
            listen,
            data_dir,
            id: 1,
            peers: vec![],
            lease_ms: DEFAULT_LEASE_MS,
            rendezvous_timeout: Duration::from_secs(60),
            propose_timeout: Duration::from_secs(5),
            schedule_every: Duration::from_millis(200),
            observer: None,
            security: Security::default(),
            health_listen: None,
            snapshot_every: crate::raft::DEFAULT_SNAPSHOT_EVERY,
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum ServeError {
    #[error("cannot listen on {addr}: {source}")]
    Bind { addr: SocketAddr, source: std::io::Error },
    #[error("invalid coordinator configuration: {0}")]
    Config(String),
    #[error("cannot start the raft replica: {0}")]
    Raft(String),
    #[error("gRPC server failed: {0}")]
    Serve(#[from] tonic::transport::Error),
}

/// What the services share: the replica, the leader's leases and its rendezvous rounds.
pub(crate) struct Shared {
    pub replica: Arc<dyn Replica>,
    /// Leader memory; a `std` mutex never held across `.await`.
    pub leases: Mutex<Leases>,
    pub rendezvous: rendezvous::Rendezvous,
    /// Leader memory: every running rank's step summaries (the live view, the straggler rule).
    pub live: Arc<Mutex<Live>>,
    pub config: CoordinatorConfig,
    /// Turns true at shutdown: long calls (watch streams, rendezvous) end so the server can stop.
    pub stopping: watch::Receiver<bool>,
}

impl Shared {
    fn new(replica: Arc<dyn Replica>, config: CoordinatorConfig, stopping: watch::Receiver<bool>) -> Self {
        Shared {
            replica,
            leases: Mutex::new(Leases::default()),
            rendezvous: Default::default(),
            live: Default::default(),
            config,
            stopping,
        }
    }

    /// Resolves once the server shuts down.
    pub async fn shutting_down(&self) {
        let mut stopping = self.stopping.clone();
        let _ = stopping.wait_for(|s| *s).await;
    }

    /// The latest applied state.
    pub fn state(&self) -> Arc<ClusterState> {
        self.replica.state().borrow().clone()
    }

    /// `Ok` on the leader, else the redirect.
    pub fn require_leader(&self) -> Result<(), ServiceError> {
        let status = self.replica.status();
        if status.is_leader {
            Ok(())
        } else {
            Err(ServiceError::NotLeader { leader: status.leader_addr })
        }
    }

    /// Propose and wait for the state machine's outcome.
    pub async fn propose(&self, cmd: Command) -> Result<Outcome, ServiceError> {
        self.replica.propose(cmd, self.config.propose_timeout).await.map_err(propose_error)
    }

    /// Propose; a rejection (the state moved on) is `FAILED_PRECONDITION` with its reason.
    pub async fn commit(&self, cmd: Command) -> Result<(), ServiceError> {
        match self.propose(cmd).await? {
            Outcome::Applied => Ok(()),
            Outcome::Rejected { reason } => Err(ServiceError::FailedPrecondition(reason)),
        }
    }

    /// Run one RPC handler and report its duration and code to the observer.
    pub async fn timed<T>(
        &self,
        method: &'static str,
        handler: impl std::future::Future<Output = Result<T, tonic::Status>>,
    ) -> Result<T, tonic::Status> {
        let start = std::time::Instant::now();
        let result = handler.await;
        if let Some(o) = &self.config.observer {
            let code = result.as_ref().err().map_or(tonic::Code::Ok, |s| s.code());
            o.observe(method, start.elapsed().as_secs_f64(), code);
        }
        result
    }

    fn leases(&self) -> std::sync::MutexGuard<'_, Leases> {
        self.leases.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The live step summaries (never held across `.await`).
    pub fn live(&self) -> std::sync::MutexGuard<'_, Live> {
        self.live.lock().unwrap_or_else(|e| e.into_inner())
    }
}

pub(crate) use job_service::submit as submit_job;

pub(crate) fn propose_error(e: ProposeError) -> ServiceError {
    match e {
        ProposeError::NotLeader { leader } => ServiceError::NotLeader { leader },
        ProposeError::Timeout(_) => ServiceError::Timeout(e.to_string()),
        ProposeError::Stopped(_) => ServiceError::Unavailable(e.to_string()),
    }
}

/// The leader's wall clock in ms since the Unix epoch (stamped into commands as a record).
pub(crate) fn now_ms() -> u64 {
    let wall = SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_millis() as u64).unwrap_or(0);
    #[cfg(test)]
    let wall = wall.saturating_add_signed(WALL_STEP_MS.load(std::sync::atomic::Ordering::Relaxed));
    wall
}

/// Tests step the wall clock by this much (an operator or NTP stepping it); nextest runs each
/// test in its own process, so one test's step is not another's.
#[cfg(test)]
pub(crate) static WALL_STEP_MS: std::sync::atomic::AtomicI64 = std::sync::atomic::AtomicI64::new(0);

/// Milliseconds on this process's monotonic clock: what leases are measured on, so a wall clock
/// stepped by NTP (or an operator) neither expires every worker at once nor keeps a dead one.
pub(crate) fn monotonic_ms() -> u64 {
    static START: std::sync::OnceLock<std::time::Instant> = std::sync::OnceLock::new();
    // offset by a lease's worth so that "0" never means "long ago" to the lease arithmetic
    START.get_or_init(std::time::Instant::now).elapsed().as_millis() as u64 + 3_600_000
}

/// A running coordinator: its address, its replica, and the way to stop it.
pub struct CoordinatorHandle {
    addr: SocketAddr,
    shared: Arc<Shared>,
    stop: watch::Sender<bool>,
    server: JoinHandle<Result<(), tonic::transport::Error>>,
    leader_loop: JoinHandle<()>,
    /// Follows the raft leader into the health service; the plaintext health server, if any.
    health: Vec<JoinHandle<()>>,
    /// The raft node [`serve`] started, stopped with the server.
    node: Option<Arc<RaftNode>>,
}

impl std::fmt::Debug for CoordinatorHandle {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CoordinatorHandle").field("addr", &self.addr).finish_non_exhaustive()
    }
}

impl CoordinatorHandle {
    /// The bound gRPC address.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    pub fn replica(&self) -> Arc<dyn Replica> {
        self.shared.replica.clone()
    }

    pub fn status(&self) -> ReplicaStatus {
        self.shared.replica.status()
    }

    /// Workers holding a lease in this replica's memory (the leader's view; empty on followers).
    pub fn leased_workers(&self) -> usize {
        self.shared.leases().len()
    }

    /// The leader's live step summaries (the web view, the straggler metric).
    pub fn live(&self) -> Arc<Mutex<Live>> {
        self.shared.live.clone()
    }

    /// Serve the web view at `addr` (see [`crate::web`]) until the coordinator stops.
    pub async fn serve_web(&self, addr: SocketAddr) -> Result<crate::web::WebServer, crate::web::WebError> {
        crate::web::serve(self.shared.clone(), addr, self.shared.config.security.cluster_token.as_ref()).await
    }

    /// Rendezvous rounds held in the leader's memory.
    pub fn rendezvous_rounds(&self) -> usize {
        self.shared.rendezvous.len()
    }

    /// Stop serving: in-flight calls finish, then the server and the leader loop end.
    pub async fn shutdown(self) -> Result<(), ServeError> {
        let _ = self.stop.send(true);
        self.leader_loop.abort();
        self.health.iter().for_each(JoinHandle::abort);
        // long calls end on `stopping`; a client that never reads its stream cannot hold us up
        let mut server = self.server;
        let served = match tokio::time::timeout(SHUTDOWN_DEADLINE, &mut server).await {
            Ok(Ok(r)) => r.map_err(ServeError::Serve),
            Ok(Err(e)) if e.is_cancelled() => Ok(()),
            Ok(Err(e)) => Err(ServeError::Config(format!("server task failed: {e}"))),
            Err(_) => {
                tracing::warn!("in-flight calls did not finish within {SHUTDOWN_DEADLINE:?}; dropping them");
                server.abort();
                Ok(())
            }
        };
        if let Some(node) = self.node {
            // waits for the driver thread (bounded by its own deadline)
            let _ = tokio::task::spawn_blocking(move || node.shutdown()).await;
        }
        served
    }

    /// Wait until the server ends (after [`CoordinatorHandle::shutdown`] elsewhere or a failure),
    /// or the raft replica fails (a disk error in its driver): then an error, so the process
    /// exits non-zero instead of serving stale state as a zombie leader.
    pub async fn stopped(&mut self) -> Result<(), ServeError> {
        let node = self.node.clone();
        let died = async move {
            match node {
                Some(n) => n.died().await,
                None => std::future::pending().await,
            }
        };
        tokio::select! {
            r = &mut self.server => match r {
                Ok(r) => r.map_err(ServeError::Serve),
                Err(e) => Err(ServeError::Config(format!("server task failed: {e}"))),
            },
            reason = died => {
                let _ = self.stop.send(true);
                Err(ServeError::Raft(format!(
                    "the raft replica stopped ({reason}); this coordinator stops serving rather than answer from stale state"
                )))
            }
        }
    }
}

/// Serve the three services for `replica` on `listener` and run the leader loop.
pub async fn serve_replica(
    listener: TcpListener,
    replica: Arc<dyn Replica>,
    config: CoordinatorConfig,
) -> Result<CoordinatorHandle, ServeError> {
    let addr = listener.local_addr().map_err(|source| ServeError::Bind { addr: config.listen, source })?;
    let tls = config.security.tls.server().map_err(|e| ServeError::Config(e.to_string()))?;
    let (client_guard, peer_guard) = (config.security.client_guard(), config.security.peer_guard());
    let health_listen = config.health_listen;
    let (stop, stop_rx) = watch::channel(false);
    let shared = Arc::new(Shared::new(replica, config, stop_rx.clone()));
    let mut server_stop = stop_rx.clone();
    // every request is authenticated (interceptors: before its body is decoded) and size-limited
    let jobs = JobServiceServer::new(job_service::Jobs::new(shared.clone()))
        .max_decoding_message_size(MAX_JOB_REQUEST)
        .max_encoding_message_size(MAX_RESPONSE);
    let workers = WorkerServiceServer::new(worker_service::Workers::new(shared.clone()))
        .max_decoding_message_size(MAX_WORKER_REQUEST)
        .max_encoding_message_size(MAX_RESPONSE);
    let peers = RaftServiceServer::new(raft_service::Peers::new(shared.clone()))
        .max_decoding_message_size(MAX_RAFT_MESSAGE)
        .max_encoding_message_size(MAX_RESPONSE);
    let (reporter, health_service) = health::service().await;
    let mut builder = tonic::transport::Server::builder().tcp_nodelay(true);
    if let Some(tls) = tls {
        builder = builder.tls_config(tls).map_err(ServeError::Serve)?;
    }
    let router = builder
        .add_service(health_service.clone())
        .add_service(InterceptedService::new(jobs, client_guard.clone()))
        .add_service(InterceptedService::new(workers, client_guard))
        .add_service(InterceptedService::new(peers, peer_guard));
    let incoming = tokio_stream::wrappers::TcpListenerStream::new(listener);
    let server = tokio::spawn(async move {
        router
            .serve_with_incoming_shutdown(incoming, async move {
                let _ = server_stop.wait_for(|s| *s).await;
            })
            .await
    });
    let mut health = vec![tokio::spawn(health::follow_leader(shared.clone(), reporter))];
    if let Some(at) = health_listen {
        health.push(health::serve_plain(at, health_service, stop_rx.clone()).await?);
    }
    let leader_loop = tokio::spawn(leader_loop::run(shared.clone(), stop_rx));
    Ok(CoordinatorHandle { addr, shared, stop, server, leader_loop, health, node: None })
}

/// Start one coordinator replica: bind `config.listen`, open (or recover) the raft node in
/// `config.data_dir` with the gRPC transport to `config.peers`, and serve.
///
/// With no peers the cluster is this one replica (its address: the bound one, so port 0 works).
/// With peers, this replica's own entry must be among them, and its address is what the others
/// dial and what followers name as leader.
pub async fn serve(config: CoordinatorConfig) -> Result<CoordinatorHandle, ServeError> {
    let stance = config.security.check(config.listen, &config.peers)?;
    let listener = bind(&config).await?;
    let addr = listener.local_addr().map_err(|source| ServeError::Bind { addr: config.listen, source })?;
    let peers: Vec<(u64, String)> =
        if config.peers.is_empty() { vec![(config.id, addr.to_string())] } else { config.peers.clone() };
    if !peers.iter().any(|(id, _)| *id == config.id) {
        let ids: Vec<u64> = peers.iter().map(|(id, _)| *id).collect();
        return Err(ServeError::Config(format!(
            "--id {} is not in --peers (ids {ids:?}); list every replica, this one included",
            config.id
        )));
    }
    if config.security.cluster_token.is_none() {
        tracing::warn!("{stance}");
    } else {
        tracing::info!("{stance}");
    }
    let peer_client = config.security.peer_client()?;
    let transport = Arc::new(transport::GrpcTransport::start(config.id, &peers, peer_client));
    let raft_peers = peers.iter().map(|(id, addr)| Peer { id: *id, addr: addr.clone() }).collect();
    let mut raft_config = RaftConfig::new(config.id, raft_peers, config.data_dir.clone());
    raft_config.snapshot_every = config.snapshot_every;
    let node = tokio::task::spawn_blocking(move || RaftNode::start(raft_config, transport))
        .await
        .map_err(|e| ServeError::Raft(e.to_string()))?
        .map_err(|e| ServeError::Raft(e.to_string()))?;
    let node = Arc::new(node);
    let mut handle = serve_replica(listener, node.clone(), config).await?;
    handle.node = Some(node);
    Ok(handle)
}

/// Bind `config.listen`; a clear error names the address.
pub async fn bind(config: &CoordinatorConfig) -> Result<TcpListener, ServeError> {
    TcpListener::bind(config.listen).await.map_err(|source| ServeError::Bind { addr: config.listen, source })
}
