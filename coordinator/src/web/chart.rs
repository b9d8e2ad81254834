//! Server-rendered SVG line charts: the web view draws its LR-range curves, loss and learning
//! rate per step, and validation per epoch with these, so a page is complete without JavaScript
//! and nothing is fetched from elsewhere. Non-finite points are skipped (a diverged LR test).

use std::fmt::Write as _;

use super::html::esc;

/// Colours of successive series (colour-blind safe, Okabe–Ito).
pub const COLORS: [&str; 7] = ["#0072B2", "#D55E00", "#009E73", "#CC79A7", "#E69F00", "#56B4E9", "#000000"];

#[derive(Debug, Clone)]
pub struct Series {
    pub name: String,
    pub points: Vec<(f64, f64)>,
}

/// A vertical marker (`x`, its label), e.g. the chosen learning rate or a snapshot.
#[derive(Debug, Clone)]
pub struct Marker {
    pub x: f64,
    pub label: String,
}

#[derive(Debug, Clone)]
pub struct Chart {
    pub title: String,
    pub x_label: String,
    pub y_label: String,
    pub log_x: bool,
    pub log_y: bool,
    pub series: Vec<Series>,
    pub markers: Vec<Marker>,
}

const W: f64 = 560.0;
const H: f64 = 260.0;
const LEFT: f64 = 62.0;
const RIGHT: f64 = 14.0;
const TOP: f64 = 28.0;
const BOTTOM: f64 = 40.0;

fn fmt_tick(v: f64) -> String {
    let a = v.abs();
    if v == 0.0 {
        "0".into()
    } else if !(1e-3..1e4).contains(&a) {
        format!("{v:.0e}")
    } else if a >= 100.0 {
        format!("{v:.0}")
    } else if a >= 1.0 {
        format!("{v:.2}").trim_end_matches('0').trim_end_matches('.').to_string()
    } else {
        format!("{v:.4}").trim_end_matches('0').trim_end_matches('.').to_string()
    }
}

/// `n` nice ticks over `[lo, hi]` (linear), or the powers of ten in it (log: values are log10).
fn ticks(lo: f64, hi: f64, log: bool) -> Vec<f64> {
    if log {
        let (a, b) = (lo.floor() as i32, hi.ceil() as i32);
        let step = ((b - a) / 6).max(1);
        return (a..=b)
            .step_by(step as usize)
            .map(f64::from)
            .filter(|t| *t >= lo - 1e-9 && *t <= hi + 1e-9)
            .collect();
    }
    let span = (hi - lo).max(1e-12);
    let raw = span / 5.0;
    let mag = 10f64.powf(raw.log10().floor());
    let step = [1.0, 2.0, 2.5, 5.0, 10.0].iter().map(|m| m * mag).find(|s| *s >= raw).unwrap_or(10.0 * mag);
    let first = (lo / step).ceil();
    (0..12)
        .map(|k| (first + f64::from(k)) * step)
        .take_while(|t| *t <= hi + step * 1e-9)
        .map(|t| if t.abs() < step * 1e-9 { 0.0 } else { t })
        .collect()
}

impl Chart {
    pub fn new(title: &str, x_label: &str, y_label: &str) -> Self {
        Chart {
            title: title.into(),
            x_label: x_label.into(),
            y_label: y_label.into(),
            log_x: false,
            log_y: false,
            series: vec![],
            markers: vec![],
        }
    }

    fn tx(&self, x: f64) -> Option<f64> {
        let x = if self.log_x { (x > 0.0).then(|| x.log10())? } else { x };
        x.is_finite().then_some(x)
    }

    fn ty(&self, y: f64) -> Option<f64> {
        let y = if self.log_y { (y > 0.0).then(|| y.log10())? } else { y };
        y.is_finite().then_some(y)
    }

    /// Whether there is a point to draw.
    pub fn is_empty(&self) -> bool {
        self.series
            .iter()
            .all(|s| s.points.iter().all(|&(x, y)| self.tx(x).is_none() || self.ty(y).is_none()))
    }

