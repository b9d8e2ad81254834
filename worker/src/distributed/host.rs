//! [`HostRing`]: gradients averaged through the host collective (the TCP ring, or [`Local`] for a
//! group of one) on its communication thread.
//!
//! Per step: the gradients are flattened into `f32` buckets of about [`super::BUCKET_BYTES`] in
//! the parameters' order; bucket `k` is queued on the communication thread (averaged there)
//! while bucket `k+1` is being flattened; the loss rides in the last bucket; the averaged values
//! are copied back into the gradients. Buckets are recycled, so a warm step allocates none.
//!
//! [`Local`]: crate::collective::Local

use std::time::Duration;

use tch::{Device, Kind, Tensor};

use super::comm::{CommThread, Op};
use super::{bucket_plan, GradAverage, BUCKET_BYTES};
use crate::collective::{Collective, ReduceOp};
use crate::error::Result;

#[derive(Debug)]
pub struct HostRing {
    comm: CommThread,
    bucket_elems: usize,
    /// Recycled bucket buffers.
    pool: Vec<Vec<f32>>,
}

/// Which parameters a queued bucket holds: `(index into the parameter list, offset, length)`.
type Slots = Vec<(usize, usize, usize)>;

impl HostRing {
    /// A rank of the group `c`, every collective call bounded by `timeout`.
    pub fn new(c: Box<dyn Collective>, timeout: Duration) -> Result<HostRing> {
        Ok(HostRing { comm: CommThread::spawn(c, timeout)?, bucket_elems: BUCKET_BYTES / 4, pool: vec![] })
    }

    /// Smaller buckets (tests use this to exercise several buckets on a small model).
    pub fn with_bucket_elems(mut self, elems: usize) -> HostRing {
        self.bucket_elems = elems.max(1);
        self
    }

    fn buffer(&mut self) -> Vec<f32> {
        let mut b = self.pool.pop().unwrap_or_default();
        b.clear();
        b
    }
}

impl GradAverage for HostRing {
    fn rank(&self) -> usize {
        self.comm.rank()
    }

    fn world_size(&self) -> usize {
        self.comm.world_size()
    }

    fn backend(&self) -> &'static str {
        "ring"
    }

    fn set_metrics(&self, m: crate::metrics::CommMetrics) {
        self.comm.set_metrics(m);
    }

    fn broadcast(&mut self, vars: &[Tensor]) -> Result<()> {
        let mut buf = self.buffer();
        for t in vars {
            append(&mut buf, Some(t), t.numel());
        }
        let buf = self.comm.run(buf, Op::Broadcast { root: 0 })?;
        tch::no_grad(|| write_back(&buf, vars));
        self.pool.push(buf);
        Ok(())
    }

    fn sum(&mut self, values: &mut [f64]) -> Result<()> {
        let mut buf = self.buffer();
        buf.extend(values.iter().map(|&v| v as f32));
        let buf = self.comm.run(buf, Op::Reduce(ReduceOp::Sum))?;
        values.iter_mut().zip(&buf).for_each(|(v, &s)| *v = f64::from(s));
        self.pool.push(buf);
        Ok(())
    }

    fn average(&mut self, params: &[Tensor], loss: &Tensor) -> Result<f64> {
        let grads: Vec<Tensor> = params.iter().map(Tensor::grad).collect();
        let plan = bucket_plan(params.iter().map(Tensor::numel), self.bucket_elems);
        let mut queued: Vec<Slots> = Vec::with_capacity(plan.len());
        for (k, members) in plan.iter().enumerate() {
            let mut bucket = self.buffer();
            let mut slots: Slots = Vec::with_capacity(members.len());
            for &i in members {
                let n = params[i].numel();
                slots.push((i, bucket.len(), n));
                append(&mut bucket, grads[i].defined().then_some(&grads[i]), n);
            }
            if k + 1 == plan.len() {
                bucket.push(loss.double_value(&[]) as f32);
            }
            self.comm.submit(bucket, Op::Reduce(ReduceOp::Average))?;
            queued.push(slots);
        }
        let mut mean_loss = f64::NAN;
        for (k, slots) in queued.iter().enumerate() {
            let buf = self.comm.wait()?;
            tch::no_grad(|| {
                let flat = Tensor::from_slice(&buf);
                for &(i, off, n) in slots {
                    if grads[i].defined() {
                        let mut g = grads[i].shallow_clone();
                        g.copy_(&flat.narrow(0, off as i64, n as i64).view(g.size().as_slice()));
                    }
                }
            });
            if k + 1 == queued.len() {
                mean_loss = buf.last().map_or(f64::NAN, |&l| f64::from(l));
            }
            self.pool.push(buf);
        }
        Ok(mean_loss)
    }
}

/// Appends the `n` values of `t`, or `n` zeros for an undefined gradient.
pub(crate) fn append(buf: &mut Vec<f32>, t: Option<&Tensor>, n: usize) {
    let Some(t) = t else {
        buf.resize(buf.len() + n, 0.0);
        return;
    };
    let t = if t.device() == Device::Cpu { t.contiguous() } else { t.to_device(Device::Cpu).contiguous() };
    let t = if t.kind() == Kind::Float { t } else { t.to_kind(Kind::Float) };
    let start = buf.len();
    buf.resize(start + n, 0.0);
    t.detach().copy_data(&mut buf[start..], n);
}

/// Copies consecutive runs of `buf` back into `dsts` (each as long as its tensor).
fn write_back(buf: &[f32], dsts: &[Tensor]) {
    let flat = Tensor::from_slice(buf);
    let mut off = 0i64;
    for t in dsts {
        let n = t.numel() as i64;
        let mut t = t.shallow_clone();
        t.copy_(&flat.narrow(0, off, n).view(t.size().as_slice()));
        off += n;
    }
}
