//! The cluster client every role shares (the worker agent and the user commands): a list of
//! coordinator addresses, the one believed to lead, and calls with deadlines that follow the leader.
//!
//! Failover protocol: a follower answers UNAVAILABLE with the leader's address in metadata
//! `cyclotron-leader`; the client switches to it and retries at once. UNAVAILABLE without a
//! leader (an election), DEADLINE_EXCEEDED (no quorum yet), a connect error or an attempt past
//! its deadline moves on to the next address, with a short back-off after each full round.
//! Any other status is the coordinator's answer and is returned as is. Every attempt has a
//! deadline and every call a total deadline: nothing waits forever on a dead coordinator.
//!
//! Security: every call carries the cluster token (an interceptor on the channel handed to the
//! caller's closure), and with TLS the coordinators are dialled at `https://` and verified
//! against `--tls-ca`. A refusal for a missing or wrong credential (`UNAUTHENTICATED`), or a
//! TLS failure, is returned at once with what to do: another coordinator would say the same.

use std::collections::HashMap;
use std::future::Future;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use cyclotron_proto::auth::AttachToken;
use cyclotron_proto::tls::ClientSecurity;
use tonic::service::interceptor::InterceptedService;
use tonic::transport::{Channel, Endpoint};
use tonic::{Code, Status};

use super::error::ClientError;

/// What a call's closure receives: a channel to the coordinator that adds the cluster token.
pub type AuthChannel = InterceptedService<Channel, AttachToken>;

/// Metadata key in which a follower names the leader's client address.
pub const LEADER_METADATA: &str = "cyclotron-leader";

/// Deadlines of calls (per attempt, and in all over the failover attempts).
#[derive(Debug, Clone, Copy)]
pub struct Deadlines {
    pub attempt: Duration,
    pub total: Duration,
}

impl Deadlines {
    pub const fn new(attempt: Duration, total: Duration) -> Self {
        Deadlines { attempt, total }
    }
}

/// Coordinators of one cluster; cheap to clone (shared state).
#[derive(Debug, Clone)]
pub struct Coordinators {
    inner: Arc<Inner>,
    pub deadlines: Deadlines,
}

#[derive(Debug)]
struct Inner {
    /// Normalised URLs (`http://host:port`); the first ones are those given, leaders learnt are added.
    addrs: Mutex<Vec<String>>,
    /// Index into `addrs` of the coordinator to try first.
    current: Mutex<usize>,
    channels: Mutex<HashMap<String, Channel>>,
    security: ClientSecurity,
}

/// `host:port` or a URL → `http://host:port` (no path).
pub fn normalise(addr: &str) -> Result<String, ClientError> {
    normalise_with(addr, "http")
}

/// `host:port` or a URL → `<scheme>://host:port`: the scheme this client speaks wins over the
/// one written (a redirect names a leader as `host:port`; TLS is the client's setting).
fn normalise_with(addr: &str, scheme: &str) -> Result<String, ClientError> {
    let a = addr.trim().trim_end_matches('/');
    if a.is_empty() {
        return Err(ClientError::BadAddress { addr: addr.into(), message: "empty".into() });
    }
    let url = format!("{scheme}://{}", a.split_once("://").map_or(a, |(_, rest)| rest));
    let rest = url.split_once("://").map_or("", |(_, r)| r);
    let port_ok = rest.rsplit_once(':').is_some_and(|(h, p)| !h.is_empty() && p.parse::<u16>().is_ok());
    if !port_ok || rest.contains('/') {
        return Err(ClientError::BadAddress {
            addr: addr.into(),
            message: "expected host:port or http://host:port, e.g. 127.0.0.1:7070".into(),
        });
    }
    Ok(url)
}

impl Coordinators {
    /// From `--coordinator` values: comma-separated lists of addresses (no credentials).
    pub fn new(addrs: &[String], deadlines: Deadlines) -> Result<Self, ClientError> {
        Self::with_security(addrs, deadlines, ClientSecurity::default())
    }

