//! `cyclotron predict`: a finished run's model applied to new inputs, the way the run scored its
//! test split: the ensemble members its results chose on the validation split (or one snapshot),
//! each with test-time augmentation when the job used it, their probabilities averaged.
//!
//! Everything comes from the store, never from the job's files or data: a snapshot keeps the
//! validated job spec (`job.json`), the task's card (`image.json`: input shape, class names, the
//! normalisation fitted on the training split) and the weights, each checked against its
//! manifest. The predictions go through the same task code as the run's evaluation
//! ([`ImageClassification`]), so an input the run scored gets the same probabilities.
//!
//! Image classification, tabular runs ([`TabularPredictor`]: CSV rows through the run's fitted
//! `tabular.json`) and text classifiers ([`TextPredictor`]: texts through the run's tokenizer);
//! a language model is refused with a message saying so.

pub mod inputs;
mod tabular;
mod text;

use std::sync::atomic::AtomicBool;

use cyclotron_core::checkpoint::StoreOptions;
use cyclotron_core::results::TrainResults;
use cyclotron_core::spec::{DataSource, JobSpec, TaskKind};
use tch::{Device, Tensor};

use crate::checkpoint::snapshot::{read_snapshot, SnapshotFiles};
use crate::data::Dataset;
use crate::error::{Error, Result};
use crate::job::JOB_SPEC;
use crate::models::pretrained::read_weights;
use crate::models::Model;
use crate::task::image::{ImageCard, ImageClassification, ImageData, IMAGE_CARD, SCRIPT_MODULE};
use crate::task::registry::augmenter;
use crate::task::{Split, Task};
use crate::tensor_io::{from_safetensors, load_into_keeping};

pub use inputs::{load_inputs, Inputs};
pub use tabular::{TabularInputs, TabularPredictor};
pub use text::{TextInputs, TextPredictor};

/// Which snapshots of a run predict.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Members {
    /// The run's ensemble (its members, chosen on the validation split); the snapshot with the
    /// lowest validation loss when the run has no ensemble.
    #[default]
    Ensemble,
    /// Snapshot `i` of the run's results alone.
    Snapshot(usize),
}

/// One member of the predictor: a snapshot read back and checked.
pub struct Member {
    /// Where it was read from (the snapshot's folder).
    pub url: String,
    pub(crate) spec: JobSpec,
    pub(crate) weights: Vec<(String, Tensor)>,
    /// A TorchScript model's module (`model.pt`), whose parameters `weights` replace.
    pub(crate) module: Option<Vec<u8>>,
}

/// Load a snapshot's `weights` into `model`, built from that snapshot (from its `model.pt` when
/// `scripted`). A TorchScript snapshot written before buffers were saved beside the parameters
/// lacks them in `weights`; its `model.pt` holds them, so they keep the module's values.
pub(crate) fn load_member(
    model: &dyn Model,
    weights: &[(String, Tensor)],
    url: &str,
    scripted: bool,
) -> Result<()> {
    load_into_keeping(model.vs(), weights, url, &|n| scripted && !model.is_parameter(n))
}

/// A run's model, ready to predict.
pub struct Predictor {
    /// What the inputs must look like and what the outputs mean (the first member's card; every
    /// member's must be the same).
    pub card: ImageCard,
    /// The job spec of the first member (the model, the augmentation, `[tta]`).
    pub spec: JobSpec,
    pub members: Vec<Member>,
}

pub(crate) fn invalid(what: &str, message: impl Into<String>) -> Error {
    Error::Invalid { what: what.into(), message: message.into() }
}

/// `{"store": …, "job": …, "run": …}`, written by `train` and `local` into their `--out` folder so
/// that the folder names its run in the store.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct RunRef {
    pub store: String,
    pub job: String,
    pub run: String,
}

/// The name of a [`RunRef`] in an output folder.
pub const RUN_REF: &str = "run.json";

impl RunRef {
    /// The run's folder in the store.
    pub fn url(&self) -> String {
        format!("{}/{}/{}", self.store.trim_end_matches('/'), self.job, self.run)
    }
}

/// What `place` names: an output folder with a `run.json`, a run's folder in the store (with its
/// `results.json`), or one snapshot's folder (with its `MANIFEST.json`), as a path or a URL.
fn resolve(place: &str) -> Result<String> {
    let local = place.strip_prefix("file://").unwrap_or(place);
    let run_ref = std::path::Path::new(local).join(RUN_REF);
    if !place.starts_with("s3://") && run_ref.is_file() {
        let text = std::fs::read_to_string(&run_ref)
            .map_err(|e| Error::Io { what: run_ref.display().to_string(), source: e })?;
        let r: RunRef = serde_json::from_str(&text)
            .map_err(|e| invalid(&run_ref.display().to_string(), format!("not a run reference: {e}")))?;
        return Ok(r.url());
    }
    Ok(place.trim_end_matches('/').to_string())
}

