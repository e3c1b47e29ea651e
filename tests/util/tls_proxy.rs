//! TLS in front of the real RabbitMQ, for `amqps://` tests: a CA made in
//! the test (rcgen), and a proxy that terminates TLS with a certificate
//! that CA signed and forwards the plain bytes to `127.0.0.1:5672`.
//! Optionally it requires a client certificate signed by a CA.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use tokio_rustls::rustls;
use tokio_rustls::rustls::pki_types::{CertificateDer, PrivateKeyDer};

/// A private CA, made fresh for a test.
pub struct TestCa {
    /// The CA certificate, PEM (what `amqp.tls.ca_file` holds).
    pub pem: String,
    der: CertificateDer<'static>,
    issuer: rcgen::Issuer<'static, rcgen::KeyPair>,
}

impl TestCa {
    pub fn new(name: &str) -> Self {
        let key = rcgen::KeyPair::generate().unwrap();
        let mut params = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
        params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
        params
            .distinguished_name
            .push(rcgen::DnType::CommonName, name);
        let cert = params.self_signed(&key).unwrap();
        Self {
            pem: cert.pem(),
            der: cert.der().clone(),
            issuer: rcgen::Issuer::new(params, key),
        }
    }

    /// Writes the CA certificate to `dir/name`; returns the path.
    pub fn write(&self, dir: &Path, name: &str) -> PathBuf {
        let path = dir.join(name);
        std::fs::write(&path, &self.pem).unwrap();
        path
    }

    /// A server certificate for `localhost` and `127.0.0.1`: the chain
    /// (leaf, then this CA) and its key.
    fn server_cert(&self) -> (Vec<CertificateDer<'static>>, PrivateKeyDer<'static>) {
        let key = rcgen::KeyPair::generate().unwrap();
        let params =
            rcgen::CertificateParams::new(vec!["localhost".to_string(), "127.0.0.1".to_string()])
                .unwrap();
        let cert = params.signed_by(&key, &self.issuer).unwrap();
        (
            vec![cert.der().clone(), self.der.clone()],
            PrivateKeyDer::try_from(key.serialize_der()).unwrap(),
        )
    }

    /// A client certificate this CA signed, written as PEM files
    /// `dir/<name>.crt` and `dir/<name>.key`; returns their paths.
    pub fn client_cert(&self, dir: &Path, name: &str) -> (PathBuf, PathBuf) {
        let key = rcgen::KeyPair::generate().unwrap();
        let mut params = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
        params
            .distinguished_name
            .push(rcgen::DnType::CommonName, name);
        params.extended_key_usages = vec![rcgen::ExtendedKeyUsagePurpose::ClientAuth];
        let cert = params.signed_by(&key, &self.issuer).unwrap();
        let (cert_path, key_path) = (
            dir.join(format!("{name}.crt")),
            dir.join(format!("{name}.key")),
        );
        std::fs::write(&cert_path, cert.pem()).unwrap();
        std::fs::write(&key_path, key.serialize_pem()).unwrap();
        (cert_path, key_path)
    }
}

/// A TLS-terminating proxy to the broker on `127.0.0.1:5672`.
pub struct TlsProxy {
    pub port: u16,
    /// Connections whose handshake completed, and those whose handshake
    /// failed (a client that refused our certificate, or had none).
    handshakes: Arc<AtomicU64>,
    failed: Arc<AtomicU64>,
    accept: tokio::task::JoinHandle<()>,
}

impl TlsProxy {
    /// Serves a certificate `ca` signed; with `clients`, a client must
    /// present a certificate that CA signed.
    pub async fn start(ca: &TestCa, clients: Option<&TestCa>) -> Self {
        switchyard::tls::install_provider();
        let (chain, key) = ca.server_cert();
        let builder = rustls::ServerConfig::builder();
        let builder = match clients {
            Some(client_ca) => {
                let mut roots = rustls::RootCertStore::empty();
                roots.add(client_ca.der.clone()).unwrap();
                let verifier = rustls::server::WebPkiClientVerifier::builder(Arc::new(roots))
                    .build()
                    .unwrap();
                builder.with_client_cert_verifier(verifier)
            }
            None => builder.with_no_client_auth(),
        };
        let config = builder.with_single_cert(chain, key).unwrap();
        let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(config));
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let handshakes = Arc::new(AtomicU64::new(0));
        let failed = Arc::new(AtomicU64::new(0));
        let (done, refused) = (Arc::clone(&handshakes), Arc::clone(&failed));
        let accept = tokio::spawn(async move {
            while let Ok((client, _)) = listener.accept().await {
                let acceptor = acceptor.clone();
                let (done, refused) = (Arc::clone(&done), Arc::clone(&refused));
                tokio::spawn(async move {
                    let mut tls = match acceptor.accept(client).await {
                        Ok(tls) => tls,
                        Err(_) => {
                            refused.fetch_add(1, Ordering::Relaxed);
                            return;
                        }
                    };
                    done.fetch_add(1, Ordering::Relaxed);
                    let Ok(mut upstream) = tokio::net::TcpStream::connect("127.0.0.1:5672").await
                    else {
                        return;
                    };
                    let _ = tokio::io::copy_bidirectional(&mut tls, &mut upstream).await;
                });
            }
        });
        Self {
            port,
            handshakes,
            failed,
            accept,
        }
    }

    /// `amqps://guest:guest@localhost:<port>/%2f`.
    pub fn url(&self) -> String {
        format!("amqps://guest:guest@localhost:{}/%2f", self.port)
    }

    pub fn handshakes(&self) -> u64 {
        self.handshakes.load(Ordering::Relaxed)
    }

    pub fn failed(&self) -> u64 {
        self.failed.load(Ordering::Relaxed)
    }
}

impl Drop for TlsProxy {
    fn drop(&mut self) {
        self.accept.abort();
    }
}
