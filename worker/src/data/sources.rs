//! The one table of image data sources: a spec's `data.source` and the function that loads it
//! into train / valid (/ test) splits. A new source is its own file plus one line in
//! [`IMAGE_SOURCES`] (and its variant in core's `DataSource`, which specs name).

use std::path::Path;

use cyclotron_core::spec::{DataSource, DataSpec, JobSpec};

use super::{load_fashion_mnist, load_image_folder, DataError, Dataset, Result};

/// Image splits as a source gives them.
pub struct ImageSplits {
    pub train: Dataset,
    pub valid: Dataset,
    pub test: Option<Dataset>,
}

type Load = fn(&DataSpec, u64) -> Result<ImageSplits>;

/// Every image source, by the name specs give it.
pub const IMAGE_SOURCES: &[(DataSource, Load)] = &[
    (DataSource::FashionMnist, |d, seed| {
        let (full, test) = load_fashion_mnist(Path::new(&d.resolved_path()))?;
        let (train, valid) = full.split(d.valid_pct, d.split_seed.unwrap_or(seed));
        Ok(ImageSplits { train, valid, test: Some(test) })
    }),
    (DataSource::ImageFolder, |d, _| {
        let threads = std::thread::available_parallelism().map_or(2, |n| n.get());
        let s = load_image_folder(Path::new(&d.resolved_path()), d.size.unwrap_or(32), threads)?;
        Ok(ImageSplits { train: s.train, valid: s.valid, test: s.test })
    }),
];

/// Load the spec's image data set: a validation split carved from the training data when the
/// source has none, the classes kept and the limits applied.
pub fn load_images(spec: &JobSpec) -> Result<ImageSplits> {
    let d = &spec.data;
    let Some((_, load)) = IMAGE_SOURCES.iter().find(|(s, _)| *s == d.source) else {
        return Err(DataError::NotImages { name: format!("{:?}", d.source) });
    };
    let ImageSplits { train, valid, test } = load(d, spec.seed)?;
    let (train, valid, test) = match &d.classes {
        Some(keep) => {
            (train.select_classes(keep), valid.select_classes(keep), test.map(|t| t.select_classes(keep)))
        }
        None => (train, valid, test),
    };
    let limit = |ds: Dataset, n: Option<usize>| match n {
        Some(n) if n < ds.len() => ds.take(n),
        _ => ds,
    };
    let splits = ImageSplits {
        train: limit(train, d.limit_train),
        valid: limit(valid, d.limit_eval),
        test: test.map(|t| limit(t, d.limit_eval)),
    };
    if splits.valid.is_empty() {
        return Err(DataError::EmptyValidation { path: d.resolved_path() });
    }
    Ok(splits)
}
