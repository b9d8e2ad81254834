//! PNG plots of a run: the LR-range test (`lr_find.png`), the training curves (`training.png`),
//! the snapshot ensemble (`ensemble.png`) and a parallel LR sweep (`sweep.png`), drawn with
//! `plotters` on a bitmap.
//!
//! Text needs a TrueType font registered with plotters' `ab_glyph` backend; it is read at run
//! time from `style::FONT_PATH` (Debian `fonts-dejavu-core`, installed by `make setup`) and
//! registered once per process. Every plot function returns [`NoData`] when its input holds
//! nothing that can be drawn (no points, only NaN), so [`plot_run_dir`] can skip that plot and
//! draw the others.

mod embeddings;
mod ensemble;
mod lr_find;
mod style;
mod sweep;
mod training;
mod validation;

use std::fmt;
use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};
use cyclotron_core::lr_range::LrFindReport;
use cyclotron_core::results::TrainResults;
use serde::de::DeserializeOwned;

pub use embeddings::embeddings_png;
pub use ensemble::ensemble_png;
pub use lr_find::lr_find_png;
pub use sweep::sweep_png;
pub use training::training_png;
pub use validation::validation_png;

/// The input of a plot holds nothing drawable; the message says what was missing.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NoData(pub String);

impl fmt::Display for NoData {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "nothing to plot: {}", self.0)
    }
}

impl std::error::Error for NoData {}

/// Regenerate every plot that `dir` has data for:
/// - `lr_find.json` ([`LrFindReport`]) → `lr_find.png`;
/// - `results.json` ([`TrainResults`]) → `training.png`, `ensemble.png`, `sweep.png` (when the
///   cluster ran a parallel LR sweep) and one `lr_find-stage<k>.png` per LR-range test of the job.
///
/// A plot whose data is empty is skipped with a warning; returns the paths written. Fails when
/// neither JSON file exists, when one does not parse, when no plot at all could be drawn, or on
/// any drawing or I/O error.
pub fn plot_run_dir(dir: &Path) -> Result<Vec<PathBuf>> {
    let lr_json = dir.join("lr_find.json");
    let results_json = dir.join("results.json");
    if !lr_json.is_file() && !results_json.is_file() {
        bail!(
            "nothing to plot in {}: neither lr_find.json nor results.json is there \
             (they are written by `cyclotron lr-find` and `cyclotron train`)",
            dir.display()
        );
    }
    // fail once, clearly, rather than once per plot
    style::ensure_font()?;

    let mut out = Outcome::default();
    if lr_json.is_file() {
        let report: LrFindReport = read_json(&lr_json)?;
        out.attempt(dir.join("lr_find.png"), |p| lr_find_png(&report, p))?;
    }
    if results_json.is_file() {
        let results: TrainResults = read_json(&results_json)?;
        let title =
            which_run(&results).map_or_else(|| "Training".to_string(), |run| format!("Training ({run})"));
        out.attempt(dir.join("training.png"), |p| training_png(&results.history, &title, p))?;
        out.attempt(dir.join("validation.png"), |p| validation_png(&results, p))?;
        out.attempt(dir.join("ensemble.png"), |p| ensemble_png(&results, p))?;
        if let Some(sweep) = &results.sweep {
            out.attempt(dir.join("sweep.png"), |p| sweep_png(sweep, p))?;
        }
        for (stage, report) in &results.lr_finds {
            out.attempt(dir.join(format!("lr_find-stage{stage}.png")), |p| lr_find_png(report, p))?;
        }
    }
    if out.written.is_empty() {
        bail!("no plot could be drawn from {}: {}", dir.display(), out.skipped.join("; "));
    }
    Ok(out.written)
}

#[derive(Default)]
struct Outcome {
    written: Vec<PathBuf>,
    skipped: Vec<String>,
}

impl Outcome {
    /// Draw one plot: a [`NoData`] error skips it (with a warning), any other error is returned.
    fn attempt(&mut self, path: PathBuf, draw: impl FnOnce(&Path) -> Result<()>) -> Result<()> {
        match draw(&path) {
            Ok(()) => self.written.push(path),
            Err(e) => match e.downcast_ref::<NoData>() {
                Some(no_data) => {
                    tracing::warn!(plot = %path.display(), "skipped: {no_data}");
                    self.skipped.push(format!("{}: {no_data}", path.display()));
                }
                None => return Err(e.context(format!("drawing {}", path.display()))),
            },
        }
        Ok(())
    }
}

