//! The token cache against real Redis: hits, misses, expiry, hashed keys, single-flight,
//! invalidation and a Redis outage.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use edge_cache::{CacheConfig, Outcome, Token, TokenCache};
use edge_keys::CacheKey;

fn now() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs() as i64
}

/// A cookie value no other test uses, and its key.
fn cookie() -> (String, CacheKey) {
    let value = format!(
        "{}.c2lnbmF0dXJlc2lnbmF0dXJlc2lnbmF0dXJlc2lnbmF0dQ%3D%3D",
        edge_keys::generate_id()
    );
    let key = CacheKey::for_cookie(&value).unwrap();
    (value, key)
}

fn token(expires_in: i64) -> Token {
    Token {
        jwt: format!("jwt-{}", edge_keys::generate_id()).into(),
        expires_at: now() + expires_in,
        issued_at: None,
        session_id: edge_keys::generate_id().into(),
        user_id: edge_keys::generate_id().into(),
        fence: 0,
    }
}

fn cache(redis: Option<String>) -> TokenCache<String> {
    TokenCache::new(
        CacheConfig {
            redis_url: redis,
            ..CacheConfig::default()
        },
        || "revoked".to_owned(),
    )
    .unwrap()
}

async fn redis_get(url: &str, key: &str) -> Option<String> {
    let pool = deadpool_redis::Config::from_url(url)
        .create_pool(Some(deadpool_redis::Runtime::Tokio1))
        .unwrap();
    let mut conn = pool.get().await.unwrap();
    deadpool_redis::redis::Cmd::get(key)
        .query_async(&mut conn)
        .await
        .unwrap()
}

#[tokio::test]
async fn miss_then_l1_hit_then_l2_hit_in_another_gateway() {
    let url = edge_testkit::redis_url();
    let (a, b) = (cache(Some(url.clone())), cache(Some(url.clone())));
    let (cookie, key) = cookie();
    let t = token(900);
    let issued = t.clone();
    let (got, outcome) = a
        .get_or_issue(&key, || async move { Ok(issued) })
        .await
        .unwrap();
    assert_eq!((got, outcome), (t.clone(), Outcome::Miss));
    let (_, outcome) = a
        .get_or_issue(&key, || async { Err("must not issue".to_owned()) })
        .await
        .unwrap();
    assert_eq!(outcome, Outcome::L1Hit);
    // A second gateway finds it in Redis.
    let (got, outcome) = b
        .get_or_issue(&key, || async { Err("must not issue".to_owned()) })
        .await
        .unwrap();
    assert_eq!((got, outcome), (t.clone(), Outcome::L2Hit));
    // The key is a hash; the raw cookie is nowhere in Redis.
    let stored = redis_get(&url, key.as_str()).await.unwrap();
    assert!(stored.ends_with(&*t.jwt));
    assert!(!key.as_str().contains(cookie.split('.').next().unwrap()));
    assert!(redis_get(&url, &cookie).await.is_none());
}

#[tokio::test]
async fn tokens_near_expiry_are_never_stored_or_served() {
    let url = edge_testkit::redis_url();
    let c = cache(Some(url.clone()));
    let (_, key) = cookie();
    let near = token(20);
    let issued = near.clone();
    let (got, outcome) = c
        .get_or_issue(&key, || async move { Ok(issued) })
        .await
        .unwrap();
    assert_eq!((got, outcome), (near, Outcome::Miss));
    assert!(
        redis_get(&url, key.as_str()).await.is_none(),
        "not stored in Redis"
    );
    let calls = Arc::new(AtomicUsize::new(0));
    let counter = calls.clone();
    c.get_or_issue(&key, move || async move {
        counter.fetch_add(1, Ordering::SeqCst);
        Ok(token(900))
    })
    .await
    .unwrap();
    assert_eq!(calls.load(Ordering::SeqCst), 1, "not served from L1 either");
    // The TTL in Redis never reaches past the token's expiry.
    let (_, key) = cookie();
    let short = token(60);
    let issued = short.clone();
    c.get_or_issue(&key, || async move { Ok(issued) })
        .await
        .unwrap();
    let pool = deadpool_redis::Config::from_url(url)
        .create_pool(Some(deadpool_redis::Runtime::Tokio1))
        .unwrap();
    let mut conn = pool.get().await.unwrap();
    let pttl: i64 = deadpool_redis::redis::cmd("PTTL")
        .arg(key.as_str())
        .query_async(&mut conn)
        .await
        .unwrap();
    assert!(
        pttl > 0 && pttl <= 30_000,
        "ttl {pttl} ms <= exp - now - 30 s"
    );
}

