//! Deterministic sample ordering: a SplitMix64 generator, seeded Fisher–Yates permutations,
//! the per-epoch order every data-parallel rank agrees on, and the rank's shard of it.
//!
//! Everything here is a pure function of its arguments (seed, epoch, rank, world), so a resumed
//! run or another rank recomputes exactly the same order without any communication.

/// SplitMix64 (Steele, Lea and Flood 2014): a tiny, fast, well-mixed 64-bit generator whose
/// whole state is one `u64`, which makes it trivial to checkpoint and to derive per-epoch streams.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SplitMix64(u64);

/// The SplitMix64 increment, ⌊2^64 / φ⌋.
const GOLDEN_GAMMA: u64 = 0x9E37_79B9_7F4A_7C15;

/// The SplitMix64 output function: a bijective avalanche mix of one word.
fn mix64(mut z: u64) -> u64 {
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

impl SplitMix64 {
    /// A generator seeded with `seed`; equal seeds give equal streams.
    pub fn new(seed: u64) -> Self {
        SplitMix64(seed)
    }

    /// The next 64 uniformly distributed bits.
    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(GOLDEN_GAMMA);
        mix64(self.0)
    }

    /// A uniform integer in `0..n`, without modulo bias (Lemire's multiply-and-reject).
    /// Returns 0 when `n == 0`, an empty range having no better answer.
    pub fn below(&mut self, n: u64) -> u64 {
        debug_assert!(n > 0, "SplitMix64::below(0)");
        if n == 0 {
            return 0;
        }
        // Reject the low products that would make some outputs one more likely than others.
        let threshold = n.wrapping_neg() % n;
        loop {
            let product = u128::from(self.next_u64()) * u128::from(n);
            if (product as u64) >= threshold {
                return (product >> 64) as u64;
            }
        }
    }

    /// A uniform float in `[0, 1)` with 53 random bits.
    pub fn next_f64(&mut self) -> f64 {
        (self.next_u64() >> 11) as f64 * (1.0 / (1u64 << 53) as f64)
    }
}

/// A uniformly random permutation of `0..n` (Fisher–Yates), deterministic for a seed.
pub fn permutation(n: usize, seed: u64) -> Vec<usize> {
    let mut order: Vec<usize> = (0..n).collect();
    let mut rng = SplitMix64::new(seed);
    for i in (1..n).rev() {
        let j = rng.below(i as u64 + 1) as usize;
        order.swap(i, j);
    }
    order
}

/// The sample order of epoch `epoch` for a run seeded with `seed`: a permutation of `0..n` that
/// every rank computes identically, and that differs from one epoch to the next.
pub fn epoch_order(n: usize, seed: u64, epoch: u64) -> Vec<usize> {
    // Mix the epoch before combining so that (seed, epoch) and (seed + 1, epoch - 1) differ.
    let epoch_seed = mix64(seed ^ mix64(epoch.wrapping_add(GOLDEN_GAMMA)));
    permutation(n, epoch_seed)
}

/// The part of `order` that rank `rank` of `world` ranks processes, as torch's
/// `DistributedSampler(drop_last=False)` does it: the order is padded by wrapping around to a
/// multiple of `world`, then rank r takes elements r, r + world, r + 2·world, ...
/// Every rank gets `ceil(len / world)` elements; when `world` divides the length, the shards
/// are disjoint and cover `order` exactly once.
///
/// # Panics
/// If `world == 0` or `rank >= world`: the rendezvous hands out ranks, so this is a bug upstream.
pub fn shard(order: &[usize], rank: usize, world: usize) -> Vec<usize> {
    assert!(world > 0, "shard: world size must be at least 1");
    assert!(rank < world, "shard: rank {rank} out of range for world size {world}");
    if order.is_empty() {
        return Vec::new();
    }
    let per_rank = order.len().div_ceil(world);
    (0..per_rank).map(|k| order[(rank + k * world) % order.len()]).collect()
}

