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

#[tokio::test]
async fn rotation_reloads_every_replica_and_keeps_old_keys_published() {
    let db = edge_testkit::test_database().await;
    let a = crate::spawn(crate::config(&db.url)).await;
    let b = crate::spawn(crate::config(&db.url)).await;
    let (mut ca, mut cb) = (a.client().await, b.client().await);
    let cookie = crate::sign_up(&mut ca, "rotate@example.com").await;
    let old = ca
        .issue_token(pb::IssueTokenRequest {
            cookie_value: cookie.clone(),
        })
        .await
        .unwrap()
        .into_inner()
        .jwt;

    let store = Store::connect(&db.url).await.unwrap();
    let row = rotate(&store, &edge_keys::Secret::new(crate::SECRET), Alg::RS256)
        .await
        .unwrap();

    for client in [&mut ca, &mut cb] {
        let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
        loop {
            let jwks = client
                .get_jwks(pb::GetJwksRequest {})
                .await
                .unwrap()
                .into_inner()
                .jwks_json;
            if jwks.contains(&row.id) {
                let verifier = Verifier::from_jwks(&jwks).unwrap();
                // The token signed before rotation still verifies: the old key stays published.
                verifier.verify(&old, Utc::now().timestamp()).unwrap();
                break;
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "replica did not reload the key set"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        let new = client
            .issue_token(pb::IssueTokenRequest {
                cookie_value: cookie.clone(),
            })
            .await
            .unwrap()
            .into_inner()
            .jwt;
        let header = new.split('.').next().unwrap();
        let header: serde_json::Value = serde_json::from_slice(&base64_url(header)).unwrap();
        assert_eq!(header["kid"], row.id.as_str(), "new tokens use the new key");
    }
}

fn base64_url(s: &str) -> Vec<u8> {
    use base64::Engine;
    base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(s)
        .unwrap()
}
