//! Retention policy: which periodic checkpoints to delete. Pure: it sees what exists and returns
//! decisions; [`super::CheckpointStore::apply_retention`] carries them out.
//!
//! Rules: keep the `keep_last` newest periodic checkpoints (by step) and every snapshot. The
//! policy is applied only after a new manifest has been committed, so a deletion never leaves a
//! run without its newest checkpoint, and `keep_last` is at least 1 (the spec validates it).

use super::manifest::CheckpointKind;

/// What the policy needs to know about one committed checkpoint.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Committed {
    pub dir: String,
    pub kind: CheckpointKind,
    pub step: u64,
}

/// The folders to delete so that only the `keep_last` newest checkpoints remain (never a snapshot,
/// never the newest checkpoint), oldest first.
pub fn to_delete(committed: &[Committed], keep_last: usize) -> Vec<String> {
    let keep_last = keep_last.max(1);
    let mut periodic: Vec<&Committed> =
        committed.iter().filter(|c| c.kind == CheckpointKind::Checkpoint).collect();
    // newest first; ties broken by folder so the result does not depend on listing order
    periodic.sort_by(|a, b| b.step.cmp(&a.step).then_with(|| b.dir.cmp(&a.dir)));
    let mut doomed: Vec<String> = periodic.into_iter().skip(keep_last).map(|c| c.dir.clone()).collect();
    doomed.reverse();
    doomed
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ckpt(step: u64) -> Committed {
        Committed { dir: format!("ckpt-{step:010}"), kind: CheckpointKind::Checkpoint, step }
    }
    fn snap(i: u64) -> Committed {
        Committed { dir: format!("snapshots/cycle-{i}"), kind: CheckpointKind::Snapshot, step: i }
    }

    #[test]
    fn keeps_the_newest_k_and_every_snapshot() {
        let all = vec![ckpt(30), snap(0), ckpt(10), ckpt(20), snap(1), ckpt(40)];
        assert_eq!(to_delete(&all, 2), vec!["ckpt-0000000010", "ckpt-0000000020"]);
        assert_eq!(to_delete(&all, 3), vec!["ckpt-0000000010"]);
        assert!(to_delete(&all, 4).is_empty());
        assert!(to_delete(&all, 100).is_empty());
    }

    #[test]
    fn never_deletes_the_newest_even_with_keep_zero() {
        let all = vec![ckpt(1), ckpt(2)];
        assert_eq!(to_delete(&all, 0), vec!["ckpt-0000000001"]);
        assert!(to_delete(&[], 1).is_empty());
        assert!(to_delete(&[snap(0), snap(1)], 1).is_empty());
    }

    #[test]
    fn every_keep_last_over_every_prefix_keeps_exactly_min_k_n() {
        // exhaustive over small inputs: what remains is the k newest periodic checkpoints
        for n in 0..7u64 {
            let all: Vec<Committed> = (0..n).rev().map(|s| ckpt(s * 5)).chain([snap(9)]).collect();
            for k in 1..8usize {
                let doomed = to_delete(&all, k);
                assert_eq!(doomed.len(), (n as usize).saturating_sub(k), "n={n} k={k}");
                let kept: Vec<u64> = all
                    .iter()
                    .filter(|c| c.kind == CheckpointKind::Checkpoint && !doomed.contains(&c.dir))
                    .map(|c| c.step)
                    .collect();
                assert!(
                    kept.iter().all(|s| doomed.iter().all(|d| *d < format!("ckpt-{s:010}"))),
                    "n={n} k={k}"
                );
            }
        }
    }
}
