//! Property tests over the files a job or a store hands the worker (issue 14's harness, run by
//! `make test` for a bounded number of cases): idx files (plain and gzipped; right and wrong
//! magic, any dimensions, short, long or bomb-sized promises) and safetensors blobs (raw bytes,
//! and well-formed headers with any dtype, shape and offsets). Each gives a value or an error,
//! never a panic, and what is accepted is what the header says.

use std::io::Write;

use cyclotron_worker::data::idx::read_idx;
use cyclotron_worker::tensor_io::from_safetensors;
use proptest::prelude::*;

fn gzip(bytes: &[u8]) -> Vec<u8> {
    let mut e = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
    e.write_all(bytes).unwrap();
    e.finish().unwrap()
}

fn dim() -> impl Strategy<Value = u32> {
    prop_oneof![4 => 0u32..12, 1 => any::<u32>(), 1 => Just(u32::MAX), 1 => Just(1 << 16)]
}

const DTYPES: &[(&str, u64)] = &[
    ("F32", 4),
    ("F16", 2),
    ("BF16", 2),
    ("F64", 8),
    ("I64", 8),
    ("I32", 4),
    ("I16", 2),
    ("I8", 1),
    ("U8", 1),
    ("BOOL", 1),
    ("X", 1),
    ("", 1),
];

proptest! {
    #![proptest_config(ProptestConfig { cases: 256, failure_persistence: None, ..ProptestConfig::default() })]

    #[test]
    fn idx_files_read_as_their_header_says_or_are_refused(
        ndims in 1u8..=4,
        wanted in 1u8..=4,
        right_magic in prop::bool::weighted(0.8),
        magic in any::<u32>(),
        dims in prop::collection::vec(dim(), 0..5),
        payload in prop::collection::vec(any::<u8>(), 0..1500),
        cut in any::<usize>(),
        gzipped in any::<bool>(),
    ) {
        let mut bytes = if right_magic { (0x0800u32 | u32::from(ndims)).to_be_bytes().to_vec() } else { magic.to_be_bytes().to_vec() };
        for d in dims.iter().take(usize::from(ndims)) {
            bytes.extend_from_slice(&d.to_be_bytes());
        }
        bytes.extend_from_slice(&payload);
        let keep = if cut % 4 == 0 { bytes.len() } else { cut % (bytes.len() + 1) };
        bytes.truncate(keep);
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("f-idx3-ubyte");
        std::fs::write(&path, if gzipped { gzip(&bytes) } else { bytes.clone() }).unwrap();
        match read_idx(&path, wanted) {
            Ok(a) => {
                prop_assert_eq!(a.dims.len(), usize::from(wanted));
                prop_assert_eq!(a.data.len() as u64, a.dims.iter().map(|&d| d as u64).product::<u64>());
                prop_assert_eq!(&a.data[..], &bytes[4 + 4 * usize::from(wanted)..][..a.data.len()]);
            }
            Err(e) => prop_assert!(e.to_string().contains("f-idx3-ubyte"), "the error names the file: {e}"),
        }
    }

    #[test]
    fn a_small_gzip_promising_up_to_4_gib_is_refused(d0 in 1u32..=65_536, d1 in 1u32..=65_536) {
        // a header promising up to 4 GiB and 100 bytes of data: refused as truncated (the reader
        // reserves at most what the compressed bytes can inflate to, not what the header promises)
        let mut bytes = 0x0000_0802u32.to_be_bytes().to_vec();
        bytes.extend_from_slice(&d0.to_be_bytes());
        bytes.extend_from_slice(&d1.to_be_bytes());
        bytes.extend_from_slice(&[7u8; 100]);
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("bomb.gz");
        std::fs::write(&path, gzip(&bytes)).unwrap();
        let r = read_idx(&path, 2);
        if u64::from(d0) * u64::from(d1) > 100 {
            prop_assert!(r.is_err());
        } else {
            prop_assert!(r.is_ok());
        }
    }

    #[test]
    fn arbitrary_bytes_are_no_safetensors_and_no_panic(bytes in prop::collection::vec(any::<u8>(), 0..600)) {
        let _ = from_safetensors(&bytes, "fuzz");
    }

    #[test]
    fn safetensors_headers_of_any_dtype_shape_and_offsets(
        dtype in 0usize..DTYPES.len(),
        shape in prop::collection::vec(prop_oneof![4 => 0u64..6, 1 => any::<u64>()], 0..4),
        start in prop_oneof![3 => Just(0u64), 1 => any::<u64>()],
        len in prop_oneof![3 => 0u64..200, 1 => any::<u64>()],
        data in prop::collection::vec(any::<u8>(), 0..200),
        pad in 0usize..9,
        fit in any::<bool>(),
    ) {
        // half the cases: offsets and data exactly as long as dtype and shape need
        let (name, size) = DTYPES[dtype];
        let need = shape.iter().try_fold(size, |acc, &d| acc.checked_mul(d)).filter(|&n| n <= 4096);
        let (start, len, data) = match need {
            Some(n) if fit => (0, n, vec![1u8; n as usize]),
            _ => (start, len, data),
        };
        let header = serde_json::json!({
            "w": {"dtype": name, "shape": shape, "data_offsets": [start, start.wrapping_add(len)]}
        })
        .to_string();
        let header = format!("{header}{}", " ".repeat(pad));
        let mut bytes = (header.len() as u64).to_le_bytes().to_vec();
        bytes.extend_from_slice(header.as_bytes());
        bytes.extend_from_slice(&data);
        let read = from_safetensors(&bytes, "fuzz");
        let representable = shape
            .iter()
            .filter(|&&d| d != 0)
            .try_fold(1i64, |acc, &d| acc.checked_mul(i64::try_from(d).ok()?))
            .is_some();
        // a shape whose strides pass i64 is refused (by safetensors' own checks or before libtorch
        // sees it, which would throw with a backtrace)
        prop_assert!(representable || read.is_err(), "{shape:?} accepted");
        if fit && need.is_some() && representable && !name.is_empty() && name != "X" {
            prop_assert!(read.is_ok(), "a well-formed {name} {shape:?} blob is read: {:?}", read.err());
        }
        if let Ok(tensors) = read {
            prop_assert_eq!(tensors.len(), 1);
            let want: Vec<i64> = shape.iter().map(|&d| d as i64).collect();
            prop_assert_eq!(tensors[0].1.size(), want);
        }
    }
}
