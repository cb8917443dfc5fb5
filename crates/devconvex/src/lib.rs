//! devconvex: a Convex-compatible development backend, so the whole stack runs and is tested
//! without a Convex deployment. It speaks the sync protocol and the HTTP API exactly as the
//! official clients expect, verifies `customJwt` tokens like Convex, and runs the demo app's
//! functions (written in Rust) on an in-memory store whose queries re-run only when a mutation
//! writes a table they read.

pub mod auth;
pub mod config;
pub mod db;
pub mod engine;
pub mod functions;
mod http;
pub mod metrics;
pub mod pagination;
mod sync;

use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;

use actix_web::{App, HttpResponse, HttpServer, web};
use anyhow::Context;

pub use config::{Config, ConfigError};
pub use engine::Engine;

/// What every handler shares.
pub struct AppState {
    pub config: Config,
    pub engine: Arc<Engine>,
}

pub struct Application {
    listener: std::net::TcpListener,
    addr: SocketAddr,
    state: web::Data<AppState>,
}

impl Application {
    pub async fn build(config: Config) -> anyhow::Result<Application> {
        let auth = auth::Authenticator::from_config(config.auth_config.as_deref())
            .map_err(|e| ConfigError::new("DEVCONVEX_AUTH_CONFIG", e))?;
        let listener = std::net::TcpListener::bind(config.addr)
            .with_context(|| format!("failed to bind DEVCONVEX_ADDR {}", config.addr))?;
        listener.set_nonblocking(true)?;
        let addr = listener.local_addr()?;
        let engine = Arc::new(Engine::new(auth));
        Ok(Application {
            listener,
            addr,
            state: web::Data::new(AppState { config, engine }),
        })
    }

    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// The engine (tests read its per-instance metrics).
    pub fn engine(&self) -> Arc<Engine> {
        self.state.engine.clone()
    }

    pub async fn run_until(
        self,
        shutdown: impl Future<Output = ()> + Send + 'static,
    ) -> anyhow::Result<()> {
        let state = self.state.clone();
        let limit = state.config.max_message_bytes;
        let server = HttpServer::new(move || {
            App::new()
                .app_data(state.clone())
                .app_data(web::PayloadConfig::new(limit))
                .route("/api/sync", web::get().to(sync::handler))
                .route("/api/{version}/sync", web::get().to(sync::handler))
                .configure(http::configure)
                .route("/healthz", web::get().to(ok))
                .route("/readyz", web::get().to(ok))
                // What Convex's own compose file health-checks on the backend.
                .route("/version", web::get().to(version))
                .route("/metrics", web::get().to(metrics))
        })
        .workers(2)
        .disable_signals()
        .shutdown_timeout(5)
        .listen(self.listener)?
        .run();
        let handle = server.handle();
        tracing::info!(addr = %self.addr, "devconvex serving");
        tokio::spawn(async move {
            shutdown.await;
            handle.stop(true).await;
        });
        server.await.context("devconvex HTTP server failed")
    }
}

async fn ok() -> HttpResponse {
    HttpResponse::Ok().json(serde_json::json!({"status": "ok"}))
}

/// The backend's `GET /version` (plain text, as the self-hosted backend answers it).
async fn version() -> HttpResponse {
    HttpResponse::Ok()
        .content_type("text/plain; charset=utf-8")
        .body(concat!("devconvex-", env!("CARGO_PKG_VERSION")))
}

async fn metrics(state: web::Data<AppState>) -> HttpResponse {
    HttpResponse::Ok()
        .content_type(edge_telemetry::METRICS_CONTENT_TYPE)
        .body(format!(
            "{}{}",
            state.engine.stats.render(),
            edge_telemetry::render()
        ))
}
