//! What the leader knows about running tasks beyond the committed log: every rank's step
//! summaries (`steps` progress reports, about one a second per rank), the recent loss and
//! learning rate per step, and the straggler rule over them. Leader memory, like leases: it is
//! rebuilt from the next reports after a failover, and never committed (a second's step times of
//! every rank would swamp the log). Only the *naming* of a straggler is committed
//! ([`crate::state::Command::NameStraggler`]), so `watch`, `status` and every replica see it.
//!
//! ## The straggler rule
//! In synchronous data-parallel training every rank takes the same number of steps, so the slow
//! rank does not show a longer step: its peers wait for it inside gradient averaging. What tells
//! it apart is the time a rank is *busy* per step, not waiting for its peers:
//! `busy = step − comm + data` (the step minus its gradient averaging, plus its wait for the next
//! batch). Over each rank's last [`WINDOW`] summaries (weighted by steps), with at least
//! [`MIN_SUMMARIES`] of them from every rank of a group of two or more:
//! - rank `r` is the straggler when its busy time is the group's largest, more than
//!   [`RATIO`] × the median of the others' and more than [`MIN_EXCESS_S`] above it; once named it
//!   stays named while it is the largest and above [`RELEASE_RATIO`] × the others' (hysteresis:
//!   a rank hovering around the threshold is not named and unnamed every second);
//! - it is **data-bound** when at least half of that excess is its wait for batches, else
//!   **compute-bound**;
//! - the summary also gives the others' mean wait in gradient averaging, which is what the slow
//!   rank costs them.

use std::collections::{BTreeMap, HashMap, VecDeque};

use serde::{Deserialize, Serialize};

/// Summaries per rank the rule looks at (about ten seconds).
pub const WINDOW: usize = 10;
/// Summaries every rank must have sent before a straggler is named.
pub const MIN_SUMMARIES: usize = 3;
/// How much busier than the others' median a straggler is.
pub const RATIO: f64 = 1.25;
/// And by at least this much per step (seconds): jitter of a few ms is nobody's fault.
pub const MIN_EXCESS_S: f64 = 0.005;
/// A named straggler stays named while more than this much busier than the others' median.
pub const RELEASE_RATIO: f64 = 1.1;
/// Loss / LR points kept per task for the live charts.
pub const POINTS: usize = 4096;

/// One `steps` progress report (see `cyclotron_worker::agent::report`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StepReport {
    pub stage: u32,
    /// Global step reached.
    pub step: u64,
    /// Steps the summary covers.
    pub steps: u32,
    /// Their mean loss (`null`: not finite).
    #[serde(with = "cyclotron_core::serde_nan")]
    pub loss: f64,
    #[serde(with = "cyclotron_core::serde_nan")]
    pub lr: f64,
    pub step_seconds: f64,
    pub data_seconds: f64,
    pub comm_seconds: f64,
}

impl StepReport {
    /// Parse a `{"type":"steps",…}` progress report; `None` for any other type.
    pub fn from_progress(v: &serde_json::Value) -> Option<Result<StepReport, serde_json::Error>> {
        if v.get("type").and_then(|t| t.as_str()) != Some("steps") {
            return None;
        }
        let mut v = v.clone();
        v.as_object_mut().map(|o| o.remove("type"));
        Some(serde_json::from_value(v))
    }

    /// Whether the numbers are ones a training rank could send.
    pub fn is_sane(&self) -> bool {
        let t = [self.step_seconds, self.data_seconds, self.comm_seconds];
        self.steps > 0 && t.iter().all(|x| x.is_finite() && *x >= 0.0 && *x < 86_400.0)
    }
}

/// A rank's recent summaries.
#[derive(Debug, Clone, Default)]
pub struct RankLive {
    pub worker: String,
    pub summaries: VecDeque<StepReport>,
    /// Leader clock (ms since the epoch) of the last summary.
    pub at_ms: u64,
}

/// A rank's mean seconds per step over its window.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct RankStats {
    pub rank: u32,
    pub worker: String,
    pub step: u64,
    pub step_s: f64,
    pub data_s: f64,
    pub comm_s: f64,
    /// `step − comm + data`: the time it does not spend waiting for its peers.
    pub busy_s: f64,
    pub summaries: usize,
    pub at_ms: u64,
}

