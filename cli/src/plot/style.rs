//! What the plots share: the font, sizes, colours, number formats and the y-clipping that keeps
//! outliers from reaching the rasteriser.

use std::path::Path;
use std::sync::OnceLock;

use anyhow::Result;
use plotters::prelude::*;
use plotters::style::register_font;

/// The TrueType font plots are drawn with (Debian `fonts-dejavu-core`).
pub const FONT_PATH: &str = "/usr/share/fonts/truetype/dejavu/DejaVuSans.ttf";
/// The family name the font is registered under; plotters' default family.
pub const FONT: &str = "sans-serif";

pub const LR_FIND_SIZE: (u32, u32) = (1000, 600);
pub const TRAINING_SIZE: (u32, u32) = (1000, 720);
pub const ENSEMBLE_SIZE: (u32, u32) = (1000, 600);

// Tableau 10: distinct, and legible for the common colour-vision deficiencies.
pub const BLUE_T: RGBColor = RGBColor(31, 119, 180);
pub const ORANGE: RGBColor = RGBColor(255, 127, 14);
pub const GREEN_T: RGBColor = RGBColor(44, 160, 44);
pub const RED_T: RGBColor = RGBColor(214, 39, 40);
pub const PURPLE: RGBColor = RGBColor(148, 103, 189);
pub const GREY: RGBColor = RGBColor(127, 127, 127);
pub const LIGHT_BLUE: RGBColor = RGBColor(174, 199, 232);

static FONT_REGISTERED: OnceLock<Result<(), String>> = OnceLock::new();

/// Register [`FONT_PATH`] with plotters, once per process. A failure is remembered too: the
/// font does not appear while the process runs.
pub fn ensure_font() -> Result<()> {
    FONT_REGISTERED.get_or_init(|| register(Path::new(FONT_PATH))).clone().map_err(anyhow::Error::msg)
}

fn register(path: &Path) -> Result<(), String> {
    let bytes = std::fs::read(path).map_err(|e| {
        format!(
            "cannot read the plot font {}: {e}; `make setup` installs it (Debian package fonts-dejavu-core)",
            path.display()
        )
    })?;
    // plotters keeps fonts for the life of the process and wants them `'static`; this runs once
    let bytes: &'static [u8] = Box::leak(bytes.into_boxed_slice());
    register_font(FONT, FontStyle::Normal, bytes).map_err(|_| {
        format!(
            "{} is not a usable TrueType font; reinstall fonts-dejavu-core (`make setup`)",
            path.display()
        )
    })
}

pub fn caption_style() -> TextStyle<'static> {
    TextStyle::from((FONT, 24).into_font())
}

pub fn label_style() -> TextStyle<'static> {
    TextStyle::from((FONT, 15).into_font())
}

pub fn axis_desc_style() -> TextStyle<'static> {
    TextStyle::from((FONT, 18).into_font())
}

/// A learning rate in short scientific notation: `1e-7`, `3.2e-3`.
pub fn fmt_sci(v: f64) -> String {
    if v == 0.0 {
        return "0".into();
    }
    format!("{v:.1e}").replace(".0e", "e")
}

/// `v` with as many decimals as an axis spanning `span` needs to tell its ticks apart.
pub fn fmt_fixed(v: f64, span: f64) -> String {
    // plotters puts about ten ticks on an axis, on 1-2-5 steps
    let decimals =
        if span > 0.0 && span.is_finite() { (-(span / 8.0).log10()).ceil().clamp(0.0, 6.0) } else { 2.0 };
    format!("{v:.*}", decimals as usize)
}

/// `lo..hi` widened so that a single value (or a flat series) still gets a visible axis.
pub fn linear_range(lo: f64, hi: f64) -> (f64, f64) {
    debug_assert!(lo <= hi, "{lo} > {hi}");
    let span = hi - lo;
    if span > 1e-12 * lo.abs().max(hi.abs()).max(1e-300) {
        return (lo, hi);
    }
    let half = if lo == 0.0 { 1.0 } else { 0.1 * lo.abs() };
    (lo - half, hi + half)
}

/// The smallest and largest of `values`, or `None` when it is empty. NaNs must be removed first.
pub fn min_max(values: impl IntoIterator<Item = f64>) -> Option<(f64, f64)> {
    values.into_iter().fold(None, |acc, v| {
        debug_assert!(!v.is_nan());
        Some(match acc {
            None => (v, v),
            Some((lo, hi)) => (lo.min(v), hi.max(v)),
        })
    })
}

