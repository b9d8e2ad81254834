//! Entity embeddings (Guo & Berkhahn 2016; fastai's `TabularModel`): one embedding per categorical
//! column, concatenated (with dropout) with the continuous columns (batch-normed), then an MLP of
//! linear → ReLU → BatchNorm → dropout layers and a linear head: one output for a regression
//! (optionally squashed into a range by a scaled sigmoid), one per class for a classifier.
//!
//! Variable names and layer groups: `embeds.<i>.weight` (0: the embeddings), `bn_cont.*` and
//! `layers.<i>.{linear,bn}.*` (1: the MLP body), `head.*` (2). BatchNorms of frozen groups stay
//! in evaluation mode, as the image models'.

use std::collections::HashMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use tch::nn::{self, Module, ModuleT};
use tch::Tensor;

use super::torchscript::ScriptModule;
use super::Model;
use crate::error::Result;

/// The shape of an entity-embedding model.
#[derive(Debug, Clone, PartialEq)]
pub struct TabularConfig {
    /// Rows and width of each categorical column's embedding.
    pub embeddings: Vec<(i64, i64)>,
    pub n_cont: i64,
    /// Hidden layers: width and dropout after it.
    pub layers: Vec<(i64, f64)>,
    pub emb_dropout: f64,
    /// 1 for a regression, else the number of classes.
    pub outputs: i64,
    /// A regression's output range (on the scale the model predicts).
    pub y_range: Option<(f64, f64)>,
    /// Categorical columns as one-hot vectors (`embeddings[i].0` wide) instead of embeddings.
    pub one_hot: bool,
}

/// fastai's rule for an embedding's width: `min(50, (rows + 1) / 2)`, rows counting index 0.
pub fn default_emb_size(rows: i64) -> i64 {
    ((rows + 1) / 2).clamp(1, 50)
}

#[derive(Debug)]
struct Hidden {
    linear: nn::Linear,
    bn: nn::BatchNorm,
    dropout: f64,
}

/// The model; see the module docs.
pub struct TabularNet {
    pub vs: nn::VarStore,
    embeds: Vec<Tensor>,
    bn_cont: Option<nn::BatchNorm>,
    layers: Vec<Hidden>,
    head: nn::Linear,
    cfg: TabularConfig,
    frozen: Arc<AtomicUsize>,
}

impl std::fmt::Debug for TabularNet {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TabularNet").field("cfg", &self.cfg).finish()
    }
}

/// Layer group of a variable, by name.
pub fn group_of(name: &str) -> usize {
    if name.starts_with("embeds.") {
        0
    } else if name.starts_with("head.") {
        2
    } else {
        1
    }
}

impl TabularNet {
    /// A model of `cfg` in `vs`, initialised from torch's generator (seed it first).
    pub fn new(vs: nn::VarStore, cfg: TabularConfig) -> TabularNet {
        let root = vs.root();
        let embedded = if cfg.one_hot { &[][..] } else { &cfg.embeddings[..] };
        let embeds = embedded
            .iter()
            .enumerate()
            .map(|(i, &(rows, width))| {
                root.sub("embeds").sub(i.to_string()).var(
                    "weight",
                    &[rows, width],
                    nn::Init::Randn { mean: 0.0, stdev: 0.01 },
                )
            })
            .collect();
        let bn_cont =
            (cfg.n_cont > 0).then(|| nn::batch_norm1d(root.sub("bn_cont"), cfg.n_cont, Default::default()));
        let mut width =
            cfg.embeddings.iter().map(|e| if cfg.one_hot { e.0 } else { e.1 }).sum::<i64>() + cfg.n_cont;
        let mut layers = vec![];
        for (i, &(w, dropout)) in cfg.layers.iter().enumerate() {
            let p = root.sub("layers").sub(i.to_string());
            layers.push(Hidden {
                linear: nn::linear(p.sub("linear"), width, w, Default::default()),
                bn: nn::batch_norm1d(p.sub("bn"), w, Default::default()),
                dropout,
            });
            width = w;
        }
        let head = nn::linear(root.sub("head"), width, cfg.outputs, Default::default());
        TabularNet { vs, embeds, bn_cont, layers, head, cfg, frozen: Arc::default() }
    }

    pub fn config(&self) -> &TabularConfig {
        &self.cfg
    }

    /// The embedding matrix of categorical column `i` (`[rows, width]`).
    pub fn embedding(&self, i: usize) -> Option<&Tensor> {
        self.embeds.get(i)
    }

    /// Start the head's output at `value` (the training mean of what it predicts), so the first
    /// steps learn the features rather than the target's offset.
    pub fn set_output_bias(&self, value: f64) {
        let raw = match self.cfg.y_range {
            Some((lo, hi)) => {
                let p = ((value - lo) / (hi - lo)).clamp(1e-3, 1.0 - 1e-3);
                (p / (1.0 - p)).ln()
            }
            None => value,
        };
        tch::no_grad(|| {
            if let Some(b) = &self.head.bs {
                let _ = b.shallow_clone().fill_(raw);
            }
        });
    }

