//! Text classification on an LSTM encoder (ULMFiT's classifier): each example's tokens (`<bos>`
//! first, at most `max_len` of them), right-padded per batch, through the encoder, then concat
//! pooling over the real positions and a small head. Padding changes no prediction: the LSTM
//! reads forward, so positions after a sequence's end never reach its outputs, and pooling looks
//! at real positions only.
//!
//! The encoder may start from a language model's snapshot ([`crate::checkpoint::snapshot`]), with
//! that model's tokenizer; then the usual stages apply: the head alone first (`freeze = true`),
//! gradual unfreezing (`freeze_to`), discriminative learning rates, lr_find, SGDR, snapshots.

use std::rc::Rc;
use std::sync::atomic::AtomicBool;

use cyclotron_core::results::Metrics;
use tch::{Device, Kind, Tensor};
use tokenizers::Tokenizer;

use super::{check_abort, classification_metrics, Batch, Batches, Shard, Split, Task};
use crate::data::rank_positions;
use crate::data::text::PAD_ID;
use crate::error::{Error, Result};
use crate::models::lstm::ClassifierNet;
use crate::models::Model;

/// What a text classifier's snapshot keeps beside its weights and `tokenizer.json` so that
/// `cyclotron predict` can name what it predicts: the class names in index order.
pub const TEXT_CARD: &str = "text.json";

/// The contents of [`TEXT_CARD`].
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct TextCard {
    pub classes: Vec<String>,
}

/// The token ids of `text` as the classifier reads it, in training, evaluation and `predict`
/// alike: `<bos>`, then the tokenizer's ids, at most `max_len` in all.
pub fn encode_example(tokenizer: &Tokenizer, text: &str, max_len: usize) -> Result<Vec<i64>> {
    let mut ids = vec![crate::data::text::BOS_ID];
    ids.extend(crate::data::text::encode(tokenizer, text)?);
    ids.truncate(max_len.max(1));
    Ok(ids)
}

/// The classifier network of `spec` for a vocabulary of `vocab` tokens and `classes` classes,
/// fresh weights from the torch seed in force.
pub fn classifier_net(
    spec: &cyclotron_core::spec::JobSpec,
    vocab: i64,
    classes: i64,
    device: Device,
) -> ClassifierNet {
    let cfg = super::language_model::lstm_config(spec, vocab);
    let l = spec.model.lstm.clone().unwrap_or_default();
    ClassifierNet::new(tch::nn::VarStore::new(device), cfg, l.head_hidden, classes, l.head_dropout)
}

/// Tokenised examples of one split: token ids (each at least one, `<bos>`) and class indices.
#[derive(Debug, Clone, Default)]
pub struct Examples {
    pub tokens: Vec<Vec<i64>>,
    pub labels: Vec<i64>,
}

impl Examples {
    pub fn len(&self) -> usize {
        self.labels.len()
    }

    pub fn is_empty(&self) -> bool {
        self.labels.is_empty()
    }
}

/// The splits of a text classifier.
pub struct TextData {
    pub train: Rc<Examples>,
    pub valid: Rc<Examples>,
    pub test: Option<Rc<Examples>>,
    pub classes: Vec<String>,
    pub batch_size: usize,
}

/// A classifier of texts by an LSTM encoder.
pub struct TextClassifier {
    net: Rc<ClassifierNet>,
    data: TextData,
    tokenizer: Rc<Tokenizer>,
    seed: u64,
    /// `[loss] label_smoothing` of the training loss.
    label_smoothing: f64,
}

/// Right-padded tokens `[T, B]`, lengths `[B]` of the examples at `rows`.
pub fn pad(examples: &Examples, rows: &[usize]) -> (Tensor, Tensor) {
    let t = rows.iter().map(|&r| examples.tokens[r].len()).max().unwrap_or(1).max(1);
    let mut flat = vec![PAD_ID; t * rows.len()];
    for (b, &r) in rows.iter().enumerate() {
        for (i, &tok) in examples.tokens[r].iter().enumerate() {
            flat[i * rows.len() + b] = tok;
        }
    }
    let lengths: Vec<i64> = rows.iter().map(|&r| examples.tokens[r].len().max(1) as i64).collect();
    (Tensor::from_slice(&flat).view([t as i64, rows.len() as i64]), Tensor::from_slice(&lengths))
}

