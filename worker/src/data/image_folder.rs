//! Image-folder data sets (the layout of fastai's `ImageClassifierData.from_paths` and
//! torchvision's `ImageFolder`): `root/{train,valid,test}/<class>/<image>`, decoded in parallel
//! into RGB `size×size` rows of a [`Dataset`].
//!
//! Failure contract: a broken *layout* (missing root, train/ or valid/, no classes, a class in
//! valid/ or test/ that train/ lacks, no readable training image) is an error naming the path.
//! A broken *file* (unreadable, not a jpg/jpeg/png, no extension, undecodable) is skipped and
//! counted, and each split with skips logs exactly one warning with the count and examples.

use std::path::{Path, PathBuf};
use std::sync::Mutex;

use image::imageops::{self, FilterType};

use super::{DataError, Dataset, Result};

/// The layout, as error messages describe it.
const LAYOUT: &str =
    "an image folder laid out as root/train/<class>/*, root/valid/<class>/*, optional root/test/<class>/*";

/// Extensions that are decoded (compared case-insensitively).
const EXTENSIONS: [&str; 3] = ["jpg", "jpeg", "png"];

/// How many skipped paths a warning names.
const EXAMPLES: usize = 3;

/// The splits of an image folder. `skipped` counts files skipped over all splits.
#[derive(Debug)]
pub struct FolderSplits {
    pub train: Dataset,
    pub valid: Dataset,
    pub test: Option<Dataset>,
    pub skipped: usize,
}

/// Loads `root/train`, `root/valid` and, if present, `root/test`. Classes are the sorted
/// sub-folder names of `train/`; images are converted to RGB and resized to `size×size`
/// (aspect ratio not kept) on `threads` threads (0 counts as 1).
pub fn load_image_folder(root: &Path, size: u32, threads: usize) -> Result<FolderSplits> {
    if size == 0 {
        return Err(DataError::BadImageSize { size });
    }
    let train_dir = require_dir(root)?.join("train");
    let classes = class_names(require_dir(&train_dir)?)?;
    let valid_dir = root.join("valid");
    require_dir(&valid_dir)?;

    let train = load_split(&train_dir, &classes, size, threads)?;
    if train.0.is_empty() {
        return Err(DataError::NoImages { path: train_dir, skipped: train.1 });
    }
    let valid = load_split(&valid_dir, &classes, size, threads)?;
    let test_dir = root.join("test");
    let test = if test_dir.is_dir() { Some(load_split(&test_dir, &classes, size, threads)?) } else { None };
    let skipped = train.1 + valid.1 + test.as_ref().map_or(0, |t| t.1);
    Ok(FolderSplits { train: train.0, valid: valid.0, test: test.map(|t| t.0), skipped })
}

fn require_dir(path: &Path) -> Result<&Path> {
    if path.is_dir() {
        Ok(path)
    } else {
        Err(DataError::MissingFolder { path: path.to_path_buf(), layout: LAYOUT.to_string() })
    }
}

fn io_error(path: &Path) -> impl FnOnce(std::io::Error) -> DataError + '_ {
    move |source| DataError::Io { path: path.to_path_buf(), source }
}

/// The entries of `dir`, sorted by file name so every load is in the same order.
fn sorted_entries(dir: &Path) -> Result<Vec<PathBuf>> {
    let mut paths = std::fs::read_dir(dir)
        .map_err(io_error(dir))?
        .map(|entry| entry.map(|e| e.path()))
        .collect::<std::io::Result<Vec<_>>>()
        .map_err(io_error(dir))?;
    paths.sort();
    Ok(paths)
}

fn file_name(path: &Path) -> String {
    path.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default()
}

/// Sorted names of the sub-folders of `train/`.
fn class_names(train_dir: &Path) -> Result<Vec<String>> {
    let classes: Vec<String> =
        sorted_entries(train_dir)?.iter().filter(|p| p.is_dir()).map(|p| file_name(p)).collect();
    if classes.is_empty() {
        return Err(DataError::NoClasses { path: train_dir.to_path_buf(), layout: LAYOUT.to_string() });
    }
    Ok(classes)
}