#[tokio::test]
async fn two_hundred_concurrent_first_requests_make_one_issue_call() {
    let c = Arc::new(cache(Some(edge_testkit::redis_url())));
    let (_, key) = cookie();
    let (calls, started) = (Arc::new(AtomicUsize::new(0)), Arc::new(AtomicUsize::new(0)));
    // The issue call is held open until every request has started, so all 200 meet it in flight.
    let (release, released) = tokio::sync::watch::channel(false);
    let mut tasks = Vec::new();
    for _ in 0..200 {
        let (c, key, calls, started) = (c.clone(), key.clone(), calls.clone(), started.clone());
        let mut released = released.clone();
        tasks.push(tokio::spawn(async move {
            started.fetch_add(1, Ordering::SeqCst);
            c.get_or_issue(&key, move || async move {
                calls.fetch_add(1, Ordering::SeqCst);
                let _ = released.wait_for(|r| *r).await;
                Ok(token(900))
            })
            .await
            .unwrap()
        }));
    }
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while started.load(Ordering::SeqCst) < 200 {
        assert!(
            std::time::Instant::now() < deadline,
            "the requests never all started"
        );
        tokio::task::yield_now().await;
    }
    // Release once the issue call has begun: every request started before it, so each one
    // either joins that flight or finds its result, and a second issue call means no flight.
    while calls.load(Ordering::SeqCst) == 0 {
        assert!(
            std::time::Instant::now() < deadline,
            "no request reached the issuer"
        );
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
    release.send_replace(true);
    let mut jwts = std::collections::HashSet::new();
    for t in tasks {
        jwts.insert(t.await.unwrap().0.jwt);
    }
    assert_eq!(calls.load(Ordering::SeqCst), 1);
    assert_eq!(jwts.len(), 1);
}

#[tokio::test]
async fn invalidation_removes_both_tiers_and_errors_are_not_cached() {
    let url = edge_testkit::redis_url();
    let c = cache(Some(url.clone()));
    let (_, key) = cookie();
    let err = c
        .get_or_issue(&key, || async { Err("auth said no".to_owned()) })
        .await
        .unwrap_err();
    assert_eq!(err, "auth said no");
    let t = token(900);
    let issued = t.clone();
    c.get_or_issue(&key, || async move { Ok(issued) })
        .await
        .unwrap();
    c.invalidate(&key).await;
    assert!(redis_get(&url, key.as_str()).await.is_none());
    let (_, outcome) = c
        .get_or_issue(&key, || async { Ok(token(900)) })
        .await
        .unwrap();
    assert_eq!(outcome, Outcome::Miss);
}

#[tokio::test]
async fn a_dead_redis_costs_nothing_after_the_first_failure_and_heals() {
    let mut redis = edge_testkit::spawn_redis(0).unwrap();
    let port = redis.port;
    let c = cache(Some(redis.url.clone()));
    let (_, key) = cookie();
    c.get_or_issue(&key, || async { Ok(token(900)) })
        .await
        .unwrap();
    redis.kill();
    // Requests keep succeeding through L1 and the issuer.
    for _ in 0..50 {
        let (_, key) = cookie();
        let started = std::time::Instant::now();
        let (_, outcome) = c
            .get_or_issue(&key, || async { Ok(token(900)) })
            .await
            .unwrap();
        assert_eq!(outcome, Outcome::Miss);
        assert!(started.elapsed() < Duration::from_secs(1));
    }
    assert!(c.stats().redis_errors.load(Ordering::Relaxed) >= 1);
    // Redis back on the same port: L2 works again after the back-off.
    let _redis = edge_testkit::spawn_redis(port).unwrap();
    let other = cache(Some(format!("redis://127.0.0.1:{port}")));
    let (_, key) = cookie();
    // Until the back-off after the failure ends, the cache skips Redis; then an entry it
    // caches is an L2 hit for another cache on the same Redis.
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    loop {
        c.get_or_issue(&key, || async { Ok(token(900)) })
            .await
            .unwrap();
        if let Ok((_, Outcome::L2Hit)) = other
            .get_or_issue(&key, || async { Err("no".to_owned()) })
            .await
        {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "the cache never wrote to Redis again once it was back"
        );
        c.invalidate(&key).await;
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// The Convex client schedules its refresh from `exp − iat` as if every token it gets were
/// new: a token older than `max_token_age` is neither stored nor served, in either tier.
#[tokio::test]
async fn tokens_older_than_the_max_age_are_never_stored_or_served() {
    let url = edge_testkit::redis_url();
    let c = cache(Some(url.clone()));
    let (_, key) = cookie();
    let mut old = token(900);
    old.issued_at = Some(now() - 10);
    let issued = old.clone();
    c.get_or_issue(&key, || async move { Ok(issued) })
        .await
        .unwrap();
    assert!(
        redis_get(&url, key.as_str()).await.is_none(),
        "not stored in Redis"
    );
    let fresh = token(900);
    let mut young = fresh.clone();
    young.issued_at = Some(now());
    let issued = young.clone();
    let (got, outcome) = c
        .get_or_issue(&key, || async move { Ok(issued) })
        .await
        .unwrap();
    assert_eq!(
        (got, outcome),
        (young.clone(), Outcome::Miss),
        "the old one was not served"
    );
    let (got, outcome) = c
        .get_or_issue(&key, || async { Err("must not issue".to_owned()) })
        .await
        .unwrap();
    assert_eq!((got, outcome), (young, Outcome::L1Hit), "a young one is");
    // The age is read from the JWT's `iat`.
    let jwt = format!(
        "e30.{}.sig",
        base64::Engine::encode(
            &base64::engine::general_purpose::URL_SAFE_NO_PAD,
            br#"{"iat":1700000000,"exp":1700000900}"#
        )
    );
    assert_eq!(edge_cache::issued_at(&jwt), Some(1_700_000_000));
    assert_eq!(edge_cache::issued_at("not-a-jwt"), None);
}

/// A `rediss://` Redis whose certificate the trust store refuses: requests go on through L1
/// and the issuer, and the failure names its cause (rustls's `invalid peer certificate: …`),
/// not only that a command timed out. The command timeout here is far shorter than a TLS
/// handshake, as 50 ms is against a Redis across a network.
#[tokio::test]
async fn an_untrusted_redis_certificate_is_reported_with_its_cause() {
    edge_tls::install_provider();
    let ca = edge_testkit::TestCa::new();
    let redis = edge_testkit::spawn_redis_tls(&ca).expect("redis-server with TLS");
    // The OS roots and another test CA: not the one that issued Redis's certificate.
    let other = edge_testkit::TestCa::new();
    let trust = edge_tls::Trust::load(Some(&other.ca_file)).unwrap();
    let c: TokenCache<String> = TokenCache::with_trust(
        CacheConfig {
            redis_url: Some(redis.url.clone()),
            redis_timeout: Duration::from_micros(1),
            ..CacheConfig::default()
        },
        &trust,
        || "revoked".to_owned(),
    )
    .unwrap();
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    let error = loop {
        let (_, key) = cookie();
        let (_, outcome) = c
            .get_or_issue(&key, || async { Ok(token(900)) })
            .await
            .unwrap();
        assert_eq!(outcome, Outcome::Miss);
        if let Some(error) = c.redis_error().filter(|e| !e.ends_with("timed out"))
            && c.stats().redis_errors.load(Ordering::Relaxed) >= 1
        {
            break error;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "no cause for the Redis failure: {:?}",
            c.redis_error()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    // Another test CA of the same name: rustls finds the issuer and refuses its signature.
    assert!(error.contains("invalid peer certificate"), "{error}");
    assert!(c.stats().redis_errors.load(Ordering::Relaxed) >= 1);
}

/// A `rediss://` Redis the trust store accepts, whose first TLS handshake stalls (a network
/// that swallows it, as a slow or lossy link does): requests meanwhile go without Redis and
/// wait at most one command timeout, nothing counts as a failure while the connection is still
/// opening (a handshake may take longer than a 50 ms command), and once it is opened the caches
/// share tokens through Redis. Only an attempt that fails (here, after `CONNECT_TIMEOUT`) is
/// one.
#[tokio::test]
async fn a_slow_tls_handshake_is_not_a_redis_failure() {
    edge_tls::install_provider();
    let ca = edge_testkit::TestCa::new();
    let redis = edge_testkit::spawn_redis_tls(&ca).expect("redis-server with TLS");
    let relay = edge_testkit::Relay::start(([127, 0, 0, 1], redis.port).into()).await;
    relay.partition();
    let trust = edge_tls::Trust::load(Some(&ca.ca_file)).unwrap();
    let url = format!("rediss://127.0.0.1:{}", relay.addr().port());
    let make = || -> TokenCache<String> {
        let config = CacheConfig {
            redis_url: Some(url.clone()),
            ..CacheConfig::default()
        };
        TokenCache::with_trust(config, &trust, || "revoked".to_owned()).unwrap()
    };
    let c = make();
    for _ in 0..20 {
        let (_, key) = cookie();
        let (_, outcome) = c
            .get_or_issue(&key, || async { Ok(token(900)) })
            .await
            .unwrap();
        assert_eq!(outcome, Outcome::Miss);
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert_eq!(c.stats().redis_errors.load(Ordering::Relaxed), 0);
    assert_eq!(c.redis_error(), None);
    // The link heals; the stalled attempt fails at its own limit and the next one opens.
    relay.heal();
    let other = make();
    let deadline = std::time::Instant::now() + edge_cache::CONNECT_TIMEOUT * 3;
    loop {
        let (_, key) = cookie();
        c.get_or_issue(&key, || async { Ok(token(900)) })
            .await
            .unwrap();
        if let Ok((_, Outcome::L2Hit)) = other
            .get_or_issue(&key, || async { Err("no".to_owned()) })
            .await
        {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "the caches never shared a token through Redis: {:?}",
            c.redis_error()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(other.stats().redis_errors.load(Ordering::Relaxed), 0);
}
