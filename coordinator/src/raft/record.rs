//! The on-disk record framing shared by the raft files: `[len: u32 LE][crc32: u32 LE][payload]`.
//!
//! A record whose header or payload is cut short, or whose checksum does not match, ends the
//! readable part of a file: [`read_records`] returns every record before it and the byte offset
//! where the good prefix ends, so recovery can drop a torn tail instead of panicking.

use std::fs::{self, File, OpenOptions};
use std::io::{self, Write};
use std::path::Path;

/// Bytes of framing before each payload.
pub const HEADER_LEN: usize = 8;

/// Largest payload accepted when reading (a corrupt length must not allocate gigabytes).
pub const MAX_PAYLOAD: usize = 1 << 30;

/// CRC-32 (IEEE 802.3, reflected, as zlib and gzip), table-driven.
pub fn crc32(bytes: &[u8]) -> u32 {
    const TABLE: [u32; 256] = {
        let mut table = [0u32; 256];
        let mut i = 0;
        while i < 256 {
            let mut c = i as u32;
            let mut k = 0;
            while k < 8 {
                c = if c & 1 != 0 { 0xEDB8_8320 ^ (c >> 1) } else { c >> 1 };
                k += 1;
            }
            table[i] = c;
            i += 1;
        }
        table
    };
    let mut crc = !0u32;
    for &b in bytes {
        crc = TABLE[((crc ^ b as u32) & 0xFF) as usize] ^ (crc >> 8);
    }
    !crc
}

/// Append one framed record to `out`.
pub fn encode(payload: &[u8], out: &mut Vec<u8>) {
    out.extend_from_slice(&(payload.len() as u32).to_le_bytes());
    out.extend_from_slice(&crc32(payload).to_le_bytes());
    out.extend_from_slice(payload);
}

/// A record read back: its payload and the file offset where its header starts.
pub struct Record<'a> {
    pub offset: u64,
    pub payload: &'a [u8],
}

/// Every intact record of `bytes`, in order, and the length of the intact prefix. Anything after
/// that prefix (a torn or corrupt record and whatever follows it) is not returned.
pub fn read_records(bytes: &[u8]) -> (Vec<Record<'_>>, u64) {
    let mut records = Vec::new();
    let mut pos = 0usize;
    while bytes.len() - pos >= HEADER_LEN {
        let len = u32::from_le_bytes(bytes[pos..pos + 4].try_into().expect("4 bytes")) as usize;
        let crc = u32::from_le_bytes(bytes[pos + 4..pos + 8].try_into().expect("4 bytes"));
        let start = pos + HEADER_LEN;
        if len > MAX_PAYLOAD || bytes.len() - start < len {
            break;
        }
        let payload = &bytes[start..start + len];
        if crc32(payload) != crc {
            break;
        }
        records.push(Record { offset: pos as u64, payload });
        pos = start + len;
    }
    (records, pos as u64)
}

/// Replace `path` atomically with one record holding `payload`: write `path.tmp`, fsync it,
/// rename it over `path`, fsync the directory. A crash leaves either the old or the new file.
pub fn write_atomic(path: &Path, payload: &[u8]) -> io::Result<()> {
    let tmp = path.with_extension("tmp");
    let mut bytes = Vec::with_capacity(payload.len() + HEADER_LEN);
    encode(payload, &mut bytes);
    {
        let mut f = OpenOptions::new().write(true).create(true).truncate(true).open(&tmp)?;
        f.write_all(&bytes)?;
        f.sync_all()?;
    }
    fs::rename(&tmp, path)?;
    sync_dir(path.parent().unwrap_or(Path::new(".")))
}

/// Read a file written by [`write_atomic`]: `Ok(None)` when absent, an error when corrupt.
pub fn read_single(path: &Path) -> io::Result<Option<Vec<u8>>> {
    let bytes = match fs::read(path) {
        Ok(b) => b,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(e),
    };
    let (records, _) = read_records(&bytes);
    match records.as_slice() {
        [one] => Ok(Some(one.payload.to_vec())),
        _ => Err(io::Error::new(
            io::ErrorKind::InvalidData,
            format!("{} is corrupt (bad length or checksum)", path.display()),
        )),
    }
}

/// fsync a directory so that renames and file creations in it are durable.
pub fn sync_dir(dir: &Path) -> io::Result<()> {
    File::open(dir)?.sync_all()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn crc32_matches_the_standard_check_value() {
        assert_eq!(crc32(b"123456789"), 0xCBF4_3926);
        assert_eq!(crc32(b""), 0);
    }

    #[test]
    fn a_torn_or_corrupt_tail_ends_the_readable_prefix() {
        let mut bytes = Vec::new();
        encode(b"first", &mut bytes);
        encode(b"second", &mut bytes);
        let good = bytes.len() as u64;
        let (records, end) = read_records(&bytes);
        assert_eq!(records.len(), 2);
        assert_eq!(records[1].payload, b"second");
        assert_eq!(end, good);

        // a record cut in the middle of its payload
        let mut torn = bytes.clone();
        encode(b"third record", &mut torn);
        torn.truncate(torn.len() - 3);
        let (records, end) = read_records(&torn);
        assert_eq!((records.len(), end), (2, good));

        // a flipped bit in the last payload
        let mut flipped = bytes.clone();
        *flipped.last_mut().unwrap() ^= 1;
        let (records, end) = read_records(&flipped);
        assert_eq!(records.len(), 1);
        assert_eq!(end, records[0].payload.len() as u64 + HEADER_LEN as u64);

        // half a header
        let mut half = bytes.clone();
        half.extend_from_slice(&[7, 0, 0]);
        assert_eq!(read_records(&half).1, good);
    }

    #[test]
    fn atomic_files_round_trip_and_corruption_is_an_error() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("state");
        assert_eq!(read_single(&path).unwrap(), None);
        write_atomic(&path, b"v1").unwrap();
        write_atomic(&path, b"v2").unwrap();
        assert_eq!(read_single(&path).unwrap().as_deref(), Some(&b"v2"[..]));
        let mut bytes = fs::read(&path).unwrap();
        bytes[HEADER_LEN] ^= 0xFF;
        fs::write(&path, bytes).unwrap();
        let err = read_single(&path).unwrap_err().to_string();
        assert!(err.contains("corrupt"), "{err}");
    }
}