/// The pieces of the polyline `points` that lie within `y_lo..=y_hi`, each cut where it crosses
/// an edge of that band (x interpolated geometrically when `log_x`). plotters clamps a point
/// outside the plotting area onto its edge, which would draw a false flat line along it.
pub fn clip_to_band(points: &[(f64, f64)], (y_lo, y_hi): (f64, f64), log_x: bool) -> Vec<Vec<(f64, f64)>> {
    let at = |a: (f64, f64), b: (f64, f64), t: f64| {
        let x = if log_x { (a.0.ln() + t * (b.0.ln() - a.0.ln())).exp() } else { a.0 + t * (b.0 - a.0) };
        (x, a.1 + t * (b.1 - a.1))
    };
    let mut runs = vec![];
    let mut run: Vec<(f64, f64)> = vec![];
    let mut close = |run: &mut Vec<(f64, f64)>| {
        if run.len() > 1 {
            runs.push(std::mem::take(run));
        }
        run.clear();
    };
    for w in points.windows(2) {
        let (a, b) = (w[0], w[1]);
        // the parameter interval [enter, exit] of a→b inside the band
        let (enter, exit) = if a.1 == b.1 {
            if (y_lo..=y_hi).contains(&a.1) {
                (0.0, 1.0)
            } else {
                (1.0, 0.0)
            }
        } else {
            let (t_lo, t_hi) = ((y_lo - a.1) / (b.1 - a.1), (y_hi - a.1) / (b.1 - a.1));
            (t_lo.min(t_hi).max(0.0), t_lo.max(t_hi).min(1.0))
        };
        if enter > exit {
            close(&mut run);
            continue;
        }
        if enter > 0.0 || run.is_empty() {
            close(&mut run);
            run.push(at(a, b, enter));
        }
        run.push(at(a, b, exit));
        if exit < 1.0 {
            close(&mut run);
        }
    }
    close(&mut run);
    runs
}

/// Bias-corrected exponential moving average, as the LR finder smooths its loss.
pub fn ema(values: &[f64], beta: f64) -> Vec<f64> {
    let mut avg = 0.0;
    let mut correction = 1.0;
    values
        .iter()
        .map(|v| {
            avg = beta * avg + (1.0 - beta) * v;
            correction *= beta;
            avg / (1.0 - correction)
        })
        .collect()
}

/// A short horizontal line, the legend mark of a line series.
pub fn legend_line(style: ShapeStyle) -> impl Fn((i32, i32)) -> PathElement<(i32, i32)> {
    move |(x, y)| PathElement::new(vec![(x, y), (x + 20, y)], style)
}

/// A filled square, the legend mark of a bar or area.
pub fn legend_box(colour: RGBColor) -> impl Fn((i32, i32)) -> Rectangle<(i32, i32)> {
    move |(x, y)| Rectangle::new([(x + 4, y - 6), (x + 16, y + 6)], colour.filled())
}

/// A chart with a log learning-rate x axis (`lr_find.png`, `sweep.png`).
pub type LrChart<'a> =
    ChartContext<'a, BitMapBackend<'a>, Cartesian2d<LogCoord<f64>, plotters::coord::types::RangedCoordf64>>;

/// The LR chart both LR plots draw on: caption, a log x axis over `x`, a loss axis over `y`
/// described as `y_desc`, and the mesh.
pub fn lr_chart<'a>(
    root: &DrawingArea<BitMapBackend<'a>, plotters::coord::Shift>,
    caption: &str,
    (x_lo, x_hi): (f64, f64),
    (y_lo, y_hi): (f64, f64),
    y_desc: &str,
) -> Result<LrChart<'a>> {
    let mut chart = ChartBuilder::on(root)
        .caption(caption, caption_style())
        .margin(20)
        .x_label_area_size(55)
        .y_label_area_size(75)
        .build_cartesian_2d((x_lo..x_hi).log_scale(), y_lo..y_hi)?;
    let span = y_hi - y_lo;
    chart
        .configure_mesh()
        .x_desc("learning rate (log scale)")
        .y_desc(y_desc)
        .x_labels(10)
        .y_labels(8)
        .x_label_formatter(&|x| fmt_sci(*x))
        .y_label_formatter(&|y| fmt_fixed(*y, span))
        .label_style(label_style())
        .axis_desc_style(axis_desc_style())
        .bold_line_style(BLACK.mix(0.12))
        .light_line_style(BLACK.mix(0.04))
        .draw()?;
    Ok(chart)
}

