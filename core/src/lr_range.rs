//! LR-range test analysis (Smith 2015; fastai's `lr_find`), pure and independent of training.
//!
//! The learner asks [`LrRange::lr_at`] for the learning rate of step `i`, trains one batch,
//! and feeds the raw loss to [`LrFinder::record`], which smooths it (EMA, β = 0.98, bias
//! corrected) and says when to stop. [`suggest`] turns the smoothed curve into the three
//! suggestions `steep`, `valley` and `minimum`.

use serde::{Deserialize, Serialize};

/// Exponential ramp from `start` to `end` over `steps` steps.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct LrRange {
    pub start: f64,
    pub end: f64,
    pub steps: u32,
}

impl LrRange {
    /// lr_i = start · (end/start)^(i/(n−1)).
    pub fn lr_at(&self, i: u32) -> f64 {
        if self.steps <= 1 {
            return self.start;
        }
        let t = f64::from(i) / f64::from(self.steps - 1);
        self.start * (self.end / self.start).powf(t)
    }
}

/// Whether the range test should go on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    Continue,
    /// The smoothed loss is NaN or above 4× the best seen: the LR is too high.
    Diverged,
}

/// Steps before the best loss starts being tracked (fastai: the first batches are noisy).
pub const BEST_AFTER_STEPS: usize = 10;
/// Divergence threshold as a multiple of the best smoothed loss.
pub const DIVERGENCE_FACTOR: f64 = 4.0;

/// Accumulates a range test: EMA smoothing with bias correction and the divergence stop.
#[derive(Debug, Clone)]
pub struct LrFinder {
    beta: f64,
    avg: f64,
    best: f64,
    pub lrs: Vec<f64>,
    pub raw_losses: Vec<f64>,
    pub losses: Vec<f64>,
}

impl Default for LrFinder {
    fn default() -> Self {
        Self::new(0.98)
    }
}

impl LrFinder {
    pub fn new(beta: f64) -> Self {
        LrFinder { beta, avg: 0.0, best: f64::INFINITY, lrs: vec![], raw_losses: vec![], losses: vec![] }
    }

    /// Record the raw loss of one step trained at `lr`; returns whether to continue.
    pub fn record(&mut self, lr: f64, loss: f64) -> Verdict {
        let i = self.losses.len();
        self.avg = self.beta * self.avg + (1.0 - self.beta) * loss;
        let smoothed = self.avg / (1.0 - self.beta.powi(i as i32 + 1));
        self.lrs.push(lr);
        self.raw_losses.push(loss);
        self.losses.push(smoothed);
        if smoothed.is_nan() || smoothed > DIVERGENCE_FACTOR * self.best {
            return Verdict::Diverged;
        }
        if i >= BEST_AFTER_STEPS && smoothed < self.best {
            self.best = smoothed;
        }
        Verdict::Continue
    }
}

/// The three suggestions of an LR-range test, as learning rates.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct Suggestions {
    /// Steepest descent of loss against log lr (first 10% and last 5 points dropped).
    pub steep: f64,
    /// fastai v2 `valley`: halfway along the longest decreasing run of the curve.
    pub valley: f64,
    /// The LR of the lowest point of the [`centred`] raw losses, divided by [`MINIMUM_DIVISOR`]
    /// (fastai's `minimum/10` of the EMA curve, without the EMA's lag and noise).
    pub minimum: f64,
}

/// Which suggestion an `lr = "auto"` stage takes.
///
/// The default, `minimum_or_valley`, was chosen by measurement (`bench/lr_rule.py`, table in
/// `bench/results/lr-rule-cpu-2core-2026-12-03.md`): the lowest loss's LR / 10 (fastai v1's
/// rule, since made steadier: see [`MINIMUM_DIVISOR`]) landed within 0.2–0.4 decades of the best
/// LR of a grid on three of four jobs, where `valley` sat 0.5–1.3 decades too low on the three
/// image jobs and `steep` was erratic. On the fourth (tabular) the loss was still falling at the
/// end of the range, so "the minimum" was only the range's end; there `valley` was best, and that
/// is the fallback. (Judged on the lag-free curve, that job's loss did turn up: it now asks for
/// `valley` in its spec; `bench/results/lr-rule-seeds-cpu-2core-2026-12-03.md`.)
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "snake_case")]
pub enum SuggestionKind {
    Steep,
    Valley,
    Minimum,
    /// `minimum`, unless the lowest loss is in the last 5% of a curve that never turned up (the
    /// range ended before the test got past the minimum, so it cannot say): then `valley`.
    #[default]
    MinimumOrValley,
}

