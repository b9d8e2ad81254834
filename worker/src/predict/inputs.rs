//! The inputs of `cyclotron predict`: image files (PNG, JPEG), folders of them, and idx files of
//! images (MNIST's format, gzipped or not), checked against the model's [`ImageCard`].
//!
//! An input must have the model's channel count and size, with one exception that repeats
//! training: a model trained on an image folder saw every image converted to RGB and resized to
//! its size, so its inputs are converted and resized the same way (`resize`).

use std::path::{Path, PathBuf};

use image::imageops::{self, FilterType};
use image::DynamicImage;

use crate::data::idx::read_idx;
use crate::data::Dataset;
use crate::error::{Error, Result};
use crate::task::image::ImageCard;

/// Image file extensions a folder is searched for.
pub const IMAGE_EXTENSIONS: [&str; 3] = ["png", "jpg", "jpeg"];

/// Inputs in the order given (a folder's files sorted by name; an idx file's images in order),
/// each with a name for the output (`file`, or `file#i` for image `i` of an idx file).
#[derive(Debug)]
pub struct Inputs {
    pub names: Vec<String>,
    pub data: Dataset,
}

fn refuse(path: &Path, message: String) -> Error {
    Error::Invalid { what: path.display().to_string(), message }
}

fn shape(card: &ImageCard) -> String {
    let kind = if card.channels == 1 { "1-channel (grayscale)" } else { "3-channel (RGB)" };
    format!("{kind} {}×{} images", card.width, card.height)
}

/// Load `paths` as inputs of a model with `card`; `resize` converts and resizes images to the
/// model's shape instead of refusing them (see the module docs).
pub fn load_inputs(paths: &[PathBuf], card: &ImageCard, resize: bool) -> Result<Inputs> {
    if paths.is_empty() {
        return Err(Error::Invalid { what: "predict".into(), message: "no inputs given".into() });
    }
    if card.channels != 1 && card.channels != 3 {
        return Err(Error::Invalid {
            what: "predict".into(),
            message: format!(
                "the model takes {}-channel images; only 1 and 3 channels are supported",
                card.channels
            ),
        });
    }
    let mut names = vec![];
    let mut pixels: Vec<u8> = vec![];
    for path in paths {
        if path.is_dir() {
            let files = image_files(path)?;
            for file in files {
                pixels.extend(load_image(&file, card, resize)?);
                names.push(file.display().to_string());
            }
        } else if is_idx(path)? {
            let arr =
                read_idx(path, 3).map_err(|e| refuse(path, format!("not an idx file of images: {e}")))?;
            let (n, h, w) = (arr.dims[0], arr.dims[1], arr.dims[2]);
            if card.channels != 1 || (h, w) != (card.height, card.width) {
                return Err(refuse(
                    path,
                    format!("holds 1-channel {w}×{h} images; the model takes {}", shape(card)),
                ));
            }
            pixels.extend_from_slice(&arr.data);
            names.extend((0..n).map(|i| format!("{}#{i}", path.display())));
        } else {
            pixels.extend(load_image(path, card, resize)?);
            names.push(path.display().to_string());
        }
    }
    let n = names.len();
    let data =
        Dataset::new(pixels, (card.channels, card.height, card.width), vec![0; n], card.classes.clone());
    Ok(Inputs { names, data })
}

/// The image files of `dir`, sorted by name; an error when it has none.
fn image_files(dir: &Path) -> Result<Vec<PathBuf>> {
    let io = |e| Error::Io { what: dir.display().to_string(), source: e };
    let mut files = vec![];
    for entry in std::fs::read_dir(dir).map_err(io)? {
        let path = entry.map_err(io)?.path();
        let ext = path.extension().map(|e| e.to_string_lossy().to_ascii_lowercase());
        if path.is_file() && ext.is_some_and(|e| IMAGE_EXTENSIONS.contains(&e.as_str())) {
            files.push(path);
        }
    }
    if files.is_empty() {
        return Err(refuse(dir, format!("holds no .{} files", IMAGE_EXTENSIONS.join("/."))));
    }
    files.sort();
    Ok(files)
}

