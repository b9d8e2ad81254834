//! Data-parallel training: averaging gradients over a group of ranks, behind one trait,
//! [`GradAverage`], that knows nothing of the learner: it takes the trainable parameters (their
//! gradients set by `backward`) and the batch loss, and returns when every rank holds the group's
//! mean gradients, with the group's mean loss. Implementations: [`Alone`] (a world of one, outside
//! any group), [`HostRing`] (gradients through the host collective: the TCP ring) and, with the
//! `nccl` feature on CUDA, [`NcclBuckets`] (gradients reduced on the device).
//!
//! Both group paths flatten gradients, in the model's (name-sorted) parameter order, into buckets
//! of about [`BUCKET_BYTES`]; bucket `k` is reduced while bucket `k+1` is being flattened; the
//! batch loss rides in the last bucket, so the loss every rank reports is the group's mean at no
//! extra round trip. Each rank then takes the same optimiser step, so replicas stay identical. At
//! start, [`GradAverage::broadcast`] copies rank 0's parameters and buffers to every rank.
//! BatchNorm statistics stay per replica.

pub mod bench;
mod comm;
mod device;
mod group;
mod host;

use tch::Tensor;

pub use comm::{CommThread, Op};
pub use device::NcclBuckets;
pub use group::{Backend, GroupSpec};
pub use host::HostRing;

use crate::error::Result;

/// Target size of one gradient bucket (as PyTorch DDP's default).
pub const BUCKET_BYTES: usize = 25 << 20;

/// Gradient averaging over this process's data-parallel group.
pub trait GradAverage {
    fn rank(&self) -> usize;

    fn world_size(&self) -> usize;

    /// Which transport reduces the gradients ("alone", "ring" or "nccl"), for logs and results.
    fn backend(&self) -> &'static str;

    /// Copies rank 0's values of `vars` into every rank's (float parameters and buffers).
    fn broadcast(&mut self, vars: &[Tensor]) -> Result<()>;

    /// Replaces the gradients of `params` (every trainable parameter, in the model's order; an
    /// undefined gradient counts as zeros) by their mean over the group, and returns the group's
    /// mean of `loss`.
    fn average(&mut self, params: &[Tensor], loss: &Tensor) -> Result<f64>;

    /// Sums `values` over the ranks (metrics: loss sums, correct counts, item counts).
    fn sum(&mut self, values: &mut [f64]) -> Result<()>;

    /// Record all-reduce seconds and bytes into `m` (`--metrics-addr`).
    fn set_metrics(&self, _m: crate::metrics::CommMetrics) {}
}

/// A process training alone: nothing to average.
#[derive(Debug, Default)]
pub struct Alone;

impl GradAverage for Alone {
    fn rank(&self) -> usize {
        0
    }

    fn world_size(&self) -> usize {
        1
    }

    fn backend(&self) -> &'static str {
        "alone"
    }

    fn broadcast(&mut self, _: &[Tensor]) -> Result<()> {
        Ok(())
    }

    fn average(&mut self, _: &[Tensor], loss: &Tensor) -> Result<f64> {
        Ok(loss.double_value(&[]))
    }

    fn sum(&mut self, _: &mut [f64]) -> Result<()> {
        Ok(())
    }
}

