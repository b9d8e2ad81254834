//! Collectives for data-parallel training: the [`Collective`] trait every backend implements
//! (a TCP [`ring`] on CPUs, [`nccl`] on GPUs, [`local`] for a world of one), its error type, and
//! the one test suite ([`suite`]) every backend passes.
//!
//! Failure contract: every call finishes within its deadline ([`DEFAULT_TIMEOUT`] unless
//! configured). It fails with [`CollectiveError::Timeout`] when a peer is silent past the deadline,
//! [`CollectiveError::PeerLost`] when a connection breaks (a peer died or aborted), and
//! [`CollectiveError::SizeMismatch`] when ranks disagree on the buffer length or the operation.
//! After any error the collective is unusable: every later call fails at once and the group must
//! be rebuilt (restart-the-group), with a new rendezvous generation.

pub mod local;
pub mod nccl;
pub mod ring;
#[doc(hidden)]
pub mod suite;

use std::time::Duration;

pub use local::Local;
pub use ring::{Ring, RingConfig};

/// How long a collective call may take before it fails with [`CollectiveError::Timeout`].
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(60);

/// The reduction an all-reduce applies.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ReduceOp {
    Sum,
    /// The sum divided by the world size.
    Average,
}

/// What can go wrong in a collective; see the module docs for the contract.
#[derive(Debug, thiserror::Error)]
pub enum CollectiveError {
    #[error("rank {rank}: {op} timed out after {after:?} waiting for rank {peer}")]
    Timeout { rank: usize, op: &'static str, peer: usize, after: Duration },
    #[error("rank {rank}: lost rank {peer} during {op}: {message}")]
    PeerLost { rank: usize, op: &'static str, peer: usize, message: String },
    #[error("rank {rank}: {op} mismatch with rank {peer}: ours is {ours}, theirs is {theirs}")]
    SizeMismatch { rank: usize, op: &'static str, peer: usize, ours: String, theirs: String },
    #[error("rank {rank}: handshake with {addr} failed: {message}")]
    Handshake { rank: usize, addr: String, message: String },
    #[error("rank {rank}: cannot connect to rank {peer} at {addr} within {after:?}: {message}")]
    Connect { rank: usize, peer: usize, addr: String, after: Duration, message: String },
    #[error("invalid collective configuration: {message}")]
    Config { message: String },
    #[error("{what}: {source}")]
    Io { what: String, source: std::io::Error },
    #[error("rank {rank}: the collective was aborted")]
    Aborted { rank: usize },
    #[error("this build has no NCCL support: rebuild with `--features nccl`")]
    NotCompiledWithNccl,
    #[error("NCCL is unavailable: {message}")]
    NcclUnavailable { message: String },
    #[error("nccl {op}: {message}")]
    Nccl { op: &'static str, message: String },
}

pub type Result<T, E = CollectiveError> = std::result::Result<T, E>;

/// A group of `world_size` processes that reduce and broadcast buffers together. Every rank must
/// make the same calls in the same order with buffers of the same length.
pub trait Collective: Send {
    fn rank(&self) -> usize;
    fn world_size(&self) -> usize;
    /// Reduce `buf` element-wise over all ranks, in place: every rank ends with the result.
    fn all_reduce(&mut self, buf: &mut [f32], op: ReduceOp) -> Result<()>;
    /// Copy rank `root`'s `buf` into every other rank's `buf`.
    fn broadcast(&mut self, buf: &mut [f32], root: usize) -> Result<()>;
    /// Return once every rank has entered the barrier.
    fn barrier(&mut self) -> Result<()>;
    /// Break the group: calls in progress on this rank (from another thread) and every later call
    /// fail with an error, and peers see this rank as lost.
    fn abort(&self);
    /// The deadline of every later call.
    fn set_timeout(&mut self, timeout: Duration);
}

/// Shared test-suite entry: runs [`suite::run_all`] on a backend built per world size.
#[macro_export]
macro_rules! collective_suite {
    ($name:ident, $make:expr) => {
        #[test]
        fn $name() {
            $crate::collective::suite::run_all($make);
        }
    };
}
