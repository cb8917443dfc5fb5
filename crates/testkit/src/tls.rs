//! TLS for tests: a throwaway CA with server certificates (rcgen), and a TLS-terminating relay
//! that puts any plaintext test server behind `https://`/`wss://` (or gRPC over TLS).

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;

use rcgen::{
    BasicConstraints, CertificateParams, CertifiedIssuer, DnType, IsCa, KeyPair, KeyUsagePurpose,
};
use rustls::pki_types::pem::PemObject as _;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};

use crate::TempDir;

/// A CA made for one test, its certificate written to `ca_file` (what `SSL_CERT_FILE` names).
pub struct TestCa {
    issuer: CertifiedIssuer<'static, KeyPair>,
    dir: TempDir,
    pub ca_file: PathBuf,
}

impl std::fmt::Debug for TestCa {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TestCa")
            .field("ca_file", &self.ca_file)
            .finish()
    }
}

/// A server certificate and key issued by a [`TestCa`], as PEM and as files.
#[derive(Debug, Clone)]
pub struct ServerCert {
    pub cert_pem: String,
    pub key_pem: String,
    pub cert_file: PathBuf,
    pub key_file: PathBuf,
}

impl TestCa {
    pub fn new() -> TestCa {
        let mut params = CertificateParams::new(Vec::<String>::new()).expect("ca params");
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params
            .distinguished_name
            .push(DnType::CommonName, "convex-edge test ca");
        params.key_usages = vec![
            KeyUsagePurpose::KeyCertSign,
            KeyUsagePurpose::CrlSign,
            KeyUsagePurpose::DigitalSignature,
        ];
        let key = KeyPair::generate().expect("ca key");
        let issuer = CertifiedIssuer::self_signed(params, key).expect("self-signed ca");
        let dir = TempDir::default();
        let ca_file = dir.path().join("ca.pem");
        std::fs::write(&ca_file, issuer.pem()).expect("write ca.pem");
        TestCa {
            issuer,
            dir,
            ca_file,
        }
    }

    /// A server certificate for `names` (DNS names or IP addresses), written beside the CA.
    pub fn issue(&self, name: &str, names: &[&str]) -> ServerCert {
        let names: Vec<String> = names.iter().map(|n| (*n).to_owned()).collect();
        let mut params = CertificateParams::new(names).expect("server params");
        params
            .distinguished_name
            .push(DnType::CommonName, name.to_owned());
        let key = KeyPair::generate().expect("server key");
        let cert = params
            .signed_by(&key, &self.issuer)
            .expect("sign server cert");
        let (cert_pem, key_pem) = (cert.pem(), key.serialize_pem());
        let cert_file = self.dir.path().join(format!("{name}.pem"));
        let key_file = self.dir.path().join(format!("{name}.key"));
        std::fs::write(&cert_file, &cert_pem).expect("write cert");
        std::fs::write(&key_file, &key_pem).expect("write key");
        ServerCert {
            cert_pem,
            key_pem,
            cert_file,
            key_file,
        }
    }
}

impl Default for TestCa {
    fn default() -> Self {
        TestCa::new()
    }
}

/// A TLS-terminating relay on 127.0.0.1 in front of a plaintext server: each accepted
/// connection is decrypted and copied both ways to `upstream`. Stops when dropped.
#[derive(Debug)]
pub struct TlsRelay {
    pub addr: SocketAddr,
    task: tokio::task::JoinHandle<()>,
}

impl TlsRelay {
    /// `alpn`: the protocols the relay offers (`["h2"]` in front of a gRPC server; empty for
    /// HTTP/1.1 and WebSocket).
    pub async fn start(cert: &ServerCert, upstream: SocketAddr, alpn: &[&str]) -> TlsRelay {
        let chain: Vec<CertificateDer<'static>> =
            CertificateDer::pem_slice_iter(cert.cert_pem.as_bytes())
                .collect::<Result<_, _>>()
                .expect("cert pem");
        let key = PrivateKeyDer::from_pem_slice(cert.key_pem.as_bytes()).expect("key pem");
        let mut config = rustls::ServerConfig::builder_with_provider(Arc::new(
            rustls::crypto::aws_lc_rs::default_provider(),
        ))
        .with_safe_default_protocol_versions()
        .expect("protocol versions")
        .with_no_client_auth()
        .with_single_cert(chain, key)
        .expect("server config");
        config.alpn_protocols = alpn.iter().map(|p| p.as_bytes().to_vec()).collect();
        let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(config));
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind relay");
        let addr = listener.local_addr().expect("relay addr");
        let task = tokio::spawn(async move {
            while let Ok((socket, _)) = listener.accept().await {
                let acceptor = acceptor.clone();
                tokio::spawn(async move {
                    // A client that refuses our certificate ends its handshake here.
                    let Ok(mut tls) = acceptor.accept(socket).await else {
                        return;
                    };
                    let Ok(mut plain) = tokio::net::TcpStream::connect(upstream).await else {
                        return;
                    };
                    let _ = tokio::io::copy_bidirectional(&mut tls, &mut plain).await;
                });
            }
        });
        TlsRelay { addr, task }
    }
}

impl Drop for TlsRelay {
    fn drop(&mut self) {
        self.task.abort();
    }
}
