//! `[data.text]` and `[model.lstm]`: the settings of text jobs (a language model trained with
//! truncated BPTT, a text classifier on its encoder).

use serde::{Deserialize, Serialize};

/// How text is read, tokenised and cut.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TextSpec {
    /// Tokens per window of truncated backpropagation through time (a language model): the hidden
    /// state is carried across windows and detached between them. Windows vary around it
    /// (`bptt`, `bptt/2` one time in twenty, then ± N(0, 5)), as fastai's.
    #[serde(default = "default_bptt")]
    pub bptt: u32,
    /// Tokens in the vocabulary the tokenizer (BPE) learns from the training text, special
    /// tokens included. A classifier on a language model's encoder takes that model's tokenizer.
    #[serde(default = "default_vocab_size")]
    pub vocab_size: usize,
    /// Pairs seen fewer times are not merged into a token.
    #[serde(default = "default_min_frequency")]
    pub min_frequency: u64,
    /// A language model trains on at most this many tokens of its corpus (documents in order).
    #[serde(default)]
    pub max_tokens: Option<usize>,
    /// A classifier keeps the first `max_len` tokens of each text (longer ones are cut there).
    #[serde(default = "default_max_len")]
    pub max_len: usize,
    /// The CSV columns of a classifier's examples.
    #[serde(default = "default_text_column")]
    pub text_column: String,
    #[serde(default = "default_label_column")]
    pub label_column: String,
    /// The classes in index order; rows with another label are skipped. Default: every label of
    /// the training split, sorted.
    #[serde(default)]
    pub labels: Option<Vec<String>>,
}

fn default_bptt() -> u32 {
    70
}
fn default_vocab_size() -> usize {
    8000
}
fn default_min_frequency() -> u64 {
    2
}
fn default_max_len() -> usize {
    400
}
fn default_text_column() -> String {
    "text".into()
}
fn default_label_column() -> String {
    "label".into()
}

impl Default for TextSpec {
    fn default() -> Self {
        TextSpec {
            bptt: default_bptt(),
            vocab_size: default_vocab_size(),
            min_frequency: default_min_frequency(),
            max_tokens: None,
            max_len: default_max_len(),
            text_column: default_text_column(),
            label_column: default_label_column(),
            labels: None,
        }
    }
}

/// The recurrent encoder (`arch = "awd_lstm"`) and its heads.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LstmSpec {
    /// Width of the embedding (and of the last LSTM layer, whose output the tied decoder reads).
    #[serde(default = "default_emb")]
    pub emb_size: i64,
    /// Width of the other LSTM layers.
    #[serde(default = "default_hidden")]
    pub hidden_size: i64,
    #[serde(default = "default_layers")]
    pub layers: i64,
    /// Probability of dropping a whole word vector.
    #[serde(default = "default_embed_dropout")]
    pub embed_dropout: f64,
    /// Dropout of the embedded input.
    #[serde(default = "default_input_dropout")]
    pub input_dropout: f64,
    /// Dropout between LSTM layers.
    #[serde(default = "default_hidden_dropout")]
    pub hidden_dropout: f64,
    /// Dropout of the last layer's output.
    #[serde(default = "default_output_dropout")]
    pub output_dropout: f64,
    /// A classifier's hidden layer width and dropout.
    #[serde(default = "default_head_hidden")]
    pub head_hidden: i64,
    #[serde(default = "default_head_dropout")]
    pub head_dropout: f64,
}

fn default_emb() -> i64 {
    200
}
fn default_hidden() -> i64 {
    400
}
fn default_layers() -> i64 {
    2
}
fn default_embed_dropout() -> f64 {
    0.05
}
fn default_input_dropout() -> f64 {
    0.2
}
fn default_hidden_dropout() -> f64 {
    0.15
}
fn default_output_dropout() -> f64 {
    0.25
}
fn default_head_hidden() -> i64 {
    50
}
fn default_head_dropout() -> f64 {
    0.1
}

impl Default for LstmSpec {
    fn default() -> Self {
        LstmSpec {
            emb_size: default_emb(),
            hidden_size: default_hidden(),
            layers: default_layers(),
            embed_dropout: default_embed_dropout(),
            input_dropout: default_input_dropout(),
            hidden_dropout: default_hidden_dropout(),
            output_dropout: default_output_dropout(),
            head_hidden: default_head_hidden(),
            head_dropout: default_head_dropout(),
        }
    }
}

impl LstmSpec {
    /// Every problem, each naming its field.
    pub fn problems(&self) -> Vec<String> {
        let mut p = vec![];
        for (name, v) in [
            ("emb_size", self.emb_size),
            ("hidden_size", self.hidden_size),
            ("head_hidden", self.head_hidden),
        ] {
            if !(1..=16_384).contains(&v) {
                p.push(format!("model.lstm.{name}: must be in 1..=16384, got {v}"));
            }
        }
        if !(1..=8).contains(&self.layers) {
            p.push(format!("model.lstm.layers: must be in 1..=8, got {}", self.layers));
        }
        for (name, v) in [
            ("embed_dropout", self.embed_dropout),
            ("input_dropout", self.input_dropout),
            ("hidden_dropout", self.hidden_dropout),
            ("output_dropout", self.output_dropout),
            ("head_dropout", self.head_dropout),
        ] {
            if !(0.0..1.0).contains(&v) {
                p.push(format!("model.lstm.{name}: must be in [0, 1), got {v}"));
            }
        }
        p
    }
}

impl TextSpec {
    /// Every problem, each naming its field.
    pub fn problems(&self) -> Vec<String> {
        let mut p = vec![];
        if !(2..=10_000).contains(&self.bptt) {
            p.push(format!("data.text.bptt: must be in 2..=10000 tokens, got {}", self.bptt));
        }
        if !(16..=1_000_000).contains(&self.vocab_size) {
            p.push(format!("data.text.vocab_size: must be in 16..=1000000, got {}", self.vocab_size));
        }
        if self.min_frequency == 0 {
            p.push("data.text.min_frequency: must be at least 1".into());
        }
        if !(1..=100_000).contains(&self.max_len) {
            p.push(format!("data.text.max_len: must be in 1..=100000 tokens, got {}", self.max_len));
        }
        if self.max_tokens == Some(0) {
            p.push("data.text.max_tokens: must be at least 1 (or absent for the whole corpus)".into());
        }
        if self.labels.as_ref().is_some_and(|l| l.len() < 2) {
            p.push("data.text.labels: list at least two classes".into());
        }
        p
    }
}
