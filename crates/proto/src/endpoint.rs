//! The one way a service dials another over gRPC: plaintext for `http://`, TLS for `https://`.

use std::time::Duration;

use hyper_util::client::legacy::connect::HttpConnector;
use tonic::transport::{Certificate, Channel, ClientTlsConfig, Endpoint};

/// How often an idle gRPC connection is pinged.
pub const KEEPALIVE_INTERVAL: Duration = Duration::from_secs(1);
/// How long a ping may go unanswered before the connection counts as broken.
pub const KEEPALIVE_TIMEOUT: Duration = Duration::from_secs(2);
/// How long one dial may take: the TCP connect and the TLS handshake together.
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(2);

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

/// A channel to `endpoint` that dials on first use and after every break, each dial (TCP
/// connect and, for `https://`, the TLS handshake) bounded by [`CONNECT_TIMEOUT`].
///
/// tonic's own `connect_lazy` bounds only the TCP connect: a peer behind a partition that
/// accepts the connection and then swallows traffic leaves the TLS handshake, and with it
/// every call on the channel, waiting for good, even after the network heals (keepalive pings
/// start only once HTTP/2 is up). With a custom connector tonic bounds the whole dial.
pub fn lazy_channel(endpoint: &Endpoint) -> Channel {
    let mut tcp = HttpConnector::new();
    tcp.enforce_http(false);
    tcp.set_nodelay(true);
    endpoint
        .clone()
        .connect_timeout(CONNECT_TIMEOUT)
        .connect_with_connector_lazy(tcp)
}