/// Why a file was not loaded.
type Skip = String;

/// One split: its data set and how many files were skipped. Logs one warning if any were.
fn load_split(dir: &Path, classes: &[String], size: u32, threads: usize) -> Result<(Dataset, usize)> {
    // Files to decode, with labels; everything else in the split is skipped up front.
    let mut files: Vec<(PathBuf, i64)> = Vec::new();
    let mut skips: Vec<(PathBuf, Skip)> = Vec::new();
    for entry in sorted_entries(dir)? {
        if !entry.is_dir() {
            skips.push((entry, "not inside a class folder".into()));
            continue;
        }
        let class = file_name(&entry);
        let Some(label) = classes.iter().position(|c| *c == class) else {
            return Err(DataError::UnknownClass { path: entry, class, known: classes.len() });
        };
        for path in sorted_entries(&entry)? {
            files.push((path, label as i64));
        }
    }

    let row = 3 * size as usize * size as usize;
    let mut pixels = vec![0u8; files.len() * row];
    let mut outcomes: Vec<std::result::Result<(), Skip>> = vec![Ok(()); files.len()];
    decode_all(&files, &mut pixels, &mut outcomes, size, threads);

    // Compact the decoded rows over the holes the skipped files left.
    let mut labels = Vec::with_capacity(files.len());
    for (i, ((path, label), outcome)) in files.into_iter().zip(outcomes).enumerate() {
        match outcome {
            Ok(()) => {
                // Row i moves down to the next free slot; kept rows never overtake it.
                let (from, to) = (i * row, labels.len() * row);
                if from != to {
                    pixels.copy_within(from..from + row, to);
                }
                labels.push(label);
            }
            Err(why) => skips.push((path, why)),
        }
    }
    pixels.truncate(labels.len() * row);
    pixels.shrink_to_fit();

    if !skips.is_empty() {
        let examples: Vec<String> =
            skips.iter().take(EXAMPLES).map(|(p, why)| format!("{} ({why})", p.display())).collect();
        tracing::warn!(
            split = %dir.display(),
            skipped = skips.len(),
            "skipped {} files in {}, e.g. {}",
            skips.len(),
            dir.display(),
            examples.join(", ")
        );
    }
    let (s, classes) = (size as usize, classes.to_vec());
    Ok((Dataset::new(pixels, (3, s, s), labels, classes), skips.len()))
}

/// Decodes `files[i]` into `pixels[i*row..]` as CHW, recording each outcome, on `threads`
/// scoped threads pulling work from a shared cursor (so one slow file does not stall a chunk).
fn decode_all(
    files: &[(PathBuf, i64)],
    pixels: &mut [u8],
    outcomes: &mut [std::result::Result<(), Skip>],
    size: u32,
    threads: usize,
) {
    let row = 3 * size as usize * size as usize;
    let work = Mutex::new(files.iter().zip(pixels.chunks_mut(row)).zip(outcomes.iter_mut()));
    let threads = threads.clamp(1, files.len().max(1));
    std::thread::scope(|s| {
        for _ in 0..threads {
            s.spawn(|| loop {
                // A poisoned lock only means another decoder panicked; the cursor is intact.
                let next = work.lock().unwrap_or_else(|e| e.into_inner()).next();
                let Some((((path, _), out), outcome)) = next else {
                    break;
                };
                let decoded =
                    std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| decode_into(path, size, out)));
                *outcome = decoded.unwrap_or_else(|_| Err("decoder panicked".into()));
            });
        }
    });
}

