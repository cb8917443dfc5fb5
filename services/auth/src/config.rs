//! The auth service's configuration, parsed once from the environment without side effects.

use std::net::SocketAddr;
use std::time::Duration;

use edge_keys::{Alg, Secret};

pub use crate::hashing::HashBudget;

pub use edge_telemetry::ConfigError;

/// Rate limits of sign-up and sign-in (see [`crate::ratelimit`]), shared by every replica.
#[derive(Debug, Clone)]
pub struct RateLimit {
    /// Requests per client address and route within `window` (`AUTH_SIGN_IN_LIMIT_PER_ADDRESS`;
    /// Better Auth's rule for `/sign-in*` and `/sign-up*`: 3).
    pub per_address: u32,
    /// Better Auth's window for that rule: 10 s.
    pub window: Duration,
    /// Sign-in attempts per account within `account_window`, from any address
    /// (`AUTH_SIGN_IN_LIMIT_PER_ACCOUNT`).
    pub per_account: u32,
    pub account_window: Duration,
}

impl Default for RateLimit {
    fn default() -> Self {
        RateLimit {
            per_address: 3,
            window: Duration::from_secs(10),
            per_account: 10,
            account_window: Duration::from_secs(60),
        }
    }
}

impl RateLimit {
    pub fn address_rule(&self) -> crate::ratelimit::Rule {
        crate::ratelimit::Rule {
            max: self.per_address,
            window: self.window,
        }
    }

    pub fn account_rule(&self) -> crate::ratelimit::Rule {
        crate::ratelimit::Rule {
            max: self.per_account,
            window: self.account_window,
        }
    }

    /// The longest window: rows older than it are pruned.
    pub fn longest_window(&self) -> Duration {
        self.window.max(self.account_window)
    }
}

#[derive(Debug, Clone)]
pub struct Config {
    /// `postgres://…` or `sqlite://…`.
    pub database_url: String,
    pub secret: Secret,
    /// The static `JWKS` rows (JSON text); when set no key is read from the database.
    pub static_jwks: Option<String>,
    pub issuer: String,
    pub audience: String,
    pub alg: Alg,
    pub token_ttl: Duration,
    pub grpc_addr: SocketAddr,
    pub http_addr: SocketAddr,
    pub sign_in_limit: RateLimit,
    /// `AUTH_PASSWORD_HASH_MEMORY_MB`, `AUTH_PASSWORD_HASH_WAIT_MS`.
    pub password_hash_budget: HashBudget,
    /// `AUTH_DRAIN_SECONDS`: after a shutdown signal, how long in-flight calls may finish
    /// before the process exits regardless (within Kubernetes' grace period after preStop).
    pub drain_timeout: Duration,
    /// How often the key set and revocation log are re-checked, and open revocation streams
    /// re-read, when no notification arrives (the backstop for a lost `NOTIFY`).
    pub poll_interval: Duration,
    /// `JWKS_MAX_AGE_SECONDS`: how long verifiers may cache the JWKS.
    pub jwks_max_age: Duration,
    /// `SSL_CERT_FILE`: a CA bundle trusted besides the OS roots (Postgres `verify-ca`/`verify-full`).
    pub ssl_cert_file: Option<std::path::PathBuf>,
}

pub const DEFAULT_DATABASE_URL: &str = "sqlite://.convex-edge/dev.db";

/// Kept beyond the token lifetime before a log entry is pruned.
pub const REVOCATION_MARGIN: Duration = Duration::from_secs(300);

fn stale_while_revalidate(max_age: Duration) -> Duration {
    max_age / 5
}

/// `public, max-age=N, stale-while-revalidate=N/5`.
pub fn jwks_cache_control(max_age: Duration) -> String {
    format!(
        "public, max-age={}, stale-while-revalidate={}",
        max_age.as_secs(),
        stale_while_revalidate(max_age).as_secs()
    )
}

impl Config {
    /// Defaults for local runs, with the given secret.
    pub fn local(secret: Secret) -> Self {
        Config {
            database_url: DEFAULT_DATABASE_URL.into(),
            secret,
            static_jwks: None,
            issuer: "http://localhost:8080".into(),
            audience: "convex".into(),
            alg: Alg::RS256,
            token_ttl: Duration::from_secs(900),
            grpc_addr: "127.0.0.1:50051".parse().expect("valid address"),
            http_addr: "127.0.0.1:3001".parse().expect("valid address"),
            sign_in_limit: RateLimit::default(),
            password_hash_budget: HashBudget::default(),
            drain_timeout: Duration::from_secs(8),
            poll_interval: Duration::from_secs(5),
            jwks_max_age: Duration::from_secs(300),
            ssl_cert_file: None,
        }
    }

