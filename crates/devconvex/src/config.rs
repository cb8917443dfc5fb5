//! devconvex's configuration.

use std::net::SocketAddr;
use std::time::Duration;

pub use edge_telemetry::ConfigError;

#[derive(Debug, Clone)]
pub struct Config {
    pub addr: SocketAddr,
    /// The JSON `convex-edge convex-auth-config` prints; `None`: every token is rejected.
    pub auth_config: Option<String>,
    /// Largest WebSocket frame or HTTP body accepted.
    pub max_message_bytes: usize,
    /// A Ping goes out after this long without any other message.
    pub ping_interval: Duration,
    /// A transition whose text is longer goes as `TransitionChunk`s of at most this many
    /// bytes (Convex's 5 MB, `edge_convex::sync::TRANSITION_CHUNK_BYTES`; smaller in tests).
    pub transition_chunk_bytes: usize,
}

impl Config {
    pub fn local() -> Self {
        Config {
            addr: "127.0.0.1:3230".parse().expect("valid address"),
            auth_config: None,
            max_message_bytes: 8 * 1024 * 1024,
            ping_interval: Duration::from_secs(15),
            transition_chunk_bytes: edge_convex::sync::TRANSITION_CHUNK_BYTES,
        }
    }

    pub fn from_env(get: impl Fn(&str) -> Option<String>) -> Result<Self, ConfigError> {
        let mut config = Config::local();
        if let Some(v) = get("DEVCONVEX_ADDR") {
            config.addr = v.parse().map_err(|_| {
                ConfigError::new("DEVCONVEX_ADDR", format!("expected host:port, got `{v}`"))
            })?;
        }
        if let Some(v) = get("DEVCONVEX_AUTH_CONFIG").filter(|v| !v.trim().is_empty()) {
            crate::auth::Authenticator::from_config(Some(&v))
                .map_err(|e| ConfigError::new("DEVCONVEX_AUTH_CONFIG", e))?;
            config.auth_config = Some(v);
        }
        Ok(config)
    }
}
