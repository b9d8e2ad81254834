//! `ensemble.png`: a bar per snapshot and one for the ensemble, each the task's own metric on the
//! evaluation split (`results.eval_split`: accuracy in percent, a language model's perplexity, a
//! regression's RMSPE), with its value written above it. Ensemble members are drawn darker than
//! the snapshots left out. When the job had `[tta]`, each slot holds two bars: the plain
//! prediction's on the left and, lighter with an outline, the one with test-time augmentation on
//! the right (what `predict` and the results table's "with TTA" column deliver); the dashed line
//! is then at the ensemble's TTA value.

use std::path::Path;

use anyhow::{Context, Result};
use cyclotron_core::results::TrainResults;
use plotters::prelude::*;
use plotters::style::text_anchor::{HPos, Pos, VPos};

use super::style::{self, FONT};
use super::NoData;

struct Bar {
    label: String,
    /// Accuracy in percent; NaN when it was not measured.
    accuracy: f64,
    /// The same with test-time augmentation, when the job had `[tta]`.
    tta: Option<f64>,
    colour: RGBColor,
}

/// `c` halfway to white: a TTA bar's fill.
fn lighter(c: RGBColor) -> RGBColor {
    let half = |v: u8| ((u16::from(v) + 255) / 2) as u8;
    RGBColor(half(c.0), half(c.1), half(c.2))
}