/// Decodes one image file into `out` (3·size·size bytes, CHW).
fn decode_into(path: &Path, size: u32, out: &mut [u8]) -> std::result::Result<(), Skip> {
    if path.is_dir() {
        return Err("a folder inside a class folder".into());
    }
    let ext = path.extension().map(|e| e.to_string_lossy().to_ascii_lowercase());
    match ext {
        None => return Err("no file extension".into()),
        Some(e) if !EXTENSIONS.contains(&e.as_str()) => {
            return Err(format!("not a {} file", EXTENSIONS.join("/")))
        }
        Some(_) => {}
    }
    let image = image::io::Reader::open(path)
        .and_then(|r| r.with_guessed_format())
        .map_err(|e| e.to_string())?
        .decode()
        .map_err(|e| e.to_string())?
        .to_rgb8();
    let image = if image.dimensions() == (size, size) {
        image
    } else {
        imageops::resize(&image, size, size, FilterType::Triangle)
    };
    let plane = size as usize * size as usize;
    for (i, px) in image.pixels().enumerate() {
        for c in 0..3 {
            out[c * plane + i] = px.0[c];
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use image::{GrayImage, Luma, Rgb, RgbImage};
    use std::sync::{Arc, Mutex};
    use tracing::{field, span, Event, Level, Metadata, Subscriber};

    /// Collects the messages of WARN events, to pin "exactly one warning per split".
    #[derive(Clone, Default)]
    struct Warnings(Arc<Mutex<Vec<String>>>);

    struct Message(String);

    impl field::Visit for Message {
        fn record_debug(&mut self, f: &field::Field, value: &dyn std::fmt::Debug) {
            if f.name() == "message" {
                self.0 = format!("{value:?}");
            }
        }
    }

    impl Subscriber for Warnings {
        fn enabled(&self, meta: &Metadata<'_>) -> bool {
            *meta.level() == Level::WARN
        }
        fn new_span(&self, _: &span::Attributes<'_>) -> span::Id {
            span::Id::from_u64(1)
        }
        fn record(&self, _: &span::Id, _: &span::Record<'_>) {}
        fn record_follows_from(&self, _: &span::Id, _: &span::Id) {}
        fn event(&self, event: &Event<'_>) {
            let mut msg = Message(String::new());
            event.record(&mut msg);
            self.0.lock().expect("warnings lock").push(msg.0);
        }
        fn enter(&self, _: &span::Id) {}
        fn exit(&self, _: &span::Id) {}
    }

    fn mkdirs(root: &Path, dirs: &[&str]) {
        for d in dirs {
            std::fs::create_dir_all(root.join(d)).expect("mkdir");
        }
    }

    fn solid_rgb(path: &Path, w: u32, h: u32, rgb: [u8; 3]) {
        RgbImage::from_pixel(w, h, Rgb(rgb)).save(path).expect("save rgb");
    }

    /// train/{cat,dog}, valid/{cat,dog}, with three bad files in train/cat and a stray README.
    fn build(root: &Path) {
        mkdirs(root, &["train/cat", "train/dog", "valid/cat", "valid/dog"]);
        solid_rgb(&root.join("train/cat/a.png"), 8, 6, [255, 0, 0]);
        // Upper-case extension: saved as .jpg (the encoder picks by extension), then renamed.
        solid_rgb(&root.join("train/cat/b.jpg"), 5, 5, [0, 0, 250]);
        std::fs::rename(root.join("train/cat/b.jpg"), root.join("train/cat/b.JPG")).expect("mv");
        GrayImage::from_pixel(4, 4, Luma([200])).save(root.join("train/dog/c.png")).expect("gray");
        std::fs::write(root.join("train/cat/x.png"), "not a png").expect("write");
        std::fs::write(root.join("train/cat/noext"), "data").expect("write");
        std::fs::write(root.join("train/cat/empty.jpg"), "").expect("write");
        std::fs::write(root.join("train/README"), "stray").expect("write");
        solid_rgb(&root.join("valid/cat/d.png"), 3, 9, [255, 0, 0]);
        solid_rgb(&root.join("valid/dog/e.jpeg"), 4, 4, [200, 200, 200]);
    }

    fn near(got: &[u8], want: u8, tol: u8) -> bool {
        got.iter().all(|&v| v.abs_diff(want) <= tol)
    }

    #[test]
    fn loads_good_images_and_counts_bad_ones() {
        let dir = tempfile::tempdir().expect("tempdir");
        build(dir.path());
        let warnings = Warnings::default();
        let splits =
            tracing::subscriber::with_default(warnings.clone(), || load_image_folder(dir.path(), 4, 3))
                .expect("load");
        let FolderSplits { train, valid, test, skipped } = splits;
        assert_eq!(train.classes, vec!["cat", "dog"]);
        assert_eq!((train.channels, train.height, train.width), (3, 4, 4));
        assert_eq!(train.labels.as_slice(), &[0, 0, 1]);
        assert_eq!(valid.labels.as_slice(), &[0, 1]);
        assert!(test.is_none());
        assert_eq!(skipped, 4);
        // a.png is red: CHW, so the first plane is 255 and the others 0.
        let a = train.image(0);
        assert!(near(&a[..16], 255, 1) && near(&a[16..], 0, 1), "{a:?}");
        // b.JPG is blue, up to JPEG error.
        let b = train.image(1);
        assert!(near(&b[..32], 0, 12) && near(&b[32..], 250, 12), "{b:?}");
        // c.png is grey, converted to three equal channels, already 4×4.
        assert_eq!(train.image(2), &[200; 48]);

        let warnings = warnings.0.lock().expect("lock").clone();
        assert_eq!(warnings.len(), 1, "{warnings:?}");
        assert!(warnings[0].contains("skipped 4 files"), "{warnings:?}");
        // Three examples, named by path: the stray file first, then sorted order.
        assert!(warnings[0].contains("README") && warnings[0].contains("empty.jpg"), "{warnings:?}");
        assert!(warnings[0].contains("noext") && !warnings[0].contains("x.png"), "{warnings:?}");
    }

    #[test]
    fn optional_test_split_must_use_train_classes() {
        let dir = tempfile::tempdir().expect("tempdir");
        build(dir.path());
        mkdirs(dir.path(), &["test/dog"]);
        solid_rgb(&dir.path().join("test/dog/f.png"), 2, 2, [1, 2, 3]);
        let splits = load_image_folder(dir.path(), 2, 1).expect("load");
        let test = splits.test.expect("test split");
        assert_eq!((test.len(), test.label(0)), (1, 1));
        assert_eq!(test.image(0), &[1, 1, 1, 1, 2, 2, 2, 2, 3, 3, 3, 3]);

        mkdirs(dir.path(), &["test/bird"]);
        let msg = load_image_folder(dir.path(), 2, 1).expect_err("bird").to_string();
        assert!(msg.contains("class folder \"bird\" is not one of the 2 classes"), "{msg}");
        assert!(msg.contains(&dir.path().join("test/bird").display().to_string()), "{msg}");
    }

    #[test]
    fn layout_errors_name_the_path() {
        let dir = tempfile::tempdir().expect("tempdir");
        let missing = dir.path().join("nowhere");
        let msg = load_image_folder(&missing, 8, 2).expect_err("missing").to_string();
        assert!(msg.starts_with(&format!("{} does not exist", missing.display())), "{msg}");
        assert!(msg.contains("root/train/<class>/*"), "{msg}");

        let msg = load_image_folder(dir.path(), 8, 2).expect_err("no train").to_string();
        assert!(msg.contains(&dir.path().join("train").display().to_string()), "{msg}");

        mkdirs(dir.path(), &["train"]);
        let msg = load_image_folder(dir.path(), 8, 2).expect_err("no classes").to_string();
        assert!(msg.contains("has no class sub-folders"), "{msg}");

        mkdirs(dir.path(), &["train/cat"]);
        let msg = load_image_folder(dir.path(), 8, 2).expect_err("no valid").to_string();
        assert!(msg.contains(&dir.path().join("valid").display().to_string()), "{msg}");

        mkdirs(dir.path(), &["valid"]);
        std::fs::write(dir.path().join("train/cat/a.txt"), "x").expect("write");
        let msg = load_image_folder(dir.path(), 8, 2).expect_err("no images").to_string();
        assert!(msg.contains("no readable images under") && msg.contains("(1 files skipped)"), "{msg}");

        let msg = load_image_folder(dir.path(), 0, 2).expect_err("size 0").to_string();
        assert_eq!(msg, "image size must be at least 1 pixel, got 0");
    }
}
