//! The client's address behind proxies, for every listener that keys something on it (the
//! gateway's rate limits, the query service's per-address query budget).
//!
//! `X-Forwarded-For` and `Forwarded` are honoured only when the connection comes from a peer
//! in the trusted networks; otherwise the peer itself is the client, whatever the headers say.
//! Through a chain of proxies the client is the rightmost hop that is not a trusted proxy
//! (every proxy appends the address it was reached from, so the hops left of the first
//! untrusted one are the client's own, unverifiable, claims).

use std::net::IpAddr;
use std::str::FromStr;

use ipnet::IpNet;

/// The networks whose forwarding headers are believed (`GATEWAY_TRUSTED_PROXIES`,
/// `QUERY_TRUSTED_PROXIES`).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct TrustedProxies(Vec<IpNet>);

impl FromStr for TrustedProxies {
    type Err = String;

    /// Comma-separated CIDRs (`10.0.0.0/8, fd00::/8`); a bare address is a /32 (/128).
    fn from_str(s: &str) -> Result<Self, String> {
        let mut nets = Vec::new();
        for part in s.split(',').map(str::trim).filter(|p| !p.is_empty()) {
            let net = match part.parse::<IpNet>() {
                Ok(net) => net,
                Err(_) => part
                    .parse::<IpAddr>()
                    .map(IpNet::from)
                    .map_err(|_| format!("expected CIDRs such as 10.0.0.0/8, got `{part}`"))?,
            };
            nets.push(net.trunc());
        }
        Ok(TrustedProxies(nets))
    }
}

impl TrustedProxies {
    pub fn contains(&self, ip: IpAddr) -> bool {
        let ip = canonical(ip);
        self.0.iter().any(|net| net.contains(&ip))
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// The client behind `peer` (the connection's remote address). `forwarded` and
    /// `x_forwarded_for` are every line of those headers, in order; they are read only when
    /// `peer` is trusted. The hops are `Forwarded`'s `for=` when that header is present, else
    /// `X-Forwarded-For`'s; the walk goes right to left while the hop it stands on is trusted,
    /// and stops at anything unparsable (`unknown`, obfuscated names).
    pub fn client<'a>(
        &self,
        peer: IpAddr,
        forwarded: impl IntoIterator<Item = &'a str>,
        x_forwarded_for: impl IntoIterator<Item = &'a str>,
    ) -> IpAddr {
        let mut client = canonical(peer);
        if !self.contains(client) {
            return client;
        }
        let forwarded: Vec<&str> = forwarded.into_iter().collect();
        let hops: Vec<String> = if forwarded.is_empty() {
            x_forwarded_for
                .into_iter()
                .flat_map(|v| v.split(','))
                .map(|hop| hop.trim().to_owned())
                .filter(|hop| !hop.is_empty())
                .collect()
        } else {
            forwarded_params(forwarded, "for")
        };
        for hop in hops.iter().rev() {
            match parse_hop(hop) {
                Some(ip) if self.contains(client) => client = ip,
                _ => break,
            }
        }
        client
    }
}

/// IPv4-mapped IPv6 addresses (`::ffff:1.2.3.4`, from dual-stack listeners) as IPv4.
pub fn canonical(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V6(v6) => v6
            .to_ipv4_mapped()
            .map(IpAddr::V4)
            .unwrap_or(IpAddr::V6(v6)),
        v4 => v4,
    }
}

/// The client as Better Auth keys it (`@better-auth/core` `normalizeIP`, its default
/// `ipv6Subnet` 64): an IPv6 address stands for its /64 network, since one host usually holds
/// a whole /64 and could otherwise take a new address per request. Returns the network address
/// (the rest of the bits zero); IPv4 (and IPv4-mapped IPv6) stays as it is.
pub fn client_network(ip: IpAddr) -> IpAddr {
    match canonical(ip) {
        IpAddr::V6(v6) => {
            let bits = u128::from(v6) & !((1u128 << 64) - 1);
            IpAddr::V6(std::net::Ipv6Addr::from(bits))
        }
        v4 => v4,
    }
}

/// [`client_network`] written as Better Auth writes it, for the keys of its `rateLimit` table
/// and the session's `ipAddress`: IPv4 dotted, IPv6 as eight groups of four lowercase hex
/// digits (`2001:0db8:0001:08c1:0000:0000:0000:0000`).
pub fn better_auth_ip(ip: IpAddr) -> String {
    match client_network(ip) {
        IpAddr::V6(v6) => v6
            .segments()
            .iter()
            .map(|g| format!("{g:04x}"))
            .collect::<Vec<_>>()
            .join(":"),
        v4 => v4.to_string(),
    }
}