impl std::fmt::Display for SuggestionKind {
    /// The spec's spelling (`minimum_or_valley`).
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            SuggestionKind::Steep => "steep",
            SuggestionKind::Valley => "valley",
            SuggestionKind::Minimum => "minimum",
            SuggestionKind::MinimumOrValley => "minimum_or_valley",
        })
    }
}

/// The learning rate suggestion `kind` picks from a curve with suggestions `s`, judging
/// [`still_falling`] on `losses` (a ramp's [`LrFindReport::judged_losses`]).
pub fn choose(kind: SuggestionKind, s: &Suggestions, lrs: &[f64], losses: &[f64]) -> f64 {
    pick(kind, s, still_falling(lrs, losses))
}

/// The learning rate suggestion `kind` picks from `s`, given whether the curve was still falling
/// at the range's end.
pub fn pick(kind: SuggestionKind, s: &Suggestions, still_falling: bool) -> f64 {
    match kind {
        SuggestionKind::Steep => s.steep,
        SuggestionKind::Valley => s.valley,
        SuggestionKind::Minimum => s.minimum,
        SuggestionKind::MinimumOrValley if still_falling => s.valley,
        SuggestionKind::MinimumOrValley => s.minimum,
    }
}

/// Whether the test ended with the loss still at its lowest: the lowest loss lies in the last 5%
/// (at least the last 2) of the points, and the curve did not turn up at its end — no trailing
/// non-finite loss (the divergence stop) and the last loss within 50% of the lowest.
pub fn still_falling(lrs: &[f64], losses: &[f64]) -> bool {
    let len = lrs.len().min(losses.len());
    let n = finite_len(lrs, losses);
    if n == 0 || n < len {
        return false;
    }
    let best = argmin(&losses[..n]);
    let (lowest, last) = (losses[best], losses[n - 1]);
    best + (n / 20).max(2) >= n && last - lowest <= 0.5 * lowest.abs()
}

/// Whether a ramp's curve never fell: it has at least [`NEVER_FELL_MIN_POINTS`] finite points and
/// its lowest loss lies in the first 5% (at least the first 2) of them. Then the test says nothing
/// about a good rate, only that every rate it tried was no better than where it started;
/// `minimum` may even lie below the range. A shorter curve (a sweep's grid of a few
/// fixed-rate runs, a test's 12-step ramp) is not judged: its lowest rate being best is an answer.
pub fn never_fell(lrs: &[f64], losses: &[f64]) -> bool {
    let n = finite_len(lrs, losses);
    if n < NEVER_FELL_MIN_POINTS {
        return false;
    }
    argmin(&losses[..n]) < (n / 20).max(2)
}

/// What a curve that [`never_fell`] means, and what to change (errors and the CLI say it).
pub const NEVER_FELL: &str = "its loss never fell below its first values, so it cannot say which rate trains; lower lr_find.start (the curve should fall before it rises) or set lr explicitly";

/// Fewest points of a curve [`never_fell`] judges.
pub const NEVER_FELL_MIN_POINTS: usize = 20;

/// Suggest learning rates from a curve (`lrs` increasing; `losses` the EMA-smoothed losses and
/// `raw` the raw ones, same length). `steep` and `valley` read the smoothed curve (fastai's rules,
/// made for it); `minimum` reads [`centred`]`(raw)`: see [`MINIMUM_DIVISOR`]. Returns `None` when
/// the curve has fewer than 3 finite points: nothing can be said.
pub fn suggest(lrs: &[f64], losses: &[f64], raw: &[f64]) -> Option<Suggestions> {
    let n = finite_len(lrs, losses);
    if n < 3 {
        return None;
    }
    let minimum = lrs[centred_minimum(lrs, losses, raw)?.0];
    let (lrs, losses) = (&lrs[..n], &losses[..n]);
    Some(Suggestions {
        steep: lrs[steepest_index(lrs, losses)],
        valley: lrs[valley_index(losses)],
        minimum: minimum / MINIMUM_DIVISOR,
    })
}

