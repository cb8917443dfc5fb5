//! The gateway's metrics (names fixed by DESIGN section 7).

use std::sync::LazyLock;

use edge_telemetry::prometheus::{HistogramVec, IntCounter, IntCounterVec};

pub static REQUEST_DURATION: LazyLock<HistogramVec> = LazyLock::new(|| {
    edge_telemetry::histogram(
        "edge_gateway_request_duration_seconds",
        "server-side latency to the first response byte",
        &["route"],
    )
});

pub static TOKEN_CACHE: LazyLock<IntCounterVec> = LazyLock::new(|| {
    edge_telemetry::counter_vec(
        "edge_gateway_token_cache_total",
        "token cache outcomes",
        &["result"],
    )
});

pub static REVOCATIONS_APPLIED: LazyLock<IntCounter> = LazyLock::new(|| {
    edge_telemetry::counter(
        "edge_gateway_revocations_applied_total",
        "revocations applied to the cache",
    )
});

pub static REDIS_ERRORS: LazyLock<IntCounter> = LazyLock::new(|| {
    edge_telemetry::counter(
        "edge_gateway_redis_errors_total",
        "Redis calls of the token cache that failed or timed out (served from memory and auth)",
    )
});

/// Brings the Redis error counter up to the cache's own count (read at scrape time, so the
/// cache crate needs no metrics registry).
pub fn sync_redis_errors(seen: u64) {
    let exported = REDIS_ERRORS.get();
    if seen > exported {
        REDIS_ERRORS.inc_by(seen - exported);
    }
}

pub fn init() {
    LazyLock::force(&REDIS_ERRORS);
    LazyLock::force(&REQUEST_DURATION);
    LazyLock::force(&TOKEN_CACHE);
    LazyLock::force(&REVOCATIONS_APPLIED);
}
