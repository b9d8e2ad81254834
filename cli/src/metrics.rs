//! `--metrics-addr`: the worker registry of this process and its `/metrics` server.

use std::net::SocketAddr;

use cyclotron_core::metrics::{parse_metrics_addr, serve_metrics, MetricsServer};
use cyclotron_worker::metrics::{JobMetrics, WorkerMetrics};

/// A parsed `--metrics-addr` value: an address, or `None` for `off`.
#[derive(Debug, Clone, Copy)]
pub struct MetricsAddr(pub Option<SocketAddr>);

/// clap's parser for `--metrics-addr`.
pub fn parse(s: &str) -> Result<MetricsAddr, String> {
    parse_metrics_addr(s).map(MetricsAddr)
}

/// Starts the `/metrics` server at `addr` (if any) with a fresh worker registry, and returns the
/// handles of job `job` on `rank` to record into; the server stops when dropped.
pub fn serve(
    addr: Option<MetricsAddr>,
    job: &str,
    rank: usize,
) -> anyhow::Result<(Option<JobMetrics>, Option<MetricsServer>)> {
    let Some(addr) = addr.and_then(|a| a.0) else { return Ok((None, None)) };
    let registry = WorkerMetrics::new();
    let metrics = registry.job(job, rank);
    let server = serve_metrics(addr, registry.registry().clone())?;
    tracing::info!("serving Prometheus metrics at {}", server.url());
    Ok((Some(metrics), Some(server)))
}
