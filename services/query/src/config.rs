//! The query service's configuration, parsed once from the environment without side effects.

use std::collections::BTreeSet;
use std::net::SocketAddr;
use std::time::Duration;

pub use edge_telemetry::ConfigError;

#[derive(Debug, Clone)]
pub struct Config {
    pub http_addr: SocketAddr,
    pub grpc_addr: SocketAddr,
    /// The upstream Convex deployment (`https://…convex.cloud`, or devconvex).
    pub convex_url: String,
    /// auth's gRPC endpoint, for the JWKS.
    pub auth_grpc_url: String,
    /// Canonical paths whose results do not depend on the caller.
    pub shared_functions: BTreeSet<String>,
    /// `JWT_ISSUER`: the `iss` tokens must carry. `None` (the default): auth's, learnt with
    /// the JWKS (`GetJwks`), so the two services cannot disagree.
    pub issuer: Option<String>,
    /// `JWT_AUDIENCE`: the `aud` tokens must carry; `None`: auth's, as for the issuer.
    pub audience: Option<String>,
    /// Largest WebSocket message or HTTP body accepted.
    pub max_message_bytes: usize,
    /// Unanswered mutations and actions one socket may have in flight (Convex: 1000).
    pub max_pending_requests: usize,
    /// Upstream events queued for one socket before it counts as too slow and is cut off.
    pub socket_queue: usize,
    /// `QUERY_SOCKET_QUEUE_BYTES`: bytes of results queued for one socket (client or page
    /// watch) before it counts as too slow and is cut off (close code 1013, "try again");
    /// one event of any size still goes to an empty queue.
    pub socket_queue_bytes: usize,
    /// `QUERY_MAX_QUERIES_PER_SOCKET`, `QUERY_MAX_QUERY_BYTES`, `QUERY_MAX_SOCKET_QUERY_BYTES`:
    /// what one client socket may hold in its query set.
    pub query_limits: crate::downstream::session::QueryLimits,
    /// `QUERY_MAX_QUERIES_PER_IDENTITY`, `QUERY_MAX_IDENTITY_QUERY_BYTES`,
    /// `QUERY_MAX_REQUESTS_PER_ADDRESS`: what one identity
    /// (signed out: one client address) may hold over all its sockets;
    /// `QUERY_MAX_TOTAL_QUERY_BYTES`: what every identity together may hold.
    pub owner_limits: crate::owners::OwnerLimits,
    /// `QUERY_TRUSTED_PROXIES`: the peers whose `X-Forwarded-For`/`Forwarded` name the client
    /// address (the owner of a signed-out socket's queries); empty: the peer is the client.
    pub trusted_proxies: edge_forwarded::TrustedProxies,
    /// `QUERY_UPSTREAM_MESSAGE_BYTES`: the largest `ModifyQuerySet` sent to Convex; larger
    /// query-set changes (a reconnect's re-subscribe) are split. Under Convex's frame limit
    /// (16 MiB; devconvex's 8 MiB) and at least `QUERY_MAX_QUERY_BYTES` plus room for the
    /// envelope, so every query fits in one.
    pub upstream_message_bytes: usize,
    /// How long an unused upstream connection is kept.
    pub upstream_idle: Duration,
    /// `QUERY_READ_LINGER_SECONDS`: HTTP/gRPC reads with no live subscription subscribe and
    /// keep it this long, so the reads after them (the page's client right after SSR, the next
    /// render) cost Convex nothing. `None` (0, the default): such reads go over HTTP.
    pub read_linger: Option<Duration>,
    /// A client socket that was sent nothing for this long gets a sync-protocol `Ping`
    /// (Convex's heartbeat, 15 s): the official client reconnects after 60 s of silence.
    pub ping_interval: Duration,
    /// An upstream connection that brought nothing from Convex for this long (Convex pings an
    /// idle socket every 15 s) is taken for dead and made again, as convex-js does after 60 s
    /// of server inactivity; a connect that takes longer fails the same way. Without it, a
    /// half-open connection (a NAT or load balancer that dropped the flow) would freeze every
    /// client of that identity on stale data.
    pub upstream_inactivity: Duration,
    /// `SSL_CERT_FILE`: a CA bundle trusted besides the OS roots (Convex over `https://`,
    /// `https://` gRPC to auth).
    pub ssl_cert_file: Option<std::path::PathBuf>,
}

