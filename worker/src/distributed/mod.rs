//! Data-parallel training: [`GradSync`], which the learner calls between `backward` and the
//! optimiser step when it is one rank of a group, and the rank's data [`sampler`].
//!
//! Per step: forward and backward on this rank's batch; gradients of the trainable parameters are
//! flattened, in the model's (name-sorted) parameter order, into buckets of about
//! [`BUCKET_BYTES`]; bucket `k` is all-reduced (averaged) on the communication thread while bucket
//! `k+1` is being flattened; the batch loss rides in the last bucket, so the loss every rank
//! reports is the group's mean at no extra round trip. Averaged gradients are copied back and each
//! rank takes the same optimiser step, so replicas stay identical. At start, [`GradSync::broadcast_model`]
//! copies rank 0's parameters and buffers to every rank. BatchNorm statistics stay per replica.

pub mod bench;
mod comm;
mod device;
mod group;
pub mod sampler;

use std::time::Duration;

use tch::{Device, Kind, Tensor};

pub use comm::{CommThread, Op};
pub use device::DeviceSync;
pub use group::{Backend, GroupSpec};

use crate::collective::{Collective, ReduceOp};
use crate::error::Result;
use crate::models::Net;
use crate::optim::Optimizer;

/// Target size of one gradient bucket (as PyTorch DDP's default).
pub const BUCKET_BYTES: usize = 25 << 20;

/// The data-parallel side of a learner: one rank's link to its group.
#[derive(Debug)]
pub struct GradSync {
    comm: CommThread,
    bucket_elems: usize,
    /// Recycled bucket buffers: a warm step allocates no buckets.
    pool: Vec<Vec<f32>>,
    /// NCCL on CUDA tensors: when set, steps, broadcasts and sums go through it and `comm`
    /// (the bootstrap ring) stays idle.
    device: Option<DeviceSync>,
}

/// Which parameters a queued bucket holds: `(index into the parameter list, offset, length)`.
type Slots = Vec<(usize, usize, usize)>;

impl GradSync {
    /// A rank of the group `c`, every collective call bounded by `timeout`.
    pub fn new(c: Box<dyn Collective>, timeout: Duration) -> Result<GradSync> {
        Ok(GradSync {
            comm: CommThread::spawn(c, timeout)?,
            bucket_elems: BUCKET_BYTES / 4,
            pool: vec![],
            device: None,
        })
    }

    /// Gradients reduced on the GPU by `nccl` (same ranks as the bootstrap collective `c`).
    pub fn with_nccl(
        c: Box<dyn Collective>,
        nccl: crate::collective::nccl::Nccl,
        timeout: Duration,
    ) -> Result<GradSync> {
        let mut s = GradSync::new(c, timeout)?;
        s.device = Some(DeviceSync::new(nccl, s.bucket_elems));
        Ok(s)
    }

    /// Smaller buckets (tests use this to exercise several buckets on a small model).
    pub fn with_bucket_elems(mut self, elems: usize) -> GradSync {
        self.bucket_elems = elems.max(1);
        if let Some(d) = &mut self.device {
            d.set_bucket_elems(elems);
        }
        self
    }

    /// Which transport reduces the gradients ("nccl" or "ring"), for logs and results.
    pub fn backend(&self) -> &'static str {
        if self.device.is_some() {
            "nccl"
        } else {
            "ring"
        }
    }

    pub fn rank(&self) -> usize {
        self.comm.rank()
    }

    /// Record all-reduce seconds and bytes into `m` (`--metrics-addr`).
    pub fn set_metrics(&self, m: crate::metrics::CommMetrics) {
        if let Some(d) = &self.device {
            d.set_metrics(m.clone());
        }
        self.comm.set_metrics(m);
    }

    pub fn world_size(&self) -> usize {
        self.comm.world_size()
    }

    fn buffer(&mut self) -> Vec<f32> {
        let mut b = self.pool.pop().unwrap_or_default();
        b.clear();
        b
    }

    /// Copies rank 0's float variables (parameters and BatchNorm buffers) into every rank's model.
    pub fn broadcast_model(&mut self, net: &Net) -> Result<()> {
        let vars: Vec<Tensor> =
            net.named_groups().into_iter().map(|(_, _, t)| t).filter(|t| t.kind() == Kind::Float).collect();
        if let Some(d) = &mut self.device {
            return d.broadcast_model(&vars);
        }
        let mut buf = self.buffer();
        for t in &vars {
            append(&mut buf, Some(t), t.numel());
        }
        let buf = self.comm.run(buf, Op::Broadcast { root: 0 })?;
        tch::no_grad(|| write_back(&buf, &vars));
        self.pool.push(buf);
        Ok(())
    }

    /// Sums `values` over the ranks (metrics: loss sums, correct counts, item counts).
    pub fn sum(&mut self, values: &mut [f64]) -> Result<()> {
        let mut buf = self.buffer();
        buf.extend(values.iter().map(|&v| v as f32));
        let buf = match &mut self.device {
            Some(d) => {
                d.sum(&mut buf)?;
                buf
            }
            None => self.comm.run(buf, Op::Reduce(ReduceOp::Sum))?,
        };
        values.iter_mut().zip(&buf).for_each(|(v, &s)| *v = f64::from(s));
        self.pool.push(buf);
        Ok(())
    }

    /// One data-parallel training step: forward and backward on this rank's batch, gradients
    /// averaged over the group in buckets, one optimiser update. Returns the group's mean loss.
    pub fn train_step(
        &mut self,
        net: &Net,
        opt: &mut Optimizer,
        x: &Tensor,
        y: &Tensor,
        lrs: &[f64],
    ) -> Result<f64> {
        if let Some(d) = &mut self.device {
            return d.train_step(net, opt, x, y, lrs);
        }
        let (loss, params) = backward(net, opt, x, y);
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
        opt.step(lrs);
        Ok(mean_loss)
    }
}

