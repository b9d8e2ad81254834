//! The cluster commands: `worker` (the agent), `submit`, `status`, `watch`, `cancel`, and `local`
//! (a coordinator and N workers on this machine, [`local`]). Users talk to the coordinators
//! through the agent's failover client: every call has a deadline, follows the raft leader, and
//! an unreachable coordinator is named with what to do.

mod local;
mod watch;

use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::Context;
use cyclotron_core::results::TrainResults;
use cyclotron_proto::auth::{Token, TOKEN_ENV};
use cyclotron_proto::tls::{ClientSecurity, TlsFiles};
use cyclotron_proto::v1 as pb;
use cyclotron_proto::v1::job_service_client::JobServiceClient;
use cyclotron_proto::v1::worker_service_client::WorkerServiceClient;
use cyclotron_worker::agent::{self, client, ClientError, Coordinators, Deadlines};
use tonic::Code;

pub use local::{local, LocalArgs};

use crate::{output, plot};

/// Where the coordinators are (every replica, comma-separated; the leader is found from any),
/// and how to prove this client belongs to the cluster.
#[derive(clap::Args, Debug, Clone)]
pub struct ClusterArgs {
    /// Coordinator address(es), host:port or http://host:port, comma-separated.
    #[arg(long, env = "CYCLOTRON_COORDINATOR", default_value = "127.0.0.1:7070", value_delimiter = ',')]
    pub coordinator: Vec<String>,
    /// Deadline of each call, in seconds (failover between coordinators included).
    #[arg(long, default_value_t = 10.0)]
    pub timeout: f64,
    /// File holding the cluster token (default: the CYCLOTRON_TOKEN environment variable; never
    /// a flag value, which `ps` would show).
    #[arg(long, value_name = "PATH")]
    pub token_file: Option<PathBuf>,
    /// CA certificate (PEM) that signed the coordinators' certificates: speak TLS to them.
    #[arg(long, value_name = "PEM")]
    pub tls_ca: Option<PathBuf>,
    /// This client's certificate (PEM), for coordinators that demand one (mutual TLS).
    #[arg(long, value_name = "PEM", requires = "tls_key")]
    pub tls_cert: Option<PathBuf>,
    /// The private key (PEM) of --tls-cert.
    #[arg(long, value_name = "PEM", requires = "tls_cert")]
    pub tls_key: Option<PathBuf>,
}

impl ClusterArgs {
    /// The cluster token and TLS settings these flags (and the environment) give.
    pub fn security(&self) -> anyhow::Result<ClientSecurity> {
        let token = Token::load(self.token_file.as_deref(), TOKEN_ENV, "cluster token")?;
        let files = TlsFiles {
            cert: self.tls_cert.clone(),
            key: self.tls_key.clone(),
            ca: self.tls_ca.clone(),
            client_ca: None,
        };
        Ok(ClientSecurity { token, tls: files.client()? })
    }

    fn client(&self) -> anyhow::Result<Coordinators> {
        anyhow::ensure!(self.timeout > 0.0, "--timeout must be positive, got {}", self.timeout);
        let total = Duration::from_secs_f64(self.timeout);
        let deadlines = Deadlines::new(total.min(Duration::from_secs(5)), total);
        Ok(Coordinators::with_security(&self.coordinator, deadlines, self.security()?)?)
    }
}

