//! Storage tests: what is appended survives reopening, conflicting suffixes are replaced on disk,
//! compaction and installed snapshots, and recovery from torn writes and half-done snapshot installs.

use std::fs::{self, OpenOptions};
use std::io::Write;

use super::*;

fn entry(index: u64, term: u64, data: &str) -> Entry {
    Entry { index, term, data: data.as_bytes().to_vec().into(), ..Default::default() }
}

fn entries(s: &DiskStorage, low: u64, high: u64) -> Vec<(u64, u64, String)> {
    s.entries(low, high, None, GetEntriesContext::empty(false))
        .unwrap()
        .into_iter()
        .map(|e| (e.index, e.term, String::from_utf8(e.data.to_vec()).unwrap()))
        .collect()
}

fn snapshot(index: u64, term: u64, data: &str, voters: &[u64]) -> Snapshot {
    let mut s = Snapshot { data: data.as_bytes().to_vec().into(), ..Default::default() };
    s.mut_metadata().index = index;
    s.mut_metadata().term = term;
    s.mut_metadata().mut_conf_state().voters = voters.to_vec();
    s
}

#[test]
fn a_fresh_directory_starts_with_the_given_voters_and_an_empty_log() {
    let dir = tempfile::tempdir().unwrap();
    let (s, rec) = DiskStorage::open(dir.path(), &[1, 2, 3]).unwrap();
    assert_eq!(rec, Recovered::default());
    assert_eq!((s.first_index().unwrap(), s.last_index().unwrap()), (1, 0));
    assert_eq!(s.initial_state().unwrap().conf_state.voters, vec![1, 2, 3]);
    drop(s);
    // the membership is durable even before any entry
    let (s, _) = DiskStorage::open(dir.path(), &[9]).unwrap();
    assert_eq!(s.conf_state().voters, vec![1, 2, 3]);
}

#[test]
fn entries_and_hard_state_survive_reopening_and_conflicts_are_replaced_on_disk() {
    let dir = tempfile::tempdir().unwrap();
    let (mut s, _) = DiskStorage::open(dir.path(), &[1]).unwrap();
    s.append(&[entry(1, 1, "a"), entry(2, 1, "b"), entry(3, 1, "c")]).unwrap();
    let hs = HardState { term: 2, vote: 1, commit: 1, ..Default::default() };
    s.set_hard_state(hs, true).unwrap();
    // a new leader replaces 2..3 with its own entries
    s.append(&[entry(2, 2, "B"), entry(3, 2, "C"), entry(4, 2, "D")]).unwrap();
    assert_eq!(s.term(3).unwrap(), 2);
    drop(s);

    let (s, rec) = DiskStorage::open(dir.path(), &[1]).unwrap();
    assert_eq!(rec.entries, 4);
    assert_eq!(rec.torn_bytes, 0);
    assert_eq!(
        entries(&s, 1, 5),
        vec![(1, 1, "a".into()), (2, 2, "B".into()), (3, 2, "C".into()), (4, 2, "D".into())]
    );
    let hs = s.initial_state().unwrap().hard_state;
    assert_eq!((hs.term, hs.vote, hs.commit), (2, 1, 1));
    // raft's contract on out-of-range reads
    assert_eq!(s.term(5), Err(::raft::Error::Store(StorageError::Unavailable)));
}

#[test]
fn a_gap_or_an_overwrite_of_compacted_entries_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let (mut s, _) = DiskStorage::open(dir.path(), &[1]).unwrap();
    s.append(&[entry(1, 1, "a"), entry(2, 1, "b")]).unwrap();
    let err = s.append(&[entry(4, 1, "d")]).unwrap_err().to_string();
    assert!(err.contains("gap"), "{err}");
    s.compact(snapshot(2, 1, "state@2", &[1])).unwrap();
    let err = s.append(&[entry(2, 1, "b")]).unwrap_err().to_string();
    assert!(err.contains("compacted"), "{err}");
}

#[test]
fn a_torn_last_record_is_dropped_on_recovery_and_appends_continue() {
    let dir = tempfile::tempdir().unwrap();
    let (mut s, _) = DiskStorage::open(dir.path(), &[1]).unwrap();
    s.append(&[entry(1, 1, "a"), entry(2, 1, "b")]).unwrap();
    drop(s);
    // a crash in the middle of writing entry 3: header and half its payload reached the disk
    let mut full = Vec::new();
    super::record::encode(&entry(3, 1, "a long payload").write_to_bytes().unwrap(), &mut full);
    let torn = &full[..full.len() - 5];
    OpenOptions::new().append(true).open(dir.path().join(LOG_FILE)).unwrap().write_all(torn).unwrap();

    let (mut s, rec) = DiskStorage::open(dir.path(), &[1]).unwrap();
    assert_eq!(rec.torn_bytes, torn.len() as u64);
    assert_eq!(s.last_index().unwrap(), 2);
    s.append(&[entry(3, 1, "c")]).unwrap();
    drop(s);
    let (s, rec) = DiskStorage::open(dir.path(), &[1]).unwrap();
    assert_eq!(rec.torn_bytes, 0, "the torn bytes were cut away, not appended after");
    assert_eq!(entries(&s, 1, 4).last().unwrap(), &(3, 1, "c".to_string()));
}

