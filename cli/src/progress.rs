//! Progress bars and log lines from the learner's events: a spinner while data loads and while
//! the last checkpoints upload, a bar for the LR-range test and for every epoch. Bars and
//! spinners draw only when stderr is a terminal; the one-line summaries (LR-range result, each
//! epoch) always print to stderr unless `--quiet`, so logs of non-interactive runs stay useful.

use std::io::IsTerminal;
use std::time::Duration;

use cyclotron_core::lr_range::{LrFindReport, SuggestionKind};
use cyclotron_worker::event::{Event, Observer};
use indicatif::{ProgressBar, ProgressStyle};

pub struct Progress {
    bar: Option<ProgressBar>,
    ema: f64,
    quiet: bool,
    /// Draw bars and spinners (stderr is a terminal and not `--quiet`).
    bars: bool,
    /// The job's suggestion rule, to say which LR a range test suggests.
    suggestion: SuggestionKind,
}

impl Progress {
    pub fn new(quiet: bool) -> Self {
        Progress {
            bar: None,
            ema: f64::NAN,
            quiet,
            bars: !quiet && std::io::stderr().is_terminal(),
            suggestion: SuggestionKind::default(),
        }
    }

    /// Name the LR that rule `kind` (the job's `lr_find.suggestion`) takes from each range test.
    pub fn with_suggestion(mut self, kind: SuggestionKind) -> Self {
        self.suggestion = kind;
        self
    }

    fn spin(&mut self, what: &str) {
        if !self.bars {
            return;
        }
        let bar = ProgressBar::new_spinner();
        bar.set_style(
            ProgressStyle::with_template("{spinner} {msg} ({elapsed})")
                .unwrap_or_else(|_| ProgressStyle::default_spinner()),
        );
        bar.set_message(what.to_string());
        bar.enable_steady_tick(Duration::from_millis(120));
        self.bar = Some(bar);
    }

    fn start(&mut self, len: u64, prefix: String) {
        if !self.bars {
            return;
        }
        let bar = ProgressBar::new(len);
        bar.set_style(
            ProgressStyle::with_template("{prefix:>22} [{bar:30}] {pos}/{len} {msg} ({elapsed}<{eta})")
                .unwrap_or_else(|_| ProgressStyle::default_bar())
                .progress_chars("=> "),
        );
        bar.set_prefix(prefix);
        self.bar = Some(bar);
        self.ema = f64::NAN;
    }

    fn tick(&mut self, loss: f64, lr: f64) {
        self.ema = if self.ema.is_nan() { loss } else { 0.98 * self.ema + 0.02 * loss };
        if let Some(bar) = &self.bar {
            bar.inc(1);
            bar.set_message(format!("loss {:.4} lr {lr:.2e}", self.ema));
        }
    }

    fn finish(&mut self) {
        if let Some(bar) = self.bar.take() {
            bar.finish_and_clear();
        }
    }

    fn line(&self, text: String) {
        if !self.quiet {
            eprintln!("{text}");
        }
    }
}

impl Observer for Progress {
    fn on_event(&mut self, e: &Event) {
        match e {
            Event::LrFindStart { steps } => self.start(u64::from(*steps), "lr_find".into()),
            Event::LrFindStep { lr, loss, .. } => self.tick(*loss, *lr),
            Event::LrFindEnd { report } => {
                self.finish();
                let s = report.suggestion.map_or("no suggestion (diverged at once)".to_string(), |s| {
                    format!(
                        "{}; steep {:.2e}, valley {:.2e}, {} {:.2e}",
                        suggests(report, self.suggestion),
                        s.steep,
                        s.valley,
                        report.minimum_label(),
                        s.minimum
                    )
                });
                self.line(format!(
                    "lr_find: {} steps{}; {s}",
                    report.lrs.len(),
                    if report.diverged { ", stopped on divergence" } else { "" }
                ));
            }
            Event::EpochStart { stage, epoch, epochs, steps } => {
                self.start(*steps, format!("stage {} epoch {}/{}", stage + 1, epoch + 1, epochs))
            }
            Event::Step { loss, lr, .. } => self.tick(*loss, *lr),
            Event::Phase { what, done: false } => self.spin(what),
            Event::Phase { done: true, .. } => self.finish(),
            Event::EpochEnd { record: r } => {
                self.finish();
                self.line(format!(
                    "stage {} epoch {}: train loss {:.4}  valid loss {:.4}  valid {} {}  ({:.1}s)",
                    r.stage + 1,
                    r.epoch,
                    r.train_loss,
                    r.valid.loss,
                    r.valid.headline().0,
                    crate::output::metric_cell(&r.valid),
                    r.seconds
                ));
            }
            Event::Resumed { stage, epoch, step, checkpoint } => self.line(format!(
                "resumed from checkpoint {checkpoint}: stage {} after epoch {epoch}, step {step}",
                stage + 1
            )),
            Event::Snapshot { index, metrics, .. } => self.line(format!(
                "snapshot {index} taken ({} {})",
                metrics.headline().0,
                crate::output::metric_cell(metrics)
            )),
            Event::StageStart { .. } => {}
        }
    }
}

