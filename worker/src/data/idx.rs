//! The idx file format of MNIST and Fashion-MNIST (LeCun et al.), gzipped or plain, and the
//! Fashion-MNIST loader built on it.
//!
//! An idx file is a 4-byte magic number `00 00 <type> <ndims>` (type `0x08` = unsigned byte,
//! the only one these data sets use), `ndims` big-endian `u32` dimensions, then the data in
//! row-major order. Gzip is recognised by its magic bytes, not by the file name.

use std::io::Read;
use std::path::{Path, PathBuf};

use flate2::read::GzDecoder;

use super::{DataError, Dataset, Result};

/// Fashion-MNIST's class names, in label order (Xiao, Rasul and Vollgraf 2017).
pub const FASHION_MNIST_CLASSES: [&str; 10] = [
    "T-shirt/top",
    "Trouser",
    "Pullover",
    "Dress",
    "Coat",
    "Sandal",
    "Shirt",
    "Sneaker",
    "Bag",
    "Ankle boot",
];

/// Magic number of a `u8` idx file with `ndims` dimensions.
const fn magic(ndims: u8) -> u32 {
    0x0800 | ndims as u32
}

/// An idx file of unsigned bytes: its dimensions and its data.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IdxArray {
    pub dims: Vec<usize>,
    pub data: Vec<u8>,
}

/// Reads a `u8` idx file with exactly `ndims` dimensions, gunzipping it if it is gzipped.
pub fn read_idx(path: &Path, ndims: u8) -> Result<IdxArray> {
    let io_err = |source| DataError::Io { path: path.to_path_buf(), source };
    let raw = std::fs::read(path).map_err(io_err)?;
    let bytes = if raw.starts_with(&[0x1f, 0x8b]) { gunzip_idx(path, &raw, ndims)? } else { raw };
    parse_idx(path, &bytes, ndims)
}

/// The most data one idx file may promise (4 GiB: 5 million 28×28 images, far above any data
/// set of this format); a larger header is refused before anything is allocated.
pub const MAX_IDX_BYTES: u64 = 4 << 30;

/// Gunzips an idx file: the header first, then at most the bytes the header promises, so a
/// small file that inflates to gigabytes (a gzip bomb) costs no more memory than its header
/// admits, and a header promising more than [`MAX_IDX_BYTES`] is refused.
fn gunzip_idx(path: &Path, raw: &[u8], ndims: u8) -> Result<Vec<u8>> {
    let io_err = |source| DataError::Io { path: path.to_path_buf(), source };
    let header_len = 4 + 4 * u64::from(ndims);
    let mut decoder = GzDecoder::new(raw);
    let mut out = Vec::with_capacity(header_len as usize);
    (&mut decoder).take(header_len).read_to_end(&mut out).map_err(io_err)?;
    if out.len() as u64 == header_len {
        let dims = out[4..].chunks(4).map(|w| u64::from(u32::from_be_bytes([w[0], w[1], w[2], w[3]])));
        let data_len = dims.fold(1u64, |acc, d| acc.saturating_mul(d));
        if data_len > MAX_IDX_BYTES {
            return Err(DataError::IdxTooLarge {
                path: path.to_path_buf(),
                promised: data_len,
                max: MAX_IDX_BYTES,
            });
        }
        // deflate inflates at most ~1032:1, so a short file cannot fill what a huge header promises
        out.reserve(data_len.min((raw.len() as u64).saturating_mul(1032)) as usize);
        decoder.take(data_len).read_to_end(&mut out).map_err(io_err)?;
    }
    // a short header or short data is reported by parse_idx as truncated
    Ok(out)
}