    /// [`Self::new`] with a cluster token and TLS settings.
    pub fn with_security(
        addrs: &[String],
        deadlines: Deadlines,
        security: ClientSecurity,
    ) -> Result<Self, ClientError> {
        let mut list = vec![];
        for a in addrs.iter().flat_map(|a| a.split(',')).filter(|a| !a.trim().is_empty()) {
            let url = normalise_with(a, security.scheme())?;
            if !list.contains(&url) {
                list.push(url);
            }
        }
        if list.is_empty() {
            return Err(ClientError::BadAddress {
                addr: String::new(),
                message: "no coordinator address given; pass --coordinator HOST:PORT".into(),
            });
        }
        Ok(Coordinators {
            inner: Arc::new(Inner {
                addrs: Mutex::new(list),
                current: Mutex::new(0),
                channels: Mutex::new(HashMap::new()),
                security,
            }),
            deadlines,
        })
    }

    /// The credentials and TLS settings this client presents.
    pub fn security(&self) -> &ClientSecurity {
        &self.inner.security
    }

    /// The same coordinators with other deadlines (e.g. a rendezvous that waits for peers).
    pub fn with_deadlines(&self, deadlines: Deadlines) -> Self {
        Coordinators { inner: self.inner.clone(), deadlines }
    }

    /// Addresses, for messages.
    pub fn addrs(&self) -> Vec<String> {
        lock(&self.inner.addrs).clone()
    }

    /// The coordinator tried first (the leader, as far as this client knows).
    pub fn current(&self) -> String {
        let addrs = lock(&self.inner.addrs);
        let i = *lock(&self.inner.current);
        addrs[i % addrs.len()].clone()
    }

    fn advance_from(&self, addr: &str) {
        let addrs = lock(&self.inner.addrs);
        let mut cur = lock(&self.inner.current);
        if addrs[*cur % addrs.len()] == addr {
            *cur = (*cur + 1) % addrs.len();
        }
    }

    /// Make `leader` the first to try (adding it when it is new).
    fn follow(&self, leader: &str) -> bool {
        let Ok(url) = normalise_with(leader, self.inner.security.scheme()) else { return false };
        let mut addrs = lock(&self.inner.addrs);
        let i = match addrs.iter().position(|a| *a == url) {
            Some(i) => i,
            None => {
                addrs.push(url);
                addrs.len() - 1
            }
        };
        let mut cur = lock(&self.inner.current);
        let changed = *cur != i;
        *cur = i;
        changed
    }

    fn forget(&self, addr: &str) {
        lock(&self.inner.channels).remove(addr);
    }

    async fn channel(&self, addr: &str) -> Result<AuthChannel, Attempt> {
        let auth = AttachToken::new(self.inner.security.token.as_ref());
        if let Some(c) = lock(&self.inner.channels).get(addr) {
            return Ok(InterceptedService::new(c.clone(), auth));
        }
        let mut endpoint = Endpoint::from_shared(addr.to_string())
            .map_err(|e| Attempt::Unreachable(e.to_string()))?
            .connect_timeout(self.deadlines.attempt)
            .tcp_nodelay(true)
            .http2_keep_alive_interval(Duration::from_secs(5))
            .keep_alive_timeout(Duration::from_secs(5))
            .keep_alive_while_idle(true);
        if let Some(tls) = &self.inner.security.tls {
            endpoint = endpoint.tls_config(tls.clone()).map_err(|e| Attempt::Tls(transport_message(&e)))?;
        }
        let connected = tokio::time::timeout(self.deadlines.attempt, endpoint.connect()).await;
        let channel = match connected {
            Ok(Ok(c)) => c,
            Ok(Err(e)) => {
                let message = transport_message(&e);
                return Err(if is_tls_failure(&message) {
                    Attempt::Tls(message)
                } else {
                    Attempt::Unreachable(message)
                });
            }
            Err(_) => {
                return Err(Attempt::Unreachable(format!(
                    "no connection within {:?}",
                    self.deadlines.attempt
                )))
            }
        };
        lock(&self.inner.channels).insert(addr.to_string(), channel.clone());
        Ok(InterceptedService::new(channel, auth))
    }

