//! Better Auth's rate limits in front of every `/api/auth/*` route: before a route runs, auth
//! counts the request of the client's address on its path (`ConsumeRateLimit`, in the shared
//! `rateLimit` table, so every gateway and auth replica counts together) under Better Auth's
//! rule for that path, and a full window is answered 429 `{"message"}` with `X-Retry-After`,
//! as Better Auth's `onRequestRateLimit` answers before its router.
//!
//! Not asked for: sign-in and sign-up (auth counts them in the operation itself, per address
//! and per account), and preflights. The read routes the token cache serves (`get-session`,
//! `token`, `convex/token`, `jwks`, `convex/jwks`) are counted under the same default rule in
//! this gateway's memory ([`ReadLimiter`]), as Better Auth's default in-memory store counts
//! every route per process: a database write per cache hit would cost what the cache saves.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use actix_web::body::MessageBody;
use actix_web::dev::{ServiceRequest, ServiceResponse};
use actix_web::http::Method;
use actix_web::middleware::Next;
use actix_web::{ResponseError, web};
use edge_proto::auth::v1 as pb;

use crate::State;
use crate::error::ApiError;
use crate::routes::auth::client_info;

/// The cached read routes below `/api/auth`, counted by [`ReadLimiter`].
const READ_ROUTES: [&str; 5] = [
    "/get-session",
    "/token",
    "/convex/token",
    "/jwks",
    "/convex/jwks",
];

/// Who counts a request, if anyone.
enum Counted {
    /// auth, in the shared `rateLimit` table, under the route's pattern.
    Shared(String),
    /// This gateway's [`ReadLimiter`], under the path.
    Local(&'static str),
}

/// Which counter a request goes to: a route the gateway serves, under its pattern, not the raw
/// path (`/reset-password/{token}` keeps the token out of the key), so made-up paths (answered
/// 404 without auth) cannot add rows to the shared table.
fn counted(req: &ServiceRequest) -> Option<Counted> {
    if req.method() == Method::OPTIONS {
        return None;
    }
    // The raw path first: pages and the cached read routes (the hot paths) never pay for a
    // route lookup.
    let path = req.path().strip_prefix("/api/auth")?;
    if let Some(read) = READ_ROUTES.iter().find(|r| **r == path) {
        return Some(Counted::Local(read));
    }
    let by_auth = path.starts_with("/sign-in") || path.starts_with("/sign-up");
    if !path.starts_with('/') || by_auth {
        return None;
    }
    let pattern = req.match_pattern()?;
    pattern
        .strip_prefix("/api/auth")
        .filter(|p| p.starts_with('/'))
        .map(|p| Counted::Shared(p.to_owned()))
}

/// Better Auth's default rule (`max` requests within `window` of the last counted one, per
/// client address and path) for the read routes, counted in memory as Better Auth's default
/// store does (`api/rate-limiter`, `decideConsume`; at most 100,000 keys, expired ones pruned
/// first). `GATEWAY_READ_RATE_LIMIT_MAX` / `GATEWAY_READ_RATE_LIMIT_WINDOW_SECONDS`.
#[derive(Debug)]
pub struct ReadLimiter {
    max: u32,
    window: Duration,
    /// Per (client network, path): `None` is Better Auth's shared `no-trusted-ip` bucket.
    counts: Mutex<HashMap<(Option<IpAddr>, &'static str), Count>>,
}

#[derive(Debug, Clone, Copy)]
struct Count {
    count: u32,
    last_request: Instant,
}

/// Keys kept at most, as Better Auth's `MEMORY_STORE_MAX_ENTRIES`.
const MAX_KEYS: usize = 100_000;

impl ReadLimiter {
    pub fn new(max: u32, window: Duration) -> Self {
        ReadLimiter {
            max,
            window,
            counts: Mutex::new(HashMap::new()),
        }
    }

