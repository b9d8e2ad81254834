//! The collective benchmark of `make bench`, one process per rank: all-reduce bus bandwidth of
//! the TCP ring (peer: `bench/gloo_allreduce.py`) on the same sizes and threads as the peer.
//! (Data-parallel training throughput is [`crate::bench::ddp_throughput`].)
//!
//! Bus bandwidth is NCCL-tests' definition: `busbw = algbw · 2(n−1)/n` with `algbw = bytes / time`,
//! which makes ring all-reduces of any world size comparable with the link speed.

use std::time::Instant;

use serde::Serialize;

use super::GroupSpec;
use crate::collective::{Collective, Local, ReduceOp, Ring, RingConfig};
use crate::error::Result;

#[derive(Debug, Clone, Serialize)]
pub struct AllReduceRow {
    pub mb: usize,
    pub world_size: usize,
    pub iters: usize,
    /// Median seconds per all-reduce.
    pub seconds: f64,
    /// The slowest all-reduce's seconds.
    pub worst_seconds: f64,
    pub algbw_gb_s: f64,
    pub busbw_gb_s: f64,
}

fn connect(group: &GroupSpec) -> Result<Box<dyn Collective>> {
    group.validate()?;
    if group.world_size == 1 {
        return Ok(Box::new(Local::new()));
    }
    let cfg = RingConfig {
        rank: group.rank,
        world_size: group.world_size,
        peers: group.peers.clone(),
        generation: group.generation,
        timeout: group.timeout,
        secret: crate::collective::ring::secret_from_env()?,
    };
    Ok(Box::new(Ring::connect(cfg)?))
}

/// Median time of `iters` in-place sum all-reduces of `mb` MiB of f32, for each size.
pub fn allreduce_bandwidth(group: &GroupSpec, sizes_mb: &[usize], iters: usize) -> Result<Vec<AllReduceRow>> {
    let mut c = connect(group)?;
    let n = group.world_size;
    let mut rows = vec![];
    for &mb in sizes_mb {
        let len = (mb << 20) / 4;
        let mut buf: Vec<f32> = (0..len).map(|i| (i % 7) as f32).collect();
        for _ in 0..3 {
            c.all_reduce(&mut buf, ReduceOp::Sum)?;
        }
        let mut times = Vec::with_capacity(iters);
        for _ in 0..iters.max(1) {
            c.barrier()?;
            let t = Instant::now();
            c.all_reduce(&mut buf, ReduceOp::Sum)?;
            times.push(t.elapsed().as_secs_f64());
        }
        times.sort_by(f64::total_cmp);
        let seconds = times[times.len() / 2];
        let worst_seconds = times[times.len() - 1];
        let algbw = (len * 4) as f64 / seconds / 1e9;
        let busbw = algbw * 2.0 * (n as f64 - 1.0) / n as f64;
        rows.push(AllReduceRow {
            mb,
            world_size: n,
            iters,
            seconds,
            worst_seconds,
            algbw_gb_s: algbw,
            busbw_gb_s: busbw,
        });
    }
    Ok(rows)
}
