//! `cyclotron bench-coordinator`: the control plane's numbers for `make bench`, all in this
//! process over real gRPC on loopback:
//! - heartbeat load: one coordinator (one raft replica, temporary data dir), `--workers`
//!   simulated workers, each with its own gRPC connection, heartbeating at 1 Hz with spread
//!   phases for `--seconds`; p50/p99 of the Heartbeat RPC as the client sees it;
//! - commit latency: three replicas with the gRPC raft transport; `--commits` sequential
//!   proposals of the cheapest command on the leader, from propose to applied (p50/p99);
//! - failover: stop the leader's server and raft node, time until another replica leads and has
//!   committed a proposal.
//!
//! With `--secure`, everything runs as a production cluster does: a cluster token on every
//! call (and a peer token between replicas) and, with `--tls-cert/--tls-key/--tls-ca`, TLS on
//! every connection; `make bench` runs both and reports what security costs.
//!
//! With `--web`, the coordinator also serves its web view during the heartbeat load, with a
//! viewer holding the cluster page's live stream open and loading the page (every worker's row)
//! twice a second: what the web view costs the heartbeats, and how long the page takes.
//!
//! Targets (DESIGN.md): p99 heartbeat < 50 ms, p99 commit < 20 ms, failover < 3 s.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context;
use cyclotron_coordinator::replica::Replica;
use cyclotron_coordinator::server::{serve, CoordinatorConfig, CoordinatorHandle, Security};
use cyclotron_coordinator::state::{Command, Outcome};
use cyclotron_proto::auth::{AttachToken, Token};
use cyclotron_proto::tls::{ClientSecurity, TlsFiles};
use cyclotron_proto::v1 as pb;
use pb::worker_service_client::WorkerServiceClient;
use tonic::service::interceptor::InterceptedService;
use tonic::transport::Channel;

type Client = WorkerServiceClient<InterceptedService<Channel, AttachToken>>;

#[derive(clap::Args)]
pub struct BenchArgs {
    #[arg(long, default_value_t = 1000)]
    workers: usize,
    #[arg(long, default_value_t = 10)]
    seconds: u64,
    /// Sequential proposals timed on the 3-replica cluster.
    #[arg(long, default_value_t = 300)]
    commits: usize,
    /// Also write the JSON here.
    #[arg(long)]
    json: Option<PathBuf>,
    /// Run as a secured cluster: generated cluster and peer tokens on every call.
    #[arg(long)]
    secure: bool,
    /// With --secure: TLS on every connection with this certificate (for 127.0.0.1), its key and
    /// the CA that signed it.
    #[arg(long, requires_all = ["secure", "tls_key", "tls_ca"])]
    tls_cert: Option<PathBuf>,
    #[arg(long, requires = "tls_cert")]
    tls_key: Option<PathBuf>,
    #[arg(long, requires = "tls_cert")]
    tls_ca: Option<PathBuf>,
    /// Serve the web view during the heartbeat load, with a viewer on the cluster page.
    #[arg(long)]
    web: bool,
}

/// The credentials of a `--secure` run (none for a plain one).
#[derive(Clone, Default)]
struct Credentials {
    token: Option<Token>,
    peer: Option<Token>,
    tls: TlsFiles,
}

impl Credentials {
    fn of(args: &BenchArgs) -> anyhow::Result<Credentials> {
        if !args.secure {
            return Ok(Credentials::default());
        }
        let tls = TlsFiles {
            cert: args.tls_cert.clone(),
            key: args.tls_key.clone(),
            ca: args.tls_ca.clone(),
            client_ca: None,
        };
        Ok(Credentials { token: Some(Token::generate()?), peer: Some(Token::generate()?), tls })
    }

    fn server(&self) -> Security {
        Security { cluster_token: self.token.clone(), peer_token: self.peer.clone(), tls: self.tls.clone() }
    }

    fn client(&self) -> anyhow::Result<ClientSecurity> {
        Ok(ClientSecurity { token: self.token.clone(), tls: self.tls.client()? })
    }
}

pub async fn run(args: BenchArgs) -> anyhow::Result<()> {
    anyhow::ensure!(
        args.workers > 0 && args.seconds > 0 && args.commits > 0,
        "--workers, --seconds and --commits must be positive"
    );
    let creds = Credentials::of(&args)?;
    let heartbeat =
        heartbeat_load(args.workers, args.seconds, &creds, args.web).await.context("heartbeat load")?;
    let (commit, failover_ms) = three_replicas(args.commits, &creds).await.context("3-replica cluster")?;
    let report = serde_json::json!({
        "secure": args.secure,
        "web": args.web,
        "tls": creds.tls.cert.is_some(),
        "heartbeat": heartbeat,
        "commit_3_replicas": commit,
        "failover_ms": failover_ms,
    });
    println!("{}", serde_json::to_string_pretty(&report)?);
    if let Some(path) = args.json {
        std::fs::write(&path, serde_json::to_vec_pretty(&report)?)
            .with_context(|| format!("writing {}", path.display()))?;
    }
    Ok(())
}

