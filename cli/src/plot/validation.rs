//! `validation.png`: the task's own metric on the validation split after every epoch of the job
//! (accuracy, a language model's perplexity, a regression's RMSPE) beside the training loss, with
//! the epochs that ended a cycle with a snapshot marked and stage starts drawn as lines.

use std::path::Path;

use anyhow::{Context, Result};
use cyclotron_core::results::TrainResults;
use plotters::prelude::*;

use super::style::{self, FONT};
use super::NoData;

/// Extra height above the data, as a fraction of its range: the legend's band.
const LEGEND_BAND: f64 = 0.3;

/// Draw `results`' per-epoch validation curve to the PNG at `path`. [`NoData`] without an epoch
/// whose metric is finite.
pub fn validation_png(results: &TrainResults, path: &Path) -> Result<()> {
    let epochs = &results.epochs;
    let Some(first) = epochs.first() else {
        return Err(NoData("validation: the run trained no epoch".into()).into());
    };
    let (name, _) = first.valid.headline();
    let scale = if name == "accuracy" { 100.0 } else { 1.0 };
    let metric: Vec<(f64, f64)> = (1..)
        .zip(epochs)
        .map(|(i, e)| (f64::from(i), scale * e.valid.headline().1))
        .filter(|p| p.1.is_finite())
        .collect();
    let train: Vec<(f64, f64)> =
        (1..).zip(epochs).map(|(i, e)| (f64::from(i), e.train_loss)).filter(|p| p.1.is_finite()).collect();
    let Some((lo, hi)) = style::min_max(metric.iter().map(|p| p.1)) else {
        return Err(NoData(format!("validation: no epoch has a finite {name}")).into());
    };
    let (y_lo, y_hi) = style::linear_range(lo, hi);
    let (l_lo, l_hi) = style::linear_range(
        style::min_max(train.iter().map(|p| p.1)).map_or(0.0, |m| m.0),
        style::min_max(train.iter().map(|p| p.1)).map_or(1.0, |m| m.1),
    );
    // headroom above both curves for the legend (upper right), so it never hides the last epochs
    let (y_hi, l_hi) = (y_hi + LEGEND_BAND * (y_hi - y_lo), l_hi + LEGEND_BAND * (l_hi - l_lo));
    let x_hi = epochs.len() as f64 + 0.5;

    style::ensure_font()?;
    let root = BitMapBackend::new(path, style::ENSEMBLE_SIZE).into_drawing_area();
    root.fill(&WHITE)?;
    let unit = if name == "accuracy" { " (%)" } else { "" };
    let run = super::which_run(results).map(|r| format!(", {r}")).unwrap_or_default();
    let caption = format!("Validation {name} and training loss per epoch ({}{run})", results.job);
    let mut chart = ChartBuilder::on(&root)
        .caption(caption, (FONT, 20))
        .margin(20)
        .x_label_area_size(45)
        .y_label_area_size(75)
        .right_y_label_area_size(75)
        .build_cartesian_2d(0.5..x_hi, y_lo..y_hi)?
        .set_secondary_coord(0.5..x_hi, l_lo..l_hi);
    chart
        .configure_mesh()
        .x_desc("epoch (over the whole job)")
        .y_desc(format!("validation {name}{unit}"))
        .x_labels(epochs.len().clamp(2, 20) * 2)
        // whole epochs only
        .x_label_formatter(&|v| if (v - v.round()).abs() < 1e-6 { format!("{v:.0}") } else { String::new() })
        .y_label_formatter(&|v| style::fmt_fixed(*v, y_hi - y_lo))
        .label_style(style::label_style())
        .axis_desc_style(style::axis_desc_style())
        .bold_line_style(BLACK.mix(0.12))
        .light_line_style(BLACK.mix(0.04))
        .draw()?;
    chart
        .configure_secondary_axes()
        .y_desc("training loss")
        .y_label_formatter(&|v| style::fmt_fixed(*v, l_hi - l_lo))
        .label_style(style::label_style())
        .axis_desc_style(style::axis_desc_style())
        .draw()?;
    // stage starts
    for (i, pair) in epochs.windows(2).enumerate() {
        if pair[1].stage != pair[0].stage {
            let x = i as f64 + 1.5;
            chart
                .draw_series(LineSeries::new([(x, y_lo), (x, y_hi)], style::GREY.mix(0.6).stroke_width(1)))?;
        }
    }
    chart
        .draw_series(LineSeries::new(metric.iter().copied(), style::BLUE_T.stroke_width(3)))?
        .label(format!("validation {name}"))
        .legend(style::legend_line(style::BLUE_T.stroke_width(3)));
    chart.draw_series(metric.iter().map(|&p| Circle::new(p, 3, style::BLUE_T.filled())))?;
    // the training loss on top (its own axis: the two lines may coincide on the canvas)
    chart
        .draw_secondary_series(LineSeries::new(train.iter().copied(), style::GREY.stroke_width(2)))?
        .label("training loss (right axis)")
        .legend(style::legend_line(style::GREY.stroke_width(2)));
    chart.draw_secondary_series(train.iter().map(|&p| Circle::new(p, 4, style::GREY.filled())))?;
    let snapped: Vec<(f64, f64)> = results
        .snapshots
        .iter()
        .filter_map(|s| epochs.iter().position(|e| e.stage == s.stage && e.epoch == s.epoch))
        .filter_map(|i| metric.iter().find(|p| p.0 == (i + 1) as f64).copied())
        .collect();
    chart
        .draw_series(snapped.iter().map(|&p| Circle::new(p, 7, style::ORANGE.stroke_width(3))))?
        .label("snapshot taken")
        .legend(|(x, y)| Circle::new((x + 10, y), 5, style::ORANGE.stroke_width(3)));
    chart
        .configure_series_labels()
        .position(SeriesLabelPosition::UpperRight)
        .margin(12)
        .label_font(style::label_style())
        .background_style(WHITE.mix(0.9))
        .border_style(BLACK.mix(0.4))
        .draw()?;
    root.present().with_context(|| format!("writing {}", path.display()))?;
    Ok(())
}