    fn bn(&self, bn: &nn::BatchNorm, group: usize, x: &Tensor, train: bool) -> Tensor {
        bn.forward_t(x, train && group >= self.frozen.load(Ordering::Relaxed))
    }

    /// Outputs `[B, outputs]` (a regression's squeezed to `[B]`) of categorical indices `cats`
    /// `[B, n_cat]` (i64) and continuous values `conts` `[B, n_cont]` (f32).
    pub fn forward(&self, cats: &Tensor, conts: &Tensor, train: bool) -> Tensor {
        let mut parts = vec![];
        if !self.embeds.is_empty() {
            let embedded: Vec<Tensor> = self
                .embeds
                .iter()
                .enumerate()
                .map(|(i, w)| Tensor::embedding(w, &cats.select(1, i as i64), -1, false, false))
                .collect();
            parts.push(Tensor::cat(&embedded, 1).dropout(self.cfg.emb_dropout, train));
        }
        if self.cfg.one_hot && !self.cfg.embeddings.is_empty() {
            let hot: Vec<Tensor> = self
                .cfg
                .embeddings
                .iter()
                .enumerate()
                .map(|(i, &(rows, _))| cats.select(1, i as i64).one_hot(rows).to_kind(conts.kind()))
                .collect();
            parts.push(Tensor::cat(&hot, 1));
        }
        if let Some(bn) = &self.bn_cont {
            parts.push(self.bn(bn, 1, conts, train));
        }
        let mut x = Tensor::cat(&parts, 1);
        for h in &self.layers {
            let y = h.linear.forward(&x).relu();
            x = self.bn(&h.bn, 1, &y, train).dropout(h.dropout, train);
        }
        let out = self.head.forward(&x);
        if self.cfg.outputs != 1 {
            return out;
        }
        let out = out.squeeze_dim(1);
        match self.cfg.y_range {
            Some((lo, hi)) => out.sigmoid() * (hi - lo) + lo,
            None => out,
        }
    }
}

impl Model for TabularNet {
    fn vs(&self) -> &nn::VarStore {
        &self.vs
    }

    fn group_of(&self, name: &str) -> usize {
        group_of(name)
    }

    fn freeze_to(&self, frozen: usize) {
        self.frozen.store(frozen, Ordering::Relaxed);
        super::set_trainable(self, frozen);
    }
}

/// A tabular task's model: the built-in entity-embedding net, or the user's TorchScript module
/// taking `(cats, conts)` (see [`super::torchscript`]).
pub enum TabularModel {
    Builtin(Box<TabularNet>),
    Script {
        vs: nn::VarStore,
        module: ScriptModule,
        /// Layer group of each parameter, by PyTorch name.
        groups: HashMap<String, usize>,
    },
}

impl std::fmt::Debug for TabularModel {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            TabularModel::Builtin(net) => net.fmt(f),
            TabularModel::Script { .. } => f.write_str("TabularModel::Script"),
        }
    }
}

impl TabularModel {
    /// Outputs of rows (see [`TabularNet::forward`]): a regression's `[B]`, a classifier's logits.
    pub fn forward(&self, cats: &Tensor, conts: &Tensor, train: bool) -> Result<Tensor> {
        match self {
            TabularModel::Builtin(net) => Ok(net.forward(cats, conts, train)),
            TabularModel::Script { module, .. } => module.forward_rows(cats, conts, train),
        }
    }

    /// The built-in model (`None` for a TorchScript module).
    pub fn builtin(&self) -> Option<&TabularNet> {
        match self {
            TabularModel::Builtin(net) => Some(net),
            TabularModel::Script { .. } => None,
        }
    }

    /// The TorchScript module as it is now, in `torch.jit.save`'s format (`None` for the built-in).
    pub fn script_bytes(&self) -> Result<Option<Vec<u8>>> {
        match self {
            TabularModel::Builtin(_) => Ok(None),
            TabularModel::Script { module, .. } => module.to_bytes().map(Some),
        }
    }
}

/// The user's TorchScript module in `bytes` (`what` names them in errors) as a tabular model of
/// `outputs` outputs (1 for a regression) on `device`, layer groups by `groups` (see
/// [`super::torchscript`]); checked on rows holding each categorical column's first and last level
/// (`levels`: each column's name and number of levels) before it is returned.
pub fn build_script(
    bytes: &[u8],
    what: &str,
    groups: Option<&[Vec<String>]>,
    levels: &[(String, i64)],
    n_cont: i64,
    outputs: i64,
    device: tch::Device,
) -> Result<TabularModel> {
    let vs = nn::VarStore::new(device);
    let (module, groups) = super::torchscript::load(bytes, what, groups, outputs, &vs)?;
    super::torchscript::probe_rows(&module, levels, n_cont, device)?;
    Ok(TabularModel::Script { vs, module, groups })
}