/// Parameter indices grouped into consecutive buckets of at most `bucket_elems` elements (a
/// tensor larger than that gets a bucket of its own); at least one bucket, possibly empty. Both
/// the host and the NCCL paths reduce in this order, bucket `k` while `k+1` is being flattened.
pub(crate) fn bucket_plan(sizes: impl Iterator<Item = usize>, bucket_elems: usize) -> Vec<Vec<usize>> {
    let mut buckets: Vec<Vec<usize>> = vec![];
    let mut current: Vec<usize> = vec![];
    let mut filled = 0usize;
    for (i, n) in sizes.enumerate() {
        if filled > 0 && filled + n > bucket_elems {
            buckets.push(std::mem::take(&mut current));
            filled = 0;
        }
        current.push(i);
        filled += n;
    }
    buckets.push(current);
    buckets
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use tch::{Device, Kind};

    use super::*;
    use crate::collective::ring::local_rings;
    use crate::learner::Learner;
    use crate::models::GROUPS;
    use crate::task::{Batch, Shard, Split};

    /// The global torch RNG is shared by the rank threads: seed and build under a lock.
    static INIT: std::sync::Mutex<()> = std::sync::Mutex::new(());

    fn learner(device: Device) -> Learner {
        let _guard = INIT.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        tch::manual_seed(11);
        let items = crate::metrics::synthetic(1, 1, 12, 0);
        crate::bench::bench_learner("small_cnn", 4, 3, (items, 1), device).unwrap()
    }

    fn params(l: &Learner) -> Vec<f32> {
        let mut buf = vec![];
        for (_, _, t) in l.model().parameters() {
            host::append(&mut buf, Some(&t), t.numel());
        }
        buf
    }

    #[test]
    fn buckets_cut_at_the_limit_and_keep_big_tensors_whole() {
        assert_eq!(bucket_plan([3, 3, 3].into_iter(), 6), vec![vec![0, 1], vec![2]]);
        assert_eq!(bucket_plan([10, 2, 2].into_iter(), 4), vec![vec![0], vec![1, 2]]);
        assert_eq!(bucket_plan(std::iter::empty(), 4), vec![Vec::<usize>::new()]);
    }

    #[test]
    fn two_ranks_in_small_buckets_step_like_one_process_with_both_batches() {
        tch::manual_seed(5);
        let x = Tensor::randn([8, 1, 12, 12], (Kind::Float, Device::Cpu));
        let y = Tensor::randint(3, [8], (Kind::Int64, Device::Cpu));
        let lrs = [0.1; GROUPS];
        let mut one = learner(Device::Cpu);
        let batch = Batch::of(x.shallow_clone(), y.shallow_clone());
        let losses: Vec<f64> = (0..3).map(|_| one.step(&batch, &lrs).unwrap()).collect();
        let want = params(&one);

        let handles: Vec<_> = local_rings(2)
            .into_iter()
            .enumerate()
            .map(|(rank, ring)| {
                let (x, y) = (x.narrow(0, 4 * rank as i64, 4), y.narrow(0, 4 * rank as i64, 4));
                std::thread::spawn(move || {
                    // 40 elements per bucket: the small CNN's gradients span many buckets
                    let grads =
                        HostRing::new(Box::new(ring), Duration::from_secs(20)).unwrap().with_bucket_elems(40);
                    let mut learner = learner(Device::Cpu);
                    if rank == 1 {
                        // different weights on rank 1: the broadcast must replace them
                        tch::no_grad(|| {
                            learner
                                .model()
                                .parameters()
                                .iter()
                                .for_each(|(_, _, t)| drop(t.shallow_clone().fill_(0.5)))
                        });
                    }
                    learner.join(Box::new(grads)).unwrap();
                    let batch = Batch::of(x, y);
                    let losses: Vec<f64> = (0..3).map(|_| learner.step(&batch, &lrs).unwrap()).collect();
                    (params(&learner), losses)
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

    /// An image learner whose validation split (40 items, evaluation batches of 16) has three
    /// batches, with flips and random shifts to draw TTA views from.
    fn image_learner() -> Learner {
        use cyclotron_core::spec::{OptimizerSpec, Transform};

        use crate::data::{Augmenter, Dataset};
        use crate::task::image::{ImageClassification, ImageData};
        let _guard = INIT.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        tch::manual_seed(3);
        let mut rng = crate::data::SplitMix64::new(9);
        let images: Vec<u8> = (0..40 * 64).map(|_| rng.below(256) as u8).collect();
        let labels: Vec<i64> = (0..40).map(|i| i % 3).collect();
        let ds = Dataset::new(images, (1, 8, 8), labels, vec!["a".into(), "b".into(), "c".into()]);
        let net = crate::models::build("small_resnet", 4, 1, 3, Device::Cpu).unwrap();
        let aug = std::sync::Arc::new(Augmenter::new(vec![Transform::FlipH, Transform::CropPad { pad: 2 }]));
        let task = ImageClassification::new(net, ImageData::new(ds.clone(), ds, 8, 2), 1, Some(aug));
        Learner::new(Box::new(task), &OptimizerSpec::default(), 1)
    }

    #[test]
    fn ranks_get_whole_batches_of_a_split_dealt_evenly_or_predict_it_whole() {
        let rows = |rank, world, items, batch| Shard { rank, world }.rows_of(items, batch);
        // 3 batches of 16 over 40 items: rank 0 one batch, rank 1 the other two (the last short)
        assert_eq!(rows(0, 2, 40, 16), Some(0..16));
        assert_eq!(rows(1, 2, 40, 16), Some(16..40));
        assert_eq!((0..3).map(|r| rows(r, 3, 100, 10).unwrap().len()).sum::<usize>(), 100);
        // fewer batches than ranks, or alone: the whole split everywhere
        assert_eq!(rows(0, 4, 40, 16), None);
        assert_eq!(rows(0, 1, 40, 16), None);
    }

    #[test]
    fn two_ranks_share_a_split_and_gather_exactly_what_one_process_predicts() {
        let one = image_learner();
        let want = [
            one.predict(Split::Valid).unwrap(),
            one.predict_augmented(Split::Valid, 0).unwrap(),
            one.predict_augmented(Split::Valid, 1).unwrap(),
        ];
        let handles: Vec<_> = local_rings(2)
            .into_iter()
            .enumerate()
            .map(|(rank, ring)| {
                std::thread::spawn(move || {
                    let mut learner = image_learner();
                    learner
                        .join(Box::new(HostRing::new(Box::new(ring), Duration::from_secs(20)).unwrap()))
                        .unwrap();
                    if rank == 1 {
                        // rank 1's BatchNorm running statistics drift from rank 0's in training (its
                        // own half-batches): its share must still be predicted with rank 0's model
                        tch::no_grad(|| {
                            for (name, _, t) in learner.model().named_groups() {
                                if name.ends_with("running_mean") {
                                    drop(t.shallow_clone().fill_(0.5));
                                }
                            }
                        });
                    }
                    // rank 0 predicts one batch of the split and rank 1 two: the part is not the whole
                    let part = learner.task.predict_part(Split::Valid, None, learner.shard(), &learner.abort);
                    let part_rows = part.unwrap().unwrap().probs.size()[0];
                    let got = [
                        learner.predict(Split::Valid).unwrap(),
                        learner.predict_augmented(Split::Valid, 0).unwrap(),
                        learner.predict_augmented(Split::Valid, 1).unwrap(),
                    ];
                    (part_rows, got.map(|t| Vec::<f32>::try_from(t.reshape([-1])).unwrap()))
                })
            })
            .collect();
        let want = want.map(|t| Vec::<f32>::try_from(t.reshape([-1])).unwrap());
        for (rank, h) in handles.into_iter().enumerate() {
            let (part_rows, got) = h.join().unwrap();
            assert_eq!(part_rows, [16, 24][rank]);
            for (view, (g, w)) in got.iter().zip(&want).enumerate() {
                assert_eq!(g.len(), 40 * 3);
                assert!(g == w, "rank {rank}, prediction {view}: not the one process's, bit for bit");
            }
        }
        // the TTA views differ from the plain prediction: the check above compared real views
        assert!(want[1] != want[0] && want[2] != want[1]);
    }

    /// On a CUDA machine built with `nccl`: the NCCL path (device buckets, loss in the last
    /// bucket, copy-back, broadcast) trains exactly like one plain process; elsewhere it says why
    /// it skips.
    #[test]
    fn nccl_grad_sync_steps_like_one_process_on_cuda_or_skips() {
        if !cfg!(feature = "nccl") || !tch::Cuda::is_available() {
            eprintln!("skipping the NCCL training step: needs the `nccl` feature and a CUDA device");
            return;
        }
        let dev = Device::Cuda(0);
        tch::manual_seed(5);
        let x = Tensor::randn([8, 1, 12, 12], (Kind::Float, dev));
        let y = Tensor::randint(3, [8], (Kind::Int64, dev));
        let batch = Batch::of(x, y);
        let lrs = [0.1; GROUPS];
        let mut one = learner(dev);
        let want: Vec<f64> = (0..3).map(|_| one.step(&batch, &lrs).unwrap()).collect();
        let want_params = params(&one);

        let g = GroupSpec { backend: Backend::Nccl, ..GroupSpec::new(0, 1, vec![]) };
        let grads = g.join(dev).expect("NCCL group of one");
        assert_eq!(grads.backend(), "nccl");
        let mut l = learner(dev);
        l.join(grads).unwrap();
        let got: Vec<f64> = (0..3).map(|_| l.step(&batch, &lrs).unwrap()).collect();
        let mut sums = [1.5, 2.0];
        l.grad_average().sum(&mut sums).unwrap();
        assert_eq!(sums, [1.5, 2.0]);
        for (a, b) in got.iter().zip(&want) {
            assert!((a - b).abs() < 1e-5, "loss {a} vs {b}");
        }
        let worst = params(&l).iter().zip(&want_params).map(|(a, b)| (a - b).abs()).fold(0f32, f32::max);
        assert!(worst < 1e-5, "parameters differ by {worst}");
    }
}
