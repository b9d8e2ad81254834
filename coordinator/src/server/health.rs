//! Readiness: the standard gRPC health service (`grpc.health.v1.Health`, tonic-health) says
//! SERVING only while this replica knows a raft leader (itself or another), so Kubernetes sends
//! traffic only to replicas that can serve it (a follower redirects to the leader it names). The
//! overall status (service `""`) and each of the three services follow the same rule. It is
//! served without credentials: it tells only whether a leader is known.
//!
//! Probes cannot speak TLS, so `--health-listen ADDR` can also serve it alone, in plaintext, on a
//! second port.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::watch;
use tokio::task::JoinHandle;
use tonic_health::pb::health_server::HealthServer;
use tonic_health::server::{HealthReporter, HealthService};
use tonic_health::ServingStatus;

use super::{ServeError, Shared};

/// The services the health status is reported for, besides the overall one (`""`).
const SERVICES: [&str; 4] =
    ["", "cyclotron.v1.JobService", "cyclotron.v1.WorkerService", "cyclotron.v1.RaftService"];

/// The health service and the reporter that sets it, every service NOT_SERVING to begin with.
pub(crate) async fn service() -> (HealthReporter, HealthServer<HealthService>) {
    let reporter = HealthReporter::new();
    for service in SERVICES {
        reporter.set_service_status(service, ServingStatus::NotServing).await;
    }
    let server = HealthServer::new(HealthService::from_health_reporter(reporter.clone()));
    (reporter, server)
}

/// Follow this replica's raft status: SERVING while a leader is known, NOT_SERVING otherwise.
pub(crate) async fn follow_leader(shared: Arc<Shared>, reporter: HealthReporter) {
    let mut every = tokio::time::interval(Duration::from_millis(200));
    let mut last: Option<bool> = Some(false);
    loop {
        every.tick().await;
        let ready = shared.replica.status().leader_id.is_some();
        if last == Some(ready) {
            continue;
        }
        last = Some(ready);
        let status = if ready { ServingStatus::Serving } else { ServingStatus::NotServing };
        for service in SERVICES {
            reporter.set_service_status(service, status).await;
        }
        tracing::info!(
            ready,
            "health: {}",
            if ready { "a raft leader is known; serving" } else { "no raft leader known; not serving" }
        );
    }
}

/// Serve the health service alone on `addr`, in plaintext, until `stop`.
pub(crate) async fn serve_plain(
    addr: SocketAddr,
    service: HealthServer<HealthService>,
    mut stop: watch::Receiver<bool>,
) -> Result<JoinHandle<()>, ServeError> {
    let listener =
        tokio::net::TcpListener::bind(addr).await.map_err(|source| ServeError::Bind { addr, source })?;
    tracing::info!(%addr, "health service (plaintext) listening");
    let incoming = tokio_stream::wrappers::TcpListenerStream::new(listener);
    Ok(tokio::spawn(async move {
        let served = tonic::transport::Server::builder()
            .add_service(service)
            .serve_with_incoming_shutdown(incoming, async move {
                let _ = stop.wait_for(|s| *s).await;
            })
            .await;
        if let Err(e) = served {
            tracing::warn!(error = %e, "health server stopped");
        }
    }))
}