/// Draw `results` to the PNG at `path` (see the module doc). Accuracies are fractions in [0, 1]
/// as `cyclotron train` writes them; a set with any value above 1 is taken as already in percent.
/// [`NoData`] when there is neither a snapshot nor an ensemble with a finite accuracy.
pub fn ensemble_png(results: &TrainResults, path: &Path) -> Result<()> {
    let bars = bars(results);
    let finite = bars.iter().flat_map(|b| [Some(b.accuracy), b.tta]).flatten().filter(|a| a.is_finite());
    let Some((lo, hi)) = style::min_max(finite) else {
        let n = results.snapshots.len();
        return Err(
            NoData(format!("ensemble: no finite accuracy among {n} snapshots and the ensemble")).into()
        );
    };
    let (y_lo, y_hi) = accuracy_window(lo, hi);
    let with_tta = bars.iter().any(|b| b.tta.is_some());

    style::ensure_font()?;
    let root = BitMapBackend::new(path, style::ENSEMBLE_SIZE).into_drawing_area();
    root.fill(&WHITE)?;
    let caption = match &results.ensemble {
        Some(e) => format!(
            "Snapshots and their ensemble ({} of {}, selection \"{}\" on the validation split){}",
            e.members.len(),
            results.snapshots.len(),
            e.selection,
            if with_tta { "; lighter: with TTA" } else { "" }
        ),
        None => "Snapshots (no ensemble was evaluated)".to_string(),
    };
    let n = bars.len() as i32;
    let mut chart = ChartBuilder::on(&root)
        .caption(caption, (FONT, 20))
        .margin(20)
        .x_label_area_size(45)
        .y_label_area_size(75)
        // a discrete i32 range includes its end: `0..n - 1` holds the n bars
        .build_cartesian_2d((0..n - 1).into_segmented(), y_lo..y_hi)?;
    let labels: Vec<&str> = bars.iter().map(|b| b.label.as_str()).collect();
    let y_desc = match metric_name(results) {
        "accuracy" => format!("accuracy on the {} split (%)", results.eval_split),
        name => format!("{name} on the {} split (lower is better)", results.eval_split),
    };
    chart
        .configure_mesh()
        .disable_x_mesh()
        .x_labels(bars.len())
        .x_label_formatter(&|v| match v {
            SegmentValue::CenterOf(i) => labels.get(*i as usize).map_or(String::new(), |s| s.to_string()),
            _ => String::new(),
        })
        .y_label_formatter(&|v| format!("{v:.1}"))
        .y_desc(y_desc)
        .label_style(style::label_style())
        .axis_desc_style(style::axis_desc_style())
        .bold_line_style(BLACK.mix(0.12))
        .light_line_style(BLACK.mix(0.04))
        .draw()?;

    // a quarter of each slot is gap; with TTA the rest is split between the two bars
    let (plot_w, _) = chart.plotting_area().dim_in_pixel();
    let slot = plot_w / bars.len() as u32;
    let gap = (slot / 8).max(1);
    let half = slot / 2;
    let value_style = style::label_style().pos(Pos::new(HPos::Center, VPos::Bottom));
    for (i, bar) in (0..).zip(&bars) {
        let centre = || SegmentValue::CenterOf(i);
        // (value, fill, outline, left and right margins in pixels, label offset)
        let mut drawn = vec![];
        if with_tta {
            let shift = (half / 2) as i32 - (gap / 2) as i32;
            drawn.push((bar.accuracy, bar.colour, None, (gap, half), -shift));
            let tta = bar.tta.unwrap_or(f64::NAN);
            drawn.push((tta, lighter(bar.colour), Some(bar.colour), (half, gap), shift));
        } else {
            drawn.push((bar.accuracy, bar.colour, None, (gap, gap), 0));
        }
        for (value, fill, outline, (left, right), dx) in drawn {
            if !value.is_finite() {
                let text = Text::new("n/a", (dx, -4), value_style.clone());
                chart.plotting_area().draw(&(EmptyElement::at((centre(), y_lo)) + text))?;
                continue;
            }
            let corners = || [(SegmentValue::Exact(i), y_lo), (SegmentValue::Exact(i + 1), value)];
            let mut rect = Rectangle::new(corners(), fill.filled());
            rect.set_margin(0, 0, left, right);
            chart.plotting_area().draw(&rect)?;
            if let Some(edge) = outline {
                let mut rect = Rectangle::new(corners(), edge.stroke_width(2));
                rect.set_margin(0, 0, left, right);
                chart.plotting_area().draw(&rect)?;
            }
            let text = Text::new(format!("{value:.2}"), (dx, -4), value_style.clone());
            chart.plotting_area().draw(&(EmptyElement::at((centre(), value)) + text))?;
        }
    }
    let ensemble_bar = &bars[bars.len() - 1];
    let headline = if with_tta { ensemble_bar.tta.unwrap_or(f64::NAN) } else { ensemble_bar.accuracy };
    if let Some(e) = results.ensemble.as_ref().map(|_| headline).filter(|a| a.is_finite()) {
        let level = [(SegmentValue::Exact(0), e), (SegmentValue::Exact(n), e)];
        chart.draw_series(DashedLineSeries::new(level, 8, 5, style::ORANGE.mix(0.8).stroke_width(1)))?;
    }

    // legend: the three bar colours (and the lighter TTA bars)
    let mut legend = vec![
        (style::BLUE_T, "ensemble member"),
        (style::LIGHT_BLUE, "snapshot left out"),
        (style::ORANGE, "ensemble"),
    ];
    if with_tta {
        legend.push((lighter(style::BLUE_T), "right of each: with TTA (lighter)"));
    }
    for (colour, label) in legend {
        chart
            .draw_series(std::iter::empty::<Circle<(SegmentValue<i32>, f64), i32>>())?
            .label(label)
            .legend(style::legend_box(colour));
    }
    chart
        .configure_series_labels()
        .position(SeriesLabelPosition::UpperLeft)
        .margin(12)
        .label_font(style::label_style())
        .background_style(WHITE.mix(0.9))
        .border_style(BLACK.mix(0.4))
        .draw()?;
    root.present().with_context(|| format!("writing {}", path.display()))?;
    Ok(())
}

/// The task's headline metric of the run (`accuracy`, `perplexity`, `rmspe`).
fn metric_name(results: &TrainResults) -> &'static str {
    results.final_model.headline().0
}

