//! Token issuance: zero key reads in static and dynamic mode, at most one session read, and
//! key rotation.

use std::sync::atomic::Ordering;
use std::time::Duration;

use chrono::Utc;
use edge_auth::keys::rotate;
use edge_auth::store::Store;
use edge_keys::{Alg, Verifier};
use edge_proto::auth::v1 as pb;

async fn issue_many(running: &crate::Running, store: &Store, n: usize) {
    let mut client = running.client().await;
    let cookie = crate::sign_up(
        &mut client,
        &format!("{}@example.com", edge_keys::generate_id().to_lowercase()),
    )
    .await;
    let jwks_reads = store.reads().jwks.load(Ordering::Relaxed);
    let session_reads = store.reads().session.load(Ordering::Relaxed);
    let jwks = client
        .get_jwks(pb::GetJwksRequest {})
        .await
        .unwrap()
        .into_inner()
        .jwks_json;
    let verifier = Verifier::from_jwks(&jwks)
        .unwrap()
        .with_audience("convex")
        .with_issuer("http://localhost:8080");
    for _ in 0..n {
        let r = client
            .issue_token(pb::IssueTokenRequest {
                cookie_value: cookie.clone(),
                ..Default::default()
            })
            .await
            .unwrap()
            .into_inner();
        let verified = verifier.verify(&r.jwt, Utc::now().timestamp()).unwrap();
        assert_eq!(verified.claims["sessionId"], r.session_id.as_str());
        assert!(r.cache_key.starts_with("edge:jwt:"));
    }
    assert_eq!(
        store.reads().jwks.load(Ordering::Relaxed),
        jwks_reads,
        "no jwks read for {n} tokens"
    );
    assert_eq!(
        store.reads().session.load(Ordering::Relaxed),
        session_reads + n as u64,
        "one session read per token"
    );
}

#[tokio::test]
async fn dynamic_mode_issues_1000_tokens_without_reading_keys() {
    let (_db, running) = crate::postgres().await;
    let store = running.core.store().clone();
    issue_many(&running, &store, 1000).await;
}

#[tokio::test]
async fn static_mode_issues_1000_tokens_without_reading_keys() {
    let db = edge_testkit::test_database().await;
    let secret = edge_keys::Secret::new(crate::SECRET);
    let rows: Vec<_> = [Alg::ES256, Alg::RS256]
        .into_iter()
        .map(|alg| edge_keys::jwk::generate_row(alg, &secret, Utc::now()).unwrap())
        .collect();
    let mut config = crate::config(&db.url);
    config.static_jwks = Some(serde_json::to_string(&rows).unwrap());
    config.alg = Alg::ES256;
    let running = crate::spawn(config).await;
    let store = running.core.store().clone();
    assert_eq!(
        store.reads().jwks.load(Ordering::Relaxed),
        0,
        "static mode never reads the jwks table"
    );
    issue_many(&running, &store, 1000).await;
    assert_eq!(store.reads().jwks.load(Ordering::Relaxed), 0);
}

#[tokio::test]
async fn static_mode_rejects_bad_jwks() {
    let db = edge_testkit::test_database().await;
    for bad in ["not json", "[]", "[{\"id\":\"x\"}]"] {
        let mut config = crate::config(&db.url);
        config.static_jwks = Some(bad.into());
        assert!(
            edge_auth::Application::build(config).await.is_err(),
            "{bad}"
        );
    }
}

/// A verifier that caches the JWKS for its `Cache-Control` max-age and never refetches on an
/// unknown `kid` (what Convex does).
struct CachingVerifier {
    url: String,
    jwks: String,
    fetched: tokio::time::Instant,
    max_age: Duration,
}

impl CachingVerifier {
    async fn fetch(url: String) -> CachingVerifier {
        let r = reqwest::get(&url).await.unwrap();
        let cache_control = r.headers()["cache-control"].to_str().unwrap().to_owned();
        let max_age = cache_control
            .split(',')
            .find_map(|d| d.trim().strip_prefix("max-age="))
            .and_then(|v| v.parse().ok())
            .expect("a max-age");
        CachingVerifier {
            url,
            jwks: r.text().await.unwrap(),
            fetched: tokio::time::Instant::now(),
            max_age: Duration::from_secs(max_age),
        }
    }

    async fn verify(&mut self, jwt: &str) -> Result<(), String> {
        if self.fetched.elapsed() >= self.max_age {
            *self = CachingVerifier::fetch(self.url.clone()).await;
        }
        Verifier::from_jwks(&self.jwks)
            .unwrap()
            .verify(jwt, Utc::now().timestamp())
            .map(|_| ())
            .map_err(|e| format!("{e}"))
    }
}

