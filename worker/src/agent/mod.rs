//! The worker agent (`cyclotron worker`): registers with the coordinators, renews its lease with
//! heartbeats, and runs what the heartbeat responses assign as a child `cyclotron train` process.
//!
//! Protocol, from the worker's side:
//! - `Register` (protocol version, data-plane address) gives a lease and a session secret that
//!   every later call carries (registering again, this agent sends it back to prove it is the
//!   same worker); a refusal (another process holds this id, a missing or wrong cluster token,
//!   another protocol version) ends the agent with the coordinator's message. Heartbeats go every lease/3
//!   (every [`IDLE_POLL`] while idle, so a new assignment is picked up quickly),
//!   each with a deadline, following the raft leader ([`client`]).
//! - A heartbeat response carries the assignment: the same (job, task, generation) keeps the
//!   current run; another one stops it (SIGTERM, then SIGKILL after a grace period) and starts the
//!   new one once it has ended; none stops it and idles.
//! - NOT_FOUND or FAILED_PRECONDITION to a heartbeat (the lease expired, the worker is unknown or
//!   dead to the coordinator) stops the run and registers again. When no heartbeat succeeded for
//!   a whole lease, the coordinator has given the run away: the agent stops it too.
//! - SIGTERM / ctrl-c (the `shutdown` future) stops the run and returns.
//!
//! The agent does no tensor work; the child runs the single-process path ([`run`]).

pub mod child;
pub mod client;
pub mod error;
pub mod events;
mod report;
pub mod run;
pub mod sandbox;
pub mod stall;
pub mod watchdog;

use std::future::Future;
use std::path::PathBuf;
use std::sync::{Arc, RwLock};
use std::time::{Duration, Instant};

use cyclotron_proto::tls::ClientSecurity;

use cyclotron_proto::v1::worker_service_client::WorkerServiceClient;
use cyclotron_proto::v1::{Assignment, HeartbeatRequest, HeartbeatResponse, RegisterRequest};
use tonic::Code;

pub use client::{Coordinators, Deadlines};
pub use error::{AgentError, ClientError, Result};
use run::{RunContext, RunHandle, RunKey};

/// How `cyclotron worker` was asked to run.
#[derive(Debug, Clone)]
pub struct AgentConfig {
    pub coordinators: Vec<String>,
    pub worker_id: String,
    /// `host:port` of the data plane; port 0 picks a free port per run.
    pub data_addr: String,
    pub gpus: u32,
    /// Announced at registration (another value only in tests of the refusal).
    pub protocol_version: u32,
    /// The binary started for each run (`std::env::current_exe()`).
    pub binary: PathBuf,
    /// Where runs' folders go (default: a temporary folder removed at exit).
    pub work_dir: Option<PathBuf>,
    /// `--metrics-addr` of every training child (Prometheus `/metrics` while a run trains).
    pub metrics_addr: Option<String>,
    /// Deadline of each RPC attempt.
    pub rpc_timeout: Duration,
    /// SIGTERM → SIGKILL when a run is stopped.
    pub stop_grace: Duration,
    pub rendezvous_timeout: Duration,
    pub collective_timeout: Duration,
    /// The cluster token and TLS settings presented to the coordinators.
    pub security: ClientSecurity,
    /// Where a job spec may point this worker: data, outputs, S3 endpoints ([`sandbox`]).
    pub sandbox: sandbox::Sandbox,
    /// A run that reports no step and no event for this long is stuck: it is stopped and reported
    /// as a transient failure (the coordinator restarts it like a crash).
    pub stall_timeout: Duration,
}

impl AgentConfig {
    pub fn new(coordinators: Vec<String>, worker_id: String, binary: PathBuf) -> Self {
        AgentConfig {
            coordinators,
            worker_id,
            data_addr: "127.0.0.1:0".into(),
            gpus: 0,
            protocol_version: cyclotron_proto::PROTOCOL_VERSION,
            binary,
            work_dir: None,
            metrics_addr: None,
            rpc_timeout: Duration::from_secs(5),
            stop_grace: Duration::from_secs(10),
            rendezvous_timeout: Duration::from_secs(60),
            collective_timeout: Duration::from_secs(60),
            security: ClientSecurity::default(),
            sandbox: sandbox::Sandbox::default(),
            stall_timeout: DEFAULT_STALL_TIMEOUT,
        }
    }
}

/// Default of [`AgentConfig::stall_timeout`]: longer than any epoch's silence should be (every
/// training step and epoch reports), short enough that a stuck run is noticed within minutes.
pub const DEFAULT_STALL_TIMEOUT: Duration = Duration::from_secs(600);

/// Environment variable through which a training child receives its ring generation's secret
/// (hex); the ring handshake proves it to the peers.
pub use crate::collective::ring::RING_SECRET_ENV;

