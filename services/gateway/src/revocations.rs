//! Applies auth's session log stream to the token cache, on every gateway.
//!
//! Each entry names a session (ended) or a user (claims changed, or deleted); the cache refuses
//! every token of it whose fence is below the entry's position, wherever the token is (L1,
//! Redis, or in flight from auth), and deletes the entry's cache key when the log knows it.
//! The stream starts at the retention window and says when its backlog is out; only then is
//! the cache trusted. After any break it resumes from the last applied position, and the cache
//! is bypassed (every token request goes to auth) until it has caught up again.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use edge_cache::TokenCache;
use edge_keys::CacheKey;
use edge_proto::auth::v1 as pb;

use crate::metrics;

/// Until auth says otherwise (its end-of-backlog mark carries the retention).
const DEFAULT_RETENTION: Duration = Duration::from_secs(1200);

pub async fn watch(
    mut auth: crate::AuthClient,
    cache: Arc<TokenCache<tonic::Status>>,
    trusted: Arc<AtomicBool>,
    caught_up: Arc<AtomicBool>,
) {
    let mut after = 0u64;
    let mut retention = DEFAULT_RETENTION;
    let mut last_sweep = Instant::now();
    let mut backoff = edge_telemetry::backoff::reconnect();
    loop {
        let request = pb::WatchRevocationsRequest {
            after_sequence: after,
        };
        match auth.watch_revocations(request).await {
            Ok(response) => {
                let mut stream = response.into_inner();
                backoff = edge_telemetry::backoff::reconnect();
                loop {
                    match stream.message().await {
                        Ok(Some(entry)) if entry.end_of_backlog => {
                            if entry.retention_seconds > 0 {
                                retention = Duration::from_secs(entry.retention_seconds);
                            }
                            after = after.max(entry.sequence);
                            cache.set_applied(after);
                            if !trusted.swap(true, Ordering::AcqRel) {
                                tracing::info!(position = after, "session log caught up");
                            }
                            caught_up.store(true, Ordering::Release);
                        }
                        Ok(Some(entry)) => {
                            apply(&cache, &entry).await;
                            after = after.max(entry.sequence);
                            cache.set_applied(after);
                        }
                        Ok(None) | Err(_) => break,
                    }
                    if last_sweep.elapsed() > Duration::from_secs(30) {
                        cache.forget_revocations(retention);
                        last_sweep = Instant::now();
                    }
                }
            }
            Err(status) => {
                // With its causes: a refused certificate says why (`UnknownIssuer`).
                let error = edge_tls::describe(&status);
                tracing::warn!(code = ?status.code(), %error, "revocation stream unavailable; retrying")
            }
        }
        trusted.store(false, Ordering::Release);
        tracing::warn!(
            after,
            "revocation stream broken; bypassing the token cache until it resumes"
        );
        tokio::time::sleep(backoff.next().unwrap_or_default()).await;
    }
}

/// One log entry: refuse its session's or user's tokens from now on, and delete the cache key
/// when the entry names one.
pub(crate) async fn apply(cache: &TokenCache<tonic::Status>, entry: &pb::Revocation) {
    if !entry.session_id.is_empty() {
        cache.revoke_session(&entry.session_id, entry.sequence);
    } else if !entry.user_id.is_empty() {
        cache.revoke_user(&entry.user_id, entry.sequence);
    }
    if let Some(key) = CacheKey::parse(&entry.cache_key) {
        cache.invalidate(&key).await;
    }
    metrics::REVOCATIONS_APPLIED.inc();
}
