//! Training data for the worker: data sets held in memory as `u8` NCHW rows ([`Dataset`]), the
//! sources that fill them (Fashion-MNIST idx files in [`idx`], image folders in
//! [`image_folder`]), deterministic sample orders for data parallelism ([`sampler`]), and the
//! background [`Loader`] that turns a data set into normalised `tch` batches.
//!
//! A [`Dataset`] is a cheap *view*: the pixel and label buffers sit behind `Arc`s and a view only
//! lists which rows it covers, so `split`, `subset` and `take` copy indices, never pixels.

pub mod augment;
mod classes;
pub mod idx;
pub mod image_folder;
pub mod loader;
pub mod sampler;
pub mod sources;
pub mod tabular;
pub mod text;

use std::fmt;
use std::path::PathBuf;
use std::sync::Arc;

pub use augment::Augmenter;
pub use idx::{load_fashion_mnist, FASHION_MNIST_CLASSES};
pub use image_folder::{load_image_folder, FolderSplits};
pub use loader::{Augmentation, Batch, Loader, LoaderConfig, Normalize};
pub use sampler::{epoch_order, permutation, rank_positions, shard, SplitMix64};

/// What can go wrong while loading data. Unreadable *images* inside an image folder are not
/// errors (they are skipped and counted); these are the failures a user has to fix.
#[derive(Debug, thiserror::Error)]
pub enum DataError {
    #[error("cannot read {path}: {source}")]
    Io { path: PathBuf, source: std::io::Error },
    #[error("cannot find {name} or {name}.gz in {dir}")]
    IdxMissing { dir: PathBuf, name: String },
    #[error("{path}: bad idx magic number {found:#010x}, expected {expected:#010x}")]
    IdxMagic { path: PathBuf, found: u32, expected: u32 },
    #[error("{path}: idx file truncated: header promises {expected} bytes, found {found}")]
    IdxTruncated { path: PathBuf, expected: u64, found: u64 },
    #[error("{path}: the idx header promises {promised} bytes of data, more than the {max} one idx file may hold; the file is corrupt or not an idx file")]
    IdxTooLarge { path: PathBuf, promised: u64, max: u64 },
    #[error("{images} holds {n_images} images but {labels} holds {n_labels} labels")]
    IdxCountMismatch { images: PathBuf, n_images: usize, labels: PathBuf, n_labels: usize },
    #[error("{path}: label {label} of item {index} is outside 0..{classes}")]
    LabelOutOfRange { path: PathBuf, index: usize, label: u8, classes: usize },
    #[error("{path} does not exist or is not a folder: expected {layout}")]
    MissingFolder { path: PathBuf, layout: String },
    #[error("{path} has no class sub-folders: expected {layout}")]
    NoClasses { path: PathBuf, layout: String },
    #[error("{path}: class folder {class:?} is not one of the {known} classes found in train/")]
    UnknownClass { path: PathBuf, class: String, known: usize },
    #[error("no readable images under {path} ({skipped} files skipped)")]
    NoImages { path: PathBuf, skipped: usize },
    #[error("image size must be at least 1 pixel, got {size}")]
    BadImageSize { size: u32 },
    #[error("data: the validation split of {path} is empty; raise data.valid_pct or add images to valid/")]
    EmptyValidation { path: String },
    #[error("data.source: {name} is not an image source")]
    NotImages { name: String },
}

/// The data module's result type.
pub type Result<T> = std::result::Result<T, DataError>;

/// Images in memory as `u8`, NCHW, plus labels. Plain Rust memory (`Send + Sync`), no tch inside.
///
/// Row `r` of the storage is `images[r*C*H*W .. (r+1)*C*H*W]` with label `labels[r]`; this view
/// covers the rows listed in `indices`, in that order (rows may repeat, e.g. a padded shard).
#[derive(Clone)]
pub struct Dataset {
    pub images: Arc<Vec<u8>>,
    pub channels: usize,
    pub height: usize,
    pub width: usize,
    pub labels: Arc<Vec<i64>>,
    pub classes: Vec<String>,
    /// Which rows of `images` / `labels` this view covers, in order.
    pub indices: Vec<usize>,
}

