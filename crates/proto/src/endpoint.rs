//! The one way a service dials another over gRPC: plaintext for `http://`, TLS for `https://`.

use tonic::transport::{Certificate, ClientTlsConfig, Endpoint};

/// An endpoint for `url`; an `https://` URL gets TLS whose roots are `trust` (the OS roots plus
/// `SSL_CERT_FILE`), with the URL's host as the name the certificate must carry.
pub fn endpoint(url: &str, trust: &edge_tls::Trust) -> Result<Endpoint, tonic::transport::Error> {
    let endpoint = Endpoint::from_shared(url.to_owned())?;
    if url.starts_with("https://") {
        let tls = ClientTlsConfig::new().ca_certificate(Certificate::from_pem(trust.pem_bundle()));
        endpoint.tls_config(tls)
    } else {
        Ok(endpoint)
    }
}