fn bars(results: &TrainResults) -> Vec<Bar> {
    let members = results.ensemble.as_ref().map_or(&[][..], |e| &e.members[..]);
    let mut bars: Vec<Bar> = results
        .snapshots
        .iter()
        .map(|s| Bar {
            label: crate::output::snapshot_name(results, s),
            accuracy: s.metrics().headline().1,
            tta: s.tta.map(|m| m.headline().1),
            colour: if members.contains(&s.index) { style::BLUE_T } else { style::LIGHT_BLUE },
        })
        .collect();
    if let Some(e) = &results.ensemble {
        bars.push(Bar {
            label: "ensemble".into(),
            accuracy: e.metrics().headline().1,
            tta: e.tta.map(|m| m.headline().1),
            colour: style::ORANGE,
        });
    }
    let values = || bars.iter().flat_map(|b| [Some(b.accuracy), b.tta]).flatten();
    let fractions = values().all(|a| a.is_nan() || a <= 1.0);
    if fractions && metric_name(results) == "accuracy" {
        for b in &mut bars {
            b.accuracy *= 100.0;
            b.tta = b.tta.map(|t| t * 100.0);
        }
    }
    bars
}

/// The accuracy axis in percent: zoomed on the bars (their differences are what matters), with
/// room above the tallest for its value and the legend, within 0..100 where possible.
fn accuracy_window(lo: f64, hi: f64) -> (f64, f64) {
    let span = (hi - lo).max(1.0);
    let y_lo = (lo - span).max(0.0).floor();
    let y_hi = hi + 0.6 * (hi - y_lo).max(1.0);
    (y_lo, if hi <= 100.0 { y_hi.min(100.0 + 0.25 * (100.0 - y_lo)) } else { y_hi })
}

#[cfg(test)]
mod tests {
    use cyclotron_core::results::{EnsembleResult, Metrics, RunSummary, SnapshotResult, StepHistory};
    use tempfile::TempDir;

    use super::super::test_png::{assert_png, count_colour};
    use super::*;

    fn results(accuracies: &[f64], ensemble: Option<f64>) -> TrainResults {
        let m = Metrics::classification(0.3, 0.9);
        let snapshots = (0..accuracies.len())
            .map(|i| SnapshotResult {
                index: i,
                stage: 5,
                cycle: i as u32,
                epoch: 1 << i,
                loss: 0.3,
                accuracy: accuracies[i],
                perplexity: None,
                rmspe: None,
                valid: m,
                tta: None,
                valid_tta: None,
                run: None,
                so_far: None,
            })
            .collect::<Vec<_>>();
        let members: Vec<usize> = (1..accuracies.len()).collect();
        TrainResults {
            job: "fashion".into(),
            eval_split: "test".into(),
            snapshots,
            ensemble: ensemble.map(|accuracy| EnsembleResult {
                members,
                selection: "greedy".into(),
                loss: 0.2,
                accuracy,
                perplexity: None,
                rmspe: None,
                valid: m,
                tta: None,
                valid_tta: None,
            }),
            final_model: m,
            final_tta: None,
            epochs: vec![],
            lr_finds: vec![],
            history: StepHistory::default(),
            train_seconds: 1.0,
            sweep: None,
            runs: vec![],
            all_snapshots: None,
        }
    }

    #[test]
    fn draws_a_bar_per_snapshot_and_the_ensemble() {
        let dir = TempDir::new().unwrap();
        let path = dir.path().join("ensemble.png");
        ensemble_png(&results(&[0.886, 0.918, 0.931], Some(0.924)), &path).unwrap();
        let img = assert_png(&path, style::ENSEMBLE_SIZE);
        // bars are big blocks: each colour covers thousands of pixels
        for colour in [style::BLUE_T, style::LIGHT_BLUE, style::ORANGE] {
            assert!(count_colour(&img, colour) > 3000, "too little of {colour:?}");
        }
    }