/// The data-parallel sampler: every rank computes the same global order
/// `epoch_order(len, seed, epoch)` and cuts it into global batches of `world · batch` items; rank
/// `r` takes slice `[r·B, (r+1)·B)` of every global batch. So each item is seen once per epoch
/// across the ranks (a last partial global batch is dropped, as a single process drops its last
/// partial batch), and step `k` of a `w`-rank run trains on exactly the items that step `k` of a
/// one-process run with batch `w · B` (same seed) trains on: the data-parallel oracle.
///
/// Positions (into the training view) of rank `rank`'s items for epoch `epoch`, in step order:
/// `B = batch` items per step, `len / (world · batch)` steps.
///
/// # Panics
/// If `world == 0`, `rank >= world` or `batch == 0`: the launcher validates all three.
pub fn rank_positions(
    len: usize,
    seed: u64,
    epoch: u64,
    rank: usize,
    world: usize,
    batch: usize,
) -> Vec<usize> {
    assert!(world > 0 && rank < world && batch > 0, "rank {rank} of {world}, batch {batch}");
    let order = epoch_order(len, seed, epoch);
    let global = world * batch;
    order.chunks_exact(global).flat_map(|g| g[rank * batch..(rank + 1) * batch].iter().copied()).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn is_permutation(order: &[usize], n: usize) -> bool {
        let mut seen = vec![false; n];
        order.len() == n && order.iter().all(|&i| i < n && !std::mem::replace(&mut seen[i], true))
    }

    #[test]
    fn splitmix64_matches_reference_values() {
        // First outputs for seed 1234567 from the reference C implementation (Vigna).
        let mut rng = SplitMix64::new(1234567);
        assert_eq!(rng.next_u64(), 6457827717110365317);
        assert_eq!(rng.next_u64(), 3203168211198807973);
        assert_eq!(rng.next_u64(), 9817491932198370423);
    }

    #[test]
    fn below_and_next_f64_stay_in_range() {
        let mut rng = SplitMix64::new(7);
        let mut counts = [0usize; 3];
        for _ in 0..3000 {
            counts[rng.below(3) as usize] += 1;
            let x = rng.next_f64();
            assert!((0.0..1.0).contains(&x), "{x}");
        }
        // Each bucket expects 1000; a fair generator lands well inside ±200.
        assert!(counts.iter().all(|&c| (800..1200).contains(&c)), "{counts:?}");
        assert_eq!(rng.below(1), 0);
    }

    #[test]
    fn permutation_is_a_deterministic_permutation() {
        for n in [0, 1, 2, 10, 1000] {
            let p = permutation(n, 42);
            assert!(is_permutation(&p, n), "n={n}: {p:?}");
            assert_eq!(p, permutation(n, 42));
        }
        assert_ne!(permutation(1000, 42), permutation(1000, 43));
        assert_ne!(permutation(1000, 42), (0..1000).collect::<Vec<_>>());
    }

    #[test]
    fn epoch_order_differs_across_epochs_and_seeds() {
        let e0 = epoch_order(500, 1, 0);
        let e1 = epoch_order(500, 1, 1);
        assert!(is_permutation(&e0, 500) && is_permutation(&e1, 500));
        assert_eq!(e0, epoch_order(500, 1, 0));
        assert_ne!(e0, e1);
        assert_ne!(e0, epoch_order(500, 2, 0));
        assert_ne!(epoch_order(500, 2, 0), epoch_order(500, 1, 1));
    }

    #[test]
    fn shard_covers_every_sample_once_when_divisible() {
        let order = epoch_order(12, 9, 3);
        let mut all: Vec<usize> = (0..3).flat_map(|r| shard(&order, r, 3)).collect();
        assert!((0..3).all(|r| shard(&order, r, 3).len() == 4));
        all.sort_unstable();
        assert_eq!(all, (0..12).collect::<Vec<_>>());
        assert_eq!(shard(&order, 0, 1), order);
    }

    #[test]
    fn shard_pads_by_wrapping_like_distributed_sampler() {
        let order: Vec<usize> = (10..20).collect();
        // 10 items on 4 ranks: padded to 12 with order[0], order[1].
        let shards: Vec<Vec<usize>> = (0..4).map(|r| shard(&order, r, 4)).collect();
        assert_eq!(shards[0], vec![10, 14, 18]);
        assert_eq!(shards[1], vec![11, 15, 19]);
        assert_eq!(shards[2], vec![12, 16, 10]);
        assert_eq!(shards[3], vec![13, 17, 11]);
        // Fewer items than ranks: padding wraps more than once, counts stay equal.
        let tiny = [5, 6];
        let shards: Vec<Vec<usize>> = (0..5).map(|r| shard(&tiny, r, 5)).collect();
        assert_eq!(shards, vec![vec![5], vec![6], vec![5], vec![6], vec![5]]);
        assert!(shard(&[], 1, 2).is_empty());
    }

    #[test]
    #[should_panic(expected = "rank 2 out of range for world size 2")]
    fn shard_rejects_a_rank_outside_the_world() {
        shard(&[1, 2, 3], 2, 2);
    }

    #[test]
    fn ranks_partition_the_global_batches_of_one_process() {
        let (len, seed, epoch, b) = (103, 5, 2, 4);
        for world in [1, 2, 3] {
            let shards: Vec<Vec<usize>> =
                (0..world).map(|r| rank_positions(len, seed, epoch, r, world, b)).collect();
            let steps = len / (world * b);
            assert!(shards.iter().all(|s| s.len() == steps * b));
            let single = epoch_order(len, seed, epoch);
            for k in 0..steps {
                // the union of the ranks' step-k batches, in rank order, is the single process's batch
                let union: Vec<usize> =
                    shards.iter().flat_map(|s| s[k * b..(k + 1) * b].iter().copied()).collect();
                assert_eq!(union, single[k * world * b..(k + 1) * world * b], "world {world}, step {k}");
            }
            let mut all: Vec<usize> = shards.concat();
            all.sort_unstable();
            all.dedup();
            assert_eq!(all.len(), steps * world * b, "an item is seen twice");
        }
        assert_ne!(rank_positions(len, seed, 0, 0, 2, b), rank_positions(len, seed, 1, 0, 2, b));
    }
}
