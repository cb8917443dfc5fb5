//! The gateway's token cache (DESIGN section 5): an in-process L1 in front of an optional Redis
//! L2 shared by every gateway, single-flight per key, keys that are hashes of cookie values
//! (never the cookie), and a TTL that never reaches past the JWT's own expiry.
//!
//! Redis is a cache, never the source of truth: when it fails, requests go on through L1 and
//! the issuer, each Redis call is bounded by a short timeout, and after a failure Redis is
//! skipped for a moment so no request waits on a dead server.

use std::collections::HashMap;
use std::future::Future;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use deadpool_redis::redis;
use edge_keys::CacheKey;
use futures_util::FutureExt;
use futures_util::future::{BoxFuture, Shared};

/// A cached JWT.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Token {
    pub jwt: Arc<str>,
    /// Unix seconds.
    pub expires_at: i64,
}

/// Where an answer came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    L1Hit,
    L2Hit,
    Miss,
}

impl Outcome {
    /// The `result` label of `edge_gateway_token_cache_total`.
    pub fn label(self) -> &'static str {
        match self {
            Outcome::L1Hit => "l1_hit",
            Outcome::L2Hit => "l2_hit",
            Outcome::Miss => "miss",
        }
    }
}

#[derive(Debug, Clone)]
pub struct CacheConfig {
    /// Longest a token is kept (`AUTH_CACHE_TTL`).
    pub ttl: Duration,
    /// A token is neither stored nor served within this margin of its expiry.
    pub expiry_margin: Duration,
    pub l1_capacity: u64,
    /// `REDIS_URL`; `None` keeps the cache in memory only.
    pub redis_url: Option<String>,
    /// Upper bound of one Redis call.
    pub redis_timeout: Duration,
    /// How long Redis is skipped after a failure.
    pub redis_backoff: Duration,
}

impl Default for CacheConfig {
    fn default() -> Self {
        CacheConfig {
            ttl: Duration::from_secs(900),
            expiry_margin: Duration::from_secs(30),
            l1_capacity: 100_000,
            redis_url: None,
            redis_timeout: Duration::from_millis(50),
            redis_backoff: Duration::from_secs(1),
        }
    }
}

/// Counters a gateway turns into metrics.
#[derive(Debug, Default)]
pub struct CacheStats {
    pub redis_errors: AtomicU64,
}

type Flight<E> = Shared<BoxFuture<'static, Result<(Token, Outcome), E>>>;

pub struct TokenCache<E: Clone + Send + Sync + 'static> {
    inner: Arc<Inner>,
    flights: Mutex<HashMap<CacheKey, Flight<E>>>,
}

struct Inner {
    config: CacheConfig,
    l1: moka::future::Cache<CacheKey, Token>,
    l2: Option<L2>,
    l2_skip_until: Mutex<Option<Instant>>,
    stats: CacheStats,
}

/// Redis: the pool opens and checks connections; commands then share one multiplexed
/// connection taken out of it, so concurrent calls pipeline on one socket instead of each
/// checking a connection out (deadpool pings every connection it hands out: a second round
/// trip per command).
struct L2 {
    pool: deadpool_redis::Pool,
    shared: Mutex<Option<redis::aio::MultiplexedConnection>>,
}

impl L2 {
    async fn connection(&self) -> Result<redis::aio::MultiplexedConnection, String> {
        if let Some(conn) = self
            .shared
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
        {
            return Ok(conn);
        }
        let conn =
            deadpool_redis::Connection::take(self.pool.get().await.map_err(|e| e.to_string())?);
        *self.shared.lock().unwrap_or_else(|e| e.into_inner()) = Some(conn.clone());
        Ok(conn)
    }

    /// After a failure: the next call opens a fresh connection.
    fn reset(&self) {
        *self.shared.lock().unwrap_or_else(|e| e.into_inner()) = None;
    }
}