/// `suggests 7.92e-3 (minimum_or_valley: minimum/3)`: the LR rule `kind` takes from `report`
/// (what `lr = "auto"` trains at), and which of its branches gave it.
fn suggests(report: &LrFindReport, kind: SuggestionKind) -> String {
    if report.suggestion.is_some() && report.never_fell() {
        return format!("no suggestion ({})", cyclotron_core::lr_range::NEVER_FELL);
    }
    let (Some(lr), Some(s)) = (report.lr(kind), report.suggestion) else { return String::new() };
    let branch = match kind {
        SuggestionKind::MinimumOrValley if lr == s.minimum => format!(": {}", report.minimum_label()),
        SuggestionKind::MinimumOrValley => ": valley, the loss was still falling at the range's end".into(),
        _ => String::new(),
    };
    format!("suggests {lr:.2e} ({kind}{branch})")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn report(losses: Vec<f64>) -> LrFindReport {
        let lrs: Vec<f64> = (0..losses.len()).map(|i| 1e-5 * 10f64.powf(i as f64 / 10.0)).collect();
        let suggestion =
            Some(cyclotron_core::lr_range::Suggestions { steep: 1e-3, valley: 2e-3, minimum: 3e-3 });
        // a ramp: its raw losses differ from the smoothed ones (equal ones would make it a grid)
        let raw_losses = losses.iter().map(|l| l + 0.01).collect();
        LrFindReport { lrs, raw_losses, losses, suggestion, diverged: false }
    }

    #[test]
    fn the_line_names_the_lr_the_rule_takes_and_why() {
        // a curve that turned up after its minimum: minimum/3
        let u: Vec<f64> = (0..60).map(|i| 1.0 + ((i as f64 - 30.0) / 10.0).powi(2)).collect();
        assert_eq!(
            suggests(&report(u.clone()), SuggestionKind::MinimumOrValley),
            "suggests 3.00e-3 (minimum_or_valley: minimum/3)"
        );
        assert_eq!(suggests(&report(u), SuggestionKind::Valley), "suggests 2.00e-3 (valley)");
        // still falling at the range's end: valley
        let falling: Vec<f64> = (0..60).map(|i| 3.0 - i as f64 * 0.04).collect();
        assert_eq!(
            suggests(&report(falling), SuggestionKind::MinimumOrValley),
            "suggests 2.00e-3 (minimum_or_valley: valley, the loss was still falling at the range's end)"
        );
        let mut none = report(vec![1.0; 10]);
        none.suggestion = None;
        assert_eq!(suggests(&none, SuggestionKind::MinimumOrValley), "");
    }

    #[test]
    fn nothing_draws_when_stderr_is_not_a_terminal_or_quiet() {
        let mut quiet = Progress::new(true);
        quiet.on_event(&Event::Phase { what: "loading data", done: false });
        assert!(quiet.bar.is_none());
        if std::io::stderr().is_terminal() {
            return; // run by hand in a terminal: bars are expected
        }
        let mut p = Progress::new(false);
        for e in [
            Event::Phase { what: "loading data", done: false },
            Event::LrFindStart { steps: 10 },
            Event::EpochStart { stage: 0, epoch: 0, epochs: 1, steps: 5 },
        ] {
            p.on_event(&e);
            assert!(p.bar.is_none(), "a bar was created for {e:?} without a terminal");
        }
    }
}
