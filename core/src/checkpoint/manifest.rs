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

/// Largest manifest read (a checkpoint lists a handful of blobs; its state is small).
pub const MAX_MANIFEST_BYTES: usize = 16 << 20;
/// Most blobs one checkpoint may list.
pub const MAX_BLOBS: usize = 1024;

impl Manifest {
    pub fn blob(&self, name: &str) -> Option<&BlobEntry> {
        self.blobs.iter().find(|b| b.name == name)
    }

    /// Parse and check a manifest's bytes (`key` names it in errors): at most
    /// [`MAX_MANIFEST_BYTES`], then [`Manifest::check`].
    pub fn parse(bytes: &[u8], key: &str) -> crate::Result<Manifest> {
        if bytes.len() > MAX_MANIFEST_BYTES {
            return Err(crate::Error::Corrupt {
                key: key.into(),
                message: format!("the manifest is {} bytes; at most {MAX_MANIFEST_BYTES}", bytes.len()),
            });
        }
        let m: Manifest = serde_json::from_slice(bytes)
            .map_err(|e| crate::Error::Manifest { key: key.into(), source: e })?;
        m.check().map_err(|message| crate::Error::Corrupt { key: key.into(), message })?;
        Ok(m)
    }

    /// What a reader relies on: a known version, at most [`MAX_BLOBS`] blobs, each named by one
    /// plain file name (no `/`, no `..`: a manifest names the objects a deletion removes) and a
    /// sha256 of 64 hex digits, no name twice.
    pub fn check(&self) -> Result<(), String> {
        if self.version != MANIFEST_VERSION {
            return Err(format!(
                "manifest version {} (this cyclotron reads {MANIFEST_VERSION})",
                self.version
            ));
        }
        if self.blobs.len() > MAX_BLOBS {
            return Err(format!("{} blobs listed; at most {MAX_BLOBS}", self.blobs.len()));
        }
        let mut seen = std::collections::HashSet::new();
        for b in &self.blobs {
            let plain = !b.name.is_empty()
                && b.name.len() <= 255
                && b.name != "."
                && b.name != ".."
                && !b.name.contains(['/', '\\', '\0']);
            if !plain {
                return Err(format!(
                    "blob name {:?} is not a plain file name",
                    b.name.chars().take(64).collect::<String>()
                ));
            }
            if b.sha256.len() != 64 || !b.sha256.bytes().all(|c| c.is_ascii_hexdigit()) {
                return Err(format!("blob {}: sha256 is not 64 hex digits", b.name));
            }
            if !seen.insert(b.name.as_str()) {
                return Err(format!("blob {} is listed twice", b.name));
            }
        }
        Ok(())
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
