//! Moving bytes: puts with multipart for large blobs and whole-blob retries with backoff, gets
//! that hash while they download.
//!
//! Two layers of retry: object_store retries each HTTP request on transient errors (connection
//! reset, 5xx, timeouts) with the store's `RetryConfig`; on top, [`put`] retries the *whole blob*
//! (a fresh multipart upload) `attempts` times with exponential backoff, because a multipart
//! upload that lost its server cannot be resumed. Errors that retrying cannot fix (access denied,
//! missing bucket) fail at once.

use std::time::Duration;

use bytes::{Bytes, BytesMut};
use futures::StreamExt;
use object_store::{path::Path as ObjPath, ObjectStore, ObjectStoreExt, PutPayload, WriteMultipart};
use sha2::{Digest, Sha256};

use super::store::StoreOptions;

/// Whether retrying could help.
pub fn is_transient(e: &object_store::Error) -> bool {
    use object_store::Error as E;
    !matches!(
        e,
        E::NotFound { .. }
            | E::PermissionDenied { .. }
            | E::Unauthenticated { .. }
            | E::InvalidPath { .. }
            | E::NotSupported { .. }
            | E::NotImplemented { .. }
    ) && {
        let t = e.to_string();
        !(t.contains("NoSuchBucket")
            || t.contains("SignatureDoesNotMatch")
            || t.contains("InvalidAccessKeyId")
            || t.contains("AccessDenied"))
    }
}

/// One attempt: a plain put below the threshold, else a multipart upload of `part_size` parts
/// with at most `part_concurrency` in flight (aborted on failure, so no parts are left behind).
async fn put_once(
    store: &dyn ObjectStore,
    key: &ObjPath,
    data: &Bytes,
    o: &StoreOptions,
) -> object_store::Result<()> {
    if data.len() <= o.multipart_threshold {
        store.put(key, PutPayload::from(data.clone())).await?;
        return Ok(());
    }
    let upload = store.put_multipart(key).await?;
    let mut w = WriteMultipart::new_with_chunk_size(upload, o.part_size);
    let mut offset = 0;
    while offset < data.len() {
        if let Err(e) = w.wait_for_capacity(o.part_concurrency).await {
            let _ = w.abort().await;
            return Err(e);
        }
        let end = (offset + o.part_size).min(data.len());
        w.put(data.slice(offset..end));
        offset = end;
    }
    w.finish().await?;
    Ok(())
}

/// Store `data` at `key`, retrying the whole blob; returns the last error and the attempts made.
pub async fn put(
    store: &dyn ObjectStore,
    key: &str,
    data: &Bytes,
    o: &StoreOptions,
) -> Result<(), (object_store::Error, u32)> {
    let path = ObjPath::from(key);
    let attempts = o.attempts.max(1);
    let mut delay = o.backoff;
    for attempt in 1..=attempts {
        match put_once(store, &path, data, o).await {
            Ok(()) => return Ok(()),
            Err(e) if attempt == attempts || !is_transient(&e) => return Err((e, attempt)),
            Err(e) => {
                tracing::debug!(key, attempt, error = %e, "put failed, retrying");
                tokio::time::sleep(delay).await;
                delay = (delay * 2).min(Duration::from_secs(10));
            }
        }
    }
    unreachable!("the loop returns on its last attempt")
}

/// Get `key` whole, hashing each chunk as it arrives; returns the bytes and their sha256 (hex).
pub async fn get_hashed(store: &dyn ObjectStore, key: &str) -> object_store::Result<(Bytes, String)> {
    let r = store.get(&ObjPath::from(key)).await?;
    let mut buf = BytesMut::with_capacity(r.meta.size as usize);
    let mut hasher = Sha256::new();
    let mut stream = r.into_stream();
    while let Some(chunk) = stream.next().await {
        let chunk = chunk?;
        hasher.update(&chunk);
        buf.extend_from_slice(&chunk);
    }
    Ok((buf.freeze(), hex::encode(hasher.finalize())))
}
