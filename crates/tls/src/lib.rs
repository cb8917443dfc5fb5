//! The one trust store for every outbound TLS connection: the OS roots plus the CA bundle named by `SSL_CERT_FILE`.
//!
//! Every client that speaks TLS (reqwest to Convex and JWKS, the WebSocket to Convex, sqlx to
//! Postgres, the Redis client, tonic between services) takes its roots from a [`Trust`], so an
//! operator adds a private CA in one place and it holds for all of them. rustls runs on aws-lc-rs
//! (already in the tree for the JWT keys); OpenSSL is never linked.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use base64::Engine as _;
use rustls::RootCertStore;
use rustls::pki_types::CertificateDer;
use rustls::pki_types::pem::PemObject as _;

/// The environment variable naming an extra CA bundle (PEM, one or more certificates).
pub const SSL_CERT_FILE: &str = "SSL_CERT_FILE";

/// Where Linux distributions keep their CA bundle, for when `SSL_CERT_FILE` in the environment
/// hides the OS store from `rustls-native-certs` (it reads that file instead, not as well).
const OS_BUNDLES: &[&str] = &[
    "/etc/ssl/certs/ca-certificates.crt",
    "/etc/pki/tls/certs/ca-bundle.crt",
    "/etc/ssl/ca-bundle.pem",
    "/etc/ssl/cert.pem",
];

#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    #[error("cannot read the CA bundle {path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("the CA bundle {path} holds no usable PEM certificate")]
    Empty { path: PathBuf },
    #[error("no trusted root certificate: the OS store is empty and SSL_CERT_FILE is not set")]
    NoRoots,
    #[error("SSL_CERT_FILE is set but empty: unset it, or name a PEM bundle of CA certificates")]
    EmptyVariable,
    #[error("tls configuration: {0}")]
    Rustls(#[from] rustls::Error),
}

/// Installs aws-lc-rs as the process's rustls provider, for the clients (the Redis client) that
/// build their configuration from the process default. Idempotent.
pub fn install_provider() {
    // Err means a provider is already installed, which is what we want.
    let _ = rustls::crypto::aws_lc_rs::default_provider().install_default();
}

/// Reads `SSL_CERT_FILE` from a service's environment (empty counts as unset).
pub fn ca_file_from_env(get: impl Fn(&str) -> Option<String>) -> Option<PathBuf> {
    get(SSL_CERT_FILE)
        .filter(|v| !v.trim().is_empty())
        .map(PathBuf::from)
}

/// The trusted roots of one service: loaded once at start-up, shared by all its clients.
#[derive(Clone)]
pub struct Trust {
    roots: Arc<RootCertStore>,
    certs: Arc<Vec<CertificateDer<'static>>>,
    client: Arc<rustls::ClientConfig>,
}

impl std::fmt::Debug for Trust {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Trust")
            .field("roots", &self.roots.len())
            .finish()
    }
}

impl Trust {
    /// The OS roots plus every certificate in `ca_file` (the service's `SSL_CERT_FILE`).
    /// A named file that cannot be read or holds no certificate is an error, not a silent skip.
    pub fn load(ca_file: Option<&Path>) -> Result<Trust, TlsError> {
        install_provider();
        // The OS-roots loader reads the variable itself, and an empty one would only warn
        // (and later make every TLS client fail to read a file named '').
        if std::env::var_os(SSL_CERT_FILE).is_some_and(|v| v.is_empty()) {
            return Err(TlsError::EmptyVariable);
        }
        let mut certs = os_roots();
        let os = certs.len();
        if let Some(path) = ca_file {
            let pem = std::fs::read(path).map_err(|source| TlsError::Read {
                path: path.to_owned(),
                source,
            })?;
            let extra: Vec<_> = CertificateDer::pem_slice_iter(&pem)
                .filter_map(Result::ok)
                .collect();
            if extra.is_empty() {
                return Err(TlsError::Empty {
                    path: path.to_owned(),
                });
            }
            certs.extend(extra);
        }
        let mut roots = RootCertStore::empty();
        let (added, ignored) = roots.add_parsable_certificates(certs.iter().cloned());
        if added == 0 {
            return Err(TlsError::NoRoots);
        }
        tracing::debug!(
            os_roots = os,
            roots = added,
            ignored,
            ca_file = ?ca_file,
            "tls trust store loaded"
        );
        let roots = Arc::new(roots);
        let client = rustls::ClientConfig::builder_with_provider(Arc::new(
            rustls::crypto::aws_lc_rs::default_provider(),
        ))
        .with_safe_default_protocol_versions()?
        .with_root_certificates(roots.clone())
        .with_no_client_auth();
        Ok(Trust {
            roots,
            certs: Arc::new(certs),
            client: Arc::new(client),
        })
    }

