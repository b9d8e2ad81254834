//! [`NcclBuckets`]: gradient averaging on the GPU. NCCL all-reduces buckets of CUDA tensors in
//! place, so gradients never leave the device (the host path, [`super::HostRing`], copies them to
//! the CPU ring).
//!
//! Per step: gradients are flattened into ~[`super::BUCKET_BYTES`] buckets on the device (one
//! `cat` each); each bucket's all-reduce is enqueued on torch's stream right after its `cat`, and
//! the averaged values are copied back into the gradients by kernels queued behind it, so the CPU
//! never waits between buckets. The batch loss rides in the last bucket. One bounded wait per step
//! ([`Nccl::synchronize`]) comes before the loss is read: a dead peer becomes an error at the
//! collective deadline instead of a hang inside a device copy.

use tch::{Kind, Tensor};

use super::comm::CommThread;
use super::GradAverage;
use crate::collective::nccl::Nccl;
use crate::collective::{Collective, ReduceOp};
use crate::error::Result;

#[derive(Debug)]
pub struct NcclBuckets {
    nccl: Box<Nccl>,
    /// The ring that handed out rank 0's `ncclUniqueId`: idle, kept open for the group's life.
    _bootstrap: CommThread,
    bucket_elems: usize,
    /// All-reduce seconds and bytes (`--metrics-addr`): per step, from the first bucket's enqueue
    /// to the end of the synchronising wait (an upper bound, as on the host path).
    metrics: std::sync::OnceLock<crate::metrics::CommMetrics>,
}

impl NcclBuckets {
    pub fn new(nccl: Nccl, bootstrap: CommThread, bucket_elems: usize) -> NcclBuckets {
        NcclBuckets {
            nccl: Box::new(nccl),
            _bootstrap: bootstrap,
            bucket_elems: bucket_elems.max(1),
            metrics: Default::default(),
        }
    }

    /// Smaller buckets (tests use this to exercise several buckets on a small model).
    pub fn with_bucket_elems(mut self, elems: usize) -> NcclBuckets {
        self.bucket_elems = elems.max(1);
        self
    }
}

impl GradAverage for NcclBuckets {
    fn rank(&self) -> usize {
        self.nccl.rank()
    }

    fn world_size(&self) -> usize {
        self.nccl.world_size()
    }

    fn backend(&self) -> &'static str {
        "nccl"
    }

    fn set_metrics(&self, m: crate::metrics::CommMetrics) {
        let _ = self.metrics.set(m);
    }

    /// Rank 0's float variables into every rank's model, through one device buffer.
    fn broadcast(&mut self, vars: &[Tensor]) -> Result<()> {
        if vars.is_empty() {
            return Ok(());
        }
        let flat = Tensor::cat(&vars.iter().map(|t| t.detach().reshape([-1])).collect::<Vec<_>>(), 0);
        self.nccl.broadcast_tensor(&flat, 0)?;
        tch::no_grad(|| {
            let mut off = 0i64;
            for t in vars {
                let n = t.numel() as i64;
                t.shallow_clone().copy_(&flat.narrow(0, off, n).view(t.size().as_slice()));
                off += n;
            }
        });
        Ok(())
    }

    /// Sums host values over the ranks (metrics).
    fn sum(&mut self, values: &mut [f64]) -> Result<()> {
        let mut buf: Vec<f32> = values.iter().map(|&v| v as f32).collect();
        self.nccl.all_reduce(&mut buf, ReduceOp::Sum)?;
        values.iter_mut().zip(&buf).for_each(|(v, &s)| *v = f64::from(s));
        Ok(())
    }

    /// Gradients averaged by NCCL bucket by bucket; one bounded wait at the end.
    fn average(&mut self, params: &[Tensor], loss: &Tensor) -> Result<f64> {
        let buckets = super::bucket_plan(params.iter().map(Tensor::numel), self.bucket_elems);
        let last = buckets.len() - 1;
        // kept alive until the stream is synchronised: NCCL works on them asynchronously
        let mut flats = Vec::with_capacity(buckets.len());
        let started = std::time::Instant::now();
        tch::no_grad(|| -> Result<()> {
            for (k, members) in buckets.iter().enumerate() {
                let mut parts: Vec<Tensor> = members
                    .iter()
                    .map(|&i| {
                        let g = params[i].grad();
                        if g.defined() {
                            g.reshape([-1]).to_kind(Kind::Float)
                        } else {
                            Tensor::zeros([params[i].numel() as i64], (Kind::Float, params[i].device()))
                        }
                    })
                    .collect();
                if k == last {
                    parts.push(loss.detach().to_kind(Kind::Float).reshape([1]));
                }
                let flat = Tensor::cat(&parts, 0);
                self.nccl.enqueue_all_reduce(&flat, ReduceOp::Average)?;
                let mut off = 0i64;
                for &i in members {
                    let g = params[i].grad();
                    let n = params[i].numel() as i64;
                    if g.defined() {
                        g.shallow_clone().copy_(&flat.narrow(0, off, n).view(g.size().as_slice()));
                    }
                    off += n;
                }
                flats.push(flat);
            }
            Ok(())
        })?;
        self.nccl.synchronize()?;
        if let Some(m) = self.metrics.get() {
            let elems: i64 = flats.iter().map(Tensor::numel).sum::<usize>() as i64;
            m.record(started.elapsed(), 4 * elems as u64);
        }
        let Some(tail) = flats.last() else { return Ok(f64::NAN) };
        Ok(tail.double_value(&[tail.numel() as i64 - 1]))
    }
}