#[derive(clap::Args, Debug)]
pub struct WorkerArgs {
    #[command(flatten)]
    cluster: ClusterArgs,
    /// Data-plane (ring all-reduce) address other workers reach this one at; port 0 picks a free
    /// port for each run.
    #[arg(long, default_value = "127.0.0.1:0")]
    data_addr: String,
    /// Worker id (default: <hostname>-<pid>).
    #[arg(long)]
    id: Option<String>,
    /// GPUs this worker offers.
    #[arg(long, default_value_t = 0)]
    gpus: u32,
    /// Folder for runs' specs and outputs (default: a temporary folder, removed at exit).
    #[arg(long)]
    work_dir: Option<PathBuf>,
    /// Serve each run's Prometheus metrics at http://ADDR/metrics while it trains (host:port).
    #[arg(long, value_name = "ADDR")]
    metrics_addr: Option<String>,
    /// Seconds a stopped run gets between SIGTERM and SIGKILL.
    #[arg(long, default_value_t = 10.0)]
    stop_grace: f64,
    /// Seconds a rendezvous waits for the other ranks of a run.
    #[arg(long, default_value_t = 60.0)]
    rendezvous_timeout: f64,
    /// Seconds of every collective call of a run.
    #[arg(long, default_value_t = 60.0)]
    collective_timeout: f64,
    /// Protocol version to announce (tests of the coordinator's refusal).
    #[arg(long, hide = true, default_value_t = cyclotron_proto::PROTOCOL_VERSION)]
    protocol_version: u32,
    /// A folder job specs may read data, pretrained weights and encoders from (repeatable;
    /// default: the working directory, /usr/share/datasets and the data cache $CYCLOTRON_DATA or
    /// ~/.cache/cyclotron/data).
    #[arg(long, value_name = "DIR")]
    data_root: Vec<PathBuf>,
    /// A folder job specs may write checkpoints and results to with `output = "file://…"`
    /// (repeatable; default: the working directory).
    #[arg(long, value_name = "DIR")]
    output_root: Vec<PathBuf>,
    /// An S3 endpoint a job spec may name as `checkpoint.s3_endpoint` (repeatable; default: none,
    /// so specs use this worker's own AWS_ENDPOINT_URL or AWS).
    #[arg(long, value_name = "URL")]
    allow_s3_endpoint: Vec<String>,
    /// Seconds without a training event and without CPU time after which a run is stuck: it is
    /// stopped and restarted like a crash (keep it above --collective-timeout).
    #[arg(long, default_value_t = cyclotron_worker::agent::DEFAULT_STALL_TIMEOUT.as_secs_f64())]
    stall_timeout: f64,
}

#[derive(clap::Args, Debug)]
pub struct SubmitArgs {
    job: PathBuf,
    #[command(flatten)]
    cluster: ClusterArgs,
    /// Workers that train each run together (data-parallel).
    #[arg(long, default_value_t = 1)]
    workers_per_run: u32,
    /// Restarts allowed after a worker dies or stalls before the job fails (0: the coordinator's default).
    #[arg(long, default_value_t = 0)]
    max_restarts: u32,
}

#[derive(clap::Args, Debug)]
pub struct StatusArgs {
    /// A job id; without it, every job.
    job: Option<String>,
    #[command(flatten)]
    cluster: ClusterArgs,
    /// Machine-readable output (one JSON object).
    #[arg(long)]
    json: bool,
}

#[derive(clap::Args, Debug)]
pub struct WatchArgs {
    job: String,
    #[command(flatten)]
    cluster: ClusterArgs,
    /// One JSON object per event on stdout.
    #[arg(long)]
    json: bool,
}

#[derive(clap::Args, Debug)]
pub struct CancelArgs {
    job: String,
    #[command(flatten)]
    cluster: ClusterArgs,
    /// Why (shown by `status`).
    #[arg(long)]
    reason: Option<String>,
}

fn runtime() -> anyhow::Result<tokio::runtime::Runtime> {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .context("starting the async runtime")
}

/// Resolves on ctrl-c or SIGTERM.
async fn interrupted() {
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => std::future::pending().await,
        }
    };
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        _ = term => {}
    }
}

