//! [`DiskStorage`]: raft-rs' `Storage` on three files in the data directory, with every entry
//! also cached in memory (the log is compacted every `snapshot_every` entries, so it stays small).
//!
//! - `raft-log`: append-only framed records (see [`super::record`]), one `eraftpb::Entry` each,
//!   contiguous indexes from `snapshot.index + 1`. Appending entries that conflict with the tail
//!   truncates the file at the first replaced entry first. Every append ends with `fdatasync`.
//! - `raft-state`: one record holding `HardState` and `ConfState`, replaced atomically
//!   (tmp + fsync + rename + directory fsync). Written whenever term, vote or membership change
//!   (before any message that depends on them leaves), and with the commit index at compactions
//!   and shutdown; the commit index is not required to be durable (raft re-learns it).
//! - `raft-snapshot`: one record holding the latest `eraftpb::Snapshot` (metadata and the
//!   `ClusterState` bytes), replaced atomically.
//!
//! Recovery drops a torn tail of `raft-log` (a crash mid-append damages only the last record,
//! and that append was never acknowledged), drops entries already covered by the snapshot, and
//! drops the whole log when it does not continue the snapshot (a crash between installing a
//! received snapshot and clearing the old log). A bad record with intact records after it is
//! corruption, not a torn write: recovery refuses to start, naming the file and the offset,
//! instead of truncating committed entries away.

use std::fs::{self, File, OpenOptions};
use std::io::{self, Write};
use std::path::{Path, PathBuf};

use ::raft::eraftpb::{ConfState, Entry, HardState, Snapshot};
use ::raft::{GetEntriesContext, RaftState, Storage, StorageError};
use protobuf::Message as _;

use super::record;
use super::RaftError;

const LOG_FILE: &str = "raft-log";
const STATE_FILE: &str = "raft-state";
const SNAPSHOT_FILE: &str = "raft-snapshot";

/// What recovery found, for logs and tests.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Recovered {
    /// Entries kept in the log.
    pub entries: usize,
    /// Bytes dropped from the end of `raft-log` (a torn or corrupt tail).
    pub torn_bytes: u64,
    /// Index of the snapshot found (0 when none).
    pub snapshot_index: u64,
}

pub struct DiskStorage {
    dir: PathBuf,
    log: File,
    /// `entries[i].index == first_index() + i`.
    entries: Vec<Entry>,
    /// File offset of each entry's record in `raft-log`, parallel to `entries`.
    offsets: Vec<u64>,
    hard_state: HardState,
    conf_state: ConfState,
    /// The latest snapshot; `Snapshot::default()` (index 0) when there is none.
    snapshot: Snapshot,
}

fn io_err(path: &Path, what: &str) -> impl FnOnce(io::Error) -> RaftError {
    let path = path.to_path_buf();
    let what = what.to_string();
    move |source| RaftError::Storage { path, what, source }
}

fn corrupt(path: &Path, reason: impl Into<String>) -> RaftError {
    RaftError::Corrupt { path: path.to_path_buf(), reason: reason.into() }
}

