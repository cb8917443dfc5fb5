//! The gateway's configuration, parsed once from the environment without side effects.

use std::net::SocketAddr;
use std::path::PathBuf;

pub use edge_telemetry::ConfigError;

use crate::client::TrustedProxies;

#[derive(Debug, Clone)]
pub struct Config {
    pub http_addr: SocketAddr,
    /// auth's gRPC endpoint.
    pub auth_grpc_url: String,
    /// query's gRPC endpoint (SSR data; used once the query service exists).
    pub query_grpc_url: String,
    /// Origins allowed to POST to `/api/auth/*` besides the gateway's own
    /// (`GATEWAY_TRUSTED_ORIGINS`, comma-separated), as Better Auth's `trustedOrigins`.
    pub trusted_origins: Vec<String>,
    /// The social provider ids of `AUTH_SOCIAL_PROVIDERS` (auth's setting, read here for the
    /// ids alone): template mode offers a "Sign in with …" button for each.
    pub social_providers: Vec<String>,
    /// `GATEWAY_TRUSTED_PROXIES` (comma-separated CIDRs): peers whose `X-Forwarded-For`,
    /// `Forwarded` and `X-Forwarded-Proto`/`-Host` are believed; empty: nobody's.
    pub trusted_proxies: TrustedProxies,
    /// Largest accepted request body, in bytes.
    pub max_body_bytes: usize,
    /// `GATEWAY_AUTH_TIMEOUT_MS`: the deadline of every gRPC call to auth (unary calls until
    /// their answer, the revocation stream until auth accepts it); past it the browser gets
    /// 503 and the revocation stream is dialled again.
    pub auth_timeout: std::time::Duration,
    /// HTTP worker threads.
    pub workers: usize,
    /// The token cache (`AUTH_CACHE_ENABLED`, `AUTH_CACHE_TTL`, `REDIS_URL`); `None`: off.
    pub cache: Option<edge_cache::CacheConfig>,
    /// How pages are served.
    pub ssr: Ssr,
    /// The query service as browsers reach it (`QUERY_PUBLIC_URL`): where page scripts connect.
    pub query_public_url: String,
    /// `GATEWAY_PAGE_WATCH_SECONDS`: a page's subscribed queries stay watched this long after
    /// the last render that used them, and renders read the watch; `None` (0): every render
    /// asks the query service.
    pub page_watch: Option<std::time::Duration>,
    /// `GATEWAY_MAX_PAGE_PARAM_BYTES`: a page request's route parameters together (decoded),
    /// in bytes; they become the page's query arguments, so a longer request is refused (414)
    /// before anything is asked of auth or the query service.
    pub max_page_param_bytes: usize,
    /// `SSL_CERT_FILE`: a CA bundle trusted besides the OS roots (`rediss://`, `https://` gRPC,
    /// the SSR upstream).
    pub ssl_cert_file: Option<PathBuf>,
    /// `GATEWAY_READ_RATE_LIMIT_MAX` / `GATEWAY_READ_RATE_LIMIT_WINDOW_SECONDS`: Better Auth's
    /// default rule (100 per 10 s per client address and path) on the read routes the token
    /// cache serves, counted in this gateway's memory; `None` (max 0): not counted.
    pub read_rate_limit: Option<ReadRateLimit>,
}

/// At most `max` requests within `window` of the last counted one.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ReadRateLimit {
    pub max: u32,
    pub window: std::time::Duration,
}

/// Server-side rendering: the gateway's own templates, or an existing SSR app behind it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Ssr {
    /// Template mode; `None` is the built-in demo (`PAGES_DIR` unset).
    Pages(Option<PathBuf>),
    /// Proxy mode (`SSR_UPSTREAM_URL`).
    Proxy(ProxyConfig),
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ProxyConfig {
    /// The SSR app's origin, e.g. `http://127.0.0.1:3000`.
    pub upstream: String,
    /// The header that carries the user's Convex JWT (`SSR_TOKEN_HEADER`, default
    /// `authorization` with a `Bearer ` prefix; any other header carries the bare token).
    pub token_header: String,
}