impl TextClassifier {
    pub fn new(net: ClassifierNet, data: TextData, tokenizer: Tokenizer, seed: u64) -> Self {
        TextClassifier { net: Rc::new(net), data, tokenizer: Rc::new(tokenizer), seed, label_smoothing: 0.0 }
    }

    /// This task with label smoothing `eps` in its training loss.
    pub fn with_label_smoothing(mut self, eps: f64) -> Self {
        self.label_smoothing = eps;
        self
    }

    pub fn net(&self) -> &ClassifierNet {
        &self.net
    }

    pub fn data(&self) -> &TextData {
        &self.data
    }

    fn device(&self) -> Device {
        self.net.vs.device()
    }

    fn split(&self, split: Split) -> &Examples {
        match split {
            Split::Train => &self.data.train,
            Split::Valid => &self.data.valid,
            Split::Eval => self.data.test.as_deref().unwrap_or(&self.data.valid),
        }
    }

    /// Class probabilities `[N, classes]` of `examples`, in order, on the CPU.
    pub fn probabilities(&self, examples: &Examples, abort: &AtomicBool) -> Result<Tensor> {
        let _guard = tch::no_grad_guard();
        if examples.is_empty() {
            return Err(Error::Invalid { what: "evaluation".into(), message: "the split is empty".into() });
        }
        // batches of similar lengths pad little; the rows go back to their order at the end
        let mut order: Vec<usize> = (0..examples.len()).collect();
        order.sort_by_key(|&r| examples.tokens[r].len());
        let mut parts = vec![];
        for rows in order.chunks(self.data.batch_size * 2) {
            check_abort(abort)?;
            let (x, lengths) = pad(examples, rows);
            let logits = self.net.forward(&x.to_device(self.device()), &lengths, false);
            parts.push(logits.softmax(-1, Kind::Float).to_device(Device::Cpu));
        }
        let sorted = Tensor::cat(&parts, 0);
        let inverse: Vec<i64> = {
            let mut inv = vec![0i64; order.len()];
            for (pos, &r) in order.iter().enumerate() {
                inv[r] = pos as i64;
            }
            inv
        };
        Ok(sorted.index_select(0, &Tensor::from_slice(&inverse)))
    }
}

impl Task for TextClassifier {
    fn model(&self) -> &dyn Model {
        &*self.net
    }

    fn steps_per_epoch(&self, world: usize) -> Result<u64> {
        super::full_batches(self.data.train.len(), self.data.batch_size, world, "examples", "")
    }

    fn train_batches(&self, epoch: u64, shard: Shard) -> Result<Batches> {
        let b = self.data.batch_size;
        let positions = rank_positions(self.data.train.len(), self.seed, epoch, shard.rank, shard.world, b);
        let examples = Rc::clone(&self.data.train);
        let n = positions.len() / b.max(1);
        Ok(Box::new((0..n).map(move |k| {
            let rows = &positions[k * b..(k + 1) * b];
            let (x, lengths) = pad(&examples, rows);
            let y: Vec<i64> = rows.iter().map(|&r| examples.labels[r]).collect();
            Batch { inputs: vec![x, lengths], target: Tensor::from_slice(&y), items: rows.len() as u64 }
        })))
    }

    fn loss(&mut self, batch: &Batch) -> Result<Tensor> {
        let device = self.device();
        let logits = self.net.forward(&batch.inputs[0].to_device(device), &batch.inputs[1], true);
        Ok(super::classification_loss(&logits, &batch.target.to_device(device), self.label_smoothing))
    }

    fn predict(&self, split: Split, abort: &AtomicBool) -> Result<Tensor> {
        self.probabilities(self.split(split), abort)
    }

