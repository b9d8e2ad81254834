//! `lr_find.png`: the smoothed loss of an LR-range test against the learning rate on a log axis,
//! the raw loss faint behind it, its centred (lag-free) smoothing that `minimum` reads, and a marker
//! for each suggestion; a sweep's merged grid is drawn as its points.

use std::path::Path;

use anyhow::{Context, Result};
use cyclotron_core::lr_range::LrFindReport;
use plotters::prelude::*;

use super::style::{self, clip_to_band};
use super::NoData;

/// Draw `report` to the PNG at `path` (see the module doc). [`NoData`] when no step has a finite,
/// positive learning rate and a finite smoothed loss.
pub fn lr_find_png(report: &LrFindReport, path: &Path) -> Result<()> {
    let smooth = finite_points(&report.lrs, &report.losses);
    if smooth.is_empty() {
        let steps = report.lrs.len();
        return Err(NoData(format!(
            "lr_find: none of its {steps} steps has a finite learning rate and loss"
        ))
        .into());
    }
    let raw = finite_points(&report.lrs, &report.raw_losses);
    // a grid merged by the sweep has one loss per point, no smoothing: raw and smoothed are equal
    let grid = report.is_grid();
    // a ramp's centred curve, which `minimum` reads: the loss axis shows its lowest point too
    let centred =
        if grid || raw.len() < 2 { vec![] } else { finite_points(&report.lrs, &report.judged_losses()) };
    let (x_lo, x_hi) = lr_window(&smooth);
    let (y_lo, y_hi) = if centred.is_empty() {
        loss_window(&smooth)
    } else {
        let ((a, b), (c, d)) = (loss_window(&smooth), loss_window(&centred));
        (a.min(c), b.max(d))
    };

    style::ensure_font()?;
    let root = BitMapBackend::new(path, style::LR_FIND_SIZE).into_drawing_area();
    root.fill(&WHITE)?;
    let caption = match (grid, report.diverged) {
        (true, _) => "LR grid sweep (one point per LR)",
        (false, true) => "LR range test (stopped when the loss diverged)",
        (false, false) => "LR range test",
    };
    let mut chart = style::lr_chart(&root, caption, (x_lo, x_hi), (y_lo, y_hi), "loss")?;

    if raw.len() > 1 && !grid {
        let faint = style::GREY.mix(0.45).stroke_width(1);
        let runs = clip_to_band(&raw, (y_lo, y_hi), true);
        chart
            .draw_series(runs.into_iter().map(|run| PathElement::new(run, faint)))?
            .label("raw loss")
            .legend(style::legend_line(faint));
    }
    let line = style::BLUE_T.stroke_width(2);
    let runs = clip_to_band(&smooth, (y_lo, y_hi), true);
    chart
        .draw_series(runs.into_iter().map(|run| PathElement::new(run, line)))?
        .label(if grid { "loss after each point's steps" } else { "smoothed loss (EMA, β = 0.98)" })
        .legend(style::legend_line(line));
    if let Some((i, loss)) = report.centred_minimum().filter(|_| !centred.is_empty()) {
        let lowest = (report.lrs[i], loss);
        let thin = style::PURPLE.stroke_width(2);
        let runs = clip_to_band(&centred, (y_lo, y_hi), true);
        chart
            .draw_series(runs.into_iter().map(|run| PathElement::new(run, thin)))?
            .label("centred smoothing (no lag), which `minimum` reads")
            .legend(style::legend_line(thin));
        let ring = style::RED_T.stroke_width(2);
        chart
            .draw_series(std::iter::once(Circle::new(lowest, 7, ring)))?
            .label(format!("its lowest point: {}", style::fmt_sci(lowest.0)))
            .legend(move |(x, y)| Circle::new((x + 10, y), 6, ring));
    }
    if grid {
        let inside = smooth.iter().filter(|p| (y_lo..=y_hi).contains(&p.1));
        chart.draw_series(inside.map(|&p| Circle::new(p, 4, style::BLUE_T.filled())))?;
    }
    if smooth.len() == 1 {
        let (x, y) = smooth[0];
        chart.draw_series(std::iter::once(Circle::new((x, y), 4, style::BLUE_T.filled())))?;
    }

    if let Some(s) = report.suggestion {
        let minimum = report.minimum_label();
        let marks = [
            ("steep", s.steep, style::GREEN_T),
            ("valley", s.valley, style::ORANGE),
            (minimum.as_str(), s.minimum, style::RED_T),
        ];
        for (name, lr, colour) in marks {
            // the marker sits on the curve at the suggested lr, when that point is on the plot
            let at = Some((lr, loss_near(&smooth, lr)))
                .filter(|&(x, y)| (x_lo..=x_hi).contains(&x) && (y_lo..=y_hi).contains(&y));
            let label = match at {
                Some(_) => format!("{name}: {}", style::fmt_sci(lr)),
                None => format!("{name}: {} (off the plot)", style::fmt_sci(lr)),
            };
            chart
                .draw_series(at.map(|p| Circle::new(p, 7, colour.filled())))?
                .label(label)
                .legend(move |(x, y)| Circle::new((x + 10, y), 6, colour.filled()));
        }
    }

    style::lr_legend(&mut chart, SeriesLabelPosition::LowerLeft)?;
    root.present().with_context(|| format!("writing {}", path.display()))?;
    Ok(())
}

/// `(lr, loss)` pairs of the steps where both are usable on a log-x chart.
fn finite_points(lrs: &[f64], losses: &[f64]) -> Vec<(f64, f64)> {
    lrs.iter()
        .zip(losses)
        .filter(|(lr, loss)| lr.is_finite() && **lr > 0.0 && loss.is_finite())
        .map(|(&lr, &loss)| (lr, loss))
        .collect()
}

