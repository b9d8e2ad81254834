//! `cyclotron predict RUN INPUT…` for a text classifier: each text's top classes with their
//! probabilities, as a table, JSON or CSV; the accuracy and loss of the predictions over the
//! inputs that came with a label the model knows (a CSV file's label column), computed as the
//! run's evaluation computes them.

use cyclotron_worker::predict::TextPredictor;
use tch::Tensor;

use crate::predict_cmd::{emit, ranked, PredictArgs, Report};

pub fn predict_texts(args: &PredictArgs, p: &TextPredictor) -> anyhow::Result<()> {
    let (_, label_column) = p.columns();
    for (set, flag) in
        [(args.no_tta, "--no-tta"), (args.resize, "--resize"), (args.labels.is_some(), "--labels")]
    {
        anyhow::ensure!(
            !set,
            "{flag} applies to image runs; this run classifies texts (a CSV file's own `{label_column}` column, when present, is scored)"
        );
    }
    let inputs = p.load(&args.inputs, &mut std::io::stdin().lock())?;
    let probs = p.predict(&inputs)?;
    let (rows, labels) = inputs.labelled();
    let metrics = (!rows.is_empty()).then(|| {
        let scored = probs.index_select(0, &Tensor::from_slice(&rows));
        cyclotron_worker::task::classification_metrics(&scored, &Tensor::from_slice(&labels))
    });
    let mut predictions = ranked(&probs, &inputs.names, &p.classes, args.top)?;
    for (prediction, text) in predictions.iter_mut().zip(&inputs.texts) {
        prediction.text = Some(text.clone());
    }
    let report = Report {
        members: p.members.iter().map(|m| m.url.clone()).collect(),
        tta: false,
        accuracy: metrics.as_ref().map(|m| m.accuracy),
        loss: metrics.as_ref().map(|m| m.loss),
        labelled: metrics.as_ref().map(|_| rows.len()),
        predictions,
    };
    emit(args, &report)?;
    if !inputs.unknown_labels.is_empty() {
        let mut unknown = inputs.unknown_labels.clone();
        unknown.sort();
        unknown.dedup();
        eprintln!(
            "{} inputs have a `{label_column}` that is not one of the model's classes {:?} ({}): they are predicted, not scored",
            inputs.unknown_labels.len(),
            p.classes,
            unknown.join(", ")
        );
    }
    Ok(())
}