    /// Counts one request of `client` (its network: an IPv6 client is its /64, as Better Auth
    /// keys it) on `path` at `now`; `Err(seconds)` to wait (Better Auth's `X-Retry-After`)
    /// when the window is full. No address is Better Auth's shared `no-trusted-ip` bucket.
    /// The key is two words: a cache hit pays for no allocation here.
    pub fn consume(
        &self,
        client: Option<IpAddr>,
        path: &'static str,
        now: Instant,
    ) -> Result<(), u64> {
        let key = (client.map(edge_forwarded::client_network), path);
        let mut counts = self.counts.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(entry) = counts.get_mut(&key) {
            if now.duration_since(entry.last_request) >= self.window {
                *entry = Count {
                    count: 1,
                    last_request: now,
                };
            } else if entry.count >= self.max {
                let left = (entry.last_request + self.window).duration_since(now);
                return Err(left.as_millis().div_ceil(1000) as u64);
            } else {
                entry.count += 1;
                entry.last_request = now;
            }
            return Ok(());
        }
        if counts.len() >= MAX_KEYS {
            let window = self.window;
            counts.retain(|_, c| now.duration_since(c.last_request) < window);
            // Still full of live keys: drop a tenth, so the next inserts do not scan again.
            if counts.len() >= MAX_KEYS {
                let drop: Vec<_> = counts.keys().take(MAX_KEYS / 10).copied().collect();
                for k in drop {
                    counts.remove(&k);
                }
            }
        }
        counts.insert(
            key,
            Count {
                count: 1,
                last_request: now,
            },
        );
        Ok(())
    }
}

/// The middleware (`actix_web::middleware::from_fn`).
pub async fn limit(
    req: ServiceRequest,
    next: Next<impl MessageBody + 'static>,
) -> Result<ServiceResponse<impl MessageBody>, actix_web::Error> {
    let (Some(counted), Some(state)) = (counted(&req), req.app_data::<web::Data<State>>()) else {
        return next
            .call(req)
            .await
            .map(ServiceResponse::map_into_left_body);
    };
    let refused = match counted {
        Counted::Local(path) => match &state.read_limiter {
            Some(limiter) => {
                let client = crate::routes::client_view(req.request()).ip;
                limiter
                    .consume(client, path, Instant::now())
                    .err()
                    .map(|seconds| ApiError {
                        retry_after: Some(seconds.to_string()),
                        ..ApiError::new(
                            edge_proto::error::ErrorCode::TOO_MANY_REQUESTS,
                            "Too many requests. Please try again later.",
                        )
                    })
            }
            None => None,
        },
        Counted::Shared(path) => {
            let request = pb::ConsumeRateLimitRequest {
                client: Some(client_info(req.request())),
                path,
            };
            state
                .auth()
                .consume_rate_limit(request)
                .await
                .err()
                .map(ApiError::from)
        }
    };
    match refused {
        None => next
            .call(req)
            .await
            .map(ServiceResponse::map_into_left_body),
        Some(error) => Ok(req
            .into_response(error.error_response())
            .map_into_right_body()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(s: &str) -> Option<IpAddr> {
        Some(s.parse().unwrap())
    }

    #[test]
    fn reads_are_counted_as_better_auths_memory_store_counts() {
        let limiter = ReadLimiter::new(3, Duration::from_secs(10));
        let t0 = Instant::now();
        let at = |ms: u64| t0 + Duration::from_millis(ms);
        for i in 0..3 {
            assert_eq!(
                limiter.consume(ip("10.0.0.1"), "/token", at(i * 1000)),
                Ok(())
            );
        }
        // Full: refused until 10 s after the last counted request (at 2 s), and a refusal
        // does not move it.
        assert_eq!(limiter.consume(ip("10.0.0.1"), "/token", at(3_000)), Err(9));
        assert_eq!(
            limiter.consume(ip("10.0.0.1"), "/token", at(11_500)),
            Err(1)
        );
        // Another path, another address, the shared unknown-address bucket: their own counts.
        assert_eq!(
            limiter.consume(ip("10.0.0.1"), "/get-session", at(3_000)),
            Ok(())
        );
        assert_eq!(limiter.consume(ip("10.0.0.2"), "/token", at(3_000)), Ok(()));
        assert_eq!(limiter.consume(None, "/token", at(3_000)), Ok(()));
        // A whole window after the last counted one, the count starts again.
        assert_eq!(
            limiter.consume(ip("10.0.0.1"), "/token", at(12_000)),
            Ok(())
        );
    }

    #[test]
    fn the_key_count_stays_bounded() {
        let limiter = ReadLimiter::new(100, Duration::from_secs(10));
        let now = Instant::now();
        for i in 0..(MAX_KEYS + 10) {
            let address = format!("10.{}.{}.{}", i >> 16, (i >> 8) & 255, i & 255);
            assert_eq!(limiter.consume(ip(&address), "/token", now), Ok(()));
        }
        assert!(limiter.counts.lock().unwrap().len() <= MAX_KEYS);
    }
}
