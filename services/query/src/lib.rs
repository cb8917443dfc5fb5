//! The query service: the Convex deployment origin for clients. It proxies Convex's HTTP API
//! and WebSocket sync protocol to the real deployment, with one upstream socket per identity
//! whose subscriptions every downstream socket of that identity shares, and per-function
//! sharing across identities for functions named in `QUERY_SHARED_FUNCTIONS`.
//!
//! Module map: `identity` (local JWT verification), `upstream` (one Convex socket: its pure
//! `state` and the `task` that drives it), `hub` (the upstreams by identity), `listener` (an
//! attachment to an upstream, detached on drop), `downstream` (one client socket: its pure
//! `session` and the driver), `proxy` (HTTP calls, served from subscriptions or coalesced),
//! `watch` (the gateway's page watches), `owners` (what each identity holds over all its
//! sockets), `http` and `grpc` (the APIs), `metrics`.

pub mod config;
mod downstream;
mod grpc;
mod http;
pub mod hub;
pub mod identity;
pub mod journal;
pub mod key;
pub mod listener;
pub mod metrics;
pub mod owners;
pub mod proxy;
pub mod revocations;
pub mod upstream;
mod watch;
mod ws;

use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;

use actix_http::HttpService;
use actix_service::{IntoServiceFactory, ServiceFactoryExt, fn_service, map_config};
use actix_web::dev::AppConfig;
use actix_web::{App, HttpResponse, web};
use anyhow::Context;
use edge_proto::auth::v1::auth_service_client::AuthServiceClient;
use edge_proto::query::v1::query_service_server::QueryServiceServer;
use tokio_stream::StreamExt;
use tokio_stream::wrappers::TcpListenerStream;

pub use config::{Config, ConfigError};

/// What every handler shares.
pub struct AppState {
    pub config: Config,
    /// Flips to `true` when the service shuts down: client sockets close with a restart hint,
    /// and the gateways' watches end so that they watch again elsewhere.
    pub shutting_down: tokio::sync::watch::Receiver<bool>,
    pub hub: Arc<hub::Hub>,
    pub identities: Arc<identity::Identities>,
    pub proxy: Arc<proxy::Proxy>,
    /// `QUERY_SHARED_FUNCTIONS`, shared by every client session.
    pub shared_functions: Arc<std::collections::BTreeSet<String>>,
    /// What each identity (signed out: each client address) holds over all its sockets.
    pub owners: Arc<owners::Owners>,
    /// Client mutations by `(sessionId, requestId)`: each runs once however often it is sent.
    pub journal: Arc<journal::Journal>,
}

pub struct Application {
    shutdown: tokio::sync::watch::Sender<bool>,
    http: std::net::TcpListener,
    grpc: tokio::net::TcpListener,
    http_addr: SocketAddr,
    grpc_addr: SocketAddr,
    state: web::Data<AppState>,
    /// Auth's gRPC client and what its session log revoked, followed while the service runs.
    auth: AuthServiceClient<tonic::transport::Channel>,
    revoked: Arc<revocations::Revoked>,
}