impl fmt::Debug for Dataset {
    // The derived form would print every pixel.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Dataset")
            .field("len", &self.len())
            .field("rows", &self.labels.len())
            .field("shape", &[self.channels, self.height, self.width])
            .field("classes", &self.classes.len())
            .finish()
    }
}

/// How many items `channel_stats` looks at, at most.
const STATS_ITEMS: usize = 10_000;

impl Dataset {
    /// A view over every row of freshly loaded storage.
    pub fn new(
        images: Vec<u8>,
        (channels, height, width): (usize, usize, usize),
        labels: Vec<i64>,
        classes: Vec<String>,
    ) -> Dataset {
        debug_assert_eq!(images.len(), labels.len() * channels * height * width);
        Dataset {
            indices: (0..labels.len()).collect(),
            images: Arc::new(images),
            channels,
            height,
            width,
            labels: Arc::new(labels),
            classes,
        }
    }

    /// Number of items in this view.
    pub fn len(&self) -> usize {
        self.indices.len()
    }

    pub fn is_empty(&self) -> bool {
        self.indices.is_empty()
    }

    pub fn num_classes(&self) -> usize {
        self.classes.len()
    }

    /// Bytes per item: `C·H·W`.
    pub fn item_size(&self) -> usize {
        self.channels * self.height * self.width
    }

    /// The CHW pixels of item `pos` of this view. Panics if `pos >= len()`.
    pub fn image(&self, pos: usize) -> &[u8] {
        let row = self.indices[pos];
        let size = self.item_size();
        &self.images[row * size..(row + 1) * size]
    }

    /// The label of item `pos` of this view. Panics if `pos >= len()`.
    pub fn label(&self, pos: usize) -> i64 {
        self.labels[self.indices[pos]]
    }

    /// The view of the items at positions `idx` of this view (not storage rows), in that order.
    /// Panics if a position is `>= len()`.
    pub fn subset(&self, idx: &[usize]) -> Dataset {
        self.with_indices(idx.iter().map(|&pos| self.indices[pos]).collect())
    }

    /// The first `n` items (all of them when `n >= len()`), e.g. for `limit_train`.
    pub fn take(&self, n: usize) -> Dataset {
        self.with_indices(self.indices[..n.min(self.len())].to_vec())
    }

    /// A seeded random split of this view into `(train, valid)`, where valid holds
    /// `round(len · valid_pct)` items. Deterministic for a seed; both halves keep the view's
    /// order. `valid_pct` is meant to be in `[0, 1)`; values outside `[0, 1]` (and NaN, as 0)
    /// are clamped.
    pub fn split(&self, valid_pct: f64, seed: u64) -> (Dataset, Dataset) {
        let pct = if valid_pct.is_nan() { 0.0 } else { valid_pct.clamp(0.0, 1.0) };
        let n_valid = ((self.len() as f64 * pct).round() as usize).min(self.len());
        let order = permutation(self.len(), seed);
        let mut valid = order[..n_valid].to_vec();
        let mut train = order[n_valid..].to_vec();
        valid.sort_unstable();
        train.sort_unstable();
        (self.subset(&train), self.subset(&valid))
    }

