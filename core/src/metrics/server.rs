//! The `/metrics` HTTP endpoint: a small hyper server on its own thread (with its own
//! current-thread tokio runtime), so a synchronous training process and an async coordinator use
//! it the same way. `GET /metrics` answers the registry in the Prometheus text format; every
//! other path is a 404, every other method on `/metrics` a 405.
//!
//! [`serve_metrics`] binds before it returns (a taken port is an error now, not a log line later)
//! and gives back the bound address (port 0 picks a free one). [`MetricsServer::shutdown`], or
//! dropping the server, stops accepting, cuts open connections and joins the thread (bounded).
//!
//! It is reachable by whoever reaches its address, so it bounds what a client can hold: at most
//! [`MAX_CONNECTIONS`] open connections (more are closed at once), [`HEADER_TIMEOUT`] to send a
//! request's headers, and [`CONNECTION_DEADLINE`] for a whole connection.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::Full;
use hyper::{Method, Request, Response, StatusCode};
use hyper_util::rt::{TokioIo, TokioTimer};
use prometheus::Registry;
use tokio::sync::watch;

use crate::error::{Error, Result};

/// How long `shutdown` waits for the server thread.
const SHUTDOWN_DEADLINE: Duration = Duration::from_secs(5);
/// Most connections open at once (Prometheus uses one per scrape); more are closed at once.
pub const MAX_CONNECTIONS: usize = 32;
/// Time a client has to send a request's headers (a slow or silent client is cut off).
pub const HEADER_TIMEOUT: Duration = Duration::from_secs(3);
/// Longest a connection may stay open, keep-alive included.
pub const CONNECTION_DEADLINE: Duration = Duration::from_secs(60);

/// A running `/metrics` server; stopped on drop.
pub struct MetricsServer {
    /// The address it listens on (the real port when asked for port 0).
    pub addr: SocketAddr,
    stop: watch::Sender<bool>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl std::fmt::Debug for MetricsServer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MetricsServer").field("addr", &self.addr).finish()
    }
}

/// Stops a [`MetricsServer`] from elsewhere (a signal handler, an async task); cloneable.
#[derive(Debug, Clone)]
pub struct ShutdownHandle(watch::Sender<bool>);

impl ShutdownHandle {
    /// Ask the server to stop (returns at once; the server's owner joins it).
    pub fn shutdown(&self) {
        let _ = self.0.send(true);
    }
}

impl MetricsServer {
    /// The URL Prometheus scrapes.
    pub fn url(&self) -> String {
        format!("http://{}/metrics", self.addr)
    }

    /// A handle that stops the server without owning it.
    pub fn shutdown_handle(&self) -> ShutdownHandle {
        ShutdownHandle(self.stop.clone())
    }

    /// Stop serving and wait (at most a few seconds) for the server thread.
    pub fn shutdown(&mut self) {
        let _ = self.stop.send(true);
        let Some(thread) = self.thread.take() else { return };
        let started = std::time::Instant::now();
        while !thread.is_finished() && started.elapsed() < SHUTDOWN_DEADLINE {
            std::thread::sleep(Duration::from_millis(5));
        }
        if thread.is_finished() {
            let _ = thread.join();
        } else {
            tracing::warn!(addr = %self.addr, "metrics server did not stop in time; leaving its thread");
        }
    }
}

impl Drop for MetricsServer {
    fn drop(&mut self) {
        self.shutdown();
    }
}

/// The text exposition of `registry` (what `GET /metrics` answers).
pub fn encode_text(registry: &Registry) -> Result<String> {
    prometheus::TextEncoder::new()
        .encode_to_string(&registry.gather())
        .map_err(|e| Error::Metrics { message: format!("cannot encode the registry: {e}") })
}

fn respond(registry: &Registry, req: &Request<hyper::body::Incoming>) -> Response<Full<Bytes>> {
    let reply = |status: StatusCode, content_type: &str, body: String| {
        Response::builder()
            .status(status)
            .header(hyper::header::CONTENT_TYPE, content_type)
            .body(Full::new(Bytes::from(body)))
            .expect("static response parts are valid")
    };
    let plain = "text/plain; charset=utf-8";
    if req.uri().path() != "/metrics" {
        return reply(StatusCode::NOT_FOUND, plain, "not found: metrics are served at /metrics\n".into());
    }
    if req.method() != Method::GET && req.method() != Method::HEAD {
        return reply(StatusCode::METHOD_NOT_ALLOWED, plain, "use GET /metrics\n".into());
    }
    match encode_text(registry) {
        Ok(text) => reply(StatusCode::OK, prometheus::TEXT_FORMAT, text),
        Err(e) => reply(StatusCode::INTERNAL_SERVER_ERROR, plain, format!("{e}\n")),
    }
}

/// Serve `registry` at `http://<addr>/metrics` until the returned server is shut down or dropped.
pub fn serve_metrics(addr: SocketAddr, registry: Registry) -> Result<MetricsServer> {
    let bind_err = |source| Error::MetricsBind { addr: addr.to_string(), source };
    let listener = std::net::TcpListener::bind(addr).map_err(bind_err)?;
    listener.set_nonblocking(true).map_err(bind_err)?;
    let bound = listener.local_addr().map_err(bind_err)?;
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|source| Error::MetricsBind { addr: bound.to_string(), source })?;
    let (stop, mut stopped) = watch::channel(false);
    let thread = std::thread::Builder::new()
        .name("cyclotron-metrics".into())
        .spawn(move || {
            rt.block_on(async move {
                let listener = match tokio::net::TcpListener::from_std(listener) {
                    Ok(l) => l,
                    Err(e) => {
                        tracing::error!(addr = %bound, error = %e, "metrics server cannot listen");
                        return;
                    }
                };
                let mut conns = tokio::task::JoinSet::new();
                loop {
                    let socket = tokio::select! {
                        r = listener.accept() => match r {
                            Ok((s, _)) => s,
                            // a transient accept failure (fd limit): back off, keep serving
                            Err(_) => {
                                tokio::time::sleep(Duration::from_millis(50)).await;
                                continue;
                            }
                        },
                        _ = stopped.changed() => break,
                    };
                    // reap finished connections, then refuse past the limit
                    while conns.try_join_next().is_some() {}
                    if conns.len() >= MAX_CONNECTIONS {
                        drop(socket);
                        continue;
                    }
                    let registry = registry.clone();
                    let service = hyper::service::service_fn(move |req| {
                        let resp = respond(&registry, &req);
                        async move { Ok::<_, Infallible>(resp) }
                    });
                    conns.spawn(async move {
                        let conn = hyper::server::conn::http1::Builder::new()
                            .timer(TokioTimer::new())
                            .header_read_timeout(HEADER_TIMEOUT)
                            .serve_connection(TokioIo::new(socket), service);
                        let _ = tokio::time::timeout(CONNECTION_DEADLINE, conn).await;
                    });
                }
                conns.abort_all();
                while conns.join_next().await.is_some() {}
            });
        })
        .map_err(|source| Error::MetricsBind { addr: bound.to_string(), source })?;
    Ok(MetricsServer { addr: bound, stop, thread: Some(thread) })
}
