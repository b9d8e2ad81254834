//! `cyclotron predict RUN FILE.csv…` for a tabular run: each row's prediction (a value on the
//! target's scale, or the top classes with their probabilities) as a table, JSON or CSV; when the
//! files carry the target column with a value in every row, the metrics of the predictions too
//! (RMSPE and the log loss, or accuracy and NLL), computed as the run's evaluation computes them.

use anyhow::Context;
use cyclotron_worker::data::tabular::preprocess::Targets;
use cyclotron_worker::predict::TabularPredictor;
use cyclotron_worker::task::tabular::regression_metrics;
use serde::Serialize;
use tch::{Kind, Tensor};

use crate::predict_cmd::{csv_field, emit, ranked, PredictArgs, Report};

#[derive(Serialize)]
struct Value {
    input: String,
    value: f64,
}

#[derive(Serialize)]
struct ValueReport {
    members: Vec<String>,
    target: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    rmspe: Option<f64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    loss: Option<f64>,
    /// Categorical values whose level the training split did not have (predicted as unknown).
    unseen_levels: usize,
    rows_without_target: usize,
    predictions: Vec<Value>,
}

pub fn predict_rows(args: &PredictArgs, p: &TabularPredictor) -> anyhow::Result<()> {
    for (set, flag) in
        [(args.no_tta, "--no-tta"), (args.resize, "--resize"), (args.labels.is_some(), "--labels")]
    {
        anyhow::ensure!(
            !set,
            "{flag} applies to image runs; this run is tabular (the CSV's own `{}` column, when present, is scored)",
            p.prep.target
        );
    }
    let inputs = p.load(&args.inputs)?;
    let out = p.predict(&inputs.table)?;
    let members: Vec<String> = p.members.iter().map(|m| m.url.clone()).collect();
    let target = match &inputs.targets {
        Some(Targets::Values(v)) => Some(Tensor::from_slice(v)),
        Some(Targets::Classes(c)) => Some(Tensor::from_slice(c)),
        None => None,
    };
    match p.classes() {
        None => {
            let metrics = target.as_ref().map(|y| regression_metrics(&out, y, p.log_target()));
            let values = Vec::<f64>::try_from(out.to_kind(Kind::Double)).context("predictions")?;
            let report = ValueReport {
                members,
                target: p.prep.target.clone(),
                rmspe: metrics.as_ref().and_then(|m| m.rmspe),
                loss: metrics.as_ref().map(|m| m.loss),
                unseen_levels: inputs.table.unseen,
                rows_without_target: inputs.without_target,
                predictions: inputs
                    .names
                    .iter()
                    .zip(values)
                    .map(|(input, value)| Value { input: input.clone(), value })
                    .collect(),
            };
            if args.json {
                println!("{}", serde_json::to_string_pretty(&report)?);
            } else if args.csv {
                println!("input,{}", csv_field(&report.target));
                for v in &report.predictions {
                    println!("{},{}", csv_field(&v.input), v.value);
                }
            } else {
                print_values(&report);
            }
        }
        Some(classes) => {
            let metrics = target.as_ref().map(|y| cyclotron_worker::task::classification_metrics(&out, y));
            let report = Report {
                members,
                tta: false,
                accuracy: metrics.as_ref().map(|m| m.accuracy),
                loss: metrics.as_ref().map(|m| m.loss),
                labelled: metrics.as_ref().map(|_| inputs.names.len()),
                predictions: ranked(&out, &inputs.names, classes, args.top)?,
            };
            emit(args, &report)?;
            if inputs.table.unseen > 0 {
                eprintln!(
                    "{} categorical values were not seen in training (predicted as unknown)",
                    inputs.table.unseen
                );
            }
        }
    }
    if inputs.without_target > 0 {
        eprintln!(
            "{} rows have no `{}` value: metrics are given only when every row has one",
            inputs.without_target, p.prep.target
        );
    }
    Ok(())
}

fn print_values(r: &ValueReport) {
    match r.members.as_slice() {
        [one] => println!("snapshot {one}"),
        many => println!("ensemble of {} snapshots: {}", many.len(), many.join(", ")),
    }
    let width = r.predictions.iter().map(|p| p.input.chars().count()).max().unwrap_or(5).clamp(5, 60);
    for v in &r.predictions {
        println!("{:<width$}  {} {:.4}", v.input, r.target, v.value);
    }
    if let (Some(rmspe), Some(loss)) = (r.rmspe, r.loss) {
        println!("RMSPE {rmspe:.4}  loss {loss:.5}  on {} rows", r.predictions.len());
    }
    if r.unseen_levels > 0 {
        println!("{} categorical values were not seen in training (predicted as unknown)", r.unseen_levels);
    }
}