/// This agent's current session secret (replaced when it registers again).
pub type Session = Arc<RwLock<String>>;

pub(crate) fn session_of(s: &Session) -> String {
    s.read().unwrap_or_else(|e| e.into_inner()).clone()
}

/// This machine's name (the kernel's hostname), if it has one.
pub fn hostname() -> Option<String> {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|h| h.trim().to_string())
        .ok()
        .filter(|h| !h.is_empty())
}

/// A default worker id: `<hostname>-<pid>`.
pub fn default_worker_id() -> String {
    let host = hostname().unwrap_or_else(|| "worker".into());
    format!("{host}-{}", std::process::id())
}

/// A request carrying its deadline to the server (`grpc-timeout`).
pub fn request<T>(msg: T, timeout: Duration) -> tonic::Request<T> {
    let mut r = tonic::Request::new(msg);
    r.set_timeout(timeout);
    r
}

/// How often an idle worker heartbeats (a busy one every third of its lease).
pub const IDLE_POLL: Duration = Duration::from_millis(300);

/// Run the agent until `shutdown` resolves (then stop the run and return) or the coordinator
/// refuses this worker (an error).
pub async fn run_agent(cfg: AgentConfig, shutdown: impl Future<Output = ()>) -> Result<()> {
    let (data_host, data_port) = split_addr(&cfg.data_addr)?;
    let client = Coordinators::with_security(
        &cfg.coordinators,
        Deadlines::new(cfg.rpc_timeout, cfg.rpc_timeout * 3),
        cfg.security.clone(),
    )?;
    let session: Session = Arc::default();
    let tmp;
    let work_dir = match &cfg.work_dir {
        Some(d) => d.clone(),
        None => {
            tmp = tempfile::Builder::new()
                .prefix("cyclotron-worker-")
                .tempdir()
                .map_err(|e| AgentError::Io { what: "temporary folder".into(), source: e })?;
            tmp.path().to_path_buf()
        }
    };
    tokio::pin!(shutdown);
    let mut lease = tokio::select! {
        r = register(&client, &cfg, &session) => r?,
        _ = &mut shutdown => return Ok(()),
    };
    let ctx = Arc::new(RunContext {
        client: client.clone(),
        worker_id: cfg.worker_id.clone(),
        session: session.clone(),
        sandbox: cfg.sandbox.clone(),
        stall_timeout: cfg.stall_timeout,
        binary: cfg.binary.clone(),
        work_dir,
        child_cwd: None,
        metrics_addr: cfg.metrics_addr.clone(),
        data_host,
        data_port,
        // a backstop for a stalled agent (SIGSTOP): its child exits after two silent leases; a
        // group's child usually goes sooner, when the coordinator stops its peers
        child_watchdog: (lease * 2).max(Duration::from_secs(3)),
        stop_grace: cfg.stop_grace,
        rendezvous_timeout: cfg.rendezvous_timeout,
        collective_timeout: cfg.collective_timeout,
    });
    let mut runs = Runs { ctx, current: None, stopping: None };
    let mut last_ok = Instant::now();
    loop {
        // an idle worker asks for work often: short tasks (sweep points) would otherwise wait up
        // to a third of a lease for their group to notice the assignment
        // and a run that ends is followed by a heartbeat at once
        let mut finished = runs.current.as_ref().map(|r| r.finished.clone()).filter(|f| !*f.borrow());
        let every = if finished.is_none() { (lease / 3).min(IDLE_POLL) } else { lease / 3 };
        let ended = async {
            match &mut finished {
                Some(f) => {
                    let _ = f.wait_for(|done| *done).await;
                }
                None => std::future::pending::<()>().await,
            }
        };
        tokio::select! {
            _ = tokio::time::sleep(every) => {}
            _ = ended => {}
            _ = &mut shutdown => break,
        }
        let current = session_of(&session);
        let hb = heartbeat(&client, &cfg.worker_id, &current, lease);
        let r = tokio::select! {
            r = hb => r,
            _ = &mut shutdown => break,
        };
        match r {
            Ok(resp) => {
                last_ok = Instant::now();
                if resp.lease_ms > 0 {
                    lease = Duration::from_millis(resp.lease_ms);
                }
                runs.apply(resp.assignment.filter(|a| !a.job_id.is_empty()));
            }
            Err(e)
                if matches!(
                    e.code(),
                    Some(Code::NotFound | Code::FailedPrecondition | Code::PermissionDenied)
                ) =>
            {
                tracing::warn!(worker = %cfg.worker_id, "the coordinator no longer counts this worker ({e}); registering again");
                runs.apply(None);
                lease = tokio::select! {
                    r = register(&client, &cfg, &session) => r?,
                    _ = &mut shutdown => break,
                };
                last_ok = Instant::now();
            }
            Err(e) => {
                tracing::warn!(worker = %cfg.worker_id, "heartbeat failed: {e}");
                if last_ok.elapsed() > lease && runs.current.is_some() {
                    tracing::warn!(
                        worker = %cfg.worker_id,
                        "no heartbeat for {lease:?}: the lease has expired and the run is given away; stopping it"
                    );
                    runs.apply(None);
                }
            }
        }
    }
    tracing::info!(worker = %cfg.worker_id, "shutting down");
    runs.apply(None);
    if let Some(j) = runs.stopping.take() {
        let _ = tokio::time::timeout(cfg.stop_grace + Duration::from_secs(5), j).await;
    }
    Ok(())
}

