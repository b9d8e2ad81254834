//! `training.png`: two panels over the global step, the training loss (raw, faint, and smoothed)
//! above the learning rate, with vertical lines at stage starts and cycle ends and a marker where
//! a snapshot was saved. A panel without data says so in its middle.

use std::path::Path;

use anyhow::{Context, Result};
use cyclotron_core::results::StepHistory;
use plotters::coord::types::RangedCoordf64;
use plotters::coord::Shift;
use plotters::prelude::*;
use plotters::style::text_anchor::{HPos, Pos, VPos};

use super::style::{self, clip_to_band, FONT};
use super::NoData;

/// Smoothing of the loss line; the LR finder's β.
const EMA_BETA: f64 = 0.98;

type Area<'a> = DrawingArea<BitMapBackend<'a>, Shift>;
type Chart<'a, 'b> = ChartContext<'a, BitMapBackend<'b>, Cartesian2d<RangedCoordf64, RangedCoordf64>>;

/// Draw `history` to the PNG at `path` (see the module doc) under the title `title`. [`NoData`]
/// when no step has a finite loss or learning rate.
pub fn training_png(history: &StepHistory, title: &str, path: &Path) -> Result<()> {
    let h = Curves::new(history);
    if h.loss.is_empty() && h.lr.is_empty() {
        let steps = history.steps.len();
        return Err(NoData(format!(
            "training: none of its {steps} steps has a finite loss or learning rate"
        ))
        .into());
    }
    let xs = h.loss.iter().chain(&h.lr).map(|p| p.0);
    let events = h.stage_starts.iter().copied().chain(h.cycle_ends.iter().map(|c| c.0));
    let (x_lo, x_hi) = style::min_max(xs.chain(events)).expect("there is a point");
    let (x_lo, x_hi) = style::linear_range(x_lo, x_hi);
    // room for a marker on the last step
    let x = (x_lo, x_hi + 0.015 * (x_hi - x_lo));

    style::ensure_font()?;
    let root = BitMapBackend::new(path, style::TRAINING_SIZE).into_drawing_area();
    root.fill(&WHITE)?;
    let root = root.margin(8, 0, 0, 0).titled(title, style::caption_style())?;
    let (legend, panels) = root.split_vertically(30);
    draw_legend(&legend, &h)?;
    let height = panels.dim_in_pixel().1;
    let (top, bottom) = panels.split_vertically(height * 57 / 100);
    loss_panel(&top, x, &h)?;
    lr_panel(&bottom, x, &h)?;
    root.present().with_context(|| format!("writing {}", path.display()))?;
    Ok(())
}

/// The history as finite `(step, value)` points.
struct Curves {
    loss: Vec<(f64, f64)>,
    smooth: Vec<(f64, f64)>,
    lr: Vec<(f64, f64)>,
    stage_starts: Vec<f64>,
    cycle_ends: Vec<(f64, bool)>,
}

impl Curves {
    fn new(h: &StepHistory) -> Self {
        let finite = |values: &[f64]| -> Vec<(f64, f64)> {
            h.steps.iter().zip(values).filter(|(_, v)| v.is_finite()).map(|(&s, &v)| (s as f64, v)).collect()
        };
        let loss = finite(&h.losses);
        let values: Vec<f64> = loss.iter().map(|p| p.1).collect();
        let smooth = loss.iter().zip(style::ema(&values, EMA_BETA)).map(|(p, v)| (p.0, v)).collect();
        Curves {
            loss,
            smooth,
            lr: finite(&h.lrs),
            stage_starts: h.stage_starts.iter().map(|&s| s as f64).collect(),
            cycle_ends: h.cycle_ends.iter().map(|&(s, saved)| (s as f64, saved)).collect(),
        }
    }

    /// Smoothed loss at the last point at or before `step` (the first point if none is).
    fn smooth_at(&self, step: f64) -> Option<f64> {
        let i = self.smooth.partition_point(|p| p.0 <= step);
        self.smooth.get(i.saturating_sub(1)).map(|p| p.1)
    }
}

