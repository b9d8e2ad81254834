//! The one error type of `cyclotron-core`.

/// Errors of the core crate: each names what went wrong and where, so a user can act on it.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("{origin}: cannot parse the job spec: {message}")]
    SpecParse { origin: String, message: String },
    #[error("invalid job spec:\n  - {}", problems.join("\n  - "))]
    InvalidSpec { problems: Vec<String> },
    #[error("{path}: {source}")]
    Io { path: String, source: std::io::Error },
    #[error("store {url}: {message}")]
    StoreUrl { url: String, message: String },
    #[error("store {url}: cannot create or write the folder {path}: {source}")]
    StoreNotWritable { url: String, path: String, source: std::io::Error },
    #[error("store {url}: {op} {key}: {source}")]
    Store { url: String, op: &'static str, key: String, source: Box<object_store::Error> },
    #[error("checkpoint {key}: {message}")]
    Corrupt { key: String, message: String },
    #[error("checkpoint {key}: bad manifest: {source}")]
    Manifest { key: String, source: serde_json::Error },
    #[error("store {url}: {op} {key} failed after {attempts} attempts: {source}")]
    Upload { url: String, op: &'static str, key: String, attempts: u32, source: Box<object_store::Error> },
    #[error("store {url}: {message}")]
    Access { url: String, message: String },
    #[error("metrics server on {addr}: {source}; pick a free port (or 0) with --metrics-addr, or `off`")]
    MetricsBind { addr: String, source: std::io::Error },
    #[error("metrics: {message}")]
    Metrics { message: String },
}

pub type Result<T, E = Error> = std::result::Result<T, E>;