    #[test]
    fn with_tta_each_slot_has_a_lighter_outlined_tta_bar() {
        let dir = TempDir::new().unwrap();
        let path = dir.path().join("ensemble.png");
        let mut r = results(&[0.886, 0.918, 0.931], Some(0.924));
        let tta = |a: f64| Some(Metrics::classification(0.25, a));
        for (s, a) in r.snapshots.iter_mut().zip([0.889, 0.921, 0.936]) {
            s.tta = tta(a);
        }
        r.ensemble.as_mut().unwrap().tta = tta(0.935);
        let b = bars(&r);
        let tenths = |v: f64| (v * 10.0).round() / 10.0;
        let got: Vec<_> = b.iter().map(|b| (tenths(b.accuracy), b.tta.map(tenths))).collect();
        assert_eq!(got, [(88.6, Some(88.9)), (91.8, Some(92.1)), (93.1, Some(93.6)), (92.4, Some(93.5))]);
        ensemble_png(&r, &path).unwrap();
        let img = assert_png(&path, style::ENSEMBLE_SIZE);
        for colour in [style::BLUE_T, style::LIGHT_BLUE, style::ORANGE] {
            assert!(count_colour(&img, colour) > 1500, "too little of {colour:?}");
            assert!(count_colour(&img, lighter(colour)) > 1500, "no TTA bar of {colour:?}");
        }
        // without TTA, no lighter bars
        ensemble_png(&results(&[0.886, 0.918, 0.931], Some(0.924)), &path).unwrap();
        let img = assert_png(&path, style::ENSEMBLE_SIZE);
        assert!(count_colour(&img, lighter(style::ORANGE)) < 100);
    }

    #[test]
    fn accuracies_become_percent_and_members_are_marked() {
        let b = bars(&results(&[0.5, 0.75], Some(0.8)));
        let got: Vec<_> = b.iter().map(|b| (b.label.as_str(), b.accuracy, b.colour)).collect();
        assert!(b.iter().all(|b| b.tta.is_none()));
        assert_eq!(
            got,
            [
                ("snapshot 0", 50.0, style::LIGHT_BLUE),
                ("snapshot 1", 75.0, style::BLUE_T),
                ("ensemble", 80.0, style::ORANGE)
            ]
        );
        // already in percent: left alone
        assert_eq!(bars(&results(&[88.6], None))[0].accuracy, 88.6);
    }

    #[test]
    fn snapshots_of_independent_runs_are_named_by_run_as_in_the_table() {
        let mut r = results(&[0.90, 0.93, 0.91, 0.94], Some(0.95));
        for (s, run) in r.snapshots.iter_mut().zip(["r0", "r0", "r1", "r1"]) {
            s.run = Some(run.into());
        }
        let summary = |run: &str, snapshots: Vec<usize>| RunSummary {
            run: run.into(),
            seed: 1,
            final_model: Metrics::classification(0.3, 0.9),
            ensemble: None,
            snapshots,
            train_seconds: 1.0,
        };
        r.runs = vec![summary("r0", vec![0, 1]), summary("r1", vec![2, 3])];
        let labels: Vec<String> = bars(&r).into_iter().map(|b| b.label).collect();
        assert_eq!(labels, ["run 0 snap 0", "run 0 snap 1", "run 1 snap 0", "run 1 snap 1", "ensemble"]);
    }

    #[test]
    fn the_axis_zooms_on_the_bars() {
        let (lo, hi) = accuracy_window(88.6, 93.1);
        assert!((80.0..=88.6 - 4.0).contains(&lo), "{lo}");
        assert!(hi > 93.1 && hi <= 102.0, "{hi}");
        let (lo, hi) = accuracy_window(50.0, 50.0);
        assert!(lo < 50.0 && hi > 50.0);
        assert_eq!(accuracy_window(0.0, 0.0).0, 0.0);
    }

    #[test]
    fn degenerate_results_fail_cleanly_or_draw() {
        let dir = TempDir::new().unwrap();
        let path = dir.path().join("e.png");
        let err = ensemble_png(&results(&[], None), &path).unwrap_err();
        assert!(err.downcast_ref::<NoData>().is_some(), "{err}");
        assert!(ensemble_png(&results(&[f64::NAN], Some(f64::NAN)), &path).is_err());
        // one snapshot, no ensemble; and a NaN bar beside good ones
        ensemble_png(&results(&[0.9], None), &path).unwrap();
        assert_png(&path, style::ENSEMBLE_SIZE);
        ensemble_png(&results(&[f64::NAN, 0.9], Some(0.91)), &path).unwrap();
        assert_png(&path, style::ENSEMBLE_SIZE);
    }
}
