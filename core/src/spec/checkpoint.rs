//! `[checkpoint]`: periodic checkpoints for resuming, their retention, and how they are uploaded.
//!
//! ```toml
//! [checkpoint]
//! every_epochs = 1        # a checkpoint at every epoch end (0: none)
//! keep_last = 2           # periodic checkpoints kept (snapshots are always kept)
//! s3_endpoint = "http://127.0.0.1:9000"   # MinIO, Ceph, R2; AWS needs none (AWS_ENDPOINT_URL also works)
//! ```
//! Credentials never go in the spec: they come from `AWS_ACCESS_KEY_ID` / `AWS_SECRET_ACCESS_KEY`.

use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CheckpointSpec {
    /// Checkpoint every N epochs (counted over the job); 0 turns periodic checkpoints off.
    #[serde(default = "default_every")]
    pub every_epochs: u64,
    /// Periodic checkpoints kept; older ones are deleted once a newer one is committed.
    #[serde(default = "default_keep")]
    pub keep_last: usize,
    /// Checkpoints waiting for upload before training waits (each one is a CPU copy in memory).
    #[serde(default = "default_queue")]
    pub max_pending: usize,
    /// Blobs above this many MiB go up as multipart uploads.
    #[serde(default = "default_multipart_mb")]
    pub multipart_threshold_mb: usize,
    /// Seconds the job waits at its end for pending uploads.
    #[serde(default = "default_deadline")]
    pub upload_deadline_s: u64,
    /// S3 endpoint (overrides `AWS_ENDPOINT_URL`).
    #[serde(default)]
    pub s3_endpoint: Option<String>,
    /// S3 region (overrides `AWS_REGION`).
    #[serde(default)]
    pub s3_region: Option<String>,
    /// Allow a plain-http endpoint (implied by an `http://` s3_endpoint).
    #[serde(default)]
    pub s3_allow_http: Option<bool>,
}

fn default_every() -> u64 {
    1
}
fn default_keep() -> usize {
    2
}
fn default_queue() -> usize {
    2
}
fn default_multipart_mb() -> usize {
    16
}
fn default_deadline() -> u64 {
    600
}

impl Default for CheckpointSpec {
    fn default() -> Self {
        CheckpointSpec {
            every_epochs: default_every(),
            keep_last: default_keep(),
            max_pending: default_queue(),
            multipart_threshold_mb: default_multipart_mb(),
            upload_deadline_s: default_deadline(),
            s3_endpoint: None,
            s3_region: None,
            s3_allow_http: None,
        }
    }
}

impl CheckpointSpec {
    /// Problems with the section, each naming its field.
    pub fn problems(&self) -> Vec<String> {
        let mut p = vec![];
        if self.keep_last == 0 {
            p.push(
                "checkpoint.keep_last must be ≥ 1 (the newest checkpoint is what a resume needs), got 0"
                    .into(),
            );
        }
        if self.max_pending == 0 {
            p.push("checkpoint.max_pending must be ≥ 1, got 0".into());
        }
        if self.multipart_threshold_mb < 5 {
            p.push(format!(
                "checkpoint.multipart_threshold_mb must be ≥ 5 (S3 parts are at least 5 MiB), got {}",
                self.multipart_threshold_mb
            ));
        }
        if self.upload_deadline_s == 0 {
            p.push("checkpoint.upload_deadline_s must be ≥ 1, got 0".into());
        }
        if let Some(e) = &self.s3_endpoint {
            if !(e.starts_with("http://") || e.starts_with("https://")) {
                p.push(format!("checkpoint.s3_endpoint must start with http:// or https://, got {e:?}"));
            }
        }
        p
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_are_valid_and_bad_values_are_named() {
        assert!(CheckpointSpec::default().problems().is_empty());
        let bad = CheckpointSpec {
            keep_last: 0,
            multipart_threshold_mb: 1,
            s3_endpoint: Some("minio:9000".into()),
            ..Default::default()
        };
        let p = bad.problems();
        assert_eq!(p.len(), 3, "{p:?}");
        assert!(p[0].starts_with("checkpoint.keep_last must be ≥ 1"), "{p:?}");
        assert!(p[1].contains("got 1") && p[2].contains("\"minio:9000\""), "{p:?}");
    }

    #[test]
    fn parses_from_toml_and_rejects_unknown_fields() {
        let c: CheckpointSpec = toml::from_str("every_epochs = 2\nkeep_last = 3").unwrap();
        assert_eq!((c.every_epochs, c.keep_last, c.max_pending), (2, 3, 2));
        assert!(toml::from_str::<CheckpointSpec>("evry_epochs = 2").is_err());
    }
}