    /// Trusts nothing: for a client that is known to make no TLS connection.
    pub fn empty() -> Trust {
        let roots = Arc::new(RootCertStore::empty());
        let client = rustls::ClientConfig::builder_with_provider(Arc::new(
            rustls::crypto::aws_lc_rs::default_provider(),
        ))
        .with_safe_default_protocol_versions()
        .expect("aws-lc-rs supports the default protocol versions")
        .with_root_certificates(roots.clone())
        .with_no_client_auth();
        Trust {
            roots,
            certs: Arc::new(Vec::new()),
            client: Arc::new(client),
        }
    }

    /// [`Trust::load`] from a service's environment (`SSL_CERT_FILE`).
    pub fn from_env(get: impl Fn(&str) -> Option<String>) -> Result<Trust, TlsError> {
        Trust::load(ca_file_from_env(get).as_deref())
    }

    pub fn roots(&self) -> Arc<RootCertStore> {
        self.roots.clone()
    }

    /// A rustls client configuration (no ALPN: HTTP/1.1 and WebSocket) over these roots.
    pub fn client_config(&self) -> Arc<rustls::ClientConfig> {
        self.client.clone()
    }

    /// A reqwest client builder whose TLS trusts exactly these roots.
    pub fn http_client(&self) -> reqwest::ClientBuilder {
        reqwest::Client::builder().tls_backend_preconfigured((*self.client).clone())
    }

    /// The same roots as one PEM bundle, for the clients that take roots only as PEM (sqlx,
    /// the Redis client, tonic).
    pub fn pem_bundle(&self) -> Vec<u8> {
        let engine = base64::engine::general_purpose::STANDARD;
        let mut out = String::new();
        for cert in self.certs.iter() {
            out.push_str("-----BEGIN CERTIFICATE-----\n");
            let b64 = engine.encode(cert.as_ref());
            for line in b64.as_bytes().chunks(64) {
                out.push_str(std::str::from_utf8(line).unwrap_or_default());
                out.push('\n');
            }
            out.push_str("-----END CERTIFICATE-----\n");
        }
        out.into_bytes()
    }
}

/// Where Linux distributions keep their CAs one per file (hashed names for OpenSSL's
/// `-CApath`): a CA an administrator installed only there is not in the bundle file.
const OS_CERT_DIRS: &[&str] = &["/etc/ssl/certs", "/etc/pki/tls/certs"];

/// The OS store. `rustls-native-certs` reads `SSL_CERT_FILE`/`SSL_CERT_DIR` from the process
/// environment instead of the OS store when they are set; the bundle is meant to add to the OS
/// roots, so then the distribution's bundle file and certificate directory are read as well,
/// as that crate reads them when the variables are unset.
fn os_roots() -> Vec<CertificateDer<'static>> {
    let native = rustls_native_certs::load_native_certs();
    for error in &native.errors {
        tracing::warn!(%error, "cannot load some OS root certificates");
    }
    let mut certs = native.certs;
    let env_overrides =
        std::env::var_os(SSL_CERT_FILE).is_some() || std::env::var_os("SSL_CERT_DIR").is_some();
    if env_overrides {
        let bundle = OS_BUNDLES.iter().map(Path::new).find(|p| p.is_file());
        let dir = OS_CERT_DIRS.iter().map(Path::new).find(|p| p.is_dir());
        certs.extend(distribution_roots(bundle, dir));
    }
    dedup(certs)
}