impl Config {
    pub fn local(convex_url: impl Into<String>) -> Self {
        Config {
            http_addr: "127.0.0.1:3210".parse().expect("valid address"),
            grpc_addr: "127.0.0.1:50052".parse().expect("valid address"),
            convex_url: convex_url.into(),
            auth_grpc_url: "http://127.0.0.1:50051".into(),
            shared_functions: BTreeSet::new(),
            issuer: None,
            audience: None,
            max_message_bytes: 8 * 1024 * 1024,
            max_pending_requests: 1000,
            socket_queue: 1024,
            socket_queue_bytes: 16 * 1024 * 1024,
            query_limits: crate::downstream::session::QueryLimits::default(),
            owner_limits: crate::owners::OwnerLimits::default(),
            trusted_proxies: edge_forwarded::TrustedProxies::default(),
            upstream_message_bytes: crate::upstream::state::DEFAULT_MAX_MESSAGE_BYTES,
            upstream_idle: Duration::from_secs(5),
            read_linger: None,
            ping_interval: Duration::from_secs(15),
            upstream_inactivity: Duration::from_secs(60),
            ssl_cert_file: None,
        }
    }

    pub fn from_env(get: impl Fn(&str) -> Option<String>) -> Result<Self, ConfigError> {
        let convex_url = get("CONVEX_URL")
            .ok_or_else(|| ConfigError::new("CONVEX_URL", "required: the Convex deployment URL"))?;
        if !(convex_url.starts_with("http://") || convex_url.starts_with("https://")) {
            return Err(ConfigError::new(
                "CONVEX_URL",
                format!("expected http(s)://…, got `{convex_url}`"),
            ));
        }
        let mut config = Config::local(convex_url.trim_end_matches('/'));
        config.ssl_cert_file = edge_tls::ca_file_from_env(&get);
        for (var, slot) in [
            ("QUERY_HTTP_ADDR", &mut config.http_addr),
            ("QUERY_GRPC_ADDR", &mut config.grpc_addr),
        ] {
            if let Some(v) = get(var) {
                *slot = v
                    .parse()
                    .map_err(|_| ConfigError::new(var, format!("expected host:port, got `{v}`")))?;
            }
        }
        if let Some(v) = get("AUTH_GRPC_URL") {
            if !(v.starts_with("http://") || v.starts_with("https://")) {
                return Err(ConfigError::new(
                    "AUTH_GRPC_URL",
                    format!("expected http://host:port, got `{v}`"),
                ));
            }
            config.auth_grpc_url = v;
        }
        if let Some(v) = get("QUERY_SHARED_FUNCTIONS") {
            config.shared_functions =
                parse_shared(&v).map_err(|e| ConfigError::new("QUERY_SHARED_FUNCTIONS", e))?;
        }
        if let Some(v) = get("QUERY_READ_LINGER_SECONDS") {
            let secs: u64 = v.parse().map_err(|_| {
                ConfigError::new(
                    "QUERY_READ_LINGER_SECONDS",
                    format!("expected a number of seconds, got `{v}`"),
                )
            })?;
            config.read_linger = (secs > 0).then(|| Duration::from_secs(secs));
        }
        for (var, slot) in [
            ("QUERY_SOCKET_QUEUE_BYTES", &mut config.socket_queue_bytes),
            (
                "QUERY_MAX_QUERIES_PER_SOCKET",
                &mut config.query_limits.max_queries,
            ),
            (
                "QUERY_MAX_QUERY_BYTES",
                &mut config.query_limits.max_query_bytes,
            ),
            (
                "QUERY_MAX_SOCKET_QUERY_BYTES",
                &mut config.query_limits.max_socket_bytes,
            ),
            (
                "QUERY_UPSTREAM_MESSAGE_BYTES",
                &mut config.upstream_message_bytes,
            ),
            (
                "QUERY_MAX_QUERIES_PER_IDENTITY",
                &mut config.owner_limits.max_queries,
            ),
            (
                "QUERY_MAX_IDENTITY_QUERY_BYTES",
                &mut config.owner_limits.max_bytes,
            ),
            (
                "QUERY_MAX_REQUESTS_PER_ADDRESS",
                &mut config.owner_limits.max_address_requests,
            ),
            (
                "QUERY_MAX_TOTAL_QUERY_BYTES",
                &mut config.owner_limits.max_total_bytes,
            ),
        ] {
            if let Some(v) = get(var) {
                *slot = v.parse().ok().filter(|n: &usize| *n > 0).ok_or_else(|| {
                    ConfigError::new(var, format!("expected a positive number, got `{v}`"))
                })?;
            }
        }
        // Every query the client side admits must fit in one upstream message.
        if config.upstream_message_bytes < config.query_limits.max_query_bytes + 1024 {
            return Err(ConfigError::new(
                "QUERY_UPSTREAM_MESSAGE_BYTES",
                format!(
                    "must be at least QUERY_MAX_QUERY_BYTES + 1024 ({}), got {}",
                    config.query_limits.max_query_bytes + 1024,
                    config.upstream_message_bytes
                ),
            ));
        }
        config
            .owner_limits
            .check()
            .map_err(|e| ConfigError::new("QUERY_MAX_TOTAL_QUERY_BYTES", e))?;
        if let Some(v) = get("QUERY_TRUSTED_PROXIES") {
            config.trusted_proxies = v
                .parse()
                .map_err(|e| ConfigError::new("QUERY_TRUSTED_PROXIES", e))?;
        }
        config.issuer = get("JWT_ISSUER").filter(|v| !v.is_empty());
        config.audience = get("JWT_AUDIENCE").filter(|v| !v.is_empty());
        Ok(config)
    }
}

