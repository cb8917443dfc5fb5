//! The gateway's token cache (DESIGN section 5): an in-process L1 in front of an optional Redis
//! L2 shared by every gateway, single-flight per key, keys that are hashes of cookie values
//! (never the cookie), and a TTL that never reaches past the JWT's own expiry.
//!
//! Redis is a cache, never the source of truth: when it fails, requests go on through L1 and
//! the issuer, each Redis call is bounded by a short timeout, and after a failure Redis is
//! skipped for a moment so no request waits on a dead server.
//!
//! Nor is it trusted over the session log: every token carries its session, its user and a
//! fence (the log position its issuer had applied when it asked for it), and nothing — from L1,
//! from Redis, or fresh from the issuer — is served or stored while the log holds a later entry
//! for its session or user. A lost Redis delete, or a token issued while its session was being
//! revoked, therefore never reaches a client. Deletes that Redis did not confirm are retried.

use std::collections::HashMap;
use std::future::Future;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, RwLock};
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
    /// The JWT's `iat` (Unix seconds; [`issued_at`]); `None` for a token without one.
    pub issued_at: Option<i64>,
    /// The JWT's `sessionId`.
    pub session_id: Arc<str>,
    /// The JWT's `sub`.
    pub user_id: Arc<str>,
    /// The session log position applied before the token was requested: log entries at or
    /// below it were committed before the issuer read the session, so they are reflected.
    pub fence: u64,
}

/// The `iat` claim of a compact JWT (Unix seconds), read without verifying it: the token came
/// from auth, and only its age is wanted.
pub fn issued_at(jwt: &str) -> Option<i64> {
    use base64::Engine;
    let payload = jwt.split('.').nth(1)?;
    let bytes = base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(payload)
        .ok()?;
    let claims: serde_json::Value = serde_json::from_slice(&bytes).ok()?;
    claims.get("iat")?.as_i64()
}

/// Session log entries within the retention window, by session and by user: the position of
/// the latest, and when it was learnt (entries are forgotten after the window).
#[derive(Debug, Default)]
struct Revoked {
    sessions: HashMap<Arc<str>, (u64, Instant)>,
    users: HashMap<Arc<str>, (u64, Instant)>,
}

impl Revoked {
    fn blocks(&self, token: &Token) -> bool {
        let later = |m: &HashMap<Arc<str>, (u64, Instant)>, id: &Arc<str>| {
            m.get(id)
                .is_some_and(|(position, _)| *position > token.fence)
        };
        later(&self.sessions, &token.session_id) || later(&self.users, &token.user_id)
    }
}

fn record(map: &mut HashMap<Arc<str>, (u64, Instant)>, id: &str, position: u64) {
    let now = Instant::now();
    map.entry(Arc::from(id))
        .and_modify(|e| *e = (e.0.max(position), now))
        .or_insert((position, now));
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
    /// A token is served only while younger than this (`AUTH_CACHE_MAX_TOKEN_AGE`), counted
    /// from its `iat`. The Convex client schedules its refresh `exp − iat −
    /// authRefreshTokenLeewaySeconds` (10 s by default) after it *receives* a token
    /// (convex-js `authentication_manager.ts`, `scheduleTokenRefetch` for a fresh token), as if
    /// every token were new: a token served `a` seconds after its `iat` is held until
    /// `exp + a − 10 s`, so only one younger than the leeway is refreshed before it expires.
    pub max_token_age: Duration,
    pub l1_capacity: u64,
    /// `REDIS_URL`; `None` keeps the cache in memory only.
    pub redis_url: Option<String>,
    /// Upper bound of one Redis call.
    pub redis_timeout: Duration,
    /// How long Redis is skipped after a failure.
    pub redis_backoff: Duration,
}

/// Keys whose Redis delete is not confirmed yet, bounded (the log refuses their entries
/// meanwhile, and they expire with their TTL anyway).
const MAX_PENDING_DELETES: usize = 100_000;