impl Application {
    pub async fn build(config: Config) -> anyhow::Result<Application> {
        let trust = edge_tls::Trust::load(config.ssl_cert_file.as_deref())
            .context("invalid SSL_CERT_FILE")?;
        let auth = AuthServiceClient::new(edge_proto::endpoint::lazy_channel(
            &edge_proto::endpoint::endpoint(&config.auth_grpc_url, &trust)
                .context("invalid AUTH_GRPC_URL")?,
        ));
        let revoked = Arc::new(revocations::Revoked::default());
        let identities = Arc::new(identity::Identities::new(
            auth.clone(),
            config.issuer.clone(),
            config.audience.clone(),
            revoked.clone(),
        ));
        let stats = Arc::new(metrics::Stats::default());
        let hub = hub::Hub::new(
            &config.convex_url,
            trust.clone(),
            config.upstream_idle,
            config.upstream_inactivity,
            config.upstream_message_bytes,
            stats,
            revoked.clone(),
        );
        let http = trust
            .http_client()
            .build()
            .context("failed to build the Convex HTTP client")?;
        let proxy = Arc::new(proxy::Proxy::new(
            config.convex_url.clone(),
            hub.clone(),
            identities.clone(),
            config.shared_functions.clone(),
            config.read_linger,
            http,
        ));
        let http = std::net::TcpListener::bind(config.http_addr)
            .with_context(|| format!("failed to bind QUERY_HTTP_ADDR {}", config.http_addr))?;
        http.set_nonblocking(true)?;
        let grpc = tokio::net::TcpListener::bind(config.grpc_addr)
            .await
            .with_context(|| format!("failed to bind QUERY_GRPC_ADDR {}", config.grpc_addr))?;
        let (http_addr, grpc_addr) = (http.local_addr()?, grpc.local_addr()?);
        let (shutdown, shutting_down) = tokio::sync::watch::channel(false);
        let shared_functions = Arc::new(config.shared_functions.clone());
        let owners = owners::Owners::new(config.owner_limits);
        let state = web::Data::new(AppState {
            owners,
            config,
            shutting_down,
            hub,
            identities,
            proxy,
            shared_functions,
            journal: Arc::new(journal::Journal::default()),
        });
        Ok(Application {
            auth,
            revoked,
            shutdown,
            http,
            grpc,
            http_addr,
            grpc_addr,
            state,
        })
    }

    pub fn http_addr(&self) -> SocketAddr {
        self.http_addr
    }

    pub fn grpc_addr(&self) -> SocketAddr {
        self.grpc_addr
    }

    /// The per-instance metrics (tests read them).
    pub fn stats(&self) -> Arc<metrics::Stats> {
        self.state.hub.stats.clone()
    }

    /// What each identity (signed out: each client address) holds, and every one's bytes
    /// together (tests read them).
    pub fn owners(&self) -> Arc<owners::Owners> {
        self.state.owners.clone()
    }