    /// How often the database is polled for the session log and the key set: as configured on
    /// Postgres (NOTIFY wakes every replica; the poll is a backstop), at most 500 ms on SQLite,
    /// where another writer of the file (the Better Auth app, an admin's `sqlite3`) notifies
    /// nobody and the poll is how its session ends arrive within a second.
    pub fn database_poll(&self) -> Duration {
        if self.database_url.starts_with("sqlite") {
            self.poll_interval.min(Duration::from_millis(500))
        } else {
            self.poll_interval
        }
    }

    /// `Cache-Control` of JWKS responses.
    pub fn jwks_cache_control(&self) -> String {
        jwks_cache_control(self.jwks_max_age)
    }

    /// How long a new key is published before it signs: the longest a verifier may keep an
    /// older JWKS (max-age plus stale-while-revalidate).
    pub fn key_publish_lead(&self) -> Duration {
        self.jwks_max_age + stale_while_revalidate(self.jwks_max_age)
    }

    /// How long a session log entry matters: the longest token lifetime plus a margin for
    /// clocks and tokens in flight. Older entries are pruned.
    pub fn revocation_retention(&self) -> Duration {
        self.token_ttl + REVOCATION_MARGIN
    }

    /// Reads the variables of DESIGN section 4 through `get`.
    pub fn from_env(get: impl Fn(&str) -> Option<String>) -> Result<Self, ConfigError> {
        let secret = get("BETTER_AUTH_SECRET")
            .filter(|s| !s.is_empty())
            .ok_or_else(|| {
                ConfigError::new("BETTER_AUTH_SECRET", "required (at least 32 characters)")
            })?;
        if secret.len() < 32 {
            return Err(ConfigError::new(
                "BETTER_AUTH_SECRET",
                "must be at least 32 characters",
            ));
        }
        let mut config = Config::local(Secret::new(secret));
        if let Some(url) = get("DATABASE_URL") {
            if !(url.starts_with("postgres://")
                || url.starts_with("postgresql://")
                || url.starts_with("sqlite:"))
            {
                return Err(ConfigError::new(
                    "DATABASE_URL",
                    "expected postgres://… or sqlite://…",
                ));
            }
            config.database_url = url;
        }
        config.ssl_cert_file = edge_tls::ca_file_from_env(&get);
        config.static_jwks = get("JWKS").filter(|s| !s.trim().is_empty());
        if let Some(v) = get("JWT_ISSUER") {
            config.issuer = v;
        }
        if let Some(v) = get("JWT_AUDIENCE") {
            config.audience = v;
        }
        if let Some(v) = get("JWT_ALG") {
            config.alg = v
                .parse()
                .map_err(|_| ConfigError::new("JWT_ALG", "expected RS256, ES256 or EdDSA"))?;
        }
        if let Some(v) = get("JWT_TTL_SECONDS") {
            let secs: u64 = v
                .parse()
                .map_err(|_| ConfigError::new("JWT_TTL_SECONDS", "expected seconds"))?;
            if !(60..=86_400).contains(&secs) {
                return Err(ConfigError::new(
                    "JWT_TTL_SECONDS",
                    "must be between 60 and 86400",
                ));
            }
            config.token_ttl = Duration::from_secs(secs);
        }
        if let Some(v) = get("JWKS_MAX_AGE_SECONDS") {
            let secs: u64 = v
                .parse()
                .map_err(|_| ConfigError::new("JWKS_MAX_AGE_SECONDS", "expected seconds"))?;
            if secs > 86_400 {
                return Err(ConfigError::new(
                    "JWKS_MAX_AGE_SECONDS",
                    "must be at most 86400",
                ));
            }
            config.jwks_max_age = Duration::from_secs(secs);
        }
        config.grpc_addr = addr(&get, "AUTH_GRPC_ADDR", config.grpc_addr)?;
        config.http_addr = addr(&get, "AUTH_HTTP_ADDR", config.http_addr)?;
        if let Some(v) = get("AUTH_SIGN_IN_LIMIT_PER_ACCOUNT") {
            config.sign_in_limit.per_account = count(&v, "AUTH_SIGN_IN_LIMIT_PER_ACCOUNT")?;
        }
        if let Some(v) = get("AUTH_SIGN_IN_LIMIT_PER_ADDRESS") {
            config.sign_in_limit.per_address = count(&v, "AUTH_SIGN_IN_LIMIT_PER_ADDRESS")?;
        }
        if let Some(v) = get("AUTH_PASSWORD_HASH_MEMORY_MB") {
            let per_run_mb = edge_keys::password::MEMORY_BYTES / (1024 * 1024);
            let mb: u64 = v
                .parse()
                .ok()
                .filter(|mb| *mb >= per_run_mb)
                .ok_or_else(|| {
                    ConfigError::new(
                        "AUTH_PASSWORD_HASH_MEMORY_MB",
                        format!("expected MiB, at least {per_run_mb} (one scrypt run)"),
                    )
                })?;
            config.password_hash_budget.memory_bytes = mb * 1024 * 1024;
        }
        if let Some(v) = get("AUTH_DRAIN_SECONDS") {
            let secs: u64 = v.parse().ok().filter(|s| *s <= 300).ok_or_else(|| {
                ConfigError::new("AUTH_DRAIN_SECONDS", "expected seconds, at most 300")
            })?;
            config.drain_timeout = Duration::from_secs(secs);
        }
        if let Some(v) = get("AUTH_PASSWORD_HASH_WAIT_MS") {
            let ms: u64 = v.parse().ok().filter(|ms| *ms <= 60_000).ok_or_else(|| {
                ConfigError::new(
                    "AUTH_PASSWORD_HASH_WAIT_MS",
                    "expected milliseconds, at most 60000",
                )
            })?;
            config.password_hash_budget.wait = Duration::from_millis(ms);
        }
        Ok(config)
    }
}

