//! Health, readiness and metrics.

use std::sync::atomic::Ordering;
use std::time::Duration;

use actix_web::http::header;
use actix_web::{HttpResponse, web};
use edge_proto::auth::v1 as pb;
use serde_json::json;

use crate::State;

pub fn configure(cfg: &mut web::ServiceConfig) {
    cfg.route("/healthz", web::get().to(healthz))
        .route("/readyz", web::get().to(readyz))
        .route("/metrics", web::get().to(metrics));
}

async fn healthz() -> HttpResponse {
    HttpResponse::Ok().json(json!({"status": "ok"}))
}

/// Ready when auth answers and, with a token cache, once the session log's backlog has been
/// read (a later break of the stream only bypasses the cache). Redis never decides readiness
/// (it is a cache): while it fails, `redis` says why (e.g. a certificate the trust store
/// refuses), with the cause the log has.
async fn readyz(state: web::Data<State>) -> HttpResponse {
    let redis = state.cache().and_then(|c| c.redis_error());
    let body = |status: &str| match &redis {
        Some(error) => json!({"status": status, "redis": error}),
        None => json!({"status": status}),
    };
    if state.cache().is_some() && !state.log_caught_up.load(Ordering::Acquire) {
        return HttpResponse::ServiceUnavailable().json(body("reading the session log"));
    }
    let mut auth = state.auth();
    let probe = tokio::time::timeout(Duration::from_secs(2), auth.get_jwks(pb::GetJwksRequest {}));
    match probe.await {
        Ok(Ok(_)) => HttpResponse::Ok().json(body("ready")),
        _ => HttpResponse::ServiceUnavailable().json(body("auth unreachable")),
    }
}

async fn metrics(state: web::Data<State>) -> HttpResponse {
    if let Some(cache) = state.cache() {
        crate::metrics::sync_redis_errors(cache.stats().redis_errors.load(Ordering::Relaxed));
        crate::metrics::sync_refused(cache.stats().refused.load(Ordering::Relaxed));
        crate::metrics::PENDING_DELETES.set(cache.pending_deletes() as i64);
    }
    if let Some(live) = &state.live {
        crate::metrics::PAGE_WATCHES.set(live.watches() as i64);
    }
    HttpResponse::Ok()
        .insert_header((header::CONTENT_TYPE, edge_telemetry::METRICS_CONTENT_TYPE))
        .body(edge_telemetry::render())
}