    fn metrics(&self, predictions: &Tensor, split: Split) -> Metrics {
        classification_metrics(predictions, &Tensor::from_slice(&self.split(split).labels))
    }

    fn eval_split(&self) -> &'static str {
        if self.data.test.is_some() {
            "test"
        } else {
            "valid"
        }
    }

    fn artifacts(&self) -> Result<Vec<(String, Vec<u8>)>> {
        let json = crate::data::text::tokenizer_json(&self.tokenizer)?;
        let card = serde_json::to_vec(&TextCard { classes: self.data.classes.clone() })
            .map_err(|e| Error::Invalid { what: TEXT_CARD.into(), message: e.to_string() })?;
        Ok(vec![("tokenizer.json".into(), json.into_bytes()), (TEXT_CARD.into(), card)])
    }
}

/// Labelled rows `(text, label)` of the splits.
type Rows = Vec<(String, String)>;

/// The rows of `spec`'s labelled CSV data: `data.path` is a folder with `train.csv` (and
/// `valid.csv`, `test.csv`; a missing valid split is carved from train by `valid_pct`), or one
/// CSV file split by `valid_pct` and `data.test_pct` with `split_seed`.
fn read_rows(spec: &cyclotron_core::spec::JobSpec) -> Result<(Rows, Rows, Option<Rows>)> {
    use crate::data::text::read_labelled_csv;
    let t = spec.data.text.clone().unwrap_or_default();
    let path = std::path::PathBuf::from(spec.data.resolved_path());
    let keep = t.labels.as_deref();
    let read = |p: &std::path::Path| read_labelled_csv(p, &t.text_column, &t.label_column, keep);
    let seed = spec.data.split_seed.unwrap_or(spec.seed);
    let carve = |rows: Rows, pct: f64, salt: u64| -> (Rows, Rows) {
        let n_out = (rows.len() as f64 * pct).round() as usize;
        let order = crate::data::permutation(rows.len(), seed ^ salt);
        let mut out: Vec<usize> = order[..n_out.min(rows.len())].to_vec();
        out.sort_unstable();
        let (mut kept, mut taken) = (vec![], vec![]);
        for (i, r) in rows.into_iter().enumerate() {
            if out.binary_search(&i).is_ok() {
                taken.push(r);
            } else {
                kept.push(r);
            }
        }
        (kept, taken)
    };
    if path.is_dir() {
        let train = read(&path.join("train.csv"))?;
        let test = if path.join("test.csv").exists() { Some(read(&path.join("test.csv"))?) } else { None };
        let (train, valid) = if path.join("valid.csv").exists() {
            (train, read(&path.join("valid.csv"))?)
        } else {
            carve(train, spec.data.valid_pct, 0)
        };
        return Ok((train, valid, test));
    }
    let all = read(&path)?;
    let (rest, test) = match spec.data.test_pct {
        Some(p) if p > 0.0 => {
            let (rest, test) = carve(all, p, 0x7465_7374);
            (rest, Some(test))
        }
        _ => (all, None),
    };
    let (train, valid) = carve(rest, spec.data.valid_pct, 0);
    Ok((train, valid, test))
}

