//! The batch loader: a background thread turns a [`Dataset`] into normalised `f32` NCHW tensors
//! and hands them to the training thread over a bounded channel, so pixel gathering and
//! conversion overlap with the model's step.
//!
//! Protocol: the producer sends batches in order over a `sync_channel(prefetch)` and exits after
//! the last one, or as soon as a send fails because the [`Loader`] (the receiver) was dropped,
//! or when it sees the stop flag between batches. Dropping the loader sets the flag, drops the
//! receiver (which wakes a producer blocked in `send`) and joins the thread, so nothing outlives
//! it. A panic in the producer is re-raised on the training thread rather than ending the epoch
//! early in silence.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::{sync_channel, Receiver, SyncSender};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use tch::Tensor;

use super::augment::item_seed;
use super::{epoch_order, Augmenter, Dataset};

/// One batch, ready for the model: `x` f32 `[B, C, H, W]` normalised, `y` i64 `[B]`; on CPU.
#[derive(Debug)]
pub struct Batch {
    pub x: Tensor,
    pub y: Tensor,
}

/// Per-channel normalisation `(x/255 - mean) / std`. One value is used for every channel;
/// empty vectors mean no normalisation (mean 0, std 1).
#[derive(Debug, Clone, PartialEq)]
pub struct Normalize {
    pub mean: Vec<f32>,
    pub std: Vec<f32>,
}

impl Normalize {
    /// Only scales to `[0, 1]`.
    pub fn identity() -> Normalize {
        Normalize { mean: Vec::new(), std: Vec::new() }
    }

    /// The statistics of `ds`, as [`Dataset::channel_stats`] computes them.
    pub fn from_stats(ds: &Dataset) -> Normalize {
        let (mean, std) = ds.channel_stats();
        Normalize { mean, std }
    }

    /// Per-channel `(scale, offset)` with `normalised = (v/255)·scale + offset`.
    fn affine(&self, channels: usize) -> (Vec<f32>, Vec<f32>) {
        let table = self.table(channels);
        // table[c*256] is the value of 0 and table[c*256+255] of 255: exact for an affine map
        (0..channels).map(|c| (table[c * 256 + 255] - table[c * 256], table[c * 256])).unzip()
    }

    /// A 256-entry lookup table per channel: `table[c * 256 + v]` is the normalised value of
    /// pixel value `v` in channel `c`, computed with exactly the documented formula.
    ///
    /// # Panics
    /// If `mean` or `std` has a length other than 0, 1 or `channels`.
    fn table(&self, channels: usize) -> Vec<f32> {
        let pick = |values: &[f32], c: usize, default: f32, what: &str| match values.len() {
            0 => default,
            1 => values[0],
            n if n == channels => values[c],
            n => panic!("Normalize: {what} has {n} values for {channels} channels"),
        };
        (0..channels)
            .flat_map(|c| {
                let mean = pick(&self.mean, c, 0.0, "mean");
                let std = pick(&self.std, c, 1.0, "std");
                (0..=255u8).map(move |v| (f32::from(v) / 255.0 - mean) / std)
            })
            .collect()
    }
}

/// Augmentation of a loader's items: the pipeline and the seed its draws derive from (with the
/// epoch and the storage row; see [`super::augment`]).
#[derive(Debug, Clone, PartialEq)]
pub struct Augmentation {
    pub augmenter: Arc<Augmenter>,
    pub seed: u64,
}

/// How a [`Loader`] walks its data set.
#[derive(Debug, Clone, PartialEq)]
pub struct LoaderConfig {
    /// Items per batch (0 counts as 1).
    pub batch_size: usize,
    /// `Some(seed)`: the order is `epoch_order(len, seed, epoch)`; `None`: the view's order.
    pub shuffle_seed: Option<u64>,
    pub epoch: u64,
    /// Drop a last batch smaller than `batch_size`.
    pub drop_last: bool,
    /// Batches prepared ahead: the bounded channel's depth (0 counts as 1).
    pub prefetch: usize,
    /// Augment every item (training batches, TTA views); `None` for plain evaluation.
    pub augment: Option<Augmentation>,
}

/// One epoch of batches from a background thread; see the module docs for the protocol.
pub struct Loader {
    rx: Option<Receiver<Batch>>,
    stop: Arc<AtomicBool>,
    worker: Option<JoinHandle<()>>,
    num_batches: usize,
    yielded: usize,
    waited: Duration,
}

