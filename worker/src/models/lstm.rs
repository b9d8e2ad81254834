//! The recurrent text models: an AWD-LSTM-style encoder (Merity et al. 2017, the encoder of
//! fastai's ULMFiT) — an embedding, a stack of single-layer LSTMs (torch's fused LSTM: cuDNN on a
//! GPU) with dropout between them — and the two heads built on it: a language-model decoder
//! tied to the embedding, and a classifier over pooled hidden states.
//!
//! Tensors are sequence-first: tokens `[T, B]`, outputs `[T, B, E]`. Regularisers, all active in
//! training mode only: embedding dropout (whole word vectors dropped, the rest rescaled), dropout
//! of the embedded input and between layers with one mask per sequence (variational, as fastai's
//! `RNNDropout`), and output dropout before the decoder or the head.
//!
//! Variable names (the layer groups follow them): `encoder.embedding.weight`,
//! `encoder.rnn.<i>.{weight,bias}_{ih,hh}_l0`, `decoder.bias`, `head.{hidden,out}.{weight,bias}`.
//! Groups: the embedding and the first LSTM (0), the other LSTMs (1), the decoder or head (2).

use std::fmt;

use tch::nn::{self, Module, RNN};
use tch::{Kind, Tensor};

use super::Model;

/// The shape and regularisation of a recurrent text model.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct LstmConfig {
    pub vocab: i64,
    pub emb: i64,
    pub hidden: i64,
    pub layers: i64,
    /// Probability of dropping a whole word vector of the embedding.
    pub embed_dropout: f64,
    /// Dropout of the embedded input.
    pub input_dropout: f64,
    /// Dropout between LSTM layers.
    pub hidden_dropout: f64,
    /// Dropout of the last layer's output, before the decoder or the head.
    pub output_dropout: f64,
}

/// Standard deviation of the embedding's initial values (see [`Encoder::new`]).
pub const EMBEDDING_STD: f64 = 0.3;

/// Hidden and cell state of every layer.
pub type State = Vec<nn::LSTMState>;

/// The same state, cut from the graph that produced it (truncated backpropagation through time).
pub fn detach(state: &State) -> State {
    state.iter().map(|s| nn::LSTMState((s.0 .0.detach(), s.0 .1.detach()))).collect()
}

/// The embedding and the LSTM stack.
pub struct Encoder {
    embedding: Tensor,
    rnns: Vec<nn::LSTM>,
    cfg: LstmConfig,
}

impl fmt::Debug for Encoder {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Encoder").field("cfg", &self.cfg).finish()
    }
}

/// One dropout mask per sequence: `[1, B, D]` for `[T, B, D]` inputs, scaled by `1/(1-p)`.
fn sequence_dropout(x: &Tensor, p: f64, train: bool) -> Tensor {
    if !train || p <= 0.0 {
        return x.shallow_clone();
    }
    let size = x.size();
    let mask =
        Tensor::empty([1, size[1], size[2]], (x.kind(), x.device())).bernoulli_float_(1.0 - p) / (1.0 - p);
    x * mask
}

impl Encoder {
    /// Under `p` (`encoder`): embeddings N(0, 0.3²), LSTMs uniform ±1/√hidden (torch's).
    ///
    /// The embedding's scale decides how long a language model sits on the unigram plateau. With
    /// AWD-LSTM's uniform ±0.1 (std 0.058) at 128 dimensions the LSTM's inputs are so small that
    /// examples/text_lm.toml stayed at the unigram perplexity (≈ 740) for 4 epochs, in Cyclotron and
    /// in PyTorch alike (bench/results/text-cpu-2core-2026-12-03b.md). PyTorch's same model after
    /// 150 steps: 760–851 with ±0.1 at lr 1e-3…1e-2, 479 with std 0.3, 493 with 0.5, 497 with 1.
    pub fn new(p: &nn::Path, cfg: LstmConfig) -> Encoder {
        let embedding = p.sub("embedding").var(
            "weight",
            &[cfg.vocab, cfg.emb],
            nn::Init::Randn { mean: 0.0, stdev: EMBEDDING_STD },
        );
        let rnns = (0..cfg.layers)
            .map(|i| {
                let input = if i == 0 { cfg.emb } else { cfg.hidden };
                let hidden = if i + 1 == cfg.layers { cfg.emb } else { cfg.hidden };
                let k = 1.0 / (hidden as f64).sqrt();
                let init = nn::Init::Uniform { lo: -k, up: k };
                let rc = nn::RNNConfig {
                    batch_first: false,
                    w_ih_init: init,
                    w_hh_init: init,
                    b_ih_init: Some(init),
                    b_hh_init: Some(init),
                    ..Default::default()
                };
                nn::lstm(p.sub("rnn").sub(i.to_string()), input, hidden, rc)
            })
            .collect();
        Encoder { embedding, rnns, cfg }
    }

    pub fn config(&self) -> &LstmConfig {
        &self.cfg
    }

    /// The embedding matrix `[vocab, emb]` (the tied decoder's weight).
    pub fn embedding(&self) -> &Tensor {
        &self.embedding
    }

    /// Zero state for `batch` sequences.
    pub fn zero_state(&self, batch: i64) -> State {
        self.rnns.iter().map(|r| r.zero_state(batch)).collect()
    }