/// The text classifier of `spec`: examples from CSV, the tokenizer and encoder of the language
/// model snapshot `model.encoder` (or a tokenizer trained on the training texts and a fresh
/// encoder), the model from the job's seed.
pub fn build(
    spec: &cyclotron_core::spec::JobSpec,
    obs: &mut dyn crate::event::Observer,
) -> Result<TextClassifier> {
    use crate::data::text::{class_names, load_tokenizer, train_tokenizer, vocab_size};
    let t = spec.data.text.clone().unwrap_or_default();
    let options = crate::runtime::store_options(spec);
    let encoder = match &spec.model.encoder {
        Some(url) => Some(crate::checkpoint::snapshot::read_snapshot(url, &options, "model.encoder")?),
        None => None,
    };
    let (data, tokenizer) = crate::event::phase(obs, "loading data", || -> Result<_> {
        let (train, valid, test) = read_rows(spec)?;
        if train.is_empty() || valid.is_empty() {
            return Err(Error::Invalid {
                what: "data".into(),
                message: format!(
                    "{}: the training split has {} labelled rows and the validation split {}; both need some (check data.text.labels and the label column)",
                    spec.data.resolved_path(), train.len(), valid.len()
                ),
            });
        }
        let tokenizer = match &encoder {
            Some(snap) => {
                let json = snap.blob("tokenizer.json").ok_or_else(|| Error::Invalid {
                    what: "model.encoder".into(),
                    message: format!(
                        "{} has no tokenizer.json: it is not a language model's snapshot",
                        snap.url
                    ),
                })?;
                load_tokenizer(&String::from_utf8_lossy(json))?
            }
            None => train_tokenizer(
                &train.iter().map(|(x, _)| x.clone()).collect::<Vec<_>>(),
                t.vocab_size,
                t.min_frequency,
            )?,
        };
        let classes = class_names(&train, t.labels.as_deref());
        let examples = |rows: &Rows, split: &str| -> Result<Examples> {
            let mut ex = Examples::default();
            for (text, label) in rows {
                let Some(y) = classes.iter().position(|c| c == label) else {
                    return Err(Error::Invalid {
                        what: "data".into(),
                        message: format!("the {split} split has label {label:?}, which the training split lacks (classes: {classes:?}); list data.text.labels"),
                    });
                };
                ex.tokens.push(encode_example(&tokenizer, text, t.max_len)?);
                ex.labels.push(y as i64);
            }
            Ok(ex)
        };
        let data = TextData {
            train: Rc::new(examples(&train, "training")?),
            valid: Rc::new(examples(&valid, "validation")?),
            test: test.as_ref().map(|r| examples(r, "test")).transpose()?.map(Rc::new),
            classes,
            batch_size: spec.data.batch_size,
        };
        Ok((data, tokenizer))
    })?;
    crate::runtime::set_threads(spec);
    tch::manual_seed(spec.seed as i64);
    let device = crate::runtime::device(spec)?;
    let vocab = vocab_size(&tokenizer) as i64;
    let net = classifier_net(spec, vocab, data.classes.len() as i64, device);
    if let Some(snap) = &encoder {
        load_encoder(&net, snap, vocab)?;
    }
    Ok(TextClassifier::new(net, data, tokenizer, spec.seed).with_label_smoothing(spec.loss.label_smoothing))
}

