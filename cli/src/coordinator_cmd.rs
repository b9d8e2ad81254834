//! `cyclotron coordinator`: run one coordinator replica (gRPC for users, workers and peers, raft
//! state on disk) until SIGTERM or ctrl-c; and the hidden `cyclotron bench-coordinator`
//! ([`bench`]) that `make bench` runs.
//!
//! ```text
//! cyclotron coordinator --listen 127.0.0.1:7070 --data-dir /var/lib/cyclotron
//! cyclotron coordinator --listen 0.0.0.0:7070 --data-dir DIR --id 2 \
//!     --peers 1=10.0.0.1:7070,2=10.0.0.2:7070,3=10.0.0.3:7070
//! ```
//! It prints `listening on ADDR` (one line on stdout) once it serves, then `web view at URL` with
//! `--web-addr`; port 0 picks a free port
//! (one replica only: with peers, every replica's address is in the list).

mod bench;

use std::net::SocketAddr;
use std::path::PathBuf;

use anyhow::Context;
use cyclotron_coordinator::server::{serve, CoordinatorConfig, Security, DEFAULT_LEASE_MS};
use cyclotron_proto::auth::{Token, PEER_TOKEN_ENV, TOKEN_ENV};
use cyclotron_proto::tls::TlsFiles;

#[derive(clap::Subcommand)]
pub enum CoordinatorCmd {
    /// Run a coordinator replica (one by default; three with --peers tolerate one loss).
    Coordinator(Box<CoordinatorArgs>),
    /// Heartbeat load from simulated workers, 3-replica commit latency and leader failover
    /// time, printed as JSON (`make bench`).
    #[command(hide = true)]
    BenchCoordinator(bench::BenchArgs),
}

#[derive(clap::Args)]
pub struct CoordinatorArgs {
    /// gRPC address to serve on (users, workers and the other replicas).
    #[arg(long, default_value = "127.0.0.1:7070")]
    listen: SocketAddr,
    /// Where this replica keeps its raft log, hard state and snapshots.
    #[arg(long)]
    data_dir: PathBuf,
    /// This replica's raft id (≥ 1); must be one of --peers when they are given.
    #[arg(long, default_value_t = 1)]
    id: u64,
    /// Every replica, this one included: `ID=HOST:PORT,…`. Absent: a one-replica cluster.
    #[arg(long, value_delimiter = ',', value_parser = parse_peer)]
    peers: Vec<(u64, String)>,
    /// Worker lease in milliseconds: a worker silent that long is declared dead.
    #[arg(long, default_value_t = DEFAULT_LEASE_MS)]
    lease_ms: u64,
    /// Serve Prometheus metrics at http://ADDR/metrics (`HOST:PORT`, port 0 picks one), or `off`.
    #[arg(long, default_value = "off", value_parser = crate::metrics::parse)]
    metrics_addr: crate::metrics::MetricsAddr,
    /// File holding the cluster token users and workers must present (default: the
    /// CYCLOTRON_TOKEN environment variable). Without one, only a loopback --listen is allowed.
    #[arg(long, value_name = "PATH")]
    token_file: Option<PathBuf>,
    /// File holding the peer credential replicas present to each other (default: the
    /// CYCLOTRON_PEER_TOKEN environment variable); needed with --peers and a cluster token.
    #[arg(long, value_name = "PATH")]
    peer_token_file: Option<PathBuf>,
    /// Serve TLS with this certificate chain (PEM); also presented to peers for mutual TLS.
    #[arg(long, value_name = "PEM", requires = "tls_key")]
    tls_cert: Option<PathBuf>,
    /// The private key (PEM) of --tls-cert.
    #[arg(long, value_name = "PEM", requires = "tls_cert")]
    tls_key: Option<PathBuf>,
    /// The CA (PEM) that signed the other replicas' certificates (needed with TLS and --peers).
    #[arg(long, value_name = "PEM")]
    tls_ca: Option<PathBuf>,
    /// Demand client certificates signed by this CA (PEM): mutual TLS.
    #[arg(long, value_name = "PEM", requires = "tls_cert")]
    tls_client_ca: Option<PathBuf>,
    /// Also serve the gRPC health service alone, in plaintext, here (`HOST:PORT`): Kubernetes
    /// probes cannot speak TLS. Ready (SERVING) only while a raft leader is known.
    #[arg(long, value_name = "ADDR")]
    health_listen: Option<SocketAddr>,
    /// Serve the web view (cluster, jobs, live charts, the straggler) at http://ADDR/ (`HOST:PORT`,
    /// port 0 picks one). Loopback only unless the cluster has a token, which the browser is then
    /// asked for (any user name, the token as password).
    #[arg(long, value_name = "ADDR")]
    web_addr: Option<SocketAddr>,
    /// Raft entries applied between snapshots of the state (the log is compacted to each).
    #[arg(long, default_value_t = cyclotron_coordinator::raft::DEFAULT_SNAPSHOT_EVERY, value_parser = clap::value_parser!(u64).range(1..))]
    snapshot_every: u64,
}

