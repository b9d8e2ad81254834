//! `cyclotron predict` of a text classifier: texts through the run's own tokenizer
//! (`tokenizer.json`) and class names (`text.json`), kept with each snapshot, encoded as training
//! encoded them ([`encode_example`]: `<bos>`, the ids, at most `data.text.max_len`) and scored by
//! the code that scored the run's splits ([`TextClassifier::probabilities`]), each member's
//! probabilities averaged as the run's ensemble averaged them. A text the run evaluated, in the
//! same company, gets the same probabilities.
//!
//! Inputs: CSV files (the job's `data.text.text_column`; its `label_column`, when the file has
//! one, is scored), text files (one text each, as a review in a file), folders of `.txt` files,
//! and `-`: standard input, one text per non-empty line.

use std::io::Read;
use std::path::{Path, PathBuf};
use std::rc::Rc;
use std::sync::atomic::AtomicBool;

use cyclotron_core::spec::JobSpec;
use tch::{Device, Tensor};
use tokenizers::Tokenizer;

use super::{blob, invalid, json, Member};
use crate::checkpoint::snapshot::SnapshotFiles;
use crate::data::text::{load_tokenizer, read_csv_texts, read_text, text_files, vocab_size, MAX_DOC_BYTES};
use crate::error::Result;
use crate::task::text_classifier::{
    classifier_net, encode_example, Examples, TextCard, TextClassifier, TextData, TEXT_CARD,
};
use crate::tensor_io::from_safetensors;

/// A text classifier's run, ready to predict.
pub struct TextPredictor {
    /// Class names in index order (every member's must be the same).
    pub classes: Vec<String>,
    /// The tokenizer every member was trained with (they must agree).
    pub tokenizer: Tokenizer,
    /// `data.text.max_len` of every member (they must agree): a text is encoded once for all.
    pub max_len: usize,
    /// The first member's job spec.
    pub spec: JobSpec,
    pub members: Vec<Member>,
}

/// Texts to classify.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct TextInputs {
    /// `FILE:LINE` of a CSV row or a line of standard input (`stdin:LINE`), or a text file's path.
    pub names: Vec<String>,
    pub texts: Vec<String>,
    /// Each input's class index, when it came with a label that is one of the model's classes.
    pub labels: Vec<Option<i64>>,
    /// Labels met that are not classes of the model (their rows are predicted, not scored).
    pub unknown_labels: Vec<String>,
}

impl TextInputs {
    fn push(&mut self, name: String, text: String, label: Option<i64>) -> Result<()> {
        if text.len() > MAX_DOC_BYTES {
            return Err(invalid(
                &name,
                format!("the text is {} bytes, over the limit of {MAX_DOC_BYTES}", text.len()),
            ));
        }
        self.names.push(name);
        self.texts.push(text);
        self.labels.push(label);
        Ok(())
    }

    /// The inputs with a known label: their positions and class indices.
    pub fn labelled(&self) -> (Vec<i64>, Vec<i64>) {
        self.labels.iter().enumerate().filter_map(|(i, l)| l.map(|l| (i as i64, l))).unzip()
    }
}

impl TextPredictor {
    pub(super) fn from_members(read: Vec<(SnapshotFiles, JobSpec)>) -> Result<TextPredictor> {
        let mut members: Vec<Member> = vec![];
        let mut first: Option<(TextCard, Vec<u8>, usize)> = None;
        for (files, spec) in read {
            let card: TextCard = json(&files, TEXT_CARD)?;
            let tokenizer = blob(&files, "tokenizer.json")?.to_vec();
            let max_len = spec.data.text.clone().unwrap_or_default().max_len;
            match &first {
                Some((c, t, m)) if *c != card || *t != tokenizer || *m != max_len => {
                    return Err(invalid(
                        "predict",
                        format!(
                            "{} was trained on other classes, another tokenizer or another max_len than {}",
                            files.url, members[0].url
                        ),
                    ))
                }
                Some(_) => {}
                None => first = Some((card, tokenizer, max_len)),
            }
            let weights = from_safetensors(blob(&files, "model.safetensors")?, &files.url)?;
            members.push(Member { url: files.url.clone(), spec, weights, module: None });
        }
        let Some((card, tokenizer, max_len)) = first else {
            return Err(invalid("predict", "the run names no snapshot to predict with"));
        };
        let tokenizer = load_tokenizer(&String::from_utf8_lossy(&tokenizer))?;
        let spec = members[0].spec.clone();
        Ok(TextPredictor { classes: card.classes, tokenizer, max_len, spec, members })
    }