pub fn worker(args: WorkerArgs) -> anyhow::Result<()> {
    let exe = std::env::current_exe().context("finding the cyclotron binary")?;
    let id = args.id.clone().unwrap_or_else(agent::default_worker_id);
    let secs = |what: &str, s: f64| -> anyhow::Result<Duration> {
        anyhow::ensure!(s > 0.0, "--{what} must be positive, got {s}");
        Ok(Duration::from_secs_f64(s))
    };
    let mut cfg = agent::AgentConfig::new(args.cluster.coordinator.clone(), id, exe);
    cfg.data_addr = args.data_addr.clone();
    cfg.gpus = args.gpus;
    cfg.protocol_version = args.protocol_version;
    cfg.work_dir = args.work_dir.clone();
    if let Some(addr) = &args.metrics_addr {
        crate::metrics::parse(addr).map_err(|e| anyhow::anyhow!("--metrics-addr {addr}: {e}"))?;
        cfg.metrics_addr = Some(addr.clone());
    }
    cfg.rpc_timeout = secs("timeout", args.cluster.timeout)?.min(Duration::from_secs(5));
    cfg.stop_grace = secs("stop-grace", args.stop_grace)?;
    cfg.rendezvous_timeout = secs("rendezvous-timeout", args.rendezvous_timeout)?;
    cfg.collective_timeout = secs("collective-timeout", args.collective_timeout)?;
    cfg.stall_timeout = secs("stall-timeout", args.stall_timeout)?;
    cfg.security = args.cluster.security()?;
    let defaults = agent::sandbox::Sandbox::default();
    cfg.sandbox = agent::sandbox::Sandbox {
        data_roots: if args.data_root.is_empty() { defaults.data_roots } else { args.data_root.clone() },
        output_roots: if args.output_root.is_empty() {
            defaults.output_roots
        } else {
            args.output_root.clone()
        },
        s3_endpoints: args.allow_s3_endpoint.clone(),
    };
    runtime()?.block_on(agent::run_agent(cfg, interrupted()))?;
    Ok(())
}

/// A user command's error, with the job named for NOT_FOUND.
fn user_error(e: ClientError, job: Option<&str>) -> anyhow::Error {
    match (e.code(), job) {
        (Some(Code::NotFound), Some(j)) if !e.to_string().contains(j) => {
            anyhow::anyhow!("unknown job {j}: {e}")
        }
        _ => anyhow::Error::new(e),
    }
}

pub async fn submit_spec(
    client: &Coordinators,
    spec_toml: String,
    workers_per_run: u32,
    max_restarts: u32,
) -> Result<String, ClientError> {
    // one idempotency key for every retry of this submission (another coordinator, a timeout
    // after the job had committed): the cluster creates one job
    let nanos =
        std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_nanos());
    let host = agent::hostname().unwrap_or_else(|| "host".into());
    let request_id = format!("{host}-{}-{nanos}", std::process::id());
    let msg = pb::SubmitJobRequest { spec_toml, workers_per_run, max_restarts, request_id };
    let t = client.deadlines.attempt;
    let r = client
        .call(|ch| {
            let req = agent::request(msg.clone(), t);
            async move { JobServiceClient::new(ch).submit_job(req).await }
        })
        .await?;
    Ok(r.job_id)
}

pub fn submit(args: SubmitArgs) -> anyhow::Result<()> {
    let text = std::fs::read_to_string(&args.job)
        .with_context(|| format!("{}: cannot read the job spec", args.job.display()))?;
    let client = args.cluster.client()?;
    let id = runtime()?
        .block_on(submit_spec(&client, text, args.workers_per_run, args.max_restarts))
        .map_err(|e| match e {
            ClientError::Rejected { code: Code::InvalidArgument, message } => {
                anyhow::anyhow!("{}: the coordinator rejected the spec: {message}", args.job.display())
            }
            e => anyhow::Error::new(e),
        })?;
    println!("{id}");
    Ok(())
}

pub async fn get_job(client: &Coordinators, job: &str) -> Result<pb::Job, ClientError> {
    let msg = pb::GetJobRequest { job_id: job.to_string() };
    let t = client.deadlines.attempt;
    client
        .call(|ch| {
            let req = agent::request(msg.clone(), t);
            async move { JobServiceClient::new(ch).get_job(req).await }
        })
        .await
}