/// For the results of several independent runs (`ensemble.runs`), whose step history and epochs
/// are the first run's: which run the training and validation plots show (`run 0 of 2, seed 42`).
pub(crate) fn which_run(results: &TrainResults) -> Option<String> {
    match &results.runs[..] {
        [first, _, ..] => Some(format!("run 0 of {}, seed {}", results.runs.len(), first.seed)),
        _ => None,
    }
}

fn read_json<T: DeserializeOwned>(path: &Path) -> Result<T> {
    let text = std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
    serde_json::from_str(&text).with_context(|| format!("parsing {}", path.display()))
}

#[cfg(test)]
pub(crate) mod test_png {
    //! Checks shared by the plot tests: the file is a PNG of the right size that shows something.
    use std::collections::HashSet;
    use std::path::Path;

    use plotters::style::RGBColor;

    /// Decode `path`, check its size and that it is not blank; returns the decoded image.
    pub fn assert_png(path: &Path, size: (u32, u32)) -> image::RgbaImage {
        assert!(path.is_file(), "{} was not written", path.display());
        let img = image::open(path)
            .unwrap_or_else(|e| panic!("{} does not decode: {e}", path.display()))
            .to_rgba8();
        assert_eq!(img.dimensions(), size, "{}", path.display());
        let colours: HashSet<[u8; 4]> = img.pixels().map(|p| p.0).collect();
        assert!(colours.len() > 16, "{} looks blank: {} distinct colours", path.display(), colours.len());
        img
    }

    /// Number of pixels within a small distance of `colour` (anti-aliased edges excluded).
    pub fn count_colour(img: &image::RgbaImage, colour: RGBColor) -> usize {
        let RGBColor(r, g, b) = colour;
        img.pixels()
            .filter(|p| {
                let [pr, pg, pb, _] = p.0;
                pr.abs_diff(r) <= 12 && pg.abs_diff(g) <= 12 && pb.abs_diff(b) <= 12
            })
            .count()
    }
}

#[cfg(test)]
mod tests {
    use cyclotron_core::lr_range::{LrFinder, LrRange, Verdict};
    use cyclotron_core::results::{EnsembleResult, Metrics, SnapshotResult, StepHistory};
    use tempfile::TempDir;

    use super::test_png::assert_png;
    use super::*;

    fn report() -> LrFindReport {
        let r = LrRange { start: 1e-6, end: 10.0, steps: 100 };
        let mut f = LrFinder::default();
        let mut diverged = false;
        for i in 0..100 {
            let lr = r.lr_at(i);
            let x = (lr / 1e-2).ln();
            if f.record(lr, 2.0 - x.tanh() + if x > 1.0 { 4.0 * (x - 1.0).powi(2) } else { 0.0 })
                == Verdict::Diverged
            {
                diverged = true;
                break;
            }
        }
        LrFindReport::from_finder(f, diverged)
    }

    fn results(with_history: bool) -> TrainResults {
        let m = Metrics::classification(0.3, 0.9);
        let snapshot = |index: usize, accuracy: f64| SnapshotResult {
            index,
            stage: 1,
            cycle: index as u32,
            epoch: index as u32 + 1,
            loss: 0.3,
            accuracy,
            perplexity: None,
            rmspe: None,
            valid: m,
            tta: None,
            valid_tta: None,
            run: None,
            so_far: None,
        };
        let mut history = StepHistory::default();
        if with_history {
            for s in 0..300u64 {
                history.steps.push(s);
                history.losses.push(2.0 / (1.0 + s as f64 / 30.0));
                history.lrs.push(0.01);
            }
            history.stage_starts = vec![0, 100];
            history.cycle_ends = vec![(200, true), (300, true)];
        }
        TrainResults {
            job: "t".into(),
            eval_split: "test".into(),
            snapshots: vec![snapshot(0, 0.886), snapshot(1, 0.918)],
            ensemble: Some(EnsembleResult {
                members: vec![0, 1],
                selection: "last".into(),
                loss: 0.25,
                accuracy: 0.924,
                perplexity: None,
                rmspe: None,
                valid: m,
                tta: None,
                valid_tta: None,
            }),
            final_model: m,
            final_tta: None,
            epochs: vec![],
            lr_finds: vec![(2, report())],
            history,
            train_seconds: 1.0,
            sweep: None,
            runs: vec![],
            all_snapshots: None,
        }
    }