/// Every certificate of the distribution's `bundle` file and `dir` (each file once, however
/// many links name it). Files that are not PEM certificates are skipped: the directory holds
/// other things too.
fn distribution_roots(bundle: Option<&Path>, dir: Option<&Path>) -> Vec<CertificateDer<'static>> {
    let found = rustls_native_certs::load_certs_from_paths(bundle, dir);
    for error in &found.errors {
        tracing::debug!(%error, "skipped a file of the OS certificate store");
    }
    found.certs
}

/// `certs` in order, each once (the bundle file and the directory hold the same public CAs).
fn dedup(certs: Vec<CertificateDer<'static>>) -> Vec<CertificateDer<'static>> {
    let mut seen = std::collections::HashSet::new();
    certs
        .into_iter()
        .filter(|c| seen.insert(c.as_ref().to_vec()))
        .collect()
}

/// An error with its sources (`a: b: c`): client libraries put the TLS reason (an unknown
/// issuer, a wrong name) in a source that their own `Display` leaves out.
pub fn describe(error: &(dyn std::error::Error + 'static)) -> String {
    let mut out = error.to_string();
    let mut source = error.source();
    while let Some(e) = source {
        let text = e.to_string();
        if !out.contains(&text) {
            out.push_str(": ");
            out.push_str(&text);
        }
        source = e.source();
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_named_bundle_that_is_missing_or_empty_is_an_error() {
        let missing = Trust::load(Some(Path::new("/nonexistent/ca.pem"))).unwrap_err();
        assert!(matches!(missing, TlsError::Read { .. }), "{missing}");
        let dir = std::env::temp_dir().join(format!("edge-tls-empty-{}.pem", std::process::id()));
        std::fs::write(&dir, "not a certificate").unwrap();
        let empty = Trust::load(Some(&dir)).unwrap_err();
        std::fs::remove_file(&dir).ok();
        assert!(matches!(empty, TlsError::Empty { .. }), "{empty}");
    }

    #[test]
    fn the_pem_bundle_round_trips_every_root() {
        let trust = Trust::load(None).unwrap();
        let back: Vec<_> = CertificateDer::pem_slice_iter(&trust.pem_bundle())
            .collect::<Result<_, _>>()
            .unwrap();
        assert_eq!(back.len(), trust.certs.len());
        assert!(back.iter().zip(trust.certs.iter()).all(|(a, b)| a == b));
    }

    /// A CA installed only as a hashed file in the certificate directory (as Debian's
    /// `update-ca-certificates` or an administrator's `openssl rehash` leaves it) is trusted
    /// like one in the bundle, and each certificate is kept once.
    #[test]
    fn the_distribution_directory_adds_its_hashed_files_once() {
        let dir = std::env::temp_dir().join(format!("edge-tls-certs-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let bundle = Trust::load(None).unwrap().pem_bundle();
        let first: Vec<_> = CertificateDer::pem_slice_iter(&bundle)
            .take(2)
            .collect::<Result<_, _>>()
            .unwrap();
        let pem = |c: &CertificateDer<'_>| {
            let b64 = base64::engine::general_purpose::STANDARD.encode(c.as_ref());
            format!("-----BEGIN CERTIFICATE-----\n{b64}\n-----END CERTIFICATE-----\n")
        };
        std::fs::write(dir.join("0a1b2c3d.0"), pem(&first[0])).unwrap();
        std::fs::write(dir.join("bundle.crt"), pem(&first[0]) + &pem(&first[1])).unwrap();
        std::fs::write(dir.join("README"), "not a certificate").unwrap();
        std::fs::create_dir_all(dir.join("java")).unwrap();

        let only_dir = distribution_roots(None, Some(&dir));
        assert!(only_dir.contains(&first[0]), "the hashed file is read");
        assert!(only_dir.contains(&first[1]));
        let both = dedup(distribution_roots(
            Some(&dir.join("bundle.crt")),
            Some(&dir),
        ));
        assert_eq!(both, first, "each certificate once, in order");
        std::fs::remove_dir_all(&dir).ok();
    }
}
