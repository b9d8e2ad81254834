//! Domain errors → `tonic::Status`, in one place. Every service returns a [`ServiceError`]; the
//! `From` impl below is the only code that picks a gRPC code, so clients can rely on:
//!
//! | error | code | client action |
//! |---|---|---|
//! | invalid spec or request field | `INVALID_ARGUMENT` | fix the input; the message lists every problem |
//! | unknown job or worker | `NOT_FOUND` | a worker registers (again) |
//! | protocol mismatch, stale generation, wrong state | `FAILED_PRECONDITION` | a worker stops that run |
//! | not the raft leader | `UNAVAILABLE` + metadata `cyclotron-leader: ADDR` | retry at ADDR (or the next coordinator) |
//! | proposal or rendezvous past its deadline | `DEADLINE_EXCEEDED` | retry later |
//! | replica stopped | `UNAVAILABLE` without a leader | retry at another coordinator |
//! | missing or wrong cluster token / peer credential | `UNAUTHENTICATED` (see `auth.rs`) | fix the credential |
//! | a worker id whose session is live, registered again | `ALREADY_EXISTS` | another `--id`, or wait for the lease |
//! | a worker call without the worker's current session, or for a rank it does not hold | `PERMISSION_DENIED` | register again |

use tonic::{Code, Status};

/// Metadata key of an `UNAVAILABLE` answer naming the raft leader's gRPC address (`host:port`).
pub const LEADER_METADATA: &str = "cyclotron-leader";

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ServiceError {
    /// A malformed request field (a spec that does not parse, a rank out of range, bad JSON).
    #[error("{0}")]
    InvalidArgument(String),
    /// A job spec that parses but fails validation; every problem is listed.
    #[error("invalid job spec:\n  - {}", problems.join("\n  - "))]
    InvalidSpec { problems: Vec<String> },
    #[error("unknown {what} {id}{}", hint_suffix(hint))]
    NotFound { what: &'static str, id: String, hint: String },
    #[error(
        "worker {worker} speaks protocol {theirs}, this coordinator speaks {ours}; run a worker and a coordinator of the same cyclotron version"
    )]
    ProtocolMismatch { worker: String, theirs: u32, ours: u32 },
    /// The request does not fit the current state (a stale generation, a task not running).
    #[error("{0}")]
    FailedPrecondition(String),
    #[error("this coordinator is not the raft leader; retry at {}", leader.as_deref().unwrap_or("another coordinator (election in progress)"))]
    NotLeader { leader: Option<String> },
    #[error("{0}")]
    Timeout(String),
    #[error("coordinator unavailable: {0}")]
    Unavailable(String),
    #[error("internal error: {0}")]
    Internal(String),
    /// A second process registering a worker id whose session is live.
    #[error(
        "worker id {worker} is taken: another process registered it and its lease runs for {remaining_ms} ms more; give this worker another --id, or stop the other one and retry once its lease has ended"
    )]
    WorkerIdTaken { worker: String, remaining_ms: u64 },
    /// The caller is not who it claims to be (a wrong session), or not allowed this call.
    #[error("{0}")]
    PermissionDenied(String),
}

fn hint_suffix(hint: &str) -> String {
    if hint.is_empty() {
        String::new()
    } else {
        format!("; {hint}")
    }
}

impl ServiceError {
    pub fn code(&self) -> Code {
        match self {
            ServiceError::InvalidArgument(_) | ServiceError::InvalidSpec { .. } => Code::InvalidArgument,
            ServiceError::NotFound { .. } => Code::NotFound,
            ServiceError::ProtocolMismatch { .. } | ServiceError::FailedPrecondition(_) => {
                Code::FailedPrecondition
            }
            ServiceError::NotLeader { .. } | ServiceError::Unavailable(_) => Code::Unavailable,
            ServiceError::Timeout(_) => Code::DeadlineExceeded,
            ServiceError::Internal(_) => Code::Internal,
            ServiceError::WorkerIdTaken { .. } => Code::AlreadyExists,
            ServiceError::PermissionDenied(_) => Code::PermissionDenied,
        }
    }
}

impl From<ServiceError> for Status {
    fn from(e: ServiceError) -> Status {
        let mut status = Status::new(e.code(), e.to_string());
        if let ServiceError::NotLeader { leader: Some(addr) } = &e {
            if let Ok(value) = addr.parse() {
                status.metadata_mut().insert(LEADER_METADATA, value);
            }
        }
        status
    }
}

/// The leader address an `UNAVAILABLE` answer names, if any (clients retry there).
pub fn leader_hint(status: &Status) -> Option<String> {
    if status.code() != Code::Unavailable {
        return None;
    }
    let value = status.metadata().get(LEADER_METADATA)?.to_str().ok()?;
    Some(value.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_domain_error_gets_its_code_and_keeps_its_message() {
        let cases = [
            (
                ServiceError::InvalidSpec { problems: vec!["a".into(), "b".into()] },
                Code::InvalidArgument,
                "  - b",
            ),
            (
                ServiceError::NotFound { what: "job", id: "x-1".into(), hint: String::new() },
                Code::NotFound,
                "unknown job x-1",
            ),
            (
                ServiceError::ProtocolMismatch { worker: "w".into(), theirs: 9, ours: 1 },
                Code::FailedPrecondition,
                "speaks protocol 9",
            ),
            (ServiceError::Timeout("slow".into()), Code::DeadlineExceeded, "slow"),
            (ServiceError::NotLeader { leader: None }, Code::Unavailable, "election in progress"),
        ];
        for (err, code, needle) in cases {
            let status = Status::from(err);
            assert_eq!(status.code(), code);
            assert!(status.message().contains(needle), "{}", status.message());
        }
    }

    #[test]
    fn not_leader_carries_the_leader_address_in_metadata() {
        let status = Status::from(ServiceError::NotLeader { leader: Some("127.0.0.1:7071".into()) });
        assert_eq!(leader_hint(&status).as_deref(), Some("127.0.0.1:7071"));
        assert_eq!(leader_hint(&Status::from(ServiceError::NotLeader { leader: None })), None);
        assert_eq!(leader_hint(&Status::not_found("x")), None);
    }
}