impl RankLive {
    fn stats(&self, rank: u32) -> RankStats {
        let n: f64 = self.summaries.iter().map(|s| f64::from(s.steps)).sum::<f64>().max(1.0);
        let mean = |f: fn(&StepReport) -> f64| {
            self.summaries.iter().map(|s| f(s) * f64::from(s.steps)).sum::<f64>() / n
        };
        let (step_s, data_s, comm_s) =
            (mean(|s| s.step_seconds), mean(|s| s.data_seconds), mean(|s| s.comm_seconds));
        RankStats {
            rank,
            worker: self.worker.clone(),
            step: self.summaries.back().map_or(0, |s| s.step),
            step_s,
            data_s,
            comm_s,
            busy_s: (step_s - comm_s).max(0.0) + data_s,
            summaries: self.summaries.len(),
            at_ms: self.at_ms,
        }
    }
}

/// Which way a straggler is slow.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Bound {
    Compute,
    Data,
}

impl Bound {
    pub fn name(self) -> &'static str {
        match self {
            Bound::Compute => "compute",
            Bound::Data => "data",
        }
    }
}

/// The rank the rule names, and why.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Straggler {
    pub rank: u32,
    pub worker: String,
    pub bound: Bound,
    /// Its busy seconds per step, and the median of the others'.
    pub busy_s: f64,
    pub others_busy_s: f64,
    /// The others' mean wait in gradient averaging per step.
    pub others_comm_s: f64,
}

impl Straggler {
    /// One line for `status`, `watch` and the web view.
    pub fn summary(&self) -> String {
        format!(
            "rank {} ({}) is the straggler, {}-bound: busy {:.0} ms per step vs {:.0} ms for the others, who wait {:.0} ms per step for it in gradient averaging",
            self.rank,
            self.worker,
            self.bound.name(),
            self.busy_s * 1e3,
            self.others_busy_s * 1e3,
            self.others_comm_s * 1e3
        )
    }
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    match v.len() {
        0 => f64::NAN,
        n if n % 2 == 1 => v[n / 2],
        n => 0.5 * (v[n / 2 - 1] + v[n / 2]),
    }
}

/// The rule of the module docs over one group's ranks, with nobody named before.
pub fn straggler(ranks: &[RankStats]) -> Option<Straggler> {
    straggler_after(ranks, None)
}

/// The rule of the module docs over one group's ranks; `named`: the rank named now, if any.
pub fn straggler_after(ranks: &[RankStats], named: Option<u32>) -> Option<Straggler> {
    if ranks.len() < 2 || ranks.iter().any(|r| r.summaries < MIN_SUMMARIES) {
        return None;
    }
    let slow = ranks.iter().max_by(|a, b| a.busy_s.total_cmp(&b.busy_s))?;
    let others: Vec<&RankStats> = ranks.iter().filter(|r| r.rank != slow.rank).collect();
    let others_busy = median(others.iter().map(|r| r.busy_s).collect());
    let excess = slow.busy_s - others_busy;
    let ratio = if named == Some(slow.rank) { RELEASE_RATIO } else { RATIO };
    if !(slow.busy_s > ratio * others_busy && excess > MIN_EXCESS_S) {
        return None;
    }
    let data_excess = slow.data_s - median(others.iter().map(|r| r.data_s).collect());
    Some(Straggler {
        rank: slow.rank,
        worker: slow.worker.clone(),
        bound: if data_excess >= 0.5 * excess { Bound::Data } else { Bound::Compute },
        busy_s: slow.busy_s,
        others_busy_s: others_busy,
        others_comm_s: others.iter().map(|r| r.comm_s).sum::<f64>() / others.len() as f64,
    })
}

/// A loss / learning-rate point of the live charts (rank 0's summaries).
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct Point {
    pub stage: u32,
    pub step: u64,
    pub loss: f64,
    pub lr: f64,
}

/// One running task's live view.
#[derive(Debug, Clone, Default)]
pub struct TaskLive {
    pub generation: u64,
    pub ranks: BTreeMap<u32, RankLive>,
    pub points: VecDeque<Point>,
}

impl TaskLive {
    pub fn stats(&self) -> Vec<RankStats> {
        self.ranks.iter().map(|(r, l)| l.stats(*r)).collect()
    }

    pub fn straggler(&self) -> Option<Straggler> {
        straggler(&self.stats())
    }

    /// The rule, given the rank named now (hysteresis).
    pub fn straggler_after(&self, named: Option<u32>) -> Option<Straggler> {
        straggler_after(&self.stats(), named)
    }
}