/// The point `minimum` reads: the index and value of the lowest point of [`centred`]`(raw)` after
/// its first 10% (where the ramp has not moved the loss yet), over the curve's finite part (as
/// [`suggest`] counts it). `None` with fewer than 3 finite points.
pub fn centred_minimum(lrs: &[f64], losses: &[f64], raw: &[f64]) -> Option<(usize, f64)> {
    let n = finite_len(lrs, losses);
    if n < 3 {
        return None;
    }
    // a report without its raw losses (none is written so) is read as its own raw curve
    let raw = if raw.len() >= n { &raw[..n] } else { &losses[..n] };
    let centred = centred(raw);
    let i = centred_minimum_index(&centred);
    Some((i, centred[i]))
}

/// `minimum` is the LR of the lowest point of the [`centred`] curve divided by this.
///
/// fastai's `minimum/10` reads the EMA (β = 0.98), whose value at a step is a weighted mean of the
/// ~50 steps before it (on a 100-step ramp over 6 decades, up to 3 decades of LR), so its lowest
/// point lies wherever the raw loss's blow-up finally outweighs that history: over 5 seeds of one
/// job it spread over 0.18–0.79 decades (max − min). The centred curve has no lag; its lowest point
/// spread over 0.12–0.24 decades, and on the 35 curves of
/// `bench/results/lr-rule-seeds-cpu-2core-2026-12-03.md` it lay a factor 3.2 (median; 2.3 at
/// least) below the EMA's. So `/3` keeps the rule's measured place against the grid's best LR
/// (`bench/results/lr-rule-cpu-2core-2026-12-03.md`) and sheds most of its noise.
pub const MINIMUM_DIVISOR: f64 = 3.0;

/// The curve's lowest point after its first 10%.
fn centred_minimum_index(centred: &[f64]) -> usize {
    let lo = centred.len() / 10;
    lo + argmin(&centred[lo..])
}

/// The raw losses smoothed without lag: a Gaussian kernel centred on each point, σ = 4% of the
/// points (at least 1.5), truncated at 4σ and renormalised at the ends; non-finite losses carry no
/// weight (a point whose whole window is non-finite stays NaN).
pub fn centred(raw: &[f64]) -> Vec<f64> {
    let n = raw.len();
    let sigma = (0.04 * n as f64).max(1.5);
    let reach = (4.0 * sigma).ceil() as usize;
    (0..n)
        .map(|i| {
            let (mut sum, mut weight) = (0.0, 0.0);
            for (j, x) in raw.iter().enumerate().take((i + reach + 1).min(n)).skip(i.saturating_sub(reach)) {
                if x.is_finite() {
                    let w = (-0.5 * ((j as f64 - i as f64) / sigma).powi(2)).exp();
                    sum += w * x;
                    weight += w;
                }
            }
            if weight > 0.0 {
                sum / weight
            } else {
                f64::NAN
            }
        })
        .collect()
}

/// How many points of the curve count: up to its last finite loss (a trailing NaN, the
/// divergence stop, carries no information).
fn finite_len(lrs: &[f64], losses: &[f64]) -> usize {
    let len = lrs.len().min(losses.len());
    (0..len).rev().find(|&i| losses[i].is_finite()).map_or(0, |i| i + 1)
}

fn argmin(xs: &[f64]) -> usize {
    let mut best = 0;
    for (i, x) in xs.iter().enumerate() {
        if *x < xs[best] {
            best = i;
        }
    }
    best
}

/// Index of min d loss / d log lr, after dropping the first 10% and the last 5 points (fewer
/// when the curve is short). Derivatives as numpy's `gradient`: central inside, one-sided at the edges.
fn steepest_index(lrs: &[f64], losses: &[f64]) -> usize {
    let n = losses.len();
    let mut lo = n / 10;
    let mut hi = n.saturating_sub(5);
    if hi < lo + 2 {
        lo = 0;
        hi = n;
    }
    let x: Vec<f64> = lrs[lo..hi].iter().map(|l| l.ln()).collect();
    let y = &losses[lo..hi];
    let m = x.len();
    let grad = |i: usize| -> f64 {
        let (a, b) = if i == 0 {
            (0, 1)
        } else if i == m - 1 {
            (m - 2, m - 1)
        } else {
            (i - 1, i + 1)
        };
        (y[b] - y[a]) / (x[b] - x[a])
    };
    let mut best = 0;
    for i in 1..m {
        if grad(i) < grad(best) {
            best = i;
        }
    }
    lo + best
}

