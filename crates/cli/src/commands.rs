//! The service and tool subcommands.

use anyhow::Context;
use base64::Engine;
use edge_auth::Store;
use edge_keys::KeyRow;
use edge_telemetry::ConfigError;

/// How a command failed, which decides the exit code.
pub enum Failure {
    Config(ConfigError),
    Usage(String),
    Other(anyhow::Error),
}

impl From<ConfigError> for Failure {
    fn from(e: ConfigError) -> Self {
        Failure::Config(e)
    }
}

impl From<anyhow::Error> for Failure {
    fn from(e: anyhow::Error) -> Self {
        Failure::Other(e)
    }
}

pub type Result<T = ()> = std::result::Result<T, Failure>;

fn env(name: &str) -> Option<String> {
    std::env::var(name).ok()
}

/// Resolves on Ctrl-C or SIGTERM.
pub async fn shutdown_signal() {
    let ctrl_c = tokio::signal::ctrl_c();
    #[cfg(unix)]
    {
        let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
            .expect("install SIGTERM handler");
        tokio::select! {
            _ = ctrl_c => {}
            _ = term.recv() => {}
        }
    }
    #[cfg(not(unix))]
    let _ = ctrl_c.await;
    tracing::info!("shutting down");
}

pub async fn auth() -> Result {
    let config = edge_auth::Config::from_env(env)?;
    let app = edge_auth::Application::build(config).await?;
    app.run_until(shutdown_signal()).await?;
    Ok(())
}

pub async fn gateway() -> Result {
    let config = edge_gateway::Config::from_env(env)?;
    let app = edge_gateway::Application::build(config).await?;
    app.run_until(shutdown_signal()).await?;
    Ok(())
}

pub async fn query() -> Result {
    let config = edge_query::Config::from_env(env)?;
    let app = edge_query::Application::build(config).await?;
    app.run_until(shutdown_signal()).await?;
    Ok(())
}

pub async fn devconvex() -> Result {
    let config = edge_devconvex::Config::from_env(env)?;
    let app = edge_devconvex::Application::build(config).await?;
    app.run_until(shutdown_signal()).await?;
    Ok(())
}

fn database_url() -> String {
    env("DATABASE_URL").unwrap_or_else(|| edge_auth::config::DEFAULT_DATABASE_URL.to_owned())
}

pub async fn migrate() -> Result {
    let url = database_url();
    let trust = edge_tls::Trust::from_env(|k| std::env::var(k).ok())
        .map_err(|e| ConfigError::new("SSL_CERT_FILE", e.to_string()))?;
    let store = Store::connect_with_trust(&url, Some(&trust))
        .await
        .map_err(|e| ConfigError::new("DATABASE_URL", e.to_string()))?;
    store
        .migrate()
        .await
        .context("failed to apply the auth schema")?;
    eprintln!("schema is up to date");
    Ok(())
}

/// Connects to the database and brings its schema up to date.
async fn open_store(url: &str) -> Result<Store> {
    let trust = edge_tls::Trust::from_env(|k| std::env::var(k).ok())
        .map_err(|e| ConfigError::new("SSL_CERT_FILE", e.to_string()))?;
    Ok(Store::open_with_trust(url, Some(&trust))
        .await
        .context("failed to open the database")?)
}

/// The key rows in force: the static `JWKS`, else the `jwks` table.
async fn key_rows(config: &edge_auth::Config) -> Result<Vec<KeyRow>> {
    if let Some(json) = &config.static_jwks {
        return KeyRow::parse_static(json)
            .map_err(|e| ConfigError::new("JWKS", e.to_string()).into());
    }
    let store = open_store(&config.database_url).await?;
    let rows = store
        .jwks_rows()
        .await
        .context("failed to read the jwks table")?;
    if rows.is_empty() {
        return Err(Failure::Other(anyhow::anyhow!(
            "the jwks table holds no key: start auth once or run `jwks rotate`"
        )));
    }
    Ok(rows)
}

