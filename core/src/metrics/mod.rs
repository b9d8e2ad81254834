//! Prometheus metrics shared by every role: the metric [`names`], the `/metrics` HTTP
//! [`server`], and the `--metrics-addr` flag's parser. Each process keeps one
//! `prometheus::Registry` of its own (no global registry): the worker's is
//! `cyclotron_worker::metrics::WorkerMetrics`, the coordinator's
//! `cyclotron_coordinator::metrics::CoordinatorMetrics`.

pub mod names;
mod server;

use std::net::SocketAddr;

pub use server::{encode_text, serve_metrics, MetricsServer, ShutdownHandle};

/// Parses a `--metrics-addr` value: `host:port` (port 0 picks a free port) or `off`.
pub fn parse_metrics_addr(s: &str) -> Result<Option<SocketAddr>, String> {
    let s = s.trim();
    if s.eq_ignore_ascii_case("off") || s.eq_ignore_ascii_case("none") {
        return Ok(None);
    }
    s.parse::<SocketAddr>().map(Some).map_err(|_| {
        format!("`{s}` is not an address: give host:port (e.g. 127.0.0.1:9100, 0.0.0.0:9100, port 0 for any free port) or `off`")
    })
}

#[cfg(test)]
mod tests;
