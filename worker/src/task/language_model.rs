//! A language model trained with truncated backpropagation through time (fastai's
//! `LanguageModelLoader` and AWD-LSTM training).
//!
//! Data: the tokenised documents, each preceded by `<bos>`, concatenated into one stream per
//! split. An epoch cuts the training stream into `world · B` contiguous columns (rank `r` trains
//! columns `[r·B, (r+1)·B)`) and walks them top to bottom in windows of about `bptt` tokens: `bptt`
//! most of the time, `bptt/2` one time in twenty, then varied by N(0, 5) and at least 5, drawn
//! from the seed and the epoch alone, so every rank draws the same windows. The hidden state is
//! carried from one window to the next and detached between them, so a step backpropagates through
//! one window only: memory is bounded by `bptt`, not by the corpus. It is reset when an epoch (or
//! an LR-range test) starts. `w` ranks with batch `B` see exactly the windows and columns of one
//! process with batch `w·B` (the data-parallel oracle).
//!
//! Predictions on a split are the probability the model gives each next token (`[N]`), read in
//! windows of `bptt` with the state carried; an ensemble averages them (the ensemble's
//! probability of each token), and the metrics are the mean negative log-likelihood and its
//! exponential, the perplexity.

use std::rc::Rc;
use std::sync::atomic::AtomicBool;

use cyclotron_core::results::Metrics;
use tch::{Device, Kind, Tensor};
use tokenizers::Tokenizer;

use super::{check_abort, Batch, Batches, Shard, Split, Task};
use crate::data::SplitMix64;
use crate::error::{Error, Result};
use crate::models::lstm::{detach, LanguageModelNet, State};
use crate::models::Model;

/// Token streams of the splits, and how they are cut.
pub struct LmData {
    pub train: Rc<Vec<i64>>,
    pub valid: Rc<Vec<i64>>,
    pub batch_size: usize,
    pub bptt: u32,
}

/// A language model on an LSTM encoder with a tied decoder.
pub struct LanguageModel {
    net: Rc<LanguageModelNet>,
    data: LmData,
    tokenizer: Rc<Tokenizer>,
    seed: u64,
    /// The hidden state carried from the previous window (detached), `None` at a sequence start.
    hidden: Option<State>,
}

impl LanguageModel {
    pub fn new(net: LanguageModelNet, data: LmData, tokenizer: Tokenizer, seed: u64) -> Self {
        LanguageModel { net: Rc::new(net), data, tokenizer: Rc::new(tokenizer), seed, hidden: None }
    }

    pub fn net(&self) -> &LanguageModelNet {
        &self.net
    }

    pub fn tokenizer(&self) -> &Tokenizer {
        &self.tokenizer
    }

    /// The state carried into the next window (tests look at it).
    pub fn hidden(&self) -> Option<&State> {
        self.hidden.as_ref()
    }

    fn device(&self) -> Device {
        self.net.vs.device()
    }

    fn stream(&self, split: Split) -> &Rc<Vec<i64>> {
        match split {
            Split::Train => &self.data.train,
            Split::Valid | Split::Eval => &self.data.valid,
        }
    }
}

/// `tokens` as `columns` contiguous columns `[L, columns]` (the tail that does not fill a row is
/// dropped).
pub fn batchify(tokens: &[i64], columns: usize) -> Tensor {
    let rows = tokens.len() / columns.max(1);
    let t = Tensor::from_slice(&tokens[..rows * columns]);
    t.view([columns as i64, rows as i64]).tr().contiguous()
}

/// The window lengths of epoch `epoch` over a stream of `rows` rows: fastai's draw (`bptt`, or
/// `bptt/2` with probability 1/20, then N(that, 5), at least 5), the last one cut to what is left.
pub fn window_lengths(rows: usize, bptt: u32, seed: u64, epoch: u64) -> Vec<usize> {
    let mut rng = SplitMix64::new(seed ^ epoch.wrapping_mul(0x9E37_79B9_7F4A_7C15) ^ 0x6c6d);
    let uniform = |rng: &mut SplitMix64| (rng.next_u64() >> 11) as f64 / (1u64 << 53) as f64;
    let mut lengths = vec![];
    let mut at = 0usize;
    while at + 1 < rows {
        let base = if uniform(&mut rng) < 0.95 { f64::from(bptt) } else { f64::from(bptt) / 2.0 };
        // Box–Muller
        let (u1, u2) = (uniform(&mut rng).max(1e-12), uniform(&mut rng));
        let normal = (-2.0 * u1.ln()).sqrt() * (2.0 * std::f64::consts::PI * u2).cos();
        let len = ((base + 5.0 * normal) as usize).max(5).min(rows - 1 - at);
        lengths.push(len);
        at += len;
    }
    lengths
}