impl Default for CacheConfig {
    fn default() -> Self {
        CacheConfig {
            ttl: Duration::from_secs(900),
            expiry_margin: Duration::from_secs(30),
            max_token_age: Duration::from_secs(5),
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
    /// Cached tokens refused because the session log revoked them (L1 or L2).
    pub refused: AtomicU64,
}

type Flight<E> = Shared<BoxFuture<'static, Result<(Token, Outcome), E>>>;

pub struct TokenCache<E: Clone + Send + Sync + 'static> {
    inner: Arc<Inner>,
    flights: Mutex<HashMap<CacheKey, Flight<E>>>,
    /// The error for a token revoked while it was being issued.
    revoked_error: fn() -> E,
}

struct Inner {
    config: CacheConfig,
    l1: moka::future::Cache<CacheKey, Token>,
    l2: Option<L2>,
    l2_skip_until: Mutex<Option<Instant>>,
    stats: CacheStats,
    revoked: RwLock<Revoked>,
    /// The session log position applied so far (the fence of tokens requested now).
    applied: AtomicU64,
    /// Redis deletes to retry until Redis confirms them, with when they stop mattering.
    pending_deletes: Mutex<HashMap<CacheKey, Instant>>,
    retrying: AtomicBool,
}

/// Redis: the pool opens and checks connections; commands then share one multiplexed
/// connection taken out of it, so concurrent calls pipeline on one socket instead of each
/// checking a connection out (deadpool pings every connection it hands out: a second round
/// trip per command).
///
/// Opening that connection (TCP, TLS, the pool's ping) runs in a task of its own, bounded by
/// [`CONNECT_TIMEOUT`] rather than by a command's short timeout, and starts as the cache is
/// made. Commands wait for an attempt only during its first command timeout; after that they go
/// without Redis (no failure counted: a cold TLS handshake may take longer than a command) while
/// it goes on, so the cause of a failure (a certificate the trust store refuses, a refused port)
/// is what is logged and kept for [`TokenCache::redis_error`], not "timed out".
struct L2 {
    pool: deadpool_redis::Pool,
    shared: Arc<Mutex<Option<redis::aio::MultiplexedConnection>>>,
    /// The attempt under way (or just ended) and when it started.
    connecting: Mutex<Option<(Instant, Connecting)>>,
    /// The last failure to connect or to run a command, described with its causes; `None`
    /// once a command succeeds.
    last_error: Arc<Mutex<Option<String>>>,
}

type Connecting = Shared<BoxFuture<'static, Result<redis::aio::MultiplexedConnection, String>>>;

/// How long opening a Redis connection may take before it counts as failed.
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);

impl L2 {
    /// The open connection, waiting for an attempt under way until `wait` after it started.
    /// `Ok(None)`: still opening; `Err`: the attempt failed, with its cause.
    async fn connection(
        &self,
        wait: Duration,
    ) -> Result<Option<redis::aio::MultiplexedConnection>, String> {
        if let Some(conn) = lock(&self.shared).clone() {
            return Ok(Some(conn));
        }
        let (started, connecting) = self.attempt();
        // A finished attempt answers even past the deadline: `timeout_at` polls it first.
        match tokio::time::timeout_at((started + wait).into(), connecting).await {
            Ok(opened) => opened.map(Some),
            Err(_) => Ok(None),
        }
    }

    /// The connection attempt under way, started now if there is none.
    fn attempt(&self) -> (Instant, Connecting) {
        lock(&self.connecting)
            .get_or_insert_with(|| (Instant::now(), self.connect()))
            .clone()
    }

    /// Starts a connection attempt (its task runs on its own) unless one is under way.
    fn start_connecting(&self) {
        lock(&self.connecting).get_or_insert_with(|| (Instant::now(), self.connect()));
    }

    /// Starts opening a connection in a task of its own; every caller waits on the same one.
    fn connect(&self) -> Connecting {
        let (pool, shared, last_error) = (
            self.pool.clone(),
            self.shared.clone(),
            self.last_error.clone(),
        );
        let task = tokio::spawn(async move {
            let opened = match tokio::time::timeout(CONNECT_TIMEOUT, pool.get()).await {
                Ok(Ok(conn)) => Ok(deadpool_redis::Connection::take(conn)),
                Ok(Err(e)) => Err(edge_tls::describe(&e)),
                Err(_) => Err(format!(
                    "no connection within {} s",
                    CONNECT_TIMEOUT.as_secs()
                )),
            };
            match &opened {
                Ok(conn) => *lock(&shared) = Some(conn.clone()),
                Err(error) => {
                    tracing::warn!(%error, "cannot connect to redis");
                    *lock(&last_error) = Some(format!("cannot connect: {error}"));
                }
            }
            opened
        });
        async move { task.await.map_err(|e| e.to_string())? }
            .boxed()
            .shared()
    }