fn addr(
    get: &impl Fn(&str) -> Option<String>,
    var: &'static str,
    default: SocketAddr,
) -> Result<SocketAddr, ConfigError> {
    match get(var) {
        Some(v) => v
            .parse()
            .map_err(|_| ConfigError::new(var, format!("expected host:port, got `{v}`"))),
        None => Ok(default),
    }
}

fn count(v: &str, var: &'static str) -> Result<u32, ConfigError> {
    v.parse()
        .ok()
        .filter(|n| *n > 0)
        .ok_or_else(|| ConfigError::new(var, "expected a positive number"))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;

    fn env(pairs: &[(&str, &str)]) -> impl Fn(&str) -> Option<String> {
        let map: HashMap<String, String> = pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        move |k| map.get(k).cloned()
    }

    #[test]
    fn secret_is_required_and_bad_values_name_their_variable() {
        assert_eq!(
            Config::from_env(env(&[])).unwrap_err().var,
            "BETTER_AUTH_SECRET"
        );
        let s = ("BETTER_AUTH_SECRET", "0123456789abcdef0123456789abcdef");
        assert_eq!(
            Config::from_env(env(&[s, ("JWT_ALG", "HS256")]))
                .unwrap_err()
                .var,
            "JWT_ALG"
        );
        assert_eq!(
            Config::from_env(env(&[s, ("AUTH_GRPC_ADDR", "nope")]))
                .unwrap_err()
                .var,
            "AUTH_GRPC_ADDR"
        );
        assert_eq!(
            Config::from_env(env(&[s, ("DATABASE_URL", "mysql://x")]))
                .unwrap_err()
                .var,
            "DATABASE_URL"
        );
        let c =
            Config::from_env(env(&[s, ("JWT_ALG", "ES256"), ("JWT_TTL_SECONDS", "600")])).unwrap();
        assert_eq!(c.alg, Alg::ES256);
        assert_eq!(c.token_ttl, Duration::from_secs(600));
        for bad in ["16", "x", "-1"] {
            assert_eq!(
                Config::from_env(env(&[s, ("AUTH_PASSWORD_HASH_MEMORY_MB", bad)]))
                    .unwrap_err()
                    .var,
                "AUTH_PASSWORD_HASH_MEMORY_MB"
            );
        }
        let c = Config::from_env(env(&[s, ("AUTH_PASSWORD_HASH_MEMORY_MB", "100")])).unwrap();
        assert_eq!(c.password_hash_budget.concurrent_runs(), 3);
    }
}