impl Task for LanguageModel {
    fn model(&self) -> &dyn Model {
        &*self.net
    }

    fn steps_per_epoch(&self, world: usize) -> Result<u64> {
        let columns = self.data.batch_size * world.max(1);
        let rows = self.data.train.len() / columns.max(1);
        if rows < 2 {
            return Err(Error::Invalid {
                what: "data.batch_size".into(),
                message: format!(
                    "{} tokens of training text make fewer than 2 rows of {columns} columns; lower batch_size or add text",
                    self.data.train.len()
                ),
            });
        }
        Ok(((rows - 1) as u64).div_ceil(u64::from(self.data.bptt)))
    }

    fn train_batches(&self, epoch: u64, shard: Shard) -> Result<Batches> {
        let b = self.data.batch_size;
        let stream = batchify(&self.data.train, b * shard.world).narrow(1, (shard.rank * b) as i64, b as i64);
        let rows = stream.size()[0] as usize;
        let lengths = window_lengths(rows, self.data.bptt, self.seed, epoch);
        let mut at = 0i64;
        Ok(Box::new(lengths.into_iter().map(move |len| {
            let len = len as i64;
            let x = stream.narrow(0, at, len).contiguous();
            let y = stream.narrow(0, at + 1, len).contiguous();
            at += len;
            let items = (len * b as i64) as u64;
            Batch { inputs: vec![x], target: y, items }
        })))
    }

    fn start_sequence(&mut self) {
        self.hidden = None;
    }

    fn loss(&mut self, batch: &Batch) -> Result<Tensor> {
        let device = self.device();
        let x = batch.inputs[0].to_device(device);
        let y = batch.target.to_device(device);
        let (logits, state) = self.net.forward(&x, self.hidden.as_ref(), true);
        // truncated BPTT: the next window starts from these values, not from this graph
        self.hidden = Some(detach(&state));
        let v = logits.size()[2];
        Ok(logits.view([-1, v]).cross_entropy_for_logits(&y.view([-1])))
    }

    fn predict(&self, split: Split, abort: &AtomicBool) -> Result<Tensor> {
        let _guard = tch::no_grad_guard();
        let stream = batchify(self.stream(split), self.data.batch_size).to_device(self.device());
        let rows = stream.size()[0];
        if rows < 2 {
            return Err(Error::Invalid {
                what: "evaluation".into(),
                message: "the split has fewer tokens than two rows of a batch; lower data.batch_size".into(),
            });
        }
        let bptt = i64::from(self.data.bptt);
        let mut state: Option<State> = None;
        let mut parts = vec![];
        let mut at = 0i64;
        while at + 1 < rows {
            check_abort(abort)?;
            let len = bptt.min(rows - 1 - at);
            let x = stream.narrow(0, at, len);
            let y = stream.narrow(0, at + 1, len);
            let (logits, next) = self.net.forward(&x, state.as_ref(), false);
            state = Some(next);
            let p =
                logits.log_softmax(-1, Kind::Float).gather(2, &y.unsqueeze(2), false).squeeze_dim(2).exp();
            parts.push(p.to_device(Device::Cpu).reshape([-1]));
            at += len;
        }
        Ok(Tensor::cat(&parts, 0))
    }

    fn metrics(&self, predictions: &Tensor, _split: Split) -> Metrics {
        let loss = -predictions.clamp_min(1e-30).log().mean(Kind::Double).double_value(&[]);
        Metrics::language_model(loss)
    }

    fn eval_split(&self) -> &'static str {
        "valid"
    }

    fn artifacts(&self) -> Result<Vec<(String, Vec<u8>)>> {
        let json = crate::data::text::tokenizer_json(&self.tokenizer)?;
        Ok(vec![("tokenizer.json".into(), json.into_bytes())])
    }
}