/// Who sent a step summary: rank `rank` (worker `worker`) of `job` task `task` at `generation`.
#[derive(Debug, Clone, Copy)]
pub struct Sender<'a> {
    pub job: &'a str,
    pub task: usize,
    pub generation: u64,
    pub rank: u32,
    pub worker: &'a str,
}

/// Every job's running tasks, by (job, task).
#[derive(Debug, Default)]
pub struct Live {
    tasks: HashMap<(String, usize), TaskLive>,
    /// Bumped on every change (the web view's live stream sends when it moves).
    pub version: u64,
}

impl Live {
    /// Record a rank's summary; a newer generation starts the ranks over (the group changed),
    /// keeping the chart points.
    pub fn record(&mut self, from: &Sender<'_>, report: StepReport, now_ms: u64) {
        let Sender { job, task, generation, rank, worker } = *from;
        let t = self.tasks.entry((job.to_string(), task)).or_default();
        if generation < t.generation {
            return; // a late report of a torn-down group
        }
        if generation > t.generation {
            t.ranks.clear();
            t.generation = generation;
        }
        if rank == 0 {
            // a resumed run steps back to its checkpoint: the chart follows
            while t.points.back().is_some_and(|p| p.step >= report.step) {
                t.points.pop_back();
            }
            t.points.push_back(Point {
                stage: report.stage,
                step: report.step,
                loss: report.loss,
                lr: report.lr,
            });
            if t.points.len() > POINTS {
                t.points.pop_front();
            }
        }
        let r = t.ranks.entry(rank).or_default();
        r.worker = worker.to_string();
        r.at_ms = now_ms;
        r.summaries.push_back(report);
        if r.summaries.len() > WINDOW {
            r.summaries.pop_front();
        }
        self.version += 1;
    }

    pub fn task(&self, job: &str, task: usize) -> Option<&TaskLive> {
        self.tasks.get(&(job.to_string(), task))
    }

    /// The tasks of `job` with live data, in task order.
    pub fn tasks_of(&self, job: &str) -> Vec<(usize, &TaskLive)> {
        let mut v: Vec<(usize, &TaskLive)> =
            self.tasks.iter().filter(|((j, _), _)| j == job).map(|((_, t), l)| (*t, l)).collect();
        v.sort_by_key(|(t, _)| *t);
        v
    }

    /// Forget jobs that no longer exist (bounded memory after many jobs).
    pub fn retain_jobs(&mut self, keep: impl Fn(&str) -> bool) {
        let before = self.tasks.len();
        self.tasks.retain(|(j, _), _| keep(j));
        if self.tasks.len() != before {
            self.version += 1;
        }
    }

    /// How many tasks it holds.
    pub fn len(&self) -> usize {
        self.tasks.len()
    }

