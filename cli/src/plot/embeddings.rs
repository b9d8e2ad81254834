//! `embeddings.png`: the learned entity embedding of one categorical column of a tabular snapshot,
//! projected on its first two principal components, each level a labelled point (index 0, the
//! unseen/missing level, left out). With months, the seed's claim is that they arrange themselves
//! by season.
//!
//! Reads the snapshot folder's `tabular.json` (the levels, in embedding order) and
//! `model.safetensors` (`embeds.<i>.weight`).

use std::path::Path;

use anyhow::{bail, Context, Result};
use cyclotron_worker::data::tabular::preprocess::Preprocessing;
use plotters::prelude::*;
use tch::{Kind, Tensor};

use super::style;
use super::NoData;

pub const EMBEDDINGS_SIZE: (u32, u32) = (1000, 800);

/// A level and its coordinates on the first two principal components.
type Point = (String, f64, f64);

/// The levels of `column` (or, without one, of the first categorical column with at least three
/// levels) and their 2-D PCA coordinates, from the snapshot folder `snapshot`.
pub fn embedding_pca(snapshot: &Path, column: Option<&str>) -> Result<(String, Vec<Point>)> {
    let json = snapshot.join("tabular.json");
    let text = std::fs::read_to_string(&json)
        .with_context(|| format!("reading {} (a tabular snapshot folder has one)", json.display()))?;
    let prep = Preprocessing::from_json(&text)?;
    let names: Vec<&str> = prep.categorical.iter().map(|c| c.name.as_str()).collect();
    let at = match column {
        Some(c) => names.iter().position(|n| *n == c).with_context(|| {
            format!("{c:?} is not a categorical column of the snapshot; its columns: {names:?}")
        })?,
        None => match prep.categorical.iter().position(|c| c.levels.len() >= 3) {
            Some(i) => i,
            None => return Err(NoData("no categorical column has three levels".into()).into()),
        },
    };
    let weights = snapshot.join("model.safetensors");
    let tensors =
        Tensor::read_safetensors(&weights).with_context(|| format!("reading {}", weights.display()))?;
    let name = format!("embeds.{at}.weight");
    let Some((_, w)) = tensors.iter().find(|(n, _)| *n == name) else {
        bail!("{} has no {name}: not an entity-embedding model's snapshot", weights.display());
    };
    let levels = &prep.categorical[at].levels;
    if w.size()[0] != levels.len() as i64 + 1 {
        bail!("{name} has {} rows but tabular.json lists {} levels (+ index 0)", w.size()[0], levels.len());
    }
    let w = w.to_kind(Kind::Double).narrow(0, 1, levels.len() as i64);
    let centred = &w - w.mean_dim(0, true, Kind::Double);
    let (u, s, _) = centred.svd(true, true);
    let k = s.size()[0].min(2);
    let coords = u.narrow(1, 0, k) * s.narrow(0, 0, k);
    let at_ = |r: usize, c: i64| if c < k { coords.double_value(&[r as i64, c]) } else { 0.0 };
    let points = levels.iter().enumerate().map(|(r, l)| (l.clone(), at_(r, 0), at_(r, 1))).collect();
    Ok((prep.categorical[at].name.clone(), points))
}

/// Draw the PCA of `column`'s embedding in `snapshot` to the PNG at `path`.
pub fn embeddings_png(snapshot: &Path, column: Option<&str>, path: &Path) -> Result<()> {
    let (name, points) = embedding_pca(snapshot, column)?;
    if points.len() < 2 {
        return Err(NoData(format!("{name} has {} level(s)", points.len())).into());
    }
    let span = |f: &dyn Fn(&Point) -> f64| {
        let lo = points.iter().map(f).fold(f64::INFINITY, f64::min);
        let hi = points.iter().map(f).fold(f64::NEG_INFINITY, f64::max);
        let pad = ((hi - lo) * 0.12).max(1e-6);
        (lo - pad, hi + pad)
    };
    let (x, y) = (span(&|p| p.1), span(&|p| p.2));
    style::ensure_font()?;
    let root = BitMapBackend::new(path, EMBEDDINGS_SIZE).into_drawing_area();
    root.fill(&WHITE)?;
    let caption =
        format!("Learned embedding of {name} ({} levels), first two principal components", points.len());
    let mut chart = ChartBuilder::on(&root)
        .caption(caption, style::caption_style())
        .margin(20)
        .x_label_area_size(55)
        .y_label_area_size(75)
        .build_cartesian_2d(x.0..x.1, y.0..y.1)?;
    chart
        .configure_mesh()
        .x_desc("PC 1")
        .y_desc("PC 2")
        .label_style(style::label_style())
        .axis_desc_style(style::axis_desc_style())
        .bold_line_style(BLACK.mix(0.12))
        .light_line_style(BLACK.mix(0.04))
        .draw()?;
    chart.draw_series(points.iter().map(|p| Circle::new((p.1, p.2), 5, style::BLUE_T.filled())))?;
    let label = style::label_style();
    chart.draw_series(points.iter().map(|p| {
        let shown: String = p.0.chars().take(24).collect();
        EmptyElement::at((p.1, p.2)) + Text::new(shown, (7, -7), label.clone())
    }))?;
    root.present()?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_pca_of_a_saved_embedding_is_drawn() {
        let dir = tempfile::tempdir().unwrap();
        let prep = r#"{"format": 1, "target": "y", "target_map": {"values": {"log": true}},
            "categorical": [{"name": "flag", "source": "column", "levels": ["a", "b"]},
                            {"name": "month", "source": "column", "levels": ["1", "2", "3", "4"]}],
            "continuous": []}"#;
        std::fs::write(dir.path().join("tabular.json"), prep).unwrap();
        // months on a circle in 3-D: the first two components recover it
        let mut w = vec![0f32; 5 * 3];
        for m in 0..4 {
            let a = m as f32 * std::f32::consts::FRAC_PI_2;
            w[(m + 1) * 3..(m + 2) * 3].copy_from_slice(&[a.cos(), a.sin(), 0.01]);
        }
        let month = Tensor::from_slice(&w).view([5, 3]);
        let flag = Tensor::zeros([3, 2], (Kind::Float, tch::Device::Cpu));
        Tensor::write_safetensors(
            &[("embeds.0.weight", &flag), ("embeds.1.weight", &month)],
            dir.path().join("model.safetensors"),
        )
        .unwrap();
        let (name, points) = embedding_pca(dir.path(), None).unwrap();
        assert_eq!(name, "month");
        let radius: Vec<f64> = points.iter().map(|p| (p.1 * p.1 + p.2 * p.2).sqrt()).collect();
        assert!(radius.iter().all(|r| (r - 1.0).abs() < 1e-3), "{radius:?}");
        let png = dir.path().join("embeddings.png");
        embeddings_png(dir.path(), Some("month"), &png).unwrap();
        crate::plot::test_png::assert_png(&png, EMBEDDINGS_SIZE);
        let e = embedding_pca(dir.path(), Some("city")).unwrap_err().to_string();
        assert!(e.contains("\"city\" is not a categorical column"), "{e}");
    }
}
