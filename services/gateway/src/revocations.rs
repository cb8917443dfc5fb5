//! Applies auth's revocation stream to the token cache, on every gateway.
//!
//! The stream is resumed from the last applied sequence after any break; while it is down the
//! cache is bypassed (every token request goes to auth), since a revocation could be missed.
//! At start the whole log is replayed so Redis never serves a session that ended while no
//! gateway was listening.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use edge_cache::TokenCache;
use edge_keys::CacheKey;
use edge_proto::auth::v1 as pb;
use edge_proto::auth::v1::auth_service_client::AuthServiceClient;
use tonic::transport::Channel;

use crate::metrics;

pub async fn watch(
    mut auth: AuthServiceClient<Channel>,
    cache: Arc<TokenCache<tonic::Status>>,
    trusted: Arc<AtomicBool>,
) {
    let mut after = 0u64;
    let mut backoff = edge_telemetry::backoff::reconnect();
    loop {
        let request = pb::WatchRevocationsRequest {
            after_sequence: after,
        };
        match auth.watch_revocations(request).await {
            Ok(response) => {
                let mut stream = response.into_inner();
                backoff = edge_telemetry::backoff::reconnect();
                // Entries cached while the stream was down may be revoked: start clean.
                cache.clear_l1();
                let mut caught_up = false;
                loop {
                    // The log before `after` is applied once the first quiet moment shows the
                    // stream has caught up; only then is the cache trusted again.
                    let next = if caught_up {
                        stream.message().await
                    } else {
                        match tokio::time::timeout(Duration::from_millis(200), stream.message())
                            .await
                        {
                            Ok(m) => m,
                            Err(_) => {
                                caught_up = true;
                                trusted.store(true, Ordering::Release);
                                continue;
                            }
                        }
                    };
                    match next {
                        Ok(Some(revocation)) => {
                            if let Some(key) = CacheKey::parse(&revocation.cache_key) {
                                cache.invalidate(&key).await;
                                metrics::REVOCATIONS_APPLIED.inc();
                            }
                            after = after.max(revocation.sequence);
                        }
                        Ok(None) | Err(_) => break,
                    }
                }
            }
            Err(status) => {
                tracing::warn!(code = ?status.code(), "revocation stream unavailable; retrying")
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
