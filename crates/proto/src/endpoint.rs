//! The one way a service dials another over gRPC: plaintext for `http://`, TLS for `https://`.

use std::time::Duration;

use tonic::transport::{Certificate, ClientTlsConfig, Endpoint};

/// How often an idle gRPC connection is pinged.
pub const KEEPALIVE_INTERVAL: Duration = Duration::from_secs(1);
/// How long a ping may go unanswered before the connection counts as broken.
pub const KEEPALIVE_TIMEOUT: Duration = Duration::from_secs(2);

/// An endpoint for `url`; an `https://` URL gets TLS whose roots are `trust` (the OS roots plus
/// `SSL_CERT_FILE`), with the URL's host as the name the certificate must carry.
///
/// HTTP/2 keepalive pings every second, with a 2 s timeout, also while idle: a partition that
/// swallows traffic (no reset, no FIN) breaks the connection within about 3 s, so a stream
/// that carries nothing for long stretches (the session log) errors instead of hanging, and
/// its reader stops trusting what it caches.
pub fn endpoint(url: &str, trust: &edge_tls::Trust) -> Result<Endpoint, tonic::transport::Error> {
    let endpoint = Endpoint::from_shared(url.to_owned())?
        .http2_keep_alive_interval(KEEPALIVE_INTERVAL)
        .keep_alive_timeout(KEEPALIVE_TIMEOUT)
        .keep_alive_while_idle(true);
    if url.starts_with("https://") {
        let tls = ClientTlsConfig::new().ca_certificate(Certificate::from_pem(trust.pem_bundle()));
        endpoint.tls_config(tls)
    } else {
        Ok(endpoint)
    }
}