    /// Per-channel mean and standard deviation of the pixel values scaled to `[0, 1]`, over up
    /// to the first 10 000 items of this view: what [`Normalize`] wants. An empty view gives
    /// mean 0 and std 1; a constant channel gets std 1 rather than 0, so normalising by it
    /// cannot divide by zero.
    pub fn channel_stats(&self) -> (Vec<f32>, Vec<f32>) {
        let plane = self.height * self.width;
        let items = self.len().min(STATS_ITEMS);
        let mut sum = vec![0u64; self.channels];
        let mut sum_sq = vec![0u64; self.channels];
        for pos in 0..items {
            for (c, pixels) in self.image(pos).chunks_exact(plane.max(1)).enumerate() {
                sum[c] += pixels.iter().map(|&v| u64::from(v)).sum::<u64>();
                sum_sq[c] += pixels.iter().map(|&v| u64::from(v) * u64::from(v)).sum::<u64>();
            }
        }
        let count = (items * plane) as f64;
        if count == 0.0 {
            return (vec![0.0; self.channels], vec![1.0; self.channels]);
        }
        let mean: Vec<f64> = sum.iter().map(|&s| s as f64 / count / 255.0).collect();
        let std = sum_sq
            .iter()
            .zip(&mean)
            .map(|(&sq, &m)| {
                let var = (sq as f64 / count / (255.0 * 255.0) - m * m).max(0.0);
                if var > 1e-12 {
                    var.sqrt() as f32
                } else {
                    1.0
                }
            })
            .collect();
        (mean.iter().map(|&m| m as f32).collect(), std)
    }

    fn with_indices(&self, indices: Vec<usize>) -> Dataset {
        Dataset {
            images: Arc::clone(&self.images),
            channels: self.channels,
            height: self.height,
            width: self.width,
            labels: Arc::clone(&self.labels),
            classes: self.classes.clone(),
            indices,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// 10 items of 1×2×2; item r has every pixel equal to r, label r % 3.
    fn ramp() -> Dataset {
        let images = (0..10u8).flat_map(|r| [r; 4]).collect();
        let labels = (0..10).map(|r| r % 3).collect();
        let classes = vec!["a".into(), "b".into(), "c".into()];
        Dataset::new(images, (1, 2, 2), labels, classes)
    }

    #[test]
    fn views_share_storage_and_compose() {
        let ds = ramp();
        assert_eq!((ds.len(), ds.num_classes(), ds.item_size()), (10, 3, 4));
        let sub = ds.subset(&[7, 2, 9]);
        assert_eq!(sub.indices, vec![7, 2, 9]);
        assert_eq!(sub.image(0), &[7, 7, 7, 7]);
        assert_eq!(sub.label(2), 0);
        // Positions of a view, not rows of the storage.
        assert_eq!(sub.subset(&[1]).indices, vec![2]);
        assert!(Arc::ptr_eq(&ds.images, &sub.images));
        assert_eq!(ds.take(3).indices, vec![0, 1, 2]);
        assert_eq!(ds.take(99).len(), 10);
        assert!(ds.take(0).is_empty());
    }

    #[test]
    fn split_is_seeded_disjoint_and_complete() {
        let ds = ramp();
        let (train, valid) = ds.split(0.2, 5);
        assert_eq!((train.len(), valid.len()), (8, 2));
        let mut all: Vec<usize> = train.indices.iter().chain(&valid.indices).copied().collect();
        all.sort_unstable();
        assert_eq!(all, (0..10).collect::<Vec<_>>());
        assert_eq!(ds.split(0.2, 5).1.indices, valid.indices);
        let others: Vec<Vec<usize>> = (0..20).map(|s| ds.split(0.2, s).1.indices).collect();
        assert!(others.iter().any(|v| *v != valid.indices));
        assert_eq!(ds.split(0.0, 1).1.len(), 0);
        assert_eq!(ds.split(f64::NAN, 1).0.len(), 10);
    }

    #[test]
    fn channel_stats_match_a_hand_computation() {
        // Two items of 2×1×2: channel 0 holds 0 and 255 (mean ½, std ½), channel 1 is constant.
        let images = vec![0, 255, 51, 51, 0, 255, 51, 51];
        let ds = Dataset::new(images, (2, 1, 2), vec![0, 1], vec!["x".into(), "y".into()]);
        let (mean, std) = ds.channel_stats();
        assert!((mean[0] - 0.5).abs() < 1e-6 && (std[0] - 0.5).abs() < 1e-6, "{mean:?} {std:?}");
        assert!((mean[1] - 0.2).abs() < 1e-6 && std[1] == 1.0, "{mean:?} {std:?}");
        let (mean, std) = ds.take(0).channel_stats();
        assert_eq!((mean, std), (vec![0.0, 0.0], vec![1.0, 1.0]));
    }
}
