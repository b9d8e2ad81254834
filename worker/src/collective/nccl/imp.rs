//! The NCCL communicator itself (feature `nccl`): construction behind library probes, tensor
//! collectives by device pointer, stream polling against the deadline. See `nccl.rs`.
#![allow(unsafe_code)]

use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use cudarc::driver::sys as cu;
use cudarc::nccl::sys as nc;
use tch::{Device, Kind, Tensor};

use super::UniqueId;
use crate::collective::{Collective, CollectiveError, ReduceOp, Result, DEFAULT_TIMEOUT};

fn probe() -> Result<()> {
    // SAFETY: both probes only try to dlopen the library and drop the handle.
    let (driver, nccl) = unsafe { (cu::is_culib_present(), nc::is_culib_present()) };
    if !driver {
        return Err(CollectiveError::NcclUnavailable {
            message: "the CUDA driver (libcuda) cannot be loaded".into(),
        });
    }
    if !nccl {
        return Err(CollectiveError::NcclUnavailable {
            message: "libnccl cannot be loaded: cudarc looks for libnccl.so (or libnccl.so.13); the PyTorch \
                      wheel ships site-packages/nvidia/nccl/lib/libnccl.so.2, so link libnccl.so to it in a folder \
                      on LD_LIBRARY_PATH (scripts/setup.sh does this in its venv)"
                .into(),
        });
    }
    Ok(())
}

fn check(op: &'static str, r: nc::ncclResult_t) -> Result<()> {
    match r {
        nc::ncclResult_t::ncclSuccess | nc::ncclResult_t::ncclInProgress => Ok(()),
        other => Err(CollectiveError::Nccl { op, message: format!("{other:?}") }),
    }
}

/// One rank of an NCCL communicator on one CUDA device.
pub struct Nccl {
    comm: nc::ncclComm_t,
    rank: usize,
    world: usize,
    device: usize,
    timeout: Duration,
    aborted: AtomicBool,
}

// SAFETY: an ncclComm_t may be used from any thread as long as calls are not concurrent;
// `&mut self` on every call guarantees that.
unsafe impl Send for Nccl {}

impl std::fmt::Debug for Nccl {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Nccl").field("rank", &self.rank).field("world", &self.world).finish()
    }
}

impl Nccl {
    /// A fresh id, on rank 0.
    pub fn unique_id() -> Result<UniqueId> {
        probe()?;
        let id = cudarc::nccl::result::get_uniqueid()
            .map_err(|e| CollectiveError::Nccl { op: "get_unique_id", message: format!("{e:?}") })?;
        Ok(UniqueId(id.internal.map(|c| c as u8)))
    }

    /// Joins the communicator `id` as `rank` of `world`, on CUDA device `device`.
    pub fn new(rank: usize, world: usize, id: &UniqueId, device: usize) -> Result<Nccl> {
        probe()?;
        // make the device current on this thread (NCCL reads it), through torch's own context
        let _ = Tensor::zeros([1], (Kind::Float, Device::Cuda(device)));
        let ctx = cudarc::driver::CudaContext::new(device).map_err(|e| CollectiveError::NcclUnavailable {
            message: format!("CUDA device {device}: {e:?}"),
        })?;
        ctx.bind_to_thread().map_err(|e| CollectiveError::NcclUnavailable { message: format!("{e:?}") })?;
        let uid = nc::ncclUniqueId { internal: id.0.map(|b| b as std::ffi::c_char) };
        let mut comm: nc::ncclComm_t = std::ptr::null_mut();
        // SAFETY: `comm` is a valid out-pointer; the id is plain bytes.
        let r = unsafe { nc::ncclCommInitRank(&mut comm, world as i32, uid, rank as i32) };
        if r == nc::ncclResult_t::ncclInvalidUsage {
            return Err(CollectiveError::Nccl {
                op: "comm_init_rank",
                message: format!(
                    "{r:?} on cuda:{device}: NCCL needs a distinct GPU per rank (two ranks on one GPU?); \
                     give each worker its own GPU (CUDA_VISIBLE_DEVICES) or set CYCLOTRON_COLLECTIVE=ring"
                ),
            });
        }
        check("comm_init_rank", r)?;
        Ok(Nccl { comm, rank, world, device, timeout: DEFAULT_TIMEOUT, aborted: AtomicBool::new(false) })
    }

    /// Waits for the default stream, aborting the communicator past the deadline.
    fn wait(&mut self, op: &'static str) -> Result<()> {
        let deadline = Instant::now() + self.timeout;
        loop {
            // SAFETY: the null stream is the legacy default stream of the current context.
            match unsafe { cu::cuStreamQuery(std::ptr::null_mut()) } {
                cu::CUresult::CUDA_SUCCESS => return Ok(()),
                cu::CUresult::CUDA_ERROR_NOT_READY => {}
                other => return Err(CollectiveError::Nccl { op, message: format!("{other:?}") }),
            }
            let mut async_err = nc::ncclResult_t::ncclSuccess;
            // SAFETY: a live communicator and a valid out-pointer.
            unsafe { nc::ncclCommGetAsyncError(self.comm, &mut async_err) };
            if !matches!(async_err, nc::ncclResult_t::ncclSuccess | nc::ncclResult_t::ncclInProgress) {
                self.abort();
                return Err(CollectiveError::PeerLost {
                    rank: self.rank,
                    op,
                    peer: usize::MAX,
                    message: format!("{async_err:?}"),
                });
            }
            if Instant::now() >= deadline {
                self.abort();
                return Err(CollectiveError::Timeout {
                    rank: self.rank,
                    op,
                    peer: usize::MAX,
                    after: self.timeout,
                });
            }
            std::thread::sleep(Duration::from_micros(50));
        }
    }