fn stage_style() -> ShapeStyle {
    style::PURPLE.stroke_width(2)
}

fn cycle_style() -> ShapeStyle {
    style::GREY.mix(0.8).stroke_width(1)
}

fn loss_panel(area: &Area, x: (f64, f64), h: &Curves) -> Result<()> {
    if h.loss.is_empty() {
        return no_data(area, "no finite training loss to plot (did training diverge?)");
    }
    // from the lowest raw loss to the highest smoothed one: raw spikes leave through the top
    let (lo, _) = style::min_max(h.loss.iter().map(|p| p.1)).expect("not empty");
    let (_, hi) = style::min_max(h.smooth.iter().map(|p| p.1)).expect("not empty");
    let (lo, hi) = style::linear_range(lo, hi.max(lo));
    // headroom at the top for the stage labels
    let (y_lo, y_hi) = (lo - 0.04 * (hi - lo), hi + 0.14 * (hi - lo));

    let mut chart = panel_chart(area, x, (y_lo, y_hi))?;
    let (x_span, y_span) = (x.1 - x.0, y_hi - y_lo);
    chart
        .configure_mesh()
        .x_desc("step")
        .y_desc("training loss")
        .x_label_formatter(&|v| style::fmt_fixed(*v, x_span))
        .y_label_formatter(&|v| style::fmt_fixed(*v, y_span))
        .label_style(style::label_style())
        .axis_desc_style(style::axis_desc_style())
        .bold_line_style(BLACK.mix(0.12))
        .light_line_style(BLACK.mix(0.04))
        .draw()?;
    draw_events(&mut chart, h, (y_lo, y_hi))?;
    // numbered from 1, as the CLI and results tables number stages
    for (k, &s) in h.stage_starts.iter().enumerate() {
        let label =
            Text::new(format!("stage {}", k + 1), (5, 3), (FONT, 14).into_font().color(&style::PURPLE));
        chart.plotting_area().draw(&(EmptyElement::at((s, y_hi)) + label))?;
    }
    let band = (y_lo, y_hi);
    chart.draw_series(
        clip_to_band(&h.loss, band, false).into_iter().map(|r| PathElement::new(r, raw_style())),
    )?;
    let smooth = clip_to_band(&h.smooth, band, false);
    chart.draw_series(smooth.into_iter().map(|r| PathElement::new(r, smooth_style())))?;
    if h.smooth.len() == 1 {
        chart.draw_series(h.smooth.iter().map(|&p| Circle::new(p, 4, style::BLUE_T.filled())))?;
    }
    let saved = h.cycle_ends.iter().filter(|c| c.1).filter_map(|&(s, _)| Some((s, h.smooth_at(s)?)));
    let saved = saved.filter(|p| (y_lo..=y_hi).contains(&p.1));
    chart.draw_series(saved.map(|p| Circle::new(p, 6, style::RED_T.filled())))?;
    Ok(())
}

fn lr_panel(area: &Area, x: (f64, f64), h: &Curves) -> Result<()> {
    let Some((_, top)) = style::min_max(h.lr.iter().map(|p| p.1)) else {
        return no_data(area, "no finite learning rate to plot");
    };
    let (y_lo, y_hi) = if top > 0.0 { (0.0, top * 1.08) } else { style::linear_range(top, top) };
    let mut chart = panel_chart(area, x, (y_lo, y_hi))?;
    let x_span = x.1 - x.0;
    chart
        .configure_mesh()
        .x_desc("step")
        .y_desc("learning rate")
        .y_labels(6)
        .x_label_formatter(&|v| style::fmt_fixed(*v, x_span))
        .y_label_formatter(&|v| style::fmt_sci(*v))
        .label_style(style::label_style())
        .axis_desc_style(style::axis_desc_style())
        .bold_line_style(BLACK.mix(0.12))
        .light_line_style(BLACK.mix(0.04))
        .draw()?;
    draw_events(&mut chart, h, (y_lo, y_hi))?;
    chart.draw_series(LineSeries::new(h.lr.iter().copied(), lr_style()))?;
    if h.lr.len() == 1 {
        chart.draw_series(h.lr.iter().map(|&p| Circle::new(p, 4, style::ORANGE.filled())))?;
    }
    Ok(())
}

