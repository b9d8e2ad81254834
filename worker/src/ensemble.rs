//! Snapshot ensembles (Huang et al. 2017): average the softmax outputs of several snapshots.
//! Members are chosen on the validation split — the last M, or greedy forward selection
//! (Caruana et al. 2004) by validation log-loss — and only then scored on the test split.

use cyclotron_core::spec::Selection;
use tch::Tensor;

/// Mean of probability tensors of the same shape.
pub fn average(probs: &[&Tensor]) -> Tensor {
    debug_assert!(!probs.is_empty());
    let stacked = Tensor::stack(probs, 0);
    stacked.mean_dim(0, false, tch::Kind::Float)
}

/// Pick at most `max` members among `n` snapshots (in the order taken); `valid_loss(members)` is
/// the validation loss of the ensemble of `members` (the task averages and scores).
pub fn select(
    selection: Selection,
    n: usize,
    max: usize,
    valid_loss: &dyn Fn(&[usize]) -> f64,
) -> Vec<usize> {
    if n == 0 || max == 0 {
        return vec![];
    }
    match selection {
        Selection::Last => (n.saturating_sub(max)..n).collect(),
        Selection::Greedy => greedy(n, max, valid_loss),
    }
}

/// Start from the best single snapshot; add the snapshot that lowers the ensemble's validation
/// loss most; stop when none does or `max` is reached. Never worse than the best single one
/// on the validation split.
fn greedy(n: usize, max: usize, valid_loss: &dyn Fn(&[usize]) -> f64) -> Vec<usize> {
    let mut chosen: Vec<usize> = vec![];
    let mut best = f64::INFINITY;
    while chosen.len() < max {
        let mut pick = None;
        for i in (0..n).filter(|i| !chosen.contains(i)) {
            let mut trial = chosen.clone();
            trial.push(i);
            let loss = valid_loss(&trial);
            if loss < best - 1e-9 {
                best = loss;
                pick = Some(i);
            }
        }
        match pick {
            Some(i) => chosen.push(i),
            None => break,
        }
    }
    chosen.sort_unstable();
    chosen
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::task::classification_metrics as metrics;

    /// `select` over probability tensors scored by their averaged validation log-loss.
    fn pick(selection: Selection, ps: &[Tensor], y: &Tensor, max: usize) -> Vec<usize> {
        let loss = |m: &[usize]| metrics(&average(&m.iter().map(|&i| &ps[i]).collect::<Vec<_>>()), y).loss;
        select(selection, ps.len(), max, &loss)
    }

    fn probs(rows: &[[f32; 2]]) -> Tensor {
        let flat: Vec<f32> = rows.iter().flatten().copied().collect();
        Tensor::from_slice(&flat).view([rows.len() as i64, 2])
    }

    #[test]
    fn average_is_elementwise_mean() {
        let a = probs(&[[1.0, 0.0]]);
        let b = probs(&[[0.5, 0.5]]);
        assert!(average(&[&a, &b]).allclose(&probs(&[[0.75, 0.25]]), 1e-6, 1e-6, false));
    }

    #[test]
    fn last_takes_the_tail() {
        let ps: Vec<Tensor> = (0..5).map(|_| probs(&[[1.0, 0.0]])).collect();
        let y = Tensor::from_slice(&[0i64]);
        assert_eq!(pick(Selection::Last, &ps, &y, 3), vec![2, 3, 4]);
        assert_eq!(pick(Selection::Last, &ps, &y, 9), vec![0, 1, 2, 3, 4]);
    }

    #[test]
    fn greedy_skips_a_bad_member_and_keeps_complementary_ones() {
        let y = Tensor::from_slice(&[0i64, 1, 0, 1]);
        // a and b are each right on half the items and confident; their average is right everywhere
        let a = probs(&[[0.9, 0.1], [0.1, 0.9], [0.4, 0.6], [0.6, 0.4]]);
        let b = probs(&[[0.4, 0.6], [0.6, 0.4], [0.9, 0.1], [0.1, 0.9]]);
        // c is confidently wrong everywhere
        let bad = probs(&[[0.05, 0.95], [0.95, 0.05], [0.05, 0.95], [0.95, 0.05]]);
        let chosen = pick(Selection::Greedy, &[a.shallow_clone(), bad, b.shallow_clone()], &y, 3);
        assert_eq!(chosen, vec![0, 2]);
        let ens = metrics(&average(&[&a, &b]), &y);
        assert_eq!(ens.accuracy, 1.0);
    }

    #[test]
    fn greedy_never_loses_to_the_best_single_member_on_validation() {
        let y = Tensor::from_slice(&[0i64, 1, 1]);
        let good = probs(&[[0.9, 0.1], [0.2, 0.8], [0.3, 0.7]]);
        let worse = probs(&[[0.6, 0.4], [0.5, 0.5], [0.6, 0.4]]);
        let chosen = pick(Selection::Greedy, &[worse, good.shallow_clone()], &y, 2);
        assert_eq!(chosen, vec![1]);
    }

    /// Validation log-loss of the average of `members`.
    fn loss(ps: &[Tensor], y: &Tensor, members: &[usize]) -> f64 {
        let chosen: Vec<&Tensor> = members.iter().map(|&i| &ps[i]).collect();
        metrics(&average(&chosen), y).loss
    }

    /// The guarantees of greedy selection on many random ensembles (members of different quality,
    /// some near-copies of others): never worse on validation than the best single member, at
    /// most `max` distinct members, and no member left out would have lowered the loss (the stop
    /// rule) unless `max` was reached. For `max = 1`, exactly the best single member.
    #[test]
    fn greedy_guarantees_hold_on_random_ensembles() {
        tch::manual_seed(7);
        let (items, classes) = (24i64, 4i64);
        for trial in 0..300 {
            let n = 1 + trial % 6;
            let max = 1 + (trial / 6) % 4;
            let y = Tensor::randint(classes, [items], (tch::Kind::Int64, tch::Device::Cpu));
            let truth = y.one_hot(classes).to_kind(tch::Kind::Float);
            let ps: Vec<Tensor> = (0..n)
                .map(|i| {
                    // skill from 0 (noise) to 3 (mostly right), sharper or flatter at random
                    let skill = 3.0 * (i as f64) / 5.0;
                    let logits = Tensor::randn([items, classes], (tch::Kind::Float, tch::Device::Cpu))
                        + &truth * skill;
                    (logits * (0.5 + (trial % 3) as f64)).softmax(-1, tch::Kind::Float)
                })
                .collect();
            let chosen = pick(Selection::Greedy, &ps, &y, max);
            let what = format!("trial {trial}: {n} members, max {max}, chose {chosen:?}");
            assert!(!chosen.is_empty() && chosen.len() <= max, "{what}");
            assert!(chosen.windows(2).all(|w| w[0] < w[1]), "sorted and distinct: {what}");
            let got = loss(&ps, &y, &chosen);
            let singles: Vec<f64> = (0..n).map(|i| loss(&ps, &y, &[i])).collect();
            let best_single = singles.iter().copied().fold(f64::INFINITY, f64::min);
            assert!(got <= best_single + 1e-9, "{what}: {got} > best single {best_single}");
            if max == 1 {
                assert_eq!(singles[chosen[0]], best_single, "{what}");
            }
            if chosen.len() < max {
                for extra in (0..n).filter(|i| !chosen.contains(i)) {
                    let mut more = chosen.clone();
                    more.push(extra);
                    let with = loss(&ps, &y, &more);
                    assert!(with >= got - 1e-9, "{what}: adding {extra} lowers the loss to {with} < {got}");
                }
            }
        }
    }
}