/// What the producer thread owns: the rows to emit, in order, and how to emit them.
struct Producer {
    images: Arc<Vec<u8>>,
    labels: Arc<Vec<i64>>,
    shape: [usize; 3],
    rows: Vec<usize>,
    batch_size: usize,
    num_batches: usize,
    table: Vec<f32>,
    /// The pipeline, its draws' seed and epoch, and per-channel `(scale, offset)` for `v/255`.
    augment: Option<(Augmentation, u64, Vec<f32>, Vec<f32>)>,
}

impl Loader {
    /// Starts the producer thread for one epoch of `ds`.
    ///
    /// # Panics
    /// If `norm` has a number of values other than 0, 1 or `ds.channels`.
    pub fn new(ds: &Dataset, norm: &Normalize, cfg: &LoaderConfig) -> Loader {
        let batch_size = cfg.batch_size.max(1);
        let num_batches = if cfg.drop_last { ds.len() / batch_size } else { ds.len().div_ceil(batch_size) };
        let rows = match cfg.shuffle_seed {
            Some(seed) => {
                epoch_order(ds.len(), seed, cfg.epoch).into_iter().map(|pos| ds.indices[pos]).collect()
            }
            None => ds.indices.clone(),
        };
        let producer = Producer {
            images: Arc::clone(&ds.images),
            labels: Arc::clone(&ds.labels),
            shape: [ds.channels, ds.height, ds.width],
            rows,
            batch_size,
            num_batches,
            table: norm.table(ds.channels),
            augment: cfg.augment.clone().filter(|a| !a.augmenter.is_identity()).map(|a| {
                let (scale, offset) = norm.affine(ds.channels);
                (a, cfg.epoch, scale, offset)
            }),
        };
        let (tx, rx) = sync_channel(cfg.prefetch.max(1));
        let stop = Arc::new(AtomicBool::new(false));
        let flag = Arc::clone(&stop);
        let worker = std::thread::Builder::new()
            .name("cyclotron-loader".into())
            .spawn(move || producer.run(&tx, &flag))
            .unwrap_or_else(|e| panic!("cannot spawn the loader thread: {e}"));
        Loader { rx: Some(rx), stop, worker: Some(worker), num_batches, yielded: 0, waited: Duration::ZERO }
    }

    /// Batches in this epoch.
    pub fn num_batches(&self) -> usize {
        self.num_batches
    }

    /// Seconds the training thread has spent blocked waiting for batches so far.
    pub fn wait_seconds(&self) -> f64 {
        self.waited.as_secs_f64()
    }

    /// Joins the producer; if it panicked, re-raises the panic on this thread when `reraise`
    /// (a `Drop` must not, and the panic message has been printed already).
    fn join_worker(&mut self, reraise: bool) {
        if let Some(Err(panic)) = self.worker.take().map(JoinHandle::join) {
            if reraise {
                std::panic::resume_unwind(panic);
            }
        }
    }
}

impl Iterator for Loader {
    type Item = Batch;

    fn next(&mut self) -> Option<Batch> {
        let rx = self.rx.as_ref()?;
        let started = Instant::now();
        let batch = rx.recv();
        self.waited += started.elapsed();
        match batch {
            Ok(batch) => {
                self.yielded += 1;
                Some(batch)
            }
            Err(_) => {
                // The producer is done: normally after the last batch, or it panicked.
                self.rx = None;
                self.join_worker(true);
                debug_assert_eq!(self.yielded, self.num_batches);
                None
            }
        }
    }

    fn size_hint(&self) -> (usize, Option<usize>) {
        let left = self.num_batches - self.yielded;
        (left, Some(left))
    }
}

impl ExactSizeIterator for Loader {}

impl Drop for Loader {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        // Disconnect first: a producer blocked in `send` wakes up with an error and exits.
        self.rx = None;
        self.join_worker(false);
    }
}

impl Producer {
    fn run(&self, tx: &SyncSender<Batch>, stop: &AtomicBool) {
        for chunk in self.rows.chunks(self.batch_size).take(self.num_batches) {
            if stop.load(Ordering::Relaxed) {
                return;
            }
            if tx.send(self.assemble(chunk)).is_err() {
                return;
            }
        }
    }