/// The snapshot folders of the run at `base` that `members` names.
fn member_urls(base: &str, results: &TrainResults, members: Members) -> Result<Vec<String>> {
    let n = results.snapshots.len();
    if n == 0 {
        return Err(invalid(
            "predict",
            format!("the run at {base} took no snapshot (snapshots = false in every stage?)"),
        ));
    }
    let picked: Vec<usize> = match members {
        Members::Snapshot(i) if i < n => vec![i],
        Members::Snapshot(i) => {
            return Err(invalid(
                "--snapshot",
                format!("{i} is not a snapshot of this run: it took {n} (0..{})", n - 1),
            ))
        }
        Members::Ensemble => match &results.ensemble {
            Some(e) if !e.members.is_empty() => e.members.clone(),
            _ => {
                let best = (0..n)
                    .min_by(|&a, &b| {
                        results.snapshots[a].valid.loss.total_cmp(&results.snapshots[b].valid.loss)
                    })
                    .unwrap_or(0);
                vec![best]
            }
        },
    };
    // with several independent runs, a snapshot lives in its own run's folder, numbered within it
    let parent = base.rsplit_once('/').map_or("", |(p, _)| p);
    picked
        .into_iter()
        .map(|i| {
            let s = results.snapshots.get(i).ok_or_else(|| {
                invalid("results.json", format!("the ensemble names snapshot {i}, but the run has {n}"))
            })?;
            Ok(match &s.run {
                Some(run) => {
                    let within = results
                        .runs
                        .iter()
                        .find(|r| &r.run == run)
                        .and_then(|r| r.snapshots.iter().position(|&k| k == i))
                        .unwrap_or(s.index);
                    format!("{parent}/{run}/snapshots/cycle-{within}")
                }
                None => format!("{base}/snapshots/cycle-{}", s.index),
            })
        })
        .collect()
}

/// The bytes at `url` (a path, `file://` or `s3://`), an error naming the file when it is absent.
fn fetch(url: &str, options: &StoreOptions) -> Result<Vec<u8>> {
    match url.strip_prefix("file://").or((!url.contains("://")).then_some(url)) {
        Some(path) => std::fs::read(path).map_err(|e| Error::Io { what: path.to_string(), source: e }),
        None => read_weights(url, options),
    }
}

pub(crate) fn blob<'a>(files: &'a SnapshotFiles, name: &str) -> Result<&'a [u8]> {
    files.blob(name).ok_or_else(|| {
        invalid(
            "predict",
            format!(
                "the snapshot at {} has no {name}: it was written by a Cyclotron before `predict` existed; \
                 train the job again to use it here",
                files.url
            ),
        )
    })
}

pub(crate) fn json<T: serde::de::DeserializeOwned>(files: &SnapshotFiles, name: &str) -> Result<T> {
    serde_json::from_slice(blob(files, name)?)
        .map_err(|e| invalid("predict", format!("{}/{name}: {e}", files.url)))
}

/// The snapshots `members` of the run (or the snapshot) at `place` names (see [`resolve`]), read
/// and checked against their manifests, each with its job spec.
fn read_members(
    place: &str,
    options: &StoreOptions,
    members: Members,
) -> Result<Vec<(SnapshotFiles, JobSpec)>> {
    let base = resolve(place)?;
    let urls = match fetch(&format!("{base}/MANIFEST.json"), options) {
        Ok(_) if members == Members::Ensemble => vec![base.clone()],
        Ok(_) => return Err(invalid("--snapshot", format!("{place} is one snapshot already"))),
        Err(_) => {
            let bytes = fetch(&format!("{base}/results.json"), options).map_err(|e| {
                invalid(
                    "predict",
                    format!(
                        "{place} is not a run: no results.json there ({e}). Name the --out folder of \
                         `cyclotron train`/`local`, a run's folder in the store (STORE/JOB/RUN) or a \
                         snapshot's folder (…/snapshots/cycle-N)"
                    ),
                )
            })?;
            let results: TrainResults = serde_json::from_slice(&bytes)
                .map_err(|e| invalid("predict", format!("{base}/results.json: {e}")))?;
            member_urls(&base, &results, members)?
        }
    };
    let mut read = vec![];
    for url in urls {
        let files = read_snapshot(&url, options, "predict")?;
        let spec: JobSpec = json(&files, JOB_SPEC)?;
        read.push((files, spec));
    }
    Ok(read)
}

/// A run's model of whichever task it was trained for.
pub enum Opened {
    Image(Predictor),
    Tabular(TabularPredictor),
    /// Boxed: a tokenizer is large.
    Text(Box<TextPredictor>),
}

/// What `predict` says of a model it does not take.
const TAKES: &str = "predict takes image classifiers, text classifiers and tabular models \
                     (a language model's encoder goes to a text classifier through model.encoder)";

