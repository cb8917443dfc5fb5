//! The gateway: the site origin. It serves Better Auth's `/api/auth/*` routes through the auth
//! service's gRPC API and holds no secret: it never verifies a cookie itself.
//!
//! [`Application::build`] binds the listener (port 0 in tests); [`Application::run_until`]
//! serves until a shutdown future resolves.

pub mod config;
mod error;
mod metrics;
mod revocations;
mod routes;

use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Instant;

use actix_web::dev::Service;
use actix_web::{App, HttpResponse, HttpServer, web};
use anyhow::Context;
use edge_cache::TokenCache;
use edge_proto::auth::v1::auth_service_client::AuthServiceClient;
use edge_proto::error::ErrorCode;
use tonic::transport::{Channel, Endpoint};

pub use config::{Config, ConfigError};

/// What every handler shares.
pub struct State {
    pub config: Config,
    auth: AuthServiceClient<Channel>,
    /// The token cache, when enabled.
    cache: Option<Arc<TokenCache<tonic::Status>>>,
    /// False while the revocation stream is down: the cache is bypassed, since a revocation
    /// could be missed.
    cache_trusted: Arc<AtomicBool>,
}

impl State {
    /// A client of auth (cheap: clones share one connection pool).
    pub fn auth(&self) -> AuthServiceClient<Channel> {
        self.auth.clone()
    }

    /// The cache if it may be used now.
    pub(crate) fn trusted_cache(&self) -> Option<&TokenCache<tonic::Status>> {
        self.cache
            .as_deref()
            .filter(|_| self.cache_trusted.load(Ordering::Acquire))
    }

    pub(crate) fn cache(&self) -> Option<&TokenCache<tonic::Status>> {
        self.cache.as_deref()
    }
}

pub struct Application {
    listener: std::net::TcpListener,
    addr: SocketAddr,
    state: web::Data<State>,
}

impl Application {
    pub async fn build(config: Config) -> anyhow::Result<Application> {
        metrics::init();
        let endpoint = Endpoint::from_shared(config.auth_grpc_url.clone())
            .context("invalid AUTH_GRPC_URL")?
            .connect_timeout(std::time::Duration::from_secs(2))
            .tcp_nodelay(true)
            .http2_adaptive_window(true);
        let auth = AuthServiceClient::new(endpoint.connect_lazy());
        let listener = std::net::TcpListener::bind(config.http_addr)
            .with_context(|| format!("failed to bind GATEWAY_HTTP_ADDR {}", config.http_addr))?;
        listener.set_nonblocking(true)?;
        let addr = listener.local_addr()?;
        let cache = match &config.cache {
            Some(c) => Some(Arc::new(
                TokenCache::new(c.clone()).map_err(|e| anyhow::anyhow!(e))?,
            )),
            None => None,
        };
        let state = State {
            config,
            auth,
            cache,
            cache_trusted: Arc::new(AtomicBool::new(false)),
        };
        Ok(Application {
            listener,
            addr,
            state: web::Data::new(state),
        })
    }

    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// Serves until `shutdown` resolves, then drains in-flight requests.
    pub async fn run_until(
        self,
        shutdown: impl Future<Output = ()> + Send + 'static,
    ) -> anyhow::Result<()> {
        let watcher = self.state.cache.clone().map(|cache| {
            tokio::spawn(revocations::watch(
                self.state.auth(),
                cache,
                self.state.cache_trusted.clone(),
            ))
        });
        let state = self.state.clone();
        let workers = state.config.workers;
        let server = HttpServer::new(move || {
            App::new()
                .app_data(state.clone())
                .wrap_fn(|req, srv| {
                    let start = Instant::now();
                    let route = req
                        .match_pattern()
                        .unwrap_or_else(|| "unmatched".to_owned());
                    let fut = srv.call(req);
                    async move {
                        let res = fut.await;
                        metrics::REQUEST_DURATION
                            .with_label_values(&[route.as_str()])
                            .observe(start.elapsed().as_secs_f64());
                        res
                    }
                })
                .configure(routes::auth::configure)
                .configure(routes::ops::configure)
                .default_service(web::to(not_found))
        })
        .workers(workers)
        .disable_signals()
        .shutdown_timeout(10)
        .listen(self.listener)?
        .run();
        let handle = server.handle();
        tracing::info!(http = %self.addr, "gateway serving");
        tokio::spawn(async move {
            shutdown.await;
            handle.stop(true).await;
        });
        server.await.context("gateway HTTP server failed")?;
        if let Some(w) = watcher {
            w.abort();
        }
        tracing::info!("gateway stopped");
        Ok(())
    }
}

async fn not_found() -> HttpResponse {
    let code = ErrorCode::NOT_FOUND;
    HttpResponse::NotFound().json(serde_json::json!({"code": code.code, "message": "Not found"}))
}
