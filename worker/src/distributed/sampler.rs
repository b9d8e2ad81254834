//! The data-parallel sampler: which items rank `r` of `w` trains on in each step of an epoch.
//!
//! Every rank computes the same global order `epoch_order(len, seed, epoch)` and cuts it into
//! global batches of `w · B` items; rank `r` takes slice `[r·B, (r+1)·B)` of every global batch.
//! So each item is seen once per epoch across the ranks (a last partial global batch is dropped,
//! as a single process drops its last partial batch), and step `k` of a `w`-rank run trains on
//! exactly the items that step `k` of a one-process run with batch `w · B` (same seed) trains on.
//! That is what makes the correctness oracle hold: `w` ranks with batch `B` == one process with
//! batch `w · B`, step for step.

use crate::data::epoch_order;

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