#[test]
fn compaction_keeps_the_tail_and_the_snapshot_across_reopening() {
    let dir = tempfile::tempdir().unwrap();
    let (mut s, _) = DiskStorage::open(dir.path(), &[1, 2]).unwrap();
    let ents: Vec<Entry> = (1..=10).map(|i| entry(i, 1 + i / 5, &format!("e{i}"))).collect();
    s.append(&ents).unwrap();
    s.set_commit(8);
    s.compact(snapshot(6, 2, "state@6", &[1, 2])).unwrap();
    assert_eq!((s.first_index().unwrap(), s.last_index().unwrap()), (7, 10));
    assert_eq!(s.term(6).unwrap(), 2);
    assert_eq!(s.term(5), Err(::raft::Error::Store(StorageError::Compacted)));
    assert_eq!(
        s.entries(5, 8, None, GetEntriesContext::empty(false)),
        Err(::raft::Error::Store(StorageError::Compacted))
    );
    assert_eq!(s.snapshot(0, 2).unwrap().data.as_ref(), b"state@6");
    drop(s);

    let (s, rec) = DiskStorage::open(dir.path(), &[1, 2]).unwrap();
    assert_eq!(rec, Recovered { entries: 4, torn_bytes: 0, snapshot_index: 6 });
    assert_eq!(s.snapshot_data(), b"state@6");
    assert_eq!(entries(&s, 7, 11).first().unwrap(), &(7, 2, "e7".to_string()));
    assert_eq!(s.hard_state().commit, 8, "the commit index is written at compaction");
}

#[test]
fn an_installed_snapshot_replaces_the_log_even_if_the_crash_left_the_old_log() {
    let dir = tempfile::tempdir().unwrap();
    let (mut s, _) = DiskStorage::open(dir.path(), &[1, 2, 3]).unwrap();
    s.append(&[entry(1, 1, "a"), entry(2, 1, "b"), entry(3, 1, "stale")]).unwrap();
    drop(s);
    let old_log = fs::read(dir.path().join(LOG_FILE)).unwrap();

    let (mut s, _) = DiskStorage::open(dir.path(), &[1, 2, 3]).unwrap();
    s.apply_snapshot(snapshot(20, 3, "state@20", &[1, 2, 3])).unwrap();
    assert_eq!((s.first_index().unwrap(), s.last_index().unwrap()), (21, 20));
    assert_eq!(s.hard_state().commit, 20);
    s.append(&[entry(21, 3, "x")]).unwrap();
    drop(s);
    let (s, rec) = DiskStorage::open(dir.path(), &[1, 2, 3]).unwrap();
    assert_eq!((rec.snapshot_index, rec.entries), (20, 1));
    assert_eq!(entries(&s, 21, 22), vec![(21, 3, "x".to_string())]);
    drop(s);

    // crash between writing the snapshot and clearing the log: the old log is still there
    fs::write(dir.path().join(LOG_FILE), &old_log).unwrap();
    let (s, rec) = DiskStorage::open(dir.path(), &[1, 2, 3]).unwrap();
    assert_eq!(
        (rec.snapshot_index, rec.entries),
        (20, 0),
        "a log that does not continue the snapshot is dropped"
    );
    assert_eq!((s.first_index().unwrap(), s.last_index().unwrap()), (21, 20));
    assert_eq!(s.hard_state().commit, 20);
}

#[test]
fn a_flipped_byte_in_the_middle_of_the_log_refuses_to_start_naming_file_and_offset() {
    let dir = tempfile::tempdir().unwrap();
    {
        let (mut s, _) = DiskStorage::open(dir.path(), &[1]).unwrap();
        s.append(&(1..=5).map(|i| entry(i, 1, &format!("committed job {i}"))).collect::<Vec<_>>()).unwrap();
    }
    let path = dir.path().join(LOG_FILE);
    let mut bytes = std::fs::read(&path).unwrap();
    let middle = bytes.len() / 2;
    bytes[middle] ^= 0x20;
    std::fs::write(&path, &bytes).unwrap();
    let err = DiskStorage::open(dir.path(), &[1]).err().expect("corruption must not open").to_string();
    assert!(err.contains(&path.display().to_string()) && err.contains("at byte"), "{err}");
    assert!(err.contains("not a torn last write"), "{err}");
    assert_eq!(std::fs::read(&path).unwrap(), bytes, "nothing was truncated");
}

#[test]
fn a_corrupt_state_file_is_an_error_that_says_what_to_do() {
    let dir = tempfile::tempdir().unwrap();
    drop(DiskStorage::open(dir.path(), &[1]).unwrap());
    fs::write(dir.path().join(STATE_FILE), b"garbage that is not a record").unwrap();
    let err = DiskStorage::open(dir.path(), &[1]).err().expect("corrupt state must not open").to_string();
    assert!(err.contains("raft-state") && err.contains("move the data directory away"), "{err}");
}
