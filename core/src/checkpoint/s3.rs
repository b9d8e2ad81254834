//! S3-compatible stores (AWS, MinIO, Ceph, R2) behind `s3://bucket/prefix` URLs.
//!
//! Settings come from the usual `AWS_*` environment variables (`AWS_ENDPOINT_URL`, `AWS_REGION`,
//! `AWS_ACCESS_KEY_ID`, `AWS_SECRET_ACCESS_KEY`, `AWS_ALLOW_HTTP`, `AWS_VIRTUAL_HOSTED_STYLE_REQUEST`)
//! through object_store's `AmazonS3Builder::from_env()`, then from [`S3Options`] (the job spec's
//! `[checkpoint]` section, or a caller such as a test), which win. Requests are path-style unless
//! asked otherwise, which is what MinIO and Ceph want.
//!
//! **Credentials never leave this module in text**: [`S3Options`]'s `Debug` hides them, the store
//! is named by [`redact`]ed URL only, and [`describe`] turns object_store errors into messages that
//! name the bucket and the likely fix without echoing request headers.

use std::sync::Arc;
use std::time::Duration;

use object_store::aws::AmazonS3Builder;
use object_store::prefix::PrefixStore;
use object_store::{BackoffConfig, ClientOptions, ObjectStore, RetryConfig};

use super::store::StoreOptions;
use crate::error::{Error, Result};

/// S3 settings that override the environment. Credentials here are for programs (tests, the
/// bench); a job spec names only the endpoint, region and transport.
#[derive(Clone, Default, PartialEq)]
pub struct S3Options {
    /// e.g. `http://127.0.0.1:9000` for MinIO; AWS needs none.
    pub endpoint: Option<String>,
    pub region: Option<String>,
    /// Allow plain `http://` endpoints (implied by an `http://` endpoint given here).
    pub allow_http: Option<bool>,
    /// `bucket.host` addressing instead of path-style `host/bucket`.
    pub virtual_hosted_style: Option<bool>,
    pub access_key_id: Option<String>,
    pub secret_access_key: Option<String>,
}

impl std::fmt::Debug for S3Options {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let hidden = |o: &Option<String>| o.as_ref().map(|_| "<redacted>");
        f.debug_struct("S3Options")
            .field("endpoint", &self.endpoint.as_deref().map(redact))
            .field("region", &self.region)
            .field("allow_http", &self.allow_http)
            .field("virtual_hosted_style", &self.virtual_hosted_style)
            .field("access_key_id", &hidden(&self.access_key_id))
            .field("secret_access_key", &hidden(&self.secret_access_key))
            .finish()
    }
}

/// A URL fit for logs and errors: user info (`key:secret@`) and the query string removed.
pub fn redact(url: &str) -> String {
    let (scheme, rest) = match url.split_once("://") {
        Some((s, r)) => (Some(s), r),
        None => (None, url),
    };
    let rest = rest.split(['?', '#']).next().unwrap_or("");
    let (authority, path) = match rest.find('/') {
        Some(i) => rest.split_at(i),
        None => (rest, ""),
    };
    let authority = match authority.rsplit_once('@') {
        Some((_, host)) => format!("<redacted>@{host}"),
        None => authority.to_string(),
    };
    match scheme {
        Some(s) => format!("{s}://{authority}{path}"),
        None => format!("{authority}{path}"),
    }
}

/// Bucket and key prefix of `s3://bucket/prefix`.
pub fn parse(url: &str) -> Result<(String, String)> {
    let bad = |message: &str| Error::StoreUrl { url: redact(url), message: message.into() };
    let rest = url.strip_prefix("s3://").ok_or_else(|| bad("not an s3:// URL"))?;
    let (bucket, prefix) = rest.split_once('/').unwrap_or((rest, ""));
    if bucket.contains('@') || url.contains('?') {
        return Err(bad("credentials and options do not belong in the URL; use AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY"));
    }
    if bucket.is_empty() {
        return Err(bad("the bucket is empty; use s3://bucket/prefix"));
    }
    Ok((bucket.to_string(), prefix.trim_matches('/').to_string()))
}

