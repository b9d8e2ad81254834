//! `cyclotron predict RUN INPUT…`: a finished run's ensemble (with TTA when the job used it) or one
//! of its snapshots applied to image files, folders of images or idx files (the top classes of
//! each input with their probabilities), to the rows of CSV files for a tabular run
//! ([`crate::predict_rows`]), or to texts for a text classifier ([`crate::predict_text`]); as a
//! table, JSON or CSV.

use std::path::PathBuf;

use anyhow::Context;
use cyclotron_core::checkpoint::{S3Options, StoreOptions};
use cyclotron_worker::predict::{load_inputs, open, Members, Opened, Predictor};
use serde::Serialize;
use tch::{Kind, Tensor};

#[derive(clap::Args)]
pub struct PredictArgs {
    /// The run: the `--out` folder of `cyclotron train` or `local`, a run's folder in the store
    /// (`runs/JOB/RUN`, `file://…`, `s3://bucket/prefix/JOB/RUN`), or one snapshot's folder
    /// (`…/snapshots/cycle-N`).
    pub run: String,
    /// Image files (PNG, JPEG), folders of them, or idx files of images (MNIST's format); for a
    /// tabular run, CSV files with (at least) the columns it was trained on; for a text
    /// classifier, CSV files with its text column (its label column, when there, is scored), text
    /// files (one text each), folders of `.txt` files, or `-` (standard input, a text a line).
    #[arg(required = true)]
    pub inputs: Vec<PathBuf>,
    /// Classes printed per input, most probable first.
    #[arg(long, default_value_t = 3)]
    pub top: usize,
    /// Predict with snapshot N of the run alone instead of its ensemble.
    #[arg(long)]
    pub snapshot: Option<usize>,
    /// No test-time augmentation, even when the job used it.
    #[arg(long)]
    pub no_tta: bool,
    /// Convert and resize inputs of another channel count or size to the model's instead of
    /// refusing them (a model trained on an image folder always does, as its training did).
    #[arg(long)]
    pub resize: bool,
    /// Print one JSON document.
    #[arg(long, conflicts_with = "csv")]
    pub json: bool,
    /// Print CSV rows `input,rank,class,probability`.
    #[arg(long)]
    pub csv: bool,
    /// The inputs' true labels as an idx file of labels (MNIST's `*-labels-idx1-ubyte`): prints the
    /// accuracy and loss of the predictions.
    #[arg(long)]
    pub labels: Option<PathBuf>,
    /// S3 endpoint for an `s3://` run (otherwise `AWS_ENDPOINT_URL`; credentials from `AWS_*`).
    #[arg(long)]
    pub s3_endpoint: Option<String>,
    #[arg(long)]
    pub s3_region: Option<String>,
}

#[derive(Serialize)]
pub(crate) struct Ranked {
    pub(crate) class: String,
    pub(crate) index: usize,
    pub(crate) probability: f64,
}

#[derive(Serialize)]
pub(crate) struct Prediction {
    pub(crate) input: String,
    /// The input's text (a text classifier's inputs).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(crate) text: Option<String>,
    pub(crate) top: Vec<Ranked>,
}

#[derive(Serialize)]
pub(crate) struct Report {
    pub(crate) members: Vec<String>,
    pub(crate) tta: bool,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(crate) accuracy: Option<f64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(crate) loss: Option<f64>,
    /// How many inputs the accuracy and loss are over (those with a label the model knows).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(crate) labelled: Option<usize>,
    pub(crate) predictions: Vec<Prediction>,
}

pub fn predict(args: PredictArgs) -> anyhow::Result<()> {
    anyhow::ensure!(args.top >= 1, "--top must be at least 1");
    let options = StoreOptions {
        s3: S3Options {
            endpoint: args.s3_endpoint.clone(),
            region: args.s3_region.clone(),
            ..Default::default()
        },
        ..Default::default()
    };
    let members = args.snapshot.map_or(Members::Ensemble, Members::Snapshot);
    match open(&args.run, &options, members)? {
        Opened::Image(predictor) => predict_images(&args, &predictor),
        Opened::Tabular(predictor) => crate::predict_rows::predict_rows(&args, &predictor),
        Opened::Text(predictor) => crate::predict_text::predict_texts(&args, &predictor),
    }
}