impl Config {
    pub fn local() -> Self {
        Config {
            http_addr: "127.0.0.1:8080".parse().expect("valid address"),
            auth_grpc_url: "http://127.0.0.1:50051".into(),
            query_grpc_url: "http://127.0.0.1:50052".into(),
            trusted_origins: Vec::new(),
            social_providers: Vec::new(),
            trusted_proxies: TrustedProxies::default(),
            max_body_bytes: 64 * 1024,
            auth_timeout: std::time::Duration::from_secs(5),
            workers: std::thread::available_parallelism()
                .map(|n| n.get())
                .unwrap_or(2),
            cache: Some(edge_cache::CacheConfig::default()),
            ssr: Ssr::Pages(None),
            query_public_url: "http://localhost:3210".into(),
            page_watch: Some(std::time::Duration::from_secs(30)),
            max_page_param_bytes: 2048,
            ssl_cert_file: None,
            read_rate_limit: Some(ReadRateLimit {
                max: 100,
                window: std::time::Duration::from_secs(10),
            }),
        }
    }

    pub fn from_env(get: impl Fn(&str) -> Option<String>) -> Result<Self, ConfigError> {
        let mut config = Config::local();
        config.ssl_cert_file = edge_tls::ca_file_from_env(&get);
        if let Some(v) = get("GATEWAY_HTTP_ADDR") {
            config.http_addr = v.parse().map_err(|_| {
                ConfigError::new(
                    "GATEWAY_HTTP_ADDR",
                    format!("expected host:port, got `{v}`"),
                )
            })?;
        }
        for (var, slot) in [
            ("AUTH_GRPC_URL", &mut config.auth_grpc_url),
            ("QUERY_GRPC_URL", &mut config.query_grpc_url),
        ] {
            if let Some(v) = get(var) {
                if !(v.starts_with("http://") || v.starts_with("https://")) {
                    return Err(ConfigError::new(
                        var,
                        format!("expected http://host:port, got `{v}`"),
                    ));
                }
                *slot = v;
            }
        }
        let enabled = match get("AUTH_CACHE_ENABLED").as_deref() {
            None | Some("true") | Some("1") => true,
            Some("false") | Some("0") => false,
            Some(other) => {
                return Err(ConfigError::new(
                    "AUTH_CACHE_ENABLED",
                    format!("expected true or false, got `{other}`"),
                ));
            }
        };
        if enabled {
            let mut cache = edge_cache::CacheConfig::default();
            if let Some(v) = get("AUTH_CACHE_TTL") {
                let secs: u64 = v.parse().ok().filter(|s| *s > 0).ok_or_else(|| {
                    ConfigError::new(
                        "AUTH_CACHE_TTL",
                        format!("expected a positive number of seconds, got `{v}`"),
                    )
                })?;
                cache.ttl = std::time::Duration::from_secs(secs);
            }
            if let Some(v) = get("AUTH_CACHE_MAX_TOKEN_AGE") {
                let secs: u64 = v.parse().map_err(|_| {
                    ConfigError::new(
                        "AUTH_CACHE_MAX_TOKEN_AGE",
                        format!("expected a number of seconds, got `{v}`"),
                    )
                })?;
                cache.max_token_age = std::time::Duration::from_secs(secs);
            }
            if let Some(url) = get("REDIS_URL").filter(|u| !u.is_empty()) {
                if !(url.starts_with("redis://") || url.starts_with("rediss://")) {
                    return Err(ConfigError::new(
                        "REDIS_URL",
                        format!("expected redis://…, got `{url}`"),
                    ));
                }
                cache.redis_url = Some(url);
            }
            config.cache = Some(cache);
        } else {
            config.cache = None;
        }
        let url = |var: &'static str, v: String| {
            if (v.starts_with("http://") || v.starts_with("https://")) && v.len() > "https://".len()
            {
                Ok(v.trim_end_matches('/').to_owned())
            } else {
                Err(ConfigError::new(
                    var,
                    format!("expected an http:// or https:// URL, got `{v}`"),
                ))
            }
        };
        if let Some(v) = get("GATEWAY_PAGE_WATCH_SECONDS") {
            let secs: u64 = v.parse().map_err(|_| {
                ConfigError::new(
                    "GATEWAY_PAGE_WATCH_SECONDS",
                    format!("expected a number of seconds, got `{v}`"),
                )
            })?;
            config.page_watch = (secs > 0).then(|| std::time::Duration::from_secs(secs));
        }
        if let Some(v) = get("GATEWAY_MAX_PAGE_PARAM_BYTES") {
            config.max_page_param_bytes =
                v.parse().ok().filter(|n: &usize| *n > 0).ok_or_else(|| {
                    ConfigError::new(
                        "GATEWAY_MAX_PAGE_PARAM_BYTES",
                        format!("expected a positive number of bytes, got `{v}`"),
                    )
                })?;
        }
        if let Some(v) = get("GATEWAY_READ_RATE_LIMIT_MAX") {
            let max: u32 = v.parse().map_err(|_| {
                ConfigError::new(
                    "GATEWAY_READ_RATE_LIMIT_MAX",
                    format!("expected a number of requests (0: no limit), got `{v}`"),
                )
            })?;
            config.read_rate_limit = (max > 0).then_some(ReadRateLimit {
                max,
                window: std::time::Duration::from_secs(10),
            });
        }
        if let Some(v) = get("GATEWAY_READ_RATE_LIMIT_WINDOW_SECONDS") {
            let secs = v.parse().ok().filter(|n: &u64| *n > 0).ok_or_else(|| {
                ConfigError::new(
                    "GATEWAY_READ_RATE_LIMIT_WINDOW_SECONDS",
                    format!("expected a positive number of seconds, got `{v}`"),
                )
            })?;
            if let Some(rule) = &mut config.read_rate_limit {
                rule.window = std::time::Duration::from_secs(secs);
            }
        }
        if let Some(v) = get("QUERY_PUBLIC_URL") {
            config.query_public_url = url("QUERY_PUBLIC_URL", v)?;
        }
        let pages_dir = get("PAGES_DIR").filter(|v| !v.is_empty());
        match get("SSR_UPSTREAM_URL").filter(|v| !v.is_empty()) {
            Some(_) if pages_dir.is_some() => {
                return Err(ConfigError::new(
                    "SSR_UPSTREAM_URL",
                    "set either SSR_UPSTREAM_URL (proxy mode) or PAGES_DIR (template mode), not both",
                ));
            }
            Some(v) => {
                let token_header = get("SSR_TOKEN_HEADER")
                    .unwrap_or_else(|| "authorization".into())
                    .to_ascii_lowercase();
                if actix_web::http::header::HeaderName::from_bytes(token_header.as_bytes()).is_err()
                {
                    return Err(ConfigError::new(
                        "SSR_TOKEN_HEADER",
                        format!("not a header name: `{token_header}`"),
                    ));
                }
                config.ssr = Ssr::Proxy(ProxyConfig {
                    upstream: url("SSR_UPSTREAM_URL", v)?,
                    token_header,
                });
            }
            None => config.ssr = Ssr::Pages(pages_dir.map(PathBuf::from)),
        }
        if let Some(v) = get("AUTH_SOCIAL_PROVIDERS") {
            config.social_providers = v
                .split(',')
                .map(str::trim)
                .filter(|p| !p.is_empty())
                .map(str::to_owned)
                .collect();
        }
        if let Some(v) = get("GATEWAY_TRUSTED_ORIGINS") {
            config.trusted_origins = v
                .split(',')
                .map(|o| o.trim().trim_end_matches('/').to_owned())
                .filter(|o| !o.is_empty())
                .collect();
        }
        if let Some(v) = get("GATEWAY_AUTH_TIMEOUT_MS") {
            let ms: u64 = v.parse().ok().filter(|ms| *ms > 0).ok_or_else(|| {
                ConfigError::new(
                    "GATEWAY_AUTH_TIMEOUT_MS",
                    format!("expected a positive number of milliseconds, got `{v}`"),
                )
            })?;
            config.auth_timeout = std::time::Duration::from_millis(ms);
        }
        if let Some(v) = get("GATEWAY_TRUSTED_PROXIES") {
            config.trusted_proxies = v
                .parse()
                .map_err(|e| ConfigError::new("GATEWAY_TRUSTED_PROXIES", e))?;
        }
        Ok(config)
    }
}