impl DiskStorage {
    /// Open (or create) the storage in `dir`. A fresh directory starts with `voters` as the
    /// membership; an existing one keeps what it recorded.
    pub fn open(dir: &Path, voters: &[u64]) -> Result<(DiskStorage, Recovered), RaftError> {
        fs::create_dir_all(dir).map_err(io_err(dir, "create the raft data directory"))?;
        let mut recovered = Recovered::default();

        let snap_path = dir.join(SNAPSHOT_FILE);
        let snapshot = match read_single(&snap_path)? {
            Some(bytes) => Snapshot::parse_from_bytes(&bytes)
                .map_err(|e| corrupt(&snap_path, format!("bad snapshot: {e}")))?,
            None => Snapshot::default(),
        };
        let snap_index = snapshot.get_metadata().index;
        let snap_term = snapshot.get_metadata().term;
        recovered.snapshot_index = snap_index;

        let state_path = dir.join(STATE_FILE);
        let (mut hard_state, conf_state, fresh) = match read_single(&state_path)? {
            Some(bytes) => {
                let (hs, cs) = decode_state(&bytes).map_err(|r| corrupt(&state_path, r))?;
                (hs, cs, false)
            }
            None if snap_index > 0 => {
                (HardState::default(), snapshot.get_metadata().get_conf_state().clone(), false)
            }
            None => {
                let cs = ConfState { voters: voters.to_vec(), ..Default::default() };
                (HardState::default(), cs, true)
            }
        };

        let log_path = dir.join(LOG_FILE);
        let bytes = match fs::read(&log_path) {
            Ok(b) => b,
            Err(e) if e.kind() == io::ErrorKind::NotFound => Vec::new(),
            Err(e) => return Err(io_err(&log_path, "read")(e)),
        };
        let (records, good_len) = record::read_records(&bytes);
        if let record::Tail::Corrupt { reason, .. } = record::classify_tail(&bytes, good_len) {
            return Err(corrupt(
                &log_path,
                format!(
                    "{reason}; this is not a torn last write, and truncating would lose committed entries"
                ),
            ));
        }
        recovered.torn_bytes = bytes.len() as u64 - good_len;
        let mut entries = Vec::with_capacity(records.len());
        let mut offsets = Vec::with_capacity(records.len());
        for r in &records {
            let e = Entry::parse_from_bytes(r.payload).map_err(|e| {
                corrupt(&log_path, format!("record at byte {} is not an entry: {e}", r.offset))
            })?;
            if let Some(prev) = entries.last().map(|p: &Entry| p.index) {
                if e.index != prev + 1 {
                    return Err(corrupt(
                        &log_path,
                        format!("entry {} follows entry {prev}; the log must be contiguous", e.index),
                    ));
                }
            }
            entries.push(e);
            offsets.push(r.offset);
        }
        // Keep only entries that continue the snapshot.
        let continues = match entries.first().map(|e| e.index) {
            None => true,
            Some(first) if first > snap_index + 1 => false,
            Some(first) if first == snap_index + 1 => true,
            Some(first) => match entries.get((snap_index - first) as usize) {
                Some(at_snap) => at_snap.term == snap_term,
                None => false, // the log ends before the snapshot: all of it is stale
            },
        };
        let keep_from = if continues {
            entries.iter().position(|e| e.index > snap_index).unwrap_or(entries.len())
        } else {
            entries.len()
        };
        let rewrite = keep_from > 0 || recovered.torn_bytes > 0;
        entries.drain(..keep_from);
        offsets.drain(..keep_from);
        recovered.entries = entries.len();

        let last_index = entries.last().map_or(snap_index, |e| e.index);
        hard_state.commit = hard_state.commit.max(snap_index).min(last_index);
        hard_state.term = hard_state.term.max(snap_term);

        let log = OpenOptions::new()
            .create(true)
            .append(true)
            .open(&log_path)
            .map_err(io_err(&log_path, "open"))?;
        let mut storage =
            DiskStorage { dir: dir.to_path_buf(), log, entries, offsets, hard_state, conf_state, snapshot };
        if rewrite {
            storage.rewrite_log()?;
        }
        if fresh {
            storage.persist_state()?;
        }
        Ok((storage, recovered))
    }

    pub fn hard_state(&self) -> &HardState {
        &self.hard_state
    }

    pub fn conf_state(&self) -> &ConfState {
        &self.conf_state
    }

    pub fn snapshot_index(&self) -> u64 {
        self.snapshot.get_metadata().index
    }

    /// The data of the latest snapshot (empty when there is none).
    pub fn snapshot_data(&self) -> &[u8] {
        &self.snapshot.data
    }

    fn first(&self) -> u64 {
        self.snapshot_index() + 1
    }

    fn last(&self) -> u64 {
        self.entries.last().map_or(self.snapshot_index(), |e| e.index)
    }

