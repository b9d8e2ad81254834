//! TLS (rustls, through tonic's `tls-aws-lc` feature) for every gRPC connection, and what a
//! client needs to call a secured cluster ([`ClientSecurity`]: its token and TLS settings).
//!
//! Flags, the same on every command:
//! - a coordinator serves TLS with `--tls-cert PEM --tls-key PEM`; with `--tls-client-ca PEM` it
//!   also demands a client certificate signed by that CA (mutual TLS);
//! - clients (users' commands, workers, and coordinators calling their peers) verify the server
//!   with `--tls-ca PEM`, and present `--tls-cert/--tls-key` as their own certificate when given
//!   (needed when the server demands one).
//!
//! Files are read and checked when the process starts, so a wrong path or a key given as the
//! certificate is a clear error then, not a handshake failure later.

use std::path::{Path, PathBuf};

use tonic::transport::{Certificate, ClientTlsConfig, Identity, ServerTlsConfig};

use crate::auth::Token;

#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    #[error("cannot read {flag} {}: {message}", path.display())]
    Read { flag: &'static str, path: PathBuf, message: String },
    #[error("{flag} {}: {message}", path.display())]
    Pem { flag: &'static str, path: PathBuf, message: String },
    #[error("{0}")]
    Flags(String),
}

fn read_pem(flag: &'static str, path: &Path, kind: &str) -> Result<Vec<u8>, TlsError> {
    let bytes = std::fs::read(path).map_err(|e| TlsError::Read {
        flag,
        path: path.into(),
        message: e.to_string(),
    })?;
    let text = String::from_utf8_lossy(&bytes);
    let found = text.lines().any(|l| l.starts_with("-----BEGIN ") && l.contains(kind));
    if !found {
        return Err(TlsError::Pem {
            flag,
            path: path.into(),
            message: format!("no PEM block with \"{kind}\" in it; give a PEM file (-----BEGIN {kind}-----)"),
        });
    }
    Ok(bytes)
}

/// The TLS files of one process, as given on its command line.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct TlsFiles {
    /// This process's certificate chain (server, or client for mutual TLS).
    pub cert: Option<PathBuf>,
    pub key: Option<PathBuf>,
    /// The CA that signed the servers this process calls.
    pub ca: Option<PathBuf>,
    /// Servers only: demand client certificates signed by this CA.
    pub client_ca: Option<PathBuf>,
}

impl TlsFiles {
    fn identity(&self) -> Result<Option<Identity>, TlsError> {
        match (&self.cert, &self.key) {
            (Some(c), Some(k)) => {
                let cert = read_pem("--tls-cert", c, "CERTIFICATE")?;
                let key = read_pem("--tls-key", k, "PRIVATE KEY")?;
                Ok(Some(Identity::from_pem(cert, key)))
            }
            (None, None) => Ok(None),
            _ => Err(TlsError::Flags("--tls-cert and --tls-key go together".into())),
        }
    }

    /// Server TLS, when a certificate is configured.
    pub fn server(&self) -> Result<Option<ServerTlsConfig>, TlsError> {
        let Some(identity) = self.identity()? else {
            if self.client_ca.is_some() {
                return Err(TlsError::Flags(
                    "--tls-client-ca needs --tls-cert and --tls-key (mutual TLS is TLS first)".into(),
                ));
            }
            return Ok(None);
        };
        let mut cfg = ServerTlsConfig::new().identity(identity);
        if let Some(ca) = &self.client_ca {
            cfg = cfg.client_ca_root(Certificate::from_pem(read_pem("--tls-client-ca", ca, "CERTIFICATE")?));
        }
        Ok(Some(cfg))
    }

    /// Client TLS, when a CA is configured (the servers it calls speak TLS).
    pub fn client(&self) -> Result<Option<ClientTlsConfig>, TlsError> {
        let Some(ca) = &self.ca else {
            return Ok(None);
        };
        let mut cfg = ClientTlsConfig::new().ca_certificate(Certificate::from_pem(read_pem(
            "--tls-ca",
            ca,
            "CERTIFICATE",
        )?));
        if let Some(identity) = self.identity()? {
            cfg = cfg.identity(identity);
        }
        Ok(Some(cfg))
    }
}

/// What a client presents to a cluster: the cluster token and TLS settings (both optional:
/// an unsecured cluster listens on loopback only).
#[derive(Debug, Clone, Default)]
pub struct ClientSecurity {
    pub token: Option<Token>,
    pub tls: Option<ClientTlsConfig>,
}

impl ClientSecurity {
    /// `http` or `https`, the scheme of this client's coordinator URLs.
    pub fn scheme(&self) -> &'static str {
        if self.tls.is_some() {
            "https"
        } else {
            "http"
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pem_files_are_checked_when_read() {
        let dir = tempfile::tempdir().unwrap();
        let key = dir.path().join("key.pem");
        std::fs::write(&key, "-----BEGIN PRIVATE KEY-----\nAA==\n-----END PRIVATE KEY-----\n").unwrap();
        let files = TlsFiles { cert: Some(key.clone()), key: Some(key.clone()), ..Default::default() };
        let e = files.server().unwrap_err().to_string();
        assert!(e.starts_with("--tls-cert") && e.contains("-----BEGIN CERTIFICATE-----"), "{e}");
        let missing = TlsFiles { ca: Some(dir.path().join("nope.pem")), ..Default::default() };
        assert!(missing.client().unwrap_err().to_string().starts_with("cannot read --tls-ca"));
        let half = TlsFiles { cert: Some(key), ..Default::default() };
        assert!(half.server().unwrap_err().to_string().contains("go together"));
        assert!(TlsFiles::default().server().unwrap().is_none());
        assert!(TlsFiles::default().client().unwrap().is_none());
    }
}