/// The lr axis: the tested range with 2% of it (in log space) either side; a decade either side
/// of a single lr.
fn lr_window(points: &[(f64, f64)]) -> (f64, f64) {
    let (lo, hi) = style::min_max(points.iter().map(|p| p.0)).expect("points is not empty");
    if hi / lo < 1.000_001 {
        return (lo / 10.0, hi * 10.0);
    }
    let pad = (hi / lo).powf(0.02);
    (lo / pad, hi * pad)
}

/// The loss axis: from the lowest smoothed loss to the highest one before it (the descent), with
/// a margin. The divergence after the minimum leaves through the top instead of squashing the
/// curve. A curve that only rises shows up to 4× its start.
fn loss_window(points: &[(f64, f64)]) -> (f64, f64) {
    let i_min = (0..points.len()).fold(0, |best, i| if points[i].1 < points[best].1 { i } else { best });
    let lo = points[i_min].1;
    let mut hi = points[..=i_min].iter().map(|p| p.1).fold(lo, f64::max);
    if hi - lo <= 1e-9 * lo.abs().max(1.0) {
        let (_, top) = style::min_max(points.iter().map(|p| p.1)).expect("points is not empty");
        hi = top.min(lo + 3.0 * lo.abs().max(1.0));
    }
    let (lo, hi) = style::linear_range(lo, hi);
    let margin = 0.08 * (hi - lo);
    (lo - margin, hi + margin)
}

/// Smoothed loss at the point whose lr is nearest `lr` in log space.
fn loss_near(points: &[(f64, f64)], lr: f64) -> f64 {
    let distance = |p: &(f64, f64)| (p.0.ln() - lr.ln()).abs();
    points
        .iter()
        .min_by(|a, b| distance(a).total_cmp(&distance(b)))
        .map(|p| p.1)
        .expect("points is not empty")
}

#[cfg(test)]
mod tests {
    use cyclotron_core::lr_range::{LrFinder, LrRange, Verdict};
    use tempfile::TempDir;

    use super::super::test_png::{assert_png, count_colour};
    use super::*;

    /// A noisy range test that bottoms out near 3e-2 and then diverges.
    fn diverging_report() -> LrFindReport {
        let r = LrRange { start: 1e-7, end: 10.0, steps: 100 };
        let mut f = LrFinder::default();
        let mut diverged = false;
        for i in 0..100 {
            let lr = r.lr_at(i);
            let x = (lr / 3e-3).ln();
            let noise = 0.08 * ((i * 7919 % 101) as f64 / 101.0 - 0.5);
            let loss =
                2.3 - 0.6 * (x.tanh() + 1.0) + if x > 2.0 { 2.0 * (x - 2.0).powi(2) } else { 0.0 } + noise;
            if f.record(lr, loss) == Verdict::Diverged {
                diverged = true;
                break;
            }
        }
        LrFindReport::from_finder(f, diverged)
    }

    #[test]
    fn draws_the_curve_and_the_suggestions() {
        let dir = TempDir::new().unwrap();
        let path = dir.path().join("lr_find.png");
        let report = diverging_report();
        assert!(report.diverged && report.suggestion.is_some());
        lr_find_png(&report, &path).unwrap();
        let img = assert_png(&path, style::LR_FIND_SIZE);
        assert!(count_colour(&img, style::BLUE_T) > 500, "no smoothed curve");
        assert!(count_colour(&img, style::PURPLE) > 500, "no centred curve");
        for colour in [style::GREEN_T, style::ORANGE, style::RED_T] {
            // a marker on the curve plus its legend mark
            assert!(count_colour(&img, colour) > 150, "no marker of colour {colour:?}");
        }
    }

    #[test]
    fn the_window_follows_the_descent_not_the_divergence() {
        let report = diverging_report();
        let points = finite_points(&report.lrs, &report.losses);
        let (lo, hi) = loss_window(&points);
        let min = points.iter().map(|p| p.1).fold(f64::INFINITY, f64::min);
        let last = points.last().unwrap().1;
        assert!(lo < min && min - lo < 0.2 * (hi - lo), "{lo}..{hi}, min {min}");
        assert!(hi >= points[0].1 && hi < last, "{lo}..{hi}, first {}, last {last}", points[0].1);
    }

    #[test]
    fn degenerate_reports_fail_cleanly_or_draw() {
        let dir = TempDir::new().unwrap();
        let path = dir.path().join("x.png");
        let empty = LrFindReport {
            lrs: vec![],
            losses: vec![],
            raw_losses: vec![],
            suggestion: None,
            diverged: false,
        };
        let err = lr_find_png(&empty, &path).unwrap_err();
        assert!(err.downcast_ref::<NoData>().is_some(), "{err}");

        let nan = LrFindReport {
            lrs: vec![1e-3, 1e-2],
            losses: vec![f64::NAN; 2],
            raw_losses: vec![f64::NAN; 2],
            ..empty.clone()
        };
        assert!(lr_find_png(&nan, &path).unwrap_err().downcast_ref::<NoData>().is_some());
        assert!(!path.exists());

        // one point, and a flat curve with lengths that disagree: drawn, not a panic
        let one = LrFindReport { lrs: vec![1e-3], losses: vec![2.0], raw_losses: vec![], ..empty.clone() };
        lr_find_png(&one, &path).unwrap();
        assert_png(&path, style::LR_FIND_SIZE);
        let flat = LrFindReport {
            lrs: vec![1e-4, 1e-3, 1e-2],
            losses: vec![1.0; 3],
            raw_losses: vec![1.0; 2],
            ..empty
        };
        lr_find_png(&flat, &path).unwrap();
        assert_png(&path, style::LR_FIND_SIZE);
    }
}