    pub async fn run_until(
        self,
        shutdown: impl Future<Output = ()> + Send + 'static,
    ) -> anyhow::Result<()> {
        let state = self.state.clone();
        tokio::spawn(revocations::follow(
            self.auth.clone(),
            state.hub.clone(),
            self.revoked.clone(),
            state.shutting_down.clone(),
        ));
        // Says at start-up which issuer and audience tokens must carry (and whether they came
        // from auth or from this service's JWT_ISSUER/JWT_AUDIENCE), once auth answers.
        let identities = state.identities.clone();
        tokio::spawn(async move {
            let mut backoff = edge_telemetry::backoff::reconnect();
            loop {
                match identities.learn().await {
                    Ok(_) => return,
                    Err(error) => {
                        tracing::warn!(%error, "cannot learn the token issuer from auth yet; retrying");
                        tokio::time::sleep(backoff.next().unwrap_or_default()).await;
                    }
                }
            }
        });
        let limit = state.config.max_message_bytes;
        let workers = std::thread::available_parallelism()
            .map(|n| n.get())
            .unwrap_or(2);
        // actix-web's HttpServer, plus an upgrade service: WebSocket handshakes leave the HTTP
        // stack (see `ws`).
        let server = actix_server::Server::build()
            .workers(workers)
            .disable_signals()
            .shutdown_timeout(5)
            .listen("query-http", self.http, move || {
                let app = App::new()
                    .app_data(state.clone())
                    .app_data(web::PayloadConfig::new(limit))
                    // Browsers call the HTTP API from the site's origin with a bearer token (no
                    // cookies), as they call Convex: any origin may.
                    .wrap(
                        actix_web::middleware::DefaultHeaders::new()
                            .add(("access-control-allow-origin", "*")),
                    )
                    .route(
                        "/api/{tail:.*}",
                        web::method(actix_web::http::Method::OPTIONS).to(preflight),
                    )
                    // A sync route reached without `Connection: upgrade`.
                    .route("/api/sync", web::get().to(not_an_upgrade))
                    .route("/api/{version}/sync", web::get().to(not_an_upgrade))
                    .configure(http::configure)
                    .route("/healthz", web::get().to(healthz))
                    .route("/readyz", web::get().to(readyz))
                    .route("/metrics", web::get().to(metrics))
                    .into_factory()
                    .map_err(|e: actix_web::Error| e.error_response());
                let upgrade_state = state.clone();
                HttpService::build()
                    .upgrade(fn_service(move |(req, framed)| {
                        ws::upgrade(upgrade_state.clone(), req, framed)
                    }))
                    .finish(map_config(app, |_| AppConfig::default()))
                    .tcp()
            })?
            .run();
        let handle = server.handle();
        let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
        let close_sockets = self.shutdown;
        let stats = self.state.hub.stats.clone();
        tokio::spawn(async move {
            shutdown.await;
            // Sockets first (with a reconnect hint); their tasks run on the HTTP workers, so the
            // workers stop only once the sockets are closed (or after a grace period).
            let _ = close_sockets.send(true);
            // A socket with requests outstanding stays for their answers (`RESTART_DRAIN`).
            let deadline = tokio::time::Instant::now()
                + downstream::RESTART_DRAIN
                + std::time::Duration::from_secs(1);
            while stats
                .downstream_connections
                .load(std::sync::atomic::Ordering::Relaxed)
                > 0
                && tokio::time::Instant::now() < deadline
            {
                tokio::time::sleep(std::time::Duration::from_millis(20)).await;
            }
            handle.stop(true).await;
            let _ = stop_tx.send(());
        });
        let incoming = TcpListenerStream::new(self.grpc).map(|stream| {
            let stream = stream?;
            stream.set_nodelay(true)?;
            Ok::<_, std::io::Error>(stream)
        });
        let grpc = tonic::transport::Server::builder()
            .add_service(QueryServiceServer::new(grpc::GrpcApi::new(
                self.state.proxy.clone(),
                self.state.shutting_down.clone(),
                self.state.config.query_limits,
            )))
            .serve_with_incoming_shutdown(incoming, async {
                let _ = stop_rx.await;
            });
        tracing::info!(http = %self.http_addr, grpc = %self.grpc_addr, convex = %self.state.config.convex_url, "query serving");
        let grpc_task = tokio::spawn(grpc);
        server.await.context("query HTTP server failed")?;
        grpc_task
            .await
            .context("gRPC task failed")?
            .context("gRPC server failed")?;
        Ok(())
    }
}

/// CORS preflight of the HTTP API.
async fn preflight() -> HttpResponse {
    HttpResponse::NoContent()
        .insert_header(("access-control-allow-methods", "GET, POST, OPTIONS"))
        .insert_header((
            "access-control-allow-headers",
            "authorization, content-type, convex-client",
        ))
        .insert_header(("access-control-max-age", "86400"))
        .finish()
}

async fn not_an_upgrade() -> HttpResponse {
    HttpResponse::BadRequest()
        .content_type("text/plain; charset=utf-8")
        .body("expected a WebSocket upgrade")
}

async fn healthz() -> HttpResponse {
    HttpResponse::Ok().json(serde_json::json!({"status": "ok"}))
}

/// Ready when Convex answers HTTP.
async fn readyz(state: web::Data<AppState>) -> HttpResponse {
    // Draining its sockets (a shutdown): a load balancer sends new clients elsewhere.
    if *state.shutting_down.borrow() {
        return HttpResponse::ServiceUnavailable()
            .json(serde_json::json!({"status": "shutting down"}));
    }
    let url = format!("{}/api/query_ts", state.config.convex_url);
    let probe = state
        .proxy
        .http
        .post(url)
        .timeout(std::time::Duration::from_secs(2))
        .send()
        .await;
    match probe {
        Ok(_) => HttpResponse::Ok().json(serde_json::json!({"status": "ready"})),
        Err(_) => HttpResponse::ServiceUnavailable()
            .json(serde_json::json!({"status": "Convex unreachable"})),
    }
}

async fn metrics(state: web::Data<AppState>) -> HttpResponse {
    HttpResponse::Ok()
        .content_type(edge_telemetry::METRICS_CONTENT_TYPE)
        .body(format!(
            "{}{}",
            state.hub.stats.render(),
            edge_telemetry::render()
        ))
}