    /// After a failure: the next call opens a fresh connection.
    fn reset(&self) {
        *lock(&self.shared) = None;
        let mut connecting = lock(&self.connecting);
        if connecting.as_ref().is_some_and(|(_, c)| c.peek().is_some()) {
            *connecting = None;
        }
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
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
        let now = now_unix();
        let mut left = token.expires_at - now - self.config.expiry_margin.as_secs() as i64;
        if let Some(iat) = token.issued_at {
            left = left.min(iat + self.config.max_token_age.as_secs() as i64 - now);
        }
        (left > 0).then(|| self.config.ttl.min(Duration::from_secs(left as u64)))
    }

    fn servable(&self, token: &Token) -> bool {
        self.ttl_for(token).is_some() && !self.is_revoked(token)
    }

    fn is_revoked(&self, token: &Token) -> bool {
        let revoked = self
            .revoked
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .blocks(token);
        if revoked {
            self.stats.refused.fetch_add(1, Ordering::Relaxed);
        }
        revoked
    }

    /// Deletes `keys` from Redis; those Redis does not confirm are retried in the background.
    async fn l2_delete(self: &Arc<Self>, keys: Vec<CacheKey>) {
        if self.l2.is_none() || keys.is_empty() {
            return;
        }
        let mut cmd = redis::cmd("DEL");
        for key in &keys {
            cmd.arg(key.as_str());
        }
        if self.redis_call::<i64>("del", cmd).await.is_some() {
            return;
        }
        let until = Instant::now() + self.config.ttl;
        {
            let mut pending = self
                .pending_deletes
                .lock()
                .unwrap_or_else(|e| e.into_inner());
            for key in keys {
                if pending.len() < MAX_PENDING_DELETES {
                    pending.insert(key, until);
                }
            }
        }
        if !self.retrying.swap(true, Ordering::AcqRel) {
            tokio::spawn(self.clone().retry_deletes());
        }
    }

