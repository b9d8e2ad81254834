//! The job spec: one TOML file describes a whole training job (data, model, optimiser, LR finder,
//! training stages, ensemble, where results go). Parsing rejects unknown fields; [`JobSpec::validate`]
//! checks everything else once and names each problem so a user can fix it.
//!
//! The fast.ai seed recipe is one file (see `examples/seed_recipe.toml`):
//! ```toml
//! [[stage]]            # head only, constant LR
//! freeze = true
//! lr = 0.01
//! epochs = 3
//! [[stage]]            # unfreeze, discriminative LRs, SGDR with cycle_mult = 2
//! lr_find = true
//! lr = "auto"
//! group_lrs = "thirds"
//! cycles = 3
//! cycle_len = 1
//! cycle_mult = 2
//! ```

mod augment;
mod checkpoint;
mod stage;
mod tabular;
mod task;
mod text;
mod torchscript;
mod validate;

pub use augment::{AugmentSpec, Transform, TtaSpec, PRESETS};
pub use checkpoint::CheckpointSpec;
pub use stage::{GroupLrs, LrValue, ScheduleKind, StageSpec};
pub use tabular::{TabularModelSpec, TabularSpec, TargetKind, DATE_PARTS};
pub use task::{TaskKind, TABULAR_ARCHS, TEXT_ARCHS};
pub use text::{LstmSpec, TextSpec};
pub use torchscript::{matches_prefix, MAX_GROUP_PREFIXES, TORCHSCRIPT_ARCH};
pub use validate::{is_valid_name, sgdr_epochs, MAX_NAME_LEN, MAX_SPEC_BYTES};

use std::path::Path;

use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};
use crate::lr_range::SuggestionKind;

/// Image model architectures a worker can build (text ones: [`TEXT_ARCHS`]).
pub const KNOWN_ARCHS: &[&str] = &[
    "small_resnet",
    "resnet18",
    "resnet34",
    "resnet50",
    "resnext50_32x4d",
    "vgg16",
    "vgg16_bn",
    "small_cnn",
];

/// Layer groups of every model (body early, body late, head): the length of `group_lrs` lists.
pub const LAYER_GROUPS: usize = 3;

/// Default location of Debian's `dataset-fashion-mnist` files.
pub const FASHION_MNIST_DIR: &str = "/usr/share/datasets/fashion-mnist";

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct JobSpec {
    /// Job name: names the run's folder in the store; letters, digits, `-`, `_`, `.`.
    pub name: String,
    #[serde(default = "default_seed")]
    pub seed: u64,
    /// Checkpoint store URL: `file://PATH` (default `file://./runs`), `s3://bucket/prefix` or `memory://`.
    #[serde(default = "default_output")]
    pub output: String,
    pub data: DataSpec,
    pub model: ModelSpec,
    #[serde(default)]
    pub optimizer: OptimizerSpec,
    /// The training loss's settings (`[loss]`); absent: plain cross-entropy.
    #[serde(default, skip_serializing_if = "LossSpec::is_default")]
    pub loss: LossSpec,
    /// The LR-range test settings; present means "run one before the first stage".
    #[serde(default)]
    pub lr_find: Option<LrFindSpec>,
    #[serde(rename = "stage", default)]
    pub stages: Vec<StageSpec>,
    #[serde(default)]
    pub ensemble: EnsembleSpec,
    /// Test-time augmentation of snapshots and the ensemble; absent means none.
    #[serde(default)]
    pub tta: Option<TtaSpec>,
    #[serde(default)]
    pub runtime: RuntimeSpec,
    /// Periodic checkpoints for resuming (`[checkpoint]`); on by default, every epoch.
    #[serde(default)]
    pub checkpoint: CheckpointSpec,
}