fn parse_peer(text: &str) -> Result<(u64, String), String> {
    let (id, addr) = text
        .split_once('=')
        .ok_or_else(|| format!("peer `{text}` is not ID=HOST:PORT (e.g. 2=10.0.0.2:7070)"))?;
    let id: u64 = id.trim().parse().map_err(|_| format!("peer `{text}`: id `{id}` is not a number"))?;
    if id == 0 {
        return Err(format!("peer `{text}`: ids start at 1"));
    }
    let addr = addr.trim();
    if addr.rsplit_once(':').is_none_or(|(host, port)| host.is_empty() || port.parse::<u16>().is_err()) {
        return Err(format!("peer `{text}`: `{addr}` is not HOST:PORT"));
    }
    Ok((id, addr.to_string()))
}

pub fn run(cmd: CoordinatorCmd) -> anyhow::Result<()> {
    let runtime =
        tokio::runtime::Builder::new_multi_thread().enable_all().build().context("starting tokio")?;
    match cmd {
        CoordinatorCmd::Coordinator(args) => runtime.block_on(coordinator(*args)),
        CoordinatorCmd::BenchCoordinator(args) => runtime.block_on(bench::run(args)),
    }
}

async fn coordinator(args: CoordinatorArgs) -> anyhow::Result<()> {
    anyhow::ensure!(args.lease_ms > 0, "--lease-ms must be positive");
    std::fs::create_dir_all(&args.data_dir)
        .with_context(|| format!("creating --data-dir {}", args.data_dir.display()))?;
    let mut config = CoordinatorConfig::new(args.listen, args.data_dir);
    config.id = args.id;
    config.peers = args.peers;
    config.lease_ms = args.lease_ms;
    config.health_listen = args.health_listen;
    config.snapshot_every = args.snapshot_every;
    config.security = Security {
        cluster_token: Token::load(args.token_file.as_deref(), TOKEN_ENV, "cluster token")?,
        peer_token: Token::load(args.peer_token_file.as_deref(), PEER_TOKEN_ENV, "peer credential")?,
        tls: TlsFiles {
            cert: args.tls_cert,
            key: args.tls_key,
            ca: args.tls_ca,
            client_ca: args.tls_client_ca,
        },
    };
    let metrics = cyclotron_coordinator::metrics::CoordinatorMetrics::new();
    let exposition = match args.metrics_addr.0 {
        Some(addr) => {
            config.observer = Some(std::sync::Arc::new(metrics.clone()));
            Some(cyclotron_core::metrics::serve_metrics(addr, metrics.registry().clone())?)
        }
        None => None,
    };
    let mut handle = serve(config).await?;
    println!("listening on {}", handle.addr());
    let _web = match args.web_addr {
        Some(addr) => {
            let web = handle.serve_web(addr).await?;
            println!("web view at {}", web.url());
            Some(web)
        }
        None => None,
    };
    if let Some(server) = &exposition {
        tokio::spawn(metrics.follow(handle.replica()));
        println!("metrics at {}", server.url());
    }
    use std::io::Write as _;
    std::io::stdout().flush().ok();
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
        .context("installing the SIGTERM handler")?;
    tokio::select! {
        _ = tokio::signal::ctrl_c() => tracing::info!("ctrl-c: shutting down"),
        _ = term.recv() => tracing::info!("SIGTERM: shutting down"),
        r = handle.stopped() => {
            r?;
            anyhow::bail!("the gRPC server stopped unexpectedly");
        }
    }
    handle.shutdown().await?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::parse_peer;

    #[test]
    fn peers_parse_and_bad_ones_say_what_is_wrong() {
        assert_eq!(parse_peer("2=10.0.0.2:7070").unwrap(), (2, "10.0.0.2:7070".to_string()));
        assert!(parse_peer("10.0.0.2:7070").unwrap_err().contains("not ID=HOST:PORT"));
        assert!(parse_peer("x=a:1").unwrap_err().contains("not a number"));
        assert!(parse_peer("0=a:1").unwrap_err().contains("start at 1"));
        assert!(parse_peer("1=a").unwrap_err().contains("not HOST:PORT"));
    }
}
