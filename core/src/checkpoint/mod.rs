//! Checkpoints: the manifest format and the store that commits and finds them.
//!
//! ## Commit protocol
//! A checkpoint is a folder of blobs (`model.safetensors`, `optim.safetensors`, `state.json`, …)
//! and a `MANIFEST.json` that lists every blob with its size and sha256. Blobs are written first,
//! the manifest last: **only a manifest makes a checkpoint exist**. A crash mid-write leaves blobs
//! without a manifest, which readers ignore. Readers verify size and checksum of every blob they
//! read, and [`CheckpointStore::latest_valid`] falls back to the previous checkpoint (with one
//! warning) when the newest is unusable. Retention deletes old checkpoints only after a newer
//! manifest exists, manifest first (see [`retention`]).
//!
//! ## Layout
//! ```text
//! <root>/<job>/<run>/ckpt-<step:010>/{blobs…, MANIFEST.json}     periodic checkpoints
//! <root>/<job>/<run>/snapshots/cycle-<i>/{blobs…, MANIFEST.json} one per cycle end (i counts over the job)
//! ```
//!
//! ## Stores
//! `file://PATH` (default), `s3://bucket/prefix` ([`s3`]: MinIO, Ceph, R2, AWS) and `memory://`.
//! Every backend passes one test suite (`suite.rs`), S3 against an in-process server
//! ([`test_server`], built for tests or with the `s3-server` feature).

mod manifest;
mod restore;
pub mod retention;
pub mod s3;
mod store;
#[cfg(test)]
mod suite;
#[cfg(any(test, feature = "s3-server"))]
pub mod test_server;
mod transfer;

pub use manifest::{
    sha256_hex, BlobEntry, CheckpointKind, Manifest, MANIFEST_FILE, MAX_BLOBS, MAX_MANIFEST_BYTES,
};
pub use restore::Verified;
pub use s3::S3Options;
pub use store::{Blob, CheckpointStore, RunLocation, StoreOptions};