fn percentiles(mut ms: Vec<f64>) -> serde_json::Value {
    ms.sort_by(f64::total_cmp);
    let at = |q: f64| ms.get(((ms.len() as f64 - 1.0) * q).round() as usize).copied().unwrap_or(f64::NAN);
    serde_json::json!({ "n": ms.len(), "p50_ms": at(0.5), "p99_ms": at(0.99), "max_ms": at(1.0) })
}

async fn wait_leader(handles: &[&CoordinatorHandle], within: Duration) -> anyhow::Result<usize> {
    let deadline = Instant::now() + within;
    loop {
        if let Some(i) = handles.iter().position(|h| h.status().is_leader) {
            return Ok(i);
        }
        anyhow::ensure!(Instant::now() < deadline, "no raft leader within {within:?}");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

async fn client(addr: &str, security: &ClientSecurity) -> anyhow::Result<Client> {
    let mut endpoint = Channel::from_shared(format!("{}://{addr}", security.scheme()))?
        .timeout(Duration::from_secs(5))
        .connect_timeout(Duration::from_secs(5))
        .tcp_nodelay(true);
    if let Some(tls) = &security.tls {
        endpoint = endpoint.tls_config(tls.clone())?;
    }
    Ok(WorkerServiceClient::with_interceptor(
        endpoint.connect_lazy(),
        AttachToken::new(security.token.as_ref()),
    ))
}

/// One HTTP/1.1 request on a fresh connection; the whole answer.
async fn http(addr: std::net::SocketAddr, request: &str) -> anyhow::Result<String> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut s = tokio::net::TcpStream::connect(addr).await?;
    s.write_all(request.as_bytes()).await?;
    let mut buf = vec![];
    tokio::time::timeout(Duration::from_secs(10), s.read_to_end(&mut buf)).await??;
    Ok(String::from_utf8_lossy(&buf).to_string())
}

/// A web viewer until `end`: the cluster page's live stream held open, and the page loaded
/// twice a second; the load times (ms) and failures.
async fn web_viewer(
    addr: std::net::SocketAddr,
    token: Option<Token>,
    end: tokio::time::Instant,
) -> (Vec<f64>, usize) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let auth = token.map(|t| format!("Authorization: Bearer {}\r\n", t.expose())).unwrap_or_default();
    let request =
        |path: &str| format!("GET {path} HTTP/1.1\r\nHost: bench\r\nConnection: close\r\n{auth}\r\n");
    let live = request("/live");
    let stream = tokio::spawn(async move {
        let Ok(mut s) = tokio::net::TcpStream::connect(addr).await else { return };
        if s.write_all(live.as_bytes()).await.is_err() {
            return;
        }
        let mut buf = vec![0u8; 1 << 16];
        while let Ok(Ok(n)) = tokio::time::timeout_at(end, s.read(&mut buf)).await {
            if n == 0 {
                break;
            }
        }
    });
    let (mut ms, mut failed) = (vec![], 0);
    let page = request("/");
    while tokio::time::Instant::now() < end {
        let t = Instant::now();
        match http(addr, &page).await {
            Ok(text) if text.starts_with("HTTP/1.1 200") => ms.push(t.elapsed().as_secs_f64() * 1e3),
            _ => failed += 1,
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    stream.abort();
    (ms, failed)
}

async fn heartbeat_load(
    workers: usize,
    seconds: u64,
    creds: &Credentials,
    web: bool,
) -> anyhow::Result<serde_json::Value> {
    let dir = tempfile::tempdir()?;
    let mut config = CoordinatorConfig::new("127.0.0.1:0".parse()?, dir.path().to_path_buf());
    config.security = creds.server();
    let handle = serve(config).await?;
    wait_leader(&[&handle], Duration::from_secs(10)).await?;
    let addr = handle.addr().to_string();
    let security = creds.client()?;
    let mut clients = Vec::with_capacity(workers);
    for _ in 0..workers {
        clients.push(client(&addr, &security).await?);
    }
    // register everyone (64 at a time), then heartbeat at 1 Hz with phases spread over the second
    let mut registering = tokio::task::JoinSet::new();
    let mut sessions = vec![String::new(); workers];
    for (i, c) in clients.iter().enumerate() {
        let mut c = c.clone();
        registering.spawn(async move {
            let req = pb::RegisterRequest {
                worker_id: format!("sim-{i:04}"),
                data_addr: format!("127.0.0.1:{}", 20_000 + i),
                protocol_version: cyclotron_proto::PROTOCOL_VERSION,
                gpus: 0,
                session: String::new(),
            };
            c.register(req).await.map(|r| (i, r.into_inner().session))
        });
        if registering.len() >= 64 {
            if let Some((i, s)) = registering.join_next().await.transpose()?.transpose()? {
                sessions[i] = s;
            }
        }
    }
    while let Some(r) = registering.join_next().await {
        let (i, s) = r??;
        sessions[i] = s;
    }
    let start = tokio::time::Instant::now();
    let end = start + Duration::from_secs(seconds);
    let viewer = if web {
        let server = handle.serve_web("127.0.0.1:0".parse()?).await?;
        let token = creds.token.clone();
        Some((tokio::spawn(web_viewer(server.addr, token, end)), server))
    } else {
        None
    };
    let mut beating = tokio::task::JoinSet::new();
    for (i, (c, session)) in clients.into_iter().zip(sessions).enumerate() {
        let mut c = c;
        let phase = Duration::from_micros((i as u64 * 1_000_000) / workers as u64);
        beating.spawn(async move {
            let mut latencies = vec![];
            let mut errors = 0usize;
            let mut next = start + phase;
            while next < end {
                tokio::time::sleep_until(next).await;
                let t = Instant::now();
                let req = pb::HeartbeatRequest { worker_id: format!("sim-{i:04}"), session: session.clone() };
                match c.heartbeat(req).await {
                    Ok(_) => latencies.push(t.elapsed().as_secs_f64() * 1e3),
                    Err(_) => errors += 1,
                }
                next += Duration::from_secs(1);
            }
            (latencies, errors)
        });
    }
    let (mut all, mut errors) = (vec![], 0);
    while let Some(r) = beating.join_next().await {
        let (l, e) = r?;
        all.extend(l);
        errors += e;
    }
    let calls = all.len();
    anyhow::ensure!(calls > 0, "every heartbeat failed ({errors} errors): check the credentials");
    let mut out = percentiles(all);
    out["workers"] = workers.into();
    out["seconds"] = seconds.into();
    out["calls_per_s"] = (calls as f64 / seconds as f64).into();
    out["errors"] = errors.into();
    out["leased_workers"] = handle.leased_workers().into();
    if let Some((viewer, server)) = viewer {
        let (pages, failed) = viewer.await?;
        let mut w = percentiles(pages);
        w["failed"] = failed.into();
        out["web_page"] = w;
        server.shutdown();
    }
    handle.shutdown().await?;
    Ok(out)
}

async fn three_replicas(commits: usize, creds: &Credentials) -> anyhow::Result<(serde_json::Value, f64)> {
    let ports: Vec<std::net::TcpListener> =
        (0..3).map(|_| std::net::TcpListener::bind("127.0.0.1:0")).collect::<Result<_, _>>()?;
    let addrs: Vec<String> =
        ports.iter().map(|l| l.local_addr().map(|a| a.to_string())).collect::<Result<_, _>>()?;
    drop(ports);
    let peers: Vec<(u64, String)> =
        addrs.iter().enumerate().map(|(i, a)| (i as u64 + 1, a.clone())).collect();
    let dirs: Vec<tempfile::TempDir> = (0..3).map(|_| tempfile::tempdir()).collect::<Result<_, _>>()?;
    let mut handles = vec![];
    for (i, addr) in addrs.iter().enumerate() {
        let mut config = CoordinatorConfig::new(addr.parse()?, dirs[i].path().to_path_buf());
        config.id = i as u64 + 1;
        config.peers = peers.clone();
        config.security = creds.server();
        handles.push(serve(config).await?);
    }
    let leader = wait_leader(&handles.iter().collect::<Vec<_>>(), Duration::from_secs(10)).await?;
    let replica = handles[leader].replica();
    let register = Command::RegisterWorker {
        gpus: 0,
        worker: "bench".into(),
        addr: "127.0.0.1:1".into(),
        protocol: cyclotron_proto::PROTOCOL_VERSION,
        lease_ms: 3_600_000,
        now_ms: 0,
        session_hash: String::new(),
        replaces: None,
    };
    anyhow::ensure!(
        replica.propose(register, Duration::from_secs(5)).await? == Outcome::Applied,
        "registration rejected"
    );
    let mut latencies = Vec::with_capacity(commits);
    for i in 0..commits {
        let t = Instant::now();
        let out = replica
            .propose(Command::Heartbeat { worker: "bench".into(), now_ms: i as u64 }, Duration::from_secs(5))
            .await?;
        anyhow::ensure!(out == Outcome::Applied, "heartbeat rejected: {out:?}");
        latencies.push(t.elapsed().as_secs_f64() * 1e3);
    }
    // failover: the leader's server and raft node stop; time until another replica commits
    let old = handles.remove(leader);
    let t = Instant::now();
    let stopping = tokio::spawn(old.shutdown());
    let failover_ms = loop {
        anyhow::ensure!(t.elapsed() < Duration::from_secs(30), "no new leader committed within 30 s");
        if let Some(h) = handles.iter().find(|h| h.status().is_leader) {
            let r: Arc<dyn Replica> = h.replica();
            let cmd = Command::Heartbeat { worker: "bench".into(), now_ms: 0 };
            if let Ok(Outcome::Applied) = r.propose(cmd, Duration::from_millis(500)).await {
                break t.elapsed().as_secs_f64() * 1e3;
            }
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    };
    stopping.await??;
    for h in handles {
        h.shutdown().await?;
    }
    Ok((percentiles(latencies), failover_ms))
}
