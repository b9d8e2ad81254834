//! `MANIFEST.json`: the record that makes a checkpoint exist.

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

pub const MANIFEST_FILE: &str = "MANIFEST.json";
pub const MANIFEST_VERSION: u32 = 1;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum CheckpointKind {
    /// A periodic checkpoint, for resuming.
    Checkpoint,
    /// A cycle-end snapshot, kept for the ensemble.
    Snapshot,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct BlobEntry {
    pub name: String,
    pub size: u64,
    /// Lowercase hex sha256 of the blob's bytes.
    pub sha256: String,
}

impl BlobEntry {
    pub fn of(name: &str, data: &[u8]) -> Self {
        BlobEntry { name: name.to_string(), size: data.len() as u64, sha256: sha256_hex(data) }
    }

    /// Whether `data` is exactly this blob.
    pub fn matches(&self, data: &[u8]) -> bool {
        data.len() as u64 == self.size && sha256_hex(data) == self.sha256
    }
}

pub fn sha256_hex(data: &[u8]) -> String {
    hex::encode(Sha256::digest(data))
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Manifest {
    pub version: u32,
    pub kind: CheckpointKind,
    /// Global optimiser step when it was taken.
    pub step: u64,
    /// Stage (0-based) and epochs completed within it.
    pub stage: usize,
    pub epoch: u32,
    /// The cycle within the stage, for snapshots.
    pub cycle: Option<u32>,
    pub blobs: Vec<BlobEntry>,
    /// Free-form training state (schedule position, seeds, sampler position, metrics).
    #[serde(default)]
    pub state: serde_json::Value,
    pub created_unix_ms: u64,
}

impl Manifest {
    pub fn blob(&self, name: &str) -> Option<&BlobEntry> {
        self.blobs.iter().find(|b| b.name == name)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sha256_of_known_input() {
        assert_eq!(sha256_hex(b"abc"), "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad");
        let e = BlobEntry::of("x", b"abc");
        assert!(e.matches(b"abc"));
        assert!(!e.matches(b"abd"));
        assert!(!e.matches(b"abcd"));
    }
}
