//! The GPU backend: NCCL through `cudarc` (feature `nccl`), on tch CUDA tensors by device pointer.
//!
//! Rendezvous: rank 0 creates a [`UniqueId`] (128 opaque bytes) and hands it to the other ranks
//! (the coordinator's rendezvous, or the TCP ring's broadcast in a static launch: see
//! [`UniqueId::share`]); every rank then calls [`Nccl::new`] with its rank and CUDA device.
//!
//! cudarc panics when `libnccl` or the CUDA driver cannot be loaded, so both are probed with
//! `is_culib_present()` first and a missing library is [`CollectiveError::NcclUnavailable`].
//! Without the feature every constructor returns [`CollectiveError::NotCompiledWithNccl`].
//! Deadlines: a call is enqueued on the device's legacy default stream, then the stream is
//! polled until the deadline; past it the communicator is aborted (`ncclCommAbort`) and the call
//! fails with [`CollectiveError::Timeout`]. An asynchronous NCCL error (a peer died) is
//! [`CollectiveError::PeerLost`].

use super::{Collective, Result};
#[cfg(not(feature = "nccl"))]
use super::{CollectiveError, ReduceOp};

/// An `ncclUniqueId`: created by rank 0, identical on every rank of one communicator.
#[derive(Clone, PartialEq, Eq)]
pub struct UniqueId(pub [u8; 128]);

impl std::fmt::Debug for UniqueId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("UniqueId(..)")
    }
}

impl UniqueId {
    /// Rank 0 makes it; the others receive it. With the TCP ring as bootstrap, rank 0's id
    /// reaches every rank through one broadcast of 32 `f32` words (bit patterns, not values).
    pub fn share(ring: &mut dyn Collective, mine: Option<UniqueId>) -> Result<UniqueId> {
        let mut words = [0f32; 32];
        if let Some(id) = &mine {
            for (w, b) in words.iter_mut().zip(id.0.chunks_exact(4)) {
                *w = f32::from_bits(u32::from_le_bytes([b[0], b[1], b[2], b[3]]));
            }
        }
        ring.broadcast(&mut words, 0)?;
        let mut id = [0u8; 128];
        for (b, w) in id.chunks_exact_mut(4).zip(words) {
            b.copy_from_slice(&w.to_bits().to_le_bytes());
        }
        Ok(UniqueId(id))
    }
}

#[cfg(feature = "nccl")]
mod imp;
#[cfg(feature = "nccl")]
pub use imp::Nccl;

/// Stand-in when the crate is built without the `nccl` feature: it cannot be constructed.
#[cfg(not(feature = "nccl"))]
#[derive(Debug)]
pub struct Nccl {
    never: std::convert::Infallible,
}

#[cfg(not(feature = "nccl"))]
impl Nccl {
    /// Always [`CollectiveError::NotCompiledWithNccl`].
    pub fn unique_id() -> Result<UniqueId> {
        Err(CollectiveError::NotCompiledWithNccl)
    }

    /// Always [`CollectiveError::NotCompiledWithNccl`].
    pub fn new(_rank: usize, _world: usize, _id: &UniqueId, _device: usize) -> Result<Nccl> {
        Err(CollectiveError::NotCompiledWithNccl)
    }

    pub fn all_reduce_tensor(&mut self, _t: &tch::Tensor, _op: ReduceOp) -> Result<()> {
        match self.never {}
    }

    pub fn broadcast_tensor(&mut self, _t: &tch::Tensor, _root: usize) -> Result<()> {
        match self.never {}
    }

    pub fn enqueue_all_reduce(&mut self, _t: &tch::Tensor, _op: ReduceOp) -> Result<()> {
        match self.never {}
    }

    pub fn synchronize(&mut self) -> Result<()> {
        match self.never {}
    }
}

#[cfg(not(feature = "nccl"))]
impl Collective for Nccl {
    fn rank(&self) -> usize {
        match self.never {}
    }
    fn world_size(&self) -> usize {
        match self.never {}
    }
    fn all_reduce(&mut self, _: &mut [f32], _: ReduceOp) -> Result<()> {
        match self.never {}
    }
    fn broadcast(&mut self, _: &mut [f32], _: usize) -> Result<()> {
        match self.never {}
    }
    fn barrier(&mut self) -> Result<()> {
        match self.never {}
    }
    fn abort(&self) {
        match self.never {}
    }
    fn set_timeout(&mut self, _: std::time::Duration) {
        match self.never {}
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::collective::CollectiveError;

    #[test]
    fn the_unique_id_survives_the_ring_broadcast() {
        let id = UniqueId(std::array::from_fn(|i| (i * 7 + 3) as u8));
        let mut local = super::super::Local::new();
        assert_eq!(UniqueId::share(&mut local, Some(id.clone())).unwrap(), id);
    }

    /// On a machine with a GPU and libnccl this runs one rank of NCCL through the shared
    /// checks; elsewhere it says why it skips.
    #[test]
    fn nccl_runs_a_world_of_one_or_skips() {
        if !cfg!(feature = "nccl") {
            let e = Nccl::unique_id().unwrap_err();
            assert!(matches!(e, CollectiveError::NotCompiledWithNccl), "{e}");
            eprintln!("skipping the NCCL run: built without the `nccl` feature");
            return;
        }
        if tch::Cuda::is_available() {
            #[cfg(feature = "nccl")]
            one_rank();
        } else {
            eprintln!("skipping the NCCL run: no CUDA device");
        }
    }

    #[cfg(feature = "nccl")]
    fn one_rank() {
        use crate::collective::ReduceOp;
        let id = match Nccl::unique_id() {
            Ok(id) => id,
            Err(e) => {
                eprintln!("skipping the NCCL run: {e}");
                return;
            }
        };
        let mut c = Nccl::new(0, 1, &id, 0).expect("NCCL communicator");
        for len in super::super::suite::LENGTHS {
            let mut buf: Vec<f32> = (0..len).map(|i| (i % 97) as f32).collect();
            c.all_reduce(&mut buf, ReduceOp::Sum).unwrap();
            c.broadcast(&mut buf, 0).unwrap();
            assert!(buf.iter().enumerate().all(|(i, v)| *v == (i % 97) as f32));
        }
        c.barrier().unwrap();
    }
}
