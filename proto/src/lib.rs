//! `cyclotron-proto`: the wire contract between users, coordinators and workers.
//!
//! It carries the generated gRPC services ([`v1`]: jobs for users, registration, leases and
//! rendezvous for workers, raft messages between coordinators), the identifier newtypes every
//! role shares, the protocol version a worker announces when it registers, and [`status`]: the
//! one place that maps domain errors to `tonic::Status` codes.

/// Generated messages and service stubs (package `cyclotron.v1`).
#[allow(clippy::all, missing_docs)]
pub mod v1 {
    tonic::include_proto!("cyclotron.v1");
}

pub mod auth;
pub mod limits;
pub mod order;
pub mod status;
pub mod tls;

pub use status::{leader_hint, ServiceError, LEADER_METADATA};

pub use cyclotron_core::ids::{JobId, Rank, RunId, Step};

/// Version of the worker ↔ coordinator protocol; a worker speaking another one is refused.
/// 2: `Assignment.task_json` has kinds `sweep` and `evaluate` besides `run` (a version-1 worker
/// would run every task as a whole training run).
/// 3: every call after `Register` carries the session it returned, and the rendezvous hands out
/// the ring secret (a version-2 worker would be refused call after call).
/// 4: the task is a typed `Assignment.order` (`TaskOrder`), no longer JSON text in `task_json`
/// (a version-3 worker would run every task as a whole training run).
pub const PROTOCOL_VERSION: u32 = 4;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_print_and_serialise_as_their_inner_value() {
        assert_eq!(JobId("j-1".into()).to_string(), "j-1");
        assert_eq!(Step(42).to_string(), "42");
        assert_eq!(Rank(3), Rank(3));
        assert!(Step(1) < Step(2));
    }
}
