//! `convex-edge dev`: auth, the gateway, the query service and devconvex in one process, with a SQLite database and a dev
//! secret kept in `./.convex-edge/` so sessions and keys survive restarts.

use std::path::Path;

use anyhow::Context;

use crate::commands::{Result, shutdown_signal};

const DATA_DIR: &str = ".convex-edge";

/// The dev secret, created on first run (readable by the owner only).
fn dev_secret(dir: &Path) -> anyhow::Result<String> {
    let path = dir.join("secret");
    if let Ok(secret) = std::fs::read_to_string(&path) {
        let secret = secret.trim().to_owned();
        if secret.len() >= 32 {
            return Ok(secret);
        }
    }
    let secret = edge_keys::random_hex(32);
    std::fs::write(&path, &secret)
        .with_context(|| format!("failed to write {}", path.display()))?;
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600))?;
    }
    Ok(secret)
}

pub async fn run() -> Result {
    let dir = Path::new(DATA_DIR);
    std::fs::create_dir_all(dir).with_context(|| format!("failed to create {DATA_DIR}"))?;
    let secret = dev_secret(dir)?;
    let env = move |name: &str| match name {
        "BETTER_AUTH_SECRET" => Some(std::env::var(name).unwrap_or_else(|_| secret.clone())),
        _ => std::env::var(name).ok(),
    };
    let mut auth_config = edge_auth::Config::from_env(&env)?;
    // No mail server in dev: reset and verification links go to the log.
    if auth_config.mail.mode == edge_auth::mail::MailMode::Off {
        auth_config.mail.mode = edge_auth::mail::MailMode::Log;
    }
    let (issuer, audience, alg) = (
        auth_config.issuer.clone(),
        auth_config.audience.clone(),
        auth_config.alg,
    );
    let auth = edge_auth::Application::build(auth_config).await?;
    // devconvex trusts exactly the tokens this auth issues, fetching its JWKS.
    let mut devconvex_config = edge_devconvex::Config::from_env(&env)?;
    if devconvex_config.auth_config.is_none() {
        devconvex_config.auth_config = Some(
            serde_json::json!({"providers": [{
                "type": "customJwt",
                "issuer": issuer,
                "applicationID": audience,
                "algorithm": alg.as_str(),
                "jwks": format!("http://{}/api/auth/jwks", auth.http_addr()),
            }]})
            .to_string(),
        );
    }
    let devconvex = edge_devconvex::Application::build(devconvex_config).await?;
    // The query service proxies devconvex, verifying tokens with auth's keys.
    let convex_url = format!("http://{}", devconvex.addr());
    let query_env = |name: &str| match name {
        "CONVEX_URL" => Some(std::env::var(name).unwrap_or_else(|_| convex_url.clone())),
        "AUTH_GRPC_URL" => Some(format!("http://{}", auth.grpc_addr())),
        "QUERY_SHARED_FUNCTIONS" => {
            Some(std::env::var(name).unwrap_or_else(|_| "messages:list,config:get".into()))
        }
        // SSR reads stay subscribed briefly, so the page's client subscribing next is free.
        "QUERY_READ_LINGER_SECONDS" => Some(std::env::var(name).unwrap_or_else(|_| "30".into())),
        _ => env(name),
    };
    let query = edge_query::Application::build(edge_query::Config::from_env(query_env)?).await?;
    let mut gateway_config = edge_gateway::Config::from_env(&env)?;
    gateway_config.auth_grpc_url = format!("http://{}", auth.grpc_addr());
    gateway_config.query_grpc_url = format!("http://{}", query.grpc_addr());
    if std::env::var("QUERY_PUBLIC_URL").is_err() {
        gateway_config.query_public_url = format!("http://{}", query.http_addr());
    }
    let gateway = edge_gateway::Application::build(gateway_config).await?;

    // Printed without panicking when stdout is closed (`convex-edge dev | head`).
    let banner = format!(
        "convex-edge dev\n  site (gateway):  http://{gw}\n  (open the site: sign up, chat live, keep a private task list)\n  auth routes:     http://{gw}/api/auth/get-session\n  JWKS:            http://{gw}/api/auth/jwks\n  Convex clients (query proxy): http://{query}\n  Convex (devconvex, demo app): http://{convex}\n  auth gRPC:       http://{grpc}\n  auth HTTP:       http://{http}\n  data:            {DATA_DIR}/ (SQLite dev.db, dev secret)\n",
        gw = gateway.addr(),
        grpc = auth.grpc_addr(),
        convex = devconvex.addr(),
        query = query.http_addr(),
        http = auth.http_addr(),
    );
    let _ = std::io::Write::write_all(&mut std::io::stdout(), banner.as_bytes());

    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    let stopped = |mut rx: tokio::sync::watch::Receiver<bool>| async move {
        let _ = rx.wait_for(|s| *s).await;
    };
    let auth_task = tokio::spawn(auth.run_until(stopped(stop_rx.clone())));
    let gateway_task = tokio::spawn(gateway.run_until(stopped(stop_rx.clone())));
    let devconvex_task = tokio::spawn(devconvex.run_until(stopped(stop_rx.clone())));
    let query_task = tokio::spawn(query.run_until(stopped(stop_rx)));
    shutdown_signal().await;
    let _ = stop_tx.send(true);
    gateway_task.await.context("gateway task failed")??;
    query_task.await.context("query task failed")??;
    devconvex_task.await.context("devconvex task failed")??;
    auth_task.await.context("auth task failed")??;
    Ok(())
}