    /// Persist `ents` (fsync'd when this returns), replacing any conflicting suffix.
    pub fn append(&mut self, ents: &[Entry]) -> Result<(), RaftError> {
        let Some(head) = ents.first() else { return Ok(()) };
        let path = self.dir.join(LOG_FILE);
        if head.index < self.first() {
            return Err(corrupt(
                &path,
                format!("append at {} overwrites compacted entries (first is {})", head.index, self.first()),
            ));
        }
        if head.index > self.last() + 1 {
            return Err(corrupt(
                &path,
                format!("append at {} leaves a gap after {}", head.index, self.last()),
            ));
        }
        if head.index <= self.last() {
            let keep = (head.index - self.first()) as usize;
            let cut = self.offsets[keep];
            self.log.set_len(cut).map_err(io_err(&path, "truncate conflicting entries of"))?;
            self.entries.truncate(keep);
            self.offsets.truncate(keep);
        }
        let mut offset = self.log.metadata().map_err(io_err(&path, "stat"))?.len();
        let mut buf = Vec::new();
        for e in ents {
            let payload = e.write_to_bytes().map_err(|err| corrupt(&path, format!("encode entry: {err}")))?;
            self.offsets.push(offset);
            let before = buf.len();
            record::encode(&payload, &mut buf);
            offset += (buf.len() - before) as u64;
            self.entries.push(e.clone());
        }
        self.log.write_all(&buf).map_err(io_err(&path, "append to"))?;
        self.log.sync_data().map_err(io_err(&path, "fsync"))?;
        Ok(())
    }

    /// Record a new hard state; written durably when `durable` (term or vote changed).
    pub fn set_hard_state(&mut self, hs: HardState, durable: bool) -> Result<(), RaftError> {
        self.hard_state = hs;
        if durable {
            self.persist_state()?;
        }
        Ok(())
    }

    /// Record the commit index in memory (written with the next durable state write).
    pub fn set_commit(&mut self, commit: u64) {
        self.hard_state.commit = commit;
    }

    pub fn set_conf_state(&mut self, cs: ConfState) -> Result<(), RaftError> {
        self.conf_state = cs;
        self.persist_state()
    }

    /// Write `raft-state` (hard state and conf state) atomically.
    pub fn persist_state(&mut self) -> Result<(), RaftError> {
        let path = self.dir.join(STATE_FILE);
        let payload = encode_state(&self.hard_state, &self.conf_state)
            .map_err(|e| corrupt(&path, format!("encode state: {e}")))?;
        record::write_atomic(&path, &payload).map_err(io_err(&path, "write"))
    }

    /// Install a snapshot received from the leader: it replaces the whole log.
    pub fn apply_snapshot(&mut self, snap: Snapshot) -> Result<(), RaftError> {
        let meta = snap.get_metadata();
        if meta.index < self.snapshot_index() {
            return Err(corrupt(
                &self.dir.join(SNAPSHOT_FILE),
                format!("snapshot at {} is older than the one held ({})", meta.index, self.snapshot_index()),
            ));
        }
        self.hard_state.commit = self.hard_state.commit.max(meta.index);
        self.hard_state.term = self.hard_state.term.max(meta.term);
        self.conf_state = meta.get_conf_state().clone();
        self.write_snapshot(snap)?;
        self.entries.clear();
        self.offsets.clear();
        self.rewrite_log()?;
        self.persist_state()
    }

    /// Compact the log: `snap` (taken locally at an applied index) replaces every entry up to its
    /// index.
    pub fn compact(&mut self, snap: Snapshot) -> Result<(), RaftError> {
        let index = snap.get_metadata().index;
        if index <= self.snapshot_index() {
            return Ok(());
        }
        if index > self.last() {
            return Err(corrupt(
                &self.dir.join(LOG_FILE),
                format!("compaction at {index} beyond the last entry {}", self.last()),
            ));
        }
        let drop = (index + 1 - self.first()) as usize;
        self.write_snapshot(snap)?;
        self.entries.drain(..drop);
        self.offsets.drain(..drop);
        self.rewrite_log()?;
        self.persist_state()
    }

    fn write_snapshot(&mut self, snap: Snapshot) -> Result<(), RaftError> {
        let path = self.dir.join(SNAPSHOT_FILE);
        let payload = snap.write_to_bytes().map_err(|e| corrupt(&path, format!("encode snapshot: {e}")))?;
        record::write_atomic(&path, &payload).map_err(io_err(&path, "write"))?;
        self.snapshot = snap;
        Ok(())
    }

