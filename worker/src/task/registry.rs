//! Which task a job spec asks for, and building it: the data loaded, the model built from the
//! job's seed (so every process of a job starts from the same weights), pretrained weights
//! loaded. A new task is its own file plus one arm here.

use std::sync::Arc;

use cyclotron_core::spec::{JobSpec, TaskKind};

use super::image::{ImageClassification, ImageData};
use super::Task;
use crate::data::sources::load_images;
use crate::data::{Augmenter, Normalize};
use crate::error::{Error, Result};
use crate::event::{phase, Observer};
use crate::models;
use crate::runtime::{device, set_threads, store_options};

/// The task of `spec`, its data loaded (inside a "loading data" phase of `obs`).
pub fn build(spec: &JobSpec, obs: &mut dyn Observer) -> Result<Box<dyn Task>> {
    match spec.data.source.task() {
        TaskKind::ImageClassification => Ok(Box::new(image_classification(spec, obs)?)),
        TaskKind::LanguageModel => Ok(Box::new(super::language_model::build(spec, obs)?)),
        TaskKind::TextClassification => Ok(Box::new(super::text_classifier::build(spec, obs)?)),
        TaskKind::Tabular => Ok(Box::new(super::tabular::build(spec, obs)?)),
    }
}

/// Image classification of `spec`'s images with `spec.model`.
pub fn image_classification(spec: &JobSpec, obs: &mut dyn Observer) -> Result<ImageClassification> {
    let splits = phase(obs, "loading data", || load_images(spec))?;
    set_threads(spec);
    tch::manual_seed(spec.seed as i64);
    let device = device(spec)?;
    let (mean, std) = splits.train.channel_stats();
    let t = &splits.train;
    let classes = t.num_classes() as i64;
    let net = match &spec.model.torchscript {
        Some(url) => {
            let bytes = models::pretrained::read_model_file("model.torchscript", url, &store_options(spec))?;
            let input = [t.channels as i64, t.height as i64, t.width as i64];
            let groups = spec.model.torchscript_groups.as_deref();
            models::build_torchscript(&bytes, url, groups, input, classes, device)?
        }
        None => models::build_for(&spec.model, t.channels as i64, classes, device)?,
    };
    if let Some(url) = &spec.model.pretrained {
        let skipped = models::pretrained::load_pretrained(&net, url, &store_options(spec))?;
        if !skipped.is_empty() {
            tracing::info!(url = %url, skipped = ?skipped, "pretrained weights loaded; new head");
        }
    }
    let data = ImageData {
        train: splits.train,
        valid: splits.valid,
        test: splits.test,
        norm: Normalize { mean, std },
        batch_size: spec.data.batch_size,
        prefetch: spec.data.prefetch,
    };
    Ok(ImageClassification::new(net, data, spec.seed, augmenter(spec)?)
        .with_label_smoothing(spec.loss.label_smoothing))
}

/// The job's augmentation pipeline, `None` without `[data.augment]`.
pub fn augmenter(spec: &JobSpec) -> Result<Option<Arc<Augmenter>>> {
    let Some(a) = &spec.data.augment else { return Ok(None) };
    let transforms = a
        .resolve()
        .map_err(|problems| Error::Invalid { what: "data.augment".into(), message: problems.join("; ") })?;
    Ok(Some(Arc::new(Augmenter::new(transforms))))
}