/// The legend of an LR chart, at `position`.
pub fn lr_legend(chart: &mut LrChart<'_>, position: SeriesLabelPosition) -> Result<()> {
    chart
        .configure_series_labels()
        .position(position)
        .margin(15)
        .label_font(label_style())
        .background_style(WHITE.mix(0.85))
        .border_style(BLACK.mix(0.4))
        .draw()?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn missing_font_names_the_file_and_the_fix() {
        let err = register(Path::new("/nonexistent/DejaVuSans.ttf")).unwrap_err();
        assert!(err.contains("/nonexistent/DejaVuSans.ttf"), "{err}");
        assert!(err.contains("make setup") && err.contains("fonts-dejavu-core"), "{err}");
    }

    #[test]
    fn a_file_that_is_not_a_font_is_refused() {
        let dir = tempfile::TempDir::new().unwrap();
        let path = dir.path().join("bad.ttf");
        std::fs::write(&path, b"not a font").unwrap();
        let err = register(&path).unwrap_err();
        assert!(err.contains("bad.ttf") && err.contains("not a usable"), "{err}");
    }

    #[test]
    fn number_formats() {
        assert_eq!(fmt_sci(1e-7), "1e-7");
        assert_eq!(fmt_sci(3.16e-3), "3.2e-3");
        assert_eq!(fmt_sci(10.0), "1e1");
        assert_eq!(fmt_fixed(2.345, 1.0), "2.3");
        assert_eq!(fmt_fixed(2.345, 0.4), "2.35");
        assert_eq!(fmt_fixed(2.345, 0.01), "2.345");
        assert_eq!(fmt_fixed(1234.5, 1000.0), "1234");
    }

    #[test]
    fn ranges_of_a_single_value_are_widened() {
        assert_eq!(linear_range(0.0, 0.0), (-1.0, 1.0));
        let (lo, hi) = linear_range(2.0, 2.0);
        assert!((lo - 1.8).abs() < 1e-12 && (hi - 2.2).abs() < 1e-12);
        assert_eq!(linear_range(1.0, 3.0), (1.0, 3.0));
        assert_eq!(min_max([3.0, -1.0, 2.0]), Some((-1.0, 3.0)));
        assert_eq!(min_max([]), None);
    }

    #[test]
    fn ema_is_bias_corrected() {
        assert_eq!(ema(&[2.5; 5], 0.98).iter().map(|v| (v * 1e9).round()).collect::<Vec<_>>(), [2.5e9; 5]);
        let e = ema(&[1.0, 3.0], 0.98);
        assert!((e[1] - (0.98 * 0.02 + 0.02 * 3.0) / (1.0 - 0.98f64.powi(2))).abs() < 1e-12);
    }

    #[test]
    fn polylines_are_cut_at_the_band_edges() {
        // inside, out through the top, back in, out through the bottom
        let points = [(0.0, 0.5), (1.0, 1.5), (2.0, 0.5), (3.0, -1.5)];
        let runs = clip_to_band(&points, (0.0, 1.0), false);
        assert_eq!(runs, vec![vec![(0.0, 0.5), (0.5, 1.0)], vec![(1.5, 1.0), (2.0, 0.5), (2.25, 0.0)]]);
        // entirely inside: unchanged; entirely outside or a single point: nothing
        assert_eq!(clip_to_band(&points[..1], (0.0, 1.0), false), Vec::<Vec<_>>::new());
        assert_eq!(
            clip_to_band(&[(0.0, 0.2), (1.0, 0.2)], (0.0, 1.0), false),
            vec![vec![(0.0, 0.2), (1.0, 0.2)]]
        );
        assert!(clip_to_band(&[(0.0, 5.0), (1.0, 7.0)], (0.0, 1.0), false).is_empty());
        // on a log axis the crossing is interpolated in log x: half-way between 1e-3 and 1e-1 is 1e-2
        let runs = clip_to_band(&[(1e-3, 0.0), (1e-1, 2.0)], (0.0, 1.0), true);
        assert!((runs[0][1].0 - 1e-2).abs() < 1e-12 && runs[0][1].1 == 1.0, "{runs:?}");
    }
}