/// The model of the run (or snapshot) at `place`, for the task its job trained (image or text
/// classification, tabular; a language model is refused with a message saying so).
pub fn open(place: &str, options: &StoreOptions, members: Members) -> Result<Opened> {
    let read = read_members(place, options, members)?;
    match read.first().map(|(_, spec)| spec.data.source.task()) {
        Some(TaskKind::Tabular) => Ok(Opened::Tabular(TabularPredictor::from_members(read)?)),
        Some(TaskKind::TextClassification) => Ok(Opened::Text(Box::new(TextPredictor::from_members(read)?))),
        _ => Ok(Opened::Image(Predictor::from_members(read)?)),
    }
}

impl Predictor {
    /// The image classifier of the run (or snapshot) at `place`: see [`resolve`] for what it may name.
    pub fn open(place: &str, options: &StoreOptions, members: Members) -> Result<Predictor> {
        Predictor::from_members(read_members(place, options, members)?)
    }

    fn from_members(read: Vec<(SnapshotFiles, JobSpec)>) -> Result<Predictor> {
        let mut loaded: Vec<(Member, ImageCard)> = vec![];
        for (files, spec) in read {
            let url = files.url.clone();
            let kind = spec.data.source.task();
            if kind != TaskKind::ImageClassification {
                return Err(invalid("predict", format!("{url} is a {kind:?} model; {TAKES}")));
            }
            let card: ImageCard = json(&files, IMAGE_CARD)?;
            let weights = from_safetensors(blob(&files, "model.safetensors")?, &url)?;
            let module = match spec.model.torchscript {
                Some(_) => Some(blob(&files, SCRIPT_MODULE)?.to_vec()),
                None => None,
            };
            loaded.push((Member { url, spec, weights, module }, card));
        }
        let Some((first, card)) = loaded.first().map(|(m, c)| (m.spec.clone(), c.clone())) else {
            return Err(invalid("predict", "the run names no snapshot to predict with"));
        };
        if let Some((m, _)) = loaded.iter().find(|(_, c)| *c != card) {
            return Err(invalid(
                "predict",
                format!(
                    "{} expects other inputs than {} (shape, classes or normalisation differ)",
                    m.url, loaded[0].0.url
                ),
            ));
        }
        Ok(Predictor { card, spec: first, members: loaded.into_iter().map(|(m, _)| m).collect() })
    }

    /// Whether inputs of another size are resized to the model's (as training resized the images
    /// of an image folder); inputs of a fixed-size source (idx files) must have its size.
    pub fn resizes(&self) -> bool {
        self.spec.data.source == DataSource::ImageFolder
    }

    /// Whether the run used test-time augmentation (`[tta]` and an augmentation pipeline).
    pub fn has_tta(&self) -> bool {
        self.spec.tta.is_some() && self.spec.data.augment.is_some()
    }

    /// Class probabilities of `inputs` ([N, classes], on the CPU): every member's (with TTA when
    /// `tta` and the run used it), averaged.
    pub fn predict(&self, inputs: &Dataset, tta: bool) -> Result<Tensor> {
        if inputs.is_empty() {
            return Err(invalid("predict", "no inputs"));
        }
        let abort = AtomicBool::new(false);
        let device = Device::cuda_if_available();
        let mut probs = vec![];
        for m in &self.members {
            let spec = &m.spec;
            let (channels, classes) = (self.card.channels as i64, self.card.classes.len() as i64);
            let net = match &m.module {
                Some(bytes) => {
                    let input = [channels, self.card.height as i64, self.card.width as i64];
                    let groups = spec.model.torchscript_groups.as_deref();
                    crate::models::build_torchscript(bytes, &m.url, groups, input, classes, device)?
                }
                None => crate::models::build_for(&spec.model, channels, classes, device)?,
            };
            load_member(&net, &m.weights, &m.url, m.module.is_some())?;
            let data = ImageData {
                train: inputs.clone(),
                valid: inputs.clone(),
                test: Some(inputs.clone()),
                norm: crate::data::Normalize { mean: self.card.mean.clone(), std: self.card.std.clone() },
                batch_size: spec.data.batch_size,
                prefetch: spec.data.prefetch,
            };
            let task = ImageClassification::new(net, data, spec.seed, augmenter(spec)?);
            let plain = task.predict(Split::Eval, &abort)?;
            let p = match (&spec.tta, tta && task.has_augmentation()) {
                (Some(t), true) => {
                    let views = (0..t.n as u64)
                        .map(|k| task.predict_augmented(Split::Eval, k, &abort))
                        .collect::<Result<Vec<_>>>()?;
                    crate::tta::combine(&plain, &views, t.beta)
                }
                _ => plain,
            };
            probs.push(p);
        }
        let refs: Vec<&Tensor> = probs.iter().collect();
        Ok(crate::ensemble::average(&refs))
    }
}