fn predict_images(args: &PredictArgs, predictor: &Predictor) -> anyhow::Result<()> {
    let inputs = load_inputs(&args.inputs, &predictor.card, args.resize || predictor.resizes())?;
    let tta = predictor.has_tta() && !args.no_tta;
    let probs = predictor.predict(&inputs.data, tta)?;

    let (accuracy, loss) = match &args.labels {
        Some(path) => {
            let labels = cyclotron_worker::data::idx::read_idx(path, 1)?;
            anyhow::ensure!(
                labels.dims[0] == inputs.names.len(),
                "--labels {} holds {} labels for {} inputs",
                path.display(),
                labels.dims[0],
                inputs.names.len()
            );
            let classes = predictor.card.classes.len();
            if let Some(bad) = labels.data.iter().find(|&&l| usize::from(l) >= classes) {
                anyhow::bail!(
                    "--labels {}: label {bad} is not one of the model's {classes} classes",
                    path.display()
                );
            }
            let y = Tensor::from_slice(&labels.data.iter().map(|&l| i64::from(l)).collect::<Vec<_>>());
            let m = cyclotron_worker::task::classification_metrics(&probs, &y);
            (Some(m.accuracy), Some(m.loss))
        }
        None => (None, None),
    };

    let report = Report {
        members: predictor.members.iter().map(|m| m.url.clone()).collect(),
        tta,
        accuracy,
        loss,
        labelled: accuracy.map(|_| inputs.names.len()),
        predictions: ranked(&probs, &inputs.names, &predictor.card.classes, args.top)?,
    };
    emit(args, &report)
}

/// Each input's `top` most probable classes of `probs` [N, classes], in `names`' order.
pub(crate) fn ranked(
    probs: &Tensor,
    names: &[String],
    classes: &[String],
    top: usize,
) -> anyhow::Result<Vec<Prediction>> {
    let k = top.min(classes.len()) as i64;
    let (values, indices) = probs.topk(k, -1, true, true);
    let values = Vec::<Vec<f64>>::try_from(values.to_kind(Kind::Double)).context("probabilities")?;
    let indices = Vec::<Vec<i64>>::try_from(indices).context("classes")?;
    Ok(names
        .iter()
        .zip(values.iter().zip(&indices))
        .map(|(name, (ps, ixs))| Prediction {
            input: name.clone(),
            text: None,
            top: ps
                .iter()
                .zip(ixs)
                .map(|(&p, &i)| Ranked {
                    class: classes[i as usize].clone(),
                    index: i as usize,
                    probability: p,
                })
                .collect(),
        })
        .collect())
}

/// `report` as `--json`, `--csv` or the table.
pub(crate) fn emit(args: &PredictArgs, report: &Report) -> anyhow::Result<()> {
    if args.json {
        println!("{}", serde_json::to_string_pretty(report)?);
    } else if args.csv {
        println!("input,rank,class,probability");
        for p in &report.predictions {
            for (r, t) in p.top.iter().enumerate() {
                println!("{},{},{},{:.6}", csv_field(&p.input), r + 1, csv_field(&t.class), t.probability);
            }
        }
    } else {
        print_table(report);
    }
    Ok(())
}

/// A CSV field, quoted when it holds a comma, a quote or a line break.
pub(crate) fn csv_field(s: &str) -> String {
    if s.contains([',', '"', '\n', '\r']) {
        format!("\"{}\"", s.replace('"', "\"\""))
    } else {
        s.to_string()
    }
}

pub(crate) fn print_table(r: &Report) {
    let how = if r.tta { ", with test-time augmentation" } else { "" };
    match r.members.as_slice() {
        [one] => println!("snapshot {one}{how}"),
        many => println!("ensemble of {} snapshots{how}: {}", many.len(), many.join(", ")),
    }
    let width = r.predictions.iter().map(|p| p.input.chars().count()).max().unwrap_or(5).clamp(5, 60);
    let texts: Vec<Option<String>> = r.predictions.iter().map(|p| p.text.as_deref().map(excerpt)).collect();
    let text_width = texts.iter().flatten().map(|t| t.chars().count()).max().unwrap_or(0);
    for (p, text) in r.predictions.iter().zip(&texts) {
        let top: Vec<String> =
            p.top.iter().map(|t| format!("{} {:.1}%", t.class, 100.0 * t.probability)).collect();
        match text {
            Some(t) => println!("{:<width$}  {t:<text_width$}  {}", p.input, top.join("   ")),
            None => println!("{:<width$}  {}", p.input, top.join("   ")),
        }
    }
    if let (Some(a), Some(l)) = (r.accuracy, r.loss) {
        let n = r.labelled.unwrap_or(r.predictions.len());
        println!("accuracy {:.2}%  loss {l:.4}  on {n} labelled inputs", 100.0 * a);
    }
}

/// A text as the table shows it: on one line, quoted, cut to 40 characters.
pub(crate) fn excerpt(text: &str) -> String {
    let flat: String = text.split_whitespace().collect::<Vec<_>>().join(" ");
    match flat.char_indices().nth(40) {
        Some((cut, _)) => format!("\"{}…\"", &flat[..cut]),
        None => format!("\"{flat}\""),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn csv_fields_are_quoted_only_when_needed() {
        assert_eq!(csv_field("T-shirt/top"), "T-shirt/top");
        assert_eq!(csv_field("a,b"), "\"a,b\"");
        assert_eq!(csv_field("say \"hi\""), "\"say \"\"hi\"\"\"");
    }

    #[test]
    fn excerpts_are_one_quoted_line_of_at_most_forty_characters() {
        assert_eq!(excerpt("a fine\n  warm film"), "\"a fine warm film\"");
        let long = "é".repeat(50);
        assert_eq!(excerpt(&long), format!("\"{}…\"", "é".repeat(40)));
    }
}