/// Copy the `encoder.*` weights of a language model's snapshot into `net`: every encoder variable
/// must be there with its shape, and the embedding must have a row per token of the tokenizer.
fn load_encoder(
    net: &ClassifierNet,
    snap: &crate::checkpoint::snapshot::SnapshotFiles,
    vocab: i64,
) -> Result<()> {
    let weights = snap.blob("model.safetensors").ok_or_else(|| Error::Invalid {
        what: "model.encoder".into(),
        message: format!("{} has no model.safetensors", snap.url),
    })?;
    let tensors = crate::tensor_io::from_safetensors(weights, &snap.url)?;
    let rows = tensors.iter().find(|(n, _)| n == "encoder.embedding.weight").map(|(_, t)| t.size()[0]);
    match rows {
        None => {
            return Err(Error::Invalid {
                what: "model.encoder".into(),
                message: format!("{} holds no encoder.embedding.weight: it is not an LSTM language model", snap.url),
            })
        }
        Some(r) if r != vocab => {
            return Err(Error::Invalid {
                what: "model.encoder".into(),
                message: format!(
                    "the encoder's embedding has {r} rows but the tokenizer has {vocab} tokens: the vocabulary does not match the encoder"
                ),
            })
        }
        Some(_) => {}
    }
    let encoder: Vec<(String, Tensor)> =
        tensors.into_iter().filter(|(n, _)| n.starts_with("encoder.")).collect();
    let vars = net.vs.variables();
    let mut all: Vec<(String, Tensor)> = vars
        .iter()
        .filter(|(n, _)| !n.starts_with("encoder."))
        .map(|(n, t)| (n.clone(), t.detach().copy()))
        .collect();
    all.extend(encoder);
    crate::tensor_io::load_into(
        &net.vs,
        &all,
        &format!("{} (model.encoder; check [model.lstm] against the language model's)", snap.url),
    )
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::AtomicBool;

    use tch::nn;

    use super::*;
    use crate::models::lstm::LstmConfig;

    fn cfg() -> LstmConfig {
        LstmConfig {
            vocab: 30,
            emb: 6,
            hidden: 10,
            layers: 2,
            embed_dropout: 0.1,
            input_dropout: 0.1,
            hidden_dropout: 0.1,
            output_dropout: 0.1,
        }
    }

    fn classifier(examples: Examples) -> TextClassifier {
        tch::manual_seed(3);
        let net = ClassifierNet::new(nn::VarStore::new(Device::Cpu), cfg(), 8, 2, 0.1);
        let tokenizer = crate::data::text::train_tokenizer(&["a b".to_string()], 16, 1).unwrap();
        let ex = Rc::new(examples);
        let data = TextData {
            train: Rc::clone(&ex),
            valid: Rc::clone(&ex),
            test: None,
            classes: vec!["neg".into(), "pos".into()],
            batch_size: 2,
        };
        TextClassifier::new(net, data, tokenizer, 1)
    }

    #[test]
    fn a_review_padded_two_ways_gets_the_same_prediction() {
        let review = vec![2, 7, 8, 9, 4];
        let long: Vec<i64> = (0..40).map(|i| 3 + i % 20).collect();
        let alone = Examples { tokens: vec![review.clone()], labels: vec![1] };
        // in a batch with a much longer text: padded with 35 more positions
        let padded = Examples { tokens: vec![long, review.clone()], labels: vec![0, 1] };
        let c = classifier(alone.clone());
        let abort = AtomicBool::new(false);
        let a = c.probabilities(&alone, &abort).unwrap();
        let b = c.probabilities(&padded, &abort).unwrap().narrow(0, 1, 1);
        assert!(a.allclose(&b, 1e-6, 1e-6, false), "{a} vs {b}");
        let (x, lengths) = pad(&padded, &[0, 1]);
        assert_eq!(x.size(), vec![40, 2]);
        assert_eq!(Vec::<i64>::try_from(&lengths).unwrap(), vec![40, 5]);
        assert_eq!(x.int64_value(&[5, 1]), PAD_ID);
        // predictions come back in the split's order even though batches are sorted by length
        let both = c.probabilities(&padded, &abort).unwrap();
        let first_alone = c
            .probabilities(&Examples { tokens: vec![padded.tokens[0].clone()], labels: vec![0] }, &abort)
            .unwrap();
        assert!(both.narrow(0, 0, 1).allclose(&first_alone, 1e-6, 1e-6, false));
    }

    #[test]
    fn training_batches_carry_lengths_and_learn() {
        let tokens: Vec<Vec<i64>> =
            (0..64).map(|i| if i % 2 == 0 { vec![2, 5, 5, 6] } else { vec![2, 9, 9, 9, 9, 11] }).collect();
        let labels = (0..64).map(|i| i % 2).collect();
        let c = classifier(Examples { tokens, labels });
        let spec = cyclotron_core::spec::OptimizerSpec {
            kind: cyclotron_core::spec::OptimizerKind::Adamw,
            weight_decay: 0.0,
            ..Default::default()
        };
        let mut l = crate::learner::Learner::new(Box::new(c), &spec, 1);
        let before = l.evaluate(Split::Valid).unwrap();
        for epoch in 0..6 {
            for b in l.task.train_batches(epoch, Shard::ALONE).unwrap() {
                assert_eq!(b.inputs[1].size(), vec![2]);
                l.step(&b, &[0.01; crate::models::GROUPS]).unwrap();
            }
        }
        let after = l.evaluate(Split::Valid).unwrap();
        assert!(after.accuracy > 0.95 && after.loss < before.loss, "{before:?} -> {after:?}");
    }
}
