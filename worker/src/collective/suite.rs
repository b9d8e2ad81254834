//! The one test suite every [`Collective`] backend passes (as candle runs one test body on every
//! device): a backend provides `make(n)`, which returns the `n` connected ranks of a fresh group,
//! and [`run_all`] drives them on one thread per rank at world sizes 1, 2 and 3.
//!
//! Values are small integers, so sums are exact in `f32` whatever the reduction order.

use std::time::Duration;

use super::{Collective, CollectiveError, ReduceOp};

/// Builds the `n` ranks of a fresh group (rank order).
pub type Make = fn(usize) -> Vec<Box<dyn Collective>>;

/// Buffer lengths: empty, shorter than the world, not divisible by it, and longer than a
/// scratch buffer that the ring reduces through (64 Ki elements) with a ragged end.
pub const LENGTHS: [usize; 7] = [0, 1, 2, 7, 1001, 64 * 1024 + 5, 3 * 64 * 1024 + 2];

fn value(rank: usize, i: usize) -> f32 {
    ((rank + 1) * (i % 97)) as f32
}

/// Runs `body(rank, collective)` on one thread per rank and returns each rank's result.
pub fn on_threads<T: Send + 'static>(
    group: Vec<Box<dyn Collective>>,
    body: impl Fn(usize, &mut dyn Collective) -> T + Send + Sync + Copy + 'static,
) -> Vec<T> {
    let handles: Vec<_> = group
        .into_iter()
        .enumerate()
        .map(|(rank, mut c)| std::thread::spawn(move || body(rank, c.as_mut())))
        .collect();
    handles.into_iter().map(|h| h.join().expect("rank thread panicked")).collect()
}

fn reduce_and_broadcast(make: Make, n: usize) {
    let group = make(n);
    assert!(group.iter().enumerate().all(|(r, c)| c.rank() == r && c.world_size() == n));
    on_threads(group, move |rank, c| {
        c.set_timeout(Duration::from_secs(30));
        let tri = (n * (n + 1) / 2) as f32;
        for len in LENGTHS {
            let mut buf: Vec<f32> = (0..len).map(|i| value(rank, i)).collect();
            c.all_reduce(&mut buf, ReduceOp::Sum).unwrap_or_else(|e| panic!("sum of {len}: {e}"));
            for (i, v) in buf.iter().enumerate() {
                assert_eq!(*v, tri * (i % 97) as f32, "world {n}, len {len}, rank {rank}, element {i}");
            }
            let mut buf: Vec<f32> = (0..len).map(|i| value(rank, i)).collect();
            c.all_reduce(&mut buf, ReduceOp::Average).unwrap_or_else(|e| panic!("average of {len}: {e}"));
            for (i, v) in buf.iter().enumerate() {
                let want = tri * (i % 97) as f32 / n as f32;
                assert!((v - want).abs() <= 1e-5 * want.abs().max(1.0), "average: {v} vs {want} at {i}");
            }
            for root in 0..n {
                let mut buf: Vec<f32> = (0..len).map(|i| value(rank, i)).collect();
                c.broadcast(&mut buf, root).unwrap_or_else(|e| panic!("broadcast of {len} from {root}: {e}"));
                assert!(
                    buf.iter().enumerate().all(|(i, v)| *v == value(root, i)),
                    "broadcast {len} from {root}"
                );
            }
            c.barrier().unwrap_or_else(|e| panic!("barrier: {e}"));
        }
    });
}

fn mismatched_lengths_fail_on_every_rank(make: Make, n: usize) {
    let results = on_threads(make(n), |rank, c| {
        c.set_timeout(Duration::from_secs(30));
        let mut buf = vec![1.0f32; if rank == 0 { 10 } else { 11 }];
        c.all_reduce(&mut buf, ReduceOp::Sum).map_err(|e| e.to_string())
    });
    assert!(results.iter().all(Result::is_err), "{results:?}");
    assert!(results.iter().any(|r| r.as_ref().is_err_and(|e| e.contains("mismatch"))), "{results:?}");
}

fn a_lost_peer_is_an_error_not_a_hang(make: Make, n: usize) {
    let mut group = make(n);
    let lost = group.pop().expect("a rank");
    lost.abort();
    drop(lost);
    let results = on_threads(group, |_, c| {
        c.set_timeout(Duration::from_secs(30));
        let mut buf = vec![1.0f32; 1000];
        let first = c.all_reduce(&mut buf, ReduceOp::Sum).map_err(|e| e.to_string());
        // once broken, every later call fails at once
        let again = c.barrier().map_err(|e| e.to_string());
        (first, again)
    });
    for (first, again) in results {
        let e = first.expect_err("a reduce with a lost rank succeeded");
        assert!(e.contains("lost rank") || e.contains("aborted"), "{e}");
        assert!(again.is_err());
    }
}

fn abort_fails_later_calls(make: Make) {
    let mut group = make(1);
    let c = group[0].as_mut();
    c.abort();
    let e = c.barrier().expect_err("a call after abort succeeded");
    assert!(matches!(e, CollectiveError::Aborted { rank: 0 }), "{e}");
}

/// Every check of the suite, at world sizes 1, 2 and 3.
pub fn run_all(make: Make) {
    for n in [1, 2, 3] {
        reduce_and_broadcast(make, n);
    }
    for n in [2, 3] {
        mismatched_lengths_fail_on_every_rank(make, n);
        a_lost_peer_is_an_error_not_a_hang(make, n);
    }
    abort_fails_later_calls(make);
}
