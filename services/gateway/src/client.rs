//! Who is asking: the client's address and scheme as the gateway may believe them.
//!
//! `X-Forwarded-For`, `Forwarded` and `X-Forwarded-Proto`/`-Host` are honoured only when the
//! connection comes from a peer in `GATEWAY_TRUSTED_PROXIES`; otherwise the peer itself is the
//! client, whatever the headers say. The address walk (the rightmost hop that is not a trusted
//! proxy) is `edge_forwarded`'s, shared with the query service.

use std::net::IpAddr;

use actix_web::HttpRequest;
use actix_web::http::header;

pub use edge_forwarded::TrustedProxies;
use edge_forwarded::{canonical, forwarded_params as params};

/// The values of parameter `name` in every `Forwarded` element, in order (RFC 7239).
fn forwarded_params(req: &HttpRequest, name: &str) -> Vec<String> {
    params(header_lines(req, header::FORWARDED.as_str()), name)
}

/// Every line of header `name` that is text.
fn header_lines<'a>(req: &'a HttpRequest, name: &str) -> Vec<&'a str> {
    req.headers()
        .get_all(name)
        .filter_map(|v| v.to_str().ok())
        .collect()
}

/// The client as the gateway may believe it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClientView {
    /// The client's address; `None` only without a peer address (never over TCP).
    pub ip: Option<IpAddr>,
    /// Whether the peer is a trusted proxy (its forwarding headers were read).
    pub via_trusted_proxy: bool,
    /// `https` or `http`: the trusted proxy's word, else the connection's own scheme.
    pub scheme: String,
    /// The host the client asked for: a trusted proxy's `X-Forwarded-Host`/`Forwarded`
    /// `host=`, else `Host`.
    pub host: String,
}

impl ClientView {
    pub fn of(req: &HttpRequest, proxies: &TrustedProxies) -> ClientView {
        let peer = req.peer_addr().map(|a| canonical(a.ip()));
        let trusted = peer.is_some_and(|p| proxies.contains(p));
        let own_host = || {
            req.headers()
                .get(header::HOST)
                .and_then(|v| v.to_str().ok())
                .map(str::to_owned)
                .unwrap_or_else(|| req.app_config().host().to_owned())
        };
        let own_scheme = || {
            if req.app_config().secure() {
                "https".to_owned()
            } else {
                "http".to_owned()
            }
        };
        if !trusted {
            return ClientView {
                ip: peer,
                via_trusted_proxy: false,
                scheme: own_scheme(),
                host: own_host(),
            };
        }
        let client = peer.map(|peer| {
            proxies.client(
                peer,
                header_lines(req, header::FORWARDED.as_str()),
                header_lines(req, "x-forwarded-for"),
            )
        });
        let header_value = |name: &str| {
            req.headers()
                .get(name)
                .and_then(|v| v.to_str().ok())
                .and_then(|v| v.split(',').next())
                .map(|v| v.trim().to_owned())
                .filter(|v| !v.is_empty())
        };
        // The nearest proxy's word: the last `Forwarded` element, else `X-Forwarded-*`.
        let scheme = forwarded_params(req, "proto")
            .pop()
            .or_else(|| header_value("x-forwarded-proto"))
            .map(|s| s.to_ascii_lowercase())
            .filter(|s| s == "http" || s == "https")
            .unwrap_or_else(own_scheme);
        let host = forwarded_params(req, "host")
            .pop()
            .or_else(|| header_value("x-forwarded-host"))
            .unwrap_or_else(own_host);
        ClientView {
            ip: client,
            via_trusted_proxy: true,
            scheme,
            host,
        }
    }

    pub fn is_https(&self) -> bool {
        self.scheme == "https"
    }

    /// `scheme://host`, the gateway's own origin as the client reached it.
    pub fn origin(&self) -> String {
        format!("{}://{}", self.scheme, self.host)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use actix_web::test::TestRequest;

    fn view(peer: &str, headers: &[(&str, &str)], proxies: &str) -> ClientView {
        let mut req = TestRequest::default().peer_addr(peer.parse().unwrap());
        for (k, v) in headers {
            req = req.append_header((*k, *v));
        }
        ClientView::of(&req.to_http_request(), &proxies.parse().unwrap())
    }

    fn ip(s: &str) -> Option<IpAddr> {
        Some(s.parse().unwrap())
    }

    #[test]
    fn headers_from_untrusted_peers_are_ignored() {
        let v = view(
            "203.0.113.9:5000",
            &[
                ("x-forwarded-for", "1.1.1.1"),
                ("forwarded", "for=2.2.2.2;proto=https"),
                ("x-forwarded-proto", "https"),
                ("host", "site.example"),
            ],
            "10.0.0.0/8",
        );
        assert_eq!(v.ip, ip("203.0.113.9"));
        assert!(!v.is_https());
        assert_eq!(v.origin(), "http://site.example");
        // No trusted proxies at all: the same.
        let v = view("10.0.0.1:5000", &[("x-forwarded-for", "1.1.1.1")], "");
        assert_eq!(v.ip, ip("10.0.0.1"));
    }

    #[test]
    fn the_rightmost_untrusted_hop_is_the_client() {
        // nginx appended the client's address to the one the client made up.
        let v = view(
            "10.0.0.2:5000",
            &[("x-forwarded-for", "6.6.6.6, 198.51.100.7, 10.0.0.3")],
            "10.0.0.0/8",
        );
        assert_eq!(v.ip, ip("198.51.100.7"));
        let v = view(
            "[::ffff:10.0.0.2]:5000",
            &[
                (
                    "forwarded",
                    "for=6.6.6.6, for=\"[2001:db8::1]:4711\";proto=https",
                ),
                ("x-forwarded-for", "5.5.5.5"),
            ],
            "10.0.0.0/8",
        );
        assert_eq!(v.ip, ip("2001:db8::1"));
        assert!(v.is_https());
        // Every hop trusted: the leftmost.
        let v = view(
            "10.0.0.2:1",
            &[("x-forwarded-for", "10.0.0.9")],
            "10.0.0.0/8",
        );
        assert_eq!(v.ip, ip("10.0.0.9"));
        // Garbage stops the walk at the proxy that wrote it.
        let v = view(
            "10.0.0.2:1",
            &[("x-forwarded-for", "1.1.1.1, unknown")],
            "10.0.0.0/8",
        );
        assert_eq!(v.ip, ip("10.0.0.2"));
    }
}