fn now_unix() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs() as i64)
        .unwrap_or(0)
}

impl Inner {
    /// How long `token` may be cached from now; `None` if it is too close to expiry.
    fn ttl_for(&self, token: &Token) -> Option<Duration> {
        let left = token.expires_at - now_unix() - self.config.expiry_margin.as_secs() as i64;
        (left > 0).then(|| self.config.ttl.min(Duration::from_secs(left as u64)))
    }

    fn servable(&self, token: &Token) -> bool {
        self.ttl_for(token).is_some()
    }

    fn redis(&self) -> Option<&L2> {
        let l2 = self.l2.as_ref()?;
        let skip = self.l2_skip_until.lock().unwrap_or_else(|e| e.into_inner());
        match *skip {
            Some(until) if Instant::now() < until => None,
            _ => Some(l2),
        }
    }

    fn redis_failed(&self, op: &str, error: &dyn std::fmt::Display) {
        self.stats.redis_errors.fetch_add(1, Ordering::Relaxed);
        if let Some(l2) = &self.l2 {
            l2.reset();
        }
        *self.l2_skip_until.lock().unwrap_or_else(|e| e.into_inner()) =
            Some(Instant::now() + self.config.redis_backoff);
        tracing::warn!(op, %error, "redis unavailable; serving from memory and auth");
    }

    /// Runs one Redis command within the timeout; failures open the breaker.
    async fn redis_call<T: redis::FromRedisValue>(&self, op: &str, cmd: redis::Cmd) -> Option<T> {
        let l2 = self.redis()?;
        let call = async {
            let mut conn = l2.connection().await?;
            cmd.query_async::<T>(&mut conn)
                .await
                .map_err(|e| e.to_string())
        };
        match tokio::time::timeout(self.config.redis_timeout, call).await {
            Ok(Ok(v)) => Some(v),
            Ok(Err(e)) => {
                self.redis_failed(op, &e);
                None
            }
            Err(_) => {
                self.redis_failed(op, &"timed out");
                None
            }
        }
    }

    async fn l2_get(&self, key: &CacheKey) -> Option<Token> {
        let value: Option<String> = self
            .redis_call("get", redis::Cmd::get(key.as_str()))
            .await?;
        let (exp, jwt) = value?
            .split_once(':')
            .map(|(e, j)| (e.parse().ok(), j.to_owned()))?;
        let token = Token {
            jwt: jwt.into(),
            expires_at: exp?,
        };
        self.servable(&token).then_some(token)
    }

    async fn l2_set(&self, key: &CacheKey, token: &Token, ttl: Duration) {
        let value = format!("{}:{}", token.expires_at, token.jwt);
        let mut cmd = redis::cmd("SET");
        cmd.arg(key.as_str())
            .arg(value)
            .arg("PX")
            .arg(ttl.as_millis() as u64);
        let _: Option<()> = self.redis_call("set", cmd).await;
    }
}

