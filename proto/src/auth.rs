//! Who may call a coordinator: the cluster token (users and workers), the peer credential (raft
//! traffic between coordinator replicas) and, per worker, the session secret its registration
//! returned. This module holds the credentials, the tonic interceptors that attach them (clients)
//! and check them (servers), and the one constant-time comparison every check uses.
//!
//! Credentials come from a file or an environment variable, never from a flag value (which `ps`
//! shows to every user of the machine): `--token-file PATH` or `CYCLOTRON_TOKEN`, and for peers
//! `--peer-token-file PATH` or `CYCLOTRON_PEER_TOKEN`. On the wire both travel as
//! `authorization: Bearer <token>`; servers compare SHA-256 digests in constant time.
//!
//! Refusals are `UNAUTHENTICATED` with a message naming the credential that is missing or wrong
//! and how to pass it; the request is dropped before its body is decoded, so nothing changes.

use std::path::Path;

use sha2::{Digest, Sha256};
use tonic::metadata::{Ascii, MetadataValue};
use tonic::service::Interceptor;
use tonic::{Request, Status};

/// Environment variable holding the cluster token (its value, not a path).
pub const TOKEN_ENV: &str = "CYCLOTRON_TOKEN";
/// Environment variable holding the peer credential of coordinator replicas.
pub const PEER_TOKEN_ENV: &str = "CYCLOTRON_PEER_TOKEN";
/// Shortest token accepted (bytes); `cyclotron local` generates 64 hex digits.
pub const MIN_TOKEN_LEN: usize = 16;
/// Longest token accepted (bytes).
pub const MAX_TOKEN_LEN: usize = 1024;

/// Problems reading or using a credential.
#[derive(Debug, thiserror::Error)]
pub enum AuthError {
    #[error("cannot read the {what} from {path}: {message}")]
    Read { what: &'static str, path: String, message: String },
    #[error("the {what} from {source_name} is unusable: {message}")]
    Invalid { what: &'static str, source_name: String, message: String },
    #[error("no random numbers from the operating system: {0}")]
    Random(String),
}

/// A bearer token: a cluster token or a peer credential. Its `Debug` never shows it.
#[derive(Clone, PartialEq, Eq)]
pub struct Token(String);

impl std::fmt::Debug for Token {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Token(<redacted>)")
    }
}

impl Token {
    /// Check and wrap a token's text (`source_name` names where it came from, for errors).
    pub fn new(text: &str, what: &'static str, source_name: &str) -> Result<Token, AuthError> {
        let text = text.trim();
        let bad = |message: String| AuthError::Invalid { what, source_name: source_name.into(), message };
        if text.len() < MIN_TOKEN_LEN {
            return Err(bad(format!(
                "it is {} bytes; use at least {MIN_TOKEN_LEN} random characters (e.g. `openssl rand -hex 32`)",
                text.len()
            )));
        }
        if text.len() > MAX_TOKEN_LEN {
            return Err(bad(format!("it is {} bytes; at most {MAX_TOKEN_LEN}", text.len())));
        }
        if !text.bytes().all(|b| b.is_ascii_graphic()) {
            return Err(bad("use printable ASCII without spaces (it travels in a gRPC header)".into()));
        }
        Ok(Token(text.to_string()))
    }

    /// A fresh random token (64 hex digits), e.g. for `cyclotron local`'s own cluster.
    pub fn generate() -> Result<Token, AuthError> {
        Ok(Token(hex_encode(&random_bytes::<32>()?)))
    }

    /// Read a token from `file` if given, else from the environment variable `env`; `None` when
    /// neither is set. A file holds the token alone (surrounding whitespace is ignored).
    pub fn load(file: Option<&Path>, env: &str, what: &'static str) -> Result<Option<Token>, AuthError> {
        if let Some(path) = file {
            let text = std::fs::read_to_string(path).map_err(|e| AuthError::Read {
                what,
                path: path.display().to_string(),
                message: e.to_string(),
            })?;
            return Token::new(&text, what, &path.display().to_string()).map(Some);
        }
        match std::env::var(env) {
            Ok(text) if !text.trim().is_empty() => Token::new(&text, what, &format!("${env}")).map(Some),
            _ => Ok(None),
        }
    }

    /// The token's text (to write it into a file for a child process).
    pub fn expose(&self) -> &str {
        &self.0
    }

    fn header(&self) -> MetadataValue<Ascii> {
        // Token::new admits only printable ASCII, which is always a valid header value
        let mut v: MetadataValue<Ascii> = format!("Bearer {}", self.0)
            .parse()
            .unwrap_or_else(|_| MetadataValue::from_static("Bearer invalid"));
        v.set_sensitive(true);
        v
    }