/// The current run and the one still stopping.
struct Runs {
    ctx: Arc<RunContext>,
    current: Option<RunHandle>,
    stopping: Option<tokio::task::JoinHandle<()>>,
}

impl Runs {
    /// Make `want` the current assignment (same key: nothing to do).
    fn apply(&mut self, want: Option<Assignment>) {
        let same = match (&want, &self.current) {
            (Some(a), Some(r)) => RunKey::of(a) == r.key,
            (None, None) => true,
            _ => false,
        };
        if same {
            return;
        }
        if let Some(r) = self.current.take() {
            if !r.join.is_finished() {
                tracing::info!(run = %r.key, "assignment withdrawn or replaced; stopping the run");
            }
            // the stopping run waits for any earlier one, so this is the last to end
            self.stopping = Some(r.stop());
        }
        if let Some(a) = want {
            tracing::info!(run = %RunKey::of(&a), rank = a.rank, world = a.world_size, "assigned");
            self.current = Some(run::start(self.ctx.clone(), a, self.stopping.take()));
        }
    }
}

fn split_addr(addr: &str) -> Result<(String, u16)> {
    let bad = |m: &str| AgentError::Invalid { what: format!("--data-addr {addr:?}"), message: m.into() };
    let (host, port) = addr.rsplit_once(':').ok_or_else(|| bad("expected host:port, e.g. 127.0.0.1:0"))?;
    let port = port.parse::<u16>().map_err(|_| bad("the port is not a number in 0..65535"))?;
    if host.is_empty() {
        return Err(bad("the host is empty; use 127.0.0.1 or this machine's address"));
    }
    Ok((host.to_string(), port))
}

/// Register until a coordinator answers; a refusal (another protocol version, an id another
/// process holds, a missing or wrong cluster token) is an error. The session it returns is
/// stored in `session` (and the previous one sent along, proving this is the same worker).
async fn register(client: &Coordinators, cfg: &AgentConfig, session: &Session) -> Result<Duration> {
    let msg = RegisterRequest {
        worker_id: cfg.worker_id.clone(),
        data_addr: cfg.data_addr.clone(),
        protocol_version: cfg.protocol_version,
        gpus: cfg.gpus,
        session: session_of(session),
    };
    let mut warned = false;
    loop {
        let timeout = client.deadlines.attempt;
        let r = client
            .call(|ch| {
                let req = request(msg.clone(), timeout);
                async move { WorkerServiceClient::new(ch).register(req).await }
            })
            .await;
        match r {
            Ok(resp) => {
                *session.write().unwrap_or_else(|e| e.into_inner()) = resp.session;
                let lease = Duration::from_millis(resp.lease_ms.max(300));
                tracing::info!(worker = %cfg.worker_id, coordinator = %client::host(&client.current()), ?lease, "registered");
                return Ok(lease);
            }
            Err(ClientError::Rejected { code, message })
                if !matches!(code, Code::Unavailable | Code::DeadlineExceeded | Code::Internal) =>
            {
                return Err(AgentError::Refused { message });
            }
            Err(e @ ClientError::Tls { .. }) => return Err(e.into()),
            Err(e) => {
                if !warned {
                    tracing::warn!(worker = %cfg.worker_id, "cannot register yet, retrying: {e}");
                    warned = true;
                }
                tokio::time::sleep(Duration::from_secs(1)).await;
            }
        }
    }
}

async fn heartbeat(
    client: &Coordinators,
    worker: &str,
    session: &str,
    lease: Duration,
) -> Result<HeartbeatResponse, ClientError> {
    // each attempt well inside the lease; all attempts within one lease
    let attempt = (lease / 3).clamp(Duration::from_millis(500), Duration::from_secs(5));
    let c = client.with_deadlines(Deadlines::new(attempt, lease));
    let msg = HeartbeatRequest { worker_id: worker.to_string(), session: session.to_string() };
    c.call(|ch| {
        let req = request(msg.clone(), attempt);
        async move { WorkerServiceClient::new(ch).heartbeat(req).await }
    })
    .await
}

#[cfg(test)]
mod tests;