fn kid(jwt: &str) -> String {
    let header = jwt.split('.').next().unwrap();
    let header: serde_json::Value = serde_json::from_slice(&base64_url(header)).unwrap();
    header["kid"].as_str().unwrap().to_owned()
}

#[tokio::test]
async fn a_rotated_key_signs_only_after_every_cached_jwks_has_it() {
    let db = edge_testkit::test_database().await;
    let quick = |url: &str| {
        let mut c = crate::config(url);
        c.jwks_max_age = Duration::from_secs(2);
        c
    };
    let a = crate::spawn(quick(&db.url)).await;
    let b = crate::spawn(quick(&db.url)).await;
    let (mut ca, mut cb) = (a.client().await, b.client().await);
    let cookie = crate::sign_up(&mut ca, "rotate@example.com").await;
    let old = ca
        .issue_token(pb::IssueTokenRequest {
            cookie_value: cookie.clone(),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner()
        .jwt;
    let mut verifiers = [
        CachingVerifier::fetch(format!("http://{}/api/auth/jwks", a.http)).await,
        CachingVerifier::fetch(format!("http://{}/api/auth/jwks", b.http)).await,
    ];

    let store = Store::connect(&db.url).await.unwrap();
    let lead = quick(&db.url).key_publish_lead();
    let row = rotate(
        &store,
        &edge_keys::Secret::new(crate::SECRET),
        Alg::RS256,
        lead,
    )
    .await
    .unwrap();

    // Every token, on either replica, verifies against what the caching verifier holds, until
    // the new key signs on both.
    for (client, verifier) in [&mut ca, &mut cb].into_iter().zip(verifiers.iter_mut()) {
        let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
        loop {
            let jwt = client
                .issue_token(pb::IssueTokenRequest {
                    cookie_value: cookie.clone(),
                    ..Default::default()
                })
                .await
                .unwrap()
                .into_inner()
                .jwt;
            if let Err(e) = verifier.verify(&jwt).await {
                panic!("a token names a key the cached JWKS lacks: {e}");
            }
            if kid(&jwt) == row.id {
                break;
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "the new key never signed"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        // The token signed before rotation still verifies: the old key stays published.
        verifier.verify(&old).await.unwrap();
    }
}

#[tokio::test]
async fn the_key_set_follows_the_jwks_table_whoever_writes_it() {
    use sqlx::Connection;
    let db = edge_testkit::test_database().await;
    let running = crate::spawn(crate::config(&db.url)).await;
    let mut client = running.client().await;
    let cookie = crate::sign_up(&mut client, "keys@example.com").await;
    let mut conn = sqlx::PgConnection::connect(&db.url).await.unwrap();

    // Another writer (the Better Auth app rotating) adds a key: it is published.
    let secret = edge_keys::Secret::new(crate::SECRET);
    let row = edge_keys::jwk::generate_row(Alg::ES256, &secret, Utc::now()).unwrap();
    sqlx::query(r#"INSERT INTO "jwks" ("id", "publicKey", "privateKey", "createdAt", "alg", "crv") VALUES ($1, $2, $3, now(), $4, $5)"#)
        .bind(&row.id)
        .bind(&row.public_key)
        .bind(&row.private_key)
        .bind(&row.alg)
        .bind(&row.crv)
        .execute(&mut conn)
        .await
        .unwrap();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    loop {
        let jwks = client
            .get_jwks(pb::GetJwksRequest {})
            .await
            .unwrap()
            .into_inner()
            .jwks_json;
        if jwks.contains(&row.id) {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "a key written by another writer was never published"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }

    // Another writer expires every key: auth still signs (it makes a key of its own).
    sqlx::query(r#"UPDATE "jwks" SET "expiresAt" = now() - interval '1 second'"#)
        .execute(&mut conn)
        .await
        .unwrap();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    loop {
        let r = client
            .issue_token(pb::IssueTokenRequest {
                cookie_value: cookie.clone(),
                ..Default::default()
            })
            .await
            .expect("auth always has a signing key")
            .into_inner();
        let jwks = client
            .get_jwks(pb::GetJwksRequest {})
            .await
            .unwrap()
            .into_inner()
            .jwks_json;
        let verifier = Verifier::from_jwks(&jwks).unwrap();
        verifier.verify(&r.jwt, Utc::now().timestamp()).unwrap();
        let (unexpired,): (i64,) = sqlx::query_as(
            r#"SELECT COUNT(*) FROM "jwks" WHERE "expiresAt" IS NULL OR "expiresAt" > now()"#,
        )
        .fetch_one(&mut conn)
        .await
        .unwrap();
        if unexpired > 0 {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "no key replaced the expired ones"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

fn base64_url(s: &str) -> Vec<u8> {
    use base64::Engine;
    base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(s)
        .unwrap()
}