/// One hop of `X-Forwarded-For` (`1.2.3.4`, `1.2.3.4:5678`, `::1`, `[::1]:5678`) or of
/// `Forwarded`'s `for=` (the same, quoted); `None` for `unknown` and obfuscated names.
pub fn parse_hop(hop: &str) -> Option<IpAddr> {
    let hop = hop.trim().trim_matches('"');
    if let Ok(ip) = hop.parse::<IpAddr>() {
        return Some(canonical(ip));
    }
    if let Some(rest) = hop.strip_prefix('[') {
        return rest.split(']').next()?.parse().ok().map(canonical);
    }
    let (host, port) = hop.rsplit_once(':')?;
    port.parse::<u16>().ok()?;
    host.parse::<std::net::Ipv4Addr>().ok().map(IpAddr::V4)
}

/// The values of parameter `name` in every element of the `Forwarded` header lines, in order
/// (RFC 7239).
pub fn forwarded_params<'a>(lines: impl IntoIterator<Item = &'a str>, name: &str) -> Vec<String> {
    lines
        .into_iter()
        .flat_map(|v| v.split(','))
        .filter_map(|element| {
            element.split(';').find_map(|pair| {
                let (key, value) = pair.split_once('=')?;
                key.trim()
                    .eq_ignore_ascii_case(name)
                    .then(|| value.trim().trim_matches('"').to_owned())
            })
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn client(peer: &str, forwarded: &[&str], xff: &[&str], proxies: &str) -> IpAddr {
        let proxies: TrustedProxies = proxies.parse().unwrap();
        proxies.client(
            peer.parse().unwrap(),
            forwarded.iter().copied(),
            xff.iter().copied(),
        )
    }

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    #[test]
    fn ipv6_clients_are_their_64_network_as_better_auth_keys_them() {
        assert_eq!(
            better_auth_ip(ip("2001:db8:1:8c1::6")),
            "2001:0db8:0001:08c1:0000:0000:0000:0000"
        );
        assert_eq!(
            client_network(ip("2001:db8:1:8c1:ffff::1")),
            client_network(ip("2001:db8:1:8c1::2"))
        );
        assert_ne!(
            client_network(ip("2001:db8:1:8c2::1")),
            client_network(ip("2001:db8:1:8c1::1"))
        );
        assert_eq!(better_auth_ip(ip("::ffff:192.0.2.7")), "192.0.2.7");
        assert_eq!(better_auth_ip(ip("192.0.2.7")), "192.0.2.7");
    }

    #[test]
    fn headers_from_untrusted_peers_are_ignored() {
        assert_eq!(
            client("203.0.113.9", &["for=2.2.2.2"], &["1.1.1.1"], "10.0.0.0/8"),
            ip("203.0.113.9")
        );
        assert_eq!(client("10.0.0.1", &[], &["1.1.1.1"], ""), ip("10.0.0.1"));
    }

    #[test]
    fn the_rightmost_untrusted_hop_is_the_client() {
        assert_eq!(
            client(
                "10.0.0.2",
                &[],
                &["6.6.6.6, 198.51.100.7", "10.0.0.3"],
                "10.0.0.0/8"
            ),
            ip("198.51.100.7")
        );
        // `Forwarded` wins over `X-Forwarded-For`; a mapped peer is its IPv4 address.
        assert_eq!(
            client(
                "::ffff:10.0.0.2",
                &["for=6.6.6.6, for=\"[2001:db8::1]:4711\";proto=https"],
                &["5.5.5.5"],
                "10.0.0.0/8"
            ),
            ip("2001:db8::1")
        );
        assert_eq!(
            client("10.0.0.2", &[], &["10.0.0.9"], "10.0.0.0/8"),
            ip("10.0.0.9")
        );
        assert_eq!(
            client("10.0.0.2", &[], &["1.1.1.1, unknown"], "10.0.0.0/8"),
            ip("10.0.0.2")
        );
    }

    #[test]
    fn trusted_proxies_parse() {
        assert!(
            "10.0.0.0/8, ::1, fd00::/8"
                .parse::<TrustedProxies>()
                .is_ok()
        );
        assert!("10.0.0.0/33".parse::<TrustedProxies>().is_err());
        assert!("nope".parse::<TrustedProxies>().is_err());
    }
}
