//! The agent's errors: what can go wrong talking to coordinators and running training children.

use tonic::Code;

/// Errors of the cluster client ([`super::client`]).
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    /// No coordinator answered before the call's deadline.
    #[error(
        "cannot reach a coordinator at {addrs} ({last_error}); start one with `cyclotron coordinator --listen ADDR --data-dir DIR` (or `cyclotron local`), or pass its address with --coordinator"
    )]
    Unreachable { addrs: String, last_error: String },
    /// A coordinator answered with an error: its message, as it said it.
    #[error("{message}")]
    Rejected { code: Code, message: String },
    /// A `--coordinator` address that is not a URL or host:port.
    #[error("coordinator address {addr:?}: {message}")]
    BadAddress { addr: String, message: String },
    /// The TLS connection to a coordinator failed, or (`tls` false) a plaintext client reached
    /// a coordinator that speaks TLS.
    #[error("{}", tls_failure(addr, message, *tls))]
    Tls { addr: String, message: String, tls: bool },
}

fn tls_failure(addr: &str, message: &str, tls: bool) -> String {
    if tls {
        format!(
            "TLS with the coordinator at {addr} failed ({message}); check that it serves TLS, that --tls-ca is the CA that signed its certificate, that the address is a name in that certificate, and, if it demands client certificates, pass --tls-cert and --tls-key"
        )
    } else {
        format!(
            "the coordinator at {addr} does not answer plaintext gRPC ({message}); if it serves TLS, pass --tls-ca with the CA that signed its certificate"
        )
    }
}

impl ClientError {
    /// The gRPC code of a rejection (`None` when no coordinator answered).
    pub fn code(&self) -> Option<Code> {
        match self {
            ClientError::Rejected { code, .. } => Some(*code),
            _ => None,
        }
    }
}

/// Errors of the worker agent.
#[derive(Debug, thiserror::Error)]
pub enum AgentError {
    #[error(transparent)]
    Client(#[from] ClientError),
    #[error("the coordinator refused this worker: {message}")]
    Refused { message: String },
    #[error("{what}: {source}")]
    Io { what: String, source: std::io::Error },
    #[error("{what}: {message}")]
    Invalid { what: String, message: String },
}

pub type Result<T, E = AgentError> = std::result::Result<T, E>;