    /// Rewrite `raft-log` with exactly the cached entries (tmp + fsync + rename).
    fn rewrite_log(&mut self) -> Result<(), RaftError> {
        let path = self.dir.join(LOG_FILE);
        let tmp = path.with_extension("tmp");
        let mut buf = Vec::new();
        self.offsets.clear();
        for e in &self.entries {
            let payload = e.write_to_bytes().map_err(|err| corrupt(&path, format!("encode entry: {err}")))?;
            self.offsets.push(buf.len() as u64);
            record::encode(&payload, &mut buf);
        }
        let write = || -> io::Result<File> {
            let mut f = OpenOptions::new().write(true).create(true).truncate(true).open(&tmp)?;
            f.write_all(&buf)?;
            f.sync_all()?;
            drop(f);
            fs::rename(&tmp, &path)?;
            record::sync_dir(&self.dir)?;
            OpenOptions::new().append(true).open(&path)
        };
        self.log = write().map_err(io_err(&path, "rewrite"))?;
        Ok(())
    }
}

fn read_single(path: &Path) -> Result<Option<Vec<u8>>, RaftError> {
    record::read_single(path).map_err(|e| match e.kind() {
        io::ErrorKind::InvalidData => corrupt(path, "bad length or checksum"),
        _ => io_err(path, "read")(e),
    })
}

fn encode_state(hs: &HardState, cs: &ConfState) -> protobuf::ProtobufResult<Vec<u8>> {
    let hs = hs.write_to_bytes()?;
    let cs = cs.write_to_bytes()?;
    let mut out = Vec::with_capacity(8 + hs.len() + cs.len());
    out.extend_from_slice(&(hs.len() as u32).to_le_bytes());
    out.extend_from_slice(&hs);
    out.extend_from_slice(&(cs.len() as u32).to_le_bytes());
    out.extend_from_slice(&cs);
    Ok(out)
}

fn decode_state(bytes: &[u8]) -> Result<(HardState, ConfState), String> {
    let take = |b: &[u8]| -> Result<(Vec<u8>, usize), String> {
        let len = b.get(..4).ok_or("truncated state")?;
        let len = u32::from_le_bytes(len.try_into().expect("4 bytes")) as usize;
        let body = b.get(4..4 + len).ok_or("truncated state")?;
        Ok((body.to_vec(), 4 + len))
    };
    let (hs, used) = take(bytes)?;
    let (cs, _) = take(&bytes[used..])?;
    let hs = HardState::parse_from_bytes(&hs).map_err(|e| format!("bad hard state: {e}"))?;
    let cs = ConfState::parse_from_bytes(&cs).map_err(|e| format!("bad conf state: {e}"))?;
    Ok((hs, cs))
}

impl Storage for DiskStorage {
    fn initial_state(&self) -> ::raft::Result<RaftState> {
        Ok(RaftState::new(self.hard_state.clone(), self.conf_state.clone()))
    }

    fn entries(
        &self,
        low: u64,
        high: u64,
        max_size: impl Into<Option<u64>>,
        _context: GetEntriesContext,
    ) -> ::raft::Result<Vec<Entry>> {
        if low < self.first() {
            return Err(StorageError::Compacted.into());
        }
        if high > self.last() + 1 {
            return Err(StorageError::Unavailable.into());
        }
        let lo = (low - self.first()) as usize;
        let hi = (high - self.first()) as usize;
        let mut ents = self.entries[lo..hi].to_vec();
        ::raft::util::limit_size(&mut ents, max_size.into());
        Ok(ents)
    }

    fn term(&self, idx: u64) -> ::raft::Result<u64> {
        if idx == self.snapshot_index() {
            return Ok(self.snapshot.get_metadata().term);
        }
        if idx < self.first() {
            return Err(StorageError::Compacted.into());
        }
        if idx > self.last() {
            return Err(StorageError::Unavailable.into());
        }
        Ok(self.entries[(idx - self.first()) as usize].term)
    }

    fn first_index(&self) -> ::raft::Result<u64> {
        Ok(self.first())
    }

    fn last_index(&self) -> ::raft::Result<u64> {
        Ok(self.last())
    }

    fn snapshot(&self, request_index: u64, _to: u64) -> ::raft::Result<Snapshot> {
        if self.snapshot_index() == 0 || self.snapshot_index() < request_index {
            return Err(StorageError::SnapshotTemporarilyUnavailable.into());
        }
        Ok(self.snapshot.clone())
    }
}

#[cfg(test)]
#[path = "storage_tests.rs"]
mod tests;