pub async fn jwks_export() -> Result {
    let config = edge_auth::Config::from_env(env)?;
    let now = chrono::Utc::now();
    // Every key still published (expired ones stay for the grace period, so tokens they signed
    // still verify), as the JWKS endpoint serves them.
    let rows: Vec<KeyRow> = key_rows(&config)
        .await?
        .into_iter()
        .filter(|r| {
            r.expires_at
                .is_none_or(|e| e + edge_keys::keyset::DEFAULT_GRACE > now)
        })
        .collect();
    println!(
        "{}",
        serde_json::to_string(&rows).context("failed to serialise keys")?
    );
    Ok(())
}

pub async fn jwks_rotate() -> Result {
    let config = edge_auth::Config::from_env(env)?;
    if config.static_jwks.is_some() {
        return Err(ConfigError::new(
            "JWKS",
            "static keys are set: rotate by exporting new rows, not in the database",
        )
        .into());
    }
    let store = open_store(&config.database_url).await?;
    let lead = config.key_publish_lead();
    let row = edge_auth::keys::rotate(&store, &config.secret, config.alg, lead)
        .await
        .context("failed to rotate keys")?;
    eprintln!(
        "new key {} ({}) published now, signing in {} s (one JWKS cache lifetime); previous keys sign until then and stay published for the grace period",
        row.id,
        config.alg,
        lead.as_secs()
    );
    Ok(())
}

pub async fn convex_auth_config() -> Result {
    let config = edge_auth::Config::from_env(env)?;
    // Convex's customJwt providers verify RS256 and ES256 only: an EdDSA issuer's tokens would
    // all be refused there, so no configuration is printed for one.
    if !matches!(config.alg, edge_keys::Alg::RS256 | edge_keys::Alg::ES256) {
        return Err(ConfigError::new(
            "JWT_ALG",
            format!(
                "{}: Convex's customJwt accepts RS256 and ES256 only",
                config.alg.as_str()
            ),
        )
        .into());
    }
    let jwks = if config.static_jwks.is_some() {
        let rows = key_rows(&config).await?;
        let set = edge_keys::KeySet::load(
            &rows,
            &config.secret,
            chrono::Utc::now(),
            edge_keys::keyset::DEFAULT_GRACE,
        )
        .map_err(|e| ConfigError::new("JWKS", e.to_string()))?;
        let encoded = base64::engine::general_purpose::STANDARD.encode(set.jwks_json());
        format!("data:text/plain;charset=utf-8;base64,{encoded}")
    } else {
        format!(
            "{}/api/auth/convex/jwks",
            config.issuer.trim_end_matches('/')
        )
    };
    let out = serde_json::json!({
        "providers": [{
            "type": "customJwt",
            "issuer": config.issuer,
            "applicationID": config.audience,
            "algorithm": config.alg.as_str(),
            "jwks": jwks,
        }]
    });
    println!("{out}");
    Ok(())
}

/// `convex-edge probe <url>`: a health check for images without curl.
pub async fn probe(url: &str) -> Result {
    if !url.starts_with("http://") && !url.starts_with("https://") {
        return Err(Failure::Usage(format!(
            "probe expects an http:// URL, got `{url}`"
        )));
    }
    let trust = edge_tls::Trust::from_env(|k| std::env::var(k).ok())
        .map_err(|e| ConfigError::new("SSL_CERT_FILE", e.to_string()))?;
    let client = trust
        .http_client()
        .timeout(std::time::Duration::from_secs(2))
        .build()
        .context("failed to build the probe client")?;
    let response = client
        .get(url)
        .send()
        .await
        .with_context(|| format!("{url} did not answer"))?;
    if response.status() != reqwest::StatusCode::OK {
        return Err(anyhow::anyhow!("{url} answered {}", response.status()).into());
    }
    Ok(())
}