    fn write_json(path: &Path, value: &impl serde::Serialize) {
        std::fs::write(path, serde_json::to_string(value).unwrap()).unwrap();
    }

    #[test]
    fn run_dir_draws_every_plot_it_has_data_for() {
        let dir = TempDir::new().unwrap();
        write_json(&dir.path().join("lr_find.json"), &report());
        write_json(&dir.path().join("results.json"), &results(true));
        let written = plot_run_dir(dir.path()).unwrap();
        let names: Vec<_> = written.iter().map(|p| p.file_name().unwrap().to_str().unwrap()).collect();
        assert_eq!(names, ["lr_find.png", "training.png", "ensemble.png", "lr_find-stage2.png"]);
        for p in &written {
            let size = match p.file_name().unwrap().to_str().unwrap() {
                "training.png" => style::TRAINING_SIZE,
                "ensemble.png" => style::ENSEMBLE_SIZE,
                _ => style::LR_FIND_SIZE,
            };
            assert_png(p, size);
        }
    }

    #[test]
    fn plots_of_several_runs_say_whose_history_they_draw() {
        let mut r = results(true);
        assert_eq!(which_run(&r), None, "one run: nothing to say");
        let summary = |seed: u64| cyclotron_core::results::RunSummary {
            run: format!("r{seed}"),
            seed,
            final_model: Metrics::classification(0.3, 0.9),
            ensemble: None,
            snapshots: vec![],
            train_seconds: 1.0,
        };
        r.runs = vec![summary(42), summary(43)];
        assert_eq!(which_run(&r).as_deref(), Some("run 0 of 2, seed 42"));
        let dir = TempDir::new().unwrap();
        std::fs::write(dir.path().join("results.json"), serde_json::to_vec(&r).unwrap()).unwrap();
        let drawn = plot_run_dir(dir.path()).unwrap();
        assert!(drawn.iter().any(|p| p.ends_with("training.png")), "{drawn:?}");
    }

    #[test]
    fn run_dir_skips_a_plot_without_data() {
        let dir = TempDir::new().unwrap();
        write_json(&dir.path().join("results.json"), &results(false));
        let written = plot_run_dir(dir.path()).unwrap();
        let names: Vec<_> = written.iter().map(|p| p.file_name().unwrap().to_str().unwrap()).collect();
        assert_eq!(names, ["ensemble.png", "lr_find-stage2.png"]);
        assert!(!dir.path().join("training.png").exists());
    }

    #[test]
    fn run_dir_without_data_files_says_what_is_missing() {
        let dir = TempDir::new().unwrap();
        let err = plot_run_dir(dir.path()).unwrap_err().to_string();
        assert!(err.contains("neither lr_find.json nor results.json"), "{err}");
    }

    #[test]
    fn run_dir_with_a_broken_json_names_the_file() {
        let dir = TempDir::new().unwrap();
        std::fs::write(dir.path().join("lr_find.json"), "{not json").unwrap();
        let err = format!("{:#}", plot_run_dir(dir.path()).unwrap_err());
        assert!(err.contains("lr_find.json"), "{err}");
    }

    #[test]
    fn run_dir_with_nothing_drawable_fails_with_the_reasons() {
        let dir = TempDir::new().unwrap();
        let empty = LrFindReport {
            lrs: vec![],
            losses: vec![],
            raw_losses: vec![],
            suggestion: None,
            diverged: false,
        };
        write_json(&dir.path().join("lr_find.json"), &empty);
        let err = plot_run_dir(dir.path()).unwrap_err().to_string();
        assert!(err.contains("no plot could be drawn") && err.contains("lr_find.png"), "{err}");
    }
}