    /// The chart as an `<svg>` element (a placeholder text when it has no points).
    pub fn svg(&self) -> String {
        let mut s = String::new();
        let _ = write!(
            s,
            r#"<svg class="chart" viewBox="0 0 {W} {H}" role="img" aria-label="{t}"><title>{t}</title>"#,
            t = esc(&self.title)
        );
        let _ = write!(s, r#"<text x="{LEFT}" y="17" class="ct">{}</text>"#, esc(&self.title));
        let pts: Vec<Vec<(f64, f64)>> = self
            .series
            .iter()
            .map(|se| se.points.iter().filter_map(|&(x, y)| Some((self.tx(x)?, self.ty(y)?))).collect())
            .collect();
        let all: Vec<(f64, f64)> = pts.iter().flatten().copied().collect();
        if all.is_empty() {
            let _ = write!(
                s,
                r#"<text x="{}" y="{}" class="empty" text-anchor="middle">no data yet</text></svg>"#,
                W / 2.0,
                H / 2.0
            );
            return s;
        }
        let fold = |f: fn(&(f64, f64)) -> f64| {
            all.iter().map(f).fold((f64::INFINITY, f64::NEG_INFINITY), |(lo, hi), v| (lo.min(v), hi.max(v)))
        };
        let (mut x0, mut x1) = fold(|p| p.0);
        let (mut y0, mut y1) = fold(|p| p.1);
        for m in &self.markers {
            if let Some(x) = self.tx(m.x) {
                x0 = x0.min(x);
                x1 = x1.max(x);
            }
        }
        if x1 - x0 < 1e-12 {
            x0 -= 0.5;
            x1 += 0.5;
        }
        if y1 - y0 < 1e-12 {
            y0 -= 0.5;
            y1 += 0.5;
        }
        let pad = 0.05 * (y1 - y0);
        let (y0, y1) = (y0 - pad, y1 + pad);
        let px = |x: f64| LEFT + (x - x0) / (x1 - x0) * (W - LEFT - RIGHT);
        let py = |y: f64| H - BOTTOM - (y - y0) / (y1 - y0) * (H - TOP - BOTTOM);
        // axes and grid
        let _ = write!(
            s,
            r#"<rect x="{LEFT}" y="{TOP}" width="{}" height="{}" class="plot"/>"#,
            W - LEFT - RIGHT,
            H - TOP - BOTTOM
        );
        for t in ticks(x0, x1, self.log_x) {
            let x = px(t);
            let label = if self.log_x { fmt_tick(10f64.powf(t)) } else { fmt_tick(t) };
            let _ = write!(
                s,
                r#"<line x1="{x:.1}" y1="{TOP}" x2="{x:.1}" y2="{:.1}" class="grid"/><text x="{x:.1}" y="{:.1}" text-anchor="middle" class="tick">{label}</text>"#,
                H - BOTTOM,
                H - BOTTOM + 14.0
            );
        }
        for t in ticks(y0, y1, self.log_y) {
            let y = py(t);
            let label = if self.log_y { fmt_tick(10f64.powf(t)) } else { fmt_tick(t) };
            let _ = write!(
                s,
                r#"<line x1="{LEFT}" y1="{y:.1}" x2="{:.1}" y2="{y:.1}" class="grid"/><text x="{:.1}" y="{:.1}" text-anchor="end" class="tick">{label}</text>"#,
                W - RIGHT,
                LEFT - 5.0,
                y + 4.0
            );
        }
        let _ = write!(
            s,
            r#"<text x="{:.1}" y="{:.1}" text-anchor="middle" class="axis">{}</text>"#,
            LEFT + (W - LEFT - RIGHT) / 2.0,
            H - 6.0,
            esc(&self.x_label)
        );
        let _ = write!(
            s,
            r#"<text transform="translate(14 {:.1}) rotate(-90)" text-anchor="middle" class="axis">{}</text>"#,
            TOP + (H - TOP - BOTTOM) / 2.0,
            esc(&self.y_label)
        );
        for (i, m) in self.markers.iter().enumerate() {
            let Some(x) = self.tx(m.x) else { continue };
            let x = px(x);
            let _ = write!(
                s,
                r#"<line x1="{x:.1}" y1="{TOP}" x2="{x:.1}" y2="{:.1}" class="marker"><title>{l}</title></line>"#,
                H - BOTTOM,
                l = esc(&m.label)
            );
            // labels of the first few markers only (snapshots can be many)
            if i < 6 {
                // labels near the right edge go to the left of their line
                let (lx, anchor) = if x > W - RIGHT - 120.0 { (x - 3.0, "end") } else { (x + 3.0, "start") };
                let _ = write!(
                    s,
                    r#"<text x="{lx:.1}" y="{:.1}" text-anchor="{anchor}" class="mlabel">{}</text>"#,
                    TOP + 11.0 + 11.0 * (i % 3) as f64,
                    esc(&m.label)
                );
            }
        }
        for (i, (se, p)) in self.series.iter().zip(&pts).enumerate() {
            let color = COLORS[i % COLORS.len()];
            if p.len() == 1 {
                let _ = write!(
                    s,
                    r#"<circle cx="{:.1}" cy="{:.1}" r="3" fill="{color}"/>"#,
                    px(p[0].0),
                    py(p[0].1)
                );
            } else if !p.is_empty() {
                let d: Vec<String> = p.iter().map(|&(x, y)| format!("{:.1},{:.1}", px(x), py(y))).collect();
                let _ = write!(
                    s,
                    r#"<polyline class="series" data-series="{}" points="{}" fill="none" stroke="{color}" stroke-width="1.6"/>"#,
                    esc(&se.name),
                    d.join(" ")
                );
            }
            if self.series.len() > 1 {
                let (lx, ly) = (W - RIGHT - 150.0, TOP + 12.0 + 13.0 * i as f64);
                let _ = write!(
                    s,
                    r#"<line x1="{lx}" y1="{:.1}" x2="{:.1}" y2="{:.1}" stroke="{color}" stroke-width="2"/><text x="{:.1}" y="{ly:.1}" class="legend">{}</text>"#,
                    ly - 4.0,
                    lx + 16.0,
                    ly - 4.0,
                    lx + 20.0,
                    esc(&se.name)
                );
            }
        }
        s.push_str("</svg>");
        s
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_chart_draws_its_series_markers_and_escaped_labels() {
        let mut c = Chart::new("loss <per step>", "step", "loss");
        c.series.push(Series { name: "run 0".into(), points: vec![(1.0, 2.0), (2.0, 1.0), (3.0, f64::NAN)] });
        c.series.push(Series { name: "run 1".into(), points: vec![(1.0, 2.5), (3.0, 0.5)] });
        c.markers.push(Marker { x: 2.0, label: "snapshot 0".into() });
        let svg = c.svg();
        assert!(svg.starts_with("<svg") && svg.ends_with("</svg>"));
        assert_eq!(svg.matches("<polyline").count(), 2, "{svg}");
        assert!(svg.contains("loss &lt;per step&gt;") && !svg.contains("<per"), "{svg}");
        assert!(svg.contains("snapshot 0") && svg.contains("class=\"marker\""));
        assert!(!c.is_empty());
    }

    #[test]
    fn log_axes_skip_non_positive_values_and_an_empty_chart_says_so() {
        let mut c = Chart::new("lr_find", "learning rate", "loss");
        c.log_x = true;
        c.series.push(Series { name: "curve".into(), points: vec![(0.0, 1.0), (-1.0, 2.0)] });
        assert!(c.is_empty());
        assert!(c.svg().contains("no data yet"));
        c.series[0].points.extend([(1e-4, 2.3), (1e-2, 1.9), (1.0, 3.0)]);
        let svg = c.svg();
        assert!(svg.contains("<polyline") && svg.contains("1e-4"), "{svg}");
    }

    #[test]
    fn ticks_are_round_numbers_inside_the_range() {
        let t = ticks(0.0, 1.0, false);
        assert_eq!(t.len(), 6, "{t:?}");
        assert!(t.iter().zip([0.0, 0.2, 0.4, 0.6, 0.8, 1.0]).all(|(a, b)| (a - b).abs() < 1e-12), "{t:?}");
        assert_eq!(ticks(-5.0, -1.0, true), vec![-5.0, -4.0, -3.0, -2.0, -1.0]);
        assert_eq!(fmt_tick(0.0001), "1e-4");
        assert_eq!(fmt_tick(2.5), "2.5");
    }
}