    /// Gathers `rows` into one normalised batch.
    fn assemble(&self, rows: &[usize]) -> Batch {
        let [c, h, w] = self.shape;
        let (plane, item) = (h * w, c * h * w);
        let mut x = Vec::with_capacity(rows.len() * item);
        if let Some((aug, epoch, scale, offset)) = &self.augment {
            x.resize(rows.len() * item, 0.0);
            for (&row, out) in rows.iter().zip(x.chunks_exact_mut(item.max(1))) {
                let pixels = &self.images[row * item..(row + 1) * item];
                let seed = item_seed(aug.seed, *epoch, row);
                aug.augmenter.apply(pixels, self.shape, seed, scale, offset, out);
            }
        }
        for &row in rows.iter().filter(|_| self.augment.is_none()) {
            let pixels = &self.images[row * item..(row + 1) * item];
            for (ch, plane_pixels) in pixels.chunks_exact(plane.max(1)).enumerate() {
                let table = &self.table[ch * 256..(ch + 1) * 256];
                x.extend(plane_pixels.iter().map(|&v| table[usize::from(v)]));
            }
        }
        let y: Vec<i64> = rows.iter().map(|&row| self.labels[row]).collect();
        let b = rows.len() as i64;
        Batch { x: cpu_tensor(&x, &[b, c as i64, h as i64, w as i64]), y: cpu_tensor(&y, &[b]) }
    }
}

