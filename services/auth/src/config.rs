//! The auth service's configuration, parsed once from the environment without side effects.

use std::net::SocketAddr;
use std::time::Duration;

use edge_keys::{Alg, Secret};

pub use crate::hashing::HashBudget;

pub use edge_telemetry::ConfigError;

/// Rate limits of `/api/auth/*` as Better Auth's defaults (see [`crate::ratelimit`]), shared by
/// every replica.
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
    /// Better Auth's rule for `/request-password-reset`, `/send-verification-email` and
    /// `/forget-password*` (mail to an address): `mail_per_address` per `mail_window` (3 per
    /// 60 s; `AUTH_MAIL_LIMIT_PER_ADDRESS`).
    pub mail_per_address: u32,
    pub mail_window: Duration,
    /// Better Auth's rule for every other route: `default_max` per `default_window` (100 per
    /// 10 s; `AUTH_RATE_LIMIT_MAX`, `AUTH_RATE_LIMIT_WINDOW_SECONDS`).
    pub default_max: u32,
    pub default_window: Duration,
}

impl Default for RateLimit {
    fn default() -> Self {
        RateLimit {
            per_address: 3,
            window: Duration::from_secs(10),
            per_account: 10,
            account_window: Duration::from_secs(60),
            mail_per_address: 3,
            mail_window: Duration::from_secs(60),
            default_max: 100,
            default_window: Duration::from_secs(10),
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
        self.window
            .max(self.account_window)
            .max(self.mail_window)
            .max(self.default_window)
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
    /// Better Auth's account and email options (`AUTH_*`, `BETTER_AUTH_URL`).
    pub account: AccountOptions,
    /// `SMTP_URL`, `EMAIL_FROM`, `AUTH_EMAIL_TEMPLATES_DIR`.
    pub mail: crate::mail::MailConfig,
    /// `AUTH_SOCIAL_PROVIDERS` with each provider's `AUTH_<ID>_*` settings.
    pub social_providers: Vec<crate::social::ProviderConfig>,
    /// `AUTH_TRUSTED_PROVIDERS` (Better Auth's `accountLinking.trustedProviders`): providers
    /// whose addresses link to an existing user even when they do not say the address is
    /// verified.
    pub trusted_providers: Vec<String>,
}

/// Better Auth's options for the account, session and email routes, with its defaults.
#[derive(Debug, Clone)]
pub struct AccountOptions {
    /// `BETTER_AUTH_URL`: the site's public origin; mailed links are
    /// `<origin>/api/auth/…` (Better Auth's `baseURL`). Default: `JWT_ISSUER`.
    pub base_url: String,
    /// `AUTH_REQUIRE_EMAIL_VERIFICATION`: sign-in refused (403 `EMAIL_NOT_VERIFIED`) until the
    /// address is verified; sign-up opens no session.
    pub require_email_verification: bool,
    /// `AUTH_SEND_VERIFICATION_ON_SIGN_UP` (default: `AUTH_REQUIRE_EMAIL_VERIFICATION`).
    pub send_verification_on_sign_up: bool,
    /// `AUTH_SEND_VERIFICATION_ON_SIGN_IN`: a refused sign-in mails a new link.
    pub send_verification_on_sign_in: bool,
    /// `AUTH_RESET_TOKEN_TTL_SECONDS` (Better Auth's `resetPasswordTokenExpiresIn`, 3600).
    pub reset_token_ttl: Duration,
    /// `AUTH_VERIFICATION_TOKEN_TTL_SECONDS` (`emailVerification.expiresIn`, 3600).
    pub verification_token_ttl: Duration,
    /// `AUTH_REVOKE_SESSIONS_ON_PASSWORD_RESET` (`revokeSessionsOnPasswordReset`, false).
    pub revoke_sessions_on_password_reset: bool,
    /// `AUTH_FRESH_AGE_SECONDS` (`session.freshAge`, one day; 0 turns the check off).
    pub fresh_age: Duration,
    /// `AUTH_DELETE_USER_ENABLED` (`user.deleteUser.enabled`, false: `delete-user` is 404).
    pub delete_user_enabled: bool,
    /// `AUTH_CHANGE_EMAIL_ENABLED` (`user.changeEmail.enabled`, false).
    pub change_email_enabled: bool,
    /// `AUTH_CHANGE_EMAIL_WITHOUT_VERIFICATION` (`updateEmailWithoutVerification`, false).
    pub change_email_without_verification: bool,
}

impl AccountOptions {
    fn defaults(issuer: &str) -> Self {
        AccountOptions {
            base_url: issuer.to_owned(),
            require_email_verification: false,
            send_verification_on_sign_up: false,
            send_verification_on_sign_in: false,
            reset_token_ttl: Duration::from_secs(3600),
            verification_token_ttl: Duration::from_secs(3600),
            revoke_sessions_on_password_reset: false,
            fresh_age: Duration::from_secs(86_400),
            delete_user_enabled: false,
            change_email_enabled: false,
            change_email_without_verification: false,
        }
    }

    /// Better Auth's `baseURL`: the origin plus `/api/auth`.
    pub fn auth_base(&self) -> String {
        format!("{}/api/auth", self.base_url.trim_end_matches('/'))
    }
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
            account: AccountOptions::defaults("http://localhost:8080"),
            mail: crate::mail::MailConfig::default(),
            social_providers: Vec::new(),
            trusted_providers: Vec::new(),
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
        config.account.base_url = config.issuer.clone();
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
        if let Some(v) = get("AUTH_MAIL_LIMIT_PER_ADDRESS") {
            config.sign_in_limit.mail_per_address = count(&v, "AUTH_MAIL_LIMIT_PER_ADDRESS")?;
        }
        if let Some(v) = get("AUTH_RATE_LIMIT_MAX") {
            config.sign_in_limit.default_max = count(&v, "AUTH_RATE_LIMIT_MAX")?;
        }
        if let Some(v) = get("AUTH_RATE_LIMIT_WINDOW_SECONDS") {
            let secs = count(&v, "AUTH_RATE_LIMIT_WINDOW_SECONDS")?;
            config.sign_in_limit.default_window = Duration::from_secs(u64::from(secs));
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
        account_from_env(&get, &mut config)?;
        (config.social_providers, config.trusted_providers) =
            crate::social::config::from_env(&get)?;
        Ok(config)
    }
}

fn flag(
    get: &impl Fn(&str) -> Option<String>,
    var: &'static str,
) -> Result<Option<bool>, ConfigError> {
    match get(var).as_deref() {
        None | Some("") => Ok(None),
        Some("true" | "1") => Ok(Some(true)),
        Some("false" | "0") => Ok(Some(false)),
        Some(other) => Err(ConfigError::new(
            var,
            format!("expected true or false, got `{other}`"),
        )),
    }
}

fn seconds(
    get: &impl Fn(&str) -> Option<String>,
    var: &'static str,
    range: std::ops::RangeInclusive<u64>,
) -> Result<Option<Duration>, ConfigError> {
    let Some(v) = get(var).filter(|v| !v.is_empty()) else {
        return Ok(None);
    };
    let secs: u64 = v
        .parse()
        .ok()
        .filter(|s| range.contains(s))
        .ok_or_else(|| {
            ConfigError::new(
                var,
                format!(
                    "expected seconds in {}..={}, got `{v}`",
                    range.start(),
                    range.end()
                ),
            )
        })?;
    Ok(Some(Duration::from_secs(secs)))
}

/// The account, email and mail variables.
fn account_from_env(
    get: &impl Fn(&str) -> Option<String>,
    config: &mut Config,
) -> Result<(), ConfigError> {
    let a = &mut config.account;
    if let Some(url) = get("BETTER_AUTH_URL").filter(|u| !u.is_empty()) {
        let parsed = url::Url::parse(&url)
            .map_err(|_| ConfigError::new("BETTER_AUTH_URL", "expected an http(s) origin"))?;
        if !matches!(parsed.scheme(), "http" | "https") || parsed.host_str().is_none() {
            return Err(ConfigError::new(
                "BETTER_AUTH_URL",
                "expected an http(s) origin",
            ));
        }
        a.base_url = url
            .trim_end_matches('/')
            .trim_end_matches("/api/auth")
            .to_owned();
    }
    if let Some(v) = flag(get, "AUTH_REQUIRE_EMAIL_VERIFICATION")? {
        a.require_email_verification = v;
    }
    a.send_verification_on_sign_up =
        flag(get, "AUTH_SEND_VERIFICATION_ON_SIGN_UP")?.unwrap_or(a.require_email_verification);
    if let Some(v) = flag(get, "AUTH_SEND_VERIFICATION_ON_SIGN_IN")? {
        a.send_verification_on_sign_in = v;
    }
    if let Some(v) = seconds(get, "AUTH_RESET_TOKEN_TTL_SECONDS", 60..=604_800)? {
        a.reset_token_ttl = v;
    }
    if let Some(v) = seconds(get, "AUTH_VERIFICATION_TOKEN_TTL_SECONDS", 60..=604_800)? {
        a.verification_token_ttl = v;
    }
    if let Some(v) = flag(get, "AUTH_REVOKE_SESSIONS_ON_PASSWORD_RESET")? {
        a.revoke_sessions_on_password_reset = v;
    }
    if let Some(v) = seconds(get, "AUTH_FRESH_AGE_SECONDS", 0..=31_536_000)? {
        a.fresh_age = v;
    }
    if let Some(v) = flag(get, "AUTH_DELETE_USER_ENABLED")? {
        a.delete_user_enabled = v;
    }
    if let Some(v) = flag(get, "AUTH_CHANGE_EMAIL_ENABLED")? {
        a.change_email_enabled = v;
    }
    if let Some(v) = flag(get, "AUTH_CHANGE_EMAIL_WITHOUT_VERIFICATION")? {
        a.change_email_without_verification = v;
    }
    if let Some(url) = get("SMTP_URL").filter(|u| !u.is_empty()) {
        let parsed = url
            .parse()
            .map_err(|e: String| ConfigError::new("SMTP_URL", e))?;
        config.mail.mode = crate::mail::MailMode::Smtp(parsed);
    }
    if let Some(from) = get("EMAIL_FROM").filter(|f| !f.is_empty()) {
        from.parse::<lettre::message::Mailbox>().map_err(|e| {
            ConfigError::new(
                "EMAIL_FROM",
                format!("expected `Name <address>` or an address: {e}"),
            )
        })?;
        config.mail.from = from;
    }
    config.mail.templates_dir = get("AUTH_EMAIL_TEMPLATES_DIR")
        .filter(|d| !d.is_empty())
        .map(Into::into);
    Ok(())
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