/// fastai v2 `valley`: the longest decreasing subsequence of the losses, and the point
/// `start + ⌊L/3⌋ + ⌊L/6⌋` (≈ half-way) along it, where L = end − start.
fn valley_index(losses: &[f64]) -> usize {
    let n = losses.len();
    let mut lds = vec![1usize; n];
    // signed, as in fastai: a run from index 0 starts at -1 (it was `usize` and relied on wrapping)
    let (mut max_start, mut max_end) = (0i64, 0usize);
    for i in 1..n {
        for j in 0..i {
            if losses[i] < losses[j] && lds[i] < lds[j] + 1 {
                lds[i] = lds[j] + 1;
            }
            if lds[max_end] < lds[i] {
                max_end = i;
                max_start = max_end as i64 - lds[max_end] as i64;
            }
        }
    }
    let sections = (max_end as i64 - max_start) as f64 / 3.0;
    (max_start + sections as i64 + (sections / 2.0) as i64).clamp(0, n as i64 - 1) as usize
}

/// What `lr_find.json` holds.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct LrFindReport {
    pub lrs: Vec<f64>,
    /// Smoothed losses (what the suggestions read); NaN travels as `null`.
    #[serde(with = "crate::serde_nan::vec")]
    pub losses: Vec<f64>,
    #[serde(with = "crate::serde_nan::vec")]
    pub raw_losses: Vec<f64>,
    pub suggestion: Option<Suggestions>,
    /// True when the divergence stop ended the test before the last step.
    pub diverged: bool,
}

impl LrFindReport {
    pub fn from_finder(f: LrFinder, diverged: bool) -> Self {
        let suggestion = suggest(&f.lrs, &f.losses, &f.raw_losses);
        LrFindReport { lrs: f.lrs, losses: f.losses, raw_losses: f.raw_losses, suggestion, diverged }
    }

    /// The learning rate suggestion `kind` picks from this test: `None` when the test gave no
    /// suggestions (it diverged at once) or its loss [`never_fell`] (nothing to pick from).
    pub fn lr(&self, kind: SuggestionKind) -> Option<f64> {
        if self.never_fell() {
            return None;
        }
        self.suggestion.map(|s| pick(kind, &s, self.still_falling()))
    }

    /// See [`centred_minimum`] (`None` for a grid, whose `minimum` is its best point).
    pub fn centred_minimum(&self) -> Option<(usize, f64)> {
        if self.is_grid() {
            return None;
        }
        centred_minimum(&self.lrs, &self.losses, &self.raw_losses)
    }

    /// Whether the loss was still falling at the range's end ([`still_falling`]), judged on
    /// [`LrFindReport::judged_losses`].
    pub fn still_falling(&self) -> bool {
        still_falling(&self.lrs, &self.judged_losses())
    }

    /// The curve the `minimum_or_valley` fallback is judged on: a ramp's [`centred`] raw losses
    /// (NaN where the raw loss is, so a divergence stop still ends the curve), a grid's own losses.
    /// The EMA lags: on 2 of 5 seeds of a data-parallel range test it was still falling at the end
    /// of a ramp whose raw loss had turned up 22–25 points earlier, and the job trained at
    /// `valley`, 0.55 decades lower (`bench/results/lr-rule-seeds-cpu-2core-2026-12-03.md`).
    pub fn judged_losses(&self) -> Vec<f64> {
        if self.is_grid() {
            return self.losses.clone();
        }
        centred(&self.raw_losses)
            .into_iter()
            .zip(&self.raw_losses)
            .map(|(c, raw)| if raw.is_finite() { c } else { f64::NAN })
            .collect()
    }

    /// Whether this is a sweep's merged grid (one loss per LR, nothing smoothed) rather than a ramp.
    pub fn is_grid(&self) -> bool {
        self.losses.len() > 1
            && self.losses.len() == self.raw_losses.len()
            && self.losses.iter().zip(&self.raw_losses).all(|(a, b)| a.total_cmp(b).is_eq())
    }