/// Whether `path` is an idx file (gzipped, or starting with an idx magic number).
fn is_idx(path: &Path) -> Result<bool> {
    use std::io::Read;
    let mut head = [0u8; 4];
    let mut f =
        std::fs::File::open(path).map_err(|e| Error::Io { what: path.display().to_string(), source: e })?;
    let n = f.read(&mut head).map_err(|e| Error::Io { what: path.display().to_string(), source: e })?;
    let head = &head[..n];
    Ok(head.starts_with(&[0x1f, 0x8b]) || (head.len() == 4 && head[..3] == [0, 0, 0x08]))
}

/// One image file as CHW bytes of the model's shape.
fn load_image(path: &Path, card: &ImageCard, resize: bool) -> Result<Vec<u8>> {
    let image = image::io::Reader::open(path)
        .and_then(|r| r.with_guessed_format())
        .map_err(|e| Error::Io { what: path.display().to_string(), source: e })?
        .decode()
        .map_err(|e| refuse(path, format!("cannot decode it as an image: {e}")))?;
    let (w, h) = (image.width() as usize, image.height() as usize);
    let colour = image.color().has_color();
    let wrong_size = (w, h) != (card.width, card.height);
    if !resize && (colour != (card.channels == 3) || wrong_size) {
        let kind = if colour { "a colour" } else { "a grayscale" };
        return Err(refuse(
            path,
            format!(
                "is {kind} {w}×{h} image; the model takes {}. Convert it first, or pass --resize to \
                 convert and resize it",
                shape(card)
            ),
        ));
    }
    Ok(to_chw(image, card))
}