/// A CPU tensor of shape `shape` holding a copy of `data`, made without any libtorch parallel
/// region, for threads other than the training thread.
///
/// `Tensor::from_slice` zero-fills first (`torch::zeros`: an OpenMP region once a tensor passes
/// libtorch's grain size). Run from the loader thread, that starts a second OpenMP team, and
/// once libgomp manages more threads than the machine has cores it stops spinning between
/// regions: the training thread's team then sleeps and wakes around every operator. Measured on
/// 2 cores (the demo's model, 2 epochs): 258,000 voluntary context switches, 160 % CPU and 56 ms
/// a step, against 43 ms for the same step without the loader thread.
///
/// # Panics
/// If `shape` does not hold `data.len()` elements.
#[allow(unsafe_code)]
pub fn cpu_tensor<T: tch::kind::Element>(data: &[T], shape: &[i64]) -> Tensor {
    let t = Tensor::empty(shape, (T::KIND, tch::Device::Cpu));
    assert_eq!(t.numel(), data.len(), "cpu_tensor: shape {shape:?} for {} values", data.len());
    // SAFETY: `t` is a fresh contiguous CPU tensor of `data.len()` elements of T's kind
    unsafe { std::ptr::copy_nonoverlapping(data.as_ptr(), t.data_ptr().cast::<T>(), data.len()) };
    t
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::mpsc::channel;

    /// `n` items of 1×2×2; item r has every pixel equal to r and label r.
    fn ramp(n: u8) -> Dataset {
        let images = (0..n).flat_map(|r| [r; 4]).collect();
        let labels = (0..i64::from(n)).collect();
        Dataset::new(images, (1, 2, 2), labels, vec!["only".into()])
    }

    /// Threads of this process named `name` (a thread's name passes to the threads it starts,
    /// OpenMP's among them).
    fn threads_named(name: &str) -> usize {
        std::fs::read_dir("/proc/self/task")
            .unwrap()
            .filter_map(|t| std::fs::read_to_string(t.ok()?.path().join("comm")).ok())
            .filter(|comm| comm.trim_end() == name)
            .count()
    }

    /// In a thread of its own (`name`: at most 15 bytes, Linux's limit), `make` a 128×784 batch
    /// and count the threads that thread has started by the time it returns.
    fn threads_started_by(name: &str, make: fn(&[f32]) -> Tensor) -> (usize, Tensor) {
        let name = name.to_string();
        std::thread::Builder::new()
            .name(name.clone())
            .spawn(move || {
                let data: Vec<f32> = (0..128 * 784).map(|i| i as f32).collect();
                let t = make(&data);
                let named = threads_named(&name);
                assert!(named >= 1, "no thread is named {name:?}");
                (named - 1, t)
            })
            .unwrap()
            .join()
            .unwrap()
    }

    #[test]
    fn batches_are_made_without_starting_an_openmp_team_in_the_loader_thread() {
        let (started, t) = threads_started_by("probe-cpu", |d| cpu_tensor(d, &[128, 1, 28, 28]));
        assert_eq!(started, 0, "cpu_tensor started threads");
        assert_eq!(t.size(), vec![128, 1, 28, 28]);
        let want: Vec<f32> = (0..128 * 784).map(|i| i as f32).collect();
        assert_eq!(Vec::<f32>::try_from(t.flatten(0, -1)).unwrap(), want);
        let y = cpu_tensor(&[3i64, -1], &[2]);
        assert_eq!((y.kind(), Vec::<i64>::try_from(&y).unwrap()), (tch::Kind::Int64, vec![3, -1]));
        // the control: libtorch's own constructor zero-fills in parallel, starting a team (where
        // libtorch may use more than one thread)
        let (started, _) = threads_started_by("probe-slice", Tensor::from_slice);
        if tch::get_num_threads() > 1 {
            assert!(
                started >= 1,
                "Tensor::from_slice no longer starts OpenMP threads: cpu_tensor may be unneeded"
            );
        }
    }

    #[test]
    #[should_panic(expected = "cpu_tensor: shape [3] for 2 values")]
    fn cpu_tensor_refuses_a_shape_of_another_size() {
        let _ = cpu_tensor(&[1.0f32, 2.0], &[3]);
    }

    fn config(batch_size: usize, shuffle_seed: Option<u64>, drop_last: bool) -> LoaderConfig {
        LoaderConfig { batch_size, shuffle_seed, epoch: 0, drop_last, prefetch: 2, augment: None }
    }

    fn labels_of(loader: Loader) -> Vec<Vec<i64>> {
        loader.map(|b| Vec::<i64>::try_from(&b.y).expect("labels")).collect()
    }

    #[test]
    fn shuffled_batches_cover_the_epoch_once() {
        let ds = ramp(10);
        let loader = Loader::new(&ds, &Normalize::identity(), &config(3, Some(7), false));
        assert_eq!((loader.num_batches(), loader.len()), (4, 4));
        let batches = labels_of(loader);
        let sizes: Vec<usize> = batches.iter().map(Vec::len).collect();
        assert_eq!(sizes, vec![3, 3, 3, 1]);
        let order: Vec<i64> = batches.concat();
        let expected: Vec<i64> = epoch_order(10, 7, 0).iter().map(|&i| i as i64).collect();
        assert_eq!(order, expected);
        let mut sorted = order.clone();
        sorted.sort_unstable();
        assert_eq!(sorted, (0..10).collect::<Vec<_>>());

        let next_epoch = LoaderConfig { epoch: 1, ..config(3, Some(7), false) };
        let order1 = labels_of(Loader::new(&ds, &Normalize::identity(), &next_epoch)).concat();
        assert_ne!(order, order1);
    }

    #[test]
    fn unshuffled_follows_the_view_and_drop_last_is_honoured() {
        let ds = ramp(10).subset(&[9, 0, 5, 4, 3]);
        let batches = labels_of(Loader::new(&ds, &Normalize::identity(), &config(2, None, true)));
        assert_eq!(batches, vec![vec![9, 0], vec![5, 4]]);
        let batches = labels_of(Loader::new(&ds, &Normalize::identity(), &config(2, None, false)));
        assert_eq!(batches, vec![vec![9, 0], vec![5, 4], vec![3]]);
        let empty = Loader::new(&ds.take(0), &Normalize::identity(), &config(2, None, false));
        assert_eq!((empty.num_batches(), labels_of(empty).len()), (0, 0));
    }

    #[test]
    fn pixels_are_normalised_per_channel() {
        // Two items of 2×1×2.
        let images = vec![0, 255, 51, 102, 255, 0, 204, 153];
        let ds = Dataset::new(images.clone(), (2, 1, 2), vec![1, 0], vec!["a".into(), "b".into()]);
        let norm = Normalize { mean: vec![0.5, 0.2], std: vec![0.5, 0.25] };
        let mut loader = Loader::new(&ds, &norm, &config(2, None, false));
        let batch = loader.next().expect("one batch");
        assert!(loader.next().is_none());
        assert_eq!(batch.x.size(), vec![2, 2, 1, 2]);
        assert_eq!((batch.x.kind(), batch.y.kind()), (tch::Kind::Float, tch::Kind::Int64));
        let x = Vec::<f32>::try_from(&batch.x.flatten(0, -1)).expect("x");
        for (i, (&got, &v)) in x.iter().zip(&images).enumerate() {
            let c = (i / 2) % 2;
            let want = (f32::from(v) / 255.0 - norm.mean[c]) / norm.std[c];
            assert!((got - want).abs() < 1e-6, "element {i}: {got} vs {want}");
        }
        // By hand, item 0: channel 0 (0, 255) → (-1, 1); channel 1 (51, 102) → (0, 0.8).
        let by_hand = [-1.0, 1.0, 0.0, 0.8];
        assert!(x.iter().zip(by_hand).all(|(g, w)| (g - w).abs() < 1e-6), "{x:?}");
        assert_eq!(Vec::<i64>::try_from(&batch.y).expect("y"), vec![1, 0]);
        assert!(loader.wait_seconds() >= 0.0);
    }

    #[test]
    #[should_panic(expected = "mean has 3 values for 2 channels")]
    fn mismatched_normalisation_is_rejected() {
        let ds = Dataset::new(vec![0; 4], (2, 1, 2), vec![0], vec!["a".into()]);
        let norm = Normalize { mean: vec![0.0; 3], std: vec![1.0] };
        Loader::new(&ds, &norm, &config(1, None, false));
    }

    fn augmented(epoch: u64, seed: u64) -> LoaderConfig {
        let t =
            vec![cyclotron_core::spec::Transform::FlipH, cyclotron_core::spec::Transform::CropPad { pad: 1 }];
        let augment = Some(Augmentation { augmenter: Arc::new(Augmenter::new(t)), seed });
        LoaderConfig { epoch, augment, ..config(4, Some(7), false) }
    }

    fn xs_and_ys(loader: Loader) -> (Vec<f32>, Vec<i64>, Vec<Vec<i64>>) {
        let (mut xs, mut ys, mut shapes) = (vec![], vec![], vec![]);
        for b in loader {
            shapes.push(b.x.size());
            xs.extend(Vec::<f32>::try_from(&b.x.flatten(0, -1)).expect("x"));
            ys.extend(Vec::<i64>::try_from(&b.y).expect("y"));
        }
        (xs, ys, shapes)
    }

    #[test]
    fn augmentation_keeps_labels_and_shapes_and_is_seeded() {
        // 10 items of 1×2×2 with distinct pixels so that flips and shifts show
        let images: Vec<u8> = (0..40u8).map(|v| v * 6).collect();
        let ds = Dataset::new(images, (1, 2, 2), (0..10).collect(), vec!["only".into()]);
        let norm = Normalize { mean: vec![0.3], std: vec![0.2] };
        let plain = xs_and_ys(Loader::new(&ds, &norm, &config(4, Some(7), false)));
        let a = xs_and_ys(Loader::new(&ds, &norm, &augmented(0, 1)));
        assert_eq!(a.1, plain.1, "labels and order are kept");
        assert_eq!(a.2, plain.2, "shapes are kept");
        assert_ne!(a.0, plain.0, "nothing was augmented");
        assert_eq!(a, xs_and_ys(Loader::new(&ds, &norm, &augmented(0, 1))), "not deterministic");
        assert_ne!(a.0, xs_and_ys(Loader::new(&ds, &norm, &augmented(0, 2))).0, "seed ignored");
        let next = LoaderConfig { shuffle_seed: Some(7), ..augmented(1, 1) };
        let plain_next =
            xs_and_ys(Loader::new(&ds, &norm, &LoaderConfig { epoch: 1, ..config(4, Some(7), false) }));
        assert_eq!(xs_and_ys(Loader::new(&ds, &norm, &next)).1, plain_next.1);
    }

    #[test]
    fn an_empty_pipeline_is_the_plain_path() {
        let ds = ramp(10);
        let norm = Normalize { mean: vec![0.1], std: vec![0.5] };
        let none = Some(Augmentation { augmenter: Arc::new(Augmenter::new(vec![])), seed: 3 });
        let cfg = LoaderConfig { augment: none, ..config(3, Some(7), false) };
        assert_eq!(
            xs_and_ys(Loader::new(&ds, &norm, &cfg)),
            xs_and_ys(Loader::new(&ds, &norm, &config(3, Some(7), false)))
        );
    }

    #[test]
    fn dropping_mid_epoch_stops_the_producer() {
        // A hang detector with a generous deadline, not a timing assertion.
        let (done_tx, done_rx) = channel();
        std::thread::spawn(move || {
            let ds = ramp(200);
            let cfg = LoaderConfig { prefetch: 1, ..config(1, Some(3), false) };
            let mut loader = Loader::new(&ds, &Normalize::identity(), &cfg);
            let first = loader.next().map(|b| b.y.size());
            drop(loader);
            let _ = done_tx.send(first);
        });
        let first = done_rx.recv_timeout(Duration::from_secs(60)).expect("drop hung");
        assert_eq!(first, Some(vec![1]));
    }
}