    /// Retries unconfirmed deletes with backoff until Redis confirms them all (or they have
    /// outlived any entry they could remove).
    async fn retry_deletes(self: Arc<Self>) {
        let mut backoff = Duration::from_millis(100);
        loop {
            tokio::time::sleep(backoff).await;
            let now = Instant::now();
            let batch: Vec<CacheKey> = {
                let mut pending = self
                    .pending_deletes
                    .lock()
                    .unwrap_or_else(|e| e.into_inner());
                pending.retain(|_, until| *until > now);
                pending.keys().take(500).cloned().collect()
            };
            if batch.is_empty() {
                self.retrying.store(false, Ordering::Release);
                // A delete queued after the check above and before the flag went down.
                let again = !self
                    .pending_deletes
                    .lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .is_empty();
                if again && !self.retrying.swap(true, Ordering::AcqRel) {
                    continue;
                }
                return;
            }
            let mut cmd = redis::cmd("DEL");
            for key in &batch {
                cmd.arg(key.as_str());
            }
            if self.redis_call::<i64>("del", cmd).await.is_some() {
                let mut pending = self
                    .pending_deletes
                    .lock()
                    .unwrap_or_else(|e| e.into_inner());
                for key in &batch {
                    pending.remove(key);
                }
                tracing::info!(
                    keys = batch.len(),
                    "redis confirmed deletes that had failed"
                );
                backoff = Duration::from_millis(100);
            } else {
                backoff = (backoff * 2).min(Duration::from_secs(2));
            }
        }
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
            let mut last = lock(&l2.last_error);
            // A timeout says less than the connection failure behind it: keep that.
            if last.is_none() || !error.to_string().starts_with("timed out") {
                *last = Some(format!("{op}: {error}"));
            }
        }
        *self.l2_skip_until.lock().unwrap_or_else(|e| e.into_inner()) =
            Some(Instant::now() + self.config.redis_backoff);
        tracing::warn!(op, %error, "redis unavailable; serving from memory and auth");
    }

    /// Runs one Redis command within the timeout; failures open the breaker.
    async fn redis_call<T: redis::FromRedisValue>(&self, op: &str, cmd: redis::Cmd) -> Option<T> {
        let l2 = self.redis()?;
        let mut conn = match l2.connection(self.config.redis_timeout).await {
            Ok(Some(conn)) => conn,
            // Still opening: this call goes without Redis, and nothing has failed yet.
            Ok(None) => return None,
            Err(e) => {
                self.redis_failed(op, &e);
                return None;
            }
        };
        let call = async {
            cmd.query_async::<T>(&mut conn)
                .await
                .map_err(|e| edge_tls::describe(&e))
        };
        match tokio::time::timeout(self.config.redis_timeout, call).await {
            Ok(Ok(v)) => {
                *lock(&l2.last_error) = None;
                Some(v)
            }
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

    /// The entry under `key`, whether or not it may be served.
    async fn l2_get(&self, key: &CacheKey) -> Option<Token> {
        let value: Option<String> = self
            .redis_call("get", redis::Cmd::get(key.as_str()))
            .await?;
        // `2`, exp, fence, session, user, JWT; anything else (an older format) is a miss.
        let value = value?;
        let mut parts = value.splitn(6, '\n');
        if parts.next() != Some("2") {
            return None;
        }
        let expires_at = parts.next()?.parse().ok()?;
        let fence = parts.next()?.parse().ok()?;
        let session_id = parts.next()?.into();
        let user_id = parts.next()?.into();
        let jwt: Arc<str> = parts.next()?.into();
        Some(Token {
            issued_at: issued_at(&jwt),
            jwt,
            expires_at,
            session_id,
            user_id,
            fence,
        })
    }

    async fn l2_set(&self, key: &CacheKey, token: &Token, ttl: Duration) {
        let value = format!(
            "2\n{}\n{}\n{}\n{}\n{}",
            token.expires_at, token.fence, token.session_id, token.user_id, token.jwt
        );
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
    /// `revoked_error` is what a caller gets for a token whose session the log revoked while
    /// it was being issued.
    pub fn new(config: CacheConfig, revoked_error: fn() -> E) -> Result<Self, String> {
        let tls = config
            .redis_url
            .as_deref()
            .is_some_and(|u| u.starts_with("rediss://"));
        let trust = if tls {
            edge_tls::Trust::load(None).map_err(|e| e.to_string())?
        } else {
            edge_tls::Trust::empty()
        };
        Self::with_trust(config, &trust, revoked_error)
    }

    /// A cache whose `rediss://` Redis is verified against `trust` (the OS roots plus
    /// `SSL_CERT_FILE`); `revoked_error` as for [`TokenCache::new`].
    pub fn with_trust(
        config: CacheConfig,
        trust: &edge_tls::Trust,
        revoked_error: fn() -> E,
    ) -> Result<Self, String> {
        let l2 = match &config.redis_url {
            Some(url) => Some(L2 {
                pool: redis_pool(url, trust).map_err(|e| format!("invalid REDIS_URL: {e}"))?,
                shared: Arc::new(Mutex::new(None)),
                connecting: Mutex::new(None),
                last_error: Arc::new(Mutex::new(None)),
            }),
            None => None,
        };
        // The first requests need not wait for a cold TCP and TLS handshake.
        if let Some(l2) = &l2
            && tokio::runtime::Handle::try_current().is_ok()
        {
            l2.start_connecting();
        }
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
            revoked: RwLock::new(Revoked::default()),
            applied: AtomicU64::new(0),
            pending_deletes: Mutex::new(HashMap::new()),
            retrying: AtomicBool::new(false),
        };
        Ok(TokenCache {
            inner: Arc::new(inner),
            flights: Mutex::new(HashMap::new()),
            revoked_error,
        })
    }

    /// The fence for a token requested now: the session log position applied so far.
    pub fn fence(&self) -> u64 {
        self.inner.applied.load(Ordering::Acquire)
    }

    /// Records that the session log has been applied up to `position` (in order, with no
    /// gap: only the reader of the log calls this).
    pub fn set_applied(&self, position: u64) {
        self.inner.applied.fetch_max(position, Ordering::AcqRel);
    }

    /// A route of this gateway learnt, from auth's answer, that log `position` has committed
    /// (it applies that entry itself before answering). Every entry at or below it committed
    /// before any request sent from now on, since positions are handed out in commit order, so
    /// tokens requested from now on may carry it as their fence: without this, a user-level
    /// entry applied ahead of the stream would refuse the fresh tokens that already reflect it
    /// until the stream caught up.
    pub fn committed(&self, position: u64) {
        self.inner.applied.fetch_max(position, Ordering::AcqRel);
    }

    /// A session ended at log `position`: none of its tokens fenced below it is served again.
    pub fn revoke_session(&self, session_id: &str, position: u64) {
        let mut revoked = self
            .inner
            .revoked
            .write()
            .unwrap_or_else(|e| e.into_inner());
        record(&mut revoked.sessions, session_id, position);
    }

    /// A user changed (claims) or was deleted at log `position`: likewise for their tokens.
    pub fn revoke_user(&self, user_id: &str, position: u64) {
        let mut revoked = self
            .inner
            .revoked
            .write()
            .unwrap_or_else(|e| e.into_inner());
        record(&mut revoked.users, user_id, position);
    }

    /// Forgets entries learnt longer than `window` ago (every token they could refuse has
    /// expired by then).
    pub fn forget_revocations(&self, window: Duration) {
        let mut revoked = self
            .inner
            .revoked
            .write()
            .unwrap_or_else(|e| e.into_inner());
        let now = Instant::now();
        let fresh = |e: &mut (u64, Instant)| now.duration_since(e.1) < window;
        revoked.sessions.retain(|_, e| fresh(e));
        revoked.users.retain(|_, e| fresh(e));
    }

    /// How many sessions and users the log currently refuses.
    pub fn revoked_len(&self) -> (usize, usize) {
        let revoked = self.inner.revoked.read().unwrap_or_else(|e| e.into_inner());
        (revoked.sessions.len(), revoked.users.len())
    }

    /// Keys whose Redis delete is still being retried.
    pub fn pending_deletes(&self) -> usize {
        self.inner
            .pending_deletes
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .len()
    }

    /// Why Redis last failed (to connect, with the TLS or network cause, or to answer), until
    /// a command succeeds again; `None` without Redis or while it works.
    pub fn redis_error(&self) -> Option<String> {
        lock(&self.inner.l2.as_ref()?.last_error).clone()
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
                    let revoked_error = self.revoked_error;
                    let f = async move {
                        let key = flight_key;
                        if let Some(token) = inner.l2_get(&key).await {
                            if inner.is_revoked(&token) {
                                // A delete that was lost, or a put that raced a revocation.
                                inner.l2_delete(vec![key.clone()]).await;
                            } else if inner.ttl_for(&token).is_some() {
                                inner.l1.insert(key, token.clone()).await;
                                return Ok((token, Outcome::L2Hit));
                            }
                        }
                        let token = issued.await?;
                        // Revoked while the issue was in flight: neither cached nor served.
                        if inner.is_revoked(&token) {
                            return Err(revoked_error());
                        }
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
        match result {
            // A revocation applied while this caller waited on the flight.
            Ok((token, _)) if self.inner.is_revoked(&token) => Err((self.revoked_error)()),
            other => other,
        }
    }

    /// A token newly issued by `issue` for `key`, bypassing L1, L2 and any flight in progress
    /// (which could hand back the cached token), then stored in both tiers in place of the old
    /// one. Revocations apply as for [`TokenCache::get_or_issue`]: a token whose session or
    /// user the log revoked while it was being issued is neither stored nor returned.
    pub async fn reissue<Fut>(&self, key: &CacheKey, issue: Fut) -> Result<(Token, Outcome), E>
    where
        Fut: Future<Output = Result<Token, E>>,
    {
        let token = issue.await?;
        if self.inner.is_revoked(&token) {
            return Err((self.revoked_error)());
        }
        if let Some(ttl) = self.inner.ttl_for(&token) {
            self.inner.l1.insert(key.clone(), token.clone()).await;
            self.inner.l2_set(key, &token, ttl).await;
        }
        // Refused if the log revoked it while it was being stored.
        if self.inner.is_revoked(&token) {
            return Err((self.revoked_error)());
        }
        Ok((token, Outcome::Miss))
    }

    /// Drops `key` from L1 and L2 (a revoked session); a Redis delete that fails is retried
    /// until Redis confirms it.
    pub async fn invalidate(&self, key: &CacheKey) {
        self.inner.l1.invalidate(key).await;
        self.inner.l2_delete(vec![key.clone()]).await;
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