/// The language model of `spec`: documents read from `data.path` (every non-empty line of every
/// `.txt` file below it), split by document (`valid_pct`, `split_seed`), a tokenizer trained on the
/// training documents, each split's documents concatenated in a seeded order (at most
/// `data.text.max_tokens` training and `data.limit_eval` validation tokens), the model from the
/// job's seed.
pub fn build(
    spec: &cyclotron_core::spec::JobSpec,
    obs: &mut dyn crate::event::Observer,
) -> Result<LanguageModel> {
    use crate::data::text::{encode, read_documents, train_tokenizer, BOS_ID};
    let t = spec.data.text.clone().unwrap_or_default();
    let path = std::path::PathBuf::from(spec.data.resolved_path());
    let loaded = crate::event::phase(obs, "loading data", || -> Result<_> {
        let docs = read_documents(std::slice::from_ref(&path))?;
        if docs.is_empty() {
            return Err(Error::Invalid {
                what: "data.path".into(),
                message: format!("{} holds no text: no non-empty line in any .txt file", path.display()),
            });
        }
        let order = crate::data::permutation(docs.len(), spec.data.split_seed.unwrap_or(spec.seed));
        let n_valid = ((docs.len() as f64 * spec.data.valid_pct).round() as usize)
            .clamp(1, docs.len().saturating_sub(1).max(1));
        let (mut valid_ix, mut train_ix) = (order[..n_valid].to_vec(), order[n_valid..].to_vec());
        valid_ix.sort_unstable();
        train_ix.sort_unstable();
        if train_ix.is_empty() {
            return Err(Error::Invalid {
                what: "data.path".into(),
                message: format!(
                    "{} holds one document: nothing is left to train on after the validation split",
                    path.display()
                ),
            });
        }
        let train_docs: Vec<String> = train_ix.iter().map(|&i| docs[i].clone()).collect();
        let tokenizer = train_tokenizer(&train_docs, t.vocab_size, t.min_frequency)?;
        // documents in a seeded order, so that a cap (max_tokens, limit_eval) takes a sample of
        // every source rather than the first files
        let shuffled = |ix: &[usize], salt: u64| -> Vec<usize> {
            crate::data::permutation(ix.len(), spec.seed ^ salt).into_iter().map(|p| ix[p]).collect()
        };
        let stream = |ix: &[usize], cap: Option<usize>| -> Result<Vec<i64>> {
            let mut s = vec![];
            for &i in ix {
                if cap.is_some_and(|c| s.len() >= c) {
                    break;
                }
                s.push(BOS_ID);
                s.extend(encode(&tokenizer, &docs[i])?);
            }
            if let Some(c) = cap {
                s.truncate(c);
            }
            Ok(s)
        };
        let (train_ix, valid_ix) = (shuffled(&train_ix, 1), shuffled(&valid_ix, 2));
        let train = stream(&train_ix, t.max_tokens)?;
        let valid = stream(&valid_ix, spec.data.limit_eval)?;
        Ok((train, valid, tokenizer))
    })?;
    let (train, valid, tokenizer) = loaded;
    tracing::info!(
        train_tokens = train.len(),
        valid_tokens = valid.len(),
        vocab = crate::data::text::vocab_size(&tokenizer),
        unigram_perplexity = format!("{:.1}", unigram_perplexity(&train, &valid, crate::data::text::vocab_size(&tokenizer))),
        "text corpus loaded (a unigram model of the training tokens has this validation perplexity: the floor to beat)"
    );
    crate::runtime::set_threads(spec);
    tch::manual_seed(spec.seed as i64);
    let device = crate::runtime::device(spec)?;
    let cfg = lstm_config(spec, crate::data::text::vocab_size(&tokenizer) as i64);
    let net = LanguageModelNet::new(tch::nn::VarStore::new(device), cfg);
    let data = LmData {
        train: Rc::new(train),
        valid: Rc::new(valid),
        batch_size: spec.data.batch_size,
        bptt: t.bptt,
    };
    Ok(LanguageModel::new(net, data, tokenizer, spec.seed))
}

/// The validation perplexity of a unigram model of `train` (token frequencies with add-one
/// smoothing over a vocabulary of `vocab`): the reference a language model must beat, since it
/// knows nothing of context.
pub fn unigram_perplexity(train: &[i64], valid: &[i64], vocab: usize) -> f64 {
    let mut counts = vec![1.0f64; vocab.max(1)];
    for &t in train {
        if let Some(c) = counts.get_mut(t as usize) {
            *c += 1.0;
        }
    }
    let total: f64 = counts.iter().sum();
    let scored: Vec<f64> =
        valid.iter().filter_map(|&t| counts.get(t as usize)).map(|c| (c / total).ln()).collect();
    if scored.is_empty() {
        return f64::NAN;
    }
    (-scored.iter().sum::<f64>() / scored.len() as f64).exp()
}