fn panel_chart<'a, 'b>(area: &'a Area<'b>, x: (f64, f64), y: (f64, f64)) -> Result<Chart<'a, 'b>> {
    Ok(ChartBuilder::on(area)
        .margin_left(15)
        .margin_right(25)
        .margin_top(10)
        .margin_bottom(5)
        .x_label_area_size(45)
        .y_label_area_size(85)
        .build_cartesian_2d(x.0..x.1, y.0..y.1)?)
}

/// Vertical lines across the panel: solid at stage starts, dashed at cycle ends.
fn draw_events(chart: &mut Chart, h: &Curves, (y_lo, y_hi): (f64, f64)) -> Result<()> {
    for &(s, _) in &h.cycle_ends {
        chart.draw_series(DashedLineSeries::new([(s, y_lo), (s, y_hi)], 6, 4, cycle_style()))?;
    }
    let stage_lines =
        h.stage_starts.iter().map(|&s| PathElement::new(vec![(s, y_lo), (s, y_hi)], stage_style()));
    chart.draw_series(stage_lines)?;
    Ok(())
}

fn raw_style() -> ShapeStyle {
    style::BLUE_T.mix(0.3).stroke_width(1)
}

fn smooth_style() -> ShapeStyle {
    style::BLUE_T.stroke_width(2)
}

fn lr_style() -> ShapeStyle {
    style::ORANGE.stroke_width(2)
}

/// One row of legend entries across the top of the figure, shared by both panels.
fn draw_legend(area: &Area, h: &Curves) -> Result<()> {
    enum Mark {
        Line(ShapeStyle),
        Dashed(ShapeStyle),
        Dot(RGBColor),
    }
    let mut entries = vec![];
    if !h.loss.is_empty() {
        entries.push((Mark::Line(raw_style()), "loss"));
        entries.push((Mark::Line(smooth_style()), "loss, smoothed (EMA, β = 0.98)"));
    }
    if !h.lr.is_empty() {
        entries.push((Mark::Line(lr_style()), "learning rate"));
    }
    if !h.stage_starts.is_empty() {
        entries.push((Mark::Line(stage_style()), "stage start"));
    }
    if !h.cycle_ends.is_empty() {
        entries.push((Mark::Dashed(cycle_style()), "cycle end"));
    }
    if h.cycle_ends.iter().any(|c| c.1) {
        entries.push((Mark::Dot(style::RED_T), "snapshot saved"));
    }
    let text = style::label_style().pos(Pos::new(HPos::Left, VPos::Center));
    let y = area.dim_in_pixel().1 as i32 / 2;
    let mut x = 110;
    for (mark, label) in entries {
        match mark {
            Mark::Line(s) => area.draw(&PathElement::new(vec![(x, y), (x + 24, y)], s))?,
            Mark::Dashed(s) => {
                for dx in [0, 9, 18] {
                    area.draw(&PathElement::new(vec![(x + dx, y), (x + dx + 6, y)], s))?;
                }
            }
            Mark::Dot(c) => area.draw(&Circle::new((x + 12, y), 5, c.filled()))?,
        }
        area.draw(&Text::new(label, (x + 30, y), text.clone()))?;
        let (w, _) = area.estimate_text_size(label, &text)?;
        x += 30 + w as i32 + 22;
    }
    Ok(())
}