    /// Run `f` on the leader's channel, following redirects and failing over between
    /// coordinators, each attempt bounded by `deadlines.attempt` and the whole call by `deadlines.total`.
    pub async fn call<T, F, Fut>(&self, f: F) -> Result<T, ClientError>
    where
        F: FnMut(AuthChannel) -> Fut,
        Fut: Future<Output = Result<tonic::Response<T>, Status>>,
    {
        self.call_as(self.current(), f).await.map(|(t, _)| t)
    }

    /// [`Self::call`], also returning the address that answered; `first` is tried first.
    pub async fn call_as<T, F, Fut>(&self, first: String, mut f: F) -> Result<(T, String), ClientError>
    where
        F: FnMut(AuthChannel) -> Fut,
        Fut: Future<Output = Result<tonic::Response<T>, Status>>,
    {
        let started = Instant::now();
        let mut failures_in_round = 0usize;
        let mut redirects = 0usize;
        let mut addr = first;
        loop {
            let attempt = async {
                let channel = self.channel(&addr).await?;
                match tokio::time::timeout(self.deadlines.attempt, f(channel)).await {
                    Err(_) => {
                        Err(Attempt::Unreachable(format!("no answer within {:?}", self.deadlines.attempt)))
                    }
                    Ok(Ok(r)) => Ok(r.into_inner()),
                    Ok(Err(s)) => Err(Attempt::Status(s)),
                }
            };
            let failure = match attempt.await {
                Ok(t) => return Ok((t, addr)),
                Err(Attempt::Tls(e)) => {
                    self.forget(&addr);
                    return Err(ClientError::Tls {
                        addr: host(&addr),
                        message: e,
                        tls: self.inner.security.tls.is_some(),
                    });
                }
                Err(Attempt::Unreachable(e)) => {
                    self.forget(&addr);
                    format!("{}: {e}", host(&addr))
                }
                Err(Attempt::Status(s))
                    if is_tls_failure(s.message())
                        || (self.inner.security.tls.is_none() && is_h2_garbage(&s)) =>
                {
                    self.forget(&addr);
                    return Err(ClientError::Tls {
                        addr: host(&addr),
                        message: s.message().into(),
                        tls: self.inner.security.tls.is_some(),
                    });
                }
                Err(Attempt::Status(s)) => match retry_kind(&s) {
                    Retry::No => {
                        return Err(ClientError::Rejected { code: s.code(), message: s.message().into() })
                    }
                    Retry::Leader(leader) if redirects < 8 => {
                        redirects += 1;
                        self.follow(&leader);
                        let next = self.current();
                        if next != addr {
                            addr = next;
                            continue;
                        }
                        format!("{}: {}", host(&addr), s.message())
                    }
                    Retry::Leader(_) | Retry::Elsewhere => {
                        if s.code() == Code::Unavailable && is_transport(&s) {
                            self.forget(&addr);
                        }
                        format!("{}: {}", host(&addr), s.message())
                    }
                },
            };
            if started.elapsed() >= self.deadlines.total {
                let last_error = failure;
                let addrs = self.addrs().iter().map(|a| host(a)).collect::<Vec<_>>().join(", ");
                // a TLS server that refuses this client's certificate (or its lack of one) closes
                // the connection after the handshake: say what to check with TLS on
                let last_error = match &self.inner.security.tls {
                    Some(_) => format!(
                        "{last_error}; with TLS, check --tls-ca, and pass --tls-cert/--tls-key if the coordinator demands client certificates"
                    ),
                    None => last_error,
                };
                return Err(ClientError::Unreachable { addrs, last_error });
            }
            self.advance_from(&addr);
            addr = self.current();
            failures_in_round += 1;
            let n = lock(&self.inner.addrs).len();
            if failures_in_round >= n {
                failures_in_round = 0;
                let left = self.deadlines.total.saturating_sub(started.elapsed());
                tokio::time::sleep(Duration::from_millis(200).min(left)).await;
            }
        }
    }
}