/// The recurrent model settings of `spec` for a vocabulary of `vocab` tokens.
pub fn lstm_config(spec: &cyclotron_core::spec::JobSpec, vocab: i64) -> crate::models::lstm::LstmConfig {
    let l = spec.model.lstm.clone().unwrap_or_default();
    crate::models::lstm::LstmConfig {
        vocab,
        emb: l.emb_size,
        hidden: l.hidden_size,
        layers: l.layers,
        embed_dropout: l.embed_dropout,
        input_dropout: l.input_dropout,
        hidden_dropout: l.hidden_dropout,
        output_dropout: l.output_dropout,
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use cyclotron_core::spec::{OptimizerKind, OptimizerSpec};
    use tch::nn;

    use super::*;
    use crate::collective::ring::local_rings;
    use crate::distributed::HostRing;
    use crate::learner::Learner;
    use crate::models::lstm::LstmConfig;
    use crate::models::GROUPS;

    static INIT: std::sync::Mutex<()> = std::sync::Mutex::new(());

    fn cfg(dropout: f64) -> LstmConfig {
        LstmConfig {
            vocab: 40,
            emb: 8,
            hidden: 12,
            layers: 2,
            embed_dropout: dropout,
            input_dropout: dropout,
            hidden_dropout: dropout,
            output_dropout: dropout,
        }
    }

    /// A stream with structure: token t+1 often follows t.
    fn stream(n: usize) -> Vec<i64> {
        let mut rng = SplitMix64::new(9);
        let mut t = 3i64;
        (0..n)
            .map(|_| {
                t = if rng.below(4) == 0 { 3 + rng.below(37) as i64 } else { 3 + (t - 3 + 1) % 37 };
                t
            })
            .collect()
    }

    fn task(batch: usize, dropout: f64) -> LanguageModel {
        let _guard = INIT.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        tch::manual_seed(4);
        let net = LanguageModelNet::new(nn::VarStore::new(Device::Cpu), cfg(dropout));
        let tokenizer = crate::data::text::train_tokenizer(&["a b".to_string()], 16, 1).unwrap();
        let data =
            LmData { train: Rc::new(stream(3000)), valid: Rc::new(stream(600)), batch_size: batch, bptt: 12 };
        LanguageModel::new(net, data, tokenizer, 5)
    }

    fn learner(t: LanguageModel) -> Learner {
        let spec = OptimizerSpec { momentum: 0.9, weight_decay: 0.0, ..Default::default() };
        Learner::new(Box::new(t), &spec, 5)
    }

    fn flat_params(l: &Learner) -> Vec<f32> {
        let mut out = vec![];
        for (_, _, t) in l.model().parameters() {
            let t = t.detach().reshape([-1]);
            out.extend(Vec::<f32>::try_from(&t).unwrap());
        }
        out
    }

    #[test]
    fn windows_cover_the_stream_vary_around_bptt_and_repeat_for_a_seed() {
        let w = window_lengths(5001, 70, 1, 0);
        assert_eq!(w.iter().sum::<usize>(), 5000);
        assert!(w[..w.len() - 1].iter().all(|&l| l >= 5));
        let mean = w.iter().sum::<usize>() as f64 / w.len() as f64;
        assert!((55.0..75.0).contains(&mean), "mean window {mean}");
        assert!(w.iter().any(|&l| l != 70), "windows should vary");
        assert_eq!(w, window_lengths(5001, 70, 1, 0));
        assert_ne!(w, window_lengths(5001, 70, 1, 1), "another epoch draws other windows");
        let b = batchify(&(0..10).collect::<Vec<i64>>(), 3);
        // columns are contiguous runs: [0,1,2], [3,4,5], [6,7,8]; 9 dropped
        assert_eq!(b.size(), vec![3, 3]);
        assert_eq!(Vec::<i64>::try_from(&b.tr().reshape([-1])).unwrap(), (0..9).collect::<Vec<_>>());
    }

    #[test]
    fn the_state_is_detached_between_windows_so_gradients_stop_there() {
        let mut t = task(4, 0.0);
        let mut batches = t.train_batches(0, Shard::ALONE).unwrap();
        let (b1, b2) = (batches.next().unwrap(), batches.next().unwrap());
        t.start_sequence();
        t.loss(&b1).unwrap().backward();
        let carried: Vec<(Tensor, Tensor)> =
            t.hidden().unwrap().iter().map(|s| (s.0 .0.shallow_clone(), s.0 .1.shallow_clone())).collect();
        assert!(
            carried.iter().all(|(h, c)| !h.requires_grad() && !c.requires_grad()),
            "the carried state is part of a graph"
        );
        let grads = |t: &LanguageModel| -> Vec<Tensor> {
            t.model().parameters().iter().map(|(_, _, p)| p.grad().copy()).collect()
        };
        let zero =
            |t: &LanguageModel| t.model().parameters().into_iter().for_each(|(_, _, mut p)| p.zero_grad());
        // window 2 from the carried state ...
        zero(&t);
        t.loss(&b2).unwrap().backward();
        let through_carried = grads(&t);
        // ... and from the same values as fresh leaves: the same gradients, so nothing flows back
        // into window 1's graph
        let fresh: State = carried.iter().map(|(h, c)| nn::LSTMState((h.copy(), c.copy()))).collect();
        t.hidden = Some(fresh);
        zero(&t);
        t.loss(&b2).unwrap().backward();
        for (a, b) in through_carried.iter().zip(grads(&t)) {
            assert!(a.allclose(&b, 1e-7, 1e-7, false));
        }
        // and many steps in a row never backpropagate into a freed graph
        let mut l = learner(task(4, 0.2));
        for b in l.task.train_batches(0, Shard::ALONE).unwrap().take(8) {
            assert!(l.step(&b, &[0.5; GROUPS]).unwrap().is_finite());
        }
    }

    #[test]
    fn two_ranks_train_like_one_process_with_both_halves_of_the_batch() {
        let steps = 4;
        let mut one = learner(task(8, 0.0));
        let losses: Vec<f64> = one
            .task
            .train_batches(0, Shard::ALONE)
            .unwrap()
            .take(steps)
            .collect::<Vec<_>>()
            .iter()
            .map(|b| one.step(b, &[0.5; GROUPS]).unwrap())
            .collect();
        let want = flat_params(&one);
        let handles: Vec<_> = local_rings(2)
            .into_iter()
            .map(|ring| {
                std::thread::spawn(move || {
                    let grads = HostRing::new(Box::new(ring), Duration::from_secs(30)).unwrap();
                    let mut l = learner(task(4, 0.0));
                    l.join(Box::new(grads)).unwrap();
                    let shard = l.shard();
                    let batches: Vec<Batch> = l.task.train_batches(0, shard).unwrap().take(steps).collect();
                    let losses: Vec<f64> =
                        batches.iter().map(|b| l.step(b, &[0.5; GROUPS]).unwrap()).collect();
                    (flat_params(&l), losses)
                })
            })
            .collect();
        for h in handles {
            let (got, got_losses) = h.join().unwrap();
            let worst = got.iter().zip(&want).map(|(a, b)| (a - b).abs()).fold(0f32, f32::max);
            assert!(worst < 1e-4, "parameters differ by {worst}");
            for (a, b) in got_losses.iter().zip(&losses) {
                assert!((a - b).abs() < 1e-4, "loss {a} vs {b}");
            }
        }
    }

    #[test]
    fn the_unigram_reference_is_the_vocabulary_for_uniform_text_and_lower_for_skewed() {
        let uniform: Vec<i64> = (0..1000).map(|i| i % 10).collect();
        assert!((unigram_perplexity(&uniform, &uniform, 10) - 10.0).abs() < 1e-9);
        let skewed: Vec<i64> = (0..1000).map(|i| if i % 10 == 0 { 1 } else { 0 }).collect();
        let p = unigram_perplexity(&skewed, &skewed, 10);
        assert!(p > 1.0 && p < 2.0, "{p}");
    }

    #[test]
    fn perplexity_is_the_exponential_of_the_mean_nll_and_training_lowers_it() {
        let t = task(4, 0.0);
        let uniform = Tensor::full([100], 1.0 / 40.0, (Kind::Float, Device::Cpu));
        let m = t.metrics(&uniform, Split::Valid);
        assert!((m.perplexity.unwrap() - 40.0).abs() < 1e-3, "{m:?}");
        assert!(m.accuracy.is_nan());
        let spec = OptimizerSpec { kind: OptimizerKind::Adamw, weight_decay: 0.0, ..Default::default() };
        let mut l = Learner::new(Box::new(task(4, 0.0)), &spec, 5);
        let before = l.evaluate(Split::Valid).unwrap();
        let p = l.predict(Split::Valid).unwrap();
        // a prediction per next token of the validation stream cut into 4 columns
        assert_eq!(p.size(), vec![(600 / 4 - 1) * 4]);
        for epoch in 0..3 {
            l.task.start_sequence();
            for b in l.task.train_batches(epoch, Shard::ALONE).unwrap() {
                l.step(&b, &[1e-2; GROUPS]).unwrap();
            }
        }
        let after = l.evaluate(Split::Valid).unwrap();
        assert!(after.perplexity.unwrap() < 0.6 * before.perplexity.unwrap(), "{before:?} -> {after:?}");
    }
}