/// `image` converted to the card's channels and resized to its size as training resized an image
/// folder's (triangle filter), as CHW bytes.
fn to_chw(image: DynamicImage, card: &ImageCard) -> Vec<u8> {
    let (w, h) = (card.width as u32, card.height as u32);
    if card.channels == 1 {
        let mut g = image.to_luma8();
        if g.dimensions() != (w, h) {
            g = imageops::resize(&g, w, h, FilterType::Triangle);
        }
        return g.into_raw();
    }
    let mut rgb = image.to_rgb8();
    if rgb.dimensions() != (w, h) {
        rgb = imageops::resize(&rgb, w, h, FilterType::Triangle);
    }
    let plane = (w * h) as usize;
    let mut out = vec![0u8; 3 * plane];
    for (i, px) in rgb.pixels().enumerate() {
        for c in 0..3 {
            out[c * plane + i] = px.0[c];
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use image::{GrayImage, Luma, Rgb, RgbImage};

    use super::*;

    fn card(channels: usize, size: usize) -> ImageCard {
        ImageCard {
            channels,
            height: size,
            width: size,
            classes: vec!["a".into(), "b".into()],
            mean: vec![0.5; channels],
            std: vec![0.25; channels],
        }
    }

    fn idx3(path: &Path, n: u32, h: u32, w: u32) {
        let mut bytes = vec![0, 0, 0x08, 3];
        for d in [n, h, w] {
            bytes.extend_from_slice(&d.to_be_bytes());
        }
        bytes.extend((0..n * h * w).map(|i| (i % 251) as u8));
        std::fs::write(path, bytes).unwrap();
    }

    #[test]
    fn grayscale_png_and_idx_images_keep_their_pixels_and_order() {
        let dir = tempfile::tempdir().unwrap();
        let png = dir.path().join("one.png");
        GrayImage::from_fn(4, 4, |x, y| Luma([(x + 4 * y) as u8 * 10])).save(&png).unwrap();
        let idx = dir.path().join("set-idx3-ubyte");
        idx3(&idx, 3, 4, 4);
        let inputs = load_inputs(&[png.clone(), idx.clone()], &card(1, 4), false).unwrap();
        assert_eq!(inputs.data.len(), 4);
        assert_eq!(inputs.names[0], png.display().to_string());
        assert_eq!(inputs.names[3], format!("{}#2", idx.display()));
        assert_eq!(inputs.data.image(0), (0..16).map(|i| i * 10).collect::<Vec<u8>>());
        assert_eq!(inputs.data.image(2), (16..32).collect::<Vec<u8>>());
    }

    #[test]
    fn wrong_channels_or_size_are_refused_with_what_the_model_takes() {
        let dir = tempfile::tempdir().unwrap();
        let rgb = dir.path().join("rgb.png");
        RgbImage::from_pixel(4, 4, Rgb([200, 10, 10])).save(&rgb).unwrap();
        let msg = load_inputs(std::slice::from_ref(&rgb), &card(1, 4), false).unwrap_err().to_string();
        assert!(
            msg.contains("is a colour 4×4 image; the model takes 1-channel (grayscale) 4×4 images"),
            "{msg}"
        );
        assert!(msg.contains("--resize"), "{msg}");
        let big = dir.path().join("big.png");
        GrayImage::from_pixel(9, 7, Luma([3])).save(&big).unwrap();
        let msg = load_inputs(std::slice::from_ref(&big), &card(1, 4), false).unwrap_err().to_string();
        assert!(msg.contains("is a grayscale 9×7 image; the model takes 1-channel (grayscale) 4×4"), "{msg}");
        let idx = dir.path().join("other-idx3-ubyte");
        idx3(&idx, 2, 5, 5);
        let msg = load_inputs(&[idx], &card(1, 4), false).unwrap_err().to_string();
        assert!(
            msg.contains("holds 1-channel 5×5 images; the model takes 1-channel (grayscale) 4×4"),
            "{msg}"
        );
        // with resize, both are converted as training converted an image folder
        let inputs = load_inputs(&[rgb, big], &card(1, 4), true).unwrap();
        assert_eq!(inputs.data.len(), 2);
        assert!(inputs.data.image(1).iter().all(|&p| p == 3));
    }

    #[test]
    fn an_rgb_model_reads_a_folder_in_name_order_as_chw() {
        let dir = tempfile::tempdir().unwrap();
        RgbImage::from_pixel(2, 2, Rgb([1, 2, 3])).save(dir.path().join("b.png")).unwrap();
        RgbImage::from_pixel(2, 2, Rgb([7, 8, 9])).save(dir.path().join("a.jpg")).unwrap();
        std::fs::write(dir.path().join("notes.txt"), "not an image").unwrap();
        let inputs = load_inputs(&[dir.path().to_path_buf()], &card(3, 2), false).unwrap();
        assert_eq!(inputs.names.len(), 2);
        assert!(inputs.names[0].ends_with("a.jpg") && inputs.names[1].ends_with("b.png"));
        assert_eq!(inputs.data.image(1), &[1, 1, 1, 1, 2, 2, 2, 2, 3, 3, 3, 3]);
    }

    #[test]
    fn empty_folders_undecodable_files_and_missing_paths_are_named() {
        let dir = tempfile::tempdir().unwrap();
        let msg = load_inputs(&[dir.path().to_path_buf()], &card(1, 4), false).unwrap_err().to_string();
        assert!(msg.contains("holds no .png/.jpg/.jpeg files"), "{msg}");
        let junk = dir.path().join("junk.png");
        std::fs::write(&junk, b"definitely not a png").unwrap();
        let msg = load_inputs(&[junk], &card(1, 4), false).unwrap_err().to_string();
        assert!(msg.contains("cannot decode it as an image"), "{msg}");
        let missing = dir.path().join("missing.png");
        let msg = load_inputs(std::slice::from_ref(&missing), &card(1, 4), false).unwrap_err().to_string();
        assert!(msg.contains(&missing.display().to_string()), "{msg}");
        let labels = dir.path().join("labels-idx1-ubyte");
        std::fs::write(&labels, [0, 0, 8, 1, 0, 0, 0, 1, 4]).unwrap();
        let msg = load_inputs(&[labels], &card(1, 4), false).unwrap_err().to_string();
        assert!(msg.contains("not an idx file of images"), "{msg}");
    }
}