/// Parses the bytes of an idx file; `path` only names it in errors.
fn parse_idx(path: &Path, bytes: &[u8], ndims: u8) -> Result<IdxArray> {
    let expected = magic(ndims);
    let header_len = 4 + 4 * usize::from(ndims);
    let truncated = |expected: u64| DataError::IdxTruncated {
        path: path.to_path_buf(),
        expected,
        found: bytes.len() as u64,
    };
    let word = |i: usize| u32::from_be_bytes([bytes[i], bytes[i + 1], bytes[i + 2], bytes[i + 3]]);
    if bytes.len() < 4 {
        return Err(truncated(header_len as u64));
    }
    let found = word(0);
    if found != expected {
        return Err(DataError::IdxMagic { path: path.to_path_buf(), found, expected });
    }
    if bytes.len() < header_len {
        return Err(truncated(header_len as u64));
    }
    let dims: Vec<usize> = (0..usize::from(ndims)).map(|d| word(4 + 4 * d) as usize).collect();
    // u64 arithmetic: dims are u32, so at most 3 of them multiply without overflow; saturate
    // beyond so a corrupt header reads as "truncated", never as a wrapped small size.
    let data_len = dims.iter().fold(1u64, |acc, &d| acc.saturating_mul(d as u64));
    let total = (header_len as u64).saturating_add(data_len);
    if (bytes.len() as u64) < total {
        return Err(truncated(total));
    }
    // Trailing bytes past the promised data are ignored, as the reference readers do.
    Ok(IdxArray { dims, data: bytes[header_len..total as usize].to_vec() })
}

/// `dir/name.gz` if it exists, else `dir/name` if it exists.
fn find_file(dir: &Path, name: &str) -> Result<PathBuf> {
    [dir.join(format!("{name}.gz")), dir.join(name)]
        .into_iter()
        .find(|p| p.is_file())
        .ok_or_else(|| DataError::IdxMissing { dir: dir.to_path_buf(), name: name.to_string() })
}

/// Loads one split (`train` or `t10k`) of an MNIST-style data set from `dir`.
fn load_split(dir: &Path, prefix: &str, classes: &[&str]) -> Result<Dataset> {
    let images_path = find_file(dir, &format!("{prefix}-images-idx3-ubyte"))?;
    let labels_path = find_file(dir, &format!("{prefix}-labels-idx1-ubyte"))?;
    let images = read_idx(&images_path, 3)?;
    let labels = read_idx(&labels_path, 1)?;
    let (n, height, width) = (images.dims[0], images.dims[1], images.dims[2]);
    if labels.dims[0] != n {
        return Err(DataError::IdxCountMismatch {
            images: images_path,
            n_images: n,
            labels: labels_path,
            n_labels: labels.dims[0],
        });
    }
    if let Some((index, &label)) =
        labels.data.iter().enumerate().find(|(_, &l)| usize::from(l) >= classes.len())
    {
        return Err(DataError::LabelOutOfRange { path: labels_path, index, label, classes: classes.len() });
    }
    Ok(Dataset::new(
        images.data,
        (1, height, width),
        labels.data.iter().map(|&l| i64::from(l)).collect(),
        classes.iter().map(|c| c.to_string()).collect(),
    ))
}

