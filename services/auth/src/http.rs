//! The auth service's small HTTP server: JWKS, health and metrics.

use std::sync::Arc;

use actix_web::http::header;
use actix_web::{App, HttpResponse, HttpServer, web};

use crate::service::AuthCore;

/// The JWKS, cacheable for `JWKS_MAX_AGE_SECONDS`: a rotated key signs only after being
/// published that long (plus stale-while-revalidate), so a verifier that never refetches on
/// an unknown `kid` (Convex) still knows every key it meets.
async fn jwks(core: web::Data<Arc<AuthCore>>) -> HttpResponse {
    HttpResponse::Ok()
        .insert_header((header::CONTENT_TYPE, "application/json"))
        .insert_header((header::CACHE_CONTROL, core.config.jwks_cache_control()))
        .body(core.keys.current().jwks_json().to_owned())
}

async fn healthz() -> HttpResponse {
    HttpResponse::Ok().json(serde_json::json!({"status": "ok"}))
}

async fn readyz(core: web::Data<Arc<AuthCore>>) -> HttpResponse {
    match core.store.ping().await {
        Ok(()) => HttpResponse::Ok().json(serde_json::json!({"status": "ready"})),
        Err(error) => {
            tracing::warn!(%error, "not ready: database unreachable");
            HttpResponse::ServiceUnavailable()
                .json(serde_json::json!({"status": "database unreachable"}))
        }
    }
}

async fn metrics() -> HttpResponse {
    HttpResponse::Ok()
        .insert_header((header::CONTENT_TYPE, edge_telemetry::METRICS_CONTENT_TYPE))
        .body(edge_telemetry::render())
}

/// Builds (but does not start) the HTTP server on an already-bound listener.
pub fn server(
    core: Arc<AuthCore>,
    listener: std::net::TcpListener,
) -> std::io::Result<actix_web::dev::Server> {
    let data = web::Data::new(core);
    Ok(HttpServer::new(move || {
        App::new()
            .app_data(data.clone())
            .route("/.well-known/jwks.json", web::get().to(jwks))
            .route("/api/auth/jwks", web::get().to(jwks))
            .route("/healthz", web::get().to(healthz))
            .route("/readyz", web::get().to(readyz))
            .route("/metrics", web::get().to(metrics))
    })
    .workers(1)
    .disable_signals()
    .shutdown_timeout(5)
    .listen(listener)?
    .run())
}