/// `messages:list,config:get` → canonical paths.
pub fn parse_shared(list: &str) -> Result<BTreeSet<String>, String> {
    list.split(',')
        .map(str::trim)
        .filter(|s| !s.is_empty())
        .map(|p| edge_convex::UdfPath::parse(p).map(|p| p.as_str().to_owned()))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn with(vars: &[(&str, &str)]) -> Result<Config, ConfigError> {
        Config::from_env(|name| {
            if name == "CONVEX_URL" {
                return Some("http://127.0.0.1:3230".into());
            }
            vars.iter()
                .find(|(k, _)| *k == name)
                .map(|(_, v)| (*v).to_owned())
        })
    }

    #[test]
    fn limits_are_read_from_the_environment() {
        let c = with(&[
            ("QUERY_MAX_QUERIES_PER_SOCKET", "10"),
            ("QUERY_MAX_QUERY_BYTES", "2000"),
            ("QUERY_MAX_SOCKET_QUERY_BYTES", "5000"),
            ("QUERY_UPSTREAM_MESSAGE_BYTES", "4000"),
            ("QUERY_SOCKET_QUEUE_BYTES", "7000"),
            ("QUERY_MAX_QUERIES_PER_IDENTITY", "30"),
            ("QUERY_MAX_IDENTITY_QUERY_BYTES", "9000"),
            ("QUERY_MAX_REQUESTS_PER_ADDRESS", "12"),
            ("QUERY_MAX_TOTAL_QUERY_BYTES", "18000"),
            ("QUERY_TRUSTED_PROXIES", "10.0.0.0/8"),
        ])
        .unwrap();
        assert_eq!(c.owner_limits.max_total_bytes, 18000);
        assert_eq!(c.owner_limits.max_address_requests, 12);
        assert_eq!(c.owner_limits.max_queries, 30);
        assert_eq!(c.owner_limits.max_bytes, 9000);
        assert!(c.trusted_proxies.contains("10.1.2.3".parse().unwrap()));
        assert_eq!(c.query_limits.max_queries, 10);
        assert_eq!(c.query_limits.max_query_bytes, 2000);
        assert_eq!(c.query_limits.max_socket_bytes, 5000);
        assert_eq!(c.upstream_message_bytes, 4000);
        assert_eq!(c.socket_queue_bytes, 7000);
    }

    #[test]
    fn bad_limits_are_refused_with_the_variable_named() {
        for (var, value) in [
            ("QUERY_MAX_QUERIES_PER_SOCKET", "0"),
            ("QUERY_SOCKET_QUEUE_BYTES", "lots"),
            ("QUERY_UPSTREAM_MESSAGE_BYTES", "1048576"),
            ("QUERY_MAX_QUERIES_PER_IDENTITY", "-1"),
            ("QUERY_MAX_IDENTITY_QUERY_BYTES", "0"),
            ("QUERY_MAX_TOTAL_QUERY_BYTES", "0"),
            // Less than twice one identity's 32 MiB: one identity could hold all of it.
            ("QUERY_MAX_TOTAL_QUERY_BYTES", "50000000"),
            ("QUERY_TRUSTED_PROXIES", "10.0.0.0/40"),
        ] {
            let error = with(&[(var, value)]).unwrap_err().to_string();
            assert!(error.contains(var), "{var}={value}: {error}");
        }
    }
}
