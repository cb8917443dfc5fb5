//! The auth service: Better Auth-compatible sessions, Convex JWTs, the JWKS and the revocation
//! log, served over gRPC (to the gateway and query) and a small HTTP server.
//!
//! [`Application::build`] binds the listeners (port 0 in tests) and loads everything;
//! [`Application::run_until`] serves until a shutdown future resolves.

pub mod account;
pub mod config;
pub mod error;
pub mod grpc;
pub mod hashing;
pub mod http;
pub mod keys;
pub mod mail;
mod metrics;
mod ratelimit;
pub mod revocations;
pub mod service;
pub mod social;
pub mod store;

use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;

use anyhow::Context;
use edge_proto::auth::v1::auth_service_server::AuthServiceServer;
use tokio_stream::StreamExt;
use tokio_stream::wrappers::TcpListenerStream;

pub use config::{Config, ConfigError};
pub use service::AuthCore;
pub use store::Store;

/// A built auth service: listeners bound, store migrated, keys loaded.
pub struct Application {
    core: Arc<AuthCore>,
    listener: Option<sqlx::postgres::PgListener>,
    grpc: tokio::net::TcpListener,
    http: std::net::TcpListener,
    grpc_addr: SocketAddr,
    http_addr: SocketAddr,
}

impl Application {
    pub async fn build(config: Config) -> anyhow::Result<Application> {
        metrics::init();
        let trust = edge_tls::Trust::load(config.ssl_cert_file.as_deref())
            .context("invalid SSL_CERT_FILE")?;
        let store = Store::open_with_trust(&config.database_url, Some(&trust))
            .await
            .context("failed to open the database")?;
        let keys = keys::KeyManager::start(
            config.static_jwks.as_deref(),
            config.alg,
            config.secret.clone(),
            store.clone(),
            config.key_publish_lead(),
        )
        .await
        .context("failed to load signing keys")?;
        let latest = store
            .latest_revocation()
            .await
            .context("failed to read the revocation log")?;
        let hub = revocations::RevocationHub::new(latest);
        // LISTEN before serving, so a notification sent once `build` returns is not missed.
        let listener = match store.listener().await {
            Ok(l) => l,
            Err(error) => {
                tracing::warn!(%error, "cannot listen for notifications; polling only");
                None
            }
        };
        let grpc = tokio::net::TcpListener::bind(config.grpc_addr)
            .await
            .with_context(|| format!("failed to bind AUTH_GRPC_ADDR {}", config.grpc_addr))?;
        let http = std::net::TcpListener::bind(config.http_addr)
            .with_context(|| format!("failed to bind AUTH_HTTP_ADDR {}", config.http_addr))?;
        http.set_nonblocking(true)?;
        let grpc_addr = grpc.local_addr()?;
        let http_addr = http.local_addr()?;
        let mailer = mail::Mailer::new(&config.mail, &trust).context("invalid mail settings")?;
        let core = Arc::new(
            AuthCore::new(config, store, Arc::new(keys), hub)
                .with_mailer(mailer)
                .with_trust(&trust),
        );
        Ok(Application {
            core,
            listener,
            grpc,
            http,
            grpc_addr,
            http_addr,
        })
    }

    pub fn grpc_addr(&self) -> SocketAddr {
        self.grpc_addr
    }

    pub fn http_addr(&self) -> SocketAddr {
        self.http_addr
    }

    pub fn core(&self) -> Arc<AuthCore> {
        self.core.clone()
    }

    /// Serves gRPC and HTTP until `shutdown` resolves, then drains in-flight requests.
    pub async fn run_until(
        self,
        shutdown: impl Future<Output = ()> + Send + 'static,
    ) -> anyhow::Result<()> {
        let core = self.core;
        let watcher = tokio::spawn(revocations::watch_database(
            core.store.clone(),
            self.listener,
            core.revocations.clone(),
            core.keys.clone(),
            core.config.database_poll(),
        ));
        let pruner = tokio::spawn(revocations::prune(
            core.store.clone(),
            core.config.revocation_retention(),
            core.config.sign_in_limit.longest_window(),
            std::time::Duration::from_secs(60),
        ));
        let http =
            http::server(core.clone(), self.http).context("failed to start the HTTP server")?;
        let http_handle = http.handle();
        let http_task = tokio::spawn(http);
        tracing::info!(grpc = %self.grpc_addr, http = %self.http_addr, keys = ?core.keys.mode(), "auth serving");
        let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
        // Small request/response pairs: without TCP_NODELAY, Nagle and delayed ACKs add 40 ms.
        let incoming = TcpListenerStream::new(self.grpc).map(|stream| {
            let stream = stream?;
            stream.set_nodelay(true)?;
            Ok::<_, std::io::Error>(stream)
        });
        let grpc = tonic::transport::Server::builder()
            .add_service(AuthServiceServer::new(grpc::GrpcApi::new(core.clone())))
            .serve_with_incoming_shutdown(incoming, async {
                let _ = stop_rx.await;
            });
        tokio::pin!(grpc);
        let result = tokio::select! {
            result = &mut grpc => result.context("gRPC server failed"),
            () = shutdown => {
                // Streams end with UNAVAILABLE (clients resume on another replica), both
                // listeners close at once, and whatever is still running after the drain
                // deadline is dropped: the process never outlives its grace period.
                let drain = core.config.drain_timeout;
                tracing::info!(drain_ms = drain.as_millis() as u64, "auth draining");
                core.stopping.send_replace(true);
                let _ = stop_tx.send(());
                let (grpc_done, _) = tokio::join!(
                    tokio::time::timeout(drain, &mut grpc),
                    tokio::time::timeout(drain, http_handle.stop(true)),
                );
                match grpc_done {
                    Ok(result) => result.context("gRPC server failed"),
                    Err(_) => {
                        tracing::warn!("drain deadline passed; closing the remaining gRPC calls");
                        Ok(())
                    }
                }
            }
        };
        http_handle.stop(false).await;
        let _ = http_task.await;
        watcher.abort();
        pruner.abort();
        tracing::info!("auth stopped");
        result
    }
}
