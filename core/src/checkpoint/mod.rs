//! Checkpoints: the manifest format and the store that commits and finds them.
//!
//! ## Commit protocol
//! A checkpoint is a folder of blobs (`model.safetensors`, `optim.safetensors`, `state.json`, …)
//! and a `MANIFEST.json` that lists every blob with its size and sha256. Blobs are written first,
//! the manifest last: **only a manifest makes a checkpoint exist**. A crash mid-write leaves blobs
//! without a manifest, which readers ignore. Readers verify size and checksum of every blob they read.
//!
//! ## Layout
//! ```text
//! <root>/<job>/<run>/ckpt-<step:010>/{blobs…, MANIFEST.json}     periodic checkpoints
//! <root>/<job>/<run>/snapshots/cycle-<i>/{blobs…, MANIFEST.json} one per cycle end (i counts over the job)
//! ```

mod manifest;
mod store;

pub use manifest::{BlobEntry, CheckpointKind, Manifest, MANIFEST_FILE};
pub use store::{Blob, CheckpointStore, RunLocation};