/// Leave `area` with a centred message instead of a chart.
fn no_data(area: &Area, message: &str) -> Result<()> {
    let (w, h) = area.dim_in_pixel();
    let style = (FONT, 20).into_font().color(&style::GREY).pos(Pos::new(HPos::Center, VPos::Center));
    area.draw(&Rectangle::new([(10, 10), (w as i32 - 10, h as i32 - 10)], style::GREY.mix(0.5)))?;
    area.draw(&Text::new(message, (w as i32 / 2, h as i32 / 2), style))?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use tempfile::TempDir;

    use super::super::test_png::{assert_png, count_colour};
    use super::*;

    /// Three SGDR cycles of 100, 200 and 400 steps after a 150-step stage, with noisy losses.
    fn history() -> StepHistory {
        let mut h = StepHistory { stage_starts: vec![0, 150], ..StepHistory::default() };
        let cycles = [(150u64, 100u64), (250, 200), (450, 400)];
        for s in 0..850u64 {
            let noise = 0.15 * ((s * 7919 % 97) as f64 / 97.0 - 0.5);
            h.steps.push(s);
            h.losses.push(0.3 + 2.0 / (1.0 + s as f64 / 40.0) + noise);
            let lr = match cycles.iter().find(|&&(start, len)| s >= start && s < start + len) {
                Some(&(start, len)) => {
                    let t = (s - start) as f64 / len as f64;
                    0.05 * (1.0 + (std::f64::consts::PI * t).cos()) / 2.0
                }
                None => 0.01,
            };
            h.lrs.push(lr);
        }
        h.cycle_ends = cycles.iter().map(|&(start, len)| (start + len, start > 150)).collect();
        h
    }

    #[test]
    fn draws_loss_and_lr_panels_with_events() {
        let dir = TempDir::new().unwrap();
        let path = dir.path().join("training.png");
        training_png(&history(), "Training", &path).unwrap();
        let img = assert_png(&path, style::TRAINING_SIZE);
        assert!(count_colour(&img, style::BLUE_T) > 500, "no smoothed loss");
        assert!(count_colour(&img, style::ORANGE) > 500, "no lr curve");
        // two snapshot markers and the legend's
        assert!(count_colour(&img, style::RED_T) > 150, "no snapshot markers");
        assert!(count_colour(&img, style::PURPLE) > 300, "no stage lines");
    }

    #[test]
    fn smoothed_loss_is_read_at_or_before_a_step() {
        let c = Curves::new(&history());
        assert_eq!(c.smooth_at(250.0), Some(c.smooth[250].1));
        assert_eq!(c.smooth_at(1e9), Some(c.smooth[849].1));
        assert_eq!(c.smooth_at(-1.0), Some(c.smooth[0].1));
    }

    #[test]
    fn degenerate_histories_fail_cleanly_or_draw() {
        let dir = TempDir::new().unwrap();
        let path = dir.path().join("t.png");
        let err = training_png(&StepHistory::default(), "Training", &path).unwrap_err();
        assert!(err.downcast_ref::<NoData>().is_some(), "{err}");
        let nan = StepHistory {
            steps: vec![0, 1],
            losses: vec![f64::NAN; 2],
            lrs: vec![f64::NAN; 2],
            ..StepHistory::default()
        };
        assert!(training_png(&nan, "Training", &path).unwrap_err().downcast_ref::<NoData>().is_some());

        // NaN losses with good lrs: the loss panel says so, the lr panel is drawn
        let diverged = StepHistory { lrs: vec![0.1, 0.1], ..nan.clone() };
        training_png(&diverged, "Training", &path).unwrap();
        assert_png(&path, style::TRAINING_SIZE);
        // a single step, zero lr, lengths that disagree, events beyond the steps
        let one = StepHistory {
            steps: vec![5],
            losses: vec![2.0, 1.0],
            lrs: vec![0.0],
            stage_starts: vec![0],
            cycle_ends: vec![(10, true)],
        };
        training_png(&one, "Training", &path).unwrap();
        assert_png(&path, style::TRAINING_SIZE);
    }
}