/// Open `s3://bucket/prefix`: environment, then `opts.s3`; retries and timeouts from `opts`.
pub fn open(url: &str, opts: &StoreOptions) -> Result<Arc<dyn ObjectStore>> {
    let (bucket, prefix) = parse(url)?;
    let s3 = &opts.s3;
    // client options first: `with_client_options` replaces them, `allow_http` among them
    let client =
        ClientOptions::new().with_timeout(opts.request_timeout).with_connect_timeout(Duration::from_secs(5));
    let mut b = AmazonS3Builder::from_env().with_client_options(client).with_bucket_name(&bucket);
    if let Some(e) = &s3.endpoint {
        b = b.with_endpoint(e);
        if e.starts_with("http://") && s3.allow_http.is_none() {
            b = b.with_allow_http(true);
        }
    }
    if let Some(r) = &s3.region {
        b = b.with_region(r);
    }
    if let Some(a) = s3.allow_http {
        b = b.with_allow_http(a);
    }
    if let Some(v) = s3.virtual_hosted_style {
        b = b.with_virtual_hosted_style_request(v);
    }
    if let (Some(k), Some(s)) = (&s3.access_key_id, &s3.secret_access_key) {
        b = b.with_access_key_id(k).with_secret_access_key(s);
    }
    let retry = RetryConfig {
        backoff: BackoffConfig { init_backoff: opts.backoff, max_backoff: opts.backoff * 8, base: 2.0 },
        max_retries: opts.request_retries,
        retry_timeout: opts.request_timeout * 2,
    };
    let store = b
        .with_retry(retry)
        .build()
        .map_err(|e| Error::StoreUrl { url: redact(url), message: e.to_string() })?;
    Ok(if prefix.is_empty() { Arc::new(store) } else { Arc::new(PrefixStore::new(store, prefix.as_str())) })
}

/// A clear message for an access failure (wrong credentials, missing bucket), `None` otherwise.
pub fn describe(url: &str, e: &object_store::Error) -> Option<String> {
    let text = e.to_string();
    let bucket = parse(url).map(|(b, _)| b).unwrap_or_default();
    let has = |s: &str| text.contains(s);
    if has("NoSuchBucket") || has("bucket does not exist") {
        return Some(format!("bucket {bucket:?} does not exist; create it or fix the URL"));
    }
    if matches!(e, object_store::Error::PermissionDenied { .. } | object_store::Error::Unauthenticated { .. })
        || has("SignatureDoesNotMatch")
        || has("InvalidAccessKeyId")
        || has("AccessDenied")
        || has("403 Forbidden")
    {
        return Some(format!(
            "access denied to bucket {bucket:?}: check AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY"
        ));
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn redact_hides_user_info_and_query() {
        assert_eq!(redact("s3://AKIA:sekrit@bucket/p?x=1"), "s3://<redacted>@bucket/p");
        assert_eq!(redact("s3://bucket/a/b"), "s3://bucket/a/b");
        assert_eq!(redact("http://127.0.0.1:9000"), "http://127.0.0.1:9000");
        assert_eq!(redact("./runs"), "./runs");
    }

    #[test]
    fn parse_takes_bucket_and_prefix_and_rejects_credentials() {
        assert_eq!(parse("s3://b/x/y/").unwrap(), ("b".into(), "x/y".into()));
        assert_eq!(parse("s3://b").unwrap(), ("b".into(), String::new()));
        let e = parse("s3://AKIA:sekrit@b/x").unwrap_err().to_string();
        assert!(e.contains("credentials") && !e.contains("sekrit"), "{e}");
        assert!(parse("s3:///x").unwrap_err().to_string().contains("bucket is empty"));
    }

    #[test]
    fn options_debug_hides_credentials() {
        let o = S3Options {
            access_key_id: Some("AKIAEXAMPLE".into()),
            secret_access_key: Some("very-secret".into()),
            ..Default::default()
        };
        let d = format!("{o:?}");
        assert!(!d.contains("AKIAEXAMPLE") && !d.contains("very-secret") && d.contains("<redacted>"), "{d}");
    }
}