enum Attempt {
    Unreachable(String),
    /// The TLS handshake failed (an unknown CA, a plaintext server, a certificate for another name).
    Tls(String),
    Status(Status),
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

/// A plaintext HTTP/2 client talking to a TLS server reads the server's TLS alert as a broken
/// HTTP/2 frame.
fn is_h2_garbage(s: &Status) -> bool {
    let m = s.message().to_ascii_lowercase();
    m.contains("h2 protocol error") || m.contains("http2 error") || m.contains("frame with invalid size")
}

/// Whether a connection error is a TLS one (rustls' messages), which no retry fixes.
fn is_tls_failure(message: &str) -> bool {
    let m = message.to_ascii_lowercase();
    m.contains("invalid peer certificate")
        || m.contains("unknownissuer")
        || m.contains("certificate")
        || m.contains("invalidcontenttype")
        || m.contains("corrupt message")
        || m.contains("tls handshake")
        || m.contains("received corrupt")
}

#[derive(Debug, PartialEq)]
enum Retry {
    No,
    /// Ask this coordinator (the leader) instead.
    Leader(String),
    /// Try another coordinator.
    Elsewhere,
}

fn retry_kind(s: &Status) -> Retry {
    match s.code() {
        Code::Unavailable => match s.metadata().get(LEADER_METADATA).and_then(|v| v.to_str().ok()) {
            Some(l) if !l.trim().is_empty() => Retry::Leader(l.trim().to_string()),
            _ => Retry::Elsewhere,
        },
        Code::DeadlineExceeded | Code::Cancelled => Retry::Elsewhere,
        // tonic reports a broken connection as UNKNOWN with a transport message
        Code::Unknown if is_transport(s) => Retry::Elsewhere,
        _ => Retry::No,
    }
}

fn is_transport(s: &Status) -> bool {
    let m = s.message().to_ascii_lowercase();
    m.contains("transport") || m.contains("connect") || m.contains("broken pipe") || m.contains("h2 protocol")
}

fn transport_message(e: &tonic::transport::Error) -> String {
    let mut msg = e.to_string();
    let mut source = std::error::Error::source(e);
    while let Some(s) = source {
        msg = format!("{msg}: {s}");
        source = s.source();
    }
    msg
}

/// `http://host:port` → `host:port`, for messages.
pub fn host(url: &str) -> String {
    url.split_once("://").map_or(url, |(_, h)| h).to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn addresses_are_normalised_and_bad_ones_named() {
        assert_eq!(normalise("127.0.0.1:7070").unwrap(), "http://127.0.0.1:7070");
        assert_eq!(normalise(" http://h:1/ ").unwrap(), "http://h:1");
        for bad in ["", "localhost", "h:port", "http://h:1/path", ":80"] {
            let e = normalise(bad).unwrap_err().to_string();
            assert!(e.contains("coordinator address"), "{bad}: {e}");
        }
        let c = Coordinators::new(
            &["a:1,b:2".into(), "a:1".into()],
            Deadlines::new(Duration::from_secs(1), Duration::from_secs(1)),
        )
        .unwrap();
        assert_eq!(c.addrs(), vec!["http://a:1", "http://b:2"]);
        assert!(Coordinators::new(&[], Deadlines::new(Duration::from_secs(1), Duration::from_secs(1)))
            .unwrap_err()
            .to_string()
            .contains("--coordinator"));
    }

    #[test]
    fn redirects_follow_the_leader_and_other_codes_are_answers() {
        let mut s = Status::unavailable("not the leader");
        s.metadata_mut().insert(LEADER_METADATA, "127.0.0.1:9".parse().unwrap());
        assert_eq!(retry_kind(&s), Retry::Leader("127.0.0.1:9".into()));
        assert_eq!(retry_kind(&Status::unavailable("election")), Retry::Elsewhere);
        assert_eq!(retry_kind(&Status::deadline_exceeded("no quorum")), Retry::Elsewhere);
        assert_eq!(retry_kind(&Status::not_found("unknown job j-9")), Retry::No);
        assert_eq!(retry_kind(&Status::invalid_argument("stage 1: lr")), Retry::No);

        let c = Coordinators::new(
            &["a:1,b:2".into()],
            Deadlines::new(Duration::from_secs(1), Duration::from_secs(1)),
        )
        .unwrap();
        assert!(c.follow("b:2"));
        assert_eq!(c.current(), "http://b:2");
        assert!(c.follow("c:3"), "a leader not in the list is added");
        assert_eq!(c.current(), "http://c:3");
        c.advance_from("http://c:3");
        assert_eq!(c.current(), "http://a:1");
    }
}
