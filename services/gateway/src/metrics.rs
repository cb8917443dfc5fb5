//! The gateway's metrics (names fixed by DESIGN section 7).

use std::sync::LazyLock;

use edge_telemetry::prometheus::{HistogramVec, IntCounter, IntCounterVec, IntGauge};

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

pub static PAGE_QUERIES: LazyLock<IntCounterVec> = LazyLock::new(|| {
    edge_telemetry::counter_vec(
        "edge_gateway_page_queries_total",
        "server-rendered page queries by source: a live watch, or a QueryBatch fetch",
        &["source"],
    )
});

pub static PAGE_QUERY_ERRORS: LazyLock<IntCounterVec> = LazyLock::new(|| {
    edge_telemetry::counter_vec(
        "edge_gateway_page_query_errors_total",
        "server-rendered page queries whose result was an error, by source (also counted in edge_gateway_page_queries_total)",
        &["source"],
    )
});

pub static PAGE_WATCHES: LazyLock<IntGauge> = LazyLock::new(|| {
    edge_telemetry::int_gauge(
        "edge_gateway_page_watches",
        "page data watches held open on the query service (set when scraped)",
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

pub static REVOKED_REFUSED: LazyLock<IntCounter> = LazyLock::new(|| {
    edge_telemetry::counter(
        "edge_gateway_revoked_tokens_refused_total",
        "cached or just-issued tokens refused because the session log revoked them",
    )
});

pub static PENDING_DELETES: LazyLock<IntGauge> = LazyLock::new(|| {
    edge_telemetry::int_gauge(
        "edge_gateway_redis_pending_deletes",
        "token cache deletes Redis has not confirmed yet, being retried (set when scraped)",
    )
});

/// Brings the refused-token counter up to the cache's own count (read at scrape time).
pub fn sync_refused(seen: u64) {
    let exported = REVOKED_REFUSED.get();
    if seen > exported {
        REVOKED_REFUSED.inc_by(seen - exported);
    }
}

/// Brings the Redis error counter up to the cache's own count (read at scrape time, so the
/// cache crate needs no metrics registry).
pub fn sync_redis_errors(seen: u64) {
    let exported = REDIS_ERRORS.get();
    if seen > exported {
        REDIS_ERRORS.inc_by(seen - exported);
    }
}

/// Registers every metric, with each label value at 0, so `/metrics` lists them from the start
/// (a reader then tells "none yet" from "not exported").
pub fn init() {
    for result in ["l1_hit", "l2_hit", "miss"] {
        TOKEN_CACHE.with_label_values(&[result]);
    }
    for source in ["watch", "fetch"] {
        PAGE_QUERIES.with_label_values(&[source]);
        PAGE_QUERY_ERRORS.with_label_values(&[source]);
    }
    LazyLock::force(&REDIS_ERRORS);
    LazyLock::force(&REQUEST_DURATION);
    LazyLock::force(&TOKEN_CACHE);
    LazyLock::force(&PAGE_QUERIES);
    LazyLock::force(&PAGE_QUERY_ERRORS);
    LazyLock::force(&PAGE_WATCHES);
    LazyLock::force(&REVOCATIONS_APPLIED);
    LazyLock::force(&REVOKED_REFUSED);
    LazyLock::force(&PENDING_DELETES);
}