/// Fashion-MNIST (or MNIST) idx files, gzipped or not, in `dir`:
/// `train-images-idx3-ubyte(.gz)`, `train-labels-idx1-ubyte(.gz)`, `t10k-images-idx3-ubyte(.gz)`,
/// `t10k-labels-idx1-ubyte(.gz)`. Debian's `dataset-fashion-mnist` puts them in
/// `/usr/share/datasets/fashion-mnist/`. Returns `(train, test)`, 1-channel, with
/// Fashion-MNIST's class names. The two splits are decoded in parallel.
pub fn load_fashion_mnist(dir: &Path) -> Result<(Dataset, Dataset)> {
    std::thread::scope(|s| {
        let test = s.spawn(|| load_split(dir, "t10k", &FASHION_MNIST_CLASSES));
        let train = load_split(dir, "train", &FASHION_MNIST_CLASSES)?;
        let test = match test.join() {
            Ok(test) => test?,
            Err(panic) => std::panic::resume_unwind(panic),
        };
        Ok((train, test))
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use flate2::{write::GzEncoder, Compression};
    use std::io::Write;

    fn idx_bytes(dims: &[u32], data: &[u8]) -> Vec<u8> {
        let mut out = vec![0, 0, 0x08, dims.len() as u8];
        for d in dims {
            out.extend_from_slice(&d.to_be_bytes());
        }
        out.extend_from_slice(data);
        out
    }

    fn write(path: &Path, bytes: &[u8], gzip: bool) {
        let bytes = if gzip {
            let mut enc = GzEncoder::new(Vec::new(), Compression::fast());
            enc.write_all(bytes).expect("gzip");
            enc.finish().expect("gzip")
        } else {
            bytes.to_vec()
        };
        std::fs::write(path, bytes).expect("write idx");
    }

    /// A tiny MNIST-style folder: `n` train and 2 test images of 3×2, pixel = item index.
    fn write_set(dir: &Path, n: u8, gzip: bool) {
        for (prefix, count) in [("train", n), ("t10k", 2)] {
            let pixels: Vec<u8> = (0..count).flat_map(|i| [i; 6]).collect();
            let ext = if gzip { ".gz" } else { "" };
            let images = idx_bytes(&[count.into(), 3, 2], &pixels);
            let labels = idx_bytes(&[count.into()], &(0..count).map(|i| i % 10).collect::<Vec<_>>());
            write(&dir.join(format!("{prefix}-images-idx3-ubyte{ext}")), &images, gzip);
            write(&dir.join(format!("{prefix}-labels-idx1-ubyte{ext}")), &labels, gzip);
        }
    }

    #[test]
    fn reads_plain_and_gzipped_files() {
        for gzip in [false, true] {
            let dir = tempfile::tempdir().expect("tempdir");
            write_set(dir.path(), 12, gzip);
            let (train, test) = load_fashion_mnist(dir.path()).expect("load");
            assert_eq!((train.len(), test.len()), (12, 2));
            assert_eq!((train.channels, train.height, train.width), (1, 3, 2));
            assert_eq!(train.image(11), &[11; 6]);
            assert_eq!(train.label(11), 1);
            assert_eq!(train.classes[9], "Ankle boot");
        }
    }

    #[test]
    fn trailing_bytes_are_ignored() {
        let bytes = idx_bytes(&[2], &[1, 2, 3]);
        let arr = parse_idx(Path::new("x"), &bytes, 1).expect("parse");
        assert_eq!(arr, IdxArray { dims: vec![2], data: vec![1, 2] });
    }

    #[test]
    fn bad_magic_is_named() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("labels");
        write(&path, &idx_bytes(&[2, 2], &[0; 4]), false);
        let msg = read_idx(&path, 1).expect_err("2-d file read as 1-d").to_string();
        assert!(msg.contains("bad idx magic number 0x00000802, expected 0x00000801"), "{msg}");
        assert!(msg.contains(&path.display().to_string()), "{msg}");
        let msg = parse_idx(Path::new("f"), b"PK\x03\x04rest", 1).expect_err("zip").to_string();
        assert!(msg.contains("bad idx magic number 0x504b0304"), "{msg}");
    }

    #[test]
    fn truncated_files_are_reported_with_sizes() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("images.gz");
        let mut bytes = idx_bytes(&[4, 2, 2], &[7; 16]);
        bytes.truncate(20);
        write(&path, &bytes, true);
        let msg = read_idx(&path, 3).expect_err("truncated").to_string();
        assert!(msg.contains("idx file truncated: header promises 32 bytes, found 20"), "{msg}");
        let msg = parse_idx(Path::new("f"), &[0, 0, 8, 3, 0], 3).expect_err("short").to_string();
        assert!(msg.contains("header promises 16 bytes, found 5"), "{msg}");
        let msg = parse_idx(Path::new("f"), &[0, 0], 1).expect_err("tiny").to_string();
        assert!(msg.contains("truncated"), "{msg}");
        // A corrupt gzip stream is an i/o error naming the file.
        let gz = dir.path().join("bad.gz");
        std::fs::write(&gz, [0x1f, 0x8b, 8, 0, 1, 2]).expect("write");
        let msg = read_idx(&gz, 1).expect_err("corrupt gzip").to_string();
        assert!(msg.starts_with(&format!("cannot read {}", gz.display())), "{msg}");
    }

    #[test]
    fn gzip_inflates_only_what_the_header_promises() {
        let dir = tempfile::tempdir().expect("tempdir");
        // 64 MiB of zeros behind a header promising 4 bytes: a 64 KiB file that would inflate to
        // 64 MiB is read as its 4 promised bytes (the rest is never inflated).
        let path = dir.path().join("bomb.gz");
        let mut bytes = idx_bytes(&[2, 2], &[9; 4]);
        bytes.resize(bytes.len() + (64 << 20), 0);
        write(&path, &bytes, true);
        assert!(std::fs::metadata(&path).unwrap().len() < 1 << 20);
        let arr = read_idx(&path, 2).expect("read");
        assert_eq!(arr, IdxArray { dims: vec![2, 2], data: vec![9; 4] });
        assert!(arr.data.capacity() < 1 << 20, "allocated {} bytes", arr.data.capacity());
        // a header promising 8 GiB is refused before anything is allocated
        let path = dir.path().join("huge.gz");
        write(&path, &idx_bytes(&[65_536, 65_536, 2], &[0; 16]), true);
        let msg = read_idx(&path, 3).expect_err("8 GiB").to_string();
        assert!(msg.contains("promises 8589934592 bytes") && msg.contains("corrupt"), "{msg}");
    }

    #[test]
    fn missing_files_and_mismatched_counts_are_errors() {
        let dir = tempfile::tempdir().expect("tempdir");
        let msg = load_fashion_mnist(dir.path()).expect_err("empty dir").to_string();
        assert!(msg.contains("cannot find train-images-idx3-ubyte or"), "{msg}");
        write_set(dir.path(), 3, false);
        let labels = idx_bytes(&[2], &[0, 1]);
        write(&dir.path().join("train-labels-idx1-ubyte"), &labels, false);
        let msg = load_fashion_mnist(dir.path()).expect_err("3 vs 2").to_string();
        assert!(msg.contains("holds 3 images but") && msg.contains("holds 2 labels"), "{msg}");
        let labels = idx_bytes(&[3], &[0, 1, 10]);
        write(&dir.path().join("train-labels-idx1-ubyte"), &labels, false);
        let msg = load_fashion_mnist(dir.path()).expect_err("label 10").to_string();
        assert!(msg.contains("label 10 of item 2 is outside 0..10"), "{msg}");
    }

    #[test]
    fn loads_the_installed_fashion_mnist() {
        let dir = Path::new("/usr/share/datasets/fashion-mnist");
        if !dir.is_dir() {
            eprintln!("skipping: {} not installed (Debian dataset-fashion-mnist)", dir.display());
            return;
        }
        let (train, test) = load_fashion_mnist(dir).expect("load fashion-mnist");
        assert_eq!((train.len(), test.len()), (60_000, 10_000));
        assert_eq!((train.channels, train.height, train.width), (1, 28, 28));
        assert_eq!((train.num_classes(), test.num_classes()), (10, 10));
        assert!(train.labels.iter().all(|&l| (0..10).contains(&l)));
        // Published statistics of the training set: mean 0.2860, std 0.3530.
        let (mean, std) = train.channel_stats();
        assert!((mean[0] - 0.286).abs() < 0.01 && (std[0] - 0.353).abs() < 0.01, "{mean:?} {std:?}");
    }
}
