//! An S3 server in the calling process, for tests and `make bench`: `s3s` + `s3s-fs` over a local
//! folder, with credentials checked (SigV4), on `127.0.0.1:0`. It runs on its own thread with its
//! own tokio runtime, so a test can stop it (or have it stop itself after N requests) while a
//! client in another runtime is mid-upload. Built with `cfg(test)` or the `s3-server` feature.

use std::net::SocketAddr;
use std::path::Path;
use std::sync::atomic::{AtomicI64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::conn::auto::Builder as ConnBuilder;
use s3s::auth::SimpleAuth;
use s3s::service::S3ServiceBuilder;
use tokio::sync::watch;

use super::s3::S3Options;

/// Why a request was not served (the connection is cut).
#[derive(Debug)]
struct Cut(String);

impl std::fmt::Display for Cut {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for Cut {}

/// A running server; stopped on drop.
pub struct S3TestServer {
    pub addr: SocketAddr,
    pub access_key: String,
    pub secret_key: String,
    stop: watch::Sender<bool>,
    /// Requests still served before the server stops itself (`i64::MAX`: unlimited).
    budget: Arc<AtomicI64>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl std::fmt::Debug for S3TestServer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("S3TestServer").field("addr", &self.addr).finish()
    }
}

impl S3TestServer {
    /// Serve `root` (each sub-folder is a bucket; `buckets` are created) with one key pair.
    pub fn start(root: &Path, buckets: &[&str], access_key: &str, secret_key: &str) -> std::io::Result<Self> {
        for b in buckets {
            std::fs::create_dir_all(root.join(b))?;
        }
        let fs = s3s_fs::FileSystem::new(root).map_err(|e| std::io::Error::other(format!("{e:?}")))?;
        let mut b = S3ServiceBuilder::new(fs);
        b.set_auth(SimpleAuth::from_single(access_key, secret_key));
        let service = b.build();
        let listener = std::net::TcpListener::bind("127.0.0.1:0")?;
        listener.set_nonblocking(true)?;
        let addr = listener.local_addr()?;
        let (stop, mut stopped) = watch::channel(false);
        let budget = Arc::new(AtomicI64::new(i64::MAX));
        let (budget2, stop2) = (Arc::clone(&budget), stop.clone());
        let thread = std::thread::Builder::new().name("s3-test-server".into()).spawn(move || {
            let rt = tokio::runtime::Builder::new_multi_thread()
                .worker_threads(2)
                .enable_all()
                .build()
                .expect("tokio runtime for the S3 test server");
            rt.block_on(async move {
                let listener = tokio::net::TcpListener::from_std(listener).expect("listener");
                let http = ConnBuilder::new(TokioExecutor::new());
                let mut conns = tokio::task::JoinSet::new();
                loop {
                    let socket = tokio::select! {
                        r = listener.accept() => match r { Ok((s, _)) => s, Err(_) => continue },
                        _ = stopped.changed() => break,
                    };
                    let (svc, budget, stop) = (service.clone(), Arc::clone(&budget2), stop2.clone());
                    let counted = hyper::service::service_fn(move |req| {
                        let svc = svc.clone();
                        // i64::MAX: unlimited; otherwise the requests left before stopping
                        let left = budget.fetch_sub(1, Ordering::SeqCst);
                        if left <= 0 {
                            let _ = stop.send(true);
                        }
                        async move {
                            if left <= 0 {
                                return Err(Cut("the test server stopped".into()));
                            }
                            hyper::service::Service::call(&svc, req).await.map_err(|e| Cut(format!("{e:?}")))
                        }
                    });
                    let conn = http.serve_connection(TokioIo::new(socket), counted).into_owned();
                    conns.spawn(async move {
                        let _ = conn.await;
                    });
                }
                // stopping drops the listener and cuts every open connection mid-request
                conns.abort_all();
                let _ = tokio::time::timeout(Duration::from_secs(5), async {
                    while conns.join_next().await.is_some() {}
                })
                .await;
            });
        })?;
        Ok(S3TestServer {
            addr,
            access_key: access_key.into(),
            secret_key: secret_key.into(),
            stop,
            budget,
            thread: Some(thread),
        })
    }

    pub fn endpoint(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// Client options for this server with its key pair (or another, to test refusals).
    pub fn options(&self, access_key: &str, secret_key: &str) -> S3Options {
        S3Options {
            endpoint: Some(self.endpoint()),
            region: Some("us-east-1".into()),
            allow_http: Some(true),
            virtual_hosted_style: Some(false),
            access_key_id: Some(access_key.into()),
            secret_access_key: Some(secret_key.into()),
        }
    }

    /// Serve `n` more requests, then stop (the request after them is cut, the listener closed).
    pub fn stop_after_requests(&self, n: i64) {
        self.budget.store(n, Ordering::SeqCst);
    }

    /// Stop now and wait for the server thread (at most a few seconds).
    pub fn stop(&mut self) {
        let _ = self.stop.send(true);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

impl Drop for S3TestServer {
    fn drop(&mut self) {
        self.stop();
    }
}
