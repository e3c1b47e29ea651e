//! TLS to the broker (`amqps://`): the files of `amqp.tls` read and checked
//! once, into the settings lapin connects with, and the TLS error inside a
//! failed connect, so it can be reported as one.
//!
//! lapin does the handshake itself, with rustls on *ring* (its
//! `rustls--ring` feature, the provider `crate::tls` installs) and the
//! system's roots through rustls-platform-verifier, the same roots the
//! `http` task trusts. A `ca_file` adds its certificates to those roots; a
//! `cert_file` and `key_file` are presented as the client certificate.

use std::path::{Path, PathBuf};

use lapin::tcp::{OwnedIdentity, OwnedTLSConfig};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};

use crate::spec::config::AmqpTlsConfig;

/// Why a file of `amqp.tls` cannot be used: which key, which file, and what
/// is wrong with it.
#[derive(Debug, thiserror::Error)]
#[error("amqp.tls.{key}: {}: {problem}", path.display())]
pub struct TlsFileError {
    /// `ca_file`, `cert_file` or `key_file`.
    pub key: &'static str,
    pub path: PathBuf,
    /// Boxed: rustls's errors are large, and this is returned by value.
    pub problem: Box<TlsFileProblem>,
}

#[derive(Debug, thiserror::Error)]
pub enum TlsFileProblem {
    #[error("cannot read it: {0}")]
    Read(#[source] std::io::Error),
    #[error("it is not valid PEM: {0}")]
    NotPem(#[source] rustls::pki_types::pem::Error),
    #[error("it holds no PEM certificate (-----BEGIN CERTIFICATE-----)")]
    NoCertificate,
    #[error("certificate {index} in it cannot be a trusted CA: {source}")]
    BadCa {
        index: usize,
        #[source]
        source: rustls::Error,
    },
    #[error("it holds no unencrypted private key (PEM PKCS#8, PKCS#1 or SEC1): {0}")]
    NoKey(#[source] rustls::pki_types::pem::Error),
    #[error("the key cannot be used with the certificate of amqp.tls.cert_file ({}): {source}", cert.display())]
    KeyMismatch {
        cert: PathBuf,
        #[source]
        source: rustls::Error,
    },
}

impl TlsFileError {
    /// The config key, as a diagnostic's JSON path.
    pub fn json_path(&self) -> String {
        format!("amqp.tls.{}", self.key)
    }

    /// The message without the key (a diagnostic shows the key apart).
    pub fn detail(&self) -> String {
        format!("{}: {}", self.path.display(), self.problem)
    }
}

fn read(key: &'static str, path: &Path) -> Result<Vec<u8>, TlsFileError> {
    std::fs::read(path).map_err(|e| TlsFileError {
        key,
        path: path.to_path_buf(),
        problem: Box::new(TlsFileProblem::Read(e)),
    })
}

/// The certificates of a PEM file, at least one.
fn certificates(
    key: &'static str,
    path: &Path,
    pem: &[u8],
) -> Result<Vec<CertificateDer<'static>>, TlsFileError> {
    let fail = |problem| TlsFileError {
        key,
        path: path.to_path_buf(),
        problem: Box::new(problem),
    };
    let certs = CertificateDer::pem_slice_iter(pem)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| fail(TlsFileProblem::NotPem(e)))?;
    if certs.is_empty() {
        return Err(fail(TlsFileProblem::NoCertificate));
    }
    Ok(certs)
}

/// Reads and checks the files of `amqp.tls` (paths already resolved
/// against the project dir): every CA certificate must be usable as a
/// root, and a client key must match its certificate.
pub fn load(config: &AmqpTlsConfig) -> Result<OwnedTLSConfig, TlsFileError> {
    crate::tls::install_provider();
    let mut settings = OwnedTLSConfig::default();
    if let Some(path) = &config.ca_file {
        let pem = read("ca_file", path)?;
        let mut roots = rustls::RootCertStore::empty();
        for (i, cert) in certificates("ca_file", path, &pem)?.into_iter().enumerate() {
            roots.add(cert).map_err(|source| TlsFileError {
                key: "ca_file",
                path: path.clone(),
                problem: Box::new(TlsFileProblem::BadCa {
                    index: i + 1,
                    source,
                }),
            })?;
        }
        // lapin parses the PEM again and skips what is not a certificate.
        settings.cert_chain = Some(String::from_utf8_lossy(&pem).into_owned());
    }
    if let (Some(cert_path), Some(key_path)) = (&config.cert_file, &config.key_file) {
        let cert_pem = read("cert_file", cert_path)?;
        let chain = certificates("cert_file", cert_path, &cert_pem)?;
        let key_pem = read("key_file", key_path)?;
        let fail = |problem| TlsFileError {
            key: "key_file",
            path: key_path.clone(),
            problem: Box::new(problem),
        };
        let key =
            PrivateKeyDer::from_pem_slice(&key_pem).map_err(|e| fail(TlsFileProblem::NoKey(e)))?;
        rustls::sign::CertifiedKey::from_der(chain, key, &rustls::crypto::ring::default_provider())
            .map_err(|source| {
                fail(TlsFileProblem::KeyMismatch {
                    cert: cert_path.clone(),
                    source,
                })
            })?;
        settings.identity = Some(OwnedIdentity::PKCS8 {
            pem: cert_pem,
            key: key_pem,
        });
    }
    Ok(settings)
}

/// The rustls error behind a failed connect, if TLS is what failed (the
/// handshake, or the broker refusing our certificate right after it).
pub fn tls_cause(error: &lapin::Error) -> Option<&rustls::Error> {
    let mut cause: Option<&(dyn std::error::Error + 'static)> = Some(error);
    while let Some(e) = cause {
        if let Some(tls) = e.downcast_ref::<rustls::Error>() {
            return Some(tls);
        }
        // io::Error's `source` skips the error it wraps; look inside.
        if let Some(tls) = e
            .downcast_ref::<std::io::Error>()
            .and_then(|io| io.get_ref())
            .and_then(|inner| inner.downcast_ref::<rustls::Error>())
        {
            return Some(tls);
        }
        cause = e.source();
    }
    None
}