    fn ready(&self, t: &Tensor) -> Result<()> {
        if self.aborted.load(Ordering::Relaxed) {
            return Err(CollectiveError::Aborted { rank: self.rank });
        }
        if t.device() != Device::Cuda(self.device) || t.kind() != Kind::Float || !t.is_contiguous() {
            return Err(CollectiveError::Config {
                message: format!(
                    "NCCL needs a contiguous f32 tensor on cuda:{}, got {:?} {:?}",
                    self.device,
                    t.kind(),
                    t.device()
                ),
            });
        }
        Ok(())
    }

    /// In-place all-reduce of a contiguous f32 tensor on this rank's device.
    pub fn all_reduce_tensor(&mut self, t: &Tensor, op: ReduceOp) -> Result<()> {
        self.enqueue_all_reduce(t, op)?;
        self.wait("all_reduce")
    }

    /// Enqueues an in-place all-reduce on the stream torch computes on and returns at once:
    /// later kernels on that stream (copying the result back, the optimiser step) run after it.
    /// The caller must keep `t` alive until [`Nccl::synchronize`] returns.
    pub fn enqueue_all_reduce(&mut self, t: &Tensor, op: ReduceOp) -> Result<()> {
        self.ready(t)?;
        let red = match op {
            ReduceOp::Sum => nc::ncclRedOp_t::ncclSum,
            ReduceOp::Average => nc::ncclRedOp_t::ncclAvg,
        };
        let ptr = t.data_ptr();
        // SAFETY: `ptr` addresses `numel` f32 on this communicator's device (checked above); the
        // caller keeps the tensor alive until `synchronize`.
        let r = unsafe {
            nc::ncclAllReduce(
                ptr,
                ptr,
                t.numel(),
                nc::ncclDataType_t::ncclFloat32,
                red,
                self.comm,
                std::ptr::null_mut(),
            )
        };
        check("all_reduce", r)
    }

    /// Waits, up to the deadline, for everything enqueued on the stream; a peer lost or a
    /// deadline passed aborts the communicator and fails.
    pub fn synchronize(&mut self) -> Result<()> {
        self.wait("synchronize")
    }

    /// In-place broadcast of a contiguous f32 tensor from `root`.
    pub fn broadcast_tensor(&mut self, t: &Tensor, root: usize) -> Result<()> {
        self.ready(t)?;
        let ptr = t.data_ptr();
        // SAFETY: as in `all_reduce_tensor`.
        let r = unsafe {
            nc::ncclBroadcast(
                ptr,
                ptr,
                t.numel(),
                nc::ncclDataType_t::ncclFloat32,
                root as i32,
                self.comm,
                std::ptr::null_mut(),
            )
        };
        check("broadcast", r)?;
        self.wait("broadcast")
    }

    /// Host buffers go through a device copy (the trait's contract); training uses the tensor calls.
    fn via_device(
        &mut self,
        buf: &mut [f32],
        f: impl FnOnce(&mut Self, &Tensor) -> Result<()>,
    ) -> Result<()> {
        if buf.is_empty() {
            return f(self, &Tensor::zeros([0], (Kind::Float, Device::Cuda(self.device))));
        }
        let t = Tensor::from_slice(buf).to_device(Device::Cuda(self.device));
        f(self, &t)?;
        t.to_device(Device::Cpu).copy_data(buf, buf.len());
        Ok(())
    }
}

impl Collective for Nccl {
    fn rank(&self) -> usize {
        self.rank
    }
    fn world_size(&self) -> usize {
        self.world
    }
    fn all_reduce(&mut self, buf: &mut [f32], op: ReduceOp) -> Result<()> {
        self.via_device(buf, |s, t| s.all_reduce_tensor(t, op))
    }
    fn broadcast(&mut self, buf: &mut [f32], root: usize) -> Result<()> {
        self.via_device(buf, |s, t| s.broadcast_tensor(t, root))
    }
    fn barrier(&mut self) -> Result<()> {
        let mut one = [1.0f32];
        self.all_reduce(&mut one, ReduceOp::Sum)
    }
    fn abort(&self) {
        if !self.aborted.swap(true, Ordering::Relaxed) {
            // SAFETY: a live communicator; abort is the documented way to unblock it.
            unsafe { nc::ncclCommAbort(self.comm) };
        }
    }
    fn set_timeout(&mut self, timeout: Duration) {
        self.timeout = timeout;
    }
}

impl Drop for Nccl {
    fn drop(&mut self) {
        if !self.aborted.load(Ordering::Relaxed) {
            // SAFETY: a live communicator, destroyed once.
            unsafe { nc::ncclCommDestroy(self.comm) };
        }
    }
}