    /// How `minimum` is written for a person: `minimum/3` on a ramp, `minimum` on a grid (its
    /// best point's LR itself).
    pub fn minimum_label(&self) -> String {
        if self.is_grid() {
            "minimum".into()
        } else {
            format!("minimum/{MINIMUM_DIVISOR}")
        }
    }

    /// See [`never_fell`].
    pub fn never_fell(&self) -> bool {
        never_fell(&self.lrs, &self.losses)
    }

    /// Why [`LrFindReport::lr`] is `None`, and what to change, for error messages.
    pub fn why_no_suggestion(&self) -> &'static str {
        if self.never_fell() {
            NEVER_FELL
        } else {
            "it diverged at once; set lr explicitly or lower lr_find.start"
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ramp(n: u32) -> Vec<f64> {
        let r = LrRange { start: 1e-7, end: 10.0, steps: n };
        (0..n).map(|i| r.lr_at(i)).collect()
    }

    #[test]
    fn minimum_or_valley_falls_back_to_valley_when_the_loss_never_turned_up() {
        let lrs = ramp(100);
        // U-shaped: the minimum at step 60 of 100, well before the end
        let u: Vec<f64> = (0..100).map(|i| 1.0 + ((i as f64 - 60.0) / 30.0).powi(2)).collect();
        let s = suggest(&lrs, &u, &u).unwrap();
        assert!(!still_falling(&lrs, &u));
        assert_eq!(choose(SuggestionKind::MinimumOrValley, &s, &lrs, &u), lrs[60] / MINIMUM_DIVISOR);
        // still falling at the last step: "the minimum" is only the range's end
        let down: Vec<f64> = (0..100).map(|i| 3.0 - (i as f64 / 40.0).min(2.0) - i as f64 * 1e-3).collect();
        let s = suggest(&lrs, &down, &down).unwrap();
        assert!(still_falling(&lrs, &down));
        assert_eq!(choose(SuggestionKind::MinimumOrValley, &s, &lrs, &down), s.valley);
        assert_eq!(choose(SuggestionKind::Minimum, &s, &lrs, &down), lrs[99] / MINIMUM_DIVISOR);
        // the lowest loss just before a divergence stop: the curve did turn up, `minimum` stands
        let mut nan = u.clone();
        nan.truncate(62);
        nan.push(f64::NAN);
        assert!(!still_falling(&lrs[..63], &nan), "a trailing NaN is the divergence stop");
        let mut blown = u.clone();
        blown.truncate(62);
        blown.push(u[60] * 4.5);
        assert!(!still_falling(&lrs[..63], &blown), "a last loss 4.5× the lowest is a turn up");
        let mut flat = u.clone();
        flat.truncate(62);
        assert!(still_falling(&lrs[..62], &flat), "lowest at 60 of 62 points, no turn up");
        assert!(!still_falling(&lrs, &[]));
        assert_eq!(SuggestionKind::default(), SuggestionKind::MinimumOrValley);
    }

    fn rising_prefix(n: usize) -> Vec<f64> {
        (0..n).map(|i| 1.0 + i as f64 * 0.01).collect()
    }

    #[test]
    fn a_curve_that_never_fell_suggests_no_rate() {
        let lrs = ramp(60);
        // the sentiment classifier's shape: lowest at the second point, then noisy and rising
        let rising: Vec<f64> =
            (0..60).map(|i| 0.69 + 0.002 * i as f64 + if i == 1 { -0.01 } else { 0.0 }).collect();
        assert!(never_fell(&lrs, &rising));
        let report = LrFindReport {
            suggestion: suggest(&lrs, &rising, &rising),
            lrs: lrs.clone(),
            losses: rising.clone(),
            raw_losses: rising,
            diverged: false,
        };
        assert!(report.suggestion.is_some(), "the three marks are still drawn");
        assert_eq!(report.lr(SuggestionKind::MinimumOrValley), None);
        assert_eq!(report.lr(SuggestionKind::Valley), None);
        assert!(report.why_no_suggestion().contains("never fell"));
        // a U-shaped curve, or one lowest at its 4th of 60 points, did fall
        let u: Vec<f64> = (0..60).map(|i| 1.0 + ((i as f64 - 40.0) / 20.0).powi(2)).collect();
        assert!(!never_fell(&lrs, &u));
        let early: Vec<f64> = (0..60).map(|i| if i == 3 { 0.5 } else { 1.0 + i as f64 * 1e-3 }).collect();
        assert!(!never_fell(&lrs, &early));
        // too short to judge (a sweep's 3-point grid), or nothing finite: not "never fell"
        assert!(!never_fell(&lrs[..3], &[1.0, 2.0, 3.0]));
        assert!(!never_fell(&lrs[..19], &rising_prefix(19)));
        assert!(never_fell(&lrs[..20], &rising_prefix(20)));
        assert!(!never_fell(&lrs[..3], &[f64::NAN, f64::NAN, f64::NAN]));
    }

    #[test]
    fn ramp_is_exponential_from_start_to_end() {
        let lrs = ramp(100);
        assert!((lrs[0] - 1e-7).abs() < 1e-20);
        assert!((lrs[99] - 10.0).abs() < 1e-9);
        let ratio = lrs[1] / lrs[0];
        assert!(lrs.windows(2).all(|w| (w[1] / w[0] - ratio).abs() < 1e-9));
        // 8 decades over 99 intervals
        assert!((ratio.log10() - 8.0 / 99.0).abs() < 1e-12);
    }

    #[test]
    fn ema_is_bias_corrected() {
        let mut f = LrFinder::default();
        // a constant loss smooths to itself from the first step, thanks to the correction
        for i in 0..30 {
            f.record(1e-3, 2.5);
            assert!((f.losses[i] - 2.5).abs() < 1e-12, "step {i}: {}", f.losses[i]);
        }
        // hand-computed second step: avg = 0.98·0.02·1 + 0.02·3, corrected by 1 − 0.98²
        let mut f = LrFinder::default();
        f.record(1e-3, 1.0);
        f.record(1e-3, 3.0);
        let want = (0.98 * 0.02 * 1.0 + 0.02 * 3.0) / (1.0 - 0.98f64.powi(2));
        assert!((f.losses[1] - want).abs() < 1e-12);
    }

    #[test]
    fn diverges_above_four_times_best_but_not_in_the_first_ten_steps() {
        let mut f = LrFinder::new(0.0); // no smoothing: the verdict reads raw losses
                                        // a big early spike cannot stop the test: best is not tracked yet
        assert_eq!(f.record(1e-6, 1.0), Verdict::Continue);
        assert_eq!(f.record(1e-6, 100.0), Verdict::Continue);
        for _ in 2..12 {
            assert_eq!(f.record(1e-5, 1.0), Verdict::Continue);
        }
        assert_eq!(f.record(1e-4, 3.9), Verdict::Continue);
        assert_eq!(f.record(1e-3, 4.1), Verdict::Diverged);
    }

    #[test]
    fn nan_stops_at_once() {
        let mut f = LrFinder::default();
        f.record(1e-4, 1.0);
        assert_eq!(f.record(1e-3, f64::NAN), Verdict::Diverged);
    }

    /// loss(x) = 2 − tanh(x − x0) + q·(x − x0)⁺² with x = ln lr: steepest at x0, then a valley
    /// floor, then divergence.
    fn synthetic(lrs: &[f64], x0: f64) -> Vec<f64> {
        lrs.iter()
            .map(|l| {
                let x = l.ln() - x0;
                2.0 - x.tanh() + if x > 2.0 { 3.0 * (x - 2.0).powi(2) } else { 0.0 }
            })
            .collect()
    }

    #[test]
    fn steep_finds_the_steepest_point() {
        let lrs = ramp(100);
        // put the inflection exactly on grid point 37 (and, separately, half-way between 60 and 61)
        let curve = synthetic(&lrs, lrs[37].ln());
        let s = suggest(&lrs, &curve, &curve).unwrap();
        assert_eq!(s.steep, lrs[37]);
        let mid = 0.5 * (lrs[60].ln() + lrs[61].ln());
        let curve = synthetic(&lrs, mid);
        let s = suggest(&lrs, &curve, &curve).unwrap();
        assert!(s.steep == lrs[60] || s.steep == lrs[61], "steep {} not next to the inflection", s.steep);
    }

    #[test]
    fn minimum_is_the_centred_curves_lowest_lr_over_three() {
        let lrs = ramp(100);
        let losses = synthetic(&lrs, (1e-3f64).ln());
        let i = argmin(&losses);
        let s = suggest(&lrs, &losses, &losses).unwrap();
        let c = centred_minimum_index(&centred(&losses));
        assert_eq!(s.minimum, lrs[c] / MINIMUM_DIVISOR);
        // on a smooth curve the centred minimum is the curve's own, moved a few points towards the
        // flat side of this lopsided valley (the steep wall beyond it weighs on its neighbours)
        assert!(c <= i && i - c <= 5, "centred minimum at {c}, raw at {i}");
        // the minimum sits between tanh saturation and the quadratic blow-up: x − x0 ≈ 2
        assert!(lrs[i] > 1e-3 * 2f64.exp() / 2.0 && lrs[i] < 1e-3 * 3f64.exp());
    }

    /// What the centred curve is for: a noisy U whose true lowest point is step 60. The EMA
    /// (β = 0.98) lags it by a dozen steps or more; the centred curve finds it within a few steps
    /// under noise that moves the raw curve's own argmin far away.
    #[test]
    fn the_centred_minimum_has_no_lag_and_shrugs_off_noise() {
        let lrs = ramp(100);
        let u = |i: usize| 1.0 + ((i as f64 - 60.0) / 25.0).powi(2);
        // deterministic "noise" of ±0.3 with one deep outlier far from the minimum
        let raw: Vec<f64> = (0..100)
            .map(|i| u(i) + 0.3 * ((i * 7919 % 13) as f64 / 6.0 - 1.0) - if i == 30 { 2.0 } else { 0.0 })
            .collect();
        assert!(argmin(&raw).abs_diff(60) > 10, "the raw argmin is thrown off");
        let mut f = LrFinder::default();
        raw.iter().zip(&lrs).for_each(|(l, lr)| {
            f.record(*lr, *l);
        });
        assert!(
            argmin(&f.losses[10..]) + 10 >= 70,
            "the EMA's minimum lags: {}",
            argmin(&f.losses[10..]) + 10
        );
        let c = centred_minimum_index(&centred(&raw));
        assert!(c.abs_diff(60) <= 5, "centred minimum at {c}");
        let report = LrFindReport::from_finder(f, false);
        assert_eq!(report.suggestion.unwrap().minimum, lrs[c] / MINIMUM_DIVISOR);
    }

    /// The data-parallel range test's failure, in miniature: the raw loss bottoms out at step 70
    /// of 100 and climbs after it, but the EMA is still falling at the end, so `minimum_or_valley`
    /// used to fall back to `valley`. The report judges its centred raw curve and keeps `minimum`.
    #[test]
    fn the_fallback_is_judged_on_the_raw_curve_not_the_lagging_ema() {
        let lrs = ramp(100);
        let raw: Vec<f64> = (0..100)
            .map(|i| if i <= 70 { 2.4 - 1.4 * i as f64 / 70.0 } else { 1.0 + 0.01 * (i - 70) as f64 })
            .collect();
        let mut f = LrFinder::default();
        raw.iter().zip(&lrs).for_each(|(l, lr)| {
            f.record(*lr, *l);
        });
        assert!(still_falling(&f.lrs, &f.losses), "the EMA is still falling at the end");
        let report = LrFindReport::from_finder(f, false);
        assert!(!report.still_falling());
        let s = report.suggestion.unwrap();
        assert_eq!(report.lr(SuggestionKind::MinimumOrValley), Some(s.minimum));
        // the point the plot rings is the one `minimum` divided
        assert_eq!(report.centred_minimum().map(|(i, _)| lrs[i] / MINIMUM_DIVISOR), Some(s.minimum));
        let c = centred_minimum_index(&centred(&raw));
        assert!(c.abs_diff(70) <= 3, "centred minimum at {c}");
        // a raw curve still falling at its end is still judged so, and a trailing NaN (the
        // divergence stop) still ends it
        let down: Vec<f64> = (0..100).map(|i| 2.4 - 0.01 * i as f64).collect();
        let grid_like = LrFindReport {
            lrs: lrs.clone(),
            losses: down.iter().map(|l| l + 0.1).collect(),
            raw_losses: down.clone(),
            suggestion: None,
            diverged: false,
        };
        assert!(grid_like.still_falling());
        let mut stopped = grid_like.clone();
        stopped.raw_losses[99] = f64::NAN;
        assert!(!stopped.still_falling(), "a divergence stop is a turn up");
        // a grid (losses = raw) is judged on its own points, unsmoothed
        let grid = LrFindReport { losses: down.clone(), ..grid_like };
        assert!(grid.is_grid() && grid.judged_losses() == down);
    }

    #[test]
    fn centred_ignores_non_finite_points_and_keeps_constants() {
        assert_eq!(centred(&[2.0; 7]), vec![2.0; 7]);
        let c = centred(&[1.0, f64::NAN, 1.0, f64::INFINITY, 1.0]);
        assert!(c.iter().all(|x| (x - 1.0).abs() < 1e-12), "{c:?}");
        assert!(centred(&[f64::NAN]).iter().all(|x| x.is_nan()));
        assert!(centred(&[]).is_empty());
    }

    #[test]
    fn valley_is_half_way_down_the_longest_decreasing_run() {
        // flat-ish noise for 20 points, strictly decreasing for 60, then rising for 20
        let mut losses = vec![];
        for i in 0..20 {
            losses.push(5.0 + if i % 2 == 0 { 0.01 } else { -0.01 });
        }
        for i in 0..60 {
            losses.push(4.9 - i as f64 * 0.05);
        }
        for i in 0..20 {
            losses.push(2.0 + i as f64 * 0.2);
        }
        let lrs = ramp(100);
        // the longest decreasing subsequence starts in the noise (one point of it) and ends at index
        // 79; fastai's rule: start = end − length, idx = start + ⌊L/3⌋ + ⌊L/6⌋
        let idx = valley_index(&losses);
        assert!((45..=52).contains(&idx), "valley index {idx}");
        let s = suggest(&lrs, &losses, &losses).unwrap();
        assert_eq!(s.valley, lrs[idx]);
    }

    #[test]
    fn valley_on_a_clean_decreasing_run_matches_the_formula() {
        // strictly decreasing on 10..=40, flat before and rising after
        let losses: Vec<f64> = (0..50)
            .map(|i| match i {
                0..=9 => 10.0,
                10..=40 => 9.0 - (i - 10) as f64 * 0.1,
                _ => 9.0,
            })
            .collect();
        // LDS: 10.0 at i=0, then 9.0 … 6.0 at i = 10..=40 → length 32, ends at 40, start = 40 − 32 = 8
        let sections = 32.0 / 3.0;
        let want = 8 + sections as usize + (sections / 2.0) as usize;
        assert_eq!(valley_index(&losses), want);
    }

    #[test]
    fn trailing_nan_is_ignored_and_short_curves_give_nothing() {
        let lrs = ramp(30);
        let mut losses = synthetic(&lrs, (1e-4f64).ln());
        let clean = suggest(&lrs[..29], &losses[..29], &losses[..29]).unwrap();
        losses[29] = f64::NAN;
        assert_eq!(suggest(&lrs, &losses, &losses).unwrap(), clean);
        assert_eq!(suggest(&lrs[..2], &losses[..2], &losses[..2]), None);
        assert_eq!(suggest(&[], &[], &[]), None);
    }

    #[test]
    fn finder_to_report_on_a_diverging_run() {
        let r = LrRange { start: 1e-5, end: 10.0, steps: 100 };
        let mut f = LrFinder::default();
        let mut diverged = false;
        for i in 0..100 {
            let lr = r.lr_at(i);
            let x = lr.ln() - (1e-2f64).ln();
            let loss = 2.0 - x.tanh() + if x > 1.0 { (x - 1.0).powi(2) * 5.0 } else { 0.0 };
            if f.record(lr, loss) == Verdict::Diverged {
                diverged = true;
                break;
            }
        }
        assert!(diverged, "the quadratic blow-up must trigger the 4× stop");
        let rep = LrFindReport::from_finder(f, diverged);
        assert!(rep.lrs.len() < 100);
        let s = rep.suggestion.unwrap();
        assert!(s.steep > 1e-3 && s.steep < 1e-1, "steep {}", s.steep);
        assert!(s.minimum < s.steep * 10.0);
    }
}
