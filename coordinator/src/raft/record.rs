//! The on-disk record framing shared by the raft files: `[len: u32 LE][crc32: u32 LE][payload]`.
//!
//! A record whose header or payload is cut short, or whose checksum does not match, ends the
//! readable part of a file: [`read_records`] returns every record before it and the byte offset
//! where the good prefix ends. [`classify_tail`] then tells a torn tail (a crash in the middle of
//! the last append: drop it) from corruption (a bad record with intact records after it: the
//! disk or someone changed committed data, and dropping everything after it would silently lose
//! committed entries, so recovery refuses to start and names the file and offset).

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

/// What follows the intact prefix of a file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Tail {
    /// Nothing: the file ends with its last intact record.
    Clean,
    /// The last record was cut short or half-written: safe to drop (it was never acknowledged).
    Torn,
    /// A bad record at `offset` with an intact record after it.
    Corrupt { offset: u64, reason: String },
}

/// Classify the bytes of `bytes` after its intact prefix `[..end]` (as [`read_records`] found it).
/// A torn write can only damage the last record, so any intact record after the bad one (found
/// by trying every later offset) means corruption.
pub fn classify_tail(bytes: &[u8], end: u64) -> Tail {
    let pos = end as usize;
    if pos >= bytes.len() {
        return Tail::Clean;
    }
    let rest = &bytes[pos..];
    let declared = rest.get(..4).map(|b| u32::from_le_bytes([b[0], b[1], b[2], b[3]]) as usize);
    // the bad record's own extent, when its header is whole and within the file
    let own_end = match declared {
        Some(len) if rest.len() >= HEADER_LEN && len <= MAX_PAYLOAD && HEADER_LEN + len <= rest.len() => {
            Some(HEADER_LEN + len)
        }
        _ => None,
    };
    // an intact record starting anywhere after the bad one's header
    let later = (1..rest.len()).find(|&at| intact_at(&rest[at..]));
    match (later, own_end) {
        (Some(at), _) => Tail::Corrupt {
            offset: end,
            reason: format!(
                "the record at byte {end} fails its checksum (or length) but an intact record follows at byte {}",
                end + at as u64
            ),
        },
        // a whole record with a bad checksum and bytes after it that are not a record
        (None, Some(n)) if n < rest.len() => Tail::Corrupt {
            offset: end,
            reason: format!(
                "the record at byte {end} fails its checksum and {} more bytes follow it",
                rest.len() - n
            ),
        },
        _ => Tail::Torn,
    }
}

/// Whether `bytes` begins with a whole record whose checksum matches.
fn intact_at(bytes: &[u8]) -> bool {
    if bytes.len() < HEADER_LEN {
        return false;
    }
    let len = u32::from_le_bytes([bytes[0], bytes[1], bytes[2], bytes[3]]) as usize;
    let crc = u32::from_le_bytes([bytes[4], bytes[5], bytes[6], bytes[7]]);
    // an empty payload checks trivially (crc 0 over nothing): too weak to count as evidence
    len > 0
        && len <= MAX_PAYLOAD
        && bytes.len() - HEADER_LEN >= len
        && crc32(&bytes[HEADER_LEN..HEADER_LEN + len]) == crc
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
    fn a_bad_record_before_the_last_is_corruption_and_a_torn_last_one_is_not() {
        let mut bytes = Vec::new();
        for p in [&b"first entry"[..], b"second entry", b"third entry"] {
            encode(p, &mut bytes);
        }
        let first_len = (HEADER_LEN + 11) as u64;
        // a flipped byte in the second record's payload: the third is intact after it
        let mut flipped = bytes.clone();
        flipped[first_len as usize + HEADER_LEN + 3] ^= 0x40;
        let (records, end) = read_records(&flipped);
        assert_eq!((records.len(), end), (1, first_len));
        match classify_tail(&flipped, end) {
            Tail::Corrupt { offset, reason } => {
                assert_eq!(offset, first_len);
                assert!(reason.contains("intact record follows"), "{reason}");
            }
            other => panic!("{other:?}"),
        }
        // a flipped bit in the second record's length field: still found
        let mut len_flip = bytes.clone();
        len_flip[first_len as usize + 1] ^= 0x01;
        let (_, end) = read_records(&len_flip);
        assert!(matches!(classify_tail(&len_flip, end), Tail::Corrupt { .. }));
        // the last record cut short, or its payload garbled: torn, safe to drop
        let (_, end) = read_records(&bytes[..bytes.len() - 4]);
        assert_eq!(classify_tail(&bytes[..bytes.len() - 4], end), Tail::Torn);
        let mut last = bytes.clone();
        let n = last.len();
        last[n - 2] ^= 0xff;
        let (_, end) = read_records(&last);
        assert_eq!(classify_tail(&last, end), Tail::Torn);
        assert_eq!(classify_tail(&bytes, bytes.len() as u64), Tail::Clean);
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