/// Parameter indices grouped into consecutive buckets of at most `bucket_elems` elements (a
/// tensor larger than that gets a bucket of its own); at least one bucket, possibly empty. Both
/// the host and the NCCL paths reduce in this order, bucket `k` while `k+1` is being flattened.
pub(crate) fn bucket_plan(sizes: impl Iterator<Item = usize>, bucket_elems: usize) -> Vec<Vec<usize>> {
    let mut buckets: Vec<Vec<usize>> = vec![vec![]];
    let mut filled = 0usize;
    for (i, n) in sizes.enumerate() {
        if filled > 0 && filled + n > bucket_elems {
            buckets.push(vec![]);
            filled = 0;
        }
        buckets.last_mut().expect("one bucket at least").push(i);
        filled += n;
    }
    buckets
}

/// Appends the `n` values of `t`, or `n` zeros for an undefined gradient.
fn append(buf: &mut Vec<f32>, t: Option<&Tensor>, n: usize) {
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

impl crate::learner::Learner {
    /// This rank's training batches of epoch `epoch` ([`sampler::rank_positions`]), augmented
    /// when the stage augments, with the same per-item augmentation seeds as a single process.
    pub(crate) fn rank_loader(&self, epoch: u64) -> crate::data::Loader {
        let (rank, world) = self.grad_sync.as_ref().map_or((0, 1), |s| (s.rank(), s.world_size()));
        let batch = self.data.batch_size;
        let positions = sampler::rank_positions(self.data.train.len(), self.seed, epoch, rank, world, batch);
        let shard = self.data.train.subset(&positions);
        let augment = self.augmenter.as_ref().filter(|_| self.augment_train);
        self.loader_with(&shard, false, epoch, batch, augment)
    }
}

/// The part of a data-parallel step before gradients are averaged: forward and backward on this
/// rank's batch. Returns the loss and the trainable parameters (their gradients now set), in the
/// order the bucket plan follows.
fn backward(net: &Net, opt: &mut Optimizer, x: &Tensor, y: &Tensor) -> (Tensor, Vec<Tensor>) {
    let loss = net.forward_t(x, true).cross_entropy_for_logits(y);
    opt.zero_grad();
    loss.backward();
    let params = net.parameters().into_iter().map(|(_, _, t)| t).filter(Tensor::requires_grad).collect();
    (loss, params)
}

#[cfg(test)]
mod tests {
    use std::net::TcpListener;

    use cyclotron_core::spec::OptimizerSpec;

    use super::*;
    use crate::collective::{Ring, RingConfig};
    use crate::models::{self, GROUPS};

    /// The global torch RNG is shared by the rank threads: seed and build under a lock.
    static INIT: std::sync::Mutex<()> = std::sync::Mutex::new(());

    fn net_and_opt() -> (Net, Optimizer) {
        let _guard = INIT.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        tch::manual_seed(11);
        let net = models::build("small_cnn", 4, 1, 3, Device::Cpu).unwrap();
        let opt = Optimizer::new(&OptimizerSpec::default(), net.parameters());
        (net, opt)
    }

    fn params(net: &Net) -> Vec<f32> {
        let mut buf = vec![];
        for (_, _, t) in net.parameters() {
            append(&mut buf, Some(&t), t.numel());
        }
        buf
    }

    #[test]
    fn two_ranks_in_small_buckets_step_like_one_process_with_both_batches() {
        tch::manual_seed(5);
        let x = Tensor::randn([8, 1, 12, 12], (Kind::Float, Device::Cpu));
        let y = Tensor::randint(3, [8], (Kind::Int64, Device::Cpu));
        let lrs = [0.1; GROUPS];
        let (net, mut opt) = net_and_opt();
        let mut losses = vec![];
        for _ in 0..3 {
            losses.push(crate::learner::train_step(&net, &mut opt, &x, &y, &lrs));
        }
        let want = params(&net);

        let ls: Vec<TcpListener> = (0..2).map(|_| TcpListener::bind("127.0.0.1:0").unwrap()).collect();
        let peers: Vec<String> = ls.iter().map(|l| l.local_addr().unwrap().to_string()).collect();
        let handles: Vec<_> = ls
            .into_iter()
            .enumerate()
            .map(|(rank, l)| {
                let cfg =
                    RingConfig { timeout: Duration::from_secs(20), ..RingConfig::new(rank, peers.clone()) };
                let (x, y) = (x.narrow(0, 4 * rank as i64, 4), y.narrow(0, 4 * rank as i64, 4));
                std::thread::spawn(move || {
                    let ring = Ring::connect_with(l, cfg).unwrap();
                    // 40 elements per bucket: the small CNN's gradients span many buckets
                    let mut sync =
                        GradSync::new(Box::new(ring), Duration::from_secs(20)).unwrap().with_bucket_elems(40);
                    let (net, mut opt) = net_and_opt();
                    if rank == 1 {
                        // different weights on rank 1: the broadcast must replace them
                        tch::no_grad(|| {
                            net.parameters().iter().for_each(|(_, _, t)| drop(t.shallow_clone().fill_(0.5)))
                        });
                    }
                    sync.broadcast_model(&net).unwrap();
                    let losses: Vec<f64> =
                        (0..3).map(|_| sync.train_step(&net, &mut opt, &x, &y, &lrs).unwrap()).collect();
                    (params(&net), losses)
                })
            })
            .collect();
        for h in handles {
            let (got, got_losses) = h.join().unwrap();
            let worst = got.iter().zip(&want).map(|(a, b)| (a - b).abs()).fold(0f32, f32::max);
            assert!(worst < 1e-5, "parameters differ by {worst}");
            for (a, b) in got_losses.iter().zip(&losses) {
                assert!((a - b).abs() < 1e-5, "loss {a} vs {b}");
            }
        }
    }

    /// On a CUDA machine built with `nccl`: the NCCL path of [`GradSync`] (device buckets, loss in
    /// the last bucket, copy-back, broadcast) trains exactly like one plain process; elsewhere it
    /// says why it skips.
    #[test]
    fn nccl_grad_sync_steps_like_one_process_on_cuda_or_skips() {
        if !cfg!(feature = "nccl") || !tch::Cuda::is_available() {
            eprintln!("skipping the NCCL training step: needs the `nccl` feature and a CUDA device");
            return;
        }
        let dev = Device::Cuda(0);
        let build = || {
            let _guard = INIT.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
            tch::manual_seed(11);
            let net = models::build("small_cnn", 4, 1, 3, dev).unwrap();
            let opt = Optimizer::new(&OptimizerSpec::default(), net.parameters());
            (net, opt)
        };
        tch::manual_seed(5);
        let x = Tensor::randn([8, 1, 12, 12], (Kind::Float, dev));
        let y = Tensor::randint(3, [8], (Kind::Int64, dev));
        let lrs = [0.1; GROUPS];
        let (net, mut opt) = build();
        let want: Vec<f64> =
            (0..3).map(|_| crate::learner::train_step(&net, &mut opt, &x, &y, &lrs)).collect();
        let want_params = params(&net);

        let g = GroupSpec { backend: Backend::Nccl, ..GroupSpec::new(0, 1, vec![]) };
        let mut sync = g.join(dev).expect("NCCL group of one").with_bucket_elems(40);
        assert_eq!(sync.backend(), "nccl");
        let (net, mut opt) = build();
        sync.broadcast_model(&net).unwrap();
        let got: Vec<f64> = (0..3).map(|_| sync.train_step(&net, &mut opt, &x, &y, &lrs).unwrap()).collect();
        let mut sums = [1.5, 2.0];
        sync.sum(&mut sums).unwrap();
        assert_eq!(sums, [1.5, 2.0]);
        for (a, b) in got.iter().zip(&want) {
            assert!((a - b).abs() < 1e-5, "loss {a} vs {b}");
        }
        let worst = params(&net).iter().zip(&want_params).map(|(a, b)| (a - b).abs()).fold(0f32, f32::max);
        assert!(worst < 1e-5, "parameters differ by {worst}");
    }
}