    fn digest(&self) -> [u8; 32] {
        sha256(self.0.as_bytes())
    }
}

/// `n` bytes from the operating system's CSPRNG.
pub fn random_bytes<const N: usize>() -> Result<[u8; N], AuthError> {
    let mut b = [0u8; N];
    getrandom::getrandom(&mut b).map_err(|e| AuthError::Random(e.to_string()))?;
    Ok(b)
}

pub fn hex_encode(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

pub fn sha256(bytes: &[u8]) -> [u8; 32] {
    Sha256::digest(bytes).into()
}

/// Equality of two digests in time independent of where they differ.
pub fn digests_equal(a: &[u8; 32], b: &[u8; 32]) -> bool {
    a.iter().zip(b.iter()).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

/// Client side: adds `authorization: Bearer <token>` to every call (nothing without a token).
#[derive(Clone, Debug, Default)]
pub struct AttachToken {
    header: Option<MetadataValue<Ascii>>,
}

impl AttachToken {
    pub fn new(token: Option<&Token>) -> Self {
        AttachToken { header: token.map(Token::header) }
    }
}

impl Interceptor for AttachToken {
    fn call(&mut self, mut request: Request<()>) -> Result<Request<()>, Status> {
        if let Some(h) = &self.header {
            request.metadata_mut().insert("authorization", h.clone());
        }
        Ok(request)
    }
}

/// Server side: what a service demands of its callers.
#[derive(Clone, Debug)]
pub enum Guard {
    /// Anyone (a coordinator without credentials, on loopback only).
    Open,
    /// `authorization: Bearer <token>` whose SHA-256 is `digest`.
    Require { digest: [u8; 32], credential: &'static str, hint: &'static str },
    /// Nobody: the service is off in this configuration (`why` says so).
    Closed { why: &'static str },
}

impl Guard {
    /// Users and workers: the cluster token when one is configured.
    pub fn cluster(token: Option<&Token>) -> Guard {
        match token {
            Some(t) => Guard::Require {
                digest: t.digest(),
                credential: "cluster token",
                hint: "pass it with --token-file PATH or the CYCLOTRON_TOKEN environment variable",
            },
            None => Guard::Open,
        }
    }

    /// Raft traffic: the peer credential when one is configured; with a cluster token but no
    /// peer credential, no one (a replica without peers has nobody to hear from).
    pub fn peers(peer: Option<&Token>, cluster: Option<&Token>) -> Guard {
        match (peer, cluster) {
            (Some(t), _) => Guard::Require {
                digest: t.digest(),
                credential: "peer credential",
                hint: "RaftService serves coordinator replicas only, started with the same --peer-token-file (or CYCLOTRON_PEER_TOKEN)",
            },
            (None, Some(_)) => Guard::Closed {
                why: "this coordinator has no peer credential (--peer-token-file), so RaftService accepts no one",
            },
            (None, None) => Guard::Open,
        }
    }

    /// Check one request's metadata.
    pub fn check(&self, metadata: &tonic::metadata::MetadataMap) -> Result<(), Status> {
        let (digest, credential, hint) = match self {
            Guard::Open => return Ok(()),
            Guard::Closed { why } => return Err(Status::unauthenticated(*why)),
            Guard::Require { digest, credential, hint } => (digest, *credential, *hint),
        };
        let Some(value) = metadata.get("authorization") else {
            return Err(Status::unauthenticated(format!(
                "missing {credential}: this coordinator requires one; {hint}"
            )));
        };
        let given = value.to_str().ok().and_then(|v| v.strip_prefix("Bearer ")).unwrap_or("");
        if digests_equal(&sha256(given.as_bytes()), digest) {
            Ok(())
        } else {
            Err(Status::unauthenticated(format!(
                "wrong {credential}: the one sent is not this cluster's; {hint}"
            )))
        }
    }
}

impl Interceptor for Guard {
    fn call(&mut self, request: Request<()>) -> Result<Request<()>, Status> {
        self.check(request.metadata())?;
        Ok(request)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn token(t: &str) -> Token {
        Token::new(t, "cluster token", "test").unwrap()
    }

    #[test]
    fn tokens_must_be_long_printable_and_never_print() {
        assert!(Token::new("short", "cluster token", "f").unwrap_err().to_string().contains("at least 16"));
        let e = Token::new("a token with spaces in it", "cluster token", "f").unwrap_err().to_string();
        assert!(e.contains("printable ASCII"), "{e}");
        let t = token(" 0123456789abcdef0123\n");
        assert_eq!(t.expose(), "0123456789abcdef0123");
        assert_eq!(format!("{t:?}"), "Token(<redacted>)");
        let g = Token::generate().unwrap();
        assert_eq!(g.expose().len(), 64);
        assert_ne!(g, Token::generate().unwrap());
    }

    #[test]
    fn a_token_file_is_read_and_a_missing_one_named() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("token");
        std::fs::write(&path, "0123456789abcdef0123\n").unwrap();
        let t = Token::load(Some(&path), "CYCLOTRON_TEST_UNSET_VAR", "cluster token").unwrap().unwrap();
        assert_eq!(t.expose(), "0123456789abcdef0123");
        let e = Token::load(Some(&dir.path().join("nope")), "X", "cluster token").unwrap_err().to_string();
        assert!(e.starts_with("cannot read the cluster token from"), "{e}");
        assert!(Token::load(None, "CYCLOTRON_TEST_UNSET_VAR", "cluster token").unwrap().is_none());
    }

    #[test]
    fn guards_name_the_missing_or_wrong_credential() {
        let t = token("0123456789abcdef0123");
        let guard = Guard::cluster(Some(&t));
        let mut req = Request::new(());
        let e = guard.check(req.metadata()).unwrap_err();
        assert_eq!(e.code(), tonic::Code::Unauthenticated);
        assert!(e.message().starts_with("missing cluster token"), "{}", e.message());
        let mut attach = AttachToken::new(Some(&token("not-the-right-one-000")));
        req = attach.call(req).unwrap();
        let e = guard.check(req.metadata()).unwrap_err();
        assert!(e.message().starts_with("wrong cluster token"), "{}", e.message());
        let req = AttachToken::new(Some(&t)).call(Request::new(())).unwrap();
        assert!(guard.check(req.metadata()).is_ok());
        // the raft service: the cluster token is not a peer credential
        let peers = Guard::peers(Some(&token("peer-credential-0000000")), Some(&t));
        assert!(peers.check(req.metadata()).unwrap_err().message().starts_with("wrong peer credential"));
        let closed = Guard::peers(None, Some(&t));
        assert!(closed.check(req.metadata()).unwrap_err().message().contains("accepts no one"));
        assert!(Guard::cluster(None).check(Request::new(()).metadata()).is_ok());
    }
}