impl Model for TabularModel {
    fn vs(&self) -> &nn::VarStore {
        match self {
            TabularModel::Builtin(net) => &net.vs,
            TabularModel::Script { vs, .. } => vs,
        }
    }

    fn group_of(&self, name: &str) -> usize {
        match self {
            TabularModel::Builtin(_) => group_of(name),
            TabularModel::Script { groups, .. } => groups.get(name).copied().unwrap_or(super::GROUPS - 1),
        }
    }

    /// A TorchScript module's parameters are those it lists (its buffers may have any name).
    fn is_parameter(&self, name: &str) -> bool {
        match self {
            TabularModel::Builtin(_) => !super::is_buffer(name),
            TabularModel::Script { groups, .. } => groups.contains_key(name),
        }
    }

    fn freeze_to(&self, frozen: usize) {
        match self {
            TabularModel::Builtin(net) => net.freeze_to(frozen),
            TabularModel::Script { .. } => super::set_trainable(self, frozen),
        }
    }
}

#[cfg(test)]
mod tests {
    use tch::{Device, Kind};

    use super::*;
    use crate::models::GROUPS;

    fn net(y_range: Option<(f64, f64)>, outputs: i64) -> TabularNet {
        tch::manual_seed(1);
        let cfg = TabularConfig {
            embeddings: vec![(5, 3), (13, 7)],
            n_cont: 2,
            layers: vec![(8, 0.1), (4, 0.0)],
            emb_dropout: 0.05,
            outputs,
            y_range,
            one_hot: false,
        };
        TabularNet::new(nn::VarStore::new(Device::Cpu), cfg)
    }

    fn inputs() -> (Tensor, Tensor) {
        let cats = Tensor::from_slice(&[0i64, 12, 4, 1, 2, 3]).view([3, 2]);
        (cats, Tensor::randn([3, 2], (Kind::Float, Device::Cpu)))
    }

    #[test]
    fn three_groups_named_and_shaped() {
        let n = net(None, 1);
        let mut counts = [0usize; GROUPS];
        for (name, g, _) in n.named_groups() {
            counts[g] += 1;
            assert_eq!(g, group_of(&name));
        }
        assert_eq!(counts, [2, 4 + 2 * 6, 2], "embeddings | bn_cont + 2 × (linear, bn) | head");
        assert_eq!(n.embedding(1).unwrap().size(), vec![13, 7]);
        let (c, x) = inputs();
        assert_eq!(n.forward(&c, &x, true).size(), vec![3]);
        assert_eq!(net(None, 4).forward(&c, &x, false).size(), vec![3, 4]);
        assert_eq!(default_emb_size(3), 2);
        assert_eq!(default_emb_size(1000), 50);
    }

    #[test]
    fn an_output_range_bounds_predictions_and_the_bias_starts_at_the_mean() {
        let n = net(Some((2.0, 3.0)), 1);
        let (c, x) = inputs();
        let y = n.forward(&c, &(x * 1000.0), false);
        assert!(y.min().double_value(&[]) >= 2.0 && y.max().double_value(&[]) <= 3.0, "{y}");
        let m = net(None, 1);
        m.set_output_bias(5.5);
        let z = Tensor::zeros([3, 2], (Kind::Float, Device::Cpu));
        // weights are small at init: the prediction is near the bias
        let y = m.forward(&Tensor::zeros([3, 2], (Kind::Int64, Device::Cpu)), &z, false);
        assert!((y.mean(Kind::Float).double_value(&[]) - 5.5).abs() < 1.0, "{y}");
    }

    #[test]
    fn one_hot_columns_replace_the_embeddings() {
        tch::manual_seed(1);
        let cfg = TabularConfig { one_hot: true, ..net(None, 1).config().clone() };
        let n = TabularNet::new(nn::VarStore::new(Device::Cpu), cfg);
        assert!(n.embedding(0).is_none());
        let first =
            n.named_groups().into_iter().find(|(name, _, _)| name == "layers.0.linear.weight").unwrap();
        assert_eq!(first.2.size(), vec![8, 5 + 13 + 2], "one input per level of each column");
        let (c, x) = inputs();
        assert_eq!(n.forward(&c, &x, true).size(), vec![3]);
    }

    #[test]
    fn freezing_stops_gradients_of_frozen_groups() {
        let n = net(None, 1);
        n.freeze_to(2);
        let (c, x) = inputs();
        n.forward(&c, &x, true).sum(Kind::Float).backward();
        for (name, g, t) in n.parameters() {
            assert_eq!(t.grad().defined(), g == 2, "{name} (group {g})");
        }
    }
}