/// Each coordinator's role, found with a leader-only call that changes nothing (a heartbeat of
/// no worker): the leader answers NOT_FOUND, followers redirect.
async fn roles(client: &Coordinators) -> Vec<(String, &'static str)> {
    let mut out = vec![];
    for addr in client.addrs() {
        let one = match Coordinators::with_security(
            std::slice::from_ref(&addr),
            Deadlines::new(Duration::from_secs(2), Duration::from_secs(2)),
            client.security().clone(),
        ) {
            Ok(c) => c,
            Err(_) => continue,
        };
        // a redirect is followed by the client: compare who answered with whom we asked
        let r = one
            .call_as(addr.clone(), |ch| async move {
                WorkerServiceClient::new(ch)
                    .heartbeat(pb::HeartbeatRequest { worker_id: String::new(), session: String::new() })
                    .await
            })
            .await;
        let role = match r {
            _ if one.current() != addr => "follower",
            Err(ClientError::Unreachable { last_error, .. })
                if last_error.contains("not the raft leader") =>
            {
                "follower"
            }
            Err(
                ClientError::Unreachable { .. } | ClientError::BadAddress { .. } | ClientError::Tls { .. },
            ) => "unreachable",
            Err(ClientError::Rejected { code: Code::Unauthenticated, .. }) => "refused this client",
            // anything this coordinator answered itself (NOT_FOUND for no worker): it leads
            Ok(_) | Err(ClientError::Rejected { .. }) => "leader",
        };
        out.push((client::host(&addr), role));
    }
    out
}

fn job_json(j: &pb::Job) -> serde_json::Value {
    let results: serde_json::Value = serde_json::from_str(&j.results_json).unwrap_or(serde_json::Value::Null);
    serde_json::json!({
        "job_id": j.job_id,
        "name": j.name,
        "status": j.status,
        "reason": j.reason,
        "tasks": j.tasks.iter().map(|t| serde_json::json!({
            "kind": t.kind, "stage": t.stage, "status": t.status, "workers": t.workers,
            "generation": t.generation, "restarts": t.restarts,
            "straggler": t.straggler.as_ref().map(|s| serde_json::json!({
                "rank": s.rank, "worker": s.worker, "bound": s.bound, "summary": s.summary,
            })),
            "ranks": t.ranks.iter().map(|r| serde_json::json!({
                "rank": r.rank, "worker": r.worker, "step": r.step, "step_ms": r.step_ms,
                "data_ms": r.data_ms, "comm_ms": r.comm_ms, "busy_ms": r.busy_ms,
            })).collect::<Vec<_>>(),
        })).collect::<Vec<_>>(),
        "results": results,
    })
}

fn print_job(j: &pb::Job) {
    println!("job {} ({}): {}", j.job_id, j.name, j.status);
    if !j.reason.is_empty() {
        println!("  reason: {}", j.reason);
    }
    for (i, t) in j.tasks.iter().enumerate() {
        let workers = if t.workers.is_empty() { "-".to_string() } else { t.workers.join(", ") };
        println!(
            "  task {i} {}: {} (generation {}, {} restarts) on {workers}",
            t.kind, t.status, t.generation, t.restarts
        );
        for r in &t.ranks {
            println!(
                "    rank {} ({}): step {}, {:.1} ms per step (data wait {:.1}, all-reduce {:.1}, busy {:.1})",
                r.rank, r.worker, r.step, r.step_ms, r.data_ms, r.comm_ms, r.busy_ms
            );
        }
        if let Some(s) = &t.straggler {
            println!("    straggler: {}", s.summary);
        }
    }
    if let Ok(r) = serde_json::from_str::<TrainResults>(&j.results_json) {
        let cell = crate::output::metric_cell;
        let ens =
            r.ensemble.as_ref().map(|e| format!(", ensemble {}", cell(&e.metrics()))).unwrap_or_default();
        println!(
            "  results: final {} {} on the {} split{ens}; {} epochs",
            r.final_model.headline().0,
            cell(&r.final_model),
            r.eval_split,
            r.epochs.len()
        );
        if let Some(sw) = &r.sweep {
            let lr = sw.chosen().lr.map_or(String::new(), |l| format!(" at lr {l:.3e}"));
            println!(
                "  lr sweep: {} candidates compared, trained {}{lr}",
                sw.candidates.len(),
                sw.chosen().label
            );
        }
        if let (false, Some(all)) = (r.runs.is_empty(), &r.all_snapshots) {
            println!(
                "  {} independent runs: all {} snapshots averaged {}",
                r.runs.len(),
                all.members.len(),
                crate::output::metric_cell(&all.metrics())
            );
        }
    }
}