impl<E: Clone + Send + Sync + 'static> TokenCache<E> {
    /// A cache whose `rediss://` Redis is verified against the OS roots only.
    pub fn new(config: CacheConfig) -> Result<Self, String> {
        let tls = config
            .redis_url
            .as_deref()
            .is_some_and(|u| u.starts_with("rediss://"));
        let trust = if tls {
            edge_tls::Trust::load(None).map_err(|e| e.to_string())?
        } else {
            edge_tls::Trust::empty()
        };
        Self::with_trust(config, &trust)
    }

    /// A cache whose `rediss://` Redis is verified against `trust` (the OS roots plus
    /// `SSL_CERT_FILE`).
    pub fn with_trust(config: CacheConfig, trust: &edge_tls::Trust) -> Result<Self, String> {
        let l2 = match &config.redis_url {
            Some(url) => Some(L2 {
                pool: redis_pool(url, trust).map_err(|e| format!("invalid REDIS_URL: {e}"))?,
                shared: Mutex::new(None),
            }),
            None => None,
        };
        let l1 = moka::future::Cache::builder()
            .max_capacity(config.l1_capacity)
            .time_to_live(config.ttl)
            .build();
        let inner = Inner {
            config,
            l1,
            l2,
            l2_skip_until: Mutex::new(None),
            stats: CacheStats::default(),
        };
        Ok(TokenCache {
            inner: Arc::new(inner),
            flights: Mutex::new(HashMap::new()),
        })
    }

    pub fn stats(&self) -> &CacheStats {
        &self.inner.stats
    }

    /// The token for `key`: from L1, else L2, else `issue` — called once for any number of
    /// concurrent callers of one key.
    pub async fn get_or_issue<F, Fut>(
        &self,
        key: &CacheKey,
        issue: F,
    ) -> Result<(Token, Outcome), E>
    where
        F: FnOnce() -> Fut,
        Fut: Future<Output = Result<Token, E>> + Send + 'static,
    {
        if let Some(token) = self.inner.l1.get(key).await {
            if self.inner.servable(&token) {
                return Ok((token, Outcome::L1Hit));
            }
            self.inner.l1.invalidate(key).await;
        }
        let flight = {
            let mut flights = self.flights.lock().unwrap_or_else(|e| e.into_inner());
            match flights.get(key) {
                Some(f) => f.clone(),
                None => {
                    let inner = self.inner.clone();
                    let flight_key = key.clone();
                    let issued = issue();
                    let f = async move {
                        let key = flight_key;
                        if let Some(token) = inner.l2_get(&key).await {
                            inner.l1.insert(key, token.clone()).await;
                            return Ok((token, Outcome::L2Hit));
                        }
                        let token = issued.await?;
                        if let Some(ttl) = inner.ttl_for(&token) {
                            inner.l1.insert(key.clone(), token.clone()).await;
                            inner.l2_set(&key, &token, ttl).await;
                        }
                        Ok((token, Outcome::Miss))
                    }
                    .boxed()
                    .shared();
                    flights.insert(key.clone(), f.clone());
                    f
                }
            }
        };
        let result = flight.clone().await;
        // Only this flight's entry: a later one for the same key may already be in the map.
        let mut flights = self.flights.lock().unwrap_or_else(|e| e.into_inner());
        if flights.get(key).is_some_and(|f| f.ptr_eq(&flight)) {
            flights.remove(key);
        }
        drop(flights);
        result
    }

    /// Drops `key` from L1 and L2 (a revoked session).
    pub async fn invalidate(&self, key: &CacheKey) {
        self.inner.l1.invalidate(key).await;
        let _: Option<i64> = self
            .inner
            .redis_call("del", redis::Cmd::del(key.as_str()))
            .await;
    }

    /// Drops every L1 entry (the revocation stream broke: L1 can no longer be trusted).
    pub fn clear_l1(&self) {
        self.inner.l1.invalidate_all();
    }
}

/// A pool for `redis://` or, with TLS whose roots are `trust`, `rediss://`.
fn redis_pool(url: &str, trust: &edge_tls::Trust) -> Result<deadpool_redis::Pool, String> {
    if !url.starts_with("rediss://") {
        return deadpool_redis::Config::from_url(url)
            .create_pool(Some(deadpool_redis::Runtime::Tokio1))
            .map_err(|e| e.to_string());
    }
    let client = redis::Client::build_with_tls(
        url,
        redis::TlsCertificates {
            client_tls: None,
            root_cert: Some(trust.pem_bundle()),
        },
    )
    .map_err(|e| e.to_string())?;
    let manager = deadpool_redis::Manager::new(client.get_connection_info().clone())
        .map_err(|e| e.to_string())?;
    deadpool_redis::Pool::builder(manager)
        .runtime(deadpool_redis::Runtime::Tokio1)
        .build()
        .map_err(|e| e.to_string())
}