    /// Outputs of the last layer `[T, B, emb]` for tokens `[T, B]` from `state` (zeros when
    /// `None`), and the state after the last step.
    pub fn forward(&self, tokens: &Tensor, state: Option<&State>, train: bool) -> (Tensor, State) {
        let weight = if train && self.cfg.embed_dropout > 0.0 {
            let keep = 1.0 - self.cfg.embed_dropout;
            let mask = Tensor::empty([self.cfg.vocab, 1], (self.embedding.kind(), self.embedding.device()))
                .bernoulli_float_(keep)
                / keep;
            &self.embedding * mask
        } else {
            self.embedding.shallow_clone()
        };
        let mut x = Tensor::embedding(&weight, tokens, -1, false, false);
        x = sequence_dropout(&x, self.cfg.input_dropout, train);
        let batch = tokens.size()[1];
        let zeros;
        let state = match state {
            Some(s) => s,
            None => {
                zeros = self.zero_state(batch);
                &zeros
            }
        };
        let mut next = Vec::with_capacity(self.rnns.len());
        for (i, (rnn, s)) in self.rnns.iter().zip(state).enumerate() {
            let (out, s) = rnn.seq_init(&x, s);
            next.push(s);
            x = if i + 1 < self.rnns.len() {
                sequence_dropout(&out, self.cfg.hidden_dropout, train)
            } else {
                out
            };
        }
        (x, next)
    }
}

/// Layer group of a variable of a recurrent text model (see the module docs).
pub fn group_of(name: &str) -> usize {
    if name.starts_with("encoder.embedding") || name.starts_with("encoder.rnn.0.") {
        0
    } else if name.starts_with("encoder.") {
        1
    } else {
        2
    }
}

/// A language model: the encoder, output dropout, a decoder whose weight is the embedding.
pub struct LanguageModelNet {
    pub vs: nn::VarStore,
    pub encoder: Encoder,
    decoder_bias: Tensor,
}

impl fmt::Debug for LanguageModelNet {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("LanguageModelNet").field("encoder", &self.encoder).finish()
    }
}

impl LanguageModelNet {
    pub fn new(vs: nn::VarStore, cfg: LstmConfig) -> LanguageModelNet {
        let root = vs.root();
        let encoder = Encoder::new(&root.sub("encoder"), cfg);
        let decoder_bias = root.sub("decoder").zeros("bias", &[cfg.vocab]);
        LanguageModelNet { vs, encoder, decoder_bias }
    }

    /// Logits `[T, B, vocab]` of the next token at every position, and the state after the last.
    pub fn forward(&self, tokens: &Tensor, state: Option<&State>, train: bool) -> (Tensor, State) {
        let (out, state) = self.encoder.forward(tokens, state, train);
        let out = sequence_dropout(&out, self.encoder.cfg.output_dropout, train);
        (out.matmul(&self.encoder.embedding.tr()) + &self.decoder_bias, state)
    }
}

/// Both nets hold their variables in `vs` and share [`group_of`]: one `impl Model` for each.
macro_rules! lstm_model {
    ($($net:ty),*) => {$(
        impl Model for $net {
            fn vs(&self) -> &nn::VarStore {
                &self.vs
            }

            fn group_of(&self, name: &str) -> usize {
                group_of(name)
            }

            fn freeze_to(&self, frozen: usize) {
                super::set_trainable(self, frozen);
            }
        }
    )*};
}

lstm_model!(LanguageModelNet, ClassifierNet);

/// A classifier on the encoder: concat pooling of the last layer's outputs over each sequence's
/// real tokens (the last one, the maximum and the mean: `3·emb` features), then dropout, a
/// hidden ReLU layer, dropout and the output layer.
pub struct ClassifierNet {
    pub vs: nn::VarStore,
    pub encoder: Encoder,
    hidden: nn::Linear,
    out: nn::Linear,
    head_dropout: f64,
}

impl fmt::Debug for ClassifierNet {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ClassifierNet").field("encoder", &self.encoder).finish()
    }
}

impl ClassifierNet {
    pub fn new(
        vs: nn::VarStore,
        cfg: LstmConfig,
        head_hidden: i64,
        classes: i64,
        head_dropout: f64,
    ) -> ClassifierNet {
        let root = vs.root();
        let encoder = Encoder::new(&root.sub("encoder"), cfg);
        let head = root.sub("head");
        let hidden = nn::linear(head.sub("hidden"), 3 * cfg.emb, head_hidden, Default::default());
        let out = nn::linear(head.sub("out"), head_hidden, classes, Default::default());
        ClassifierNet { vs, encoder, hidden, out, head_dropout }
    }

    /// Logits `[B, classes]` of right-padded tokens `[T, B]` whose real lengths are `lengths`
    /// `[B]` (i64, each ≥ 1): padding after a sequence's end changes nothing (the LSTM runs
    /// forward, and pooling looks at real positions only).
    pub fn forward(&self, tokens: &Tensor, lengths: &Tensor, train: bool) -> Tensor {
        let (out, _) = self.encoder.forward(tokens, None, train);
        let out = sequence_dropout(&out, self.encoder.cfg.output_dropout, train);
        let (t, b) = (tokens.size()[0], tokens.size()[1]);
        let device = out.device();
        let lengths = lengths.to_device(device);
        // [T, B, 1]: 1 at real positions
        let mask = Tensor::arange(t, (Kind::Int64, device))
            .unsqueeze(1)
            .lt_tensor(&lengths.unsqueeze(0))
            .unsqueeze(2);
        let last_index = (&lengths - 1).view([1, b, 1]).expand([1, b, out.size()[2]], false);
        let last = out.gather(0, &last_index, false).squeeze_dim(0);
        let max = out.masked_fill(&mask.logical_not(), f64::NEG_INFINITY).amax([0].as_slice(), false);
        let mean = (out * mask.to_kind(Kind::Float)).sum_dim_intlist([0].as_slice(), false, Kind::Float)
            / lengths.to_kind(Kind::Float).unsqueeze(1);
        let pooled = Tensor::cat(&[last, max, mean], 1);
        let h = self.hidden.forward(&pooled.dropout(self.head_dropout, train)).relu();
        self.out.forward(&h.dropout(self.head_dropout, train))
    }
}