pub fn status(args: StatusArgs) -> anyhow::Result<()> {
    let client = args.cluster.client()?;
    runtime()?.block_on(async {
        let jobs = match &args.job {
            Some(id) => vec![get_job(&client, id).await.map_err(|e| user_error(e, Some(id)))?],
            None => {
                let t = client.deadlines.attempt;
                client
                    .call(|ch| async move {
                        JobServiceClient::new(ch).list_jobs(agent::request(pb::ListJobsRequest {}, t)).await
                    })
                    .await?
                    .jobs
            }
        };
        let roles = roles(&client).await;
        let leader = roles.iter().find(|(_, r)| *r == "leader").map(|(a, _)| a.clone());
        if args.json {
            let coordinators: Vec<_> =
                roles.iter().map(|(a, r)| serde_json::json!({ "addr": a, "role": r })).collect();
            let cluster = serde_json::json!({ "leader": leader, "coordinators": coordinators });
            let v = match &args.job {
                Some(_) => {
                    let mut v = job_json(&jobs[0]);
                    v["cluster"] = cluster;
                    v
                }
                None => serde_json::json!({ "jobs": jobs.iter().map(job_json).collect::<Vec<_>>(), "cluster": cluster }),
            };
            println!("{}", serde_json::to_string_pretty(&v)?);
            return Ok(());
        }
        let described: Vec<String> = roles.iter().map(|(a, r)| format!("{a} ({r})")).collect();
        println!("coordinators: {}", described.join(", "));
        if jobs.is_empty() {
            println!("no jobs; submit one with `cyclotron submit JOB.toml`");
        }
        for j in &jobs {
            print_job(j);
        }
        Ok(())
    })
}

pub fn watch(args: WatchArgs, quiet: bool) -> anyhow::Result<()> {
    let client = args.cluster.client()?;
    let mode = if args.json { watch::Mode::Json } else { watch::Mode::Human { quiet } };
    let end = runtime()?.block_on(async {
        tokio::select! {
            r = watch::follow(&client, &args.job, mode) => r,
            _ = interrupted() => Err(anyhow::anyhow!("interrupted; the job goes on (`cyclotron cancel {}` stops it)", args.job)),
        }
    })?;
    end.into_result(&args.job)
}

pub fn cancel(args: CancelArgs) -> anyhow::Result<()> {
    let client = args.cluster.client()?;
    let msg =
        pb::CancelJobRequest { job_id: args.job.clone(), reason: args.reason.clone().unwrap_or_default() };
    let t = client.deadlines.attempt;
    let j = runtime()?
        .block_on(client.call(|ch| {
            let req = agent::request(msg.clone(), t);
            async move { JobServiceClient::new(ch).cancel_job(req).await }
        }))
        .map_err(|e| user_error(e, Some(&args.job)))?;
    println!(
        "job {}: {}{}",
        j.job_id,
        j.status,
        if j.reason.is_empty() { String::new() } else { format!(" ({})", j.reason) }
    );
    Ok(())
}

/// What `cyclotron train` writes into `--out` besides the table: `results.json`, `run.json` (where
/// the run's snapshots are in the store `store`, for `cyclotron predict OUT`), the first LR-range
/// test as `lr_find.json`, and the plots (a plot that cannot be drawn is a warning).
pub fn write_run_dir(out: &Path, results: &TrainResults, store: &str, run: &str) -> anyhow::Result<()> {
    output::write_json(&out.join("results.json"), results)?;
    let run_ref = cyclotron_worker::predict::RunRef {
        store: output::absolute_store(store),
        job: results.job.clone(),
        run: run.to_string(),
    };
    output::write_json(&out.join(cyclotron_worker::predict::RUN_REF), &run_ref)?;
    if let Some((_, first)) = results.lr_finds.first() {
        output::write_json(&out.join("lr_find.json"), first)?;
    }
    match plot::plot_run_dir(out) {
        Ok(paths) => paths.iter().for_each(|p| tracing::debug!(path = %p.display(), "plot written")),
        Err(e) => tracing::warn!("plots skipped: {e:#}; `cyclotron plot {}` redraws them", out.display()),
    }
    Ok(())
}
