//! `sweep.png`: a parallel LR sweep as the coordinator concluded it — one loss-vs-LR curve per
//! candidate config (a grid's points marked), the trained candidate drawn thick, and a marker at
//! the LR its runs took.

use std::path::Path;

use anyhow::{Context, Result};
use cyclotron_core::sweep::SweepOutcome;
use plotters::prelude::*;

use super::style::{self, clip_to_band};
use super::NoData;

const COLOURS: [RGBColor; 6] =
    [style::BLUE_T, style::ORANGE, style::GREEN_T, style::RED_T, style::PURPLE, style::GREY];

/// Draw `sweep` to the PNG at `path`. [`NoData`] when no candidate has a finite point.
pub fn sweep_png(sweep: &SweepOutcome, path: &Path) -> Result<()> {
    let curves: Vec<Vec<(f64, f64)>> = sweep
        .candidates
        .iter()
        .map(|c| {
            c.report
                .lrs
                .iter()
                .zip(&c.report.losses)
                .filter(|(lr, l)| lr.is_finite() && **lr > 0.0 && l.is_finite())
                .map(|(&lr, &l)| (lr, l))
                .collect()
        })
        .collect();
    let all: Vec<(f64, f64)> = curves.iter().flatten().copied().collect();
    if all.is_empty() {
        return Err(
            NoData(format!("sweep: none of its {} candidates has a finite point", curves.len())).into()
        );
    }
    let (x_lo, x_hi) = style::min_max(all.iter().map(|p| p.0)).expect("not empty");
    let pad = if x_hi / x_lo < 1.000_001 { 10.0 } else { (x_hi / x_lo).powf(0.03) };
    let (x_lo, x_hi) = (x_lo / pad, x_hi * pad);
    // from the lowest loss to the highest start of a curve: divergence leaves through the top
    let lo = all.iter().map(|p| p.1).fold(f64::INFINITY, f64::min);
    let hi = curves.iter().filter_map(|c| c.first().map(|p| p.1)).fold(lo, f64::max);
    let (lo, hi) = style::linear_range(lo, if hi - lo > 1e-9 { hi } else { lo + 1.0 });
    let margin = 0.08 * (hi - lo);
    let (y_lo, y_hi) = (lo - margin, hi + margin);

    style::ensure_font()?;
    let root = BitMapBackend::new(path, style::LR_FIND_SIZE).into_drawing_area();
    root.fill(&WHITE)?;
    let caption = if sweep.grid > 0 {
        format!("LR sweep: a grid of {} LRs per candidate", sweep.grid)
    } else {
        "LR sweep: one range test per candidate".to_string()
    };
    let mut chart = style::lr_chart(
        &root,
        &caption,
        (x_lo, x_hi),
        (y_lo, y_hi),
        if sweep.grid > 0 { "loss after each point's steps" } else { "smoothed loss" },
    )?;

    for (i, (c, points)) in sweep.candidates.iter().zip(&curves).enumerate() {
        let colour = COLOURS[i % COLOURS.len()];
        let chosen = i == sweep.chosen;
        let line = colour.stroke_width(if chosen { 3 } else { 1 });
        let label =
            format!("{}{}: best loss {:.4}", c.label, if chosen { " (trained)" } else { "" }, c.best_loss);
        chart
            .draw_series(
                clip_to_band(points, (y_lo, y_hi), true).into_iter().map(|run| PathElement::new(run, line)),
            )?
            .label(label)
            .legend(style::legend_line(line));
        if sweep.grid > 0 {
            let inside = points.iter().filter(|p| (y_lo..=y_hi).contains(&p.1));
            chart
                .draw_series(inside.map(|&p| Circle::new(p, if chosen { 5 } else { 3 }, colour.filled())))?;
        }
    }
    let chosen = sweep.chosen();
    if let Some(lr) = chosen.lr.filter(|lr| (x_lo..=x_hi).contains(lr)) {
        let colour = COLOURS[sweep.chosen % COLOURS.len()];
        let dashed = colour.mix(0.6).stroke_width(1);
        chart
            .draw_series(std::iter::once(PathElement::new(vec![(lr, y_lo), (lr, y_hi)], dashed)))?
            .label(format!("trained at {} ({})", style::fmt_sci(lr), sweep.suggestion))
            .legend(style::legend_line(dashed));
    }
    style::lr_legend(&mut chart, SeriesLabelPosition::UpperLeft)?;
    root.present().with_context(|| format!("writing {}", path.display()))?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use cyclotron_core::lr_range::SuggestionKind;
    use cyclotron_core::sweep::{merge_grid, Candidate, CandidateOutcome, GridPoint};

    use super::*;

    fn outcome(points: &[(f64, f64)]) -> SweepOutcome {
        let candidates = [0.0, 0.1]
            .iter()
            .map(|offset| {
                let pts: Vec<GridPoint> = points
                    .iter()
                    .map(|&(lr, end)| GridPoint::from_losses(lr, &[2.3, end + offset], false))
                    .collect();
                let report = merge_grid(&pts);
                CandidateOutcome {
                    candidate: Candidate { batch_size: Some(64), ..Default::default() },
                    label: "batch_size=64".into(),
                    best_loss: cyclotron_core::sweep::best_loss(&report),
                    lr: report.suggestion.map(|s| s.valley),
                    report,
                }
            })
            .collect();
        SweepOutcome { candidates, chosen: 0, suggestion: SuggestionKind::Valley, grid: points.len() as u32 }
    }

    #[test]
    fn a_sweep_draws_and_an_empty_one_says_so() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("sweep.png");
        sweep_png(&outcome(&[(1e-3, 1.5), (1e-2, 0.9), (1e-1, 0.6), (1.0, 1.2)]), &path).unwrap();
        assert!(std::fs::metadata(&path).unwrap().len() > 5_000, "a PNG with content");
        let err = sweep_png(&outcome(&[]), &dir.path().join("empty.png")).unwrap_err();
        assert!(err.downcast_ref::<NoData>().is_some(), "{err}");
    }
}