    /// The CSV column of the texts and of their labels (`[data.text]`'s).
    pub fn columns(&self) -> (String, String) {
        let t = self.spec.data.text.clone().unwrap_or_default();
        (t.text_column, t.label_column)
    }

    /// The texts at `paths` (see the module's documentation for what each may be); `stdin` is
    /// what `-` reads.
    pub fn load(&self, paths: &[PathBuf], stdin: &mut dyn Read) -> Result<TextInputs> {
        if paths.is_empty() {
            return Err(invalid("predict", "no input given"));
        }
        let mut inputs = TextInputs::default();
        for path in paths {
            if path.as_os_str() == "-" {
                let mut text = String::new();
                stdin
                    .read_to_string(&mut text)
                    .map_err(|e| invalid("-", format!("standard input is not UTF-8 text ({e})")))?;
                for (i, line) in text.lines().enumerate().filter(|(_, l)| !l.trim().is_empty()) {
                    inputs.push(format!("stdin:{}", i + 1), line.trim().to_string(), None)?;
                }
            } else if path.extension().is_some_and(|e| e.eq_ignore_ascii_case("csv")) {
                self.load_csv(path, &mut inputs)?;
            } else {
                let files = text_files(path)?;
                if files.is_empty() {
                    return Err(invalid(
                        &path.display().to_string(),
                        "holds no .txt file; a text classifier predicts texts: CSV files, .txt files or - (standard input, a text a line)",
                    ));
                }
                for file in files {
                    let text = read_text(&file)?;
                    inputs.push(file.display().to_string(), text.trim().to_string(), None)?;
                }
            }
        }
        if inputs.texts.is_empty() {
            return Err(invalid("predict", "the inputs hold no text"));
        }
        Ok(inputs)
    }

    fn load_csv(&self, path: &Path, inputs: &mut TextInputs) -> Result<()> {
        let (text_column, label_column) = self.columns();
        let read = read_csv_texts(path, &text_column, &label_column)?;
        for row in read.rows {
            let label = match row.label.filter(|l| !l.is_empty()) {
                Some(l) => match self.classes.iter().position(|c| *c == l) {
                    Some(i) => Some(i as i64),
                    None => {
                        inputs.unknown_labels.push(l);
                        None
                    }
                },
                None => None,
            };
            inputs.push(format!("{}:{}", path.display(), row.line), row.text, label)?;
        }
        Ok(())
    }

    /// Class probabilities `[N, classes]` of `inputs` (on the CPU), every member's averaged.
    pub fn predict(&self, inputs: &TextInputs) -> Result<Tensor> {
        if inputs.texts.is_empty() {
            return Err(invalid("predict", "no inputs"));
        }
        let abort = AtomicBool::new(false);
        let device = Device::cuda_if_available();
        let vocab = vocab_size(&self.tokenizer) as i64;
        let classes = self.classes.len() as i64;
        let tokens = inputs
            .texts
            .iter()
            .map(|t| encode_example(&self.tokenizer, t, self.max_len))
            .collect::<Result<Vec<_>>>()?;
        let examples = Examples { labels: vec![0; tokens.len()], tokens };
        let mut probs = vec![];
        for m in &self.members {
            let net = classifier_net(&m.spec, vocab, classes, device);
            super::load_member(&net, &m.weights, &m.url, false)?;
            let none = Rc::new(Examples::default());
            let data = TextData {
                train: Rc::clone(&none),
                valid: none,
                test: None,
                classes: self.classes.clone(),
                batch_size: m.spec.data.batch_size,
            };
            let task = TextClassifier::new(net, data, self.tokenizer.clone(), m.spec.seed);
            probs.push(task.probabilities(&examples, &abort)?);
        }
        let refs: Vec<&Tensor> = probs.iter().collect();
        Ok(crate::ensemble::average(&refs))
    }
}
