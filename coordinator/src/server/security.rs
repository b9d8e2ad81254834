//! Who may reach this coordinator, decided once at start: the credentials it demands of each
//! service, TLS, and the rule that a coordinator without credentials serves loopback only.
//!
//! | service | callers | credential |
//! |---|---|---|
//! | `JobService`, `WorkerService` | users, workers | the cluster token (`authorization: Bearer …`) |
//! | `RaftService` | the other replicas | the peer credential, and the raft message's sender must be a configured member |
//! | `grpc.health.v1.Health` | probes | none (it says only whether a raft leader is known) |
//!
//! Without a cluster token the coordinator refuses to listen on anything but a loopback address
//! and says at start that it serves unauthenticated. With a token, several replicas also need a
//! peer credential (a separate secret: a leaked client token must not let anyone write the raft
//! log), and TLS between replicas needs `--tls-ca` to verify each other.

use std::net::SocketAddr;

use cyclotron_proto::auth::{Guard, Token};
use cyclotron_proto::tls::{ClientSecurity, TlsFiles};

use super::ServeError;

/// The credentials and TLS material of one coordinator.
#[derive(Debug, Clone, Default)]
pub struct Security {
    /// Users and workers present it; `None`: no authentication (loopback only).
    pub cluster_token: Option<Token>,
    /// Raft peers present it to each other.
    pub peer_token: Option<Token>,
    pub tls: TlsFiles,
}

impl Security {
    pub(crate) fn client_guard(&self) -> Guard {
        Guard::cluster(self.cluster_token.as_ref())
    }

    pub(crate) fn peer_guard(&self) -> Guard {
        Guard::peers(self.peer_token.as_ref(), self.cluster_token.as_ref())
    }

    /// What this replica presents when it calls its peers.
    pub(crate) fn peer_client(&self) -> Result<ClientSecurity, ServeError> {
        let tls = self.tls.client().map_err(|e| ServeError::Config(e.to_string()))?;
        Ok(ClientSecurity { token: self.peer_token.clone(), tls })
    }

    /// Check the configuration against where it listens and who its peers are; returns the
    /// line to log at start.
    pub(crate) fn check(&self, listen: SocketAddr, peers: &[(u64, String)]) -> Result<String, ServeError> {
        let bad = |m: String| Err(ServeError::Config(m));
        let tls_on = self.tls.cert.is_some();
        if self.cluster_token.is_none() {
            if !listen.ip().is_loopback() {
                return bad(format!(
                    "--listen {listen} is reachable from other machines and no cluster token is set: anyone reaching the port could submit or cancel jobs and register as a worker; give --token-file PATH (or CYCLOTRON_TOKEN), or listen on 127.0.0.1"
                ));
            }
            if let Some((id, addr)) = peers.iter().find(|(_, a)| !is_loopback_addr(a)) {
                return bad(format!(
                    "peer {id}={addr} is not on loopback and no cluster token is set; give every replica --token-file and --peer-token-file"
                ));
            }
        }
        if peers.len() > 1 && self.cluster_token.is_some() && self.peer_token.is_none() {
            return bad("several replicas with a cluster token need a peer credential too: give --peer-token-file PATH (or CYCLOTRON_PEER_TOKEN), the same on every replica and different from the cluster token".into());
        }
        if let (Some(c), Some(p)) = (&self.cluster_token, &self.peer_token) {
            if c == p {
                return bad("the peer credential must differ from the cluster token (every client holds the cluster token)".into());
            }
        }
        if peers.len() > 1 && tls_on && self.tls.ca.is_none() {
            return bad("with TLS and several replicas, give --tls-ca (the CA that signed the replicas' certificates) so they can verify each other".into());
        }
        let tls = match (tls_on, self.tls.client_ca.is_some()) {
            (false, _) => "without TLS",
            (true, false) => "with TLS",
            (true, true) => "with mutual TLS (clients need a certificate)",
        };
        Ok(match &self.cluster_token {
            None => format!(
                "no cluster token: serving WITHOUT authentication, {tls}, on loopback only ({listen}); anyone on this machine can submit and cancel jobs or register workers (give --token-file or CYCLOTRON_TOKEN on a shared machine)"
            ),
            Some(_) => format!("serving {tls}; clients and workers must present the cluster token"),
        })
    }
}

/// Whether `host:port` names a loopback address (`localhost` counts).
fn is_loopback_addr(addr: &str) -> bool {
    let host = addr.split_once("://").map_or(addr, |(_, h)| h);
    let host = host.rsplit_once(':').map_or(host, |(h, _)| h).trim_matches(|c| c == '[' || c == ']');
    host == "localhost" || host.parse::<std::net::IpAddr>().is_ok_and(|ip| ip.is_loopback())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn token(t: &str) -> Option<Token> {
        Some(Token::new(t, "cluster token", "test").unwrap())
    }

    #[test]
    fn without_credentials_only_loopback_is_served_and_it_says_so() {
        let open = Security::default();
        let line = open.check("127.0.0.1:7070".parse().unwrap(), &[]).unwrap();
        assert!(line.contains("WITHOUT authentication") && line.contains("loopback only"), "{line}");
        let e = open.check("0.0.0.0:7070".parse().unwrap(), &[]).unwrap_err().to_string();
        assert!(e.contains("no cluster token is set") && e.contains("--token-file"), "{e}");
        let e = open
            .check(
                "127.0.0.1:7070".parse().unwrap(),
                &[(1, "127.0.0.1:1".into()), (2, "10.0.0.2:7070".into())],
            )
            .unwrap_err()
            .to_string();
        assert!(e.contains("peer 2=10.0.0.2:7070 is not on loopback"), "{e}");
        assert!(is_loopback_addr("localhost:1") && is_loopback_addr("[::1]:7") && !is_loopback_addr("h:1"));
    }

    #[test]
    fn replicas_need_their_own_peer_credential() {
        let s = Security { cluster_token: token("cluster-token-00000000"), ..Default::default() };
        let peers = [(1, "10.0.0.1:7070".to_string()), (2, "10.0.0.2:7070".to_string())];
        assert!(
            s.check("0.0.0.0:7070".parse().unwrap(), &[]).is_ok(),
            "one replica needs no peer credential"
        );
        let e = s.check("0.0.0.0:7070".parse().unwrap(), &peers).unwrap_err().to_string();
        assert!(e.contains("--peer-token-file"), "{e}");
        let same = Security { peer_token: s.cluster_token.clone(), ..s.clone() };
        assert!(same
            .check("0.0.0.0:7070".parse().unwrap(), &peers)
            .unwrap_err()
            .to_string()
            .contains("must differ"));
        let ok = Security { peer_token: token("peer-token-000000000000"), ..s };
        assert!(ok.check("0.0.0.0:7070".parse().unwrap(), &peers).unwrap().contains("without TLS"));
    }
}