fn default_seed() -> u64 {
    42
}
fn default_output() -> String {
    "file://./runs".into()
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum DataSource {
    /// idx files (`train-images-idx3-ubyte.gz`, …) as Debian's `dataset-fashion-mnist` ships them.
    FashionMnist,
    /// `PATH/train/<class>/*`, `PATH/valid/<class>/*` (and optional `PATH/test/<class>/*`).
    ImageFolder,
    /// Plain text for a language model: every non-empty line of every `.txt` file under `PATH`
    /// is a document (default: the data folder of `make setup`, with the State of the Union
    /// addresses, Moby-Dick and the Rotten Tomatoes training snippets and plots).
    TextCorpus,
    /// Labelled texts for a classifier: `PATH/train.csv` (and `valid.csv`, `test.csv`), or one CSV
    /// file split by `valid_pct` and `test_pct` (default: `make setup`'s Rotten Tomatoes split).
    TextCsv,
    /// One CSV file of rows for entity embeddings; the columns' roles and the split are in
    /// `[data.tabular]`.
    TabularCsv,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DataSpec {
    pub source: DataSource,
    /// Folder of the data; defaults to Debian's Fashion-MNIST folder for `fashion_mnist`.
    #[serde(default)]
    pub path: Option<String>,
    /// Items per optimiser step on each process (the batch each data-parallel rank loads).
    /// With `global_batch_size` set it is derived: `global_batch_size / world` on each rank.
    #[serde(default = "default_batch_size")]
    pub batch_size: usize,
    /// Items per optimiser step across the whole data-parallel group (DeepSpeed's
    /// `train_batch_size`): each of N ranks loads `global_batch_size / N`, so a job takes the same
    /// steps with the same batch on any number of workers, and a fixed `lr` is not rescaled for N
    /// (`optimizer.lr_scaling` does not apply). Absent: `batch_size` is each rank's and the global
    /// batch grows with N.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub global_batch_size: Option<usize>,
    /// Share of the training set held out for validation (and ensemble member selection) when the
    /// source has no validation split of its own.
    #[serde(default = "default_valid_pct")]
    pub valid_pct: f64,
    /// Side of the square images fed to the model (`image_folder` resizes to it).
    #[serde(default)]
    pub size: Option<u32>,
    /// Use only the first N training items (after the validation split), for quick runs.
    #[serde(default)]
    pub limit_train: Option<usize>,
    /// Use only the first N items of the validation and test splits.
    #[serde(default)]
    pub limit_eval: Option<usize>,
    /// Batches prepared ahead by the loading thread.
    #[serde(default = "default_prefetch")]
    pub prefetch: usize,
    /// Augmentation of training batches (never of evaluation); absent means none.
    #[serde(default)]
    pub augment: Option<AugmentSpec>,
    /// Keep only these classes (by index), relabelled 0..k in this order, e.g. `[5, 6, 7, 8, 9]`.
    #[serde(default)]
    pub classes: Option<Vec<usize>>,
    /// Share of the data held out as the test split, for a source of one file (`text_csv`).
    #[serde(default)]
    pub test_pct: Option<f64>,
    /// Text settings: tokenizer, truncated-BPTT window, CSV columns (`[data.text]`).
    #[serde(default)]
    pub text: Option<TextSpec>,
    /// Tabular settings: the columns' roles, the target, the split (`[data.tabular]`).
    #[serde(default)]
    pub tabular: Option<TabularSpec>,
    /// Seed of the validation split carved from the training data (default: the job's seed).
    /// Independent runs (`ensemble.runs`) change the job's seed but keep this split, so that
    /// ensemble members are chosen on images no run trained on.
    #[serde(default)]
    pub split_seed: Option<u64>,
}

fn default_batch_size() -> usize {
    128
}
fn default_valid_pct() -> f64 {
    0.1
}
fn default_prefetch() -> usize {
    4
}

/// Where `make setup` puts the text and tabular data sets: `$CYCLOTRON_DATA`, else
/// `~/.cache/cyclotron/data`.
pub fn data_dir() -> String {
    match std::env::var("CYCLOTRON_DATA") {
        Ok(d) if !d.is_empty() => d,
        _ => expand_home("~/.cache/cyclotron/data"),
    }
}

/// `path` with a leading `~/` replaced by `$HOME/`.
pub fn expand_home(path: &str) -> String {
    match (path.strip_prefix("~/"), std::env::var("HOME")) {
        (Some(rest), Ok(home)) if !home.is_empty() => format!("{}/{rest}", home.trim_end_matches('/')),
        _ => path.to_string(),
    }
}

impl DataSpec {
    /// The data's path: `path` (a leading `~/` is the home folder), else the source's default.
    pub fn resolved_path(&self) -> String {
        match (&self.path, self.source) {
            (Some(p), _) => expand_home(p),
            (None, DataSource::FashionMnist) => FASHION_MNIST_DIR.into(),
            (None, DataSource::ImageFolder) => String::new(),
            (None, DataSource::TextCorpus) => data_dir(),
            (None, DataSource::TextCsv) => format!("{}/rt", data_dir()),
            (None, DataSource::TabularCsv) => String::new(),
        }
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ModelSpec {
    /// One of [`KNOWN_ARCHS`].
    pub arch: String,
    /// Base width (channels of the first block) of `small_resnet`.
    #[serde(default = "default_width")]
    pub width: i64,
    /// Residual blocks in each of `small_resnet`'s two stages: 1 is the five-convolution net;
    /// each one more adds an identity-shortcut block at that stage's resolution (2: nine
    /// convolutions, about 1.6x the step).
    #[serde(default = "default_blocks")]
    pub blocks: i64,
    /// Weights to start from: a safetensors file with torchvision's names (or a snapshot's
    /// `model.safetensors`) at `file://PATH` or a plain path; a head of another size is skipped.
    #[serde(default)]
    pub pretrained: Option<String>,
    /// The recurrent text model's settings (`arch = "awd_lstm"`).
    #[serde(default)]
    pub lstm: Option<LstmSpec>,
    /// A text classifier's encoder and tokenizer: a language model's snapshot folder
    /// (`file://runs/text-lm/lm/snapshots/cycle-2`) or finished run (its best snapshot), or `s3://`.
    #[serde(default)]
    pub encoder: Option<String>,
    /// The entity-embedding model's settings (`arch = "entity_embeddings"`).
    #[serde(default)]
    pub tabular: Option<TabularModelSpec>,
    /// The user's own model (`arch = "torchscript"`): a module exported with `torch.jit.script`
    /// or `torch.jit.trace` at `file://PATH`, a plain path or `s3://bucket/key`; it takes images
    /// [B, C, H, W] and returns logits [B, classes].
    #[serde(default)]
    pub torchscript: Option<String>,
    /// The layer groups of a TorchScript module by parameter-name prefix: two lists, the first
    /// the early body (group 0), the second the late body (group 1); every other parameter is
    /// the head. A prefix names a module (`"layer1"` takes `layer1.0.conv1.weight`, not
    /// `layer10.…`). Default: the last layer (the module holding the last parameter) is the
    /// head, the parameters before it split into two halves in the module's order.
    #[serde(default)]
    pub torchscript_groups: Option<Vec<Vec<String>>>,
}

fn default_width() -> i64 {
    32
}

fn default_blocks() -> i64 {
    1
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "snake_case")]
pub enum OptimizerKind {
    #[default]
    Sgd,
    Adamw,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct OptimizerSpec {
    #[serde(default)]
    pub kind: OptimizerKind,
    #[serde(default = "default_momentum")]
    pub momentum: f64,
    #[serde(default)]
    pub nesterov: bool,
    #[serde(default = "default_wd")]
    pub weight_decay: f64,
    #[serde(default = "default_betas")]
    pub betas: [f64; 2],
    #[serde(default = "default_eps")]
    pub eps: f64,
    /// Clip gradients to this global L2 norm before each update (torch's `clip_grad_norm_`);
    /// absent: no clipping.
    #[serde(default)]
    pub clip: Option<f64>,
    /// How a fixed stage `lr` follows the number of data-parallel ranks. A fixed LR is written
    /// for one process training `data.batch_size` items a step; on N ranks the global batch is N
    /// times larger and the LR is multiplied by N (`linear`, Goyal et al. 2017, with SGDR's
    /// warm-up), by √N (`sqrt`) or left alone (`none`). Absent: `linear` for SGD, `sqrt` for
    /// AdamW. `lr = "auto"` is never scaled: its range test already runs at the global batch.
    /// Nor is any LR when `data.global_batch_size` keeps the global batch the same on every N.
    #[serde(default)]
    pub lr_scaling: Option<LrScaling>,
}

/// `[loss]`: how classification jobs (images, text classifiers) score a training batch.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LossSpec {
    /// Label smoothing ε of the cross-entropy (Szegedy et al. 2016; PyTorch's
    /// `CrossEntropyLoss(label_smoothing=ε)`, fastai's `LabelSmoothingCrossEntropy`): the target is
    /// 1 − ε on the label plus ε spread evenly over every class. Only the training loss (and the
    /// LR-range test, which trains) uses it; validation and test losses stay plain cross-entropy,
    /// so ensembles are still chosen on the true log-loss. 0 (default): none.
    #[serde(default)]
    pub label_smoothing: f64,
}

impl LossSpec {
    pub fn is_default(&self) -> bool {
        self == &LossSpec::default()
    }
}

/// See [`OptimizerSpec::lr_scaling`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum LrScaling {
    Linear,
    Sqrt,
    None,
}

impl OptimizerSpec {
    /// The rule in force: the spec's, else the optimiser's default.
    pub fn lr_scaling(&self) -> LrScaling {
        self.lr_scaling.unwrap_or(match self.kind {
            OptimizerKind::Sgd => LrScaling::Linear,
            OptimizerKind::Adamw => LrScaling::Sqrt,
        })
    }

    /// The factor a fixed LR is multiplied by on `world` data-parallel ranks.
    pub fn lr_scale(&self, world: usize) -> f64 {
        let n = world.max(1) as f64;
        match self.lr_scaling() {
            LrScaling::Linear => n,
            LrScaling::Sqrt => n.sqrt(),
            LrScaling::None => 1.0,
        }
    }
}

fn default_momentum() -> f64 {
    0.9
}
fn default_wd() -> f64 {
    5e-4
}
fn default_betas() -> [f64; 2] {
    [0.9, 0.99]
}
fn default_eps() -> f64 {
    1e-8
}

impl Default for OptimizerSpec {
    fn default() -> Self {
        OptimizerSpec {
            kind: OptimizerKind::Sgd,
            momentum: default_momentum(),
            nesterov: false,
            weight_decay: default_wd(),
            betas: default_betas(),
            eps: default_eps(),
            clip: None,
            lr_scaling: None,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LrFindSpec {
    #[serde(default = "default_lr_start")]
    pub start: f64,
    #[serde(default = "default_lr_end")]
    pub end: f64,
    /// At most this many steps (and at most one epoch).
    #[serde(default = "default_lr_steps")]
    pub steps: u32,
    /// Which suggestion `lr = "auto"` stages take.
    #[serde(default)]
    pub suggestion: SuggestionKind,
    /// A parallel grid sweep instead of the ramp: `grid` log-spaced LRs from `start` to `end`,
    /// each trained `grid_steps` steps from the same initial weights by its own worker group; the
    /// coordinator merges the loss-vs-LR curve and suggests from it. 0: the ramp (one range test).
    #[serde(default)]
    pub grid: u32,
    /// Steps each grid point trains at its constant LR.
    #[serde(default = "default_grid_steps")]
    pub grid_steps: u32,
    /// Candidate configs compared by one LR sweep each, on separate worker groups
    /// (`[lr_find.candidates]`, every combination of the lists); the best one trains.
    #[serde(default)]
    pub candidates: Option<CandidatesSpec>,
}

fn default_grid_steps() -> u32 {
    30
}

/// `[lr_find.candidates]`: lists of values to try; the sweep runs every combination.
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CandidatesSpec {
    #[serde(default)]
    pub batch_size: Vec<usize>,
    #[serde(default)]
    pub weight_decay: Vec<f64>,
    #[serde(default)]
    pub arch: Vec<String>,
}

fn default_lr_start() -> f64 {
    1e-7
}
fn default_lr_end() -> f64 {
    10.0
}
fn default_lr_steps() -> u32 {
    100
}

impl Default for LrFindSpec {
    fn default() -> Self {
        LrFindSpec {
            start: default_lr_start(),
            end: default_lr_end(),
            steps: default_lr_steps(),
            suggestion: SuggestionKind::default(),
            grid: 0,
            grid_steps: default_grid_steps(),
            candidates: None,
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "snake_case")]
pub enum Selection {
    /// The last `members` snapshots.
    Last,
    /// Greedy forward selection on the validation split (Caruana et al. 2004), at most `members`.
    #[default]
    Greedy,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EnsembleSpec {
    /// Maximum number of snapshots averaged; 0 turns the ensemble off.
    #[serde(default = "default_members")]
    pub members: usize,
    #[serde(default)]
    pub selection: Selection,
    /// Independent training runs (seeds `seed`, `seed + 1`, …), in parallel on separate worker
    /// groups of a cluster; then every snapshot of every run is evaluated alone and averaged.
    #[serde(default = "default_runs")]
    pub runs: usize,
}

fn default_members() -> usize {
    3
}
fn default_runs() -> usize {
    1
}

impl Default for EnsembleSpec {
    fn default() -> Self {
        EnsembleSpec { members: default_members(), selection: Selection::default(), runs: default_runs() }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "snake_case")]
pub enum DeviceSpec {
    /// CUDA when available, else CPU.
    #[default]
    Auto,
    Cpu,
    Cuda,
}

#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RuntimeSpec {
    /// libtorch intra-op threads; default: the machine's cores.
    #[serde(default)]
    pub threads: Option<usize>,
    #[serde(default)]
    pub device: DeviceSpec,
    /// The forward pass's arithmetic: `fp32`, or `bf16` autocast (convolutions and matrix
    /// products in bfloat16, fp32 weights, optimiser and loss). `fp16` is refused until loss
    /// scaling exists.
    #[serde(default)]
    pub precision: Precision,
    /// How convolution weights (and so activations) are laid out in memory: `contiguous` (NCHW,
    /// PyTorch's default, and ours) or `channels_last` (NHWC: oneDNN's NHWC convolutions, about
    /// 1.15x the step of the demo's model on an AVX2 CPU). Values and results are the same.
    #[serde(default)]
    pub memory_format: MemoryFormat,
}

/// `[runtime] memory_format`: the layout of 4-D weights and activations (PyTorch's
/// `model.to(memory_format=torch.channels_last)`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "snake_case")]
pub enum MemoryFormat {
    #[default]
    Contiguous,
    /// NHWC weights and activations. Not the default: libtorch 2.11's oneDNN corrupts the heap or
    /// hangs in the AVX2 1x1-convolution backward pass of NHWC tensors with fewer than 8 input
    /// channels (seen on an AMD EPYC), so the worker refuses such models in this layout.
    ChannelsLast,
}

/// `[runtime] precision`: what the forward pass computes in (torch.autocast's choice).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "snake_case")]
pub enum Precision {
    #[default]
    Fp32,
    /// Automatic mixed precision in bfloat16: fp32's range, so no loss scaling. Fast on CPUs with
    /// AMX or AVX-512 BF16 and on GPUs from Ampere on.
    Bf16,
    /// Half precision: needs dynamic loss scaling, which is not built; refused by validation.
    Fp16,
    /// `bf16` where it computes natively — a GPU, or a CPU with AMX or AVX-512 BF16 — and `fp32`
    /// elsewhere: on a CPU without either libtorch emulates bfloat16, many times slower. The
    /// worker logs which it chose.
    Auto,
}

/// A unit variant of a spec enum from its name in the spec (`"bf16"`, `"channels_last"`), as the
/// TOML reader would take it: for command-line flags that take the spec's names.
fn from_spec_name<T: serde::de::DeserializeOwned>(s: &str) -> Option<T> {
    use serde::de::IntoDeserializer;
    T::deserialize(IntoDeserializer::<serde::de::value::Error>::into_deserializer(s)).ok()
}

impl std::str::FromStr for Precision {
    type Err = String;

    /// The spec's names (`fp32`, `bf16`, `fp16`, `auto`), for command-line flags.
    fn from_str(s: &str) -> std::result::Result<Self, String> {
        from_spec_name(s).ok_or_else(|| {
            format!("unknown precision {s:?}: fp32, bf16 or auto (fp16 needs loss scaling, not built)")
        })
    }
}

impl std::str::FromStr for MemoryFormat {
    type Err = String;

    /// The spec's names (`contiguous`, `channels_last`), for command-line flags.
    fn from_str(s: &str) -> std::result::Result<Self, String> {
        from_spec_name(s).ok_or_else(|| format!("unknown memory format {s:?}: contiguous or channels_last"))
    }
}

impl JobSpec {
    /// This spec with another seed (weights, shuffling, augmentation) and the same validation split.
    pub fn with_seed(mut self, seed: u64) -> JobSpec {
        self.data.split_seed.get_or_insert(self.seed);
        self.seed = seed;
        self
    }

    /// Parse TOML text; `origin` names the source in errors (a file path or "<inline>").
    pub fn from_toml_str(text: &str, origin: &str) -> Result<JobSpec> {
        if text.len() > MAX_SPEC_BYTES {
            let message = format!("the spec is {} bytes; at most {MAX_SPEC_BYTES} are accepted", text.len());
            return Err(Error::SpecParse { origin: origin.to_string(), message });
        }
        let parse_error = |message: String| Error::SpecParse { origin: origin.to_string(), message };
        let mut spec: JobSpec = toml::from_str(text).map_err(|e| parse_error(e.to_string()))?;
        if let Some(global) = spec.data.global_batch_size {
            // one process sees the whole global batch; ranks of a group take their share later
            // ([`JobSpec::per_rank`]). A spec that names both must agree (a serialised spec does).
            let table: toml::Table = toml::from_str(text).map_err(|e| parse_error(e.to_string()))?;
            let written = table.get("data").and_then(|d| d.get("batch_size")).and_then(|b| b.as_integer());
            if written.is_some_and(|b| b != global as i64) {
                return Err(parse_error(format!(
                    "data.batch_size = {} and data.global_batch_size = {global}: set one of them \
                     (batch_size is each worker's batch; global_batch_size is split over the workers)",
                    written.unwrap_or(0)
                )));
            }
            spec.data.batch_size = global;
        }
        Ok(spec)
    }

    /// Why this spec cannot train on groups of `world` data-parallel ranks (empty: it can): a
    /// `global_batch_size` (or a candidate batch size) that does not split evenly over them.
    pub fn world_problems(&self, world: usize) -> Vec<String> {
        let world = world.max(1);
        let Some(global) = self.data.global_batch_size else { return vec![] };
        let mut sizes = vec![("data.global_batch_size", global)];
        if let Some(c) = self.lr_find.as_ref().and_then(|f| f.candidates.as_ref()) {
            sizes.extend(c.batch_size.iter().map(|&b| ("lr_find.candidates.batch_size (global)", b)));
        }
        sizes
            .into_iter()
            .filter(|(_, b)| b % world != 0 || *b < world)
            .map(|(what, b)| {
                format!(
                    "{what}: {b} does not split evenly over {world} workers; \
                     use a multiple of {world} (e.g. {}) or another number of workers",
                    (b / world).max(1) * world
                )
            })
            .collect()
    }

    /// The spec one rank of `world` trains: with `data.global_batch_size`, `data.batch_size`
    /// becomes the rank's share. The error says why it does not split.
    pub fn per_rank(&self, world: usize) -> std::result::Result<JobSpec, String> {
        let mut spec = self.clone();
        if let Some(global) = spec.data.global_batch_size {
            if let Some(problem) = self.world_problems(world).into_iter().next() {
                return Err(problem);
            }
            spec.data.batch_size = global / world.max(1);
        }
        Ok(spec)
    }

    /// The factor a stage's fixed `lr` is multiplied by on `world` ranks: `optimizer.lr_scaling`
    /// when the global batch grows with the ranks, 1 when `data.global_batch_size` fixes it.
    pub fn fixed_lr_scale(&self, world: usize) -> f64 {
        if self.data.global_batch_size.is_some() {
            1.0
        } else {
            self.optimizer.lr_scale(world)
        }
    }

    /// Read, parse and validate a job spec file.
    pub fn load(path: &Path) -> Result<JobSpec> {
        let text = std::fs::read_to_string(path)
            .map_err(|e| Error::Io { path: path.display().to_string(), source: e })?;
        let spec = Self::from_toml_str(&text, &path.display().to_string())?;
        spec.validate()?;
        Ok(spec)
    }

    /// Everything wrong with the spec, at once. Stage numbers in messages are 1-based.
    pub fn validate(&self) -> Result<()> {
        let problems = validate::problems(self);
        if problems.is_empty() {
            Ok(())
        } else {
            Err(Error::InvalidSpec { problems })
        }
    }

    /// Whether the job's first LR sweep runs on the cluster as separate tasks (a grid, several
    /// candidates, or one test whose LR several independent runs share) rather than inside the run.
    pub fn parallel_sweep(&self) -> bool {
        self.lr_find
            .as_ref()
            .is_some_and(|f| f.grid > 0 || crate::sweep::candidates(f).len() > 1 || self.ensemble.runs > 1)
    }

    /// Whether some stage takes its LR from an LR-range test (`lr = "auto"`).
    pub fn needs_lr(&self) -> bool {
        self.stages.iter().any(|s| s.fixed_lr().is_none())
    }

    /// Whether any stage (or the job itself) runs an LR-range test.
    pub fn runs_lr_find(&self) -> bool {
        self.lr_find.is_some() || self.stages.iter().any(|s| s.lr_find)
    }
}

#[cfg(test)]
mod lr_scaling_tests {
    use super::*;

    #[test]
    fn fixed_lrs_follow_the_global_batch_by_the_optimisers_rule() {
        let opt = |text: &str| -> OptimizerSpec { toml::from_str(text).unwrap() };
        let sgd = opt("kind = \"sgd\"");
        assert_eq!(sgd.lr_scaling(), LrScaling::Linear);
        assert_eq!((sgd.lr_scale(1), sgd.lr_scale(4)), (1.0, 4.0));
        let adam = opt("kind = \"adamw\"");
        assert_eq!(adam.lr_scaling(), LrScaling::Sqrt);
        assert_eq!((adam.lr_scale(1), adam.lr_scale(4)), (1.0, 2.0));
        let off = opt("kind = \"sgd\"\nlr_scaling = \"none\"");
        assert_eq!(off.lr_scale(8), 1.0);
        assert_eq!(opt("lr_scaling = \"sqrt\"").lr_scale(9), 3.0);
        assert!(toml::from_str::<OptimizerSpec>("lr_scaling = \"cubic\"").is_err());
    }
}

#[cfg(test)]
mod global_batch_tests {
    use super::*;

    fn job(data: &str, extra: &str) -> std::result::Result<JobSpec, String> {
        let text = format!("name = \"g\"\n[data]\nsource = \"fashion_mnist\"\n{data}\n[model]\narch = \"small_resnet\"\n{extra}[[stage]]\nlr = 0.1\nepochs = 1\n");
        JobSpec::from_toml_str(&text, "t.toml").map_err(|e| e.to_string())
    }

    #[test]
    fn a_global_batch_is_split_over_the_ranks_and_keeps_fixed_lrs_as_written() {
        let spec = job("global_batch_size = 128", "").unwrap();
        assert!(spec.validate().is_ok());
        // one process takes the whole global batch
        assert_eq!(spec.data.batch_size, 128);
        assert_eq!(spec.per_rank(1).unwrap().data.batch_size, 128);
        assert_eq!(spec.per_rank(2).unwrap().data.batch_size, 64);
        assert_eq!(spec.per_rank(4).unwrap().data.batch_size, 32);
        // the global batch is the same on any world size, so a fixed LR is not rescaled
        assert_eq!((spec.fixed_lr_scale(1), spec.fixed_lr_scale(4)), (1.0, 1.0));
        // without it, batch_size is each rank's and SGD scales linearly
        let per_rank = job("batch_size = 64", "").unwrap();
        assert_eq!(per_rank.per_rank(4).unwrap().data.batch_size, 64);
        assert_eq!(per_rank.fixed_lr_scale(4), 4.0);
        assert!(per_rank.world_problems(3).is_empty());
    }

    #[test]
    fn a_global_batch_that_does_not_split_is_refused_with_what_would() {
        let spec = job("global_batch_size = 128", "").unwrap();
        let problems = spec.world_problems(3);
        assert_eq!(problems.len(), 1, "{problems:?}");
        assert!(problems[0].contains("128 does not split evenly over 3 workers"), "{}", problems[0]);
        assert!(problems[0].contains("e.g. 126"), "{}", problems[0]);
        assert!(spec.per_rank(3).unwrap_err().contains("over 3 workers"));
        assert!(job("global_batch_size = 2", "").unwrap().world_problems(4)[0].contains("e.g. 4"));
        // candidate batch sizes are global too, and must split as well
        let sweep = job(
            "global_batch_size = 64",
            "[lr_find]\ngrid = 2\n[lr_find.candidates]\nbatch_size = [64, 100]\n",
        )
        .unwrap();
        let problems = sweep.world_problems(8);
        assert_eq!(problems.len(), 1, "{problems:?}");
        assert!(
            problems[0].starts_with(
                "lr_find.candidates.batch_size (global): 100 does not split evenly over 8 workers"
            ),
            "{}",
            problems[0]
        );
        let mut chosen = sweep.clone();
        crate::sweep::Candidate { batch_size: Some(32), ..Default::default() }.apply(&mut chosen);
        assert_eq!(chosen.data.global_batch_size, Some(32));
        assert_eq!(chosen.per_rank(2).unwrap().data.batch_size, 16);
    }

    #[test]
    fn both_batch_keys_must_agree_and_a_serialised_spec_parses_back() {
        let e = job("batch_size = 64\nglobal_batch_size = 128", "").unwrap_err();
        assert!(e.contains("data.batch_size = 64 and data.global_batch_size = 128: set one of them"), "{e}");
        let spec = job("global_batch_size = 128", "").unwrap();
        // the coordinator hands workers toml::to_string of the parsed spec: both keys, agreeing
        let text = toml::to_string(&spec).unwrap();
        assert!(text.contains("global_batch_size = 128"), "{text}");
        let back = JobSpec::from_toml_str(&text, "worker copy").unwrap();
        assert_eq!(back.per_rank(2).unwrap().data.batch_size, 64);
        let e = job("global_batch_size = 0", "").unwrap().validate().unwrap_err().to_string();
        assert!(e.contains("data.global_batch_size: must be between 1 and"), "{e}");
    }
}

#[cfg(test)]
mod precision_tests {
    use super::Precision;

    #[test]
    fn precision_flags_parse_the_spec_names_and_refuse_others() {
        assert_eq!("fp32".parse::<Precision>(), Ok(Precision::Fp32));
        assert_eq!("bf16".parse::<Precision>(), Ok(Precision::Bf16));
        assert_eq!("fp16".parse::<Precision>(), Ok(Precision::Fp16));
        assert_eq!("auto".parse::<Precision>(), Ok(Precision::Auto));
        assert_eq!("channels_last".parse::<super::MemoryFormat>(), Ok(super::MemoryFormat::ChannelsLast));
        assert!("auto".parse::<super::MemoryFormat>().unwrap_err().contains("contiguous or channels_last"));
        let err = "half".parse::<Precision>().unwrap_err();
        assert!(err.contains("\"half\"") && err.contains("bf16"), "{err}");
    }
}