    pub fn is_empty(&self) -> bool {
        self.tasks.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn report(step: u64, step_s: f64, data_s: f64, comm_s: f64) -> StepReport {
        StepReport {
            stage: 0,
            step,
            steps: 4,
            loss: 1.0,
            lr: 0.1,
            step_seconds: step_s,
            data_seconds: data_s,
            comm_seconds: comm_s,
        }
    }

    /// Ranks' reports over `n` summaries: (step, data, comm) seconds per rank.
    fn live(per_rank: &[(f64, f64, f64)], n: usize) -> TaskLive {
        let mut l = Live::default();
        for i in 0..n {
            for (rank, &(s, d, c)) in per_rank.iter().enumerate() {
                let worker = format!("w{rank}");
                let from = Sender { job: "j", task: 0, generation: 1, rank: rank as u32, worker: &worker };
                l.record(&from, report(4 * i as u64, s, d, c), 0);
            }
        }
        l.task("j", 0).unwrap().clone()
    }

    #[test]
    fn a_rank_that_computes_longer_is_named_compute_bound() {
        // rank 1 sleeps 200 ms per step; rank 0 waits for it in gradient averaging
        let t = live(&[(0.25, 0.001, 0.2), (0.25, 0.001, 0.001)], 5);
        let s = t.straggler().expect("rank 1 is the straggler");
        assert_eq!((s.rank, s.worker.as_str(), s.bound), (1, "w1", Bound::Compute));
        assert!((s.busy_s - 0.25).abs() < 1e-9 && (s.others_busy_s - 0.051).abs() < 1e-9, "{s:?}");
        assert!((s.others_comm_s - 0.2).abs() < 1e-9);
        let text = s.summary();
        assert!(text.contains("rank 1 (w1)") && text.contains("compute-bound"), "{text}");
    }

    #[test]
    fn a_named_rank_stays_named_until_it_is_clearly_back_with_the_others() {
        // 20% busier: not enough to be named, enough to stay named
        let t = live(&[(0.12, 0.0, 0.02), (0.12, 0.0, 0.0)], 5);
        assert_eq!(t.straggler(), None);
        assert_eq!(t.straggler_after(Some(1)).map(|s| s.rank), Some(1));
        // 5% busier: released
        let t = live(&[(0.105, 0.0, 0.005), (0.105, 0.0, 0.0)], 5);
        assert_eq!(t.straggler_after(Some(1)), None);
        // another rank named before does not lower the bar for this one
        let t = live(&[(0.12, 0.0, 0.02), (0.12, 0.0, 0.0)], 5);
        assert_eq!(t.straggler_after(Some(0)), None);
    }

    #[test]
    fn a_rank_waiting_for_its_batches_is_named_data_bound() {
        let t = live(&[(0.06, 0.01, 0.03), (0.06, 0.2, 0.03), (0.06, 0.01, 0.03)], 4);
        let s = t.straggler().expect("rank 1 waits for data");
        assert_eq!((s.rank, s.bound), (1, Bound::Data));
    }

    #[test]
    fn even_ranks_small_gaps_and_short_histories_name_nobody() {
        assert_eq!(live(&[(0.1, 0.0, 0.01), (0.1, 0.0, 0.012)], 5).straggler(), None, "balanced");
        // 30% busier but only 3 ms: jitter
        assert_eq!(live(&[(0.013, 0.0, 0.003), (0.013, 0.0, 0.0)], 5).straggler(), None, "tiny gap");
        assert_eq!(live(&[(0.25, 0.0, 0.2), (0.25, 0.0, 0.0)], 2).straggler(), None, "too few summaries");
        assert_eq!(live(&[(0.25, 0.0, 0.0)], 5).straggler(), None, "a group of one");
    }

    #[test]
    fn a_new_generation_starts_the_ranks_over_and_late_reports_are_dropped() {
        let mut l = Live::default();
        for i in 0..5 {
            l.record(
                &Sender { job: "j", task: 0, generation: 1, rank: 0, worker: "w0" },
                report(i, 0.25, 0.0, 0.2),
                0,
            );
            l.record(
                &Sender { job: "j", task: 0, generation: 1, rank: 1, worker: "w1" },
                report(i, 0.25, 0.0, 0.0),
                0,
            );
        }
        assert!(l.task("j", 0).unwrap().straggler().is_some());
        l.record(
            &Sender { job: "j", task: 0, generation: 2, rank: 0, worker: "w0" },
            report(3, 0.1, 0.0, 0.0),
            0,
        );
        let t = l.task("j", 0).unwrap();
        assert_eq!((t.generation, t.ranks.len()), (2, 1));
        assert_eq!(t.straggler(), None);
        // the resumed run went back to step 3: the chart drops the points past it
        assert_eq!(t.points.back().map(|p| p.step), Some(3));
        assert_eq!(t.points.len(), 4, "{:?}", t.points);
        let v = l.version;
        l.record(
            &Sender { job: "j", task: 0, generation: 1, rank: 1, worker: "w1" },
            report(9, 0.25, 0.0, 0.0),
            0,
        );
        assert_eq!(l.version, v, "generation 1 is over");
        l.retain_jobs(|j| j != "j");
        assert!(l.is_empty());
    }

    #[test]
    fn step_reports_parse_from_progress_and_insane_numbers_are_told_apart() {
        let v: serde_json::Value = serde_json::from_str(
            r#"{"type":"steps","stage":0,"step":10,"steps":5,"loss":null,"lr":0.1,"step_seconds":0.2,"data_seconds":0.0,"comm_seconds":0.1}"#,
        )
        .unwrap();
        let r = StepReport::from_progress(&v).unwrap().unwrap();
        assert!(r.loss.is_nan() && r.is_sane());
        let epoch: serde_json::Value = serde_json::from_str(r#"{"type":"epoch"}"#).unwrap();
        assert!(StepReport::from_progress(&epoch).is_none());
        let bad: serde_json::Value = serde_json::from_str(r#"{"type":"steps","stage":0}"#).unwrap();
        assert!(StepReport::from_progress(&bad).unwrap().is_err());
        assert!(!StepReport { step_seconds: -1.0, ..r.clone() }.is_sane());
        assert!(!StepReport { comm_seconds: f64::INFINITY, ..r.clone() }.is_sane());
        assert!(!StepReport { steps: 0, ..r }.is_sane());
    }
}
